"""What a fused group checks before trials join: how much memory they need, and that fusing them is exact.

* **Memory** — a trial's tensors (parameters, gradients, two AdamW moments, buffers) plus the activations autograd
  saves for its rows. :func:`activation_bound` measures once per group what a row would save if *every* block
  trained (an upper bound for any trial); only when that bound does not fit does :func:`measure` probe a trial alone
  (train mode, no trace left: BatchNorm buffers restored, RNG untouched).
* **Exactness** — :func:`verify` runs the group fused on a few validation rows (distinct rows per trial, so a row
  sent through the wrong copy shows; then shared rows, so forks run) and compares each new trial with its own
  forward. Fresh copies equal the frozen modules, so for the check each trial's copies are perturbed (and restored).
  A model that fails raises :class:`~autosub.training.fused_trials.FusionError` before any training; one that only
  fails the shared-rows probe (a text encoder hands every layer a mask made for the input rows) trains without
  sharing identical rows.
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

from ..data.task import take, to_device
from ..model.splitting import boundary_module
from .fused_trials import FusionError, MemoryEstimate, Trial, copies_of, label

if TYPE_CHECKING:  # pragma: no cover
    from .fused import FusedGroup

__all__ = ["activation_bound", "measure", "module_state_bytes", "state_bytes", "verify"]

log = logging.getLogger(__name__)


def measure(group: FusedGroup, t: Trial) -> MemoryEstimate:
    """Tuned-tensor bytes ×4 (parameter, gradient, two AdamW moments) + buffers, and the activation bytes per row
    autograd saves on a probe forward of this trial alone at 2 and 4 rows (the difference: no fixed costs).
    The probe runs in train mode but leaves no trace: BatchNorm buffers are restored, and the RNG is untouched."""
    state = state_bytes(t)
    fixed = {x.untyped_storage().data_ptr() for m in (group.trunk, *t.modules.values())
             for x in (*m.parameters(), *m.buffers())}
    n = len(group.task.train)
    sizes = [min(2, n), min(4, n)]
    saved_bytes = []
    snapshot = {name: b.detach().clone() for name, b in t.view.named_buffers()}
    group.engine.attach(t.slot, t.modules, t.stream)
    group.engine.swap_streams = False
    try:
        with torch.random.fork_rng(devices=[group.device] if group.device.type == "cuda" else []):
            for k in sizes:
                seen: dict[int, int] = {}
                with torch.autograd.graph.saved_tensors_hooks(_pack_into(seen, fixed), _same), \
                        torch.autocast(group.device.type, dtype=torch.bfloat16, enabled=group.amp):
                    out, _ = group.forward_rows("train", group.task.train, [(t, torch.arange(k))], train=True)
                del out
                saved_bytes.append(sum(seen.values()))
    finally:
        group.engine.swap_streams = True
        group.engine.detach(t.slot)
        with torch.no_grad():
            for name, b in t.view.named_buffers():
                b.copy_(snapshot[name])
    per_row = max(0.0, (saved_bytes[1] - saved_bytes[0]) / max(1, sizes[1] - sizes[0])) if sizes[1] > sizes[0] \
        else saved_bytes[0] / max(1, sizes[0])
    return MemoryEstimate(state_bytes=int(state), activation_bytes_per_row=per_row, batch_size=group.batch_size,
                          exact=True)


@torch.no_grad()
def activation_bound(group: FusedGroup) -> float:
    """Activation bytes per row that autograd would save if every block trained (×1.5 for train-mode extras:
    dropout masks, BatchNorm statistics): no trial saves more. Measured once per group, at 2 and 4 rows."""
    if group.bound is not None:
        return group.bound
    entry = boundary_module(group.trunk, group.partition, 0)

    def grad_from_here(_m: nn.Module, args: tuple, kwargs: dict):
        mark = lambda a: a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() \
            else a  # noqa: E731
        return tuple(mark(a) for a in args), {k: mark(v) for k, v in kwargs.items()}

    n = len(group.task.train)
    sizes, saved = [min(2, n), min(4, n)], []
    handle = entry.register_forward_pre_hook(grad_from_here, with_kwargs=True)
    try:
        for k in sizes:
            seen: dict[int, int] = {}
            x = to_device(take(group.task.train.inputs, torch.arange(k)), group.device,
                          channels_last=group.channels_last)
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_pack_into(seen, set()), _same), \
                    torch.autocast(group.device.type, dtype=torch.bfloat16, enabled=group.amp):
                out = group.trunk(x)
            del out
            saved.append(sum(seen.values()))
    finally:
        handle.remove()
    per_row = (saved[1] - saved[0]) / (sizes[1] - sizes[0]) if sizes[1] > sizes[0] else saved[0] / sizes[0]
    group.bound = 1.5 * max(0.0, per_row)
    return group.bound


@torch.no_grad()
def verify(group: FusedGroup, new: list[Trial]) -> None:
    """Fused outputs (every trial: the active ones and ``new``) equal each new trial's own forward, in eval mode,
    on distinct validation rows per trial (a misrouted row shows) and on shared rows (forks run).

    Fresh copies equal the frozen modules, so a row sent through the wrong copy would go unnoticed: for the
    check, every trial's copies are perturbed (differently per trial) and restored afterwards."""
    everyone = [*group.trials, *new]
    for t in new:
        group.engine.attach(t.slot, t.modules, t.stream)
    copies = copies_of(everyone)
    for m in copies:
        m.eval()
    split, r = group.task.val, 3
    params = [p for m in copies for p in m.parameters()]
    saved = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(0)
    try:
        for p in params:
            noise = torch.randn(p.shape, generator=gen).to(device=p.device, dtype=p.dtype)
            p.add_(noise * (0.1 * p.abs().mean() + 1e-2))
        distinct = {t.slot: torch.arange(i * r, (i + 1) * r) % len(split) for i, t in enumerate(everyone)}
        shared = {t.slot: torch.arange(r) % len(split) for t in everyone}
        alone = {}  # each new trial's own forward, on its distinct rows and the shared rows at once
        for t in new:
            out, spans = group.forward_rows("val", split, [(t, torch.cat([distinct[t.slot], shared[t.slot]]))],
                                       train=False, dedupe=False)
            a0, a1 = spans[t.slot]
            alone[t.slot] = (out[a0:a0 + r].float(), out[a0 + r:a1].float())
        _compare(group, everyone, new, distinct, {k: v[0] for k, v in alone.items()}, dedupe=False)
        if group.dedupe:
            try:
                _compare(group, everyone, new, shared, {k: v[1] for k, v in alone.items()}, dedupe=True)
            except FusionError as exc:  # e.g. a text encoder hands every layer a mask made for the input rows
                log.info("fused group: identical rows will not be shared (%s)", exc)
                group.dedupe = False
    finally:
        for p, v in zip(params, saved):
            p.copy_(v)
        for t in new:
            group.engine.detach(t.slot)
        for m in copies:
            m.train()


