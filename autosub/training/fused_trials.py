"""The trials of a fused group: what a trial is (its spec, its own modules and state) and how it ends.

A :class:`TrialSpec` says what ``fit`` would get for one trial; :func:`build_trial` gives it its own copies of its
tuned modules and head — taken from a working copy built exactly as ``fit`` builds one (a fresh head seeded with the
trial's seed), so both start from the same tensors — its AdamW over ``param_groups``, its cosine schedule, its data
generator and its RNG stream. :class:`TrialView` shows those copies under the trunk's parameter names, so
``param_groups``, ``tuned_tensors`` and the checkpoint functions read a trial as they read a model. A trial ends in a
:class:`FusedOutcome` (complete / pruned / failed / removed) holding a :class:`~autosub.training.trainer.FitResult`.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..model.subtune import (FULL, Selection, first_boundary, freeze, normalize_selection, param_groups,
                             trainable_names, tuned_modules)
from .checkpoint import CheckpointHook, FitState, capture, restore
from .fused_forward import RngStream
from .setup import Setup
from .trainer import EpochCallback, FitResult

__all__ = ["COMPLETE", "FAILED", "PRUNED", "REMOVED", "FusedOutcome", "FusionError", "GroupMemoryError",
           "MemoryEstimate", "Trial", "TrialSpec", "TrialView", "build_trial", "copies_of", "fresh_head", "label",
           "materialize", "trial_result", "trial_state"]

COMPLETE, PRUNED, FAILED, REMOVED = "complete", "pruned", "failed", "removed"


class FusionError(ConfigError):
    """This model or selection cannot be trained fused (e.g. full finetuning, or a block whose modules are not
    called one after another); train those trials one by one with :func:`autosub.fit` (``fit_many`` falls back)."""


class GroupMemoryError(ConfigError):
    """The trials asked for do not fit the group's memory limit; the message says how many do."""


@dataclass
class TrialSpec:
    """One trial of a fused group: what ``fit`` would get for it, plus its key and hooks.

    ``callback(epoch, score)`` runs after each of its epochs, as ``fit``'s; raising an exception makes the trial
    leave the group (status ``"pruned"`` for one of the group's ``prune_on`` types, such as ``optuna.TrialPruned``,
    else ``"failed"``). ``checkpoint(state)`` gets its :class:`FitState` after every epoch (the same state ``fit``
    writes, so a trial checkpointed in a group can resume with ``fit(resume=…)`` and vice versa); ``resume=state``
    continues one.
    """

    selection: Selection | Sequence[int] | int
    lr: float = 1e-3
    weight_decay: float = 0.05
    lr_multipliers: Mapping[int, float] | None = None
    epochs: int = 3
    seed: int = 0
    key: Hashable | None = None
    callback: EpochCallback | None = None
    checkpoint: CheckpointHook | None = None
    resume: FitState | None = None


@dataclass
class FusedOutcome:
    """How one trial of a group ended: ``status`` complete / pruned / failed / removed, with what it trained.

    ``result`` is the trial's :class:`FitResult` (for a pruned or failed trial: the epochs it completed, no model;
    None if it failed before completing one); ``error`` the exception that ended it, if any. ``seconds``: the
    trial's share of the group's wall time (each epoch's time split over the trials in it, and each ``add``'s over
    the trials it added), so the outcomes of a group sum to its wall time — what a budget should be charged.
    ``result.wall_time`` is the time from joining to leaving, which overlaps the other trials'.
    """

    key: Hashable
    status: str
    result: FitResult | None
    error: BaseException | None = None
    seconds: float = 0.0

    @property
    def epochs_done(self) -> int:
        return len(self.result.curve) if self.result is not None else 0


@dataclass
class MemoryEstimate:
    """Training memory of one trial in a group: its tensors (parameters, gradients, AdamW moments, buffers) and
    the activations autograd saves for its rows (measured on a probe forward, scaled to the batch size).

    ``exact=False``: the activations are the group's upper bound (every block training), used while it fits."""

    state_bytes: int
    activation_bytes_per_row: float
    batch_size: int
    exact: bool = True

    @property
    def total(self) -> int:
        return int(self.state_bytes + self.activation_bytes_per_row * self.batch_size)


class TrialView:
    """A trial's tuned modules under the trunk's parameter names: what ``param_groups``, ``tuned_tensors`` and the
    checkpoint functions read from a model, without building the model."""

    def __init__(self, trunk: nn.Module, modules: Mapping[str, nn.Module]) -> None:
        own = {f"{path}.{n}": p for path, m in modules.items() for n, p in m.named_parameters()}
        order = [n for n, _ in trunk.named_parameters()]
        self._params = [(n, own[n]) for n in order if n in own]
        self._buffers = [(f"{path}.{n}", b) for path, m in modules.items() for n, b in m.named_buffers()]
        self.names = set(own)

    def named_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        return iter(self._params)

    def named_buffers(self) -> Iterable[tuple[str, torch.Tensor]]:
        return iter(self._buffers)

    def load_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = False) -> None:
        with torch.no_grad():
            for name, t in [*self._params, *self._buffers]:
                if name in state:
                    t.copy_(state[name])


