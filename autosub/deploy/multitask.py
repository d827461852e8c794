"""MultiTaskModel: many SubTuned tasks on one frozen trunk ("Siamese" inference, Kaplun et al. §6).

Each task adds only its tuned blocks and head (a :class:`~autosub.deploy.delta.Delta`). One call runs the shared
prefix once; the batch forks at each task's first tuned block; a frozen block after a fork runs once on the
concatenation of every stream that reaches it; tasks with the same fork point share everything before it; the
result is ``{task: logits}``. How one forward of the trunk's own code does that is :mod:`autosub.deploy.routing`
(hooks on block entry modules, as the prefix cache's capture/replay does): nothing here knows a model's
``forward``, so timm and torchvision CNNs and ViTs and Hugging Face encoders (attention masks included) work alike.

**Exact or refused.** Before the first use — at construction with ``example_inputs=``, else on the first call —
and after every ``add_task`` / ``remove_task``, each task's routed output is compared with its standalone model
(the trunk with that task's modules swapped in, a plain forward). The cheaper ``"blocks"`` mode is tried first,
then ``"inputs"``; if neither reproduces every task (glue that mixes examples of a batch, a head whose output the
model transforms), construction fails with a :class:`~autosub.errors.BlockDiscoveryError` that says why. The check
runs in full float32 (TF32 off) on at least 3 rows (a single example is repeated: one row would broadcast against
any number of streams and hide glue that cannot take them); its tolerance is kernel rounding (1e-4 relative in
float32, 8 ulp of the dtype below it), far below what a misrouted stream moves.

It is an inference model: every module stays in eval mode (frozen BatchNorm statistics and no dropout are what
make each task equal its standalone model) and nothing requires grad. The trunk is copied once (``copy_trunk``);
each task's modules are new memory only for its own tensors. A forward temporarily installs routers on the
trunk's modules, so one MultiTaskModel must not run two forwards at once from several threads.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from ..data.task import Inputs, take
from ..errors import BlockDiscoveryError, ConfigError, DataError
from ..model.blocks import Partition, discover_blocks
from .delta import Delta, load_delta
from .routing import BLOCKS, INPUTS, MODES, Route, Run, plan_route, probe_slots, routed, stem_modules, widen

__all__ = ["MultiTaskModel"]

log = logging.getLogger(__name__)

_AUTO = "auto"
_PROBE_ROWS = 4


class _Fork(nn.Module):
    """One task's own modules: copies of its tuned blocks' modules and its head, addressed by trunk path."""

    def __init__(self, modules: Mapping[str, nn.Module], delta: Delta) -> None:
        super().__init__()
        self.paths = {path.replace(".", "-"): path for path in modules}  # ModuleDict keys cannot hold "."
        self.parts = nn.ModuleDict({key: modules[path] for key, path in self.paths.items()})
        self.selection = delta.selection
        self.fork = delta.fork
        self.num_classes = delta.num_classes
        self.classes = delta.classes
        self.preprocessing = delta.preprocessing

    def by_path(self) -> dict[str, nn.Module]:
        """The task's modules keyed by their path in the trunk."""
        return {path: self.parts[key] for key, path in self.paths.items()}


