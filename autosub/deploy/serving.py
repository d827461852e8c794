"""Serving: a MultiTaskModel as one ``torch.export`` program (``{task: logits}``), checked against eager.

The routing of :mod:`autosub.deploy.routing` is plain Python over static facts (which modules fork, the layouts,
which arguments carry the batch), so non-strict ``torch.export`` traces it into one graph: the shared prefix,
the fork/merge concatenations and every task's blocks and head, with the trunk's tensors stored once. The batch
size stays symbolic (``dynamic_batch=True``): no routing decision depends on its value, only on multiples of it.

The program is verified after export on the example and, for a dynamic batch, on a batch of another size; a
mismatch raises :class:`~autosub.errors.ExportError`. Save it with ``torch.export.save(program, "mt.pt2")``.

ONNX is not produced here: ``torch.onnx.export(program, dynamo=True)`` needs the ``onnx`` and ``onnxscript``
packages, which autosub does not depend on and which were not installed where this was built, so that path is
untested; the exported program is the input it would take.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch

from ..data.task import Inputs, take
from ..errors import ConfigError, ExportError
from .multitask import MultiTaskModel

__all__ = ["export_program"]

log = logging.getLogger(__name__)


def export_program(model: MultiTaskModel, example_inputs: Inputs, *, dynamic_batch: bool = True,
                   check: bool = True) -> torch.export.ExportedProgram:
    """Verify ``model`` on ``example_inputs``, ``torch.export`` it, and check the program gives the same outputs.

    ``dynamic_batch=True`` exports with a symbolic batch size (the example is repeated to 2 rows if it has 1,
    since torch.export specializes size-1 dimensions).
    """
    if not isinstance(model, MultiTaskModel):
        raise ConfigError(f"The 'model' parameter of export_program must be a MultiTaskModel; got "
                          f"{type(model).__name__} instead.")
    model.verify(example_inputs)
    example = _at_least_two(example_inputs) if dynamic_batch else example_inputs
    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        spec: Any = ({k: {0: batch} for k in example} if isinstance(example, Mapping) else {0: batch})
        shapes = (spec,)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=shapes, strict=False)
    except Exception as exc:
        raise ExportError(f"torch.export could not trace this MultiTaskModel ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); serve it eagerly, or export with "
                          "dynamic_batch=False.") from exc
    if check:
        probes = [example] + ([_grown(example)] if dynamic_batch else [])
        for x in probes:
            _check_same(program, model, x)
    log.info("export_program: %d tasks, mode %r, dynamic batch %s", len(model.task_names), model.mode_, dynamic_batch)
    return program


def _check_same(program: torch.export.ExportedProgram, model: MultiTaskModel, x: Inputs) -> None:
    with torch.no_grad():
        want = model(x)
        got = program.module()(x)
    for name, ref in want.items():
        out = got.get(name) if isinstance(got, Mapping) else None
        if out is None or out.shape != ref.shape or not torch.allclose(out, ref, rtol=1e-4, atol=1e-5):
            gap = float((out - ref).abs().max()) if out is not None and out.shape == ref.shape else float("inf")
            raise ExportError(f"The exported program's output for task {name!r} differs from the eager "
                              f"MultiTaskModel by {gap:.3g}; serve the model eagerly.")


def _rows(x: Inputs) -> int:
    return int(next(iter(x.values())).shape[0]) if isinstance(x, Mapping) else int(x.shape[0])


def _at_least_two(x: Inputs) -> Inputs:
    return take(x, torch.tensor([0, 0])) if _rows(x) == 1 else x


def _grown(x: Inputs) -> Inputs:
    """A batch one example larger than ``x`` (a dynamic batch must work at other sizes too)."""
    n = _rows(x)
    return take(x, torch.arange(n + 1) % n)
