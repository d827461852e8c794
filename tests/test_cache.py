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


def entry_inputs(model, module: str, x: torch.Tensor) -> torch.Tensor:
    """What ``module`` receives when ``model`` runs on ``x`` in eval mode: the prefix output, computed directly."""
    seen = []
    handle = model.get_submodule(module).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        handle.remove()
    return seen[0]


class Noise:
    """A seeded random augmentation that keeps every input it was given and every output it returned."""

    def __init__(self, seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.given: list[torch.Tensor] = []
        self.made: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = x + 0.5 * torch.randn(x.shape, generator=self.gen)
        self.given.append(x.clone())
        self.made.append(out)
        return out


def test_augmented_views_are_distinct_augmentations_of_the_train_split_only(test_resnet, image_task):
    noise = Noise()
    work, part, cache = _cache(test_resnet, image_task, views=2, transform=noise)
    assert cache.ensure([1]) == [1]
    n, entry = len(image_task.train), part[1].modules[0]
    assert cache.rows("train") == 2 * n and cache.rows("val") == len(image_task.val)
    # the transform saw the train split once per view, in order, and nothing else (val is never augmented)
    given, made = torch.cat(noise.given), torch.cat(noise.made)
    torch.testing.assert_close(given, torch.cat([image_task.train.inputs] * 2), rtol=0, atol=0)
    _, (rows,) = cache.batch("train", 1, torch.arange(2 * n))
    torch.testing.assert_close(rows, entry_inputs(work, entry, made), rtol=1e-4, atol=1e-5)  # row v*N+i = view v of i
    first, second = rows[:n], rows[n:]
    clean = entry_inputs(work, entry, image_task.train.inputs)
    assert (first - second).abs().flatten(1).amax(1).min() > 1e-3  # every example's two views differ
    assert (first - clean).abs().flatten(1).amax(1).min() > 1e-3  # and neither is the un-augmented input
    _, (val,) = cache.batch("val", 1, torch.arange(len(image_task.val)))
    torch.testing.assert_close(val, entry_inputs(work, entry, image_task.val.inputs), rtol=1e-4, atol=1e-5)


def test_training_on_cached_views_draws_rows_from_every_view(test_resnet, image_task, monkeypatch):
    from autosub.training.trainer import fit

    drawn: list[torch.Tensor] = []
    batch = ActivationCache.batch

    def spy(self, split, boundary, index):
        if split == "train":
            drawn.append(index.clone())
        return batch(self, split, boundary, index)

    monkeypatch.setattr(ActivationCache, "batch", spy)
    task = copy.copy(image_task)
    task.train_transform = Noise()
    res = fit(test_resnet, task, (2,), epochs=2, batch_size=16, cache_views=2)
    assert res.cached
    rows, n = torch.cat(drawn), len(image_task.train)
    assert len(rows) == 2 * n and int(rows.max()) < 2 * n  # one row per example and epoch, all of them cached
    views = rows // n
    assert set(views.tolist()) == {0, 1}  # both views are used ...
    for epoch in rows.view(2, n):  # ... and each epoch visits every example once, in one of its views
        assert sorted((epoch % n).tolist()) == list(range(n))


def test_batch_ranges_never_leave_a_single_row():
    for n in range(2, 40):
        ranges = batch_ranges(n, 8)
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(b - a >= 2 for a, b in ranges)
        assert all(ranges[i][1] == ranges[i + 1][0] for i in range(len(ranges) - 1))