class MultiTaskModel(nn.Module):
    """One frozen trunk serving several SubTuned tasks; ``forward(x)`` returns ``{task: logits}``.

    ``tasks`` maps names to a :class:`Delta`, a delta directory, a ``SearchResult`` or a ``FitResult`` (tuned
    from this trunk). ``mode`` forces ``"blocks"`` or ``"inputs"`` routing (see :mod:`autosub.deploy.routing`);
    ``"auto"`` takes the first that verifies. ``mode_`` is the one in use once verified.
    """

    def __init__(self, trunk: nn.Module, tasks: Mapping[str, Any] | None = None, *,
                 partition: Partition | None = None, example_inputs: Inputs | None = None, mode: str = _AUTO,
                 copy_trunk: bool = True) -> None:
        super().__init__()
        if not isinstance(trunk, nn.Module):
            raise ConfigError(f"The 'trunk' parameter of MultiTaskModel must be an nn.Module; got "
                              f"{type(trunk).__name__} instead.")
        if mode not in (_AUTO, *MODES):
            raise ConfigError(f"The 'mode' parameter of MultiTaskModel must be one of {(_AUTO, *MODES)}; got "
                              f"{mode!r} instead.")
        if tasks is not None and not isinstance(tasks, Mapping):
            raise ConfigError("The 'tasks' parameter of MultiTaskModel must be a dict {name: delta}; got "
                              f"{type(tasks).__name__} instead.")
        from ..hpo.result import trunk_fingerprint

        self.trunk = copy.deepcopy(trunk) if copy_trunk else trunk
        self.trunk.eval().requires_grad_(False)
        self.partition = partition if partition is not None else discover_blocks(self.trunk)
        if self.partition.head_module is None:
            raise BlockDiscoveryError(f"{type(trunk).__name__} has no classification head module; MultiTaskModel "
                                      "forks each task's head from the trunk's head input.")
        self.trunk_fingerprint = trunk_fingerprint(self.trunk, self.partition)
        self._stem = stem_modules(self.trunk, self.partition)
        self.forks = nn.ModuleDict()
        self.requested_mode = mode
        self.mode_: str | None = None
        self._route: Route | None = None
        self._slots: dict | None = None
        self._probe: Inputs | None = None
        for name, source in (tasks or {}).items():
            self._add(name, source)
        super().train(False)
        if example_inputs is not None:
            self.verify(example_inputs)

    # -- tasks ---------------------------------------------------------------------------------------------------
    @property
    def task_names(self) -> tuple[str, ...]:
        """The tasks, in the order ``forward`` returns them."""
        return tuple(self.forks.keys())

    def fork_points(self) -> dict[str, int]:
        """Each task's fork boundary (its first tuned block; ``len(partition)`` for a linear probe)."""
        return {name: fork.fork for name, fork in self.forks.items()}

    def block_runs(self) -> tuple[int, ...]:
        """How many streams run each block in one call (1 before every fork): the plan the forked FLOPs follow."""
        selections = {name: fork.selection for name, fork in self.forks.items()}
        route = self._route or plan_route(BLOCKS, selections, self.partition, self._stem)
        return tuple(route.streams(j) for j in range(len(self.partition)))

    def add_task(self, name: str, source: Any) -> None:
        """Add a task at run time; verified at once if inputs have been seen (else on the next call)."""
        self._add(name, source)
        if self._probe is not None:
            try:
                self.verify(self._probe)
            except Exception:
                del self.forks[name]
                self._invalidate()
                if len(self.forks):
                    self.verify(self._probe)
                raise

    def remove_task(self, name: str) -> None:
        """Remove a task at run time (its modules are freed)."""
        if name not in self.forks:
            raise ConfigError(f"No task named {name!r}; the tasks are {list(self.forks)}.")
        del self.forks[name]
        self._invalidate()
        if self._probe is not None and len(self.forks):
            self.verify(self._probe)

    def standalone(self, name: str) -> nn.Module:
        """Task ``name``'s own model: the trunk with its modules swapped in (shares every tensor with this model)."""
        fork = self._fork(name)
        memo = {id(t): t for t in [*self.trunk.parameters(), *self.trunk.buffers()]}
        model = copy.deepcopy(self.trunk, memo)
        for path, module in fork.by_path().items():
            _set_submodule(model, path, module)
        return model.eval()

    def _add(self, name: str, source: Any) -> None:
        if not isinstance(name, str) or not name or "." in name or name in self.forks:
            raise ConfigError(f"A task name must be a new non-empty string without '.'; got {name!r} (tasks: "
                              f"{list(self.forks)}).")
        delta = self._as_delta(source)
        model = delta.apply(self.trunk, share_trunk=True, partition=self.partition,
                            fingerprint=self.trunk_fingerprint)
        paths = [m for i in delta.selection for m in self.partition[i].modules] + [str(self.partition.head_module)]
        modules = {p: model.get_submodule(p).requires_grad_(False).eval() for p in paths}
        self.forks[name] = _Fork(modules, delta)
        self._invalidate()
        log.info("MultiTaskModel: task %r forks at boundary %d (blocks %s)", name, delta.fork, delta.tuned_blocks)

    def _as_delta(self, source: Any) -> Delta:
        if isinstance(source, Delta):
            return source
        if isinstance(source, (str, os.PathLike)):
            return load_delta(source)
        return Delta.from_result(source, trunk=self.trunk)

    def _fork(self, name: str) -> _Fork:
        if name not in self.forks:
            raise ConfigError(f"No task named {name!r}; the tasks are {list(self.forks)}.")
        return self.forks[name]  # type: ignore[return-value]

    def _invalidate(self) -> None:
        self._route, self._slots, self.mode_ = None, None, None

    # -- running -------------------------------------------------------------------------------------------------
    def forward(self, inputs: Inputs) -> dict[str, torch.Tensor]:
        """``{task: logits}`` for a batch (a tensor, or a dict of tensors such as ``input_ids`` / ``attention_mask``)."""
        if not len(self.forks):
            raise ConfigError("This MultiTaskModel has no task; add one with add_task(name, delta).")
        if self._route is None:
            self.verify(inputs)
        return self._run(inputs, self._route, self._slots)  # type: ignore[arg-type]

    def verify(self, example_inputs: Inputs) -> str:
        """Choose the routing mode that reproduces every task's standalone output on ``example_inputs``; return it.

        Raises BlockDiscoveryError when no mode is exact for this architecture.
        """
        if not len(self.forks):
            raise ConfigError("This MultiTaskModel has no task to verify; add one with add_task(name, delta).")
        probe = self._probe_of(example_inputs)
        selections = {name: fork.selection for name, fork in self.forks.items()}
        paths = list(dict.fromkeys([*self._stem, *(m for b in self.partition for m in b.modules),
                                    str(self.partition.head_module)]))
        with torch.no_grad(), _full_precision():
            try:
                slots = probe_slots(self.trunk, paths, probe)
            except Exception as exc:
                raise DataError(f"{type(self.trunk).__name__} could not run the example inputs "
                                f"({type(exc).__name__}: {exc}); pass inputs the trunk accepts.") from exc
            expected = {name: self._standalone_forward(name, probe) for name in self.forks}
            reasons = []
            for mode in (MODES if self.requested_mode == _AUTO else (self.requested_mode,)):
                route = plan_route(mode, selections, self.partition, self._stem)
                try:
                    got = self._run(probe, route, slots)
                except Exception as exc:  # this mode does not fit the model's glue: try the next
                    reasons.append(f"{mode}: {type(exc).__name__}: {exc}")
                    continue
                bad = [(name, _gap(got[name], want)) for name, want in expected.items()
                       if got[name].shape != want.shape or not _close(got[name], want)]
                if not bad:
                    self._route, self._slots, self.mode_, self._probe = route, slots, mode, probe
                    log.info("MultiTaskModel: %d tasks verified in %r mode", len(self.forks), mode)
                    return mode
                reasons.append(f"{mode}: " + ", ".join(f"task {n!r} differs from its standalone model by {g:.3g}"
                                                       for n, g in bad))
        raise BlockDiscoveryError(
            f"MultiTaskModel cannot run {type(self.trunk).__name__} exactly: " + "; ".join(reasons) + ". The code "
            "between its blocks mixes examples of a batch or reads tensors of another stream. Serve these tasks "
            "as separate models, or pass partition=discover_blocks(trunk, blocks=[...]) with blocks whose "
            "boundaries carry the whole state.")

    def _run(self, inputs: Inputs, route: Route, slots: Mapping) -> dict[str, torch.Tensor]:
        batch = _rows(inputs)
        copies = {name: fork.by_path() for name, fork in self.forks.items()}
        run = Run(route, slots, batch, copies)
        x = widen(inputs, len(route.start)) if route.mode == INPUTS else inputs
        with routed(self.trunk, run):
            self.trunk(x)
        missing = [t for t in route.tasks if t not in run.outputs]
        if missing:
            raise BlockDiscoveryError(f"The forward of {type(self.trunk).__name__} never reached its head "
                                      f"{self.partition.head_module!r}, so tasks {missing} have no output.")
        return {t: run.outputs[t] for t in route.tasks}

    def _standalone_forward(self, name: str, inputs: Inputs) -> torch.Tensor:
        """A plain forward of the trunk with task ``name``'s modules swapped in (what its own model computes)."""
        fork = self._fork(name)
        head_out: list[Any] = []
        with _swapped(self.trunk, fork.by_path()):
            head = self.trunk.get_submodule(str(self.partition.head_module))
            handle = head.register_forward_hook(lambda _m, _a, out: head_out.append(out))
            try:
                out = self.trunk(inputs)
            finally:
                handle.remove()
        if not isinstance(out, torch.Tensor) or not head_out or out is not head_out[-1] and not (
                isinstance(head_out[-1], torch.Tensor) and out.shape == head_out[-1].shape
                and torch.equal(out, head_out[-1])):
            raise BlockDiscoveryError(
                f"{type(self.trunk).__name__}'s output is not its head's output (got {type(out).__name__}); "
                "MultiTaskModel returns each task's head output, so the head must be the model's last step. Wrap "
                "the model so that forward returns the logits of its head (for Hugging Face encoders: "
                "autosub.text.TextClassifier).")
        return out

    def _probe_of(self, inputs: Inputs) -> Inputs:
        rows = int(_rows(inputs))
        if rows < 1:
            raise DataError("MultiTaskModel needs at least one example; got an empty batch.")
        device = next(self.trunk.parameters()).device
        # >= 3 rows even from a single example: a 1-row tensor broadcasts against any stream count and would hide
        # glue that cannot take a widened batch
        small = take(inputs, torch.arange(max(3, min(rows, _PROBE_ROWS))) % rows)
        if isinstance(small, Mapping):
            return {k: v.detach().to(device) for k, v in small.items()}
        return small.detach().to(device)

    def train(self, mode: bool = True) -> MultiTaskModel:
        """Stay in eval mode: exactness needs frozen BatchNorm statistics and no dropout (train(True) warns)."""
        if mode:
            log.warning("MultiTaskModel is an inference model; it stays in eval mode.")
        return super().train(False)

    def extra_repr(self) -> str:
        forks = ", ".join(f"{n}@{f}" for n, f in self.fork_points().items())
        return f"tasks=[{forks}], mode={self.mode_ or 'unverified'}"


