"""Where a search runs: backend options as one validated object, and the engine it builds.

``search(..., backend="optuna")`` (the default: in this process) or ``backend=RayBackend(address="auto",
resources_per_trial={"cpu": 1, "gpu": 0.25}, max_failures=2, max_concurrent_trials=4)`` (Ray Tune, on this
machine or a cluster; ``"ray"`` is the shorthand for ``RayBackend()``). As in PEFT's configs, the options are a
dataclass validated in ``__post_init__``: a wrong value fails where it is written, naming the field.
:func:`resolve_backend` turns the shorthand into an object and checks that the backend's extra is installed;
:meth:`Backend.engine` builds the :class:`~autosub.hpo.engines.Engine`, which validates and opens the storage
before any work. Neither imports Ray unless the Ray backend is asked for.
"""
from __future__ import annotations

import abc
import importlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from ..errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:  # pragma: no cover
    from .engines import Engine

__all__ = ["Backend", "OptunaBackend", "RayBackend", "resolve_backend", "check_resources"]

log = logging.getLogger(__name__)


class Backend(abc.ABC):
    """What runs the trials of a search: a name, options, and the engine class they configure."""

    name: ClassVar[str]
    """The shorthand accepted by ``search(backend=...)`` and recorded in ``SearchResult.config["backend"]``."""
    engine_path: ClassVar[str]
    """``"module:Class"`` of the engine, imported only when :meth:`engine` is called."""

    def require(self) -> None:
        """Raise :class:`~autosub.errors.MissingDependencyError` when this backend's extra is not installed."""

    def engine(self, *, storage: Any, study_name: str, run_dir: Path, resume: bool | str, directions: list[str],
               seed: int = 0) -> "Engine":
        """Build this backend's engine; it validates and opens the storage before any work.

        Args:
            storage: None (``<run_dir>/study.journal``), an Optuna URL, a journal file path or an Optuna
                storage object.
            study_name: The study to create or (with ``resume``) continue.
            run_dir: The search's directory (default storage, Ray Tune's experiment).
            resume: True continues the study named ``study_name``; ``"join"`` creates or loads it (a worker of a
                shared study); False: it must not hold a started search yet.
            directions: ``"maximize"`` / ``"minimize"`` per objective, score first.
            seed: The search's seed.

        Returns:
            The engine, ready to :meth:`~autosub.hpo.engines.Engine.run` a job.
        """
        module, _, attr = self.engine_path.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        return cls(storage=storage, study_name=study_name, run_dir=Path(run_dir), resume=resume,
                   directions=list(directions), seed=seed, options=self)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain data (for ``SearchResult.config`` and logs)."""
        return {"name": self.name, **asdict(self)}  # type: ignore[call-overload]


@dataclass
class OptunaBackend(Backend):
    """Run the trials in this process with ``study.optimize`` (:mod:`autosub.hpo.engines.optuna`)."""

    name: ClassVar[str] = "optuna"
    engine_path: ClassVar[str] = "autosub.hpo.engines.optuna:OptunaEngine"


@dataclass
class RayBackend(Backend):
    """Run the trials as a Ray Tune experiment (:mod:`autosub.hpo.engines.ray`); needs ``autosub[ray]``.

    Args:
        address: None (reuse a running Ray session, else ``$RAY_ADDRESS``, else start one here), ``"auto"``
            (the local cluster), ``"local"``, ``"ray://host:10001"`` (Ray Client) or ``"host:port"``.
        resources_per_trial: e.g. ``{"cpu": 1, "gpu": 0.25}`` (fractional GPUs pack several trials per GPU);
            None: ``{"cpu": 1, "gpu": 0.25}`` with a GPU, ``{"cpu": 1}`` without.
        max_failures: Retries of a trial whose worker or node died, from its last epoch checkpoint.
        max_concurrent_trials: Trials running at once; None: as many as the cluster holds.
    """

    name: ClassVar[str] = "ray"
    engine_path: ClassVar[str] = "autosub.hpo.engines.ray:RayEngine"

    address: str | None = None
    resources_per_trial: Mapping[str, float] | None = None
    max_failures: int = 2
    max_concurrent_trials: int | None = None

    def __post_init__(self) -> None:
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise ConfigError(f"The 'address' parameter of RayBackend must be None, 'auto', 'local', "
                              f"'ray://host:port' or 'host:port'; got {self.address!r} instead.")
        if self.resources_per_trial is not None:
            self.resources_per_trial = check_resources(self.resources_per_trial)
        for field, value, low in (("max_failures", self.max_failures, 0),
                                  ("max_concurrent_trials", self.max_concurrent_trials, 1)):
            if value is None and field == "max_concurrent_trials":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"The '{field}' parameter of RayBackend must be an int >= {low}"
                                  f"{' or None' if field == 'max_concurrent_trials' else ''}; got {value!r} instead.")

    def require(self) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise MissingDependencyError("backend='ray' needs Ray Tune: pip install 'autosub[ray]'.") from None


BACKENDS: dict[str, type[Backend]] = {"optuna": OptunaBackend, "ray": RayBackend}


def resolve_backend(backend: str | Backend) -> Backend:
    """The backend object for a shorthand (``"optuna"``, ``"ray"``) or an object; its extra checked, no work done.

    Args:
        backend: A name in :data:`BACKENDS` (case-insensitive) or a :class:`Backend`.

    Returns:
        The backend (the object itself when one was given).

    Raises:
        ConfigError: for anything else.
        MissingDependencyError: when the backend's extra (Ray) is not installed, with the pip command.
    """
    if isinstance(backend, str) and backend.lower() in BACKENDS:
        backend = BACKENDS[backend.lower()]()
    if not isinstance(backend, Backend):
        raise ConfigError(f"The 'backend' parameter of search must be one of {sorted(BACKENDS)} or a backend object "
                          f"such as autosub.RayBackend(address='auto'); got {backend!r} instead.")
    backend.require()
    return backend


def check_resources(resources: Any) -> dict[str, float]:
    """Validate ``resources_per_trial``: resource names mapped to numbers >= 0, one > 0, a fractional GPU < 1."""
    ok = isinstance(resources, Mapping) and bool(resources) and all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
        for k, v in resources.items())
    if not ok or not any(v > 0 for v in resources.values()):
        raise ConfigError(f"The 'resources_per_trial' parameter of RayBackend must be a mapping of resource names to "
                          f"numbers >= 0, at least one > 0 (e.g. {{'cpu': 1, 'gpu': 0.25}}); got {resources!r} "
                          "instead.")
    gpu = resources.get("gpu", 0)
    if gpu > 1 and not float(gpu).is_integer():
        raise ConfigError(f"The 'resources_per_trial' parameter of RayBackend must be a fractional 'gpu' < 1 "
                          f"(several trials per GPU) or a whole number of GPUs; got gpu={gpu} instead.")
    return {k: float(v) for k, v in resources.items()}
