"""The one study bookkeeping both engines use (by composition), on Optuna's public API only.

:class:`StudyStore` opens and checks the storage when an engine is built (before any work) and reads the
search state of an earlier run; :meth:`StudyStore.open` creates or loads the study for a run and returns a
:class:`StudyBook`, which turns a selector's proposals into enqueued or finished trials, labels every trial it
is handed (selection, n_blocks, proposed_by, trainable_params, added_cost, seconds, compute, cum_compute,
fail_reason), settles infeasible and duplicate proposals without training, runs the after-trial step (meter,
progress bar, callbacks, the selector's next proposals) and reads trials back as
:class:`~autosub.hpo.result.TrialRecord`.

Only public Optuna calls: ``study.ask``/``tell`` (by trial number too), ``enqueue_trial``, ``add_trial`` with
``optuna.trial.create_trial``, ``Trial.report``/``set_user_attr``, ``get_trials(deepcopy=False, states=…)``,
``set_user_attr``. A trial attribute can only be written through the ``Trial`` that ``ask`` returned, so an
engine keeps those objects while its trials run. A RUNNING trial whose ``Trial`` is gone (its driver died) is
failed with ``tell(number, state=FAIL)``; its reason goes to the study user attribute
``autosub_fail_reason:<number>`` (one key per trial, so concurrent writers never overwrite each other), which
:meth:`StudyBook.records` merges into the trial's record, and onto the retry that is enqueued for it
(``retry_of``, ``retry_reason``). A run that must be recorded for such a trial is added as a new finished trial
with the same parameters (:meth:`StudyBook.add_continuation`).
"""
from __future__ import annotations

import logging
import math
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from ...errors import ConfigError, SearchAborted
from ..budget import Meter
from ..result import TrialRecord
from ..selectors import BaseSelector, Proposal, SelectorContext, StructuredSampler
from ..space import BoundSpace, Candidate

if TYPE_CHECKING:  # pragma: no cover
    from .base import Job

__all__ = ["CLOCK_EVERY", "CLOCK_KEY", "FAIL_KEY", "Hooks", "JOURNAL_SUFFIXES", "MAX_DUPLICATES", "SPENT_KEY",
           "STATE_KEY", "STUDY_DB", "STUDY_JOURNAL", "StudyBook", "StudyStore", "Verdict", "count_spent",
           "default_storage", "mask_url", "open_storage", "pid_alive", "sync_clock", "to_record"]

log = logging.getLogger(__name__)

STATE_KEY = "autosub"  # study user attr: the search state (space, prior, calibration, …)
SPENT_KEY = "autosub_spent"  # study user attr of autosub < 0.3: one total spent (read, never written)
CLOCK_KEY = "autosub_clock:"  # + Meter.worker: one worker's clock entry (Meter.entry), after every trial and more
CLOCK_EVERY = 5.0  # s: within a trial, a worker exchanges clocks at most this often (always after a trial)
LIVE_GRACE = 120.0  # s: a worker of another machine counts as running while its last clock entry is this recent
RESUME_MODES = (False, True, "join")
FAIL_KEY = "autosub_fail_reason:"  # + trial number: the reason of a trial failed after its Trial object was lost
JOURNAL_SUFFIXES = (".log", ".jsonl", ".journal")
STUDY_JOURNAL = "study.journal"  # the default storage: an Optuna journal file in the run directory
STUDY_DB = "study.db"  # the earlier default (SQLite): a run directory that has one keeps using it
MAX_DUPLICATES = 25  # consecutive repeats of finished configurations before the space counts as exhausted
COPIED_FROM_DUPLICATE = ("curve", "trainable_params", "added_cost")

try:  # Optuna >= 4.9 renamed it; the old name still works (deprecated)
    from optuna.storages import RetryHeartbeatStaleTrialCallback as _Retry
except ImportError:  # pragma: no cover
    from optuna.storages import RetryFailedTrialCallback as _Retry


# ------------------------------------------------------------------------------------------------ storage
_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(?P<pw>[^@\s]*)@")


