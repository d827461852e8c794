"""The Ray Tune engine: the same Job, run as a Ray Tune experiment on one machine or a cluster.

Design: **a Tune ``Searcher`` that wraps autosub's selector** (:class:`SelectorSearcher`), not Ray's
``OptunaSearch``. The searcher keeps the Optuna study in the same storage as the Optuna backend
(``sqlite:///<run_dir>/study.db`` by default) and asks it with the selector's own sampler (prior-biased TPE,
NSGA-II, random), so warm-start trials, enqueued proposals, adaptive selectors (greedy, top-k: they never
sample, they wait for their running trials) and duplicate/infeasible handling behave exactly as in-process.
``OptunaSearch`` cannot record PRUNED warm-start trials, add proposals mid-run or wait for a greedy step.
The study is the source of truth: every trial is told to it as it ends, so results read the same
``TrialRecord`` s and give the same ``SearchResult``, and ``optuna-dashboard`` opens a Ray search too.

Around it, plain Ray Tune: ``Tuner`` + ``TuneConfig(search_alg=…, scheduler=ASHAScheduler(time_attr="epoch"))``
(ASHA on epochs when the selector is prunable and single-objective), ``tune.with_parameters`` (the trial function,
which holds the model, the task and the prefix cache, goes to the object store once, and each worker process
unpickles it once, not once per trial: it is ~150 MB for a ResNet-18 with its cache, and fetching it per trial cost
0.3–1 s of every trial's start on a 2-core machine), ``tune.with_resources``
(``resources_per_trial``, fractional GPUs), ``FailureConfig(max_failures)`` (a dead worker or node is retried;
an exception in training is recorded FAIL and not retried), and small checkpoints: after every epoch a trial
reports its :class:`~autosub.checkpoint.FitState` — the tuned tensors (selected blocks + head, safetensors) and
the optimizer, schedule and RNG state, not the frozen trunk —, and at the end its record too. A retried trial
(its worker or node died) resumes from its last epoch; one that already finished re-reports its record. The
search's final model is the best trial's checkpoint, not a refit. ``resume=True`` after the driver died calls
``Tuner.restore``: finished trials are kept, unfinished ones run again, trials the study holds as RUNNING but
Tune never recorded are failed and re-enqueued. Trials record ``node_id``, ``node_ip``, ``pid`` and ``gpu_ids``.

Addresses: ``None`` reuses a running Ray session, else ``$RAY_ADDRESS``, else starts one in-process;
``"auto"`` joins the local cluster; ``"ray://host:10001"`` uses Ray Client (the Tune loop then runs on the
head node: the study storage and ``run_dir`` must be reachable from there — use a database URL / shared FS).
autosub must be installed on every node. The trial device is the one ``search()`` resolved.
"""
from __future__ import annotations

import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import optuna
import ray
from ray import tune
from tqdm.auto import tqdm

from ...errors import ConfigError, SearchAborted
from . import EngineRun, Job
from .optuna import STATE_KEY, OptunaEngine, _add, to_record
from .ray_search import _LIVE, Hooks, SelectorSearcher, dirname, load_tuned, started, train_trial

log = logging.getLogger(__name__)

RAY_KEY = "autosub_ray"  # study user attr: {"experiment": name, "finished": bool, "runs": n}


