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

__all__ = ["atomic_write", "dumps", "jsonable", "write_json"]


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
