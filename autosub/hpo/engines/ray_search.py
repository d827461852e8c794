"""The two halves of a Ray trial: :class:`SelectorSearcher` (Tune loop) and :func:`train_trial` (a worker).

The searcher turns autosub's selector into a Tune ``Searcher``: it asks the Optuna study (with the selector's
sampler) for the next configuration and tells it every result, so the study — not Tune's snapshot — is the
record; the searcher's own state (Tune trial id → study trial number) lets ``Tuner.restore`` resume the trials
Tune knew about, and the rest are failed and re-enqueued. The worker side trains through the Job's
``run_trial``, reports each epoch to the scheduler with a checkpoint of the run's
:class:`~autosub.checkpoint.FitState` (tuned tensors + optimizer, not the trunk) and resumes from it when retried.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.search import Searcher

from ...training.checkpoint import TENSORS as TUNED, FitState, selection_metadata
from ...errors import SearchAborted
from ..selectors import BaseSelector
from ..budget import Budget
from ..space import Candidate
from .optuna import MAX_DUPLICATES, _add, _duplicate, to_record

log = logging.getLogger(__name__)

RECORD = "trial.json"
_LIVE: dict[str, "Hooks"] = {}  # in-process hooks (meter, bar, callbacks) by searcher key; never pickled


@dataclass
class Hooks:
    """What only the driver process has: the budget's meter, the progress bar, the user's callbacks."""

    meter: Any
    bar: Any = None
    callbacks: list[Callable] = field(default_factory=list)


class SelectorSearcher(Searcher):
    """A Tune Searcher that asks autosub's selector, through its Optuna study and sampler, what to run next."""

    def __init__(self, *, key: str, storage: Any, study_name: str, selector: BaseSelector, ctx: Any,
                 budget: Budget, deadline: float | None, epoch_seconds: float | None, experiment: str) -> None:
        super().__init__(metric="score", mode="max")
        self.key, self.storage, self.study_name, self.selector, self.ctx = key, storage, study_name, selector, ctx
        self.budget, self.budget_trials, self.deadline = budget, budget.trials, deadline
        self.epoch_seconds, self.experiment = epoch_seconds, experiment
        self.sampler = selector.sampler(ctx)
        self.samples = getattr(type(selector), "samples", type(selector).propose is BaseSelector.propose)
        self.numbers: dict[str, int] = {}  # Tune trial id → study trial number, for the trials Tune runs
        self.dups, self.stop_reason = 0, ""
        self._study: optuna.Study | None = None
        self._reconciled = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_study": None, "_reconciled": False}

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = optuna.load_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler)
        return self._study

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    # -- what to run next ----------------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        space, study = self.ctx.space, self.study
        if not self._reconciled:
            self._reconcile()
        for _ in range(MAX_DUPLICATES + 1):
            reason = self.stop_reason or self._exhausted()
            if reason:
                self.stop_reason = reason
                return Searcher.FINISHED
            if not self.samples and not _has(study, TrialState.WAITING):
                if _has(study, TrialState.RUNNING):
                    return None  # an adaptive selector waits for its running trials
                self.stop_reason = "selector finished"
                return Searcher.FINISHED
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with Study.optimize"
                trial = study.ask()
            cand = space.suggest(trial)
            sel = cand.selection
            by = trial.user_attrs.get("proposed_by") or getattr(self.sampler, "proposed_by", lambda n: None)(
                trial.number)
            for k, v in {"selection": list(sel), "n_blocks": len(sel), "proposed_by": by or "sampler",
                         "trainable_params": space.trainable_params(sel), "added_cost": space.added_cost(sel),
                         "ray_experiment": self.experiment}.items():
                trial.set_user_attr(k, v)
            why = space.violation(sel)
            dup = None if why else _duplicate(study, trial)
            if why is None and dup is None:
                self.dups = 0
                self.numbers[trial_id] = trial.number
                trial.set_user_attr("tune_trial_id", trial_id)
                return {"number": trial.number, "selection": list(sel), "lr": cand.lr,
                        "weight_decay": cand.weight_decay, "lr_multipliers": sorted(cand.lr_multipliers.items())}
            if why:
                trial.set_user_attr("fail_reason", f"infeasible: {why}")
                study.tell(trial, state=TrialState.FAIL)
            else:
                self.dups += 1
                trial.set_user_attr("duplicate_of", dup.number)
                for k in ("curve", "trainable_params", "added_cost"):
                    if k in dup.user_attrs:
                        trial.set_user_attr(k, dup.user_attrs[k])
                study.tell(trial, dup.values)
                if self.dups >= MAX_DUPLICATES:
                    self.stop_reason = f"space exhausted ({MAX_DUPLICATES} repeated configurations in a row)"
            self._after(trial.number)
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        number = self.numbers.get(trial_id)
        single = len(self.study.directions) == 1  # Optuna records intermediate values for one objective only
        if number is not None and single and not result.get("final") and "epoch" in result:
            self._trial(number).report(float(result["score"]), int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number = self.numbers.pop(trial_id, None)
        if number is None and result:
            number = result.get("number")
        if number is None:
            return
        study, trial = self.study, self._trial(int(number))
        if study._storage.get_trial(trial._trial_id).state.is_finished():
            return  # finished before a restore replayed it: nothing is recorded twice
        result = result or {}
        for k in ("node_id", "node_ip", "pid", "gpu_ids", "threads", "seconds", "started_at"):
            if k in result:
                trial.set_user_attr(k, result[k])
        if "seconds" in result and self.epoch_seconds:
            trial.set_user_attr("compute", float(result["seconds"]) / self.epoch_seconds)
        hooks = _LIVE.get(self.key)
        if hooks is not None and not math.isnan(hooks.meter.compute):
            trial.set_user_attr("cum_compute", hooks.meter.compute)
        if error or (result.get("final") and result.get("fail_reason")):
            reason = result.get("fail_reason") or "the trial's Ray worker failed (max_failures retries used up)"
            trial.set_user_attr("fail_reason", reason)
            log.warning("trial %d failed: %s", number, reason)
            if result.get("abort"):
                self.stop_reason = f"aborted: {reason}"
            study.tell(trial, state=TrialState.FAIL)
        elif result.get("final"):
            for k, v in json.loads(result.get("attrs", "{}")).items():
                trial.set_user_attr(k, v)
            values = [float(v) for v in result["values"]]
            study.tell(trial, values if len(values) > 1 else values[0])
        else:  # stopped by the scheduler (ASHA) after an intermediate epoch
            if "epoch" in result and len(study.directions) == 1:
                trial.report(float(result["score"]), int(result["epoch"]))
            study.tell(trial, state=TrialState.PRUNED)
        self._after(int(number))

    # -- state for Tuner.restore ---------------------------------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({k: getattr(self, k) for k in ("numbers", "dups", "stop_reason")}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

    def _reconcile(self) -> None:
        """After a restore: fail and re-enqueue this experiment's RUNNING trials that Tune will not resume."""
        self._reconciled = True
        known = set(self.numbers.values())  # the trials Tune's restored snapshot knows (and runs again)
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number in known or t.user_attrs.get("ray_experiment") != self.experiment:
                continue
            trial = self._trial(t.number)
            trial.set_user_attr("fail_reason", "lost: the driver stopped before Ray Tune recorded this trial")
            self.study.tell(trial, state=TrialState.FAIL)
            self.study.enqueue_trial(dict(t.params), user_attrs={"proposed_by": "retry", "retry_of": t.number})
            log.info("trial %d was lost with the driver; re-enqueued", t.number)

    # -- helpers -------------------------------------------------------------------------------------------
    def _trial(self, number: int) -> optuna.Trial:
        study = self.study
        return optuna.Trial(study, study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number))

    def _exhausted(self) -> str | None:
        """Why no new trial may start: the trial budget (started, not finished), then time or compute."""
        n = started(self.study.get_trials(deepcopy=False), self.experiment)
        if self.budget_trials is not None and n >= self.budget_trials:
            return f"trials ({n}/{self.budget_trials})"
        hooks = _LIVE.get(self.key)
        if hooks is None:  # unpickled away from the driver (Ray Client): a wall-clock deadline
            return "seconds/compute" if self.deadline is not None and time.time() >= self.deadline else None
        m, b = hooks.meter, self.budget
        if b.seconds is not None and m.seconds >= b.seconds:
            return f"seconds ({m.seconds:.1f}/{b.seconds:g})"
        if b.compute is not None and m.compute >= b.compute:
            return f"compute ({m.compute:.2f}/{b.compute:g} full-FT epochs)"
        return None

    def _after(self, number: int) -> None:
        """Bookkeeping after a trial ended: meter, bar, callbacks, the selector's next proposals."""
        study, hooks = self.study, _LIVE.get(self.key)
        frozen = study._storage.get_trial(self._trial(number)._trial_id)
        record = to_record(frozen, self.ctx.space)
        log.info("trial %d %s %s values=%s (%s)", number, record.selection, record.state, record.values,
                 record.user_attrs.get("fail_reason") or record.user_attrs.get("node_ip"))
        if hooks is not None:
            hooks.meter.trials += 1
            if hooks.bar is not None:
                hooks.bar.update(1)
            with hooks.meter.pause():
                for cb in hooks.callbacks:
                    cb(record, None)
        records = [to_record(t, self.ctx.space) for t in study.get_trials(deepcopy=False)]
        more = self.selector.propose(self.ctx, records)
        if more is None and not _has(study, TrialState.WAITING, TrialState.RUNNING):
            self.stop_reason = self.stop_reason or "selector finished"
        for p in more or []:
            _add(study, p, self.ctx.space)


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


def load_tuned(root: Path, number: int) -> dict[str, Any] | None:
    """The tuned tensors trial ``number`` checkpointed (any experiment of the study), or None."""
    from safetensors.torch import load_file

    hits = sorted(root.glob(f"*/trial_{number:05d}_*/checkpoint_*/{TUNED}"), key=lambda p: p.stat().st_mtime)
    return load_file(str(hits[-1])) if hits else None


def dirname(trial: Any) -> str:
    return f"trial_{int(trial.config.get('number', -1)):05d}_{trial.trial_id}"


def started(trials: Any, experiment: str) -> int:
    """Trials this experiment started (FrozenTrials or TrialRecords); those lost with a dead driver do not count."""
    return sum(t.user_attrs.get("ray_experiment") == experiment
               and not str(t.user_attrs.get("fail_reason", "")).startswith("lost") for t in trials)


def _has(study: optuna.Study, *states: TrialState) -> bool:
    return bool(study.get_trials(deepcopy=False, states=states))