class RayEngine(OptunaEngine):
    """Runs a Job as a Ray Tune experiment; same storage checks and records as the Optuna engine."""

    name = "ray"

    def __init__(self, *, resources_per_trial: Mapping[str, float] | None = None, address: str | None = None,
                 max_failures: int = 2, max_concurrent_trials: int | None = None, **kw: Any) -> None:
        self.resources = check_resources(resources_per_trial)
        if address is not None and (not isinstance(address, str) or not address):
            raise ConfigError(f"The 'address' parameter of search must be None, 'auto', 'local', 'ray://host:port' "
                              f"or 'host:port'; got {address!r} instead.")
        for name, v, low in (("max_failures", max_failures, 0), ("max_concurrent_trials", max_concurrent_trials, 1)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ConfigError(f"The '{name}' parameter of search must be an int >= {low}; got {v!r} instead.")
        self.address, self.max_failures = address, max_failures
        super().__init__(**kw)
        self.run_dir = Path(kw["run_dir"])
        self.client = connect(address)  # an unreachable cluster or a trial that fits nowhere fails before any work
        self.slots = max_concurrent_trials or capacity(self.resources)

    def run(self, job: Job) -> EngineRun:
        space, ctx, meter, budget = job.space, job.context, job.meter, job.budget
        multi = len(job.objectives) > 1
        asha = job.selector.prunable and not multi and ctx.epochs >= 2 and job.pruner not in (None, "none")
        if isinstance(job.pruner, optuna.pruners.BasePruner):
            log.warning("backend='ray' prunes with Ray Tune's ASHA; the Optuna pruner %s is not used",
                        type(job.pruner).__name__)
        study = optuna.create_study(storage=self.storage, sampler=job.selector.sampler(ctx),
                                    pruner=optuna.pruners.NopPruner(), study_name=self.study_name,
                                    directions=self.directions, load_if_exists=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(job.objectives))
        study.set_user_attr(STATE_KEY, {**study.user_attrs.get(STATE_KEY, {}), **job.state})
        info = dict(study.user_attrs.get(RAY_KEY, {}))
        root = (self.run_dir / "ray").resolve()
        exp = info.get("experiment")
        restore = bool(exp) and not info.get("finished") and tune.Tuner.can_restore(str(root / exp))
        stop = ""
        if not restore:
            runs = int(info.get("runs", 0)) + 1
            exp = re.sub(r"[^A-Za-z0-9_.-]", "_", self.study_name) + ("" if runs == 1 else f"-{runs}")
            info = {"experiment": exp, "finished": False, "runs": runs}
            records = [to_record(t, space) for t in study.get_trials(deepcopy=False)]
            first = job.selector.initial(ctx) if not self.exists else job.selector.propose(ctx, records)
            stop = "selector finished" if first is None else ""
            for p in first or []:
                if p.state is not None:
                    p.user_attrs.setdefault("cum_compute", meter.compute)
                _add(study, p, space)
            if job.callbacks and not self.exists:
                with meter.pause():
                    for t in [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]:
                        for cb in job.callbacks:  # results already known (the profile's runs) are trials too
                            cb(to_record(t, space), None)
        study.set_user_attr(RAY_KEY, info)
        key = f"{root / exp}::{self.study_name}"
        bar = tqdm(total=budget.trials, desc=f"search ({job.selector.name}, ray)", disable=not job.progress)
        _LIVE[key] = Hooks(meter, bar, list(job.callbacks))
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, payload=[ray.put(job.run_trial)], epochs=ctx.epochs),
            dict(self.resources))
        searcher: SelectorSearcher | None = None
        try:
            if stop or meter.exhausted(budget):
                stop = stop or meter.exhausted(budget) or ""
            elif restore:
                log.info("restoring the Ray Tune experiment %s", root / exp)
                tuner = tune.Tuner.restore(str(root / exp), trainable=trainable, resume_unfinished=True,
                                           resume_errored=False)
                _fit(tuner)
            else:
                left = None if budget.seconds is None else budget.seconds - meter.seconds
                if budget.compute is not None and meter.epoch_seconds:
                    c_left = (budget.compute - meter.compute) * meter.epoch_seconds
                    left = c_left if left is None else min(left, c_left)
                searcher = SelectorSearcher(key=key, storage=self.storage, study_name=self.study_name,
                                            selector=job.selector, ctx=ctx, budget=budget,
                                            deadline=None if left is None else time.time() + left,
                                            epoch_seconds=meter.epoch_seconds, experiment=exp)
                scheduler = (tune.schedulers.ASHAScheduler(time_attr="epoch", metric="score", mode="max",
                                                           max_t=ctx.epochs, grace_period=1, reduction_factor=3)
                             if asha else tune.schedulers.FIFOScheduler())
                tuner = tune.Tuner(trainable, run_config=tune.RunConfig(
                    name=exp, storage_path=str(root), verbose=0,
                    failure_config=tune.FailureConfig(max_failures=self.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),  # 1 would force a snapshot per epoch
                    tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                                num_samples=budget.trials or -1, reuse_actors=True,
                                                max_concurrent_trials=self.slots,
                                                trial_dirname_creator=dirname))
                _fit(tuner)
        finally:
            _LIVE.pop(key, None)
            bar.close()
        info["finished"] = True
        study.set_user_attr(RAY_KEY, info)
        records = [to_record(t, space) for t in study.get_trials(deepcopy=False)]
        if self.client or restore or searcher is None:  # the searcher ran elsewhere or was unpickled by Tune
            meter.trials = max(meter.trials, started(records, exp))
        stop = stop or (searcher.stop_reason if searcher else "") or meter.exhausted(budget) or "budget"
        done = [r for r in records if r.state == "COMPLETE" and r.values]
        best = max(done, key=lambda r: (r.values[0], -r.number)).number if done else None
        run = EngineRun(records=records, stop_reason=stop, best_number=None, best_model=None,
                        study_name=self.study_name, storage=self.storage_url, study=study,
                        best_state=load_tuned(root, best) if best is not None else None)
        log.info("search stopped: %s", stop)
        return run


