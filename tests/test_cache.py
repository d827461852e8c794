"""The activation cache fills all boundaries in one pass, spills to disk within budget, and stores exact values."""
from __future__ import annotations

import copy

import torch

from autosub.model.blocks import discover_blocks
from autosub.training.cache import ActivationCache, MemoryBudget, batch_ranges
from autosub.model.heads import replace_head


def _cache(model, task, **kw):
    work = replace_head(copy.deepcopy(model), task.num_classes, seed=0)
    part = discover_blocks(work)
    return work, part, ActivationCache(work, part, {"train": task.train, "val": task.val}, batch_size=16, **kw)


def test_one_pass_fills_every_boundary(test_resnet, image_task):
    work, part, cache = _cache(test_resnet, image_task)
    assert all(cache.usable(b) is None for b in range(len(part) + 1))  # verification forwards happen first
    stem_calls = []
    handle = work.conv1.register_forward_hook(lambda *a: stem_calls.append(1))
    try:
        done = cache.ensure(range(len(part) + 1))
    finally:
        handle.remove()
    assert done == list(range(len(part) + 1))
    batches = len(batch_ranges(len(image_task.train), 16)) + len(batch_ranges(len(image_task.val), 16))
    assert len(stem_calls) == batches + 2  # one shape probe per split, then one forward per batch for all boundaries


def test_disk_tier_holds_the_same_values_as_ram(test_resnet, image_task):
    _, part, ram = _cache(test_resnet, image_task)
    _, _, disk = _cache(test_resnet, image_task, budget=MemoryBudget(ram=0, disk=2**30))
    ram.ensure([2])
    disk.ensure([2])
    assert ram.tiers()[("train", 2)] == "ram" and disk.tiers()[("train", 2)] == "disk"
    idx = torch.tensor([5, 0, 17])
    (_, a), (_, b) = ram.batch("train", 2, idx), disk.batch("train", 2, idx)
    torch.testing.assert_close(a[0], b[0])


def test_nothing_is_cached_without_budget(test_resnet, image_task):
    _, part, cache = _cache(test_resnet, image_task, budget=MemoryBudget(ram=0, disk=0))
    assert cache.ensure([1]) == []
    assert not cache.has("train", 1)


def test_augmented_views_are_cached_as_extra_rows(test_resnet, image_task):
    flip = lambda x: torch.flip(x, dims=[-1])  # noqa: E731 - deterministic stand-in for an augmentation
    _, part, cache = _cache(test_resnet, image_task, views=2, transform=flip)
    cache.ensure([1], ["train"])
    n = len(image_task.train)
    assert cache.rows("train") == 2 * n
    _, (first,) = cache.batch("train", 1, torch.tensor([0]))
    _, (second,) = cache.batch("train", 1, torch.tensor([n]))
    assert first.shape == second.shape


def test_batch_ranges_never_leave_a_single_row():
    for n in range(2, 40):
        ranges = batch_ranges(n, 8)
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(b - a >= 2 for a, b in ranges)
        assert all(ranges[i][1] == ranges[i + 1][0] for i in range(len(ranges) - 1))
