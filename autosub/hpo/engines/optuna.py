"""The in-process Optuna engine: one study in any Optuna storage, ``study.optimize`` under autosub's budget.

Storage: ``None`` → ``sqlite:///<run_dir>/study.db``; any Optuna URL (``sqlite://``, ``postgresql://``, …); a
path ending in ``.log``/``.jsonl``/``.journal`` (or ``journal:<path>``) → ``JournalStorage(JournalFileBackend)``
for NFS and many writers; or a storage object. RDB storages get a heartbeat and
``RetryHeartbeatStaleTrialCallback`` (formerly ``RetryFailedTrialCallback``): a trial whose process died is
failed on the next run and re-enqueued with the same parameters. A trial that raises is recorded FAIL with
``fail_reason`` and the search goes on; ``SearchAborted`` (and Ctrl-C) stop it — an interrupted trial is
re-enqueued first, so ``resume=True`` runs it again.
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from ...errors import ConfigError, SearchAborted, TrialFailed
from ..result import TrialRecord
from ..selectors import Proposal
from . import Engine, EngineRun, Job

log = logging.getLogger(__name__)

STATE_KEY = "autosub"
JOURNAL_SUFFIXES = (".log", ".jsonl", ".journal")
MAX_DUPLICATES = 25  # consecutive repeats of finished configurations before the space counts as exhausted

try:  # Optuna >= 4.9 renamed it; the old name still works (deprecated)
    from optuna.storages import RetryHeartbeatStaleTrialCallback as _Retry
except ImportError:  # pragma: no cover
    from optuna.storages import RetryFailedTrialCallback as _Retry


def open_storage(spec: Any, run_dir: Path, *, heartbeat_interval: int = 60, grace_period: int | None = None,
                 max_retry: int = 3) -> tuple[BaseStorage, str]:
    """Open (and check) an Optuna storage; return it and a URL/path users can pass to optuna-dashboard."""
    if isinstance(spec, BaseStorage):
        return spec, getattr(spec, "url", type(spec).__name__)
    if spec is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = f"sqlite:///{(run_dir / 'study.db').resolve()}"
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
    if "://" not in text:
        raise ConfigError(f"The 'storage' parameter of search must be an Optuna URL such as 'sqlite:///study.db' "
                          f"or a journal file ending in {JOURNAL_SUFFIXES}; got {text!r} instead.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(text, heartbeat_interval=heartbeat_interval,
                                 grace_period=grace_period or 2 * heartbeat_interval,
                                 heartbeat_stale_trial_callback=_Retry(max_retry=max_retry))
    except ImportError as exc:
        raise ConfigError(f"The storage URL {text!r} needs a database driver that is not installed ({exc}).") from exc
    except Exception as exc:  # sqlalchemy errors: bad path, host down, auth
        raise SearchAborted(f"Cannot reach the Optuna storage {text!r}: {type(exc).__name__}: {exc}. Check the URL "
                            "(sqlite needs an existing, writable directory) or pass storage=None.") from exc
    return storage, text


def resolve_pruner(pruner: Any, *, epochs: int, enabled: bool) -> optuna.pruners.BasePruner:
    """``"auto"``: Hyperband over epochs (≥ 3), successive halving (2), none (1 epoch or not prunable)."""
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner if enabled else optuna.pruners.NopPruner()
    if pruner is None or pruner == "none" or not enabled or epochs < 2:
        return optuna.pruners.NopPruner()
    if pruner in ("auto", "hyperband") and epochs >= 3:
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)


def to_record(t: FrozenTrial, space: Any) -> TrialRecord:
    """An engine-agnostic TrialRecord from an Optuna FrozenTrial."""
    sel, hparams = None, {}
    if t.params and all(n in t.params for n in space.structure_names):
        cand = space.decode(t.params)
        sel, hparams = cand.selection, cand.hparams()
    if "selection" in t.user_attrs:
        sel = tuple(int(i) for i in t.user_attrs["selection"])
    seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start \
        else None
    return TrialRecord(number=t.number, state=t.state.name, values=list(t.values) if t.values else None,
                       params=dict(t.params), selection=sel, hparams=hparams, user_attrs=dict(t.user_attrs),
                       intermediate=dict(t.intermediate_values), seconds=t.user_attrs.get("seconds", seconds),
                       retry_of=t.system_attrs.get("failed_trial", t.user_attrs.get("retry_of")))


class OptunaEngine(Engine):
    """Runs a Job with ``study.optimize`` (heartbeat, callbacks, catch) in this process."""

    name = "optuna"

    def __init__(self, *, storage: Any, study_name: str, run_dir: Path, resume: bool,
                 directions: list[str], seed: int = 0) -> None:
        self.storage, self.storage_url = open_storage(storage, run_dir)
        self.study_name, self.directions, self.seed = study_name, directions, seed
        try:
            names = optuna.study.get_all_study_names(self.storage)
        except Exception as exc:
            raise SearchAborted(f"Cannot read studies from {self.storage_url!r}: {exc}") from exc
        self.exists = study_name in names
        if self.exists and not resume:
            raise ConfigError(f"A study named {study_name!r} already exists in {self.storage_url}; pass resume=True to "
                              "continue it, or another study_name / run_dir to start afresh.")
        if resume and not self.exists:
            raise ConfigError(f"resume=True but {self.storage_url} has no study named {study_name!r} (it has "
                              f"{names}); pass the study_name and storage/run_dir of the search to continue.")
        if self.exists:
            got = [d.name.lower() for d in optuna.load_study(study_name=study_name, storage=self.storage).directions]
            if got != directions:
                raise ConfigError(f"The study {study_name!r} optimizes {got}, but these objectives need {directions}; "
                                  "resume it with the objectives it was created with.")

    def load_state(self) -> dict[str, Any]:
        if not self.exists:
            return {}
        return dict(optuna.load_study(study_name=self.study_name, storage=self.storage).user_attrs.get(STATE_KEY, {}))

    # -- the run --------------------------------------------------------------------------------------------
    def run(self, job: Job) -> EngineRun:
        space, ctx, meter, budget = job.space, job.context, job.meter, job.budget
        multi = len(job.objectives) > 1
        sampler = job.selector.sampler(ctx)
        pruner = resolve_pruner(job.pruner, epochs=ctx.epochs, enabled=job.selector.prunable and not multi)
        study = optuna.create_study(storage=self.storage, sampler=sampler, pruner=pruner, study_name=self.study_name,
                                    directions=self.directions, load_if_exists=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(job.objectives))
        study.set_user_attr(STATE_KEY, {**study.user_attrs.get(STATE_KEY, {}), **job.state})
        records = lambda: [to_record(t, space) for t in study.get_trials(deepcopy=False)]  # noqa: E731
        first = job.selector.initial(ctx) if not self.exists else job.selector.propose(ctx, records())
        done = first is None
        for p in first or []:
            if p.state is not None:
                p.user_attrs.setdefault("cum_compute", meter.compute)
            _add(study, p, space)
        if job.callbacks and not self.exists:
            known = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
            with meter.pause():
                for t in known:  # results already known (the profile's runs) are trials too
                    for cb in job.callbacks:
                        cb(to_record(t, space), None)
        kept: dict[str, Any] = {"model": None, "number": None, "score": float("-inf"), "dups": 0}
        stop = {"reason": "selector finished" if done else ""}
        bar = tqdm(total=budget.trials, desc=f"search ({job.selector.name})", disable=not job.progress)

        def objective(trial: optuna.Trial) -> Any:
            cand = space.suggest(trial)
            sel = cand.selection
            by = trial.user_attrs.get("proposed_by") or getattr(sampler, "proposed_by", lambda n: None)(trial.number)
            info = {"selection": list(sel), "n_blocks": len(sel), "proposed_by": by or "sampler",
                    "trainable_params": space.trainable_params(sel), "added_cost": space.added_cost(sel)}
            for k, v in info.items():
                trial.set_user_attr(k, v)
            why = space.violation(sel)
            if why:
                trial.set_user_attr("fail_reason", f"infeasible: {why}")
                raise TrialFailed(f"trial {trial.number}: infeasible selection {sel}: {why}")
            dup = _duplicate(study, trial)
            if dup is not None:
                kept["dups"] += 1
                trial.set_user_attr("duplicate_of", dup.number)
                for k in ("curve", "trainable_params", "added_cost"):
                    if k in dup.user_attrs:
                        trial.set_user_attr(k, dup.user_attrs[k])
                return dup.values if multi else dup.values[0]
            kept["dups"] = 0
            report = None if multi or not job.selector.prunable else _reporter(trial, ctx.epochs)
            t0 = time.perf_counter()
            try:
                out = job.run_trial(cand, report)
            except optuna.TrialPruned:
                raise
            except KeyboardInterrupt:
                trial.set_user_attr("fail_reason", "interrupted")
                study.enqueue_trial(dict(trial.params), user_attrs={"proposed_by": by or "retry", "retry_of":
                                                                    trial.number})
                raise
            except SearchAborted:
                raise
            except Exception as exc:
                trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
                log.warning("trial %d (%s) failed: %s: %s", trial.number, sel, type(exc).__name__, exc)
                raise TrialFailed(f"trial {trial.number} failed: {exc}") from exc
            finally:
                seconds = time.perf_counter() - t0
                trial.set_user_attr("seconds", round(seconds, 4))
                trial.set_user_attr("compute", meter.to_compute(seconds))
                trial.set_user_attr("cum_compute", meter.compute)
            for k, v in out.attrs.items():
                trial.set_user_attr(k, v)
            if out.values[0] > kept["score"]:
                kept.update(model=out.model, number=trial.number, score=out.values[0])
            return out.values if multi else out.values[0]

        def after(study_: optuna.Study, frozen: FrozenTrial) -> None:
            meter.trials += 1
            bar.update(1)
            log.info("trial %d %s %s values=%s (%s)", frozen.number, frozen.user_attrs.get("selection"),
                     frozen.state.name, frozen.values, frozen.user_attrs.get("fail_reason") or
                     frozen.user_attrs.get("proposed_by"))
            if job.callbacks:
                with meter.pause():
                    rec = to_record(study_.get_trials(deepcopy=False)[frozen.number], space)
                    model = kept["model"] if kept["number"] == frozen.number else None
                    for cb in job.callbacks:
                        cb(rec, model)
            best = max((t.values[0] for t in study_.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
                       default=float("nan"))
            bar.set_postfix(best=f"{best:.4f}", compute=f"{meter.compute:.2f}")
            reason = meter.exhausted(budget)
            if reason is None and kept["dups"] >= MAX_DUPLICATES:
                reason = f"space exhausted ({MAX_DUPLICATES} repeated configurations in a row)"
            more = job.selector.propose(ctx, records())
            if more is None and not _waiting(study_):
                reason = reason or "selector finished"
            for p in more or []:
                _add(study_, p, space)
            if reason:
                stop["reason"] = reason
                study_.stop()

        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done and (meter.exhausted(budget) is None or not finished):  # always at least one trial
            left = None if budget.seconds is None else max(1e-3, budget.seconds - meter.seconds)
            with _quiet(), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(objective, n_trials=budget.trials, timeout=left, catch=(TrialFailed,),
                               callbacks=[after], gc_after_trial=False)
            if not stop["reason"]:
                stop["reason"] = meter.exhausted(budget) or "budget"
        elif not stop["reason"]:
            stop["reason"] = meter.exhausted(budget) or "nothing to run"
        bar.close()
        log.info("search stopped: %s", stop["reason"])
        return EngineRun(records=records(), stop_reason=stop["reason"], best_number=kept["number"],
                         best_model=kept["model"], study_name=self.study_name, storage=self.storage_url, study=study)


def _reporter(trial: optuna.Trial, epochs: int):
    """Per-epoch report to the pruner; never prunes after the last epoch (the work is already done)."""

    def report(epoch: int, score: float) -> None:
        trial.report(score, epoch + 1)
        if epoch + 1 < epochs and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} (val {score:.4f})")

    return report


def _add(study: optuna.Study, p: Proposal, space: Any) -> None:
    """Enqueue a proposal, or record it as a finished trial when its result is already known."""
    if p.state is None:
        study.enqueue_trial(p.params, user_attrs=p.user_attrs, skip_if_exists=True)
        return
    fixed = optuna.trial.FixedTrial(p.params)
    space.suggest(fixed)  # records the exact distributions the objective uses
    study.add_trial(optuna.trial.create_trial(
        params=fixed.params, distributions=fixed.distributions, values=p.values if p.state == "COMPLETE" else None,
        state=TrialState[p.state], user_attrs=p.user_attrs, intermediate_values=p.intermediate))


def _duplicate(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial | None:
    """A COMPLETE trial with exactly these params (its result is reused instead of training again)."""
    params = trial.params
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.params == params and t.number != trial.number:
            return t
    return None


def _waiting(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)))


@contextlib.contextmanager
def _quiet():
    """Silence Optuna's per-trial INFO lines: the progress bar and autosub's own log say the same."""
    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(old)
