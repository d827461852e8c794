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
from typing import Any, Callable, Iterator

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

__all__ = ["SelectorSearcher", "driver_hooks", "dirname", "load_tuned", "settle_not_rerun", "started",
           "train_trial"]

log = logging.getLogger(__name__)

RECORD = "trial.json"
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
    """

    def __init__(self, *, key: str, book: StudyBook, budget: Budget, meter: Meter, experiment: str,
                 single_driver: bool = True) -> None:
        super().__init__(metric="score", mode="max")
        self.key, self.book, self.budget, self.meter, self.experiment = key, book, budget, meter, experiment
        self.single_driver = single_driver
        self.samples = book.selector.samples
        self.numbers: dict[str, int] = {}  # Tune trial id → study trial number, for the trials Tune runs
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
        self._reconcile()
        book = self.book
        for _ in range(MAX_DUPLICATES + 1):
            reason = self.stop_reason or self._exhausted()
            if reason:
                self.stop_reason = reason
                return Searcher.FINISHED
            if not self.samples and not book.has(TrialState.WAITING):
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
                self.numbers[trial_id] = trial.number
                self._held[trial.number] = trial
                trial.set_user_attr("tune_trial", trial_id)
                return {"number": trial.number, "selection": list(cand.selection), "lr": cand.lr,
                        "weight_decay": cand.weight_decay, "lr_multipliers": sorted(cand.lr_multipliers.items())}
            if verdict.values is None:
                book.study.tell(trial, state=TrialState.FAIL)
            else:
                book.study.tell(trial, verdict.values)
            self.stop_reason = self.stop_reason or book.after(trial.number, self._hooks()) or ""
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._reconcile()
        number = self.numbers.get(trial_id)
        if number is None or self.book.multi or result.get("final") or "epoch" not in result:
            return  # Optuna records intermediate values for one objective only
        if number in self._held:
            self._held[number].report(float(result["score"]), int(result["epoch"]))
        elif number in self.continued:
            self.continued[number][int(result["epoch"])] = float(result["score"])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._reconcile()
        number = self.numbers.pop(trial_id, None)
        result = result or {}
        if number is None:
            number = result.get("number")
        if number is None:
            return
        number = int(number)
        meter = self._meter()
        attrs: dict[str, Any] = {k: result[k] for k in WHERE if k in result}
        if "seconds" in result and meter.epoch_seconds:
            attrs["compute"] = meter.to_compute(float(result["seconds"]))
        if not math.isnan(meter.compute):
            attrs["cum_compute"] = meter.compute
        values, intermediate = None, {}
        if error or (result.get("final") and result.get("fail_reason")):
            state = TrialState.FAIL
            attrs["fail_reason"] = result.get("fail_reason") or ("the trial's Ray worker failed (max_failures "
                                                                 "retries used up)")
            log.warning("trial %d failed: %s", number, attrs["fail_reason"])
            if result.get("abort"):
                self.stop_reason = f"aborted: {attrs['fail_reason']}"
        elif result.get("final"):
            state = TrialState.COMPLETE
            attrs.update(json.loads(result.get("attrs", "{}")))
            values = [float(v) for v in result["values"]]
        else:  # stopped by the scheduler (ASHA) after an intermediate epoch
            state = TrialState.PRUNED
            if "epoch" in result and not self.book.multi:
                intermediate = {int(result["epoch"]): float(result["score"])}
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
            for step, score in intermediate.items():
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
            self.numbers = {str(k): int(v) for k, v in state["numbers"].items()}
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
        known = set(self.numbers.values())  # the trials Tune's restored snapshot knows (and runs again)
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
_PAYLOAD: dict[str, Callable] = {}  # in a worker process: the search's run_trial, unpickled once per search


def train_trial(config: dict[str, Any], payload: list, epochs: int = 1) -> None:
    """One trial on a Ray worker: train through the Job's ``run_trial`` (``payload``: [its ObjectRef]); after each
    epoch report and checkpoint the run's FitState."""
    import ray

    ref = payload[0]
    if ref.hex() not in _PAYLOAD:  # a reused worker keeps the model, the data and the cache it fetched
        _PAYLOAD.clear()
        _PAYLOAD[ref.hex()] = ray.get(ref)
    run_trial = _PAYLOAD[ref.hex()]
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per trial otherwise
    number = int(config["number"])
    import torch

    where = {"number": number, "node_id": ray.get_runtime_context().get_node_id(),
             "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
             "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "threads": torch.get_num_threads()}
    resume: FitState | None = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # a retry: a finished trial reports what it found, an unfinished one resumes
        with ckpt.as_directory() as d:
            if (Path(d) / RECORD).exists():
                tune.report(json.loads((Path(d) / RECORD).read_text()), checkpoint=ckpt)
                return
            resume = FitState.load(d)
    cand = Candidate(tuple(config["selection"]), float(config["lr"]), float(config["weight_decay"]),
                     {int(i): float(m) for i, m in config["lr_multipliers"]})
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
        time.perf_counter() - t0, 4), attrs=json.dumps({**out.attrs, "epoch_end_times": ends}, default=_plain))
    with tempfile.TemporaryDirectory() as d:
        if last:  # the tuned tensors and the optimizer state after the last epoch
            last[0].save(d, meta)
        (Path(d) / RECORD).write_text(json.dumps(final, default=_plain))
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(d))


def _plain(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else (list(x) if isinstance(x, (tuple, set)) else str(x))


def load_tuned(root: Path, number: int, tune_trial: str | None = None) -> dict[str, Any] | None:
    """The tuned tensors trial ``number`` checkpointed (any experiment of the study), or None.

    ``tune_trial`` finds a trial recorded under a new number (a continued run keeps its Tune directory).
    """
    from safetensors.torch import load_file

    pattern = f"trial_*_{tune_trial}" if tune_trial else f"trial_{number:05d}_*"
    hits = sorted(root.glob(f"*/{pattern}/checkpoint_*/{TUNED}"), key=lambda p: p.stat().st_mtime)
    return load_file(str(hits[-1])) if hits else None


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