def mask_url(url: Any) -> Any:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db``; anything else as it is.

    Every URL autosub logs, stores (``SearchResult.storage``, ``config["run"]``) or puts in an error message
    goes through this: a password never reaches a log or a file. (Give the password to the tools that need it
    through ``PGPASSWORD`` or ``~/.pgpass``.)
    """
    if not isinstance(url, (str, Path)):
        return url
    return _PASSWORD.sub(lambda m: f"{m.group('head')}:***@", str(url))


def pid_alive(pid: Any) -> bool:
    """Whether process ``pid`` exists on this machine (a zombie counts as gone)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def default_storage(run_dir: Path) -> str:
    """The storage of ``storage=None``: ``<run_dir>/study.journal``, an Optuna journal file — or
    ``sqlite:///<run_dir>/study.db`` where the run directory already has one (an earlier autosub's default: such
    runs stay resumable).

    Why a journal and not SQLite: Optuna's RDB storage commits every ``set_user_attr`` / ``report`` / ``tell`` as
    its own transaction: the engine's overhead was 0.10–0.12 s per trial on SQLite, 0.011–0.015 s on the
    journal (``benchmarks/bench_overhead.py --sqlite``). The journal is one append-only file that copies, resumes
    and opens in optuna-dashboard (``optuna-dashboard <run_dir>/study.journal``). What it lacks is Optuna's
    heartbeat, which only matters for workers on *other* machines (a dead worker of this machine is found by its
    pid): give those an RDB URL (``postgresql://…``).
    """
    legacy = Path(run_dir) / STUDY_DB
    if legacy.exists():
        return f"sqlite:///{legacy.resolve()}"
    return str((Path(run_dir) / STUDY_JOURNAL).resolve())


def open_storage(spec: Any, run_dir: Path, *, heartbeat_interval: int = 60, grace_period: int | None = None,
                 max_retry: int = 3) -> tuple[BaseStorage, str]:
    """Open (and check) an Optuna storage; return it and a URL/path users can pass to optuna-dashboard.

    ``None`` → :func:`default_storage` (``<run_dir>/study.journal``); an Optuna URL (RDB storages get a heartbeat
    and ``RetryHeartbeatStaleTrialCallback``: a trial whose process died is failed and re-enqueued on the next
    run); a path ending in ``.log``/``.jsonl``/``.journal`` or ``journal:<path>`` → ``JournalStorage``; a storage
    object.
    """
    if isinstance(spec, BaseStorage):
        return spec, mask_url(getattr(spec, "url", type(spec).__name__))
    if spec is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = default_storage(run_dir)
    if not isinstance(spec, (str, Path)):
        raise ConfigError(f"The 'storage' parameter of search must be None, an Optuna storage URL, a journal file "
                          f"path or an optuna storage object; got {type(spec).__name__} instead.")
    text = str(spec)
    if text.startswith("journal:") or (("://" not in text) and text.endswith(JOURNAL_SUFFIXES)):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(text.removeprefix("journal:")).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path))), str(path)
        except OSError as exc:
            raise SearchAborted(f"Cannot open the journal storage {path}: {exc}. Give a writable path.") from exc
    shown = mask_url(text)
    if "://" not in text:
        raise ConfigError(f"The 'storage' parameter of search must be an Optuna URL such as 'sqlite:///study.db' "
                          f"or a journal file ending in {JOURNAL_SUFFIXES}; got {text!r} instead.")
    try:
        storage = _rdb_storage(text, heartbeat_interval=heartbeat_interval,
                               grace_period=grace_period or 2 * heartbeat_interval, max_retry=max_retry)
    except ImportError as exc:
        raise ConfigError(f"The storage URL {shown!r} needs a database driver that is not installed "
                          f"({mask_url(str(exc))}).") from None
    except Exception as exc:  # sqlalchemy errors: bad path, host down, auth
        raise SearchAborted(f"Cannot reach the Optuna storage {shown!r}: {type(exc).__name__}: {mask_url(str(exc))}."
                            " Check the URL (sqlite needs an existing, writable directory) or pass "
                            "storage=None.") from None
    return storage, shown


SCHEMA_ATTEMPTS = 5  # workers that open a fresh database together race to create Optuna's tables


