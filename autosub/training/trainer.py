"""Fit one selection: a fresh head, the selected blocks trainable, AdamW + cosine, per-epoch validation.

Everything before the first selected block is frozen and in eval mode, so its output is computed once per
example (the prefix cache) and every epoch runs only from that block on. Profiles and searches call
``fit`` many times; they pass one shared ``ActivationCache`` so the prefix is never computed twice.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.task import Split, Task, take, to_device
from ..errors import ConfigError, TrainingDiverged, TrialOutOfMemory, check_positive
from ..model.blocks import Partition
from ..model.splitting import eval_mode
from ..model.subtune import FULL, Selection, first_boundary, freeze, normalize_selection, param_groups, set_modes
from .cache import ActivationCache, MemoryBudget, batch_ranges
from .checkpoint import CheckpointHook, FitState, capture, restore
from .setup import BlocksSpec, build_cache, prepare, resolve_device

__all__ = ["EpochCallback", "FitResult", "evaluate", "fit", "validate_hparams"]

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, float], None]


@dataclass
class FitResult:
    """What one training run produced. ``score`` is the last epoch's validation accuracy.

    ``wall_time`` covers everything (copy, cache fill, evaluation); ``examples_per_s`` only the training steps.
    """

    selection: Selection
    score: float
    curve: list[float]
    train_loss: list[float]
    wall_time: float
    examples_per_s: float
    trainable_params: int
    epochs: int
    hparams: dict = field(default_factory=dict)
    cached: bool = False
    model: nn.Module | None = field(default=None, repr=False)
    resumed_from: int = 0

    @property
    def best_score(self) -> float:
        return max(self.curve) if self.curve else float("nan")


def validate_hparams(*, epochs: int, lr: float, batch_size: int, weight_decay: float) -> None:
    """scikit-learn-style errors for the training hyperparameters (finite, positive; weight decay >= 0)."""
    check_positive("epochs", epochs, "fit", integer=True)
    check_positive("lr", lr, "fit")
    check_positive("batch_size", batch_size, "fit", integer=True)
    if (isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not math.isfinite(weight_decay)
            or weight_decay < 0):
        raise ConfigError(f"The 'weight_decay' parameter of fit must be a finite number >= 0; got {weight_decay!r} "
                          "instead.")


def fit(
    model: nn.Module,
    task: Task,
    selection: Selection | list[int] | int,
    *,
    blocks: BlocksSpec = None,
    partition: Partition | None = None,
    epochs: int = 3,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    lr_multipliers: Mapping[int, float] | None = None,
    batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    cache: bool | str | ActivationCache = "auto",
    cache_views: int | None = None,
    budget: MemoryBudget | None = None,
    callback: EpochCallback | None = None,
    checkpoint: CheckpointHook | None = None,
    resume: FitState | None = None,
    keep_model: bool = True,
    progress: bool = False,
) -> FitResult:
    """SubTune ``selection`` of ``model`` on ``task``; the caller's model is never modified (a copy trains).

    ``selection``: block indices such as ``(14, 15)``, ``"probe"`` (the new head only) or ``"all"`` (full
    finetuning). ``blocks``: the discovery override (a regex or module names, see :func:`autosub.discover_blocks`)
    or a Partition (``partition=`` is the same, kept for callers that pass one). ``cache``: ``"auto"`` builds a prefix
    cache for this run, an :class:`ActivationCache` is shared (profiles and searches pass one), ``False`` trains
    uncached. ``checkpoint(state)`` is called after every epoch with the run's :class:`FitState`; ``resume=state``
    continues such a run (same arguments) after ``state.epoch`` epochs, as if never stopped.
    """
    validate_hparams(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay)
    start = time.perf_counter()
    dev = resolve_device(device)
    amp = dev.type == "cuda" if amp is None else amp
    shared = cache if isinstance(cache, ActivationCache) else None
    if shared is not None and shared.device != dev:
        raise ConfigError(f"The cache holds activations for device {shared.device} but fit runs on {dev}; build the "
                          f"ActivationCache with device={str(dev)!r} or pass device={str(shared.device)!r} to fit.")
    run = prepare(model, task, blocks=partition if partition is not None else blocks, seed=seed, device=dev,
                  check=shared is None)
    work, partition = run.work, run.partition
    sel = normalize_selection(selection, partition)
    n_trainable = freeze(work, sel, partition)
    set_modes(work, sel, partition)
    if dev.type == "cuda" and task.kind == "image":
        work = work.to(memory_format=torch.channels_last)

    boundary = first_boundary(sel, partition)
    augmented = task.train_transform is not None
    cached_splits: set[str] = set()
    if boundary is not None and cache is not False and cache != "off":
        shared = build_cache(work, partition, {"train": task.train, "val": task.val}, [boundary], device=dev,
                             batch_size=batch_size, memory=budget, views=cache_views or 1,
                             transform=task.train_transform if cache_views else None, augmented=augmented,
                             progress=progress, cache=shared if shared is not None else True)
        train_ok = not augmented or shared.views > 1 or bool(cache_views)  # never unaugmented rows for a random aug
        cached_splits = {name for name in ("train", "val") if shared.has(name, boundary) and (name == "val" or train_ok)}

    groups = param_groups(work, sel, partition, lr=lr, weight_decay=weight_decay, lr_multipliers=lr_multipliers)
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    n = len(task.train)
    steps_per_epoch = math.ceil(n / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, epochs * steps_per_epoch) / (epochs * steps_per_epoch)))
    )
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    curve, losses = [], []
    seen, step_time = 0, 0.0
    if resume is not None:
        restore(resume, work, sel, partition, optimizer, scheduler, gen, epochs=epochs)
        curve, losses, seen, step_time = list(resume.curve), list(resume.train_loss), resume.seen, resume.step_time
    done = resume.epoch if resume is not None else 0
    bar = tqdm(total=epochs * steps_per_epoch, initial=done * steps_per_epoch, desc=f"fit {_label(sel)}",
               disable=not progress, leave=False)
    trainable = [p for p in work.parameters() if p.requires_grad]
    try:
        for epoch in range(done, epochs):
            perm = torch.randperm(n, generator=gen)
            total, count = 0.0, 0
            epoch_start = time.perf_counter()
            for s in range(0, n, batch_size):
                idx = perm[s : s + batch_size]
                y = task.train.targets[idx].to(dev)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    if "train" in cached_splits:
                        rows = idx
                        if shared.views > 1:
                            rows = idx + n * torch.randint(shared.views, (len(idx),), generator=gen)
                        out = shared.run(work, "train", boundary, rows)
                    else:
                        x = take(task.train.inputs, idx)
                        if augmented:
                            x = task.train_transform(x)
                        out = work(to_device(x, dev, channels_last=dev.type == "cuda"))
                    loss = loss_fn(out.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingDiverged(f"The training loss became {value} at epoch {epoch + 1} (step "
                                           f"{s // batch_size + 1}) of {_label(sel)}; lower the learning rate "
                                           f"(lr={lr:g}) or check the inputs.")
                total += value * len(idx)
                count += len(idx)
                bar.update(1)
            step_time += time.perf_counter() - epoch_start
            if not all(bool(torch.isfinite(p).all()) for p in trainable):
                raise TrainingDiverged(f"The tuned parameters of {_label(sel)} became NaN/Inf at epoch {epoch + 1}; "
                                       f"lower the learning rate (lr={lr:g}).")
            seen += count
            losses.append(total / count)
            score = evaluate(work, task.val, cache=shared if "val" in cached_splits else None, boundary=boundary,
                             partition=partition, device=dev, amp=amp, cache_key="val")
            curve.append(score)
            set_modes(work, sel, partition)
            bar.set_postfix(val=f"{score:.3f}")
            if callback is not None:
                callback(epoch, score)
            if checkpoint is not None:
                checkpoint(capture(work, sel, partition, optimizer, scheduler, gen, epoch=epoch + 1, curve=curve, train_loss=losses,
                                   seen=seen, step_time=step_time))
    except torch.cuda.OutOfMemoryError as exc:
        raise TrialOutOfMemory(
            f"Out of device memory training {_label(sel)} (batch_size={batch_size}): {exc}. Lower batch_size, keep "
            "the prefix cache off the GPU (MemoryBudget(gpu=0)), or run fewer trials per GPU (RayBackend "
            "resources_per_trial={'gpu': …}).") from exc
    finally:
        bar.close()
    return FitResult(
        selection=sel,
        score=curve[-1],
        curve=curve,
        train_loss=losses,
        wall_time=time.perf_counter() - start,
        examples_per_s=seen / max(step_time, 1e-9),
        trainable_params=n_trainable,
        epochs=epochs,
        hparams={"lr": lr, "weight_decay": weight_decay, "batch_size": batch_size, "epochs": epochs,
                 "lr_multipliers": dict(lr_multipliers or {}), "seed": seed},
        cached="train" in cached_splits,
        model=work.eval() if keep_model else None,
        resumed_from=done,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    *,
    cache: ActivationCache | None = None,
    boundary: int | None = None,
    partition: Partition | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    amp: bool = False,
    cache_key: str | None = None,
) -> float:
    """Accuracy of ``model`` on ``split``; from the prefix cache when one covers (``split``, ``boundary``)."""
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    name = cache_key or split.name
    use_cache = cache is not None and boundary is not None and cache.has(name, boundary)
    correct = 0
    with eval_mode(model), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        for start, stop in batch_ranges(len(split), batch_size):
            idx = torch.arange(start, stop)
            if use_cache:
                out = cache.run(model, name, boundary, idx)
            else:
                out = model(to_device(take(split.inputs, idx), dev, channels_last=dev.type == "cuda"))
            correct += (out.argmax(-1).cpu() == split.targets[idx]).sum().item()
    return correct / max(1, len(split))


def _label(sel: Selection) -> str:
    return "full" if sel == FULL else ("probe" if not sel else "blocks " + ",".join(map(str, sel)))
