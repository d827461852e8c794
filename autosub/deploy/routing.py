"""Fork/merge routing: one forward of the trunk's *own* code carries every task's stream.

MultiTaskModel never rewrites a model's ``forward``. It replaces, for the duration of one call, the ``forward`` of
the modules that matter — each block's modules (``Block.modules``; ``modules[0]`` is the entry), the head, and in
one mode the stem — by a router. Between those modules the model's own code (its "glue": reshapes, pooling,
mask building) runs unchanged, on a batch that holds several *streams* stacked along dim 0:

* the **shared stream** (``SHARED``): the frozen trunk's activations, computed once for all tasks;
* one stream per task that has **forked**: from its first tuned block on, its activations are its own.

A *layout* names the stream of each ``B``-row chunk of the running batch. At a block's entry module the router
turns the incoming layout into the block's layout (a task forking here starts as a copy of the shared chunk),
then runs the block **once for every stream that uses the frozen block** — the trunk's module on the
concatenation of those chunks — and each tuned task's own copy on its chunk, and stacks the results in the new
layout. The head runs each task's head on its chunk and keeps the logits.

Side inputs that carry the batch (a BERT layer's attention mask, built once by the glue from the model input)
arrive with ``B`` rows while the hidden states carry ``len(layout) * B``: the router repeats them for every chunk
it runs. Which arguments and outputs carry the batch is *measured*, not guessed: :func:`probe_slots` runs two
plain forwards (2 and 3 examples) and records the tensors whose dim 0 follows the batch — so a rotary table or
a position bias is never sliced because its length happens to match.

Two modes, chosen by verification (``MultiTaskModel`` compares every task with its standalone model):

* ``"blocks"`` — the batch widens only at fork points and the shared stream is dropped after the last fork:
  nothing before a fork runs twice. Exact when the glue after a fork only touches the stream-carrying tensors
  (timm and torchvision CNNs and ViTs, HF encoders up to their last layer).
* ``"inputs"`` — the model input is widened to one chunk per task up front (``T * B`` rows), so every tensor the
  glue builds from it (a text classifier's pooling mask) already has the per-task layout; the router runs the
  stem modules and every frozen block once per *distinct* stream (chunks of tasks that have not forked are the
  same values) and repeats the result. Only parameter-free glue runs ``T`` times (embedding sums, mask ops).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..data.task import Inputs, take
from ..model.blocks import Partition

__all__ = ["BLOCKS", "INPUTS", "MODES", "SHARED", "Layout", "Route", "RouteError", "Site", "Slots", "plan_route",
           "probe_slots", "routed", "stem_modules", "widen"]

SHARED = None  # the stream of the frozen trunk itself
BLOCKS, INPUTS = "blocks", "inputs"
MODES = (BLOCKS, INPUTS)
Layout = tuple["str | None", ...]


class RouteError(RuntimeError):
    """A module received tensors the route cannot place (the model does not fit the mode being tried)."""


@dataclass(frozen=True)
class Site:
    """A routed module: the boundary it belongs to (-1 stem, 0..n-1 block, n head) and whether it is the entry."""

    boundary: int
    entry: bool


@dataclass(frozen=True)
class Slots:
    """Which call arguments (positions / keyword names) and output leaves (flat indices) carry the batch.

    ``fixed_*`` were tensors whose dim 0 did *not* follow the batch. A key in neither set was never a tensor while
    probing (an optional mask that the model builds only for some inputs); it is routed by its shape.
    """

    args: frozenset
    outputs: frozenset
    fixed_args: frozenset = frozenset()
    fixed_outputs: frozenset = frozenset()


@dataclass(frozen=True)
class Route:
    """The static plan of one task set: layouts per boundary, who tunes what, which modules are routed."""

    mode: str
    tasks: tuple[str, ...]
    start: Layout  # layout of the model input
    layouts: tuple[Layout, ...]  # [j] during block j; [n] at the head
    tuned: tuple[frozenset, ...]  # [j] tasks whose own copy of block j runs; [n] every task (heads)
    sites: Mapping[str, Site]

    def tuned_at(self, boundary: int) -> frozenset:
        """Tasks whose own copy runs at ``boundary`` (none in the stem, every task at the head)."""
        return self.tuned[boundary] if boundary >= 0 else frozenset()

    def streams(self, boundary: int) -> int:
        """Distinct streams that run at ``boundary`` (what the forked FLOPs multiply by)."""
        return len(set(self.layouts[boundary]))


def plan_route(mode: str, selections: Mapping[str, Sequence[int]], partition: Partition,
               stem: Sequence[str] = ()) -> Route:
    """The route for tasks ``{name: tuned block indices}`` (in output order) on ``partition``'s blocks."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    n = len(partition)
    tasks = tuple(selections)
    forks = {t: (min(s) if s else n) for t, s in selections.items()}
    if mode == BLOCKS:
        start: Layout = (SHARED,)
        layouts = [((SHARED,) if any(f > j for f in forks.values()) else ()) + tuple(t for t in tasks if forks[t] <= j)
                   for j in range(n)]
    else:
        start = (SHARED,) * len(tasks)
        layouts = [tuple(t if forks[t] <= j else SHARED for t in tasks) for j in range(n)]
    layouts.append(tasks)
    tuned = [frozenset(t for t in tasks if j in selections[t]) for j in range(n)] + [frozenset(tasks)]
    sites: dict[str, Site] = {}
    if mode == INPUTS:
        sites.update({path: Site(-1, False) for path in stem})
    for j, block in enumerate(partition):
        if mode == INPUTS or layouts[j] != (SHARED,):
            sites.update({path: Site(j, i == 0) for i, path in enumerate(block.modules)})
    sites[str(partition.head_module)] = Site(n, True)
    return Route(mode, tasks, start, tuple(layouts), tuple(tuned), sites)