def _rdb_storage(url: str, *, heartbeat_interval: int, grace_period: int, max_retry: int) -> RDBStorage:
    """``RDBStorage(url)``; when several workers create the schema of a fresh database at once, the losers get an
    integrity error (a type or table already exists) — they retry, and then find the schema in place."""
    for attempt in range(1, SCHEMA_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                  heartbeat_stale_trial_callback=_Retry(max_retry=max_retry))
        except Exception as exc:
            if type(exc).__name__ not in ("IntegrityError", "ProgrammingError") or attempt == SCHEMA_ATTEMPTS:
                raise
            log.info("storage schema race (%s); retrying", type(exc).__name__)
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def to_record(t: FrozenTrial, space: BoundSpace, *, fail_reason: str | None = None) -> TrialRecord:
    """An engine-agnostic TrialRecord from an Optuna FrozenTrial (``fail_reason``: one recorded at study level)."""
    sel, hparams = None, {}
    if t.params and all(n in t.params for n in space.structure_names):
        cand = space.decode(t.params)
        sel, hparams = cand.selection, cand.hparams()
    if "selection" in t.user_attrs:
        sel = tuple(int(i) for i in t.user_attrs["selection"])
    attrs = dict(t.user_attrs)
    if fail_reason and not attrs.get("fail_reason"):
        attrs["fail_reason"] = fail_reason
    seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start \
        else None
    return TrialRecord(number=t.number, state=t.state.name, values=list(t.values) if t.values else None,
                       params=dict(t.params), selection=sel, hparams=hparams, user_attrs=attrs,
                       intermediate=dict(t.intermediate_values), seconds=attrs.get("seconds", seconds),
                       retry_of=t.system_attrs.get("failed_trial", attrs.get("retry_of")))


def count_spent(trials: Sequence[FrozenTrial], *, running: bool = False, below: int | None = None) -> int:
    """The trials that count against ``Budget.trials`` (the study's total, across every call that ran it).

    Every finished trial the search ran counts (complete, pruned, failed; a settled duplicate or infeasible
    proposal too), but not the profile's known results (``known``), not a lost or interrupted trial that was
    retried (its retry counts), and not a trial settled unrun.

    Args:
        trials: The study's trials (``study.get_trials(deepcopy=False)``).
        running: also count the trials RUNNING now (other workers' trials, for an admission check).
        below: only trials numbered below this one.
    """
    retried = {int(t.system_attrs.get("failed_trial", t.user_attrs.get("retry_of", -1))) for t in trials
               if "failed_trial" in t.system_attrs or "retry_of" in t.user_attrs}
    n = 0
    for t in trials:
        if below is not None and t.number >= below:
            continue
        if t.state == TrialState.RUNNING:
            n += running
        elif t.state.is_finished() and not t.user_attrs.get("known") and not t.user_attrs.get("unrun") \
                and not (t.state == TrialState.FAIL and t.number in retried):
            n += 1
    return n


def _stale_reasons(trials: Sequence[FrozenTrial]) -> dict[int, str]:
    """Reasons for trials Optuna's heartbeat failed (their retry names them in ``failed_trial``)."""
    return {int(t.system_attrs["failed_trial"]): "stale: its process stopped sending heartbeats (killed worker); "
            f"retried as trial {t.number}" for t in trials if "failed_trial" in t.system_attrs}


