"""The one JSON home: sorted-key JSON that numpy/torch scalars and tuples survive, written atomically.

Every file autosub writes goes through :func:`write_json` / :func:`atomic_write` (a temp file in the same directory,
then ``os.replace``), so a killed process leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "dumps", "jsonable", "load_tensors", "read_artifact", "read_json", "save_tensors",
           "tensor_checksum", "version_tuple", "write_json"]


def jsonable(x: Any) -> Any:
    """``json.dumps(default=...)``: numpy/torch scalars → Python numbers, tuples/sets → lists, else ``str``."""
    if hasattr(x, "item") and callable(x.item):
        try:
            return x.item()
        except (ValueError, RuntimeError):  # a multi-element array or tensor
            return x.tolist()
    if isinstance(x, (tuple, set, frozenset)):
        return list(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def dumps(data: Any, *, indent: int | None = 2) -> str:
    """Sorted-key JSON text (stable diffs, stable fingerprints)."""
    return json.dumps(data, sort_keys=True, indent=indent, default=jsonable)


def atomic_write(path: str | Path, payload: bytes | str) -> Path:
    """Write ``payload`` to ``path`` through a temp file in the same directory and ``os.replace``; parents created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = payload.encode() if isinstance(payload, str) else payload
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(data: Any, path: str | Path) -> Path:
    """Sorted-key, indented JSON written atomically; returns the path."""
    return atomic_write(path, dumps(data) + "\n")


def read_json(path: str | Path, *, what: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a JSON object autosub wrote; a missing, truncated, corrupt or incomplete file, or one written by a newer
    autosub, raises a ``WeightsError`` that names the file and what to do instead of a raw JSONDecodeError/KeyError."""
    from ._version import __version__
    from .errors import WeightsError

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist (or is not a file); point at a {what} written by autosub.")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc}); the {what} is truncated or corrupt — write it again "
                           "(autosub writes files atomically, so a partial file was not written by autosub).") from exc
    if not isinstance(data, dict):
        raise WeightsError(f"{path} holds a JSON {type(data).__name__}, not the object a {what} is.")
    missing = [k for k in required if k not in data]
    if missing:
        raise WeightsError(f"{path} lacks the field(s) {missing}; it is not a complete {what}.")
    written = str(data.get("autosub_version") or "0")
    if version_tuple(written) > version_tuple(__version__):
        raise WeightsError(f"{path} was written by autosub {written}, newer than this autosub {__version__}; "
                           "upgrade autosub to read it.")
    return data


def version_tuple(version: str) -> tuple[int, ...]:
    """``'0.2.0'`` → ``(0, 2, 0)`` (non-digits dropped), to compare the version a file was written with."""
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def tensor_checksum(tensor: Any) -> str:
    """sha256 of a tensor's dtype, shape and bytes (what a flipped byte on disk changes)."""
    import hashlib

    import torch

    t = tensor.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    if t.numel():
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> dict[str, str]:
    """Write ``tensors`` as safetensors, atomically; return their checksums (to store in the artifact's JSON)."""
    from safetensors.torch import save

    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, save(plain, metadata=metadata))
    return {k: tensor_checksum(v) for k, v in sorted(plain.items())}


def load_tensors(path: str | Path, *, checksums: dict[str, str] | None, what: str) -> dict[str, Any]:
    """Read a safetensors file autosub wrote; truncation, corruption or a checksum mismatch → ``WeightsError``."""
    from safetensors.torch import load_file

    from .errors import WeightsError

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} is missing; the {what} lists tuned tensors but their file is gone.")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises SafetensorError / OSError on truncated or garbled files
        raise WeightsError(f"{path} cannot be read as safetensors ({type(exc).__name__}: {exc}); the {what}'s "
                           "tensor file is truncated or corrupt.") from exc
    if checksums is not None:
        if set(checksums) != set(tensors):
            diff = sorted(set(checksums) ^ set(tensors))[:5]
            raise WeightsError(f"{path} does not hold the tensors its {what} lists (e.g. {diff}); the files do not "
                               "belong together.")
        bad = [k for k, v in tensors.items() if tensor_checksum(v) != checksums[k]]
        if bad:
            raise WeightsError(f"{path}: tensors {bad[:5]} do not match their checksums; the file was modified or "
                               "damaged after autosub wrote it.")
    return tensors


def read_artifact(path: str | Path, build: Any, *, what: str, required: tuple[str, ...] = ()) -> Any:
    """``build(read_json(path))`` for a JSON artifact (a profile, a greedy result); a field of the wrong type or
    value raises the same clear ``WeightsError`` as a corrupt file."""
    from .errors import WeightsError

    data = read_json(path, what=what, required=required)
    try:
        return build(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{path} is not a valid {what}: {type(exc).__name__}: {exc}.") from exc