# ------------------------------------------------------------------------------------------------ helpers
def check_resources(resources: Mapping[str, float] | None) -> dict[str, float]:
    """``resources_per_trial``: ``{"cpu": 1, "gpu": 0.25}`` by default with a GPU, ``{"cpu": 1}`` without."""
    if resources is None:
        import torch

        return {"cpu": 1, "gpu": 0.25} if torch.cuda.is_available() else {"cpu": 1}
    ok = isinstance(resources, Mapping) and resources and all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
        for k, v in resources.items())
    if not ok or not any(v > 0 for v in resources.values()):
        raise ConfigError(f"The 'resources_per_trial' parameter of search must map resource names to numbers >= 0 "
                          f"(e.g. {{'cpu': 1, 'gpu': 0.25}}); got {resources!r} instead.")
    gpu = resources.get("gpu", 0)
    if gpu > 1 and not float(gpu).is_integer():
        raise ConfigError(f"A fractional 'gpu' in resources_per_trial must be < 1 (several trials per GPU); got {gpu}.")
    return {k: float(v) for k, v in resources.items()}


# A Ray Client server can fail to start a client's session under load (Ray 2.60: psutil ZombieProcess in its
# proxier); it answers ConnectionAbortedError, and a second attempt works. Other errors fail at once.
CLIENT_ATTEMPTS = 3


def connect(address: str | None) -> bool:
    """Join or start Ray (see the module docs); return whether this is a Ray Client connection."""
    import ray

    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS") or "local"
        kw: dict[str, Any] = {"logging_level": logging.WARNING}
        if not target.startswith("ray://"):  # Ray Client takes neither (nor a runtime_env: its server failed)
            kw.update(include_dashboard=False, configure_logging=False)
        for attempt in range(1, CLIENT_ATTEMPTS + 1):
            log.info("ray.init(address=%r)", target)
            try:
                ray.init(address=target, **kw)
                break
            except (ConnectionError, RuntimeError, ValueError) as exc:
                if isinstance(exc, ConnectionAbortedError) and attempt < CLIENT_ATTEMPTS:
                    log.warning("Ray Client: the server failed to start a session (%s); retrying", exc)
                    ray.shutdown()
                    time.sleep(attempt)
                    continue
                raise SearchAborted(f"Cannot join the Ray cluster at {target!r}: {type(exc).__name__}: {exc}. Check "
                                    "the address (or $RAY_ADDRESS), or start one with `ray start --head`.") from exc
    elif address not in (None, "auto", "local") and address != ray.get_runtime_context().gcs_address:
        log.warning("Ray is already initialized; address=%r is ignored (call ray.shutdown() first)", address)
    return bool(ray.util.client.ray.is_connected())


def capacity(resources: Mapping[str, float]) -> int:
    """How many trials the cluster holds at once (caps lookahead so TPE learns between trials); fails if none fits."""
    import ray

    total = ray.cluster_resources()
    have = {k: float(total.get(k.upper() if k in ("cpu", "gpu") else k, 0)) for k, v in resources.items() if v > 0}
    short = {k: have[k] for k in have if have[k] < resources[k]}
    if short:
        raise ConfigError(f"No trial fits the Ray cluster: a trial needs {dict(resources)} but the cluster has "
                          f"{short}; lower resources_per_trial or add nodes.")
    return max(1, min(int(have[k] // resources[k]) for k in have)) if have else 1


TUNE_ENV = {"TUNE_GLOBAL_CHECKPOINT_S": "2", "RAY_AIR_NEW_OUTPUT": "0",
            "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}


def _fit(tuner: Any) -> None:
    """Run the experiment quietly (autosub logs each trial); Tune's state is snapshotted every 2 s."""
    added = [k for k in TUNE_ENV if k not in os.environ]
    os.environ.update({k: TUNE_ENV[k] for k in added})
    try:
        grid = tuner.fit()
    finally:
        for k in added:
            os.environ.pop(k, None)
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        log.warning("%d Ray trial(s) errored; first: %s", len(errors), errors[0])