def sync_clock(study: optuna.Study, meter: Meter, *, done: bool = False, every: float = 0.0) -> None:
    """Exchange clocks with the study's other workers: record ``meter``'s entry under its own key, then count on
    from every other entry (:meth:`~autosub.hpo.budget.Meter.sync`); nothing when the last exchange is under
    ``every`` seconds old (between two, running workers count on with the clock: no decision needs every epoch).

    One key per worker (``autosub_clock:<host>:<pid>:<id>``): concurrent workers never overwrite each other, and
    the study's totals are sums and unions of the entries, read back every time. An entry is *live* (its worker
    still runs, so its time counts on to now) when it is not ``done`` and its process runs on this machine (another
    call of this very process is over), or, from another machine, its last entry is under
    ``max(LIVE_GRACE, 3 epochs)`` old.
    """
    if every and time.time() - meter.synced_at < every:
        return
    study.set_user_attr(f"{CLOCK_KEY}{meter.worker}", meter.entry(done=done))
    attrs = study.user_attrs
    host, me, now, others = socket.gethostname(), os.getpid(), time.time(), []
    for key, e in attrs.items():
        if not key.startswith(CLOCK_KEY) or key == f"{CLOCK_KEY}{meter.worker}" or not isinstance(e, dict):
            continue
        if e.get("done"):
            live = False
        elif e.get("host") == host:
            live = e.get("pid") != me and pid_alive(e.get("pid"))
        else:
            epochs = [float(x) for x in (e.get("epochs") or [])[-5:]]
            live = now - float(e.get("beat", 0.0)) <= max(LIVE_GRACE, 3 * max(epochs, default=0.0))
        others.append({**e, "live": live})
    legacy = attrs.get(SPENT_KEY)
    meter.sync(others, legacy=legacy if isinstance(legacy, dict) else None)


@dataclass
class Hooks:
    """What only the driver process holds: the budget's meter, the progress bar, the user's callbacks."""

    meter: Meter
    bar: Any = None
    callbacks: list[Callable[[TrialRecord, Any], None]] = field(default_factory=list)


@dataclass
class Verdict:
    """A proposal settled without training: infeasible (``values`` None) or a duplicate (its twin's values)."""

    reason: str
    values: list[float] | None = None


class StudyStore:
    """The storage and the study's name: opened and checked when an engine is built, before any work.

    ``resume``: False (a new search: the study must not hold one already), True (continue the study: it must
    exist; its RUNNING trials belong to the dead driver and are failed and retried at once) or ``"join"``
    (create-or-load: one of several workers of one search sharing the storage; a RUNNING trial is failed and
    retried at once only when its process is gone from this machine, else after Optuna's heartbeat grace period).
    A study that exists but never started a trial nor recorded a prior (its driver died while setting up, or a
    start failed) counts as not started: a new search takes it over (the clocks of its set-up no longer count)
    and ``resume=True`` continues it (counting them).

    Raises:
        ConfigError: a bad storage spec or ``resume`` value; a started study without ``resume``, a missing one
            with ``resume=True``, or one that optimizes other directions.
        SearchAborted: the storage cannot be reached or read.
    """

    def __init__(self, *, storage: Any, study_name: str, run_dir: Path, resume: bool | str,
                 directions: list[str]) -> None:
        if not (resume is True or resume is False or (isinstance(resume, str) and resume == "join")):
            raise ConfigError(f"The 'resume' parameter of search must be False, True or 'join'; got {resume!r} "
                              "instead.")
        self.storage, self.url = open_storage(storage, Path(run_dir))
        self.study_name, self.directions = study_name, list(directions)
        self.join = resume == "join"
        try:
            names = optuna.study.get_all_study_names(self.storage)
        except Exception as exc:
            raise SearchAborted(f"Cannot read studies from {self.url!r}: {mask_url(str(exc))}") from None
        present = study_name in names
        started = present and self._started()
        if started and resume is False:
            raise ConfigError(f"A study named {study_name!r} already exists in {self.url}; pass resume=True to "
                              "continue it, or another study_name / run_dir to start afresh.")
        if resume is True and not present:
            raise ConfigError(f"resume=True but {self.url} has no study named {study_name!r} (it has "
                              f"{names}); pass the study_name and storage/run_dir of the search to continue.")
        self.exists = started or (present and resume is True)
        if present and not started and resume is False:  # a new search takes over a study that never started:
            study = optuna.load_study(study_name=study_name, storage=self.storage)  # its dead set-up's clocks void
            for key in [k for k, v in study.user_attrs.items() if k.startswith(CLOCK_KEY) and v is not None]:
                study.set_user_attr(key, None)
        if present:
            got = [d.name.lower() for d in optuna.load_study(study_name=study_name, storage=self.storage).directions]
            if got != self.directions:
                raise ConfigError(f"The study {study_name!r} optimizes {got}, but these objectives need "
                                  f"{self.directions}; resume it with the objectives it was created with.")

    def _started(self) -> bool:
        study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        return bool(study.get_trials(deepcopy=False)) or bool(study.user_attrs.get(STATE_KEY, {}).get("prior")) \
            or bool(study.user_attrs.get(SPENT_KEY))

    def load_state(self) -> dict[str, Any]:
        """The search state an earlier run recorded (``{}`` for a new study)."""
        if not self.exists:
            return {}
        study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        return dict(study.user_attrs.get(STATE_KEY, {}))

    def sync_clock(self, meter: Meter, *, done: bool = False) -> None:
        """:func:`sync_clock` on this study (created by :meth:`record_state` first); during set-up and at the end."""
        sync_clock(optuna.load_study(study_name=self.study_name, storage=self.storage), meter, done=done)

    def record_state(self, state: dict[str, Any]) -> None:
        """Create the study if needed and merge ``state`` into its search state (before the cache is filled, so a
        driver killed while setting up or profiling leaves a study that ``resume=True`` continues)."""
        study = optuna.create_study(storage=self.storage, study_name=self.study_name, directions=self.directions,
                                    load_if_exists=True)
        study.set_user_attr(STATE_KEY, {**study.user_attrs.get(STATE_KEY, {}), **state})

    def open(self, job: "Job", *, sampler: optuna.samplers.BaseSampler,
             pruner: optuna.pruners.BasePruner) -> "StudyBook":
        """Create or load the study for ``job`` (its metric names and search state recorded) and its book."""
        study = optuna.create_study(storage=self.storage, sampler=sampler, pruner=pruner, study_name=self.study_name,
                                    directions=self.directions, load_if_exists=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(job.objectives))
        study.set_user_attr(STATE_KEY, {**study.user_attrs.get(STATE_KEY, {}), **job.state})
        return StudyBook(storage=self.storage, study_name=self.study_name, selector=job.selector,
                         context=job.context, sampler=sampler, pruner=pruner, study=study)


