"""Run a model from a block boundary: capture a block's inputs, and replay the forward from them.

Works on any architecture through forward pre-hooks, without knowing its ``forward``:

* **capture** — a pre-hook on the boundary's entry module records every tensor argument that carries the
  batch dimension (hidden states, and e.g. a BERT attention mask), then stops the forward.
* **replay** — the model runs on a one-example *stand-in*; the pre-hook swaps the stand-in's arguments for
  the cached batch. The frozen prefix thus costs one example instead of a batch, and everything from the
  boundary on runs on the real batch with autograd.
* **skip replay** — for models whose tail reads the model's own inputs (a text classifier pools with the
  attention mask), the real batch goes in, the stem runs on it, and the blocks before the boundary are
  replaced by the identity for that call.

A model whose later layers reuse prefix tensors (cross-boundary skips) would silently broadcast the
stand-in, so every boundary is verified against a plain forward before it is used (``verify``), and one whose
modes both fail trains without the cache.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .blocks import Partition
from ..data.task import Inputs, take

__all__ = ["SKIP", "STAND_IN", "Slot", "boundary_module", "capture", "eval_mode", "replay", "verify"]

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised inside a hook to end a capture forward early."""


@dataclass(frozen=True)
class Slot:
    """Where a captured tensor goes back: a positional index (int) or a keyword name (str)."""

    key: int | str


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put every module in eval mode and restore each one's own flag afterwards (``train(x)`` would clobber them)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def boundary_module(model: nn.Module, partition: Partition, boundary: int) -> nn.Module:
    """The module whose input is the boundary's input: block ``boundary``'s entry, or the head when == len."""
    if boundary < len(partition):
        name = partition[boundary].modules[0]
    elif partition.head_module is not None:
        name = partition.head_module
    else:
        raise KeyError(f"boundary {boundary} has no entry module")
    return model.get_submodule(name)


def _batch_size(inputs: Inputs) -> int:
    if isinstance(inputs, Mapping):
        return int(next(iter(inputs.values())).shape[0])
    return int(inputs.shape[0])


def _call_model(model: nn.Module, inputs: Inputs):
    return model(inputs)


def capture(
    model: nn.Module, partition: Partition, boundaries: list[int], inputs: Inputs
) -> dict[int, tuple[list[Slot], list[torch.Tensor]]]:
    """One forward that returns, per boundary, the batch-carrying arguments of its entry module.

    The forward stops after the deepest requested boundary. ``inputs`` must hold at least 2 examples so the
    batch dimension can be told apart from broadcast dimensions.
    """
    batch = _batch_size(inputs)
    if batch < 2:
        raise ValueError("capture needs a batch of at least 2 examples")
    wanted = sorted(set(boundaries))
    found: dict[int, tuple[list[Slot], list[torch.Tensor]]] = {}
    handles = []

    def make_hook(b: int) -> Callable:
        def hook(_module, args, kwargs):
            if b in found:
                return None
            slots, tensors = [], []
            for i, a in enumerate(args):
                if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == batch:
                    slots.append(Slot(i))
                    tensors.append(a.detach())
            for k, a in kwargs.items():
                if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == batch:
                    slots.append(Slot(k))
                    tensors.append(a.detach())
            found[b] = (slots, tensors)
            if len(found) == len(wanted):
                raise _StopForward
            return None

        return hook

    try:
        for b in wanted:
            handles.append(
                boundary_module(model, partition, b).register_forward_pre_hook(make_hook(b), with_kwargs=True)
            )
        with torch.no_grad():
            try:
                _call_model(model, inputs)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    missing = [b for b in wanted if b not in found]
    if missing:
        raise RuntimeError(f"the forward never reached boundaries {missing}")
    return found


STAND_IN = "stand_in"
SKIP = "skip"


def replay(
    model: nn.Module,
    partition: Partition,
    boundary: int,
    slots: list[Slot],
    tensors: list[torch.Tensor],
    inputs: Inputs,
    *,
    mode: str = STAND_IN,
) -> Any:
    """Run ``model`` from ``boundary`` on cached tensors.

    ``mode="stand_in"``: ``inputs`` is a one-example stand-in and the whole prefix runs on it.
    ``mode="skip"``: ``inputs`` is the real batch (the tail reads it, e.g. a text model pools with its attention
    mask); the stem runs on it but every block before ``boundary`` is replaced by the identity.
    """

    def hook(_module, args, kwargs):
        args = list(args)
        kwargs = dict(kwargs)
        for slot, t in zip(slots, tensors):
            if isinstance(slot.key, int):
                args[slot.key] = t
            else:
                kwargs[slot.key] = t
        return tuple(args), kwargs

    skipped = []
    if mode == SKIP:
        for block in partition.blocks[:boundary]:
            for path in block.modules:
                module = model.get_submodule(path)
                module.forward = _identity  # instance attribute shadows the class's forward
                skipped.append(module)
    handle = boundary_module(model, partition, boundary).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        return _call_model(model, inputs)
    finally:
        handle.remove()
        for module in skipped:
            del module.forward


def _identity(*args, **kwargs):
    return args[0] if args else next(iter(kwargs.values()))


def verify(
    model: nn.Module, partition: Partition, boundary: int, inputs: Inputs, *, atol: float = 1e-4
) -> tuple[str | None, str | None]:
    """Find a replay mode from ``boundary`` that reproduces a plain forward: ``(mode, None)`` or ``(None, reason)``.

    The cheap stand-in mode is tried first, then the skip mode; ``inputs`` needs >= 2 distinct examples.
    """
    reasons = []
    for mode in (STAND_IN, SKIP):
        try:
            with eval_mode(model), torch.no_grad():
                expected = _call_model(model, inputs)
                (slots, tensors) = capture(model, partition, [boundary], inputs)[boundary]
                feed = take(inputs, slice(0, 1)) if mode == STAND_IN else inputs
                got = replay(model, partition, boundary, slots, tensors, feed, mode=mode)
        except Exception as exc:  # any failure means: not this mode
            reasons.append(f"{mode}: {type(exc).__name__}: {exc}")
            continue
        if not isinstance(expected, torch.Tensor) or not isinstance(got, torch.Tensor):
            reasons.append(f"{mode}: the model's output is not a tensor")
        elif expected.shape != got.shape:
            reasons.append(f"{mode}: replayed output has shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
        else:
            err = (expected - got).abs().max().item()
            if err <= atol * max(1.0, expected.abs().max().item()):
                return mode, None
            reasons.append(f"{mode}: replayed output differs from a plain forward by {err:.3g}")
    return None, "; ".join(reasons) + " (the layers after the boundary read prefix tensors?)"
