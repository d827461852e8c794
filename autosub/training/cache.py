"""Memory-budgeted prefix activation cache: a block's inputs, computed once per example, reused every epoch.

The frozen prefix runs in eval mode, so its output for an example cannot change during training; computing it
once turns every later epoch into "from the first tuned block on". Storage tiers, in order: the GPU (when
training there), CPU RAM, then disk memmaps — each within its own budget. One pass fills every requested
boundary that fits (a profile asks for all of them at once).
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..model.blocks import Partition
from ..data.task import Inputs, Split, take, to_device
from ..model.splitting import SKIP, Slot, capture, eval_mode, replay, verify

__all__ = ["ActivationCache", "MemoryBudget", "batch_ranges", "default_ram_budget"]

log = logging.getLogger(__name__)

GiB = 1024**3


def default_ram_budget() -> int:
    """A quarter of the memory available now, at most 8 GiB: room for the model, the optimizer and the OS."""
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 4 * GiB
    return int(min(8 * GiB, avail // 4))


@dataclass
class MemoryBudget:
    """Bytes each tier may hold. ``disk=0`` turns the memmap tier off."""

    gpu: int = 0
    ram: int = field(default_factory=default_ram_budget)
    disk: int = 32 * GiB

    @classmethod
    def for_device(cls, device: torch.device | str) -> "MemoryBudget":
        """The default budget; on CUDA, a quarter of the GPU memory free now goes to the GPU tier."""
        device = torch.device(device)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return cls(gpu=free // 4)
        return cls()


@dataclass
class _Entry:
    slots: list[Slot]
    storage: list  # per slot: a torch.Tensor (gpu/ram) or an np.memmap (disk)
    tier: str


class ActivationCache:
    """Cached entry-module arguments per (split, boundary), plus the one-example stand-in used for replay.

    ``views`` > 1 caches that many randomly augmented copies of the train split (``transform`` applied at
    fill time); training then draws one view per example and epoch.
    """

    def __init__(
        self,
        model: nn.Module,
        partition: Partition,
        splits: dict[str, Split],
        *,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        budget: MemoryBudget | None = None,
        views: int = 1,
        transform=None,
        disk_dir: str | None = None,
        progress: bool = False,
    ) -> None:
        self.model = model
        self.partition = partition
        self.splits = splits
        self.device = torch.device(device)
        self.batch_size = max(2, batch_size)
        self.budget = budget or MemoryBudget.for_device(self.device)
        self.views = views
        self.transform = transform
        self.progress = progress
        self._disk_dir = disk_dir
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._entries: dict[tuple[str, int], _Entry] = {}
        self._verdicts: dict[int, tuple[str | None, str | None]] = {}
        self._used = {"gpu": 0, "ram": 0, "disk": 0}
        first = next(iter(splits.values()))
        self.stand_in: Inputs = to_device(take(first.inputs, slice(0, 1)), self.device)

    # -- queries ---------------------------------------------------------------------------------------
    def usable(self, boundary: int) -> str | None:
        """None if replay from ``boundary`` matches a plain forward on this model, else the reason."""
        if boundary not in self._verdicts:
            probe = next(iter(self.splits.values()))
            inputs = to_device(take(probe.inputs, slice(0, min(4, len(probe)))), self.device)
            self._verdicts[boundary] = verify(self.model, self.partition, boundary, inputs)
            if self._verdicts[boundary][1]:
                log.warning("prefix cache off at boundary %d: %s", boundary, self._verdicts[boundary][1])
        return self._verdicts[boundary][1]

    def mode(self, boundary: int) -> str | None:
        """The replay mode verified for ``boundary`` ("stand_in" or "skip"), None if it cannot be cached."""
        self.usable(boundary)
        return self._verdicts[boundary][0]

    def run(self, model: nn.Module, split: str, boundary: int, rows: torch.Tensor):
        """Forward ``model`` (a copy of the cached one with the same structure) from ``boundary`` for ``rows``."""
        slots, tensors = self.batch(split, boundary, rows)
        if self.mode(boundary) == SKIP:
            examples = rows % len(self.splits[split])
            return replay(model, self.partition, boundary, slots, tensors,
                          to_device(take(self.splits[split].inputs, examples), self.device), mode=SKIP)
        return replay(model, self.partition, boundary, slots, tensors, self.stand_in)

    def has(self, split: str, boundary: int) -> bool:
        return (split, boundary) in self._entries

    def rows(self, split: str) -> int:
        n = len(self.splits[split])
        return n * self.views if split == "train" else n

    def batch(self, split: str, boundary: int, index: torch.Tensor) -> tuple[list[Slot], list[torch.Tensor]]:
        """The cached arguments of ``index`` rows (row = view * N + example for an augmented train split)."""
        entry = self._entries[(split, boundary)]
        out = []
        for store in entry.storage:
            if isinstance(store, torch.Tensor):
                t = store[index.to(store.device)]
            else:
                t = torch.from_numpy(np.ascontiguousarray(store[index.numpy()]))
            out.append(t.to(self.device, non_blocking=True))
        return entry.slots, out

    def tiers(self) -> dict[tuple[str, int], str]:
        return {k: e.tier for k, e in self._entries.items()}

    # -- filling ---------------------------------------------------------------------------------------
    def ensure(self, boundaries: Iterable[int], splits: Iterable[str] | None = None) -> list[int]:
        """Fill every requested boundary that verifies and fits the budget, in one pass per split.

        Returns the boundaries now cached for all the requested splits.
        """
        names = list(splits or self.splits)
        wanted = [b for b in sorted(set(boundaries)) if self.usable(b) is None]
        for name in names:
            todo = [b for b in wanted if not self.has(name, b)]
            if todo:
                self._fill(name, todo)
        return [b for b in wanted if all(self.has(n, b) for n in names)]

    def _fill(self, name: str, boundaries: list[int]) -> None:
        split = self.splits[name]
        n_rows = self.rows(name)
        probe = to_device(take(split.inputs, slice(0, 2)), self.device)
        shapes = {b: [(s, t.shape[1:], t.dtype) for s, t in zip(*v)] for b, v in self._capture(probe, boundaries).items()}
        entries: dict[int, _Entry] = {}
        for b in boundaries:
            need = sum(n_rows * int(np.prod(shape)) * _itemsize(dt) for _, shape, dt in shapes[b])
            tier = self._reserve(need)
            if tier is None:
                log.info("prefix cache: boundary %d of %s (%.1f MB) does not fit the budget", b, name, need / 2**20)
                continue
            storage = [self._allocate(tier, (n_rows, *shape), dt, f"{name}_{b}_{i}") for i, (_, shape, dt) in enumerate(shapes[b])]
            entries[b] = _Entry([s for s, _, _ in shapes[b]], storage, tier)
        if not entries:
            return
        bars = tqdm(total=n_rows, desc=f"prefix cache ({name})", disable=not self.progress, leave=False)
        for view in range(self.views if name == "train" else 1):
            for start, stop in batch_ranges(len(split), self.batch_size):
                x = take(split.inputs, slice(start, stop))
                if name == "train" and self.transform is not None:
                    x = self.transform(x)
                captured = self._capture(to_device(x, self.device), list(entries))
                rows = slice(view * len(split) + start, view * len(split) + stop)
                for b, (_, tensors) in captured.items():
                    for store, t in zip(entries[b].storage, tensors):
                        if isinstance(store, torch.Tensor):
                            store[rows] = t.to(store.device)
                        else:
                            store[rows] = t.cpu().numpy()
                bars.update(stop - start)
        bars.close()
        for b, e in entries.items():
            self._entries[(name, b)] = e

    def _capture(self, inputs: Inputs, boundaries: list[int]):
        with eval_mode(self.model):
            return capture(self.model, self.partition, boundaries, inputs)

    def _reserve(self, need: int) -> str | None:
        for tier in ("gpu", "ram", "disk"):
            if tier == "gpu" and self.device.type != "cuda":
                continue
            if self._used[tier] + need <= getattr(self.budget, tier):
                self._used[tier] += need
                return tier
        return None

    def _allocate(self, tier: str, shape: tuple, dtype: torch.dtype, stem: str):
        if tier == "gpu":
            return torch.empty(shape, dtype=dtype, device=self.device)
        if tier == "ram":
            return torch.empty(shape, dtype=dtype, pin_memory=self.device.type == "cuda")
        if self._disk_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="autosub-cache-")
            self._disk_dir = self._tmp.name
        np_dtype = torch.empty((), dtype=dtype).numpy().dtype
        return np.memmap(os.path.join(self._disk_dir, stem + ".npy"), dtype=np_dtype, mode="w+", shape=shape)


def batch_ranges(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges covering n rows; a trailing 1-row range is merged (its batch dim is ambiguous)."""
    ranges = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(ranges) > 1 and ranges[-1][1] - ranges[-1][0] == 1:
        ranges[-2:] = [(ranges[-2][0], n)]
    return ranges


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
