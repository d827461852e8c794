"""``autosub.search(model, dataset, budget)``: validate → set up → prior → run → finish, in one call.

* **validate** every argument (no work, nothing on disk);
* **set up** through the one setup path (:mod:`autosub.training.setup`): the data checked against the model, the
  working copy, its blocks (or the user's ``blocks=``), then the storage opened and ONE prefix cache filled at every
  block boundary in one pass (every trial reuses it), and the cost of one full-finetune epoch measured (the unit of
  ``Budget.compute``);
* **prior**: a one-epoch profile of every block inside the budget, a zero-cost ranking from network statistics
  (the learned predictor or one statistic: no training, seconds), or the one passed;
* **run**: the engine (Optuna in process, or Ray Tune) runs the selector's proposals;
* **finish**: the best trial's model (optionally retrained on train+val), then the test score — computed once, at the
  very end. Nothing before that last step can see ``task.test``: every fit gets a view of the task without it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..data.sources import as_task
from ..data.task import Task, concat_splits
from ..errors import ConfigError, check_positive
from ..model.cost import try_count_flops
from ..model.subtune import tuned_tensors
from ..selection.prior import Prior
from ..selection.profiling import profile as run_profile
from ..selection.stats import STATS
from ..training.cache import ActivationCache
from ..training.folds import CacheView, cv_folds_of, holdout_rows
from ..training.fused import FusedGroup, default_memory
from ..training.setup import BlocksSpec, Setup, blocks_spec, build_cache, prepare, with_head
from ..training.trainer import evaluate, fit
from .backends import Backend, RayBackend, resolve_backend
from .budget import Budget, Meter
from .calibration import measure_epoch_seconds, profile_affordable
from .config import RunConfig, TrainingConfig, as_config
from .fusing import SearchGroups
from .engines import EngineRun, Job, TrialOutcome, mask_url
from .result import (SearchResult, TrialRecord, pareto_front, preference, selection_uncertainty, trials_frame,
                     trunk_fingerprint)
from .selectors import BaseSelector, SelectorContext, get_selector
from .space import BoundSpace, Candidate, SearchSpace

__all__ = ["OBJECTIVES", "PRIORS", "resolve_prior", "search"]

log = logging.getLogger(__name__)

OBJECTIVES = ("score", "cost", "params")
#: The priors ``search`` takes by name: the selector's own (``"auto"``), a profile, the learned predictor, a statistic.
PRIORS = ("auto", "profile", "predictor", *STATS)
_LEGACY_TRAINING = ("batch_size", "device", "amp", "memory", "retrain")
_LEGACY_RUN = ("run_dir", "storage", "study_name", "callbacks", "progress")
_LEGACY_RAY = ("resources_per_trial", "address", "max_failures")


def search(
    model: nn.Module,
    dataset: Any,
    budget: Budget | int | dict,
    *,
    selector: str | BaseSelector = "tpe",
    space: str | SearchSpace = "subset",
    prior: Any = "auto",
    objectives: Sequence[str] = ("score",),
    pruner: Any = "auto",
    blocks: BlocksSpec = None,
    epochs: int = 3,
    backend: str | Backend = "optuna",
    training: TrainingConfig | dict | None = None,
    run: RunConfig | dict | None = None,
    resume: bool | str = False,
    seed: int = 0,
    **legacy: Any,
) -> SearchResult:
    """Search which blocks of ``model`` to finetune, with which learning rate, on ``dataset`` within ``budget``.

    Args:
        model: the pretrained network (never modified; every trial trains a copy with a fresh head).
        dataset: an :class:`autosub.Task`, or anything :func:`autosub.as_task` takes (``(X, y)``, a torch Dataset,
            an ImageFolder path, …).
        budget: an int (trials), a :class:`~autosub.Budget` (trials / seconds / compute in full-FT epochs, the first
            reached stops the search) or a dict of Budget fields. **The budget is the study's total**: what every
            earlier call and every other worker of the same study spent (trials run; seconds as the search's wall
            clock, one deadline for all workers of a ``resume="join"`` search; compute as their summed work)
            counts against it, so ``resume=True`` with the same budget finishes the original search (after a
            killed driver, say), and extending a finished search takes an explicitly bigger budget
            (``search(..., 40, resume=True)`` after 30 trials runs 10 more). A time/compute budget ends within one
            epoch of its limit: a running trial is stopped at its last epoch that fits (recorded PRUNED,
            ``stopped_by``), a trial whose first epoch cannot finish in time is not started, and no trial is
            left WAITING in the study (unrun ones are recorded FAIL with ``unrun`` and run again on resume).
        selector: what to try next: ``"tpe"`` (default: TPE with the profile prior), ``"random"``, ``"greedy"``,
            ``"profile-top-k"``, ``"nsga2"``; ``"predictor"``, ``"rgn"``, ``"cka"``, ``"logme"`` (top-k of a
            ranking got with no training: the learned predictor's, or one peer statistic's); or a
            :class:`~autosub.hpo.selectors.BaseSelector`.
        space: ``"subset"`` (one boolean per block), ``"consecutive"``, ``"single"`` or a
            :class:`~autosub.SearchSpace` (block count, lr / weight-decay ranges, parameter and cost constraints).
        prior: ``"auto"`` (default): the selector's own — a one-epoch profile of every block inside the budget for
            ``tpe`` / ``profile-top-k`` / ``nsga2``, the named ranking for ``predictor`` / ``rgn`` / ``cka`` /
            ``logme``. ``"profile"``: that profile. ``"predictor"``: the learned layer predictor's scores
            (:func:`autosub.predict_blocks`), and a statistic's name (``"rgn"``, ``"fisher"``, ``"snip"``,
            ``"synflow"``, ``"cka"``, ``"logme"``, ``"hscore"``, ``"lp"``, ``"spectrum"``, ``"depth"``,
            ``"params"``, ``"flops"``, ``"reshapes"``): that statistic alone, oriented as on autosub's corpus —
            both from a few batches of the training split, no training (their wall time is the ``"prior"`` phase of
            ``SearchResult.spent``; the statistics are in ``SearchResult.prior["evidence"]``). Or a Profile,
            ``{block: score}``, or None. An unknown name is refused before any work.
        objectives: ``("score",)``, or add ``"cost"`` (added inference cost) and/or ``"params"`` (trainable
            parameters) for a Pareto front.
        pruner: ``"auto"`` (Hyperband over epochs), ``"hyperband"``, ``"halving"``, None, or any Optuna pruner.
        blocks: the block override (a regex or module names, see :func:`autosub.discover_blocks`) or a Partition.
        epochs: epochs per trial (the fidelity the pruner cuts).
        backend: ``"optuna"`` (in process), ``"ray"``, or a backend options object (``autosub.RayBackend(...)``).
        training: a :class:`~autosub.hpo.config.TrainingConfig` or dict: batch size, device, amp, cache memory,
            retraining on train+val, fused trials (``fuse``: several trials as one group; on CUDA by default).
        run: a :class:`~autosub.hpo.config.RunConfig` or dict: run_dir, storage, study_name, callbacks, progress.
        resume: ``True`` continues the study named ``run.study_name`` in ``run.storage`` / ``run.run_dir``: it must
            exist and have been run on the same model (trunk fingerprint) and space (else ConfigError before any
            trial); its trials left RUNNING by the dead driver are failed with a reason and retried at once, its
            prior is reused. ``"join"``: create-or-load, for several worker processes (or machines) of one search
            sharing a database storage (``postgresql://…``); each worker runs trials until the study's budget is
            taken; a worker of this machine that died is retried at once, one of another machine after Optuna's
            heartbeat grace period. Start every worker with the same arguments.
        seed: seeds heads, data order and samplers: the same seed on the same CPU gives the same selection.
        **legacy: the 0.1 keyword names (``run_dir=``, ``storage=``, ``batch_size=``, ``resources_per_trial=``, …)
            still work for one release, with a DeprecationWarning; they map onto ``training``/``run``/``backend``.

    Returns:
        A :class:`~autosub.SearchResult`: the selection, hyperparameters, validation and test score, the tuned
        model, every trial, the Pareto front and what was spent.
    """
    plan = _validate(budget, selector=selector, space=space, prior=prior, objectives=objectives, pruner=pruner,
                     epochs=epochs, backend=backend, training=training, run=run, resume=resume, seed=seed,
                     legacy=legacy)
    task = as_task(dataset)
    state = _set_up(plan, model, task, blocks)
    try:
        the_prior = _prior(plan, state)
        engine_run = _run(plan, state, the_prior)
        return _finish(plan, state, the_prior, engine_run, task)
    except BaseException:  # Ctrl-C, an aborted search: this worker's clock stops here (best effort)
        with contextlib.suppress(Exception):
            state.engine.store.sync_clock(state.meter, done=True)
        raise


# ------------------------------------------------------------------------------------------------- validate
@dataclass
class _Plan:
    """Every validated argument of one search call."""

    budget: Budget
    selector: BaseSelector
    prior: Any  # resolved: None, "profile", "predictor", a statistic's name, or an object for Prior.of
    spec: SearchSpace
    objectives: tuple[str, ...]
    pruner: Any
    epochs: int
    seed: int
    backend: Backend
    training: TrainingConfig
    run: RunConfig
    run_path: Path
    resume: bool | str

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        return ["maximize"] + ["minimize"] * (len(self.objectives) - 1)


def _validate(budget: Any, *, selector: Any, space: Any, prior: Any, objectives: Any, pruner: Any, epochs: Any,
              backend: Any, training: Any, run: Any, resume: Any, seed: Any, legacy: dict[str, Any]) -> _Plan:
    """Check every argument before any work; map the 0.1 keyword names onto the option groups."""
    training, run, ray_opts = _legacy_options(legacy, as_config(training, TrainingConfig, "training"),
                                              as_config(run, RunConfig, "run"))
    sel, spec = get_selector(selector), SearchSpace.of(space)
    if spec.kind not in sel.kinds:
        raise ConfigError(f"The {sel.name!r} selector works on the {list(sel.kinds)} space(s); got space={spec.kind!r}.")
    objs = _check_objectives(objectives)
    if len(objs) > 1 and pruner not in ("auto", None, "none"):
        raise ConfigError("Optuna cannot prune multi-objective trials; leave pruner='auto' (off) or pass None.")
    if not (pruner in ("auto", "none", "hyperband", "halving", None) or hasattr(pruner, "prune")):
        raise ConfigError(f"The 'pruner' parameter of search must be 'auto', None or an optuna pruner; got {pruner!r}.")
    prior = resolve_prior(prior, sel)
    check_positive("epochs", epochs, "search", integer=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"The 'seed' parameter of search must be an int; got {seed!r} instead.")
    if not (isinstance(resume, bool) or (isinstance(resume, str) and resume == "join")):
        raise ConfigError(f"The 'resume' parameter of search must be False, True or 'join' (a worker of a shared "
                          f"study); got {resume!r} instead.")
    chosen = resolve_backend(backend)  # an unknown name, bad options or a missing extra fail here, before any work
    if ray_opts:  # 0.1 spelled the Ray options as search() keywords
        if chosen.name != "ray":
            raise ConfigError(f"{sorted(ray_opts)} apply only to backend='ray'; got backend={chosen.name!r}.")
        chosen = RayBackend(**{**{k: v for k, v in chosen.to_dict().items() if k != "name"}, **ray_opts})
    run_path = Path(run.run_dir) if run.run_dir is not None else Path("autosub-runs") / time.strftime("%Y%m%d-%H%M%S")
    return _Plan(budget=Budget.of(budget), selector=sel, prior=prior, spec=spec, objectives=objs, pruner=pruner,
                 epochs=int(epochs), seed=seed, backend=chosen, training=training, run=run, run_path=run_path,
                 resume=resume)


def _legacy_options(legacy: dict[str, Any], training: TrainingConfig,
                    run: RunConfig) -> tuple[TrainingConfig, RunConfig, dict[str, Any]]:
    """0.1 keyword arguments → the option groups, with a DeprecationWarning; unknown names are refused."""
    unknown = sorted(set(legacy) - {*_LEGACY_TRAINING, *_LEGACY_RUN, *_LEGACY_RAY})
    if unknown:
        raise ConfigError(f"search() got unknown keyword argument(s) {unknown}. Training options go in "
                          f"training=TrainingConfig({', '.join(_LEGACY_TRAINING)}), run options in "
                          f"run=RunConfig({', '.join(_LEGACY_RUN)}); lr / weight_decay ranges and constraints in "
                          "space=SearchSpace(...).")
    if legacy:
        warnings.warn(f"search({', '.join(f'{k}=' for k in sorted(legacy))}) is deprecated: pass "
                      "training=TrainingConfig(...), run=RunConfig(...) or backend=RayBackend(...) (removed in 0.3).",
                      DeprecationWarning, stacklevel=3)
    training = replace(training, **{k: legacy[k] for k in _LEGACY_TRAINING if k in legacy})
    run = replace(run, **{k: legacy[k] for k in _LEGACY_RUN if k in legacy})
    return training, run, {k: legacy[k] for k in _LEGACY_RAY if k in legacy and legacy[k] is not None}


def resolve_prior(prior: Any, sel: BaseSelector) -> Any:
    """``prior`` resolved for ``sel`` ("auto" → the selector's own); an unknown name or a conflict → ConfigError."""
    if isinstance(prior, str):
        if prior not in PRIORS:
            raise ConfigError(f"The 'prior' parameter of search must be one of {list(PRIORS)}, None, a Profile or "
                              f"{{block: score}}; got {prior!r} instead.")
        if prior == "auto":
            prior = sel.default_prior
    if sel.fixed_prior and not (isinstance(prior, str) and prior == sel.default_prior):
        shown = prior if prior is None or isinstance(prior, str) else type(prior).__name__
        raise ConfigError(f"The {sel.name!r} selector ranks blocks by {sel.default_prior!r} only; got prior={shown!r}. "
                          f"Leave prior at 'auto', or use selector='profile-top-k' with the prior you want.")
    if sel.needs_prior and prior is None:
        raise ConfigError(f"The {sel.name!r} selector needs a prior; pass prior='profile', 'predictor', a "
                          "statistic's name or a Profile.")
    return prior


def _check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    objs = (objectives,) if isinstance(objectives, str) else tuple(objectives)
    if not objs or objs[0] != "score" or len(set(objs)) != len(objs) or any(o not in OBJECTIVES for o in objs):
        raise ConfigError(f"The 'objectives' parameter of search must start with 'score' and may add 'cost' "
                          f"(added inference cost) and/or 'params' (trainable parameters); got {objectives!r} instead.")
    return objs


# --------------------------------------------------------------------------------------------------- set up
@dataclass
class _State:
    """What the set-up phase built: shared by every trial of the search."""

    setup: Setup
    bound: BoundSpace
    engine: Any
    saved: dict[str, Any]  # what an earlier run of this study persisted (resume)
    cache: ActivationCache | None  # over train/val (a CacheView of the merged split under cross-validation)
    meter: Meter
    folds: list[tuple[Task, ActivationCache | None]] = field(default_factory=list)  # cross-validation only


def _set_up(plan: _Plan, model: nn.Module, task: Task, blocks: BlocksSpec) -> _State:
    """Data and model checked (nothing on disk yet), then the storage opened, the cache filled, the unit measured."""
    setup = prepare(model, task, blocks=blocks, seed=plan.seed, device=plan.training.device)
    part, dev = setup.partition, setup.device
    needs_cost = (plan.multi and "cost" in plan.objectives) or plan.spec.max_added_cost is not None
    flops = try_count_flops(setup.work, part, setup.example(), required=needs_cost, owner="search")
    head = set(part.head)
    bound = plan.spec.bind([b.num_params for b in part], fork_share=flops.shares() if flops else None,
                           head_params=sum(p.numel() for n, p in setup.work.named_parameters() if n in head))
    engine = plan.backend.engine(storage=plan.run.storage, study_name=plan.run.study_name, run_dir=plan.run_path,
                                 resume=plan.resume, directions=plan.directions, seed=plan.seed)
    saved = engine.load_state()
    fingerprint = trunk_fingerprint(setup.work, part)
    _check_resumable(plan, saved, fingerprint, len(part))
    engine.store.record_state({"trunk_fingerprint": fingerprint, "space": plan.spec.to_dict(), "n_blocks": len(part),
                               "budget": plan.budget.__dict__, "status": "setting up"})
    meter = Meter(plan.budget.epoch_seconds)
    engine.store.sync_clock(meter)  # the budget is the study's total: this worker's clock joins the study's
    t0 = time.perf_counter()
    boundaries = list(range(len(part))) + ([len(part)] if bound.min_blocks == 0 else [])
    cache, folds = _caches(plan, setup, boundaries)
    meter.add_phase("cache", time.perf_counter() - t0)
    engine.store.sync_clock(meter)
    if meter.epoch_seconds is None:
        t0 = time.perf_counter()
        meter.epoch_seconds = saved.get("epoch_seconds") or measure_epoch_seconds(
            setup.work, setup.view, batch_size=plan.training.batch_size, device=dev, amp=plan.training.amp)
        meter.add_phase("calibration", time.perf_counter() - t0)
    log.info("one full-finetune epoch ≈ %.2fs (the unit of compute)", meter.epoch_seconds)
    engine.store.record_state({"epoch_seconds": meter.epoch_seconds})
    engine.store.sync_clock(meter)
    return _State(setup=setup, bound=bound, engine=engine, saved=saved, cache=cache, meter=meter, folds=folds)


def _check_resumable(plan: _Plan, saved: dict[str, Any], fingerprint: str, n_blocks: int) -> None:
    """A resumed study must have been run on this model (trunk fingerprint) and this space: else ConfigError."""
    if not saved:
        return
    name = plan.run.study_name
    if saved.get("n_blocks") not in (None, n_blocks) or saved.get("trunk_fingerprint") not in (None, fingerprint):
        raise ConfigError(f"The study {name!r} was run on another model (trunk fingerprint "
                          f"{str(saved.get('trunk_fingerprint'))[:12]}…, {saved.get('n_blocks')} blocks; this model: "
                          f"{fingerprint[:12]}…, {n_blocks} blocks); resume it with the same model and weights, or "
                          "start a new study (another study_name / run_dir).")
    space, mine = saved.get("space"), json.loads(json.dumps(plan.spec.to_dict()))  # as the study stores it
    if space is not None and space != mine:
        diff = sorted(k for k in {*space, *mine} if space.get(k) != mine.get(k))
        raise ConfigError(f"The study {name!r} was run on another search space (differs in {diff}: recorded "
                          f"{ {k: space.get(k) for k in diff} }, got { {k: mine.get(k) for k in diff} }); resume it "
                          "with the same space, or start a new study.")


def _caches(plan: _Plan, setup: Setup, boundaries: list[int]) -> tuple[Any, list[tuple[Task, Any]]]:
    """ONE prefix cache at every boundary: over train/val, or (cross-validation) over train+val merged, which every
    fold and the final model read through views — k folds cost one prefix pass."""
    tr = plan.training
    if not tr.cv_folds:
        return setup.cache(boundaries, batch_size=tr.batch_size, memory=tr.memory, progress=plan.run.progress), []
    merged, splits = cv_folds_of(setup.view, tr.cv_folds, seed=plan.seed)
    base = build_cache(setup.work, setup.partition, {"all": merged}, boundaries, device=setup.device,
                       batch_size=tr.batch_size, memory=tr.memory, progress=plan.run.progress)
    augmented = setup.view.train_transform is not None
    view = lambda rows: CacheView(base, rows, augmented=augmented) if base is not None else None  # noqa: E731
    return view(holdout_rows(setup.view)), [(fold, view(rows)) for fold, rows in splits]


# ---------------------------------------------------------------------------------------------------- prior
def prior_checkpoint(run_dir: Path, study_name: str) -> Path:
    """Where the prior's profile keeps its finished entries until the prior is recorded in the study."""
    return Path(run_dir) / f"prior-{re.sub(r'[^A-Za-z0-9_.-]', '_', study_name)}.partial.json"


def _prior(plan: _Plan, state: _State) -> Prior | None:
    """The saved prior on resume, a zero-cost ranking, a one-epoch profile inside the budget, the one passed, or
    None."""
    n, prior = len(state.setup.partition), plan.prior
    if not plan.selector.uses_prior or prior is None:
        return None
    if state.saved.get("prior"):
        return Prior.from_dict(state.saved["prior"])
    if not isinstance(prior, str):
        return Prior.of(prior, n)
    if prior != "profile":
        return _zero_cost_prior(plan, state, prior)
    if not profile_affordable(plan.budget, state.bound, state.meter.epoch_seconds):
        if plan.selector.needs_prior:
            raise ConfigError(f"The budget ({plan.budget.describe()}) is too small for the one-epoch profile the "
                              f"{plan.selector.name!r} selector ranks by; raise it, or pass prior='predictor' (no "
                              "training) or a Profile.")
        log.warning("the budget (%s) is too small for a profile prior; searching without one", plan.budget.describe())
        return None
    t0 = time.perf_counter()
    setup = state.setup
    partial = prior_checkpoint(plan.run_path, plan.run.study_name)  # a driver killed mid-profile reuses its entries
    prof = run_profile(setup.model, setup.view, blocks=setup.partition, epochs=1, seeds=1, lr=plan.spec.default_lr,
                       batch_size=plan.training.batch_size, fidelity="full", baselines=False, device=setup.device,
                       cache=state.cache if state.cache is not None else False, seed=plan.seed,
                       progress=plan.run.progress, checkpoint=partial)
    state.meter.add_phase("prior", time.perf_counter() - t0)
    found = Prior.of(prof, n)
    state.engine.store.record_state({"prior": found.to_dict()})  # a driver killed after this reuses it
    state.engine.store.sync_clock(state.meter)
    partial.unlink(missing_ok=True)
    return found


def _zero_cost_prior(plan: _Plan, state: _State, name: str) -> Prior:
    """The learned predictor's or one statistic's ranking, from the training split only; no training."""
    from ..selection.predictor import zero_cost_prior

    setup, sel = state.setup, plan.selector
    direction = getattr(sel, "direction", None) if sel.fixed_prior and name == sel.default_prior else None
    t0 = time.perf_counter()
    found = zero_cost_prior(setup.model, setup.view, name, partition=setup.partition, seed=plan.seed,
                            direction=direction, device=setup.device)  # setup.view holds no test split
    state.meter.add_phase("prior", time.perf_counter() - t0)
    log.info("prior %r from network statistics in %.2fs: blocks best first %s", name,
             time.perf_counter() - t0, found.ranking)
    state.engine.store.record_state({"prior": found.to_dict()})  # a driver killed after this reuses it
    state.engine.store.sync_clock(state.meter)
    return found


# ------------------------------------------------------------------------------------------------------ run
def _run(plan: _Plan, state: _State, the_prior: Prior | None) -> EngineRun:
    """Hand the engine a Job: the bound space, the selector and its context, and how to train one candidate."""
    setup, bound, tr = state.setup, state.bound, plan.training
    ctx = SelectorContext(space=bound, prior=the_prior, seed=plan.seed, epochs=plan.epochs,
                          directions=tuple(plan.directions), n_trials=plan.budget.trials,
                          fit_defaults={"batch_size": tr.batch_size, "cv_folds": tr.cv_folds})

    trainer = fit  # bound now: the closure Ray ships to its workers carries this very function

    def train(data: Task, cache: Any, cand: Candidate, **hooks: Any) -> Any:
        return trainer(setup.model, data, cand.selection, blocks=setup.partition, epochs=plan.epochs, lr=cand.lr,
                   weight_decay=cand.weight_decay, lr_multipliers=cand.lr_multipliers or None,
                   batch_size=tr.batch_size, seed=plan.seed, device=setup.device, amp=tr.amp,
                   cache=cache if cache is not None else False, keep_model=True, **hooks)

    def run_trial(cand: Candidate, report: Callable[[int, float], None] | None, *, resume: Any = None,
                  checkpoint: Callable[[Any], None] | None = None) -> TrialOutcome:
        if state.folds:  # cross-validation: the mean over folds (no per-epoch pruning, no mid-trial resume)
            runs = [train(fold, cache, cand) for fold, cache in state.folds]
            return to_outcome(runs[0], fold_scores=[float(r.score) for r in runs])
        return to_outcome(train(setup.view, state.cache, cand, callback=report, checkpoint=checkpoint, resume=resume))

    def to_outcome(res: Any, *, fold_scores: list[float] | None = None) -> TrialOutcome:
        """A trial's values (score first: the mean over folds under cross-validation), attributes and model, from
        its FitResult — one rule for fused and unfused trials."""
        score = float(res.score) if fold_scores is None else float(sum(fold_scores) / len(fold_scores))
        values = [score] + [bound.added_cost(res.selection) if o == "cost" else float(res.trainable_params)
                            for o in plan.objectives[1:]]
        attrs = {"curve": res.curve, "train_loss": res.train_loss, "trainable_params": res.trainable_params,
                 "examples_per_s": res.examples_per_s}
        if fold_scores is not None:
            attrs.update(fold_scores=fold_scores, cv_std=float(torch.tensor(fold_scores).std(unbiased=True)))
        if res.resumed_from:
            attrs["resumed_from_epoch"] = res.resumed_from
        return TrialOutcome(values, attrs, res.model if fold_scores is None else None)

    fuse = tr.fuses(setup.device)
    groups = None
    if fuse:
        def make_group(share: float = 1.0) -> FusedGroup:
            """The search's group; ``share``: the part of the device this process may fill (a Ray worker's GPU
            fraction), which scales the default memory limit."""
            memory = tr.fuse_memory
            if memory is None and share < 1:
                memory = max(1, int(default_memory(torch.device(setup.device)) * share))
            return FusedGroup(setup.model, setup.view, blocks=setup.partition, batch_size=tr.batch_size,
                              device=setup.device, amp=tr.amp, cache=state.cache if state.cache is not None else False,
                              memory=memory, seed=plan.seed, keep_models=True)

        groups = SearchGroups(make_group, to_outcome, epochs=plan.epochs, seed=plan.seed, max_trials=tr.fuse_trials,
                              tensors=lambda model, selection: tuned_tensors(model, selection, setup.partition))
    pruner = None if state.folds else plan.pruner  # cross-validated trials report once, at the end
    job = Job(space=bound, selector=plan.selector, context=ctx, run_trial=run_trial, budget=plan.budget,
              meter=state.meter, objectives=plan.objectives, pruner=pruner, progress=plan.run.progress,
              callbacks=list(plan.run.callbacks),
              state={"space": plan.spec.to_dict(), "n_blocks": len(setup.partition),
                     "epoch_seconds": state.meter.epoch_seconds, "prior": the_prior.to_dict() if the_prior else None,
                     "selector": plan.selector.describe(), "objectives": list(plan.objectives), "epochs": plan.epochs,
                     "seed": plan.seed, "fuse": {"setting": tr.fuse, "on": fuse, "max_trials": int(tr.fuse_trials)}},
              fused=groups)
    return state.engine.run(job)


# --------------------------------------------------------------------------------------------------- finish
def _finish(plan: _Plan, state: _State, the_prior: Prior | None, run: EngineRun, task: Task) -> SearchResult:
    """The best trial's model (its checkpoint, or retrained), then the one read of the test split."""
    front = pareto_front(run.records, plan.objectives)
    done = [r for r in run.records if r.state == "COMPLETE" and r.values]
    if not done:
        raise ConfigError(f"The search finished no trial (stopped by: {run.stop_reason}); raise the budget. "
                          f"Failures: {[r.user_attrs.get('fail_reason') for r in run.records if r.state == 'FAIL']}")
    best = max(front if plan.multi else done, key=preference)
    cand = state.bound.decode(best.params)
    t0 = time.perf_counter()
    final = _final_model(plan, state, run, best, cand)
    state.meter.add_phase("final", time.perf_counter() - t0)
    setup, tr = state.setup, plan.training
    test_score, n_test = _test_score(final, task, setup.device)
    state.engine.store.sync_clock(state.meter, done=True)  # the study's totals, every worker's entry read
    spent = {**state.meter.report(), "stop_reason": run.stop_reason}
    config = {"space": plan.spec.to_dict(), "selector": plan.selector.describe(), "backend": plan.backend.name,
              "backend_options": plan.backend.to_dict(),
              "epochs": plan.epochs, "seed": plan.seed, "batch_size": tr.batch_size, "model": type(setup.model).__name__,
              "block_names": list(setup.partition.names), "blocks": blocks_spec(setup.partition),
              "num_classes": task.num_classes, "trunk_fingerprint": trunk_fingerprint(setup.work, setup.partition),
              "retrained": tr.retrain, "budget": plan.budget.__dict__,
              "fuse": {"setting": tr.fuse, "fused_trials": sum(bool(r.user_attrs.get("fused")) for r in run.records)},
              "run": {**plan.run.to_dict(), "storage": mask_url(plan.run.to_dict()["storage"])},
              "cv_folds": tr.cv_folds, "uncertainty": selection_uncertainty(done, best, len(setup.view.val)),
              "task": {"train": len(task.train), "val": len(task.val), "test": n_test}}
    pareto = [{"number": r.number, "selection": list(r.selection or ()), "score": r.score,
               "added_cost": r.user_attrs.get("added_cost"), "trainable_params": r.user_attrs.get("trainable_params"),
               "values": r.values} for r in front]
    log.info("search: best %s val %.4f (trial %d); spent %s", best.selection, best.values[0], best.number, spent)
    return SearchResult(
        selection=tuple(best.selection), hparams={**cand.hparams(), "epochs": plan.epochs, "batch_size": tr.batch_size,
                                                  "seed": plan.seed},
        score=float(best.values[0]), test_score=test_score, model=final,
        trials=trials_frame(run.records, plan.objectives), records=run.records, pareto=pareto, spent=spent,
        objectives=plan.objectives, best_trial=best.number, study_name=run.study_name, storage=run.storage,
        run_dir=str(plan.run_path), prior=the_prior.to_dict() if the_prior else None, config=config,
        state=tuned_tensors(final, tuple(best.selection), setup.partition), study=run.study)


def _final_model(plan: _Plan, state: _State, run: EngineRun, best: TrialRecord, cand: Candidate) -> nn.Module:
    """The model the best trial trained (kept in memory, or its checkpoint), else it is trained again."""
    setup, tr = state.setup, plan.training
    final = run.best_model if run.best_number == best.number and not tr.retrain else None
    if final is None and run.best_state and not tr.retrain:  # the best trial's checkpoint: no need to train again
        final = with_head(setup.model, setup.num_classes, seed=plan.seed, device=setup.device)
        if final.load_state_dict({k: v.to(setup.device) for k, v in run.best_state.items()},
                                 strict=False).unexpected_keys:
            final = None  # not this model's tensors: train it again below
    if final is not None:
        return final
    view = setup.view
    data = replace(view, train=concat_splits(view.train, view.val, name="train")) if tr.retrain else view
    cache: Any = state.cache if (state.cache is not None and not tr.retrain) else ("auto" if tr.retrain else False)
    return fit(setup.model, data, best.selection, blocks=setup.partition, epochs=plan.epochs, lr=cand.lr,
               weight_decay=cand.weight_decay, lr_multipliers=cand.lr_multipliers or None, batch_size=tr.batch_size,
               seed=plan.seed, device=setup.device, amp=tr.amp, cache=cache, keep_model=True).model


def _test_score(model: nn.Module, task: Task, device: torch.device) -> tuple[float | None, int]:
    """The one and only read of the test split: after the search, on the final model (score, size)."""
    if task.test is None:
        return None, 0
    return float(evaluate(model, task.test, device=device)), len(task.test)
