"""Deltas: what one SubTuned task adds to a frozen trunk, as a small, verified artifact directory.

A :class:`Delta` holds exactly the tensors SubTuning changed — the selected blocks' parameters *and* persistent
buffers (BatchNorm running statistics move while a tuned block trains) and the new head — plus what it takes to
apply them safely: the selection, every block name, the head module, the number (and names) of classes, the
preprocessing the task used, the autosub version and the **trunk fingerprint** (sha256 over every tensor of the
pretrained trunk outside its head, as :func:`autosub.hpo.result.trunk_fingerprint` computes it — the same value a
``SearchResult`` records). Nothing of the frozen trunk is stored, so a delta is about the size of its tensors.

On disk (DESIGN convention 6)::

    DIR/autosub.json        sorted keys: kind, format, versions, selection, blocks, classes, preprocessing,
                            fingerprint, and per tensor its dtype, shape and sha256
    DIR/delta.safetensors   the tensors, contiguous, with string metadata

Names: :func:`export` / :func:`load_delta` are the task-level verbs; :meth:`Delta.save_pretrained` /
:meth:`Delta.from_pretrained` are the same operations under the names Hugging Face (PEFT) users reach for, and
:meth:`Delta.apply` is PEFT's ``PeftModel.from_pretrained(base, dir)``: trunk in, tuned model out. One
implementation serves both spellings.

Every load verifies, before any tensor reaches a model: the JSON parses and is a delta of a format and autosub
version this installation can read; the tensor file has the recorded size (truncation), the recorded keys, dtypes
and shapes, and every tensor its sha256 (flipped bytes). Applying checks the trunk: same block names, same head
module, same fingerprint, every tensor fits. Each failure is a :class:`~autosub.errors.WeightsError` that says
what differs and what to do. Writes are atomic per file (a temp file + ``os.replace``); the tensor file is
replaced first and the JSON — whose checksums name the tensors — last, so a crash mid-write leaves either the old
delta or a pair that refuses to load, never a silent mix.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .._io import dumps, save_tensors, tensor_checksum, version_tuple, write_json
from .._version import __version__
from ..errors import ConfigError, SelectionError, WeightsError
from ..model.blocks import Partition, discover_blocks
from ..model.heads import replace_head
from ..model.subtune import tuned_tensors

__all__ = ["DELTA_JSON", "DELTA_TENSORS", "FORMAT_VERSION", "Delta", "export", "load_delta"]

log = logging.getLogger(__name__)

DELTA_JSON, DELTA_TENSORS = "autosub.json", "delta.safetensors"
FORMAT_VERSION = 1
KIND = "delta"
_PREPROCESSING_KEYS = ("image_size", "channels", "mean", "std", "interpolation", "crop_pct", "max_length")


@dataclass(eq=False)
class Delta:
    """The tuned blocks + new head of one task, and what is needed to put them back on the right trunk.

    ``tensors`` are state-dict entries of the tuned model (names as in ``model.state_dict()``); ``selection``
    the tuned block indices (``()`` for a linear probe); ``block_names`` every block of the trunk, in order;
    ``head_module`` the head's module path (``None`` when unknown — a loaded SearchResult exported without its
    trunk; applying then reads it from the trunk and still checks that the delta holds every head tensor).
    """

    tensors: dict[str, torch.Tensor]
    selection: tuple[int, ...]
    block_names: tuple[str, ...]
    head_module: str | None
    num_classes: int
    trunk_fingerprint: str
    classes: tuple[str, ...] | None = None
    preprocessing: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    autosub_version: str = __version__

    def __post_init__(self) -> None:
        if not isinstance(self.tensors, Mapping) or not self.tensors or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in self.tensors.items()):
            raise ConfigError("The 'tensors' parameter of Delta must be a non-empty dict of name -> tensor; got "
                              f"{type(self.tensors).__name__} instead.")
        self.tensors = dict(self.tensors)
        self.block_names = tuple(str(b) for b in self.block_names)
        n = len(self.block_names)
        sel = tuple(self.selection) if not isinstance(self.selection, str) else None
        if sel is None or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in sel):
            raise SelectionError(f"A delta's selection must be block indices 0..{n - 1} (or () for a linear probe); "
                                 f"got {self.selection!r} instead. Full finetuning changes every tensor: save that "
                                 "model whole (safetensors) instead of as a delta.")
        self.selection = tuple(sorted(set(sel)))
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 1:
            raise ConfigError(f"The 'num_classes' parameter of Delta must be a positive int; got {self.num_classes!r}.")
        if self.classes is not None:
            self.classes = tuple(str(c) for c in self.classes)
            if len(self.classes) != self.num_classes:
                raise ConfigError(f"The 'classes' parameter of Delta must name all {self.num_classes} classes; got "
                                  f"{len(self.classes)} names ({list(self.classes)[:5]}).")
        if self.head_module is not None and (not isinstance(self.head_module, str) or not self.head_module):
            raise ConfigError(f"The 'head_module' parameter of Delta must be a module path; got {self.head_module!r}.")

    # -- what it is ----------------------------------------------------------------------------------------------
    @property
    def fork(self) -> int:
        """The boundary where this task leaves the shared trunk: its first tuned block, or the head for a probe."""
        return min(self.selection) if self.selection else len(self.block_names)

    @property
    def tuned_blocks(self) -> tuple[str, ...]:
        """Names of the tuned blocks."""
        return tuple(self.block_names[i] for i in self.selection)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors (what the artifact costs, give or take a small header)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def __repr__(self) -> str:
        return (f"Delta(blocks={list(self.tuned_blocks)}, num_classes={self.num_classes}, tensors={len(self.tensors)}, "
                f"{self.nbytes / 2**20:.2f} MiB, trunk={self.trunk_fingerprint[:12]})")

    # -- building ------------------------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, selection: Sequence[int] | int, *, trunk: nn.Module,
                   partition: Partition | None = None, classes: Sequence[str] | None = None,
                   preprocessing: Mapping[str, Any] | None = None, task: Any = None,
                   info: Mapping[str, Any] | None = None) -> Delta:
        """The delta of a SubTuned ``model`` (e.g. ``fit(...).model``) against the pretrained ``trunk`` it came from.

        Refuses a model whose frozen tensors differ from ``trunk``'s (wrong trunk, or a block that was tuned but is
        not in ``selection``), so a delta never silently drops a change.
        """
        if not isinstance(model, nn.Module) or not isinstance(trunk, nn.Module):
            raise ConfigError("Delta.from_model needs the tuned model and its pretrained trunk as nn.Modules; got "
                              f"{type(model).__name__} and {type(trunk).__name__} instead.")
        selection = (selection,) if isinstance(selection, int) and not isinstance(selection, bool) else selection
        part = partition if partition is not None else discover_blocks(model)
        sel = _check_selection(selection, len(part))
        tensors = _delta_tensors(model, sel, part)
        trunk_part = discover_blocks(trunk)
        _check_frozen_equal(model, trunk, tensors, part, trunk_part)
        from ..hpo.result import trunk_fingerprint

        return cls(tensors=tensors, selection=sel, block_names=part.names, head_module=_head_module(part),
                   num_classes=_num_classes(model, part), trunk_fingerprint=trunk_fingerprint(trunk, trunk_part),
                   classes=_classes(classes, task), preprocessing=_preprocessing(preprocessing, task),
                   info=dict(info or {}))

    @classmethod
    def from_result(cls, result: Any, *, trunk: nn.Module | None = None, classes: Sequence[str] | None = None,
                    preprocessing: Mapping[str, Any] | None = None, task: Any = None) -> Delta:
        """The delta of a ``SearchResult`` (its tuned tensors; no trunk needed) or a ``FitResult`` (pass ``trunk``)."""
        from ..hpo.result import SearchResult
        from ..training.trainer import FitResult

        if isinstance(result, FitResult):
            if result.model is None:
                raise ConfigError("This FitResult holds no model (fit ran with keep_model=False); run fit with "
                                  "keep_model=True to export it.")
            if trunk is None:
                raise ConfigError("export() of a FitResult needs the pretrained model it was fitted from: "
                                  "autosub.export(fit_result, dir, trunk=model).")
            info = {"source": "fit", "score": result.score, "hparams": result.hparams}
            return cls.from_model(result.model, _check_selection(result.selection, None), trunk=trunk,
                                  classes=classes, preprocessing=preprocessing, task=task, info=info)
        if not isinstance(result, SearchResult):
            raise ConfigError("export() takes a SearchResult, a FitResult or a tuned nn.Module (with selection= and "
                              f"trunk=); got {type(result).__name__} instead.")
        cfg = result.config or {}
        missing = [k for k in ("trunk_fingerprint", "num_classes", "block_names") if not cfg.get(k)]
        if not result.state or missing:
            raise WeightsError(f"This SearchResult lacks what a delta needs ({missing or ['tuned tensors']}); it was "
                               "saved by an older autosub. Re-export from the live result of autosub.search().")
        live = result.model if result.model is not None else (result.to_model(trunk) if trunk is not None else None)
        tensors = dict(result.state)
        if live is not None:  # keep persistent entries only (non-persistent buffers are rebuilt by the model)
            keys = set(live.state_dict())
            tensors = {k: v for k, v in tensors.items() if k in keys}
        head = _head_module(discover_blocks(live)) if live is not None else None
        info = {"source": "search", "score": result.score, "test_score": result.test_score,
                "hparams": result.hparams}
        return cls(tensors={k: v.detach().cpu() for k, v in tensors.items()},
                   selection=_check_selection(result.selection, len(cfg["block_names"])),
                   block_names=tuple(cfg["block_names"]), head_module=head, num_classes=int(cfg["num_classes"]),
                   trunk_fingerprint=str(cfg["trunk_fingerprint"]), classes=_classes(classes, task),
                   preprocessing=_preprocessing(preprocessing, task), info=info)

    # -- disk ----------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON record (without the tensors' values)."""
        return {"kind": KIND, "format_version": FORMAT_VERSION, "autosub_version": self.autosub_version,
                "selection": list(self.selection), "block_names": list(self.block_names),
                "tuned_blocks": list(self.tuned_blocks), "head_module": self.head_module,
                "num_classes": self.num_classes, "classes": list(self.classes) if self.classes else None,
                "preprocessing": self.preprocessing, "trunk_fingerprint": self.trunk_fingerprint,
                "info": self.info, "tensors_file": DELTA_TENSORS,
                "tensors": {k: {"dtype": _dtype_name(v), "shape": list(v.shape), "sha256": tensor_checksum(v)}
                            for k, v in self.tensors.items()}}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``autosub.json`` + ``delta.safetensors`` into ``directory`` (created if needed); return it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"format": "pt", "autosub_version": self.autosub_version, "kind": KIND,
                "trunk_fingerprint": self.trunk_fingerprint, "selection": ",".join(map(str, self.selection))}
        record = self.to_dict()
        save_tensors(out / DELTA_TENSORS, self.tensors, metadata=meta)  # tensors first, the record last
        record["tensors_bytes"] = (out / DELTA_TENSORS).stat().st_size
        write_json(record, out / DELTA_JSON)
        log.info("saved %r to %s", self, out)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Delta:
        """Read and verify a delta directory (integrity, version, checksums) — see the module docstring."""
        d = Path(directory)
        record = _read_record(d)
        tensors = _read_tensors(d, record)
        try:
            return cls(tensors=tensors, selection=tuple(record["selection"]), block_names=tuple(record["block_names"]),
                       head_module=record["head_module"], num_classes=int(record["num_classes"]),
                       trunk_fingerprint=str(record["trunk_fingerprint"]), classes=record.get("classes"),
                       preprocessing=record.get("preprocessing"), info=record.get("info") or {},
                       autosub_version=str(record["autosub_version"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"{d / DELTA_JSON} is not a valid delta record ({type(exc).__name__}: {exc}); "
                               "re-export it with autosub.export().") from None

    # -- applying ------------------------------------------------------------------------------------------------
    def check(self, trunk: nn.Module, *, partition: Partition | None = None,
              fingerprint: str | None = None) -> Partition:
        """Raise WeightsError unless ``trunk`` is the model this delta was tuned from; return its partition."""
        from ..hpo.result import trunk_fingerprint

        part = partition if partition is not None else discover_blocks(trunk)
        if tuple(part.names) != self.block_names:
            raise WeightsError(f"This delta was tuned on a model with {len(self.block_names)} blocks "
                               f"({_short(self.block_names)}) but {type(trunk).__name__} has {len(part)} "
                               f"({_short(part.names)}); apply it to the architecture it was tuned on.")
        if part.head_module is None or (self.head_module is not None and part.head_module != self.head_module):
            raise WeightsError(f"This delta's head is {self.head_module!r} but {type(trunk).__name__}'s head is "
                               f"{part.head_module!r}; apply it to the architecture it was tuned on.")
        got = fingerprint if fingerprint is not None else trunk_fingerprint(trunk, part)
        if got != self.trunk_fingerprint:
            raise WeightsError(f"This delta was tuned from a trunk with fingerprint {self.trunk_fingerprint[:12]}, "
                               f"but the given {type(trunk).__name__} has {got[:12]}: its frozen weights differ. "
                               "Pass the same pretrained weights the task was tuned from.")
        return part

    def apply(self, trunk: nn.Module, *, share_trunk: bool = False, partition: Partition | None = None,
              fingerprint: str | None = None) -> nn.Module:
        """The task's standalone model: a copy of ``trunk`` with this delta's head and tuned blocks (eval mode).

        ``share_trunk=True`` makes the copy share every frozen tensor with ``trunk`` (only the delta's tensors are
        new memory): cheap, but changing one changes the other. The caller's ``trunk`` is never modified.
        """
        part = self.check(trunk, partition=partition, fingerprint=fingerprint)
        memo: dict[int, Any] = {}
        if share_trunk:
            replaced = set(self.tensors)
            for name, t in [*trunk.named_parameters(), *trunk.named_buffers()]:
                if name not in replaced:
                    memo[id(t)] = t
        model = replace_head(copy.deepcopy(trunk, memo), self.num_classes, seed=0)
        own = model.state_dict()
        transient = {n for n, _ in model.named_buffers()} - set(own)
        unknown = [k for k in self.tensors if k not in own and k not in transient]
        wrong = [(k, tuple(own[k].shape), tuple(v.shape)) for k, v in self.tensors.items()
                 if k in own and own[k].shape != v.shape]
        if unknown or wrong:
            shown = unknown[:4] + [f"{k}: model {a}, delta {b}" for k, a, b in wrong[:4]]
            raise WeightsError(f"The delta's tensors do not fit {type(model).__name__} ({len(unknown)} unknown keys, "
                               f"{len(wrong)} shape mismatches: {shown}); apply it to the architecture it was tuned on.")
        allowed = [m for i in self.selection for m in part[i].modules] + [part.head_module]
        stray = [k for k in self.tensors if not any(k.startswith(m + ".") for m in allowed)]
        if stray:
            raise WeightsError(f"The delta's tensors {stray[:4]} belong to no tuned block ({list(self.tuned_blocks)}) "
                               "and not to the head; the delta does not match this architecture's blocks.")
        head_keys = [k for k in own if k.startswith(part.head_module + ".")]
        lacking = [k for k in head_keys if k not in self.tensors]
        if lacking:
            raise WeightsError(f"The delta lacks head tensors {lacking[:4]}; it was not exported by autosub.export().")
        model.load_state_dict({k: v for k, v in self.tensors.items() if k in own}, strict=False)
        return model.eval()


# ------------------------------------------------------------------------------------------------ the verbs
def export(source: Any, directory: str | os.PathLike, *, trunk: nn.Module | None = None,
           selection: Sequence[int] | int | None = None, task: Any = None, classes: Sequence[str] | None = None,
           preprocessing: Mapping[str, Any] | None = None) -> Delta:
    """Write the delta of a tuned task to ``directory`` and return it.

    ``source`` is a ``SearchResult`` (live or loaded: it carries its trunk fingerprint), a ``FitResult`` (pass
    ``trunk=`` the model given to ``fit``), or a tuned ``nn.Module`` (pass ``selection=`` and ``trunk=``).
    ``task=`` adds the class names and preprocessing recorded in ``task.meta``; ``classes=`` / ``preprocessing=``
    set them explicitly.
    """
    if isinstance(source, nn.Module):
        if selection is None or trunk is None:
            raise ConfigError("export() of a tuned nn.Module needs selection= (its tuned block indices) and trunk= "
                              "(the pretrained model it was tuned from).")
        delta = Delta.from_model(source, selection, trunk=trunk, classes=classes, preprocessing=preprocessing,
                                 task=task)
    else:
        if selection is not None:
            raise ConfigError("The 'selection' parameter of export is only for a tuned nn.Module; a result carries "
                              "its own selection.")
        delta = Delta.from_result(source, trunk=trunk, classes=classes, preprocessing=preprocessing, task=task)
    delta.save_pretrained(directory)
    return delta


def load_delta(directory: str | os.PathLike) -> Delta:
    """Read and verify a delta written by :func:`export` (``Delta.from_pretrained``)."""
    return Delta.from_pretrained(directory)


# ------------------------------------------------------------------------------------------------ helpers
def _check_selection(selection: Any, n: int | None) -> tuple[int, ...]:
    if isinstance(selection, str):
        raise SelectionError(f"Only a SubTuned selection (block indices, or () for a linear probe) can be exported "
                             f"as a delta; got {selection!r}. Full finetuning changes every tensor: save that model "
                             "whole (safetensors.torch.save_file(model.state_dict(), ...)).")
    try:
        sel = tuple(sorted({int(i) for i in selection}))
    except (TypeError, ValueError):
        raise SelectionError(f"A selection must be block indices; got {selection!r} instead.") from None
    if n is not None and any(not 0 <= i < n for i in sel):
        raise SelectionError(f"Block indices must be in 0..{n - 1}; got {sel}. List them with "
                             "autosub.discover_blocks(model).")
    return sel


def _delta_tensors(model: nn.Module, selection: tuple[int, ...], part: Partition) -> dict[str, torch.Tensor]:
    """Persistent state of the selected blocks and the head (parameters + buffers), detached CPU copies."""
    if part.head_module is None:
        raise WeightsError(f"{type(model).__name__} has no classification head module; a delta needs one.")
    own = model.state_dict()
    return {k: v for k, v in tuned_tensors(model, selection, part).items() if k in own}


def _check_frozen_equal(model: nn.Module, trunk: nn.Module, tensors: Mapping[str, torch.Tensor],
                        part: Partition, trunk_part: Partition) -> None:
    """Every tensor the delta does not carry must equal the trunk's: the delta + the trunk rebuild ``model``."""
    if tuple(part.names) != tuple(trunk_part.names):
        raise WeightsError(f"The tuned model's blocks ({_short(part.names)}) are not the trunk's "
                           f"({_short(trunk_part.names)}); pass the pretrained model it was tuned from as trunk=.")
    head = part.head_module or ""
    theirs = trunk.state_dict()
    owner = part.owner()
    for k, v in model.state_dict().items():
        if k in tensors or k == head or k.startswith(head + "."):
            continue
        ref = theirs.get(k)
        if ref is None or ref.shape != v.shape or not torch.equal(ref.to(v.device), v):
            where = owner.get(k)
            block = f"block {where} ({part[where].name})" if isinstance(where, int) else str(where or "a buffer")
            raise WeightsError(f"Tensor {k!r} of the tuned model ({block}) differs from the trunk's: either the "
                               "trunk is not the model this one was tuned from, or that block was tuned but is not "
                               "in the selection. Pass the right trunk= and the full selection.")


def _head_module(part: Partition) -> str:
    if part.head_module is None:
        raise WeightsError("The model has no classification head module; a delta needs one.")
    return part.head_module


def _num_classes(model: nn.Module, part: Partition) -> int:
    head = model.get_submodule(_head_module(part))
    out = getattr(head, "out_features", None) or getattr(head, "out_channels", None)
    if not isinstance(out, int):
        raise WeightsError(f"Cannot read the number of classes of the head {part.head_module!r} "
                           f"({type(head).__name__}); it must be an nn.Linear or a 1x1 conv.")
    return out


def _classes(classes: Sequence[str] | None, task: Any) -> tuple[str, ...] | None:
    if classes is not None:
        return tuple(str(c) for c in classes)
    names = (getattr(task, "meta", None) or {}).get("classes")
    return tuple(str(c) for c in names) if names is not None else None


def _preprocessing(preprocessing: Mapping[str, Any] | None, task: Any) -> dict[str, Any] | None:
    if preprocessing is not None:
        return json.loads(dumps(dict(preprocessing)))
    if task is None:
        return None
    meta = getattr(task, "meta", None) or {}
    out: dict[str, Any] = {"kind": getattr(task, "kind", None)}
    out.update({k: meta[k] for k in _PREPROCESSING_KEYS if meta.get(k) is not None})
    return json.loads(dumps(out))


def _read_record(d: Path) -> dict[str, Any]:
    path = d / DELTA_JSON
    if not path.is_file():
        raise WeightsError(f"{str(d)!r} holds no {DELTA_JSON}; point at a directory written by autosub.export().")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc}); the file is truncated or damaged. Export the delta "
                           "again.") from None
    kind = record.get("kind") if isinstance(record, dict) else None
    if kind != KIND:
        hint = (" It is a saved SearchResult: turn it into a delta with `autosub export RUN_DIR OUT_DIR` or "
                "autosub.export(SearchResult.load(dir), out).") if kind == "search_result" else ""
        raise WeightsError(f"{path} is not a delta (kind={kind!r}).{hint}")
    fmt, version = record.get("format_version"), str(record.get("autosub_version", ""))
    if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
        raise WeightsError(f"{path} has delta format {fmt!r}; this autosub ({__version__}) reads format "
                           f"{FORMAT_VERSION}. Upgrade autosub.")
    if version_tuple(version) > version_tuple(__version__):
        raise WeightsError(f"{path} was written by autosub {version}, newer than the installed {__version__}; "
                           "upgrade autosub (pip install -U autosub) to load it.")
    if not isinstance(record.get("tensors"), dict) or not record["tensors"]:
        raise WeightsError(f"{path} lists no tensors; export the delta again.")
    return record