def stem_modules(model: nn.Module, partition: Partition) -> list[str]:
    """The outermost non-root modules whose parameters are all stem parameters (they run before any block)."""
    stem = set(partition.stem)
    out: list[str] = []
    for path, module in model.named_modules():
        if not path or any(path.startswith(p + ".") for p in out):
            continue
        names = [f"{path}.{n}" for n, _ in module.named_parameters()]
        if names and all(n in stem for n in names):
            out.append(path)
    return out


def widen(inputs: Inputs, copies: int) -> Inputs:
    """``copies`` stacked copies of the batch (every batch-carrying tensor of a dict input)."""
    if copies == 1:
        return inputs
    if isinstance(inputs, Mapping):
        batch = _rows(inputs)
        return {k: (torch.cat([v] * copies) if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == batch else v)
                for k, v in inputs.items()}
    return torch.cat([inputs] * copies)


# ------------------------------------------------------------------------------------------------ probing
def probe_slots(model: nn.Module, paths: Sequence[str], inputs: Inputs) -> dict[str, Slots]:
    """Run plain forwards on 2 and 3 examples and record, per module, which tensors follow the batch size."""
    seen: dict[str, dict[Any, set[tuple[int, int]]]] = {p: {} for p in paths}
    outs: dict[str, dict[int, set[tuple[int, int]]]] = {p: {} for p in paths}
    rows = _rows(inputs)
    handles = []

    def pre(path: str, state: dict, _module, args, kwargs):
        for key, value in [*enumerate(args), *kwargs.items()]:
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                seen[path].setdefault(key, set()).add((state["b"], int(value.shape[0])))

    def post(path: str, state: dict, _module, _args, _kwargs, output):
        leaves, _ = flatten(output)
        for i, value in enumerate(leaves):
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                outs[path].setdefault(i, set()).add((state["b"], int(value.shape[0])))

    state = {"b": 0}
    try:
        for path in paths:
            module = model.get_submodule(path)
            handles.append(module.register_forward_pre_hook(functools.partial(pre, path, state), with_kwargs=True))
            handles.append(module.register_forward_hook(functools.partial(post, path, state), with_kwargs=True))
        with torch.no_grad():
            for b in (2, 3):
                state["b"] = b
                model(take(inputs, torch.arange(b) % rows))
    finally:
        for h in handles:
            h.remove()

    def carrying(records: Mapping[Any, set[tuple[int, int]]]) -> frozenset:
        return frozenset(k for k, r in records.items() if {b for b, _ in r} == {2, 3} and all(b == n for b, n in r))

    slots = {}
    for p in paths:
        args, outputs = carrying(seen[p]), carrying(outs[p])
        slots[p] = Slots(args, outputs, frozenset(seen[p]) - args, frozenset(outs[p]) - outputs)
    return slots


