"""Fused multi-trial training: K trials of one model in one process, one forward/backward per step.

SubTuning trials differ only in their few tuned blocks and their heads; every frozen block has the same weights in
every trial. A :class:`FusedGroup` therefore trains K trials (different selections, learning rates, weight decays,
seeds, epochs) as one: the frozen prefix comes from the prefix cache (each trial's rows enter at its own first
tuned block), each trial's tuned blocks and head run on its own slice of the batch, and every frozen block runs
once on the concatenation of the slices that reach it — the paper's Siamese trick applied to training
(:mod:`autosub.training.fused_forward` has the mechanics). Small batches starve a GPU (and per-op overhead
dominates a CPU step at small image sizes); a fused step turns K small batches into one large one.

Every trial keeps what makes it *its own* run, so its results equal ``fit`` with the same arguments (allclose;
tests/test_fused.py): its own head (seeded as ``fit`` seeds it), AdamW over
:func:`autosub.model.subtune.param_groups`, cosine schedule, data order (its own ``torch.Generator``), global RNG
stream (dropout), pruning and failure. A trial that is pruned (its callback raises), diverges or fails leaves the
group and the others go on unchanged; new trials join between epochs.

Engines drive a group epoch by epoch::

    group = FusedGroup(model, task, batch_size=32, cache=shared_cache)
    group.add([TrialSpec((14, 15), lr=3e-3, epochs=4, seed=0, key=7, callback=report_7), ...])
    while group.active:
        group.run_epoch()                    # one epoch of every active trial; callbacks may prune
        for outcome in group.pop_finished():  # complete, pruned or failed: tell the study
            ...
        group.add(more_specs, partial=True)   # join between epochs, as many as fit the memory limit

or all at once: ``fit_many(model, task, specs) -> list[FusedOutcome]``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from dataclasses import replace
from typing import Any, Hashable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.task import Split, Task, take, to_device
from ..errors import ConfigError, TrainingDiverged, TrialOutOfMemory, check_positive
from ..model.blocks import Partition
from ..model.splitting import STAND_IN
from ..model.subtune import FULL, Selection, first_boundary, normalize_selection, tuned_modules
from .cache import ActivationCache, MemoryBudget, batch_ranges
from .fused_checks import activation_bound, measure, module_state_bytes, verify
from .fused_forward import FusedForward, Join, Segment, cat_inputs
from .fused_trials import (COMPLETE, FAILED, PRUNED, REMOVED, FusedOutcome, FusionError, GroupMemoryError,
                           MemoryEstimate, Trial, TrialSpec, build_trial, copies_of, fresh_head, label,
                           materialize, trial_result, trial_state)
from .setup import BlocksSpec, build_cache, prepare
from .trainer import fit, validate_hparams

__all__ = ["COMPLETE", "FAILED", "PRUNED", "REMOVED", "FusedGroup", "FusedOutcome", "FusionError", "GroupMemoryError",
           "MemoryEstimate", "TrialSpec", "default_memory", "fit_many"]

MiB = 2**20

log = logging.getLogger(__name__)

_LIVE, _FROM, _JOIN = "live", "from_boundary", "join"


class FusedGroup:
    """Train several trials of ``model`` on ``task`` as one (see the module docs). The caller's model is never
    modified: the group trains one frozen trunk (a copy) and, per trial, copies of its tuned modules and its head.

    ``batch_size``, ``device``, ``amp``, ``cache``, ``cache_views`` and ``budget`` mean what they mean for
    :func:`autosub.fit` and are shared by the group's trials (a shared :class:`ActivationCache` is reused and filled
    further as trials with new boundaries join). ``memory``: bytes the trials' training state may take (see
    :class:`MemoryEstimate`); default: 80% of the free GPU memory on CUDA, half the available RAM on the CPU.
    ``prune_on``: exception types that mark a trial pruned rather than failed (default ``optuna.TrialPruned``).
    ``verify``: check, when trials join, that fused outputs equal each trial's own forward (eval mode, a few
    validation rows); a model that fails it raises :class:`FusionError` before any training.
    """

    def __init__(self, model: nn.Module, task: Task | Any, *, blocks: BlocksSpec = None, batch_size: int = 32,
                 device: str | torch.device | None = None, amp: bool | None = None,
                 cache: bool | str | ActivationCache = "auto", cache_views: int | None = None,
                 budget: MemoryBudget | None = None, memory: int | None = None, seed: int = 0,
                 prune_on: tuple[type[BaseException], ...] | None = None, keep_models: bool = True,
                 eval_batch_size: int = 256, verify: bool = True, progress: bool = False) -> None:
        check_positive("batch_size", batch_size, "FusedGroup", integer=True)
        check_positive("eval_batch_size", eval_batch_size, "FusedGroup", integer=True)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"The 'seed' parameter of FusedGroup must be an int; got {seed!r} instead.")
        if memory is not None and (isinstance(memory, bool) or not isinstance(memory, (int, float)) or memory <= 0):
            raise ConfigError(f"The 'memory' parameter of FusedGroup must be a positive number of bytes or None; got "
                              f"{memory!r} instead.")
        shared = cache if isinstance(cache, ActivationCache) else None
        self.setup = prepare(model, task, blocks=blocks, seed=seed, device=device, check=shared is None)
        self.device = dev = self.setup.device
        if shared is not None and shared.device != dev:
            raise ConfigError(f"The cache holds activations for device {shared.device} but the group runs on {dev}; "
                              f"build the ActivationCache with device={str(dev)!r}.")
        self.partition: Partition = self.setup.partition
        if self.partition.head_module is None:
            raise FusionError(f"{type(model).__name__} has no single head module to give each trial its own head; "
                              "train its trials one by one with autosub.fit.")
        self.task = self.setup.view
        self.batch_size = int(batch_size)
        self.amp = dev.type == "cuda" if amp is None else bool(amp)
        self.channels_last = dev.type == "cuda" and self.task.kind == "image"
        self.trunk = self.setup.work
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        if self.channels_last:
            self.trunk = self.trunk.to(memory_format=torch.channels_last)
        self.trunk.eval()
        self.engine = FusedForward(self.trunk, self.partition)
        self._cache_arg = cache
        self._cache = shared
        self.cache_views = cache_views
        self.budget = budget
        self.augmented = self.task.train_transform is not None
        self.memory_limit = int(memory) if memory is not None else default_memory(dev)
        self.prune_on = prune_on if prune_on is not None else _default_prune_on()
        self.keep_models = keep_models
        self.eval_batch_size = int(eval_batch_size)
        self.verify = verify
        self.dedupe = True  # identical rows of several trials run once until they fork (off if the model cannot fork)
        self.progress = progress
        self.steps_per_epoch = math.ceil(len(self.task.train) / self.batch_size)
        self._trials: dict[Hashable, Trial] = {}
        self._finished: list[FusedOutcome] = []
        self._next_slot = 0
        self.bound: float | None = None  # activation bytes per row if every block trained (fused_checks)
        self._heads: dict[int, nn.Module] = {}
        self._n_added = 0  # default keys: 0, 1, 2, … in the order trials were added
        self._loss = nn.CrossEntropyLoss()
        self.epochs_run = 0
        self.train_seconds = 0.0

    # -- membership ----------------------------------------------------------------------------------------------
    @property
    def active(self) -> list[Hashable]:
        """Keys of the trials still training, in the order they joined."""
        return list(self._trials)

    @property
    def trials(self) -> list[Trial]:
        """The active trials themselves (their copies, optimizers, curves), in the order they joined."""
        return list(self._trials.values())

    @property
    def memory_used(self) -> int:
        """Estimated training memory of the active trials, in bytes."""
        return sum(t.memory.total for t in self._trials.values() if t.memory is not None)

    def add(self, specs: TrialSpec | Sequence[TrialSpec], *, partial: bool = False) -> list[Hashable]:
        """Add trials (between epochs only); returns the keys added.

        Every spec is validated first, then its copies are built and its memory measured. If they do not all fit
        the memory limit, :class:`GroupMemoryError` is raised and none is added — or, with ``partial=True``, the
        longest prefix that fits is added and the rest are left to the caller (an engine adds them later).
        """
        specs = [specs] if isinstance(specs, TrialSpec) else list(specs)
        start = time.perf_counter()
        keys = self._check_specs(specs)
        sels = [normalize_selection(s.selection, self.partition) for s in specs]
        self._ensure_cache({first_boundary(sel, self.partition) for sel in sels})
        room = self.memory_limit - self.memory_used
        bound = activation_bound(self)
        quick = [MemoryEstimate(state_bytes=self._state_bytes(sel), activation_bytes_per_row=bound,
                                batch_size=self.batch_size, exact=False) for sel in sels]
        if sum(q.total for q in quick) <= room:  # the cheap upper bound fits: no trial needs measuring
            built = [self._build(s, k) for s, k in zip(specs, keys)]
            for t, q in zip(built, quick):
                t.memory = q
        else:  # measure each trial alone; with partial, stop at the first one that does not fit
            built, used = [], 0
            for s, k in zip(specs, keys):
                t = self._build(s, k)
                t.memory = measure(self, t)
                if partial and used + t.memory.total > room:
                    break
                used += t.memory.total
                built.append(t)
        fit_n, used = 0, 0
        for t in built:
            if used + t.memory.total > room:
                break
            used += t.memory.total
            fit_n += 1
        if fit_n < len(built) and not partial:
            per = max(t.memory.total for t in built)
            raise GroupMemoryError(
                f"{len(built)} more trial(s) would need about {_mib(sum(t.memory.total for t in built))} of training "
                f"memory (up to {_mib(per)} each at batch_size={self.batch_size}: tuned tensors, gradients and AdamW "
                f"moments {_mib(max(t.memory.state_bytes for t in built))}, activations "
                f"{_mib(max(t.memory.activation_bytes_per_row for t in built) * self.batch_size)}), but the group's "
                f"memory limit leaves {_mib(room)} (memory={_mib(self.memory_limit)}, {len(self._trials)} trial(s) "
                f"active): only {fit_n} fit. Add fewer trials (add(..., partial=True) adds those that fit), lower "
                "batch_size, or raise FusedGroup(memory=…) in bytes.")
        built = built[:fit_n]
        if built and self.verify:
            verify(self, built)
        share = (time.perf_counter() - start) / max(1, len(built))  # copies, cache fill, checks: shared by the new
        for t in built:
            t.seconds += share
            self.engine.attach(t.slot, t.modules, t.stream)
            self._trials[t.key] = t
        self._n_added += len(built)
        return [t.key for t in built]

    def _state_bytes(self, sel: Selection) -> int:
        return module_state_bytes([self.trunk.get_submodule(p) for p in tuned_modules(sel, self.partition)])

    def estimate(self, spec: TrialSpec) -> MemoryEstimate:
        """The measured training memory of ``spec`` in this group (not added): what an engine sizes K with."""
        (key,) = self._check_specs([replace(spec, key=None)])
        t = self._build(spec, key)
        self._ensure_cache({t.boundary})
        return measure(self, t)

    def remove(self, key: Hashable, *, status: str = PRUNED, error: BaseException | None = None) -> FusedOutcome:
        """Take a trial out of the group between epochs (an engine prunes it, or a scheduler stops it)."""
        if key not in self._trials:
            raise ConfigError(f"No active trial with key {key!r} in this group; active: {self.active}.")
        if status not in (PRUNED, FAILED, REMOVED):
            raise ConfigError(f"The 'status' parameter of remove must be one of {(PRUNED, FAILED, REMOVED)}; got "
                              f"{status!r} instead.")
        return self._leave(self._trials[key], status, error)

    def pop_finished(self) -> list[FusedOutcome]:
        """The outcomes of trials that left since the last call (completed, pruned, failed, removed)."""
        out, self._finished = self._finished, []
        return out

    # -- training ------------------------------------------------------------------------------------------------
    def run(self) -> list[FusedOutcome]:
        """Run epochs until no trial is active; returns every outcome not popped yet, in the order they ended."""
        while self._trials:
            self.run_epoch()
        return self.pop_finished()

    def run_epoch(self) -> None:
        """One epoch of every active trial (each its own epoch count and schedule), then its validation score,
        callback and checkpoint. Trials that finish, are pruned (their callback raised), diverge or whose checkpoint
        fails leave the group; running out of device memory fails every active trial (with advice). Any other
        exception is a bug or a model the group cannot handle and propagates (an engine then fails the group's
        trials, or retrains them one by one with ``fit``)."""
        trials = list(self._trials.values())
        if not trials:
            return
        n = len(self.task.train)
        epoch_start, started = time.perf_counter(), list(trials)
        for t in trials:
            t.perm = torch.randperm(n, generator=t.gen)
            t.loss_sum, t.count = 0.0, 0
        for m in copies_of(trials):
            m.train()
        bar = tqdm(total=self.steps_per_epoch, desc=f"fused ({len(trials)} trials)", disable=not self.progress,
                   leave=False)
        t0 = time.perf_counter()
        try:
            for s in range(0, n, self.batch_size):
                trials = [t for t in trials if t.key in self._trials]
                if not trials:
                    break
                self._step(trials, s, s // self.batch_size + 1)
                bar.update(1)
        except torch.cuda.OutOfMemoryError as exc:
            return self._out_of_memory(exc)
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        self.epochs_run += 1
        trials = [t for t in self._trials.values()]
        for t in trials:
            t.step_time += seconds
            if not all(bool(torch.isfinite(p).all()) for p in t.trainable):
                self._leave(t, FAILED, TrainingDiverged(
                    f"The tuned parameters of {label(t.selection)} became NaN/Inf at epoch {t.epoch + 1}; lower the "
                    f"learning rate (lr={t.spec.lr:g})."))
                continue
            t.seen += t.count
            t.losses.append(t.loss_sum / max(1, t.count))
        trials = [t for t in self._trials.values()]
        try:
            scores = self._evaluate(trials)
        except torch.cuda.OutOfMemoryError as exc:
            return self._out_of_memory(exc)
        for t in trials:
            t.curve.append(scores[t.slot])
            if t.spec.callback is not None:
                try:
                    t.spec.callback(t.epoch - 1, scores[t.slot])
                except Exception as exc:  # a pruned (or failing) trial leaves; the others go on
                    self._leave(t, PRUNED if isinstance(exc, self.prune_on) else FAILED, exc)
                    continue
            if t.spec.checkpoint is not None:
                try:
                    t.spec.checkpoint(trial_state(t, self.partition))
                except Exception as exc:  # e.g. a full disk: this trial fails, the others go on
                    self._leave(t, FAILED, exc)
                    continue
            if t.epoch >= t.spec.epochs:
                self._leave(t, COMPLETE, None)
        share = (time.perf_counter() - epoch_start) / len(started)
        for t in started:  # the epoch's wall time (training, validation, callbacks), split over its trials
            t.seconds += share
            if t.key not in self._trials:
                self._outcome_of(t).seconds = t.seconds

    def _out_of_memory(self, exc: BaseException) -> None:
        """A fused step or validation ran out of device memory: every active trial fails with advice."""
        for t in list(self._trials.values()):
            self._leave(t, FAILED, TrialOutOfMemory(
                f"Out of device memory in a fused step of {len(self._trials)} trials (batch_size={self.batch_size}): "
                f"{exc}. Run fewer trials per group (FusedGroup(memory=…)), lower batch_size, or keep the prefix "
                "cache off the GPU (MemoryBudget(gpu=0))."))

    def _step(self, trials: list[Trial], s: int, step: int) -> None:
        split = self.task.train
        entries = []
        for t in trials:
            idx = t.perm[s:s + self.batch_size]
            rows = idx
            if self._train_cached(t.boundary) and self._cache.views > 1:
                rows = idx + len(split) * torch.randint(self._cache.views, (len(idx),), generator=t.gen)
            entries.append((t, idx, rows))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out, spans = self.forward_rows("train", split, [(t, rows) for t, _, rows in entries], train=True)
            losses = [self._loss(out[spans[t.slot][0]:spans[t.slot][1]].float(), split.targets[idx].to(self.device))
                      for t, idx, _ in entries]
        for t in trials:
            t.optimizer.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        for t in trials:
            t.optimizer.step()
            t.scheduler.step()
        values = torch.stack([l.detach().float() for l in losses]).tolist()
        for (t, idx, _), value in zip(entries, values):
            if not math.isfinite(value):
                self._leave(t, FAILED, TrainingDiverged(
                    f"The training loss became {value} at epoch {t.epoch + 1} (step {step}) of {label(t.selection)}; "
                    f"lower the learning rate (lr={t.spec.lr:g}) or check the inputs."))
                continue
            t.loss_sum += value * len(idx)
            t.count += len(idx)

    @torch.no_grad()
    def _evaluate(self, trials: list[Trial]) -> dict[int, float]:
        """Validation accuracy of every trial, fused: one pass over the validation rows for the whole group."""
        if not trials:
            return {}
        split = self.task.val
        correct = {t.slot: 0 for t in trials}
        copies = copies_of(trials)
        for m in copies:
            m.eval()
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                # about eval_batch_size rows per forward in all: each trial gets its share of a validation batch
                chunk = max(16, self.eval_batch_size // len(trials))
                for start, stop in batch_ranges(len(split), chunk):
                    idx = torch.arange(start, stop)
                    out, spans = self.forward_rows("val", split, [(t, idx) for t in trials], train=False)
                    target = split.targets[idx]
                    for t in trials:
                        a, b = spans[t.slot]
                        correct[t.slot] += (out[a:b].argmax(-1).cpu() == target).sum().item()
        finally:
            for m in copies:
                m.train()
        return {slot: c / max(1, len(split)) for slot, c in correct.items()}

    # -- the fused forward ---------------------------------------------------------------------------------------
    def _cached(self, split: str, boundary: int) -> bool:
        c = self._cache
        if c is None or not c.has(split, boundary):
            return False
        return split == "val" or not self.augmented or c.views > 1 or bool(self.cache_views)

    def _train_cached(self, boundary: int) -> bool:
        return self._cached("train", boundary)

    def forward_rows(self, name: str, split: Split, entries: list[tuple[Trial, torch.Tensor]], *, train: bool,
                 dedupe: bool | None = None) -> tuple[Any, dict[int, tuple[int, int]]]:
        """One fused forward of ``entries`` (trial, row indices of ``split``, which is ``task.train`` for ``name``
        "train" or ``task.val`` for "val"); returns the output and each trial's ``(start, stop)`` rows in it.

        Three ways in, chosen from the cache: *join* (every trial's boundary cached with a stand-in replay: each
        trial's rows enter at its own boundary), *from the first boundary* (all rows replayed from the earliest
        boundary, e.g. a text model whose replay runs the real inputs), or *live* (from the inputs).
        """
        trials = [t for t, _ in entries]
        b0 = min(t.boundary for t in trials)
        c = self._cache
        if all(self._cached(name, t.boundary) for t in trials) and all(c.mode(t.boundary) == STAND_IN for t in trials):
            how = _JOIN
        elif self._cached(name, b0):
            how = _FROM
        else:
            how = _LIVE
        live_aug = how == _LIVE and train and self.augmented
        dedupe = self.dedupe if dedupe is None else dedupe
        groups: list[tuple[Segment, torch.Tensor, int]] = []  # segment, its rows, where it enters
        for t, rows in entries:
            enter = t.boundary if how == _JOIN else b0
            for seg, r, b in groups:
                if dedupe and not live_aug and b == enter and r.shape == rows.shape and torch.equal(r, rows):
                    seg.members = (*seg.members, t.slot)
                    break
            else:
                groups.append((Segment((t.slot,), len(rows)), rows, enter))
        n = len(split)
        if how == _LIVE:
            parts = []
            for seg, rows, _ in groups:
                x = take(split.inputs, rows % n)
                if live_aug:  # the trial's own RNG stream draws its augmentation, as in a run of its own
                    stream = self.engine.streams[seg.members[0]]
                    with stream.active() if self.engine.swap_streams else contextlib.nullcontext():
                        x = self.task.train_transform(x)
                parts.append(x)
            inputs = to_device(cat_inputs(parts), self.device, channels_last=self.channels_last)
            out, layout = self.engine.forward(inputs, [g[0] for g in groups])
        elif how == _FROM:
            all_rows = torch.cat([rows for _, rows, _ in groups])
            slots, tensors = c.batch(name, b0, all_rows)
            mode = c.mode(b0)
            feed = c.stand_in if mode == STAND_IN else to_device(take(split.inputs, all_rows % n), self.device)
            out, layout = self.engine.forward(feed, [g[0] for g in groups], boundary=b0, slots=slots,
                                              tensors=tensors, mode=mode)
        else:
            by_b: dict[int, list[tuple[Segment, torch.Tensor]]] = {}
            for seg, rows, b in groups:
                by_b.setdefault(b, []).append((seg, rows))
            joins = {}
            for b, items in by_b.items():
                slots, tensors = c.batch(name, b, torch.cat([rows for _, rows in items]))
                joins[b] = Join([seg for seg, _ in items], slots, tensors)
            first = joins.pop(b0)
            out, layout = self.engine.forward(c.stand_in, first.segments, boundary=b0, slots=first.slots,
                                              tensors=first.tensors, mode=STAND_IN, joins=joins)
        spans, start = {}, 0
        for seg in layout:
            if len(seg.members) != 1:
                raise FusionError(f"The fused forward ended with rows shared by trials {seg.members}: the head module "
                                  f"{self.partition.head_module!r} was not called on them.")
            spans[seg.members[0]] = (start, start + seg.rows)
            start += seg.rows
        if set(spans) != {t.slot for t in trials}:
            raise FusionError("The fused forward lost track of some trials' rows (a module was called outside the "
                              "block order?).")
        return out, spans

    # -- building trials -----------------------------------------------------------------------------------------
    def _check_specs(self, specs: list[TrialSpec]) -> list[Hashable]:
        keys = []
        for i, s in enumerate(specs):
            if not isinstance(s, TrialSpec):
                raise ConfigError(f"FusedGroup.add takes TrialSpec objects; got {type(s).__name__} at position {i}.")
            validate_hparams(epochs=s.epochs, lr=s.lr, batch_size=self.batch_size, weight_decay=s.weight_decay)
            if isinstance(s.seed, bool) or not isinstance(s.seed, int):
                raise ConfigError(f"The 'seed' of a TrialSpec must be an int; got {s.seed!r} instead.")
            sel = normalize_selection(s.selection, self.partition)
            if sel == FULL:
                raise FusionError("selection='all' (full finetuning) shares no frozen block with other trials; train "
                                  "it with autosub.fit.")
            key = s.key if s.key is not None else self._n_added + i
            if key in self._trials or key in keys:
                raise ConfigError(f"Trial key {key!r} is already in the group; give every TrialSpec its own key.")
            keys.append(key)
        return keys

    def _build(self, spec: TrialSpec, key: Hashable) -> Trial:
        if spec.seed not in self._heads:  # one working copy per seed, for its seeded head (fit's own head)
            self._heads[spec.seed] = fresh_head(self.setup, spec.seed)
        trial = build_trial(self.setup, self.trunk, spec, key=key, slot=self._next_slot,
                            steps_per_epoch=self.steps_per_epoch, head=self._heads[spec.seed],
                            channels_last=self.channels_last)
        self._next_slot += 1
        return trial

    def _ensure_cache(self, boundaries: set[int]) -> None:
        arg = self._cache_arg
        if arg is False or arg is None or arg == "off":
            return
        self._cache = build_cache(self.trunk, self.partition, {"train": self.task.train, "val": self.task.val},
                                  sorted(boundaries), device=self.device, batch_size=self.batch_size,
                                  memory=self.budget, views=self.cache_views or 1,
                                  transform=self.task.train_transform if self.cache_views else None,
                                  augmented=self.augmented, progress=self.progress,
                                  cache=self._cache if self._cache is not None else True)

    def _outcome_of(self, t: Trial) -> FusedOutcome:
        return next(o for o in reversed(self._finished) if o.key == t.key)

    def _leave(self, t: Trial, status: str, error: BaseException | None) -> FusedOutcome:
        self._trials.pop(t.key, None)
        self.engine.detach(t.slot)
        model = materialize(self.setup, t, channels_last=self.channels_last) \
            if status == COMPLETE and self.keep_models and t.curve else None
        result = trial_result(t, batch_size=self.batch_size, cached=self._train_cached(t.boundary), model=model)
        outcome = FusedOutcome(key=t.key, status=status, result=result, error=error, seconds=t.seconds)
        if status != COMPLETE:
            log.info("fused group: trial %r (%s) left: %s%s", t.key, label(t.selection), status,
                     f" ({type(error).__name__}: {error})" if error is not None else "")
        t.optimizer.state.clear()
        self._finished.append(outcome)
        return outcome

def fit_many(model: nn.Module, task: Task | Any, specs: Sequence[TrialSpec], *, fallback: bool = False,
             split: bool = False, **group: Any) -> list[FusedOutcome]:
    """Train ``specs`` as fused groups; one :class:`FusedOutcome` per spec, in the order given.

    ``group``: :class:`FusedGroup`'s keywords (``blocks``, ``batch_size``, ``device``, ``cache``, ``memory``, …).
    ``split=True`` runs the specs in as many consecutive groups as the memory limit needs (else a K that does not
    fit raises :class:`GroupMemoryError` before any training). ``fallback=True`` trains the specs one by one with
    :func:`autosub.fit` when the model cannot be fused (:class:`FusionError`), with a warning.
    """
    specs = list(specs)
    if not specs:
        return []
    keys = [s.key if s.key is not None else i for i, s in enumerate(specs)]
    if len(set(keys)) != len(keys):
        raise ConfigError("fit_many got two TrialSpecs with the same key; give each its own key (or none).")
    specs = [s if s.key is not None else _with_key(s, k) for s, k in zip(specs, keys)]
    try:
        outcomes: dict[Hashable, FusedOutcome] = {}
        g = FusedGroup(model, task, **group)
        todo = list(specs)
        while todo:
            added = g.add(todo, partial=split)
            if not added and not g.active:
                raise GroupMemoryError(f"Not even one trial fits the memory limit ({_mib(g.memory_limit)}); raise "
                                       "memory= or lower batch_size.")
            todo = todo[len(added):]
            for o in g.run():
                outcomes[o.key] = o
        return [outcomes[k] for k in keys]
    except FusionError as exc:
        if not fallback:
            raise
        warnings.warn(f"fit_many: training {len(specs)} trials one by one: {exc}", RuntimeWarning, stacklevel=2)
        return [_fit_one(model, task, s, group) for s in specs]


def _fit_one(model: nn.Module, task: Any, s: TrialSpec, group: Mapping[str, Any]) -> FusedOutcome:
    """``fit`` for one spec, as an outcome (the fallback path of :func:`fit_many`)."""
    keep = {k: group[k] for k in ("blocks", "batch_size", "device", "amp", "cache", "cache_views", "budget")
            if k in group}
    prune_on = group.get("prune_on") or _default_prune_on()
    try:
        res = fit(model, task, s.selection, epochs=s.epochs, lr=s.lr, weight_decay=s.weight_decay,
                  lr_multipliers=s.lr_multipliers, seed=s.seed, callback=s.callback, checkpoint=s.checkpoint,
                  resume=s.resume, keep_model=group.get("keep_models", True), **keep)
    except Exception as exc:
        if isinstance(exc, ConfigError):
            raise
        return FusedOutcome(s.key, PRUNED if isinstance(exc, prune_on) else FAILED, None, exc)
    return FusedOutcome(s.key, COMPLETE, res, None)


def _with_key(s: TrialSpec, key: Hashable) -> TrialSpec:
    return replace(s, key=key)


def default_memory(device: torch.device) -> int:
    """80% of the free GPU memory (CUDA), else half the RAM available now (MemAvailable: free pages plus the page
    cache the kernel can reclaim — free pages alone are a small share of the RAM of a machine that has run a
    while)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if ":" in line}
        return int(info["MemAvailable"] // 2)
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def _default_prune_on() -> tuple[type[BaseException], ...]:
    try:
        import optuna
    except ImportError:  # pragma: no cover - optuna is a dependency
        return ()
    return (optuna.TrialPruned,)


def _mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"