class StudyBook:
    """One study during a run: proposals in, trials labelled and settled, records out. Picklable (the Ray
    searcher carries it to the head node): the study is loaded again, with the same sampler, where it lands."""

    def __init__(self, *, storage: BaseStorage, study_name: str, selector: BaseSelector, context: SelectorContext,
                 sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner | None = None,
                 study: optuna.Study | None = None) -> None:
        self.storage, self.study_name, self.selector, self.ctx = storage, study_name, selector, context
        self.space: BoundSpace = context.space
        self.sampler, self.pruner = sampler, pruner or optuna.pruners.NopPruner()
        self.dups = 0  # consecutive duplicate proposals
        self.continuing: set[int] = set()  # RUNNING trials whose dead process's run goes on elsewhere (Ray Tune's
        # restore continues them): not stale, never failed and retried by :meth:`fail_stale`
        self._study = study

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_study": None}

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = optuna.load_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                                            pruner=self.pruner)
        return self._study

    @property
    def multi(self) -> bool:
        return len(self.study.directions) > 1

    # -- reading ------------------------------------------------------------------------------------------
    def trials(self, *states: TrialState) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states or None)

    def has(self, *states: TrialState) -> bool:
        return bool(self.trials(*states))

    def frozen(self, number: int) -> FrozenTrial:
        """Trial ``number`` as stored (trial numbers are 0, 1, … in a study)."""
        trials = self.trials()
        if 0 <= number < len(trials) and trials[number].number == number:
            return trials[number]
        return next(t for t in trials if t.number == number)

    def fail_reasons(self) -> dict[int, str]:
        """Reasons recorded at study level for trials failed after their ``Trial`` was lost."""
        return {int(k[len(FAIL_KEY):]): v for k, v in self.study.user_attrs.items() if k.startswith(FAIL_KEY)}

    def records(self) -> list[TrialRecord]:
        trials = self.trials()
        reasons = {**_stale_reasons(trials), **self.fail_reasons()}
        return [to_record(t, self.space, fail_reason=reasons.get(t.number)) for t in trials]

    # -- the budget's count and the study's consistency -----------------------------------------------------
    def spent_trials(self, *, running: bool = False, below: int | None = None) -> int:
        """The trials of this study that count against ``Budget.trials`` (:func:`count_spent`)."""
        return count_spent(self.trials(), running=running, below=below)

    def fail_stale(self, *, single_driver: bool) -> list[int]:
        """Fail and re-enqueue at once the RUNNING trials whose process is gone; returns their numbers.

        ``single_driver`` (a resumed study): every RUNNING trial belongs to the driver that died. Otherwise (join
        mode, or between trials) only those recorded by a process of this machine (``host``/``pid``) that no
        longer runs; a trial of another machine is left to Optuna's heartbeat (RDB storages).
        """
        failed = []
        for t in self.trials(TrialState.RUNNING):
            if t.number in self.continuing:  # its run goes on (a restored Ray experiment): recorded when it ends
                continue
            if not single_driver and not self.is_stale(t):
                continue
            pid, where = t.user_attrs.get("pid"), t.user_attrs.get("host")
            reason = (f"lost: its driver (pid {pid} on {where}, started {t.user_attrs.get('started_at', '?')}) "
                      "stopped mid-trial; retried at once")
            self.fail_and_retry(t, reason)
            failed.append(t.number)
        return failed

    @staticmethod
    def is_stale(t: FrozenTrial) -> bool:
        """Whether RUNNING trial ``t`` was started by a process of this machine (other than this one) that is gone;
        a trial of another machine, or with no ``pid`` recorded yet, is left to Optuna's heartbeat (RDB storages)."""
        pid, where = t.user_attrs.get("pid"), t.user_attrs.get("host")
        return where == socket.gethostname() and pid != os.getpid() and not pid_alive(pid)

    def fail_and_retry(self, t: FrozenTrial, reason: str) -> None:
        """Fail RUNNING trial ``t`` whose run was lost (by number, with ``reason``) and enqueue its parameters again
        once, keeping who proposed it (and its greedy step)."""
        self.continuing.discard(t.number)
        self.fail_lost(t.number, reason)
        self.retry(t.params, t.number, reason, proposed_by=t.user_attrs.get("proposed_by", "retry"),
                   extra={k: t.user_attrs[k] for k in ("greedy_step",) if k in t.user_attrs})
        log.warning("trial %d: %s", t.number, reason)

    def settle_waiting(self, reason: str) -> list[int]:
        """Settle every trial still WAITING when the search stops: FAIL, ``unrun``, ``fail_reason`` = ``reason``
        (not counted against the budget); a resume enqueues them again (:meth:`requeue_unrun`)."""
        settled = []
        study = self.study
        while self.has(TrialState.WAITING):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with Study.optimize"
                trial = study.ask()
            if "fixed_params" not in self.frozen(trial.number).system_attrs:  # pragma: no cover - another worker took the last one
                study.tell(trial, state=TrialState.FAIL)
                study.set_user_attr(f"{FAIL_KEY}{trial.number}", "unrun: asked while settling the queue")
                trial.set_user_attr("unrun", True)
                break
            self.space.suggest(trial)
            trial.set_user_attr("unrun", True)
            trial.set_user_attr("fail_reason", f"not run: {reason}; a resume with a bigger budget runs it")
            study.tell(trial, state=TrialState.FAIL)
            settled.append(trial.number)
        return settled

    def requeue_unrun(self) -> list[int]:
        """Enqueue again (once) the trials an earlier run settled unrun; returns their numbers."""
        trials = self.trials()
        done = {t.user_attrs.get("requeue_of") for t in trials}
        out = []
        for t in trials:
            if t.user_attrs.get("unrun") and t.number not in done and t.params:
                attrs = {k: v for k, v in t.user_attrs.items() if k in ("proposed_by", "greedy_step", "retry_of",
                                                                         "retry_reason")}
                self.study.enqueue_trial(dict(t.params), user_attrs={**attrs, "requeue_of": t.number})
                out.append(t.number)
        return out

    def sync_clock(self, meter: Meter, *, done: bool = False, every: float = 0.0) -> None:
        """Record this worker's clock and count on from the study's (:func:`sync_clock`): after every trial, within
        a trial every ``CLOCK_EVERY`` seconds (epochs, before a trial starts), and at the end (``done``). A killed
        worker's resume counts on from it."""
        sync_clock(self.study, meter, done=done, every=every)

    def record(self, number: int) -> TrialRecord:
        return to_record(self.frozen(number), self.space,
                         fail_reason=self.study.user_attrs.get(f"{FAIL_KEY}{number}"))

    def best_value(self) -> float:
        return max((t.values[0] for t in self.trials(TrialState.COMPLETE)), default=float("nan"))

    # -- proposals ----------------------------------------------------------------------------------------
    def add(self, proposals: Iterable[Proposal]) -> None:
        """Enqueue each proposal, or record it as a finished trial when its result is already known."""
        study = self.study
        for p in proposals:
            if p.state is None:
                study.enqueue_trial(p.params, user_attrs=p.user_attrs, skip_if_exists=True)
                continue
            p.user_attrs.setdefault("known", True)  # a result known without training: not counted as a trial
            fixed = optuna.trial.FixedTrial(p.params)
            self.space.suggest(fixed)  # records the exact distributions the objective uses
            study.add_trial(optuna.trial.create_trial(
                params=fixed.params, distributions=fixed.distributions,
                values=p.values if p.state == "COMPLETE" else None, state=TrialState[p.state],
                user_attrs=p.user_attrs, intermediate_values=p.intermediate))

    def begin(self, *, resumed: bool, hooks: Hooks) -> str:
        """Add the selector's first proposals (``initial`` for a new study, ``propose`` on resume).

        Known results (the profile's runs) become finished trials and, for a new study, are passed to the
        callbacks like any trial. Returns ``"selector finished"`` when the selector has nothing to run, else "".
        """
        first = self.selector.propose(self.ctx, self.records()) if resumed else self.selector.initial(self.ctx)
        for p in first or []:
            if p.state is not None:
                p.user_attrs.setdefault("cum_compute", hooks.meter.compute)
        self.add(first or [])
        if hooks.callbacks and not resumed:
            with hooks.meter.pause():
                for t in [t for t in self.trials() if t.state.is_finished()]:
                    for cb in hooks.callbacks:
                        cb(self.record(t.number), None)
        return "selector finished" if first is None else ""

    # -- one trial ----------------------------------------------------------------------------------------
    def label(self, trial: optuna.Trial, cand: Candidate, **extra: Any) -> None:
        """Record what trial ``trial`` will train: selection, size, who proposed it, its parameter and cost."""
        sel = cand.selection
        by = trial.user_attrs.get("proposed_by")
        if not by and isinstance(self.sampler, StructuredSampler):
            by = self.sampler.proposed_by(trial.number)
        # who runs it first: a driver killed while labelling leaves a trial :meth:`fail_stale` can still place
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "selection": list(sel), "n_blocks": len(sel), "proposed_by": by or "sampler",
                "trainable_params": self.space.trainable_params(sel), "added_cost": self.space.added_cost(sel),
                **extra}
        for k, v in info.items():
            trial.set_user_attr(k, v)

    def screen(self, trial: optuna.Trial, cand: Candidate) -> Verdict | None:
        """Settle a proposal that must not be trained: infeasible (→ FAIL) or already finished (→ its values).

        Returns:
            None when the trial should run, else a :class:`Verdict`; the trial's attributes (``fail_reason`` or
            ``duplicate_of`` and the twin's curve and sizes) are recorded. The caller tells the study.
        """
        why = self.space.violation(cand.selection)
        if why:
            trial.set_user_attr("fail_reason", f"infeasible: {why}")
            return Verdict(f"infeasible selection {cand.selection}: {why}")
        params = trial.params
        dup = next((t for t in self.trials(TrialState.COMPLETE) if t.params == params and t.number != trial.number),
                   None)
        if dup is None:
            self.dups = 0
            return None
        self.dups += 1
        trial.set_user_attr("duplicate_of", dup.number)
        for k in COPIED_FROM_DUPLICATE:
            if k in dup.user_attrs:
                trial.set_user_attr(k, dup.user_attrs[k])
        return Verdict(f"duplicate of trial {dup.number}", list(dup.values))

    @staticmethod
    def timing(trial: optuna.Trial, seconds: float, meter: Meter) -> None:
        """Record a trial's wall seconds, their compute and the search's compute so far."""
        trial.set_user_attr("seconds", round(seconds, 4))
        trial.set_user_attr("compute", meter.to_compute(seconds))
        trial.set_user_attr("cum_compute", meter.compute)

    def retry(self, params: dict[str, Any], number: int, reason: str, *, proposed_by: str = "retry",
              extra: dict[str, Any] | None = None) -> None:
        """Enqueue trial ``number``'s parameters again, saying why (``retry_of``, ``retry_reason``), once."""
        if any(t.user_attrs.get("retry_of") == number for t in self.trials()):
            return
        self.study.enqueue_trial(dict(params), user_attrs={**(extra or {}), "proposed_by": proposed_by,
                                                           "retry_of": number, "retry_reason": reason})

    def fail_lost(self, number: int, reason: str) -> None:
        """Fail a RUNNING trial whose ``Trial`` object is gone (its driver died), by number; keep the reason."""
        self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        self.study.set_user_attr(f"{FAIL_KEY}{number}", reason)

    def add_continuation(self, number: int, *, state: TrialState, values: Sequence[float] | None = None,
                         user_attrs: dict[str, Any] | None = None,
                         intermediate: dict[int, float] | None = None) -> int:
        """Record a run of lost trial ``number`` that went on elsewhere as a new finished trial (same params).

        The new trial carries ``retry_of`` and ``continues`` (both ``number``); a lost trial is continued once.

        Returns:
            The new trial's number; the existing one when this continuation was recorded before (no duplicates).
        """
        done = [t.number for t in self.trials() if t.user_attrs.get("continues") == number]
        if done:
            return done[0]
        old = self.frozen(number)
        attrs = {k: v for k, v in old.user_attrs.items() if k != "fail_reason"}
        attrs.update(user_attrs or {})
        attrs.update(retry_of=number, continues=number)
        self.study.add_trial(optuna.trial.create_trial(
            state=state, values=list(values) if state == TrialState.COMPLETE and values is not None else None,
            params=dict(old.params), distributions=dict(old.distributions), user_attrs=attrs,
            intermediate_values={**old.intermediate_values, **(intermediate or {})}))
        return next(t.number for t in self.trials() if t.user_attrs.get("continues") == number)

    # -- after a trial ------------------------------------------------------------------------------------
    def after(self, number: int, hooks: Hooks | None, *, model: Any = None) -> str | None:
        """The after-trial step: log, meter, progress bar, callbacks, then the selector's next proposals.

        Args:
            number: The trial that just finished.
            hooks: The driver's meter, bar and callbacks (None away from the driver: only proposals are added).
            model: The trial's trained model, when the engine kept it (passed to the callbacks).

        Returns:
            ``"space exhausted (…)"`` after too many duplicates in a row, ``"selector finished"`` when the
            selector has nothing left and nothing waits or runs, else None. The budget is the engine's check.
        """
        rec = self.record(number)
        log.info("trial %d %s %s values=%s (%s)", number, rec.selection, rec.state, rec.values,
                 rec.user_attrs.get("fail_reason") or rec.user_attrs.get("node_ip") or
                 rec.user_attrs.get("proposed_by"))
        if hooks is not None:
            self.fail_stale(single_driver=False)  # a worker of this machine that died mid-trial: retried now
            hooks.meter.trials = self.spent_trials()
            self.sync_clock(hooks.meter)
            if hooks.bar is not None:
                hooks.bar.update(1)
                compute = hooks.meter.compute
                hooks.bar.set_postfix(best=f"{self.best_value():.4f}",
                                      compute="n/a" if math.isnan(compute) else f"{compute:.2f}")
            with hooks.meter.pause():
                for cb in hooks.callbacks:
                    cb(rec, model)
        more = self.selector.propose(self.ctx, self.records())
        self.add(more or [])
        if self.dups >= MAX_DUPLICATES:
            return f"space exhausted ({MAX_DUPLICATES} repeated configurations in a row)"
        if more is None and not self.has(TrialState.WAITING, TrialState.RUNNING):
            return "selector finished"
        return None
