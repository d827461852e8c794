"""``autosub.search(model, dataset, budget)``: prior → engine → SearchResult, in one call.

Flow: validate every argument and open the storage (fail fast) → one head-replaced copy of the model, its
blocks and FLOP profile → ONE prefix cache filled at every block boundary in one pass (every trial reuses it)
→ the cost of one full-finetune epoch, measured (the unit of ``Budget.compute``) → the prior (a profile run
inside the budget, or the one passed) → the engine runs the selector's proposals → the best trial's model
(optionally retrained on train+val) → the test score, computed once, at the very end. Nothing before that
last step can see ``task.test``: every fit gets a view of the task without it.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..model.blocks import discover_blocks
from ..data.task import Split, Task, take
from ..data.sources import as_task
from .backends import Backend, resolve_backend
from .engines import Job, TrialOutcome
from ..errors import ConfigError, check_positive
from .result import SearchResult, TrialRecord, pareto_front, trials_frame, trunk_fingerprint, tuned_state
from .selectors import BaseSelector, Prior, SelectorContext, get_selector
from .budget import Budget, Meter
from .space import Candidate, SearchSpace

log = logging.getLogger(__name__)

OBJECTIVES = ("score", "cost", "params")
FIT_KWARGS = ("batch_size", "amp", "memory")


def search(
    model: nn.Module,
    dataset: Any,
    budget: Budget | int | dict,
    *,
    selector: str | BaseSelector = "tpe",
    space: str | SearchSpace = "subset",
    backend: str | Backend = "optuna",
    prior: Any = "profile",
    objectives: Sequence[str] = ("score",),
    pruner: Any = "auto",
    storage: Any = None,
    study_name: str = "autosub",
    resume: bool = False,
    run_dir: str | Path | None = None,
    retrain: bool = False,
    seed: int = 0,
    epochs: int = 3,
    device: str | torch.device | None = None,
    progress: bool = True,
    callbacks: Sequence[Callable[[TrialRecord, Any], None]] = (),
    **fit_kwargs: Any,
) -> SearchResult:
    """Search which blocks of ``model`` to finetune (and with which learning rate) on ``dataset`` within ``budget``.

    ``budget``: an int (trials) or a :class:`~autosub.space.Budget` (trials / seconds / compute in full-FT epochs).
    ``prior``: ``"profile"`` (a one-epoch profile of every block, inside the budget), a Profile, ``{block: score}``
    or None.
    ``objectives``: ``("score",)`` or e.g. ``("score", "cost")`` / ``("score", "params")`` for a Pareto front.
    ``storage``: None → ``sqlite:///<run_dir>/study.db``; any Optuna URL; a journal file path; ``resume=True``
    continues the study named ``study_name``. ``fit_kwargs``: ``batch_size``, ``amp``, ``memory`` (a MemoryBudget
    for the prefix cache). ``callbacks`` are called as ``cb(record, model_or_None)`` after each trial, outside
    the budget's clock. ``backend``: ``"optuna"`` (in process), ``"ray"`` or a backend object such as
    ``autosub.RayBackend(address="auto", resources_per_trial={"cpu": 1, "gpu": 0.25}, max_failures=2,
    max_concurrent_trials=None)`` — see :mod:`autosub.hpo.backends`.
    """
    from ..selection.profiling import profile as run_profile, selection_view
    from ..training.trainer import check_task, fit, resolve_device

    # ---- 1. validate everything, open the storage: no work yet -------------------------------------------
    budget = Budget.of(budget)
    sel = get_selector(selector)
    spec = SearchSpace.of(space)
    if spec.kind not in sel.kinds:
        raise ConfigError(f"The {sel.name!r} selector works on the {list(sel.kinds)} space(s); got space={spec.kind!r}.")
    backend = resolve_backend(backend)
    objectives = _check_objectives(objectives)
    multi = len(objectives) > 1
    if multi and pruner not in ("auto", None, "none"):
        raise ConfigError("Optuna cannot prune multi-objective trials; leave pruner='auto' (off) or pass None.")
    if not (pruner in ("auto", "none", "hyperband", "halving", None) or hasattr(pruner, "prune")):
        raise ConfigError(f"The 'pruner' parameter of search must be 'auto', None or an optuna pruner; got {pruner!r}.")
    if isinstance(prior, str) and prior != "profile":
        raise ConfigError(f"The 'prior' parameter of search must be 'profile', None, a Profile or block scores; got "
                          f"{prior!r} instead.")
    if sel.needs_prior and prior is None:
        raise ConfigError(f"The {sel.name!r} selector needs a prior; pass prior='profile' or a Profile.")
    check_positive("epochs", epochs, "search", integer=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"The 'seed' parameter of search must be an int; got {seed!r} instead.")
    unknown = set(fit_kwargs) - set(FIT_KWARGS)
    if unknown:
        raise ConfigError(f"Unknown keyword argument(s) {sorted(unknown)} for search; it accepts {list(FIT_KWARGS)} "
                          "besides its own. Put lr / weight_decay ranges and constraints in SearchSpace(...).")
    batch_size = fit_kwargs.get("batch_size", 32)
    check_positive("batch_size", batch_size, "search", integer=True)
    if not isinstance(study_name, str) or not study_name:
        raise ConfigError(f"The 'study_name' parameter of search must be a non-empty str; got {study_name!r}.")
    run_path = Path(run_dir) if run_dir is not None else Path("autosub-runs") / time.strftime("%Y%m%d-%H%M%S")
    directions = ["maximize"] + ["minimize"] * (len(objectives) - 1)
    engine = backend.engine(storage=storage, study_name=study_name, run_dir=run_path, resume=resume,
                            directions=directions, seed=seed)
    task = as_task(dataset)
    view = selection_view(task)  # the only task the search ever sees: no test split

    # ---- 2. one model copy, blocks, FLOPs, one shared prefix cache ---------------------------------------
    meter = Meter(budget.epoch_seconds)
    dev = resolve_device(device)
    amp = fit_kwargs.get("amp")
    work = _with_head(model, task.num_classes, seed, dev)
    partition = discover_blocks(work)
    check_task(work, view)
    fork_share = _fork_share(work, partition, view, dev, required=multi and "cost" in objectives or
                             spec.max_added_cost is not None)
    head_params = sum(p.numel() for n, p in work.named_parameters() if n in set(partition.head))
    bound = spec.bind([b.num_params for b in partition], head_params=head_params, fork_share=fork_share)
    state = engine.load_state()
    if state and (state.get("space", {}).get("kind") != spec.kind or state.get("n_blocks") != len(partition)):
        raise ConfigError(f"The study {study_name!r} was run on a {state.get('space', {}).get('kind')!r} space over "
                          f"{state.get('n_blocks')} blocks; resume it with the same model and space.")
    t0 = time.perf_counter()
    cache = _build_cache(work, partition, view, bound, dev, batch_size, fit_kwargs.get("memory"), progress)
    meter.add_phase("cache", time.perf_counter() - t0)
    if meter.epoch_seconds is None:
        t0 = time.perf_counter()
        meter.epoch_seconds = state.get("epoch_seconds") or measure_epoch_seconds(
            work, view, partition, batch_size=batch_size, device=dev, amp=amp)
        meter.add_phase("calibration", time.perf_counter() - t0)
    log.info("one full-finetune epoch ≈ %.2fs (the unit of compute)", meter.epoch_seconds)

    # ---- 3. the prior -------------------------------------------------------------------------------------
    the_prior: Prior | None = None
    if sel.uses_prior and prior is not None:
        if state.get("prior"):
            the_prior = Prior.from_dict(state["prior"])
        elif isinstance(prior, str) and not _profile_affordable(budget, bound, meter.epoch_seconds):
            log.warning("the budget (%s) is too small for a profile prior; searching without one", budget.describe())
        elif isinstance(prior, str):
            t0 = time.perf_counter()
            prof = run_profile(model, view, partition=partition, epochs=1, seeds=1, lr=spec.default_lr,
                               batch_size=batch_size, fidelity="full", baselines=False, device=dev,
                               cache=cache if cache is not None else False, seed=seed, progress=progress)
            meter.add_phase("prior", time.perf_counter() - t0)
            the_prior = Prior.of(prof, len(partition))
        else:
            the_prior = Prior.of(prior, len(partition))
    ctx = SelectorContext(space=bound, prior=the_prior, seed=seed, epochs=epochs, directions=tuple(directions),
                          n_trials=budget.trials, fit_defaults={"batch_size": batch_size})

    # ---- 4. the engine runs the trials --------------------------------------------------------------------
    def run_trial(cand: Candidate, report: Callable[[int, float], None] | None, *, resume: Any = None,
                  checkpoint: Callable[[Any], None] | None = None) -> TrialOutcome:
        res = fit(model, view, cand.selection, partition=partition, epochs=epochs, lr=cand.lr,
                  weight_decay=cand.weight_decay, lr_multipliers=cand.lr_multipliers or None, batch_size=batch_size,
                  seed=seed, device=dev, amp=amp, cache=cache if cache is not None else False, callback=report,
                  checkpoint=checkpoint, resume=resume, keep_model=True)
        values = [res.score] + [bound.added_cost(res.selection) if o == "cost" else float(res.trainable_params)
                                for o in objectives[1:]]
        attrs = {"curve": res.curve, "train_loss": res.train_loss, "trainable_params": res.trainable_params,
                 "examples_per_s": res.examples_per_s}
        if res.resumed_from:
            attrs["resumed_from_epoch"] = res.resumed_from
        return TrialOutcome(values, attrs, res.model)

    job = Job(space=bound, selector=sel, context=ctx, run_trial=run_trial, budget=budget, meter=meter,
              objectives=objectives, pruner=pruner, progress=progress, callbacks=list(callbacks),
              state={"space": spec.to_dict(), "n_blocks": len(partition), "epoch_seconds": meter.epoch_seconds,
                     "prior": the_prior.to_dict() if the_prior else None, "selector": sel.describe(),
                     "objectives": list(objectives), "epochs": epochs, "seed": seed})
    run = engine.run(job)

    # ---- 5. the best trial's model, optional retraining, the test score once -----------------------------
    front = pareto_front(run.records, objectives)
    done = [r for r in run.records if r.state == "COMPLETE" and r.values]
    if not done:
        raise ConfigError(f"The search finished no trial (stopped by: {run.stop_reason}); raise the budget. "
                          f"Failures: {[r.user_attrs.get('fail_reason') for r in run.records if r.state == 'FAIL']}")
    best = max(front if multi else done, key=lambda r: (r.values[0], -r.number))
    cand = bound.decode(best.params)
    final = run.best_model if run.best_number == best.number else None
    t0 = time.perf_counter()
    if final is None and run.best_state and not retrain:  # the best trial's checkpoint: no need to train again
        final = _with_head(model, task.num_classes, seed, dev)
        if final.load_state_dict({k: v.to(dev) for k, v in run.best_state.items()}, strict=False).unexpected_keys:
            final = None  # not this model's tensors: train it again below
    if final is None or retrain:
        data = _train_plus_val(view) if retrain else view
        final = fit(model, data, best.selection, partition=partition, epochs=epochs, lr=cand.lr,
                    weight_decay=cand.weight_decay, lr_multipliers=cand.lr_multipliers or None, batch_size=batch_size,
                    seed=seed, device=dev, amp=amp, cache=cache if (cache is not None and not retrain) else
                    ("auto" if retrain else False), keep_model=True).model
    meter.add_phase("final", time.perf_counter() - t0)
    test_score, n_test = _test_score(final, task, dev)
    spent = {**meter.report(), "stop_reason": run.stop_reason}
    hparams = {**cand.hparams(), "epochs": epochs, "batch_size": batch_size, "seed": seed}
    config = {"space": spec.to_dict(), "selector": sel.describe(), "backend": backend.name, "epochs": epochs,
              "seed": seed, "batch_size": batch_size, "model": type(model).__name__, "block_names": list(partition.names),
              "num_classes": task.num_classes, "trunk_fingerprint": trunk_fingerprint(model, discover_blocks(model)),
              "retrained": bool(retrain), "budget": budget.__dict__,
              "task": {"train": len(task.train), "val": len(task.val),
                       "test": n_test}}
    pareto = [{"number": r.number, "selection": list(r.selection or ()), "score": r.score,
               "added_cost": r.user_attrs.get("added_cost"), "trainable_params": r.user_attrs.get("trainable_params"),
               "values": r.values} for r in front]
    log.info("search: best %s val %.4f (trial %d); spent %s", best.selection, best.values[0], best.number, spent)
    return SearchResult(selection=tuple(best.selection), hparams=hparams, score=float(best.values[0]),
                        test_score=test_score, model=final, trials=trials_frame(run.records, objectives),
                        records=run.records, pareto=pareto, spent=spent, objectives=objectives,
                        best_trial=best.number, study_name=run.study_name, storage=run.storage, run_dir=str(run_path),
                        prior=the_prior.to_dict() if the_prior else None, config=config,
                        state=tuned_state(final, best.selection, partition), study=run.study)


# ---------------------------------------------------------------------------------------------------- helpers
def measure_epoch_seconds(work: nn.Module, task: Task, partition: Any, *, batch_size: int,
                          device: torch.device, amp: bool | None = None, steps: int = 2) -> float:
    """Estimate one full-finetune epoch (train steps + validation pass) from a few timed steps."""
    net = copy.deepcopy(work).to(device).train()
    for p in net.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    amp = device.type == "cuda" if amp is None else amp
    n, bs = len(task.train), min(batch_size, len(task.train))
    idx = torch.arange(bs)
    x, y = _to(take(task.train.inputs, idx), device), task.train.targets[idx].to(device)
    times = []
    for i in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = nn.functional.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    net.eval()
    m = min(len(task.val), 256)
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        net(_to(take(task.val.inputs, torch.arange(m)), device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    val_s = (time.perf_counter() - t0) * len(task.val) / m
    return float(math.ceil(n / bs) * (sum(times) / len(times)) + val_s)


def _profile_affordable(budget: Budget, bound: Any, epoch_seconds: float) -> bool:
    """Whether the one-epoch profile (estimated from FLOP shares) costs at most half a compute or time budget."""
    share = bound.fork_share or [1.0] * (bound.n + 1)
    est = sum(share[: bound.n])  # one epoch per block, in full-FT epochs
    limits = [budget.compute, budget.seconds / epoch_seconds if budget.seconds else None]
    return all(limit is None or est <= 0.5 * limit for limit in limits)


def _check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    objs = (objectives,) if isinstance(objectives, str) else tuple(objectives)
    if not objs or objs[0] != "score" or len(set(objs)) != len(objs) or any(o not in OBJECTIVES for o in objs):
        raise ConfigError(f"The 'objectives' parameter of search must start with 'score' and may add 'cost' "
                          f"(added inference cost) and/or 'params' (trainable parameters); got {objectives!r} instead.")
    return objs


def _with_head(model: nn.Module, num_classes: int, seed: int, dev: torch.device) -> nn.Module:
    from ..model.heads import replace_head

    return replace_head(copy.deepcopy(model), num_classes, seed=seed).to(dev).eval()


def _fork_share(work: nn.Module, partition: Any, task: Task, dev: torch.device, *, required: bool) -> list[float] | None:
    """Added inference cost per first tuned block (None, with a warning, if FLOPs cannot be counted)."""
    from ..model.cost import count_flops

    try:
        fp = count_flops(work, partition, _to(take(task.train.inputs, slice(0, 1)), dev))
        return [fp.fork_share(b) for b in range(len(partition) + 1)]
    except Exception as exc:
        if required:
            raise ConfigError(f"The added inference cost is needed but FLOPs could not be counted: {exc}") from exc
        log.warning("could not count FLOPs (%s); added_cost is not recorded", exc)
        return None


def _build_cache(work: nn.Module, partition: Any, task: Task, bound: Any, dev: torch.device, batch_size: int,
                 memory: Any, progress: bool):
    """ONE prefix cache for the whole search, filled at every boundary a selection can start at, in one pass."""
    from ..training.cache import ActivationCache

    cache = ActivationCache(work, partition, {"train": task.train, "val": task.val}, device=dev,
                            batch_size=max(64, batch_size), budget=memory, progress=progress)
    boundaries = list(range(len(partition))) + ([len(partition)] if bound.min_blocks == 0 else [])
    splits = ["train", "val"] if task.train_transform is None else ["val"]
    got = cache.ensure(boundaries, splits)
    log.info("prefix cache: %d of %d boundaries cached", len(got), len(boundaries))
    return cache


def _train_plus_val(task: Task) -> Task:
    """train ∪ val as the training split (validation kept only to report a per-epoch number)."""
    a, b = task.train.inputs, task.val.inputs
    inputs = {k: torch.cat([a[k], b[k]]) for k in a} if isinstance(a, dict) else torch.cat([a, b])
    both = Split(inputs, torch.cat([task.train.targets, task.val.targets]), name="train")
    return replace(task, train=both, test=None)


def _test_score(model: nn.Module, task: Task, dev: torch.device) -> tuple[float | None, int]:
    """The one and only read of the test split: after the search, on the final model (score, size)."""
    from ..training.trainer import evaluate

    if task.test is None:
        return None, 0
    return float(evaluate(model, task.test, device=dev)), len(task.test)


def _to(x: Any, dev: torch.device) -> Any:
    return {k: v.to(dev) for k, v in x.items()} if isinstance(x, dict) else x.to(dev)