def _compare(group: FusedGroup, everyone: list[Trial], new: list[Trial], rows: dict[int, torch.Tensor],
             alone: dict[int, torch.Tensor], *, dedupe: bool) -> None:
    """Raise FusionError unless each new trial's rows of a fused forward of ``everyone`` equal ``alone``."""
    split = group.task.val
    try:
        out, spans = group.forward_rows("val", split, [(t, rows[t.slot]) for t in everyone], train=False, dedupe=dedupe)
    except FusionError:
        raise
    except Exception as exc:
        raise FusionError(f"{type(group.setup.model).__name__} cannot run these trials fused: the fused forward "
                          f"failed ({type(exc).__name__}: {exc}). Train them one by one with autosub.fit "
                          "(fit_many(..., fallback=True) does).") from exc
    for t in new:
        a, b = spans[t.slot]
        got, want = out[a:b].float(), alone[t.slot]
        err = (got - want).abs().max().item() if got.shape == want.shape else math.inf
        if not err <= 1e-4 * max(1.0, want.abs().max().item()):
            raise FusionError(
                f"{type(group.setup.model).__name__} cannot train {label(t.selection)} fused: its fused output "
                f"differs from its own forward by {err:.3g} (a block's modules are not called one after another, "
                "or a later layer reuses earlier tensors). Train it with autosub.fit (fit_many(..., "
                "fallback=True) does).")

# -- leaving -------------------------------------------------------------------------------------------------


def state_bytes(t: Trial) -> int:
    """A trial's tensors: parameters, gradients and two AdamW moments per trainable parameter, plus its buffers."""
    return int(sum(4 * p.numel() * p.element_size() for p in t.trainable)
               + sum(b.numel() * b.element_size() for _, b in t.view.named_buffers()))


def module_state_bytes(modules: Iterable[nn.Module]) -> int:
    """:func:`state_bytes` of the copies of ``modules``, read from the modules themselves (nothing built)."""
    return int(sum(4 * p.numel() * p.element_size() for m in modules for p in m.parameters())
               + sum(b.numel() * b.element_size() for m in modules for b in m.buffers()))


def _pack_into(seen: dict[int, int], fixed: set[int]):
    """A saved-tensors pack hook that records each saved storage's bytes once (parameters in ``fixed`` excluded)."""

    def pack(x: torch.Tensor) -> torch.Tensor:
        try:
            storage = x.untyped_storage()
            if storage.data_ptr() not in fixed:
                seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
            pass
        return x

    return pack


def _same(x: torch.Tensor) -> torch.Tensor:
    return x
