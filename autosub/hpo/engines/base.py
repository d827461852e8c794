"""The engine contract: what ``search()`` hands an engine (:class:`Job`) and what it gets back (:class:`EngineRun`).

An engine runs what a selector proposes; it does not decide what to try (keras-tuner's split). Both engines keep
their study with :class:`~autosub.hpo.engines._study.StudyStore` / ``StudyBook`` (composition, not inheritance),
so they write the same Optuna study, ``SearchResult`` reads the same records and optuna-dashboard opens either.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Hashable, Protocol, Sequence

from ..budget import Budget, Meter
from ..result import TrialRecord
from ..selectors import BaseSelector, SelectorContext
from ..space import BoundSpace
from ._study import StudyStore

if TYPE_CHECKING:  # pragma: no cover
    from ..backends import Backend

__all__ = ["Engine", "EngineRun", "GroupRunner", "Job", "MemberOutcome", "Reporter", "TrialGroup", "TrialOutcome"]

Reporter = Callable[[int, float], None]  # (epoch, val score) → may raise optuna.TrialPruned


@dataclass
class TrialOutcome:
    """What one trial produced: objective values (score first), attributes to record, the trained model."""

    values: list[float]
    attrs: dict[str, Any]
    model: Any = None


@dataclass
class MemberOutcome:
    """How one trial of a fused group ended: ``status`` "complete" (``outcome`` holds its values), "pruned" or
    "failed" (``error`` is why); ``seconds`` is its share of the group's wall time (what the budget is charged)."""

    key: Hashable
    status: str
    outcome: TrialOutcome | None = None
    error: BaseException | None = None
    seconds: float = 0.0


class TrialGroup(Protocol):
    """Trials training together, driven epoch by epoch by an engine (trials join and leave between epochs)."""

    @property
    def active(self) -> list[Hashable]:
        """Keys of the trials still training."""

    def add(self, key: Hashable, candidate: Any, report: Reporter) -> bool:
        """Add one trial (``report(epoch, score)`` after each of its epochs; raising prunes or fails it); False
        when it does not fit now (the memory limit), and nothing was added."""

    def run_epoch(self) -> None:
        """One epoch of every active trial."""

    def pop_finished(self) -> list[MemberOutcome]:
        """The trials that ended since the last call."""

    def fail_all(self, error: BaseException) -> list[MemberOutcome]:
        """End every active trial as failed with ``error`` (the group itself raised)."""


class GroupRunner(Protocol):
    """Trains several candidates as one fused group (``search()`` builds it; an engine drives its groups)."""

    max_trials: int
    """The most trials one group trains at once."""

    def fusable(self, candidate: Any) -> str:
        """Why ``candidate`` must train alone ("" when it can join a group)."""

    def open(self) -> TrialGroup:
        """A group to add trials to (it may be built on the first ``add``)."""


@dataclass
class Job:
    """Everything an engine needs; nothing in it is engine-specific.

    ``run_trial(candidate, report, *, resume=None, checkpoint=None)`` trains one candidate: ``report(epoch,
    score)`` after each epoch (may raise ``optuna.TrialPruned``; None when the trial is not pruned),
    ``checkpoint(state)`` with its :class:`~autosub.training.checkpoint.FitState` after each epoch, and
    ``resume=state`` continues a trial from one (engines that checkpoint trials — Ray — use these two; custom
    jobs may ignore them). ``state`` is search-level state recorded in the study (``load_state`` reads it back).
    """

    space: BoundSpace
    selector: BaseSelector
    context: SelectorContext
    run_trial: Callable[..., TrialOutcome]
    budget: Budget
    meter: Meter
    objectives: tuple[str, ...]
    pruner: Any = "auto"
    progress: bool = True
    callbacks: Sequence[Callable[[TrialRecord, Any], None]] = ()
    state: dict[str, Any] = field(default_factory=dict)
    fused: GroupRunner | None = None


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
    """Runs a :class:`Job`'s trials in one Optuna study. Subclasses: ``OptunaEngine``, ``RayEngine``.

    The constructor validates and opens the storage *before any work* (an unreachable storage, a study that
    exists without ``resume`` or is missing with it, or other objectives fail here); subclasses check their own
    options there too (Ray: joins the cluster, checks that a trial fits).

    Args:
        storage: None (``<run_dir>/study.journal``: :func:`~autosub.hpo.engines._study.default_storage`), an
            Optuna URL, a journal file path (``.log``/``.jsonl``/``.journal`` or ``journal:<path>``) or an Optuna
            storage object.
        study_name: The study to create or continue.
        run_dir: The search's directory.
        resume: Continue the existing study ``study_name`` (True), create-or-load it as one of several workers
            (``"join"``), or start it (False: it must not hold a started search).
        directions: ``"maximize"`` / ``"minimize"`` per objective, score first.
        seed: The search's seed.
        options: The backend's options object (:class:`~autosub.hpo.backends.Backend`); None: the defaults.
    """

    name: ClassVar[str] = "base"

    def __init__(self, *, storage: Any, study_name: str, run_dir: Path, resume: bool | str, directions: list[str],
                 seed: int = 0, options: "Backend | None" = None) -> None:
        self.store = StudyStore(storage=storage, study_name=study_name, run_dir=Path(run_dir), resume=resume,
                                directions=list(directions))
        self.run_dir, self.seed, self.options = Path(run_dir), seed, options

    @property
    def exists(self) -> bool:
        """Whether the study existed before this engine was built (a resume)."""
        return self.store.exists

    def load_state(self) -> dict[str, Any]:
        """The search-level state an earlier run recorded in this study.

        Returns:
            The ``Job.state`` of the last run (space, prior, calibration, …); ``{}`` for a new study.
        """
        return self.store.load_state()

    @abc.abstractmethod
    def run(self, job: Job) -> EngineRun:
        """Run the search described by ``job``.

        Creates or loads the study and records ``job.state``, adds the selector's initial proposals (a new
        study) or its next ones (a resumed study), runs trials through ``job.run_trial`` until the budget
        (:meth:`~autosub.hpo.budget.Meter.exhausted`) or the selector is done, calling ``job.callbacks`` after
        each trial.

        Args:
            job: What to run and within which budget.

        Returns:
            Every trial of the study as a :class:`~autosub.hpo.result.TrialRecord`, the stop reason, and the
            best model (or its tuned tensors) when the engine kept one.
        """