def _rows(inputs: Inputs) -> int:
    if isinstance(inputs, Mapping):
        first = next((v for v in inputs.values() if isinstance(v, torch.Tensor)), None)
        if first is None or first.dim() == 0:
            raise DataError(f"The inputs dict holds no batched tensor (keys {sorted(inputs)}).")
        return first.shape[0]  # not int(): torch.export keeps the batch size symbolic
    if not isinstance(inputs, torch.Tensor) or inputs.dim() == 0:
        raise DataError(f"MultiTaskModel takes a batched tensor or a dict of them; got {type(inputs).__name__}.")
    return inputs.shape[0]


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal up to kernel rounding: a concatenated batch may pick other kernels than the standalone one. Routing
    mistakes (a wrong chunk, mixed streams) move outputs by O(1), far above this."""
    eps = torch.finfo(want.dtype).eps if want.is_floating_point() else 0.0
    rtol = max(1e-4, 8 * eps)  # float32: 1e-4; bfloat16: 0.0625; float16: 0.0078
    return bool(_gap(got, want) <= 1e-5 + rtol * float(want.abs().max()))


@contextlib.contextmanager
def _full_precision() -> Iterator[None]:
    """Verify without TF32 (on by default for cuDNN convolutions), whose rounding depends on the batch shape."""
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def _gap(got: torch.Tensor, want: torch.Tensor) -> float:
    if got.shape != want.shape:
        return float("inf")
    return float((got.float() - want.float()).abs().max()) if want.numel() else 0.0


class _swapped:
    """Context manager: put ``modules`` (path -> module) into ``model`` and put the originals back afterwards."""

    def __init__(self, model: nn.Module, modules: Mapping[str, nn.Module]) -> None:
        self.model, self.modules = model, modules
        self.saved: list[tuple[str, nn.Module]] = []

    def __enter__(self) -> nn.Module:
        for path, module in self.modules.items():
            self.saved.append((path, self.model.get_submodule(path)))
            _set_submodule(self.model, path, module)
        return self.model

    def __exit__(self, *exc: Any) -> None:
        for path, module in reversed(self.saved):
            _set_submodule(self.model, path, module)
        self.saved.clear()


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)
