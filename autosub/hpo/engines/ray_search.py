"""The two halves of a Ray trial: :class:`SelectorSearcher` (the Tune loop) and :func:`train_trial` (a worker).

The searcher turns autosub's selector into a Tune ``Searcher``: it asks the Optuna study (through the shared
:class:`~autosub.hpo.engines._study.StudyBook`, with the selector's sampler) for the next configuration and tells
it every result, so the study — not Tune's snapshot — is the record. It keeps the ``optuna.Trial`` objects it
asked for, by trial number, while their Tune trials run (trial attributes are written through them); its own
state (Tune trial id → study trial number, duplicates, stop reason, lost trials Tune continues) is saved as
JSON for ``Tuner.restore``. After a restore the trials the study still holds RUNNING for this experiment lost
their ``Trial`` with the dead driver. Those Tune's snapshot knows are continued by Tune: they stay RUNNING
until their run ends, then are failed by number (reason at study level, see ``_study``) and the run is recorded
as a new finished trial (``retry_of``, ``continues``); the others are failed at once and re-enqueued. Those Tune
knew but never ran again are failed when the restored experiment ends (:func:`settle_not_rerun`) and retried by
the engine in a follow-up experiment.

The worker side trains through the Job's ``run_trial``, reports each epoch to the scheduler with a checkpoint
of the run's :class:`~autosub.training.checkpoint.FitState` (tuned tensors + optimizer, not the trunk) and
resumes from it when retried.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.search import Searcher

from ...errors import SearchAborted
from ...training.checkpoint import TENSORS as TUNED, FitState, selection_metadata
from ..budget import Budget, Meter
from ..result import TrialRecord
from ..space import Candidate
from ._study import MAX_DUPLICATES, Hooks, StudyBook

__all__ = ["SelectorSearcher", "candidate_of", "driver_hooks", "dirname", "fetch_payload", "load_tuned",
           "json_default", "settle_not_rerun", "started", "train_trial", "where_am_i"]

log = logging.getLogger(__name__)

RECORD = "trial.json"
MEMBERS = "members"  # a fused group's checkpoint: members/<study trial number>/tuned.safetensors
WHERE = ("node_id", "node_ip", "pid", "gpu_ids", "threads", "seconds", "started_at")
LOST = "lost: the driver stopped before Ray Tune recorded this trial; re-enqueued"
UNLABELLED = "lost: the driver stopped while it asked for this trial, before Ray Tune got it; re-enqueued"
CONTINUED = "lost: the driver stopped mid-trial; Ray Tune continued its run, recorded as a new trial (retry_of)"
NOT_RERUN = ("lost: the driver stopped mid-trial and Ray Tune's restore did not run it again; re-enqueued and run in "
             "a follow-up experiment")
_DRIVER_HOOKS: dict[str, Hooks] = {}  # this process's hooks by searcher key; never pickled


@contextlib.contextmanager
def driver_hooks(key: str, hooks: Hooks) -> Iterator[None]:
    """Make the driver's meter, bar and callbacks reachable to every searcher copy with ``key`` in this process
    (Tune restores its searcher from a pickle); a copy elsewhere (Ray Client's head) finds none."""
    _DRIVER_HOOKS[key] = hooks
    try:
        yield
    finally:
        _DRIVER_HOOKS.pop(key, None)


class SelectorSearcher(Searcher):
    """A Tune Searcher that asks autosub's selector, through its Optuna study and sampler, what to run next.

    Args:
        key: Finds the driver's :class:`~autosub.hpo.engines._study.Hooks` (see :func:`driver_hooks`).
        book: The study bookkeeping (shared with the driver in process; a copy on Ray Client's head).
        budget: The search's budget, checked with :meth:`~autosub.hpo.budget.Meter.exhausted` before each trial.
        meter: The driver's meter; a copy away from the driver counts on the wall clock (a deadline).
        experiment: The Tune experiment's name, recorded on every trial it starts.
        single_driver: No other driver shares the study (not ``resume="join"``): after a restore, a RUNNING
            trial that no experiment claims was asked by the dead driver.
        fuse_trials: 0: a Tune trial trains one study trial; K ≥ 1: a Tune trial hosts a fused group of up to K
            study trials (:mod:`autosub.hpo.engines.ray_fused`; fewer when the budget or the selector's queue,
            spread over ``slots``, has fewer).
        slots: How many Tune trials run at once (groups are sized so that each slot gets work).
    """

    def __init__(self, *, key: str, book: StudyBook, budget: Budget, meter: Meter, experiment: str,
                 single_driver: bool = True, fuse_trials: int = 0, slots: int = 1) -> None:
        super().__init__(metric="score", mode="max")
        self.key, self.book, self.budget, self.meter, self.experiment = key, book, budget, meter, experiment
        self.single_driver = single_driver
        self.fuse_trials, self.slots = int(fuse_trials), max(1, int(slots))
        self.samples = book.selector.samples
        self.numbers: dict[str, list[int]] = {}  # Tune trial id → its study trials' numbers (a group: several)
        self.continued: dict[int, dict[int, float]] = {}  # lost trials Tune continues → their intermediate values
        self.stop_reason = ""
        self._held: dict[int, optuna.Trial] = {}  # the Trials this process asked for, while they run
        self._restored = self._reconciled = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_held": {}}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    # -- what to run next ----------------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next Tune trial's config: one study trial, or (fused) a group of them under ``"members"``."""
        self._reconcile()
        book = self.book
        cap = self._group_cap()
        members: list[dict[str, Any]] = []
        dups = 0
        while len(members) < cap and dups <= MAX_DUPLICATES:
            reason = self.stop_reason or self._exhausted()
            if reason:
                if members:
                    break
                self.stop_reason = reason
                return Searcher.FINISHED
            if not self.samples and not book.has(TrialState.WAITING):
                if members:
                    break
                if book.has(TrialState.RUNNING):
                    return None  # an adaptive selector waits for its running trials
                self.stop_reason = "selector finished"
                return Searcher.FINISHED
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with Study.optimize"
                trial = book.study.ask()
            cand = book.space.suggest(trial)
            book.label(trial, cand, ray_experiment=self.experiment)
            verdict = book.screen(trial, cand)
            if verdict is None:
                self._held[trial.number] = trial
                trial.set_user_attr("tune_trial", trial_id)
                members.append({"number": trial.number, "selection": list(cand.selection), "lr": cand.lr,
                                "weight_decay": cand.weight_decay,
                                "lr_multipliers": sorted(cand.lr_multipliers.items())})
                continue
            dups += 1
            if verdict.values is None:
                book.study.tell(trial, state=TrialState.FAIL)
            else:
                book.study.tell(trial, verdict.values)
            self.stop_reason = self.stop_reason or book.after(trial.number, self._hooks()) or ""
        if not members:
            return None
        self.numbers[trial_id] = [m["number"] for m in members]
        if not self.fuse_trials:
            return members[0]
        return {"number": members[0]["number"], "members": members}

    def _group_cap(self) -> int:
        """How many study trials the next Tune trial hosts: 1 unfused; fused, at most ``fuse_trials`` and no more
        than the trial budget (or an adaptive selector's queue) has left per slot, so every slot gets work."""
        if not self.fuse_trials:
            return 1
        if not self.samples:
            left: int | None = len(self.book.trials(TrialState.WAITING))
        elif self.budget.trials is not None:
            left = self.budget.trials - self.book.spent_trials(running=True)
        else:
            left = None
        return self.fuse_trials if left is None else max(1, min(self.fuse_trials, math.ceil(left / self.slots)))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._reconcile()
        numbers = self.numbers.get(trial_id)
        if not numbers or result.get("final") or "epoch" not in result:
            return
        for number, outcome in _members(result, "ended").items():  # members that left a group mid-way
            if number in numbers:
                numbers.remove(number)
                self._end(number, outcome, result)
        if self.book.multi:
            return  # Optuna records intermediate values for one objective only
        epoch = int(result["epoch"])
        scores = _members(result, "scores") if "scores" in result else {numbers[0]: float(result["score"])}
        for number, score in scores.items():
            if number not in numbers:
                continue
            if number in self._held:
                self._held[number].report(float(score), epoch)
            elif number in self.continued:
                self.continued[number][epoch] = float(score)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._reconcile()
        result = result or {}
        numbers = self.numbers.pop(trial_id, None)
        if numbers is None:
            numbers = [int(result["number"])] if result.get("number") is not None else []
        ended = _members(result, "final_members") if result.get("final") and "final_members" in result else None
        for number in numbers:
            if ended is not None:  # a fused group ran to its end: each member as it ended
                self._end(number, ended.get(number, {"fail_reason": "the fused group did not train it"}), result)
                continue
            if error or (result.get("final") and result.get("fail_reason")):
                outcome = {"fail_reason": result.get("fail_reason") or ("the trial's Ray worker failed "
                                                                        "(max_failures retries used up)"),
                           "abort": bool(result.get("abort")), "seconds": result.get("seconds")}
            elif result.get("final"):
                outcome = {"values": result["values"], "attrs": json.loads(result.get("attrs", "{}")),
                           "seconds": result.get("seconds")}
            else:  # stopped by the scheduler (ASHA) after an intermediate epoch
                scores = _members(result, "scores") if "scores" in result else {number: result.get("score")}
                outcome = {"pruned": True, "score": scores.get(number)}
            self._end(number, outcome, result)

    def _end(self, number: int, outcome: dict[str, Any], result: dict[str, Any]) -> None:
        """Tell the study how study trial ``number`` ended: ``outcome`` holds ``values`` + ``attrs`` (complete),
        ``fail_reason`` (failed) or ``pruned`` + the last ``score``; ``result`` the Tune result it came with (where
        it ran)."""
        meter = self._meter()
        attrs: dict[str, Any] = {k: result[k] for k in WHERE if k in result}
        seconds = outcome.get("seconds", result.get("seconds"))
        if seconds is not None:
            attrs["seconds"] = float(seconds)
            if meter.epoch_seconds:
                attrs["compute"] = meter.to_compute(float(seconds))
        if not math.isnan(meter.compute):
            attrs["cum_compute"] = meter.compute
        values, intermediate = None, {}
        if outcome.get("fail_reason"):
            state = TrialState.FAIL
            attrs.update(outcome.get("attrs") or {})
            attrs["fail_reason"] = outcome["fail_reason"]
            log.warning("trial %d failed: %s", number, attrs["fail_reason"])
            if outcome.get("abort"):
                self.stop_reason = f"aborted: {attrs['fail_reason']}"
        elif outcome.get("pruned"):
            state = TrialState.PRUNED
            if outcome.get("score") is not None and "epoch" in result and not self.book.multi:
                intermediate = {int(result["epoch"]): float(outcome["score"])}
        else:
            state = TrialState.COMPLETE
            attrs.update(outcome.get("attrs") or {})
            values = [float(v) for v in outcome["values"]]
        recorded = self._record(number, state, values, attrs, intermediate)
        if recorded is not None:
            self.stop_reason = self.stop_reason or self.book.after(recorded, self._hooks()) or ""

    def _record(self, number: int, state: TrialState, values: list[float] | None, attrs: dict[str, Any],
                intermediate: dict[int, float]) -> int | None:
        """Tell the study how trial ``number`` ended; return the number it is recorded under (None: already was)."""
        trial = self._held.pop(number, None)
        if trial is not None:
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            seen = self.book.frozen(number).intermediate_values if intermediate else {}
            for step, score in intermediate.items():
                if step not in seen:  # on_trial_result reported it already
                    trial.report(score, step)
            if state == TrialState.COMPLETE:
                self.book.study.tell(trial, values if self.book.multi else values[0])
            else:
                self.book.study.tell(trial, state=state)
            return number
        if number in self.continued:
            steps = {**self.continued.pop(number), **intermediate}
            self.book.continuing.discard(number)
            self.book.fail_lost(number, CONTINUED)
            return self.book.add_continuation(number, state=state, values=values, user_attrs=attrs,
                                              intermediate=steps)
        return None  # finished before a restore replayed it: nothing is recorded twice

    # -- state for Tuner.restore ---------------------------------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        state = {"numbers": self.numbers, "dups": self.book.dups, "stop_reason": self.stop_reason,
                 "continued": {str(n): {str(e): s for e, s in steps.items()} for n, steps in self.continued.items()}}
        Path(checkpoint_path).write_text(json.dumps(state, sort_keys=True))

    def restore(self, checkpoint_path: str) -> None:
        try:
            state = json.loads(Path(checkpoint_path).read_text())
            self.numbers = {str(k): [int(n) for n in (v if isinstance(v, list) else [v])]  # 0.2: one int per trial
                            for k, v in state["numbers"].items()}
            self.book.dups, self.stop_reason = int(state["dups"]), str(state["stop_reason"])
            self.continued = {int(n): {int(e): float(s) for e, s in steps.items()}
                              for n, steps in state.get("continued", {}).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SearchAborted(f"Cannot restore the Ray searcher from {checkpoint_path}: {type(exc).__name__}: "
                                f"{exc}. It is not the JSON this autosub writes; start a new search (another "
                                "run_dir) instead of resume=True.") from exc
        self.book.continuing.update(self.continued)  # continued before an earlier restore: still not stale
        self._restored, self._reconciled = True, False

    def _reconcile(self) -> None:
        """After a restore: this experiment's RUNNING trials lost their Trial with the driver. Tune continues the
        ones its snapshot knows (they stay RUNNING until their run ends, then are failed and their run recorded as
        a new trial); the others are failed now and re-enqueued. So are the trials the driver died asking for
        (RUNNING, no experiment recorded yet: its label was cut off): Tune never got them."""
        if not self._restored or self._reconciled:
            return
        self._reconciled = True
        known = {n for ns in self.numbers.values() for n in ns}  # the trials Tune's snapshot knows (and runs again)
        for t in self.book.trials(TrialState.RUNNING):
            if t.number in self._held:
                continue
            if "ray_experiment" not in t.user_attrs:
                if self.single_driver or self.book.is_stale(t):
                    self.book.fail_and_retry(t, UNLABELLED)
                continue
            if t.user_attrs["ray_experiment"] != self.experiment:
                continue
            if t.number in known:
                self.continued.setdefault(t.number, {})
                self.book.continuing.add(t.number)  # not stale: the after-trial step must not retry it too
                log.info("trial %d was running when the driver stopped; Ray Tune continues it", t.number)
            else:
                self.book.fail_lost(t.number, LOST)
                self.book.retry(t.params, t.number, LOST)
                log.info("trial %d was lost with the driver; re-enqueued", t.number)

    # -- helpers -------------------------------------------------------------------------------------------
    def _hooks(self) -> Hooks | None:
        return _DRIVER_HOOKS.get(self.key)

    def _meter(self) -> Meter:
        """The driver's live meter in its process; elsewhere this searcher's copy (a wall-clock deadline)."""
        hooks = self._hooks()
        return hooks.meter if hooks is not None else self.meter

    def _exhausted(self) -> str | None:
        """Why no new trial may start: the budget (the study's total), trials counted as finished or running."""
        n = self.book.spent_trials(running=True)
        hooks = self._hooks()
        if hooks is not None and (self.budget.seconds is not None or self.budget.compute is not None):
            self.book.sync_clock(hooks.meter)  # the study's clock as of now (other workers' time and work)
        return self._meter().exhausted(self.budget, trials=n)


# ------------------------------------------------------------------------------------------- in the worker
_PAYLOAD: dict[str, Any] = {}  # in a worker process: the search's (run_trial, groups), unpickled once per search


def fetch_payload(payload: list) -> Any:
    """The search's payload (``payload``: [its ObjectRef]), fetched once per worker process and search: a reused
    worker keeps the model, the data and the cache it fetched."""
    import ray

    ref = payload[0]
    if ref.hex() not in _PAYLOAD:
        _PAYLOAD.clear()
        _PAYLOAD[ref.hex()] = ray.get(ref)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per trial otherwise
    return _PAYLOAD[ref.hex()]


def where_am_i(number: int) -> dict[str, Any]:
    """Where a Tune trial runs (node, process, GPUs, threads): recorded on each of its study trials."""
    import ray
    import torch

    return {"number": number, "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "threads": torch.get_num_threads()}


def candidate_of(config: dict[str, Any]) -> Candidate:
    """A suggested config (or a group member's) → the candidate it trains."""
    return Candidate(tuple(config["selection"]), float(config["lr"]), float(config["weight_decay"]),
                     {int(i): float(m) for i, m in config["lr_multipliers"]})


def train_trial(config: dict[str, Any], payload: list, epochs: int = 1) -> None:
    """One trial on a Ray worker: train through the Job's ``run_trial`` (``payload``: [its ObjectRef]); after each
    epoch report and checkpoint the run's FitState."""
    run_trial, _ = fetch_payload(payload)
    where = where_am_i(int(config["number"]))
    resume: FitState | None = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # a retry: a finished trial reports what it found, an unfinished one resumes
        with ckpt.as_directory() as d:
            if (Path(d) / RECORD).exists():
                tune.report(json.loads((Path(d) / RECORD).read_text()), checkpoint=ckpt)
                return
            resume = FitState.load(d)
    cand = candidate_of(config)
    meta = selection_metadata(cand.selection)

    ends: list[float] = []  # wall-clock end of each epoch: a timeline (benchmarks/gpu_packing.py reads it)
    last: list[FitState] = []

    def report(epoch: int, score: float) -> None:
        ends.append(time.time())

    def checkpoint(state: FitState) -> None:
        last[:] = [state]
        if state.epoch < epochs:  # the last epoch is reported with the result
            with tempfile.TemporaryDirectory() as d:
                state.save(d, meta)
                tune.report({**where, "score": float(state.curve[-1]), "epoch": state.epoch, "final": False},
                            checkpoint=tune.Checkpoint.from_directory(d))

    t0 = time.perf_counter()
    final = {**where, "epoch": epochs, "final": True, "score": float("-inf"), "started_at": time.time()}
    try:
        out = run_trial(cand, report, resume=resume, checkpoint=checkpoint)
    except Exception as exc:  # recorded FAIL; not retried (max_failures is for dead workers)
        tune.report({**final, "fail_reason": f"{type(exc).__name__}: {exc}", "abort": isinstance(exc, SearchAborted),
                     "seconds": round(time.perf_counter() - t0, 4)})
        return
    final.update(score=float(out.values[0]), values=[float(v) for v in out.values], seconds=round(
        time.perf_counter() - t0, 4), attrs=json.dumps({**out.attrs, "epoch_end_times": ends}, default=json_default))
    with tempfile.TemporaryDirectory() as d:
        if last:  # the tuned tensors and the optimizer state after the last epoch
            last[0].save(d, meta)
        (Path(d) / RECORD).write_text(json.dumps(final, default=json_default))
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(d))


def _members(result: dict[str, Any], key: str) -> dict[int, Any]:
    """A group's per-member JSON field of a Tune result (``{"<number>": …}``) by study trial number."""
    raw = result.get(key)
    return {int(n): v for n, v in json.loads(raw).items()} if raw else {}


def json_default(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else (list(x) if isinstance(x, (tuple, set)) else str(x))


def load_tuned(root: Path, number: int, tune_trial: str | None = None) -> dict[str, Any] | None:
    """The tuned tensors trial ``number`` checkpointed (any experiment of the study), or None.

    ``tune_trial`` finds a trial recorded under a new number (a continued run keeps its Tune directory) and a
    member of a fused group (its tensors are under ``members/<number>/`` of the group's checkpoint).
    """
    from safetensors.torch import load_file

    pattern = f"trial_*_{tune_trial}" if tune_trial else f"trial_{number:05d}_*"
    for d in sorted(root.glob(f"*/{pattern}/checkpoint_*"), key=lambda p: p.stat().st_mtime, reverse=True):
        for path in (d / MEMBERS / str(number) / TUNED, d / TUNED):
            if path.exists():
                return load_file(str(path))
    return None


def settle_not_rerun(book: StudyBook, experiment: str) -> list[int]:
    """After a restored experiment ended: fail and re-enqueue the trials it left RUNNING; returns their numbers.

    Every Tune trial of a finished experiment has ended, so a study trial of ``experiment`` still RUNNING lost its
    run with the dead driver and Tune's restore never ran it again (its snapshot held it as ended, or ran it
    under a record autosub could not match). Without this it would stay RUNNING and its budget share unspent.
    """
    lost = [t for t in book.trials(TrialState.RUNNING) if t.user_attrs.get("ray_experiment") == experiment]
    for t in lost:
        book.fail_and_retry(t, NOT_RERUN)
    return [t.number for t in lost]


def dirname(trial: Any) -> str:
    return f"trial_{int(trial.config.get('number', -1)):05d}_{trial.trial_id}"


def started(records: list[TrialRecord], experiment: str) -> int:
    """Trials this experiment started; those lost with a dead driver do not count (their run is retried or
    recorded as a new trial)."""
    return sum(r.user_attrs.get("ray_experiment") == experiment
               and not str(r.user_attrs.get("fail_reason", "")).startswith("lost") for r in records)
