"""The one setup path: what every run needs before it trains, built the same way for every caller.

``fit``, ``profile``, ``greedy``, ``search`` and ``SearchResult.to_model`` (and the predictor, the benchmark
harness and multi-task deployment) all start here: a working copy of the caller's model with a fresh, seeded head
on the device (the caller's model is never modified), its blocks — discovered on that copy, or the user's
``blocks=`` override, accepted wherever a model is —, the task checked against the model, the *selection view*
of the task (train + val only: nothing that selects blocks or hyperparameters can reach the test split), and the
prefix activation cache, filled at every boundary a caller needs in one pass.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import torch
from torch import nn

from ..data.sources import as_task
from ..data.task import Split, Task, take, to_device
from ..errors import BlockDiscoveryError, ConfigError, DataError
from ..model.blocks import Partition, discover_blocks
from ..model.heads import replace_head
from ..model.splitting import eval_mode
from .cache import ActivationCache, MemoryBudget

__all__ = ["BlocksSpec", "Setup", "blocks_spec", "build_cache", "check_task", "prepare", "resolve_blocks",
           "resolve_device", "selection_view", "with_head"]

log = logging.getLogger(__name__)

# What ``blocks=`` accepts everywhere: None (discover), a regex over module names, a list of module names (or lists
# of names, one list per block), or a Partition built on the model's working copy.
BlocksSpec = Union[None, str, Sequence[Union[str, Sequence[str]]], Partition]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → CUDA when available, else CPU; a device that does not exist here is refused before any work."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"The 'device' parameter must be None, 'cpu', 'cuda' or 'cuda:N'; got {device!r} "
                          "instead.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={str(dev)!r} was asked for but this machine has no usable CUDA device; pass "
                          "device='cpu' (or None: CUDA when available).")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={str(dev)!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1}).")
    return dev


def selection_view(task: Task) -> Task:
    """The task without its test split: what block selection may see (so nothing downstream can read test)."""
    return Task(train=task.train, val=task.val, num_classes=task.num_classes, test=None, kind=task.kind,
                train_transform=task.train_transform, meta=dict(task.meta))


def with_head(model: nn.Module, num_classes: int, *, seed: int, device: torch.device | None = None) -> nn.Module:
    """A deep copy of ``model`` with a fresh ``num_classes``-way head (seeded), on ``device``, in eval mode."""
    work = replace_head(copy.deepcopy(model), num_classes, seed=seed)
    return (work.to(device) if device is not None else work).eval()


def resolve_blocks(work: nn.Module, blocks: BlocksSpec = None) -> Partition:
    """The blocks of the working copy: discovered, the user's override, or a given Partition checked to fit it."""
    if isinstance(blocks, Partition):
        names = {n for n, _ in work.named_parameters()}
        given = [n for b in blocks for n in b.param_names] + list(blocks.head) + list(blocks.stem)
        missing = [n for n in given if n not in names]
        if missing:
            raise BlockDiscoveryError(
                f"The Partition does not fit this model: parameters {missing[:3]} do not exist in "
                f"{type(work).__name__} (was it built on another model, or before autosub wrapped it with a head?). "
                "Build it with autosub.discover_blocks(model) on the same model, or pass blocks= as module names.")
        return blocks
    return discover_blocks(work, blocks=blocks)


def blocks_spec(partition: Partition) -> list[list[str]] | None:
    """A JSON-able ``blocks=`` value that rebuilds ``partition`` (None when it was discovered automatically)."""
    return [list(b.modules) for b in partition] if partition.source == "user" else None


def check_task(model: nn.Module, task: Task) -> None:
    """Reject a task the model cannot take, before any training: one forward on two training examples."""
    if len(task.train) == 0 or len(task.val) == 0:
        raise DataError("The task has an empty train or validation split; give at least one example per class to each.")
    if task.num_classes < 2:
        raise DataError(f"A classification task needs at least 2 classes; got num_classes={task.num_classes}.")
    for split in (task.train, task.val):
        tensors = split.inputs.values() if isinstance(split.inputs, Mapping) else [split.inputs]
        for x in tensors:
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
                raise DataError(f"The {split.name} split has {bad} example(s) with NaN or Inf inputs; drop or fix "
                                "them before training (e.g. torch.nan_to_num, or filter with torch.isfinite).")
    probe = take(task.train.inputs, slice(0, min(2, len(task.train))))
    try:
        with eval_mode(model), torch.no_grad():
            model(to_device(probe, next(model.parameters()).device))
    except Exception as exc:
        shape = tuple(probe.shape[1:]) if isinstance(probe, torch.Tensor) else {k: tuple(v.shape[1:]) for k, v in
                                                                               probe.items()}
        cfg = getattr(model, "pretrained_cfg", None) or {}
        hint = f" The model expects input_size {tuple(cfg['input_size'])}." if "input_size" in cfg else ""
        raise DataError(
            f"The model could not take inputs of shape {shape}: {type(exc).__name__}: {exc}.{hint} "
            "Prepare images with autosub.data.prepare_images(x, image_size=..., channels=3, mean=..., std=...) "
            "or load a dataset with autosub.datasets.<name>(model=model)."
        ) from exc