@dataclass
class Trial:
    """One trial of a group: its copies, optimizer, schedule, data order, RNG stream and what it has produced."""

    slot: int
    key: Hashable
    spec: TrialSpec
    selection: Selection
    boundary: int
    modules: dict[str, nn.Module]
    view: TrialView
    optimizer: torch.optim.Optimizer
    scheduler: Any
    gen: torch.Generator
    stream: RngStream
    trainable: list[nn.Parameter]
    n_trainable: int
    memory: MemoryEstimate | None = None
    curve: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seen: int = 0
    step_time: float = 0.0
    resumed_from: int = 0
    seconds: float = 0.0  # its share of the group's wall time so far
    started: float = field(default_factory=time.perf_counter)
    # per-epoch scratch
    perm: torch.Tensor | None = None
    loss_sum: float = 0.0
    count: int = 0

    @property
    def epoch(self) -> int:
        return len(self.curve)


def fresh_head(setup: Setup, seed: int) -> nn.Module:
    """The head ``fit(seed=seed)`` starts from: built on a working copy exactly as ``fit`` builds one."""
    return setup.fresh_copy(seed=seed).get_submodule(setup.partition.head_module)


def build_trial(setup: Setup, trunk: nn.Module, spec: TrialSpec, *, key: Hashable, slot: int, steps_per_epoch: int,
                head: nn.Module, channels_last: bool = False) -> Trial:
    """A trial's own copies of its tuned modules (from the frozen ``trunk``: the same tensors as a working copy's)
    and of ``head`` (its seed's :func:`fresh_head`), so it starts exactly where ``fit`` starts; with its optimizer,
    schedule, data generator and RNG stream (restored from ``spec.resume`` when given)."""
    partition = setup.partition
    sel = normalize_selection(spec.selection, partition)
    paths = tuned_modules(sel, partition)
    modules = {p: copy.deepcopy(head if p == partition.head_module else trunk.get_submodule(p)) for p in paths}
    if channels_last:
        modules = {p: m.to(memory_format=torch.channels_last) for p, m in modules.items()}
    view = TrialView(trunk, modules)
    want = trainable_names(sel, partition, trunk)
    if view.names != want:
        extra = sorted(want ^ view.names)[:3]
        raise FusionError(f"The parameters of {label(sel)} are not exactly those of its modules {paths} (e.g. "
                          f"{extra}): a block's parameters must live in its modules to give each trial its own copy. "
                          "Train it with autosub.fit.")
    for m in modules.values():
        for p in m.parameters():
            p.requires_grad_(True)
        m.train()
    groups = param_groups(view, sel, partition, lr=spec.lr, weight_decay=spec.weight_decay,
                          lr_multipliers=spec.lr_multipliers)
    optimizer = torch.optim.AdamW(groups, lr=spec.lr, weight_decay=spec.weight_decay)
    total = spec.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    gen = torch.Generator().manual_seed(spec.seed)
    stream = RngStream(spec.seed, setup.device)
    trainable = [p for _, p in view.named_parameters()]
    t = Trial(slot=slot, key=key, spec=spec, selection=sel, boundary=first_boundary(sel, partition),
              modules=modules, view=view, optimizer=optimizer, scheduler=scheduler, gen=gen, stream=stream,
              trainable=trainable, n_trainable=sum(p.numel() for p in trainable))
    if spec.resume is not None:
        with stream.active():
            restore(spec.resume, view, sel, partition, optimizer, scheduler, gen, epochs=spec.epochs)
        t.curve, t.losses = list(spec.resume.curve), list(spec.resume.train_loss)
        t.seen, t.step_time, t.resumed_from = spec.resume.seen, spec.resume.step_time, spec.resume.epoch
    return t


def trial_state(t: Trial, partition: Any) -> FitState:
    """The trial's :class:`FitState` after its last epoch — the very state ``fit`` would checkpoint."""
    with t.stream.active():
        return capture(t.view, t.selection, partition, t.optimizer, t.scheduler, t.gen, epoch=t.epoch, curve=t.curve,
                       train_loss=t.losses, seen=t.seen, step_time=t.step_time)


def materialize(setup: Setup, t: Trial, *, channels_last: bool = False) -> nn.Module:
    """The trial's model as ``fit`` returns it: a working copy with the trial's trained modules put in."""
    work = setup.fresh_copy(seed=t.spec.seed)
    if channels_last:
        work = work.to(memory_format=torch.channels_last)
    for path, m in t.modules.items():
        work.set_submodule(path, m)
    freeze(work, t.selection, setup.partition)
    return work.eval()


def trial_result(t: Trial, *, batch_size: int, cached: bool, model: nn.Module | None) -> FitResult | None:
    """What the trial trained, as ``fit`` reports it (None before its first epoch)."""
    if not t.curve:
        return None
    return FitResult(
        selection=t.selection, score=t.curve[-1], curve=list(t.curve), train_loss=list(t.losses),
        wall_time=time.perf_counter() - t.started, examples_per_s=t.seen / max(t.step_time, 1e-9),
        trainable_params=t.n_trainable, epochs=t.spec.epochs,
        hparams={"lr": t.spec.lr, "weight_decay": t.spec.weight_decay, "batch_size": batch_size,
                 "epochs": t.spec.epochs, "lr_multipliers": dict(t.spec.lr_multipliers or {}), "seed": t.spec.seed},
        cached=cached, model=model, resumed_from=t.resumed_from)


def copies_of(trials: Iterable[Trial]) -> list[nn.Module]:
    """Every module copy the ``trials`` own (their tuned blocks' modules and heads)."""
    return [m for t in trials for m in t.modules.values()]


def label(sel: Selection) -> str:
    """How logs and messages name a selection."""
    return "full" if sel == FULL else ("probe" if not sel else "blocks " + ",".join(map(str, sel)))