# ------------------------------------------------------------------------------------------------ running
@dataclass
class Run:
    """The state of one routed forward: the current layout, the batch size, the heads' logits."""

    route: Route
    slots: Mapping[str, Slots]
    batch: int  # a SymInt under torch.export with a dynamic batch
    copies: Mapping[str, Mapping[str, nn.Module]]  # task -> module path -> the task's own module
    layout: Layout = ()
    outputs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layout = self.route.start


@contextlib.contextmanager
def routed(model: nn.Module, run: Run) -> Iterator[None]:
    """Install the router on every site of ``run.route`` for one forward of ``model``; restore afterwards."""
    saved: list[tuple[nn.Module, Any]] = []
    try:
        for path, site in run.route.sites.items():
            module = model.get_submodule(path)
            saved.append((module, module.__dict__.get("forward")))
            module.forward = functools.partial(_route_call, run, path, site, module.forward)
        yield
    finally:
        _restore(saved)


def _restore(saved: list[tuple[nn.Module, Any]]) -> None:
    for module, own in saved:
        if own is None:
            module.__dict__.pop("forward", None)
        else:
            module.forward = own
    saved.clear()


def _route_call(run: Run, path: str, site: Site, original: Callable, *args: Any, **kwargs: Any) -> Any:
    route, batch = run.route, run.batch
    layout_in = run.layout
    layout_out = route.layouts[site.boundary] if site.entry else layout_in
    run.layout = layout_out
    n_in = len(layout_in)
    slots = run.slots[path]
    split, shared = {}, {}
    for key, value in [*enumerate(args), *kwargs.items()]:
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or key in slots.fixed_args:
            continue
        rows = value.shape[0]  # not int(): torch.export keeps the batch size symbolic
        if rows == n_in * batch:
            split[key] = value
        elif rows == batch:
            shared[key] = value
        elif key in slots.args:
            raise RouteError(f"{path} got argument {key!r} with {rows} rows; the route expected {batch} or "
                             f"{n_in * batch} ({n_in} streams of {batch})")
    if not split:
        raise RouteError(f"{path} got no argument that carries the streams (expected one with {n_in * batch} rows)")
    needed = list(dict.fromkeys(layout_out))
    shared_at = layout_in.index(SHARED) if SHARED in layout_in else None
    source = {}
    for s in needed:
        if s in layout_in:
            source[s] = layout_in.index(s)
        elif shared_at is not None and site.entry:
            source[s] = shared_at  # the task forks here: it starts from the shared stream
        else:
            raise RouteError(f"{path}: stream {s!r} is not in the incoming layout {layout_in}")

    def call(fn: Callable, streams: list) -> Any:
        ids = [source[s] for s in streams]
        a, kw = list(args), dict(kwargs)
        for key, value in split.items():
            _put(a, kw, key, _gather(value, ids, batch, n_in))
        for key, value in shared.items():
            _put(a, kw, key, value if len(ids) == 1 else torch.cat([value] * len(ids)))
        return fn(*a, **kw)

    tuned = route.tuned_at(site.boundary)
    frozen = [s for s in needed if s is SHARED or s not in tuned]
    results: dict[Any, tuple[list, Any]] = {}
    frozen_out = None
    if frozen:
        frozen_out = call(original, frozen)
        leaves, spec = flatten(frozen_out)
        k = len(frozen)
        for i, s in enumerate(frozen):
            results[s] = ([leaf[i * batch:(i + 1) * batch] if _leaf_carries(slots, j, leaf, k * batch) else leaf
                           for j, leaf in enumerate(leaves)], spec) if k > 1 else (leaves, spec)
    for s in needed:
        if s not in results:
            results[s] = flatten(call(run.copies[s][path], [s]))
    if site.boundary == len(route.layouts) - 1:  # the head: keep every task's logits (their widths differ)
        for s in needed:
            run.outputs[s] = unflatten(*results[s])
        return run.outputs[layout_out[0]]  # what the model's own code sees; MultiTaskModel returns run.outputs
    if frozen_out is not None and tuple(frozen) == tuple(layout_out):
        return frozen_out  # every stream used the frozen module, already in the new layout
    first_leaves, spec = results[layout_out[0]]
    if len(layout_out) == 1:
        return unflatten(first_leaves, spec)  # one stream: nothing to stack
    merged = [torch.cat([results[s][0][j] for s in layout_out]) if _leaf_carries(slots, j, leaf, batch) else leaf
              for j, leaf in enumerate(first_leaves)]
    return unflatten(merged, spec)


