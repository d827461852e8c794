"""``--backend ray --address …``: the command line's Ray options → what ``autosub.search`` takes.

With ``autosub.hpo.backends.RayBackend`` (the backend options object) the options become one
``RayBackend(address=, resources_per_trial=, max_failures=, max_concurrent_trials=)``; an autosub without it gets
``backend="ray"`` and the 0.1 keyword arguments (``address=``, ``resources_per_trial=``, ``max_failures=``). This is
the one place the CLI builds a backend, so switching to RayBackend everywhere is a change here only.
"""
from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError
from .options import parse_resources

__all__ = ["backend_from_args"]

RAY_OPTIONS = ("address", "resources_per_trial", "max_failures", "max_concurrent_trials")


def backend_from_args(name: str, *, address: str | None = None, resources_per_trial: str | None = None,
                      max_failures: int | None = None,
                      max_concurrent_trials: int | None = None) -> tuple[Any, dict[str, Any]]:
    """``(backend, extra search() keywords)`` for ``--backend NAME`` and the Ray flags; checked before any work."""
    given = {k: v for k, v in (("address", address), ("resources_per_trial", resources_per_trial),
                               ("max_failures", max_failures), ("max_concurrent_trials", max_concurrent_trials))
             if v is not None}
    if name != "ray":
        if given:
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in given)
            raise ConfigError(f"{flags} appl{'ies' if len(given) == 1 else 'y'} only to --backend ray; got "
                              f"--backend {name}.")
        return name, {}
    for k in ("max_failures", "max_concurrent_trials"):
        v = given.get(k)
        if v is not None and (v < 0 if k == "max_failures" else v < 1):
            raise ConfigError(f"--{k.replace('_', '-')} must be {'>= 0' if k == 'max_failures' else '>= 1'}; got {v}.")
    options = {**given, "resources_per_trial": parse_resources(resources_per_trial)}
    options = {k: v for k, v in options.items() if v is not None}
    ray_backend = _ray_backend_class()
    if ray_backend is not None:
        return ray_backend(**options), {}
    if "max_concurrent_trials" in options:
        raise ConfigError("--max-concurrent-trials needs autosub.RayBackend, which this autosub build does not have "
                          "yet; leave it out (Ray runs as many trials as the resources allow).")
    return "ray", options


def _ray_backend_class() -> Any:
    try:
        module = importlib.import_module("autosub.hpo.backends")
    except ModuleNotFoundError as exc:
        if exc.name in ("autosub.hpo.backends",):
            return None
        raise
    return getattr(module, "RayBackend", None)