@dataclass
class Setup:
    """A prepared run: the caller's model, its working copy with a fresh head, its blocks, the view without test."""

    model: nn.Module  # the caller's model: never modified; every trial trains its own copy of it
    work: nn.Module  # copy + fresh head, on ``device``, eval mode: what blocks, the cache and FLOPs are read from
    partition: Partition
    view: Task  # train + val only
    device: torch.device
    seed: int

    @property
    def num_classes(self) -> int:
        return self.view.num_classes

    def fresh_copy(self, *, seed: int | None = None) -> nn.Module:
        """Another working copy (fresh head seeded with ``seed``, default the setup's) to train one run on."""
        return with_head(self.model, self.num_classes, seed=self.seed if seed is None else seed, device=self.device)

    def example(self) -> Any:
        """One training example on the device (for FLOP counting and shape checks)."""
        return to_device(take(self.view.train.inputs, slice(0, 1)), self.device)

    def cache(self, boundaries: Sequence[int], *, batch_size: int = 32, memory: MemoryBudget | None = None,
              progress: bool = False, cache: bool | ActivationCache = True) -> ActivationCache | None:
        """The prefix cache over train + val at ``boundaries`` (see :func:`build_cache`)."""
        splits = {"train": self.view.train, "val": self.view.val}
        return build_cache(self.work, self.partition, splits, boundaries, device=self.device, batch_size=batch_size,
                           memory=memory, augmented=self.view.train_transform is not None, progress=progress,
                           cache=cache)


def prepare(model: nn.Module, task: Task | Any, *, blocks: BlocksSpec = None, seed: int = 0,
            device: str | torch.device | None = None, check: bool = True) -> Setup:
    """Set up a run of ``model`` on ``task`` (see the module docs); ``check`` runs the task through the model once.

    ``task`` is a Task or anything :func:`autosub.as_task` takes (``(X, y)``, a torch Dataset, an ImageFolder path).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"The 'model' must be a torch.nn.Module; got {type(model).__name__} instead.")
    if not isinstance(task, Task):  # the same raw-data forms everywhere a task is: (X, y), a Dataset, a folder…
        task = as_task(task)
    if next(model.parameters(), None) is None:
        raise ConfigError(f"The model {type(model).__name__} has no parameters; pass a pretrained network.")
    dev = resolve_device(device)
    view = selection_view(task)
    work = with_head(model, view.num_classes, seed=seed, device=dev)
    partition = resolve_blocks(work, blocks)
    if check:
        check_task(work, view)
    return Setup(model=model, work=work, partition=partition, view=view, device=dev, seed=seed)


def build_cache(work: nn.Module, partition: Partition, splits: Mapping[str, Split], boundaries: Sequence[int], *,
                device: torch.device, batch_size: int, memory: MemoryBudget | None = None, views: int = 1,
                transform: Any = None, augmented: bool = False, progress: bool = False,
                cache: bool | ActivationCache = True) -> ActivationCache | None:
    """ONE prefix cache on ``work`` for ``splits``, filled at every requested boundary in one pass per split.

    ``cache``: True builds one, an ActivationCache is reused (and filled further), False/None turns caching off.
    An augmented train split (a random ``train_transform``) is cached only as ``views`` fixed views with
    ``transform``; otherwise only its non-train splits are.
    """
    if cache is False or cache is None:
        return None
    t0 = time.perf_counter()
    shared = cache if isinstance(cache, ActivationCache) else ActivationCache(
        work, partition, dict(splits), device=device, batch_size=max(64, batch_size), budget=memory, views=views,
        transform=transform, progress=progress)
    names = [n for n in splits if not (augmented and n == "train" and transform is None)]
    got = shared.ensure(sorted(set(boundaries)), names)
    log.info("prefix cache: %d of %d boundaries filled for %s in %.1fs", len(got), len(set(boundaries)), names,
             time.perf_counter() - t0)
    return shared
