"""Shared fixtures: tiny offline models and tasks that make every test run in seconds on a CPU."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
torch.set_num_threads(1)  # steady on a 2-core machine where Ray workers or other jobs share the cores


def make_image_task(n: int = 96, px: int = 32, classes: int = 4, seed: int = 0, *, learnable: bool = True):
    """A seeded image task; with ``learnable`` the class is written into the mean of one colour channel."""
    from autosub.data.task import Split, Task

    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 3, px, px, generator=g)
    if learnable:
        x[:, 0] += (y.float() - classes / 2).view(-1, 1, 1)
    k = int(n * 0.75)
    return Task(Split(x[:k], y[:k], name="train"), Split(x[k:], y[k:], name="val"), classes)


def perturbed_copy(model, selection, num_classes: int, seed: int, partition=None):
    """A stand-in for a SubTuned model: a fresh head and visibly changed selected blocks (weights and BatchNorm
    statistics), everything else equal to ``model`` — what ``fit`` returns, without the training time."""
    import copy

    from autosub import discover_blocks, replace_head

    g = torch.Generator().manual_seed(seed)
    tuned = replace_head(copy.deepcopy(model), num_classes, seed=seed)
    part = partition or discover_blocks(tuned)
    with torch.no_grad():
        for i in selection:
            for path in part[i].modules:
                for name, t in tuned.get_submodule(path).state_dict().items():
                    if t.is_floating_point():
                        t.add_(0.1 * torch.randn(t.shape, generator=g))
                        if "running_var" in name:
                            t.abs_()
    return tuned.eval()


@pytest.fixture(scope="session")
def image_task():
    return make_image_task()


@pytest.fixture(scope="session")
def test_resnet():
    """timm's CI-sized ResNet (4 blocks), untrained, eval mode."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False).eval()


def pytest_collection_modifyitems(config, items):
    """Skip ``@pytest.mark.gpu`` tests on machines without CUDA (CI and the developers' machines)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
