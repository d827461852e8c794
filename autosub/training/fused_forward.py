"""One forward for K trials: the frozen trunk shared, each trial's tuned modules on its own rows.

The batch that flows through the trunk is a concatenation of *segments*: the rows of one trial, or of several
trials whose rows are still identical (same examples, none of them has reached a module it tunes yet — the
Siamese trick: those rows are computed once). A *router* replaces the ``forward`` of every trunk module that some
trial tunes (for the duration of one fused forward only): it splits the incoming batch by segment, runs each
tuned trial's rows through that trial's own copy of the module, runs every other row through the shared frozen
module as one batch, and concatenates the results back in segment order. A segment shared by several trials forks
at the first module one of them tunes.

Exactness rests on what SubTuning already guarantees: frozen modules are in eval mode (BatchNorm uses its running
statistics, dropout is off), so no frozen module couples the rows of a batch, and a row's output does not depend
on which other rows share its batch. A tuned module belongs to one trial and sees only that trial's rows, so its
BatchNorm statistics (train mode) are that trial's batch statistics, as in a run of its own.

Rows can also *enter* the stream later: at a block boundary, a pre-hook concatenates the cached activations of the
trials whose first tuned block starts there (``joins``), so a trial never pays for frozen blocks before its own
boundary. Each trial's random draws (dropout in its tuned modules) come from its own RNG stream
(:class:`RngStream`), swapped in around its modules, so they match a run of its own.

On the CPU in float32 a fused run reproduces separate runs bit for bit in the cases tested (tests/test_fused.py).
Under bf16 autocast (the CUDA default) rows that join at a boundary are concatenated with the stream there, which
promotes the stream's bf16 rows to float32 for the rest of that block: results then agree to bf16 precision, not
bit for bit.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..data.task import Inputs
from ..model.blocks import Partition
from ..model.splitting import STAND_IN, Slot, boundary_module, replay

__all__ = ["FusedForward", "Join", "RngStream", "Segment", "cat_inputs"]


@dataclass
class Segment:
    """Consecutive rows of the fused batch that belong to ``members`` (trial slots; several while identical).

    ``grad``: the rows depend on trainable parameters (they passed a tuned module); rows that do not are run through
    frozen modules without autograd, as in a run of their own (where they never need a gradient).
    """

    members: tuple[int, ...]
    rows: int
    grad: bool = False


@dataclass
class Join:
    """Segments that enter the stream at a block boundary, with their cached entry-module arguments."""

    segments: list[Segment]
    slots: list[Slot]
    tensors: list[torch.Tensor]


class RngStream:
    """A trial's own copy of the global RNG (the CPU generator, and the CUDA device's), as ``fit`` seeds it.

    ``fit(seed=s)`` calls ``torch.manual_seed(s)`` before training, and dropout (or a random augmentation) draws
    from the global generator. In a fused group the trials' draws would interleave; swapping each trial's stream in
    around its own modules gives every trial exactly the draws of a run of its own.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.cpu = torch.Generator().manual_seed(int(seed)).get_state()
        self.device = device if device.type == "cuda" else None
        self.cuda = (torch.Generator(device=device).manual_seed(int(seed)).get_state()
                     if self.device is not None else None)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within the block the global generator(s) are this stream; afterwards the previous state is back."""
        saved = torch.get_rng_state()
        torch.set_rng_state(self.cpu)
        saved_cuda = None
        if self.device is not None:
            saved_cuda = torch.cuda.get_rng_state(self.device)
            torch.cuda.set_rng_state(self.cuda, self.device)
        try:
            yield
        finally:
            self.cpu = torch.get_rng_state()
            torch.set_rng_state(saved)
            if self.device is not None:
                self.cuda = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(saved_cuda, self.device)


@dataclass
class _Route:
    """What a routed trunk module does for one fused forward."""

    module: nn.Module
    copies: dict[int, nn.Module] = field(default_factory=dict)  # slot -> that trial's copy of the module


class FusedForward:
    """Runs the trunk once for every trial attached: ``attach(slot, modules, stream)``, then ``forward(...)``.

    ``modules`` maps trunk module paths (a tuned block's modules and the head module) to the trial's own copies.
    The trunk itself is never modified outside a forward: routers are installed on entry and removed on exit, so
    the cache can capture from the same trunk between forwards.
    """

    def __init__(self, trunk: nn.Module, partition: Partition) -> None:
        self.trunk = trunk
        self.partition = partition
        self.routes: dict[str, _Route] = {}
        self.streams: dict[int, RngStream] = {}
        self.layout: list[Segment] = []
        self.swap_streams = True  # off while probing (memory estimates must not advance a trial's RNG)

    # -- trials ------------------------------------------------------------------------------------------------
    def attach(self, slot: int, modules: Mapping[str, nn.Module], stream: RngStream) -> None:
        for path, copy in modules.items():
            route = self.routes.setdefault(path, _Route(self.trunk.get_submodule(path)))
            route.copies[slot] = copy
        self.streams[slot] = stream

    def detach(self, slot: int) -> None:
        for path in list(self.routes):
            self.routes[path].copies.pop(slot, None)
            if not self.routes[path].copies:
                del self.routes[path]
        self.streams.pop(slot, None)

    # -- the forward -----------------------------------------------------------------------------------------
    def forward(self, inputs: Inputs, layout: Sequence[Segment], *, boundary: int | None = None,
                slots: Sequence[Slot] = (), tensors: Sequence[torch.Tensor] = (), mode: str = STAND_IN,
                joins: Mapping[int, Join] | None = None) -> tuple[Any, list[Segment]]:
        """Run the trunk; returns the output and the final layout (one single-member segment per trial).

        ``boundary=None``: ``inputs`` are the real rows of ``layout``. Otherwise the forward is a replay from
        ``boundary`` (``slots``/``tensors``: the cached arguments of ``layout``'s rows; ``mode`` as in
        :func:`autosub.model.splitting.replay`). ``joins[b]`` adds segments at boundary ``b``.
        """
        self.layout = [Segment(s.members, s.rows, s.grad) for s in layout]
        handles = [boundary_module(self.trunk, self.partition, b).register_forward_pre_hook(self._join_hook(j),
                                                                                            with_kwargs=True)
                   for b, j in (joins or {}).items()]
        members = {m for s in [*layout, *(s for j in (joins or {}).values() for s in j.segments)] for m in s.members}
        try:
            with self._routing(members):
                if boundary is None:
                    out = self.trunk(inputs)
                else:
                    out = replay(self.trunk, self.partition, boundary, list(slots), list(tensors), inputs, mode=mode)
        finally:
            for h in handles:
                h.remove()
        return out, self.layout

    def _join_hook(self, join: Join) -> Callable:
        def hook(_module: nn.Module, args: tuple, kwargs: dict):
            args, kwargs = list(args), dict(kwargs)
            for slot, t in zip(join.slots, join.tensors):
                if isinstance(slot.key, int):
                    args[slot.key] = torch.cat([args[slot.key], t.to(args[slot.key].device)])
                else:
                    kwargs[slot.key] = torch.cat([kwargs[slot.key], t.to(kwargs[slot.key].device)])
            self.layout.extend(Segment(s.members, s.rows, s.grad) for s in join.segments)
            return tuple(args), kwargs

        return hook

    @contextlib.contextmanager
    def _routing(self, members: set[int]) -> Iterator[None]:
        """Routers on the modules that a trial of this forward tunes (only those: a replay may replace the blocks
        before its boundary, which no trial of the forward tunes, by the identity)."""
        installed = []
        try:
            for path, route in self.routes.items():
                if not members.intersection(route.copies):
                    continue
                module = route.module
                own = module.__dict__.get("forward")  # an instance-level forward someone else set: keep calling it
                frozen = own if own is not None else type(module).forward.__get__(module)
                module.forward = self._router(route, frozen)
                installed.append((module, own))
            yield
        finally:
            for module, own in installed:
                module.__dict__.pop("forward", None)
                if own is not None:
                    module.forward = own

    def _router(self, route: _Route, frozen: Callable) -> Callable:
        def forward(*args: Any, **kwargs: Any) -> Any:
            return self._route(route, frozen, args, kwargs)

        return forward

    def _tuned(self, slot: int, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        stream = self.streams.get(slot)
        if stream is None or not self.swap_streams or not module.training:
            return module(*args, **kwargs)
        with stream.active():
            return module(*args, **kwargs)

    def _route(self, route: _Route, frozen: Callable, args: tuple, kwargs: dict) -> Any:
        layout, copies = self.layout, route.copies
        if not layout or not any(m in copies for s in layout for m in s.members):
            return frozen(*args, **kwargs)
        if len(layout) == 1 and len(layout[0].members) == 1:  # the whole stream is one trial's: no split
            slot = layout[0].members[0]
            layout[0].grad = True
            return self._tuned(slot, copies[slot], args, kwargs)
        total = sum(s.rows for s in layout)
        grad_on = torch.is_grad_enabled()
        # one split of every batch-carrying argument into the segments (a single autograd node, not one per slice)
        pieces_in = _split_in((args, kwargs), total, [s.rows for s in layout])
        frozen_idx: dict[bool, list[int]] = {True: [], False: []}
        for i, seg in enumerate(layout):
            if any(m not in copies for m in seg.members):
                frozen_idx[seg.grad or not grad_on].append(i)
        frozen_out: dict[int, Any] = {}  # segment index -> its rows of the frozen module's output
        for needs_grad, idx in frozen_idx.items():
            if not idx:
                continue
            a, k = _gather(pieces_in, idx, detach=not needs_grad)
            with contextlib.nullcontext() if needs_grad else torch.no_grad():
                out = frozen(*a, **k)
            for i, piece in zip(idx, _split_out(out, [layout[i].rows for i in idx])):
                frozen_out[i] = piece
        pieces, new_layout = [], []
        for i, seg in enumerate(layout):
            rest = tuple(m for m in seg.members if m not in copies)
            if rest:
                pieces.append(frozen_out[i])
                new_layout.append(Segment(rest, seg.rows, seg.grad))
            for slot in (m for m in seg.members if m in copies):
                a, k = _gather(pieces_in, [i], detach=False)
                pieces.append(self._tuned(slot, copies[slot], a, k))
                new_layout.append(Segment((slot,), seg.rows, True))
        self.layout = new_layout
        return pieces[0] if len(pieces) == 1 else _cat_out(pieces, [s.rows for s in new_layout])


# ------------------------------------------------------------------------------------------- batch plumbing
class _Pieces(list):
    """A batch-carrying tensor split into the rows of each segment."""


def _split_in(x: Any, total: int, sizes: list[int]) -> Any:
    """Every batch-carrying tensor in ``x`` (nested tuples, lists, dicts) split by ``sizes``; others unchanged."""
    if isinstance(x, torch.Tensor):
        return _Pieces(torch.split(x, sizes)) if x.dim() > 0 and x.shape[0] == total else x
    if isinstance(x, tuple):
        return tuple(_split_in(v, total, sizes) for v in x)
    if isinstance(x, list):
        return [_split_in(v, total, sizes) for v in x]
    if isinstance(x, dict):
        return {k: _split_in(v, total, sizes) for k, v in x.items()}
    return x


def _gather(x: Any, idx: list[int], *, detach: bool) -> Any:
    """The rows of segments ``idx`` of a :func:`_split_in` structure (one piece, or their concatenation)."""
    if isinstance(x, _Pieces):
        t = x[idx[0]] if len(idx) == 1 else torch.cat([x[i] for i in idx])
        return t.detach() if detach else t
    if isinstance(x, tuple):
        return tuple(_gather(v, idx, detach=detach) for v in x)
    if isinstance(x, list):
        return [_gather(v, idx, detach=detach) for v in x]
    if isinstance(x, dict):
        return {k: _gather(v, idx, detach=detach) for k, v in x.items()}
    return x


def _split_out(x: Any, sizes: list[int]) -> list[Any]:
    """A module output computed on ``sum(sizes)`` rows, as one output per segment (batch-carrying tensors split)."""
    n = len(sizes)
    if n == 1:
        return [x]
    total = sum(sizes)
    if isinstance(x, torch.Tensor):
        return list(torch.split(x, sizes)) if x.dim() > 0 and x.shape[0] == total else [x] * n
    if isinstance(x, (tuple, list)):
        parts = [_split_out(v, sizes) for v in x]
        rows = [[p[i] for p in parts] for i in range(n)]
        if _is_namedtuple(x):
            return [type(x)(*r) for r in rows]
        return [type(x)(r) if isinstance(x, tuple) else r for r in rows]
    if isinstance(x, dict):
        parts = {k: _split_out(v, sizes) for k, v in x.items()}
        rows = [{k: p[i] for k, p in parts.items()} for i in range(n)]
        return rows if type(x) is dict else [type(x)(**r) for r in rows]
    return [x] * n


def _cat_out(pieces: list[Any], rows: list[int]) -> Any:
    """Concatenate per-segment outputs; a tensor that does not carry the batch is taken from the first piece."""
    first = pieces[0]
    if isinstance(first, torch.Tensor):
        if first.dim() > 0 and all(isinstance(p, torch.Tensor) and p.shape[0] == r for p, r in zip(pieces, rows)):
            return torch.cat(pieces)
        return first
    if isinstance(first, tuple):
        items = [_cat_out([p[i] for p in pieces], rows) for i in range(len(first))]
        return type(first)(*items) if _is_namedtuple(first) else tuple(items)
    if isinstance(first, list):
        return [_cat_out([p[i] for p in pieces], rows) for i in range(len(first))]
    if isinstance(first, dict):
        merged = {k: _cat_out([p[k] for p in pieces], rows) for k in first}
        return merged if type(first) is dict else type(first)(**merged)
    return first


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def cat_inputs(parts: Sequence[Inputs]) -> Inputs:
    """Concatenate model inputs (tensors, or dicts of tensors such as tokenized text) along the batch."""
    if isinstance(parts[0], Mapping):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(list(parts))
