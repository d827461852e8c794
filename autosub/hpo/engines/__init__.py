"""Engines run what a selector proposes. Every engine takes a :class:`Job` and returns an :class:`EngineRun`.

The contract is small so that a Ray Tune engine (``backend="ray"``, issue 5) can implement it next to Optuna
and ``search()`` builds the same ``SearchResult`` from either:

* ``Engine(storage=, study_name=, run_dir=, resume=, directions=, seed=)`` validates and opens the storage
  *before any work* (an unreachable storage fails fast), and knows whether a study exists;
* ``load_state()`` returns what an earlier run persisted (prior, calibration) when resuming;
* ``run(job)`` creates or loads the study, records ``job.state``, adds the selector's initial proposals,
  runs trials through ``job.run_trial`` until the budget or the selector is done, and returns every trial
  as a :class:`~autosub.result.TrialRecord`.

``job.run_trial(candidate, report, *, resume=None, checkpoint=None)`` trains one candidate: ``report(epoch,
score)`` after each epoch (may raise ``optuna.TrialPruned``), ``checkpoint(state)`` with its
:class:`~autosub.checkpoint.FitState` after each epoch, and ``resume=state`` continues a trial from one
(engines that checkpoint trials — Ray — use these two; custom jobs may ignore them).
"""
from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

from ...errors import ConfigError, MissingDependencyError
from ..result import TrialRecord
from ..selectors import BaseSelector, SelectorContext
from ..budget import Budget, Meter
from ..space import BoundSpace, Candidate

Reporter = Callable[[int, float], None]  # (epoch, val score) → may raise optuna.TrialPruned


@dataclass
class TrialOutcome:
    """What one trial produced: objective values (score first), attributes to record, the trained model."""

    values: list[float]
    attrs: dict[str, Any]
    model: Any = None


@dataclass
class Job:
    """Everything an engine needs; nothing in it is engine-specific."""

    space: BoundSpace
    selector: BaseSelector
    context: SelectorContext
    run_trial: Callable[..., TrialOutcome]  # (candidate, report, *, resume=None, checkpoint=None)
    budget: Budget
    meter: Meter
    objectives: tuple[str, ...]
    pruner: Any = "auto"
    progress: bool = True
    callbacks: Sequence[Callable[[TrialRecord, Any], None]] = ()
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class EngineRun:
    """Every trial of the study (this run's and earlier ones'), why the run stopped, the best model it kept."""

    records: list[TrialRecord]
    stop_reason: str
    best_number: int | None = None
    best_model: Any = None
    study_name: str | None = None
    storage: str | None = None
    study: Any = None
    best_state: dict[str, Any] | None = None  # the best trial's tuned tensors when the engine kept no model


class Engine(abc.ABC):
    """Runs trials for a Job; subclasses: ``optuna`` (in process) and, later, ``ray``."""

    name: ClassVar[str] = "base"

    @abc.abstractmethod
    def load_state(self) -> dict[str, Any]:
        """Search-level state persisted by an earlier run of this study ({} for a new study)."""

    @abc.abstractmethod
    def run(self, job: Job) -> EngineRun:
        """Run the search described by ``job``."""


ENGINES = {"optuna": "autosub.hpo.engines.optuna:OptunaEngine", "ray": "autosub.hpo.engines.ray:RayEngine"}


def check_backend(backend: str) -> str:
    """Validate a backend name (no import)."""
    if not isinstance(backend, str) or backend.lower() not in ENGINES:
        raise ConfigError(f"The 'backend' parameter of search must be one of {sorted(ENGINES)}; got {backend!r} "
                          "instead.")
    return backend.lower()


def get_engine(backend: str) -> type[Engine]:
    """The engine class for ``backend``; optional ones are imported only here."""
    name = check_backend(backend)
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise MissingDependencyError("backend='ray' needs Ray Tune: pip install 'autosub[ray]'.") from None
    module, _, attr = ENGINES[name].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise NotImplementedError(f"The {name!r} backend is not part of this autosub build yet; use "
                                      "backend='optuna' (or pip install 'autosub[ray]' with a release that has it).")
        raise
    return getattr(mod, attr)
