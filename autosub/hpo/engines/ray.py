"""The Ray Tune engine: the same Job, run as a Ray Tune experiment on one machine or a cluster.

Design: **a Tune ``Searcher`` that wraps autosub's selector** (:class:`SelectorSearcher`), not Ray's
``OptunaSearch``. The searcher keeps the Optuna study in the same storage as the Optuna backend
(``<run_dir>/study.journal`` by default) and asks it with the selector's own sampler (prior-biased TPE,
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
Tune never recorded are failed and re-enqueued, those Tune continues are recorded as new trials when they end,
and those Tune's snapshot knew but never ran again are failed when the restored experiment ends and retried in a
follow-up experiment of the same call
(the Optuna public API cannot write to a trial whose ``Trial`` object died with the driver; see
:mod:`autosub.hpo.engines._study`). Trials record ``node_id``, ``node_ip``, ``pid`` and ``gpu_ids``.

Options come as one :class:`~autosub.hpo.backends.RayBackend` (address, resources_per_trial, max_failures,
max_concurrent_trials — the last reaches ``TuneConfig``; None: as many trials at once as the cluster holds).
Addresses: ``None`` reuses a running Ray session, else ``$RAY_ADDRESS``, else starts one in-process;
``"auto"`` joins the local cluster; ``"ray://host:10001"`` uses Ray Client (the Tune loop then runs on the
head node: the study storage and ``run_dir`` must be reachable from there — use a database URL / shared FS).
autosub must be installed on every node. The trial device is the one ``search()`` resolved.

With fused trials (the Job carries a group runner) one Tune trial hosts a fused group of study trials
(:mod:`autosub.hpo.engines.ray_fused`; the searcher's ``fuse_trials``).
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Any, Mapping

import optuna

if "ray" not in sys.modules:  # Ray reads its auth mode when it is imported: keep token authentication on by default
    os.environ.setdefault("RAY_AUTH_MODE", "token")
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.logger import JsonLoggerCallback  # noqa: E402
from tqdm.auto import tqdm

from ...errors import ConfigError, SearchAborted
from ..backends import RayBackend
from ._study import Hooks
from .base import Engine, EngineRun, Job
from .ray_fused import train_group
from .ray_search import SelectorSearcher, dirname, driver_hooks, load_tuned, settle_not_rerun, train_trial

__all__ = ["LOOPBACK", "RayEngine", "capacity", "connect", "default_resources", "load_tuned", "local_security",
           "tune_config"]

log = logging.getLogger(__name__)

RAY_KEY = "autosub_ray"  # study user attr: {"experiment": name, "finished": bool, "runs": n}


class RayEngine(Engine):
    """Runs a Job as a Ray Tune experiment; the study is kept by the same bookkeeping as the Optuna engine's.

    Besides the :class:`~autosub.hpo.engines.base.Engine` arguments it takes ``options``, a
    :class:`~autosub.hpo.backends.RayBackend`; before any work it opens the storage, joins (or starts) Ray and
    checks that a trial fits the cluster.
    """

    name = "ray"

    def __init__(self, *, options: RayBackend | None = None, **kw: Any) -> None:
        options = RayBackend() if options is None else options
        if not isinstance(options, RayBackend):
            raise ConfigError(f"The 'options' parameter of RayEngine must be a RayBackend; got "
                              f"{type(options).__name__} instead.")
        super().__init__(options=options, **kw)
        self.resources = dict(options.resources_per_trial or default_resources())
        self.max_failures = options.max_failures
        self.client = connect(options.address)  # an unreachable cluster or a trial that fits nowhere fails here
        fits = capacity(self.resources)
        self.slots = options.max_concurrent_trials or fits

    def run(self, job: Job) -> EngineRun:
        ctx, meter, budget = job.context, job.meter, job.budget
        multi = len(job.objectives) > 1
        asha = job.selector.prunable and not multi and ctx.epochs >= 2 and job.pruner not in (None, "none")
        if isinstance(job.pruner, optuna.pruners.BasePruner):
            log.warning("backend='ray' prunes with Ray Tune's ASHA; the Optuna pruner %s is not used",
                        type(job.pruner).__name__)
        book = self.store.open(job, sampler=job.selector.sampler(ctx), pruner=optuna.pruners.NopPruner())
        study = book.study
        info = dict(study.user_attrs.get(RAY_KEY, {}))
        root = (self.run_dir / "ray").resolve()
        exp = info.get("experiment")
        restore = bool(exp) and not info.get("finished") and tune.Tuner.can_restore(str(root / exp))
        bar = tqdm(total=budget.trials, desc=f"search ({job.selector.name}, ray)", disable=not job.progress)
        hooks = Hooks(meter, bar, list(job.callbacks))
        book.sync_clock(meter)  # the study's clock: its other workers' and earlier calls' time and work
        stop = ""
        if self.exists and not restore and not self.store.join:  # the dead driver's trials Tune cannot continue
            book.fail_stale(single_driver=True)
        if self.exists and not restore:
            book.requeue_unrun()
        payload = [ray.put((job.run_trial, job.fused))]  # one put: the two share the model, data and cache
        fuse_trials = int(job.fused.max_trials) if job.fused is not None else 0
        train = (tune.with_parameters(train_group, payload=payload, epochs=ctx.epochs, resources=dict(self.resources))
                 if fuse_trials else tune.with_parameters(train_trial, payload=payload, epochs=ctx.epochs))
        trainable = tune.with_resources(train, dict(self.resources))
        searcher: SelectorSearcher | None = None
        follow_up = False
        try:
            while True:  # one Tune experiment; a second one only runs what a restored one did not run again
                if not restore:
                    runs = int(info.get("runs", 0)) + 1
                    exp = re.sub(r"[^A-Za-z0-9_.-]", "_", self.store.study_name) + ("" if runs == 1 else f"-{runs}")
                    info = {"experiment": exp, "finished": False, "runs": runs}
                    if not follow_up:  # a follow-up experiment's queue is set already (the retries)
                        stop = book.begin(resumed=self.exists, hooks=hooks)
                study.set_user_attr(RAY_KEY, info)
                key = f"{root / exp}::{self.store.study_name}"
                with driver_hooks(key, hooks):
                    if stop or meter.exhausted(budget):
                        stop = stop or meter.exhausted(budget) or ""
                        break
                    if restore:
                        log.info("restoring the Ray Tune experiment %s", root / exp)
                        _fit(tune.Tuner.restore(str(root / exp), trainable=trainable, resume_unfinished=True,
                                                resume_errored=False))
                    else:
                        searcher = SelectorSearcher(key=key, book=book, budget=budget, meter=meter, experiment=exp,
                                                    single_driver=not self.store.join, fuse_trials=fuse_trials,
                                                    slots=self.slots)
                        scheduler = (tune.schedulers.ASHAScheduler(time_attr="epoch", metric="score", mode="max",
                                                                   max_t=ctx.epochs, grace_period=1,
                                                                   reduction_factor=3)
                                     if asha else tune.schedulers.FIFOScheduler())
                        _fit(tune.Tuner(trainable, run_config=tune.RunConfig(
                            name=exp, storage_path=str(root), verbose=0, callbacks=trial_loggers(),
                            failure_config=tune.FailureConfig(max_failures=self.max_failures),
                            checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),  # 1: a snapshot per epoch
                            tune_config=tune_config(searcher=searcher, scheduler=scheduler, trials=budget.trials,
                                                    max_concurrent_trials=self.slots)))
                if not restore or not settle_not_rerun(book, exp):
                    break
                info["finished"] = True  # the restored experiment is over; its lost trials run in a new one
                study.set_user_attr(RAY_KEY, info)
                meter.trials = book.spent_trials()
                restore, follow_up = False, True
        finally:
            bar.close()
        info["finished"] = True
        study.set_user_attr(RAY_KEY, info)
        book.sync_clock(meter, done=True)
        records = book.records()
        meter.trials = book.spent_trials()  # the study's total (the searcher may have run elsewhere)
        stop = stop or (searcher.stop_reason if searcher else "") or meter.exhausted(budget) or "budget"
        book.settle_waiting(f"the search stopped ({stop})")
        records = book.records()
        done = [r for r in records if r.state == "COMPLETE" and r.values]
        best = max(done, key=lambda r: (r.values[0], -r.number)) if done else None
        tuned = (load_tuned(root, int(best.user_attrs.get("continues", best.number)), best.user_attrs.get("tune_trial"))
                 if best is not None else None)
        log.info("search stopped: %s", stop)
        return EngineRun(records=records, stop_reason=stop, best_number=None, best_model=None,
                         study_name=self.store.study_name, storage=self.store.url, study=study, best_state=tuned)


# ------------------------------------------------------------------------------------------------ helpers
def default_resources() -> dict[str, float]:
    """``resources_per_trial`` when none is given: ``{"cpu": 1, "gpu": 0.25}`` with a GPU, ``{"cpu": 1}`` without."""
    import torch

    return {"cpu": 1.0, "gpu": 0.25} if torch.cuda.is_available() else {"cpu": 1.0}


def tune_config(*, searcher: Any, scheduler: Any, trials: int | None, max_concurrent_trials: int) -> tune.TuneConfig:
    """The experiment's ``TuneConfig``: autosub's searcher, the scheduler, the trial cap and the concurrency."""
    return tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=trials or -1, reuse_actors=True,
                           max_concurrent_trials=max_concurrent_trials, trial_dirname_creator=dirname)


LOOPBACK = "127.0.0.2"  # Ray rewrites 127.0.0.1/localhost to the machine's address; another loopback one it keeps
"""The node address of a Ray that autosub starts itself (``$AUTOSUB_RAY_NODE_IP`` overrides it)."""


def local_security() -> dict[str, Any]:
    """What a Ray that autosub starts on this machine is given, for security.

    Ray 2.60 binds its Ray Client server and runtime-env agent to the node address (loopback, see
    :data:`LOOPBACK`), but its GCS, raylet and worker processes still listen on every interface (measured; they
    take no bind address). So autosub also keeps Ray's token authentication on: importing this module sets
    ``RAY_AUTH_MODE=token`` unless the user set ``RAY_AUTH_MODE`` (or imported Ray) first — Ray reads it at import
    time; a cluster autosub joins must then use token authentication too, or the user sets
    ``RAY_AUTH_MODE=disabled`` for both (a warning says so when a local Ray starts without authentication).
    """
    mode = os.environ.get("RAY_AUTH_MODE", "")
    if mode.lower() == "disabled":
        log.warning("RAY_AUTH_MODE=disabled: the local Ray's GCS and raylet listen on every interface without "
                    "authentication; unset it to keep Ray's token authentication on")
    return {"_node_ip_address": os.environ.get("AUTOSUB_RAY_NODE_IP", LOOPBACK)}


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
        if target == "local":  # a Ray started here: on loopback, with token authentication
            kw.update(local_security())
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
            "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
            "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


def trial_loggers() -> list[Any]:
    """Tune's per-result loggers: only ``result.json`` (what Tune's ``ResultGrid`` reads back). The CSV and
    TensorBoard loggers Tune adds by default duplicate what the study already records per epoch and cost time per
    result (``benchmarks/bench_overhead.py``); ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0`` in the environment brings
    them back."""
    return [JsonLoggerCallback()]


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