def _leaf_carries(slots: Slots, index: int, leaf: Any, rows: Any) -> bool:
    """Output leaf ``index`` carries the streams: measured so while probing, or (never seen) it has ``rows`` rows."""
    if not isinstance(leaf, torch.Tensor) or leaf.dim() == 0 or index in slots.fixed_outputs:
        return False
    return index in slots.outputs or leaf.shape[0] == rows


def _gather(value: torch.Tensor, ids: list[int], batch: int, n_in: int) -> torch.Tensor:
    if ids == list(range(n_in)):
        return value
    if ids == list(range(ids[0], ids[0] + len(ids))):
        return value[ids[0] * batch:(ids[-1] + 1) * batch]
    return torch.cat([value[i * batch:(i + 1) * batch] for i in ids])


def _put(args: list, kwargs: dict, key: Any, value: torch.Tensor) -> None:
    if isinstance(key, int):
        args[key] = value
    else:
        kwargs[key] = value


def _rows(inputs: Inputs) -> int:
    if isinstance(inputs, Mapping):
        return next(v for v in inputs.values() if isinstance(v, torch.Tensor)).shape[0]
    return inputs.shape[0]


# ------------------------------------------------------------------------------------------------ pytrees
def flatten(obj: Any) -> tuple[list, Any]:
    """Leaves of a tensor / tuple / list / dict (ModelOutput included) nest, and a spec to rebuild it."""
    if isinstance(obj, (tuple, list)):
        parts = [flatten(o) for o in obj]
        return [leaf for p in parts for leaf in p[0]], (type(obj), [(len(p[0]), p[1]) for p in parts])
    if isinstance(obj, dict):
        parts = [flatten(v) for v in obj.values()]
        return ([leaf for p in parts for leaf in p[0]],
                (type(obj), list(obj.keys()), [(len(p[0]), p[1]) for p in parts]))
    return [obj], None


def unflatten(leaves: list, spec: Any) -> Any:
    """Inverse of :func:`flatten`."""
    if spec is None:
        return leaves[0]
    kind, *rest = spec
    children, i = [], 0
    for count, sub in rest[-1]:
        children.append(unflatten(leaves[i:i + count], sub))
        i += count
    if issubclass(kind, dict):
        items = dict(zip(rest[0], children))
        if kind is dict:
            return items
        try:
            return kind(**items)  # transformers' ModelOutput
        except TypeError:
            return kind(items)
    if kind is tuple or kind is list:
        return kind(children)
    try:
        return kind(*children)  # namedtuple
    except TypeError:
        return kind(children)