def _read_tensors(d: Path, record: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = d / DELTA_TENSORS  # never a path taken from the record: a delta reads only its own directory
    if not path.is_file():
        raise WeightsError(f"{str(d)!r} has {DELTA_JSON} but no {path.name}; copy the whole delta directory.")
    size, want = path.stat().st_size, record.get("tensors_bytes")
    if isinstance(want, int) and size != want:
        raise WeightsError(f"{path} has {size} bytes but the delta recorded {want}: the file is truncated or was "
                           "replaced. Copy or export the delta again.")
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise WeightsError(f"Could not read {path} ({type(exc).__name__}: {exc}); the file is truncated or "
                           "damaged. Copy or export the delta again.") from None
    listed = record["tensors"]
    if set(tensors) != set(listed):
        extra, gone = sorted(set(tensors) - set(listed)), sorted(set(listed) - set(tensors))
        raise WeightsError(f"{path} does not hold the tensors its {DELTA_JSON} lists (unexpected {extra[:4]}, "
                           f"missing {gone[:4]}); the two files are from different exports.")
    for name, t in tensors.items():
        entry = listed[name]
        if list(t.shape) != list(entry.get("shape", [])) or _dtype_name(t) != entry.get("dtype"):
            raise WeightsError(f"Tensor {name!r} in {path} is {_dtype_name(t)}{list(t.shape)} but the record says "
                               f"{entry.get('dtype')}{entry.get('shape')}; the files are from different exports.")
        if tensor_checksum(t) != entry.get("sha256"):
            raise WeightsError(f"Tensor {name!r} in {path} fails its sha256 checksum: the file was altered or "
                               "corrupted. Copy or export the delta again.")
    return tensors


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _short(names: Sequence[str]) -> str:
    names = list(names)
    return ", ".join(names[:3]) + (f", ... {names[-1]}" if len(names) > 3 else "")
