"""The Optuna engine's fused loop: ask several trials, train them as one group epoch by epoch, tell each.

Used instead of ``study.optimize`` when the Job carries a :class:`~autosub.hpo.engines.base.GroupRunner`
(``TrainingConfig.fuse``). Only public Optuna calls: ``study.ask()``, ``Trial.report`` / ``should_prune`` (inside
each member's reporter, the same one an unfused trial gets), ``Trial.set_user_attr`` and ``study.tell``. Each trial
is labelled, admitted, screened (infeasible / duplicate), recorded and counted exactly as in the unfused objective
(the same functions of :mod:`autosub.hpo.engines.optuna`), so a fused search writes the same study.

How many trials train together (K):

* never more than the trial budget has left: before each ask, the trials finished *and running* (this group's
  members are RUNNING in the study) are held against ``Budget.trials``; a time/compute budget admits a trial only
  while one more epoch fits, and stops members at their last epoch that fits (as unfused);
* never more than ``GroupRunner.max_trials``, nor than the group's memory limit holds: a trial the group refuses
  waits (RUNNING, no further trial is asked) until a member leaves and it fits; one that does not fit even alone
  trains alone, unfused;
* a selector that does not sample (``samples=False``: greedy, profile-top-k) is asked only for the trials it queued
  — a greedy step's candidates, which do not depend on each other's results — never for sampler fill-ins.

A member that the pruner stops (``should_prune`` in its reporter raises ``TrialPruned``) leaves the group, which
goes on; one that diverges or raises is recorded FAIL with ``fail_reason`` (as unfused); an exception of the group
itself fails its members and the search goes on. Ctrl-C and ``SearchAborted`` stop the search: the members are
recorded FAIL first (interrupted ones are re-enqueued). Between epochs new trials join as members leave. Every
trial trained in a group records ``fused=True`` and ``fused_k`` (the most trials that trained in one epoch with
it, itself included); one that trained alone records ``fused=False`` and ``unfused_reason``.

Trials asked together are sampled before the others' results are told (as with Optuna's ``n_jobs``): TPE then
sees up to K−1 fewer observations per proposal.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from ...errors import SearchAborted, TrialFailed
from ...training.fused import FusionError
from ..budget import BudgetStop
from ._study import StudyBook
from .base import Job, MemberOutcome, TrialGroup
from .optuna import budget_stopped, completed, failed, interrupted, reporter, settle

__all__ = ["run_fused"]

log = logging.getLogger(__name__)


@dataclass
class _Member:
    """A trial asked for a group: its ``optuna.Trial`` (attributes are written through it) and candidate."""

    trial: optuna.Trial
    cand: Any
    peak: int = 0  # the most trials that trained in one epoch with it, itself included


def run_fused(book: StudyBook, job: Job, kept: dict[str, Any], stop: dict[str, str],
              told: Callable[[int], str | None], *, alone: Callable[[optuna.Trial, Any], Any]) -> None:
    """Run the search's trials in fused groups until the budget or the selector stops it (module docs).

    Args:
        book: The study bookkeeping.
        job: The Job; ``job.fused`` is the group runner.
        kept: The engine's best model so far (``model``, ``number``, ``score``, ``budget_stop``).
        stop: ``{"reason": …}``, set by ``told`` when the search must stop.
        told: The engine's after-trial step (counts the trial, runs the hooks, returns a stop reason).
        alone: Trains one trial unfused (the engine's own path), returning its value(s) or raising.
    """
    runner = job.fused
    assert runner is not None
    group: TrialGroup = runner.open()
    study, meter, budget = book.study, job.meter, job.budget
    multi = len(job.objectives) > 1
    members: dict[int, _Member] = {}  # trial number → member, while it is in the group
    queue: list[_Member] = []  # asked, refused by the memory limit: they join when members leave
    cap = max(1, int(runner.max_trials))

    def may_ask() -> bool:
        if stop["reason"]:
            return False
        busy = bool(group.active or queue)
        if meter.exhausted(budget) and (busy or book.has(TrialState.COMPLETE)):
            return False  # (a time budget spent during set-up still runs one trial, as unfused)
        if budget.trials is not None and book.spent_trials(running=True) >= budget.trials:
            return False  # never ask beyond the trial budget: running members count
        if not job.selector.samples and busy and not book.has(TrialState.WAITING):
            return False  # an adaptive selector: only what it queued, never sampler fill-ins
        if not meter.epoch_fits(budget) and book.has(TrialState.COMPLETE):
            return False  # its first epoch would end past the limit (the unfused admission says the same)
        return True

    def join(m: _Member) -> bool | str:
        """True: ``m`` joined; False: it does not fit now; a str: why it must train alone."""
        try:
            return group.add(m.trial.number, m.cand, reporter(m.trial, job, book))
        except FusionError as exc:
            return f"the model cannot be trained fused: {exc}"
        except Exception as exc:  # the group refused it: training it alone records the same error as unfused
            return f"the fused group refused it: {type(exc).__name__}: {exc}"

    def train_alone(m: _Member, why: str) -> None:
        m.trial.set_user_attr("fused", False)
        m.trial.set_user_attr("unfused_reason", why)
        _tell(book, m.trial, lambda: alone(m.trial, m.cand))
        told(m.trial.number)

    def place(m: _Member) -> bool:
        """Put ``m`` in the group, in the queue (the group is full), or train it alone; False if it queued."""
        why = runner.fusable(m.cand)
        got = join(m) if not why else why
        if got is True:
            members[m.trial.number] = m
            return True
        if got is False and group.active:  # the memory limit holds what is in the group now: wait for room
            log.info("fused search: the group's memory limit holds %d trials; trial %d waits for one to leave",
                     len(group.active), m.trial.number)
            queue.append(m)
            return False
        train_alone(m, got if isinstance(got, str) else "it does not fit the group's memory limit alone")
        return True

    def fill() -> None:
        while queue and len(group.active) < cap:
            if not place(queue.pop(0)):
                return
        while len(group.active) + len(queue) < cap and may_ask():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with Study.optimize"
                trial = study.ask()
            cand = job.space.suggest(trial)
            book.label(trial, cand)
            try:
                settled = settle(book, trial, cand, job, kept)
            except TrialFailed:
                study.tell(trial, state=TrialState.FAIL)
                told(trial.number)
                continue
            if settled is not None:
                study.tell(trial, settled)
                told(trial.number)
                continue
            if not place(_Member(trial, cand)):
                return

    def finish(m: _Member, o: MemberOutcome) -> None:
        trial = m.trial
        book.timing(trial, o.seconds, meter)  # its share of the group's wall time
        trial.set_user_attr("fused", True)
        trial.set_user_attr("fused_k", m.peak)
        if o.status == "complete":
            study.tell(trial, completed(trial, o.outcome, kept, multi=multi))
        elif o.status == "pruned":
            if isinstance(o.error, BudgetStop):
                budget_stopped(trial, o.error, kept)
            study.tell(trial, state=TrialState.PRUNED)
        else:
            failed(trial, m.cand, o.error if o.error is not None else RuntimeError("unknown"))
            study.tell(trial, state=TrialState.FAIL)
        told(trial.number)
        if isinstance(o.error, SearchAborted):
            raise o.error

    try:
        while True:
            fill()
            if not group.active:
                break
            for number in group.active:
                members[number].peak = max(members[number].peak, len(group.active))
            try:
                group.run_epoch()
                ended = group.pop_finished()
            except Exception as exc:  # the group itself raised: its trials fail with the reason, the search goes on
                log.warning("fused group of %d trials raised %s: %s", len(group.active), type(exc).__name__, exc)
                ended = group.pop_finished() + group.fail_all(exc)
            for o in ended:
                finish(members.pop(o.key), o)
    except BaseException as exc:  # Ctrl-C or SearchAborted: the held trials end FAIL before the search stops
        for m in [*members.values(), *queue]:
            if isinstance(exc, KeyboardInterrupt):
                interrupted(book, m.trial)
            else:
                m.trial.set_user_attr("fail_reason", f"the search stopped: {type(exc).__name__}: {exc}")
            study.tell(m.trial, state=TrialState.FAIL, skip_if_finished=True)
        raise


def _tell(book: StudyBook, trial: optuna.Trial, train: Callable[[], Any]) -> None:
    """Train one trial with ``train`` and tell the study how it ended, as ``study.optimize`` would."""
    try:
        value = train()
    except optuna.TrialPruned:
        book.study.tell(trial, state=TrialState.PRUNED)
    except TrialFailed:
        book.study.tell(trial, state=TrialState.FAIL)
    except BaseException:
        book.study.tell(trial, state=TrialState.FAIL)
        raise
    else:
        book.study.tell(trial, value)
