"""The in-process Optuna engine: one study in any Optuna storage, ``study.optimize`` under autosub's budget.

Storage: see :func:`~autosub.hpo.engines._study.open_storage` (a journal file in the run directory by default,
any Optuna URL, a storage object). RDB storages get a heartbeat and ``RetryHeartbeatStaleTrialCallback``: a trial whose
process died is failed on the next run and re-enqueued with the same parameters. A trial that raises is
recorded FAIL with ``fail_reason`` and the search goes on; ``SearchAborted`` (and Ctrl-C) stop it — an
interrupted trial is re-enqueued first, so ``resume=True`` runs it again. The study bookkeeping is the shared
:class:`~autosub.hpo.engines._study.StudyBook`; this module only drives ``study.optimize``. With fused trials
(``Job.fused``, ``TrainingConfig(fuse=…)``) :mod:`~autosub.hpo.engines.optuna_fused` drives ask/tell instead, with
the same per-trial steps (``settle``, ``reporter``, ``completed``, ``failed``, ``budget_stopped``, ``interrupted``).
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from typing import Any, Iterator

import optuna
from optuna.trial import FrozenTrial
from tqdm.auto import tqdm

from ...errors import SearchAborted, TrialFailed
from ..budget import BudgetStop
from ._study import CLOCK_EVERY, Hooks, StudyBook, open_storage
from .base import Engine, EngineRun, Job, TrialOutcome

__all__ = ["OptunaEngine", "open_storage", "resolve_pruner"]

log = logging.getLogger(__name__)


def resolve_pruner(pruner: Any, *, epochs: int, enabled: bool) -> optuna.pruners.BasePruner:
    """An Optuna pruner object as it is; ``"auto"``: Hyperband over epochs (≥ 3), successive halving (2), none
    (1 epoch, or a selector that is not prunable / a multi-objective search: ``enabled`` False)."""
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner if enabled else optuna.pruners.NopPruner()
    if pruner is None or pruner == "none" or not enabled or epochs < 2:
        return optuna.pruners.NopPruner()
    if pruner in ("auto", "hyperband") and epochs >= 3:
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)


class OptunaEngine(Engine):
    """Runs a Job with ``study.optimize`` (heartbeat, callbacks, catch) in this process."""

    name = "optuna"

    def run(self, job: Job) -> EngineRun:
        ctx, meter, budget = job.context, job.meter, job.budget
        multi = len(job.objectives) > 1
        sampler = job.selector.sampler(ctx)
        pruner = resolve_pruner(job.pruner, epochs=ctx.epochs, enabled=job.selector.prunable and not multi)
        book = self.store.open(job, sampler=sampler, pruner=pruner)
        if self.exists:  # a resumed study: the dead driver's RUNNING trials fail and run again first
            book.fail_stale(single_driver=not self.store.join)
            book.requeue_unrun()
        meter.trials = book.spent_trials()  # the budget is the study's total
        book.sync_clock(meter)  # … and so is its time: the clocks of the study's other workers and earlier calls
        bar = tqdm(total=budget.trials, desc=f"search ({job.selector.name})", disable=not job.progress)
        hooks = Hooks(meter, bar, list(job.callbacks))
        stop = {"reason": book.begin(resumed=self.exists, hooks=hooks)}
        kept: dict[str, Any] = {"model": None, "number": None, "score": float("-inf"), "budget_stop": ""}
        objective = _objective(book, job, kept)

        def told(number: int) -> str | None:
            """After trial ``number`` was told: count it, run the hooks, and say why the search stops (or None)."""
            model = kept["model"] if kept["number"] == number else None
            reason = book.after(number, hooks, model=model)  # always: it counts the trial
            reason = kept["budget_stop"] or meter.exhausted(budget) or reason or _no_epoch_fits(meter, budget)
            if reason:
                stop["reason"] = reason
            return reason

        def after(study: optuna.Study, frozen: FrozenTrial) -> None:
            if told(frozen.number):
                study.stop()

        finished = book.trials(optuna.trial.TrialState.COMPLETE)
        if not stop["reason"] and (meter.exhausted(budget) is None or not finished):  # always at least one trial
            with _quiet(), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if job.fused is not None:
                    from .optuna_fused import run_fused

                    run_fused(book, job, kept, stop, told, alone=_alone(book, job, kept))
                else:
                    book.study.optimize(objective, n_trials=None, timeout=_deadline(meter, budget),
                                        catch=(TrialFailed,), callbacks=[after], gc_after_trial=False)
            stop["reason"] = stop["reason"] or meter.exhausted(budget) or "budget"
        elif not stop["reason"]:
            stop["reason"] = meter.exhausted(budget) or "nothing to run"
        bar.close()
        if not self.store.join or meter.exhausted(budget):  # (a joined worker leaves the shared queue to others)
            book.settle_waiting(f"the search stopped ({stop['reason']})")  # nothing is left WAITING
        book.sync_clock(meter, done=True)
        log.info("search stopped: %s", stop["reason"])
        return EngineRun(records=book.records(), stop_reason=stop["reason"], best_number=kept["number"],
                         best_model=kept["model"], study_name=self.store.study_name, storage=self.store.url,
                         study=book.study)


def _objective(book: StudyBook, job: Job, kept: dict[str, Any]):
    """The objective ``study.optimize`` calls: label, settle infeasible/duplicate proposals, train, record."""
    space = job.space
    alone = _alone(book, job, kept)

    def objective(trial: optuna.Trial) -> Any:
        cand = space.suggest(trial)
        book.label(trial, cand)
        settled = settle(book, trial, cand, job, kept)
        return settled if settled is not None else alone(trial, cand)

    return objective


def settle(book: StudyBook, trial: optuna.Trial, cand: Any, job: Job, kept: dict[str, Any]) -> Any:
    """A labelled trial that must not train: not admitted by the budget or infeasible (raise
    :class:`TrialFailed`), or a duplicate (its twin's values); None when it should train."""
    unrun = _admission(book, trial, job)
    if unrun:
        trial.set_user_attr("unrun", True)
        trial.set_user_attr("fail_reason", f"not run: {unrun}")
        kept["budget_stop"] = kept["budget_stop"] or unrun
        raise TrialFailed(f"trial {trial.number} not run: {unrun}")
    verdict = book.screen(trial, cand)
    if verdict is None:
        return None
    if verdict.values is None:
        raise TrialFailed(f"trial {trial.number}: {verdict.reason}")
    return verdict.values if len(job.objectives) > 1 else verdict.values[0]


def reporter(trial: optuna.Trial, job: Job, book: StudyBook):
    """The per-epoch hook of ``trial`` (:func:`_reporter` with the job's pruning settings)."""
    multi = len(job.objectives) > 1
    return _reporter(trial, job, book, prunable=job.selector.prunable and not multi, multi=multi)


def _alone(book: StudyBook, job: Job, kept: dict[str, Any]):
    """``alone(trial, cand)``: train one labelled, admitted trial through ``job.run_trial`` and record it; returns
    its value(s) for ``tell``, or raises ``TrialPruned`` / :class:`TrialFailed` (its reason recorded)."""
    meter = job.meter
    multi = len(job.objectives) > 1

    def alone(trial: optuna.Trial, cand: Any) -> Any:
        report = reporter(trial, job, book)
        t0 = time.perf_counter()
        try:
            out = job.run_trial(cand, report)
        except BudgetStop as exc:
            budget_stopped(trial, exc, kept)
            raise optuna.TrialPruned(str(exc)) from None
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            interrupted(book, trial)
            raise
        except SearchAborted:
            raise
        except Exception as exc:
            failed(trial, cand, exc)
            raise TrialFailed(f"trial {trial.number} failed: {exc}") from exc
        finally:
            book.timing(trial, time.perf_counter() - t0, meter)
        return completed(trial, out, kept, multi=multi)

    return alone


def completed(trial: optuna.Trial, out: TrialOutcome, kept: dict[str, Any], *, multi: bool) -> Any:
    """Record a finished trial's attributes, keep its model if it is the best so far; its value(s) for ``tell``."""
    for k, v in out.attrs.items():
        trial.set_user_attr(k, v)
    if out.values[0] > kept["score"]:
        kept.update(model=out.model, number=trial.number, score=out.values[0])
    return out.values if multi else out.values[0]


def failed(trial: optuna.Trial, cand: Any, exc: BaseException) -> None:
    """Record why a trial failed (``fail_reason``: the exception's type and message) and log it."""
    trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
    log.warning("trial %d (%s) failed: %s: %s", trial.number, cand.selection, type(exc).__name__, exc)


def budget_stopped(trial: optuna.Trial, exc: BaseException, kept: dict[str, Any]) -> None:
    """A trial stopped at its last epoch that fits the time/compute budget: say so; the search then stops."""
    trial.set_user_attr("stopped_by", str(exc))
    kept["budget_stop"] = kept["budget_stop"] or str(exc)


def interrupted(book: StudyBook, trial: optuna.Trial) -> None:
    """Ctrl-C mid-trial: record it and enqueue the same parameters again, so ``resume=True`` runs it."""
    trial.set_user_attr("fail_reason", "interrupted")
    book.retry(trial.params, trial.number, "interrupted", proposed_by=trial.user_attrs["proposed_by"])


def _deadline(meter: Any, budget: Any) -> float | None:
    """``optimize``'s timeout, a backstop: the wall seconds left (a compute limit is checked after every trial
    and epoch, as the other workers' share of it changes)."""
    return max(1e-3, budget.seconds - meter.seconds) if budget.seconds is not None else None


def _no_epoch_fits(meter: Any, budget: Any) -> str | None:
    """A stop reason when not even one more epoch ends within the time/compute limit (no trial is started)."""
    if meter.epoch_fits(budget):
        return None
    return (f"budget: no epoch fits in the {meter.seconds_left(budget):.2f} s left (an epoch takes "
            f"~{meter.epoch_estimate:.2f} s)")


def _admission(book: StudyBook, trial: optuna.Trial, job: Job) -> str:
    """Why trial ``trial`` must not start (empty: it may): the budget's trials are taken (by other workers of a
    joined study, counting their running trials), or its first epoch would end past the time/compute limit."""
    budget, meter = job.budget, job.meter
    if budget.trials is not None:
        taken = book.spent_trials(running=True, below=trial.number)
        if taken >= budget.trials:
            return f"trials ({taken}/{budget.trials}: the budget is taken by finished and running trials)"
    if budget.seconds is not None or budget.compute is not None:
        book.sync_clock(meter, every=CLOCK_EVERY)  # the study's clock: other workers may have spent what it would
    if not meter.epoch_fits(budget) and book.has(optuna.trial.TrialState.COMPLETE):
        return (f"budget stop: its first epoch (~{meter.epoch_estimate:.2f} s) would end past the limit "
                f"({meter.seconds_left(budget):.2f} s left)")
    return ""


def _reporter(trial: optuna.Trial, job: Job, book: StudyBook, *, prunable: bool, multi: bool):
    """After each epoch: report to the pruner (never prunes after the last epoch: the work is done), and stop the
    trial at this epoch (:class:`~autosub.hpo.budget.BudgetStop`) when the next one would end past the budget."""
    epochs, meter, budget = job.context.epochs, job.meter, job.budget
    last = [time.perf_counter()]

    def report(epoch: int, score: float) -> None:
        now = time.perf_counter()
        meter.add_epoch(now - last[0])
        last[0] = now
        if budget.seconds is not None or budget.compute is not None:
            book.sync_clock(meter, every=CLOCK_EVERY)  # the study's clock (every worker's), every few seconds
        if not multi:
            trial.report(score, epoch + 1)
        if epoch + 1 < epochs and prunable and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} (val {score:.4f})")
        if epoch + 1 < epochs and not meter.epoch_fits(budget):
            raise BudgetStop(f"budget stop after epoch {epoch + 1} (val {score:.4f}): the next epoch "
                             f"(~{meter.epoch_estimate:.2f} s) would end past the limit "
                             f"({meter.seconds_left(budget):.2f} s left)")

    return report


class _NoTrialFailedTraces(logging.Filter):
    """Keeps Optuna's one-line "Trial N failed … because of TrialFailed(reason)" warning but drops its traceback:
    a TrialFailed is autosub's own verdict (a budget "not run", an infeasible selection, a diverged run) whose
    reason is the message and is recorded on the trial; the trace of where it was raised says nothing more."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        if isinstance(exc, TrialFailed) and exc.__cause__ is None:
            record.exc_info, record.exc_text = None, None
        return True


OPTIMIZE_LOGGER = "optuna.study._optimize"  # the logger Optuna's study.optimize reports failed trials on


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Optuna's per-trial INFO lines (the progress bar and autosub's own log say the same) and the
    tracebacks of autosub's own TrialFailed verdicts."""
    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    quiet = _NoTrialFailedTraces()
    logging.getLogger(OPTIMIZE_LOGGER).addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger(OPTIMIZE_LOGGER).removeFilter(quiet)
        optuna.logging.set_verbosity(old)

