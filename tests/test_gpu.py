"""GPU-only behaviour (skipped without CUDA): bf16 autocast, channels_last, the GPU cache tier."""
from __future__ import annotations

import copy

import pytest

from autosub.model.blocks import discover_blocks
from autosub.training.cache import ActivationCache, MemoryBudget
from autosub.model.heads import replace_head
from autosub.training.trainer import fit

pytestmark = pytest.mark.gpu


def test_cached_and_uncached_agree_on_the_gpu_in_fp32(test_resnet, image_task):
    plain = fit(test_resnet, image_task, (2,), epochs=2, batch_size=16, cache=False, device="cuda", amp=False)
    cached = fit(test_resnet, image_task, (2,), epochs=2, batch_size=16, device="cuda", amp=False)
    assert cached.cached
    assert plain.train_loss == pytest.approx(cached.train_loss, rel=1e-3, abs=1e-4)


def test_bf16_training_runs_and_learns_something(test_resnet, image_task):
    res = fit(test_resnet, image_task, "all", epochs=3, batch_size=16, device="cuda", amp=True, lr=3e-3)
    assert next(res.model.parameters()).is_cuda
    assert res.train_loss[-1] < res.train_loss[0]


def test_the_gpu_tier_holds_activations_on_the_device(test_resnet, image_task):
    work = replace_head(copy.deepcopy(test_resnet), image_task.num_classes, seed=0).cuda()
    part = discover_blocks(work)
    cache = ActivationCache(work, part, {"train": image_task.train, "val": image_task.val}, device="cuda",
                            budget=MemoryBudget(gpu=2**30))
    cache.ensure([1])
    assert cache.tiers()[("train", 1)] == "gpu"
    res = fit(test_resnet, image_task, (1,), epochs=1, batch_size=16, device="cuda", cache=cache)
    assert res.cached
