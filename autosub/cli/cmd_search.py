"""``autosub search``: autosub's main job — which blocks to finetune, at which learning rate, within a budget."""
from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..report import rundir
from .backend import backend_from_args
from .baselines import DEFAULT_CS, DEFAULT_FT_LRS, Baseline, full_finetune, linear_probe
from .common import Inputs, Session, blocks_arg, check_inputs, load_inputs
from .options import add_data_options, add_model_options, add_output_options, add_training_options

__all__ = ["SearchPlan", "add_parser", "add_search_options", "plan_search", "print_table", "run", "run_baselines",
           "run_search"]

DEFAULT_TRIALS = 20
EXAMPLES = """examples:
  autosub search --model efficientnet_lite0 --data mnist --samples-per-class 50 --trials 30 --baselines
  autosub search --model resnet50 --weights resnet50.safetensors --data ./images --compute 20 \\
                 --objectives score cost --max-blocks 3
  autosub search --model minilm_l6 --data reviews.csv --text-column review --label-column stars --seconds 600
  autosub search --model my_pkg.nets:backbone --data data.npz --blocks '^features\\.(\\d+)' --trials 10
  autosub search --config run.toml --backend ray --address ray://head:10001 --resources-per-trial cpu=2,gpu=0.5
  autosub resume autosub-runs/search-20250101-120000        # after Ctrl-C or a crash
"""


def add_search_options(p: argparse.ArgumentParser) -> None:
    """The budget, the space, the selector, the baselines and the backend (shared with ``autosub demo``)."""
    g = p.add_argument_group("budget (the first limit reached stops the search)")
    g.add_argument("--trials", type=int, default=None, help=f"trials (default: {DEFAULT_TRIALS} when no other limit)")
    g.add_argument("--seconds", type=float, default=None, help="wall-clock seconds")
    g.add_argument("--compute", type=float, default=None, help="compute in full-finetune epochs (measured)")
    g = p.add_argument_group("search")
    g.add_argument("--selector", default="tpe", help="what to try next: tpe (TPE with the profile prior), random, "
                   "greedy, profile-top-k, nsga2; predictor, rgn, cka, logme (top-k of a ranking got with no "
                   "training) (default: tpe)")
    g.add_argument("--space", choices=("subset", "consecutive", "single"), default="subset",
                   help="selections searched: any subset, consecutive runs, or single blocks (default: subset)")
    g.add_argument("--min-blocks", type=int, default=1, help="fewest blocks in a selection (default: 1)")
    g.add_argument("--max-blocks", type=int, default=None, help="most blocks in a selection (default: min(4, blocks))")
    g.add_argument("--lr-range", type=float, nargs=2, default=[1e-4, 1e-2], metavar=("LOW", "HIGH"),
                   help="learning rates searched, log scale (default: 1e-4 1e-2)")
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default: 0.05)")
    g.add_argument("--max-trainable-params", type=int, default=None, help="refuse selections with more trainable "
                   "parameters")
    g.add_argument("--max-added-cost", type=float, default=None, help="refuse selections that add more inference "
                   "cost (share of FLOPs from the first tuned block)")
    g.add_argument("--objectives", nargs="+", default=["score"], help="score, plus cost and/or params for a Pareto "
                   "front (default: score)")
    g.add_argument("--prior", default="auto", help="auto (the selector's own: a profile for tpe), profile (a "
                   "one-epoch profile inside the budget), predictor (the learned layer predictor, no training), a "
                   "statistic's name (rgn, fisher, cka, logme, …), none, or a profile.json written by `autosub "
                   "profile` (default: auto)")
    g.add_argument("--pruner", choices=("auto", "hyperband", "halving", "none"), default="auto",
                   help="stop weak trials early (default: auto = Hyperband over epochs)")
    g.add_argument("--retrain", action="store_true", help="retrain the best configuration on train+val at the end")
    g = p.add_argument_group("baselines (tuned on validation like the search; test read once, for the final table)")
    g.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=False,
                   help="also run the linear probe and full finetuning")
    g.add_argument("--probe-c", type=float, nargs="+", default=list(DEFAULT_CS), metavar="C",
                   help="linear probe: logistic-regression C values tried (default: 1e-3 … 100)")
    g.add_argument("--ft-lrs", type=float, nargs="+", default=list(DEFAULT_FT_LRS), metavar="LR",
                   help="full finetuning: learning rates tried (default: 1e-3 3e-3 1e-2)")
    g = p.add_argument_group("backend and storage")
    g.add_argument("--backend", choices=("optuna", "ray"), default="optuna", help="optuna (in process) or ray (Ray "
                   "Tune: local, a cluster, or Ray Client)")
    g.add_argument("--address", default=None, help="Ray cluster address: auto, HOST:PORT or ray://HOST:10001")
    g.add_argument("--resources-per-trial", default=None, metavar="cpu=1,gpu=0.25", help="Ray resources per trial")
    g.add_argument("--max-failures", type=int, default=None, help="Ray: retries of a trial whose worker dies")
    g.add_argument("--max-concurrent-trials", type=int, default=None, help="Ray: trials at once")
    g.add_argument("--storage", default=None, help="Optuna storage URL or journal file (default: "
                   "RUN_DIR/study.journal)")
    g.add_argument("--study-name", default="autosub", help="the study's name in the storage (default: autosub)")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("search", help="search which blocks to finetune, and at which learning rate, within a budget",
                       description="autosub.search: cheap per-block profiling gives a prior, then Optuna (or Ray "
                       "Tune) explores subsets of blocks and learning rates within the budget; validation picks the "
                       "winner and the test split is read once, at the end. Writes RUN_DIR/result/, "
                       "RUN_DIR/study.journal and RUN_DIR/report.html.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    add_data_options(p)
    add_training_options(p, lr=False)
    add_search_options(p)
    add_output_options(p)
    p.set_defaults(func=run, parser=p)
    return p


@dataclass
class SearchPlan:
    """The search() arguments built from the flags, validated by autosub's own option objects."""

    kwargs: dict[str, Any]
    budget: Any
    trials: int | None


def plan_search(args: argparse.Namespace) -> SearchPlan:
    """Check every search option before any work (the same validators ``autosub.search`` uses)."""
    from ..hpo.budget import Budget
    from ..hpo.config import RunConfig, TrainingConfig
    from ..hpo.searching import PRIORS, resolve_prior
    from ..hpo.selectors import get_selector
    from ..hpo.space import SearchSpace

    if args.trials is None and args.seconds is None and args.compute is None:
        args.trials = DEFAULT_TRIALS
    budget = Budget(trials=args.trials, seconds=args.seconds, compute=args.compute)
    lo, hi = args.lr_range
    space = SearchSpace(kind=args.space, min_blocks=args.min_blocks, max_blocks=args.max_blocks,
                        lr=float(lo) if lo == hi else (float(lo), float(hi)), weight_decay=args.weight_decay,
                        max_trainable_params=args.max_trainable_params, max_added_cost=args.max_added_cost)
    selector = get_selector(args.selector)
    if space.kind not in selector.kinds:
        raise ConfigError(f"--selector {args.selector} works on the {list(selector.kinds)} space(s); got --space "
                          f"{args.space}.")
    if any(c <= 0 for c in args.probe_c) or any(lr <= 0 for lr in args.ft_lrs):
        raise ConfigError("--probe-c and --ft-lrs take positive numbers.")
    prior: Any = args.prior
    if prior == "none":
        prior = None
    elif prior not in PRIORS and Path(prior).is_file():
        from ..selection.profiling import Profile

        prior = Profile.load(prior)
    elif prior.endswith(".json"):
        raise ConfigError(f"--prior {args.prior!r} does not exist; give auto, profile, predictor, a statistic's "
                          "name, none, or a profile.json file.")
    resolve_prior(prior, selector)  # an unknown name or a conflict with the selector: refused before any work
    backend, extra = backend_from_args(args.backend, address=args.address,
                                       resources_per_trial=args.resources_per_trial, max_failures=args.max_failures,
                                       max_concurrent_trials=args.max_concurrent_trials)
    training = TrainingConfig(batch_size=args.batch_size, device=args.device, retrain=args.retrain)
    run_cfg = RunConfig(run_dir=args.run_dir, storage=args.storage, study_name=args.study_name)
    kwargs = dict(selector=args.selector, space=space, prior=prior, objectives=tuple(args.objectives),
                  pruner=None if args.pruner == "none" else args.pruner, blocks=blocks_arg(args.blocks),
                  epochs=args.epochs, backend=backend, training=training, run=run_cfg, seed=args.seed, **extra)
    return SearchPlan(kwargs, budget, args.trials)


def run(session: Session) -> dict[str, Any]:
    args = session.args
    plan = plan_search(args)
    mspec, dspec = check_inputs(args)
    session.plan_run_dir()
    session.resumable = True
    inputs = load_inputs(session, mspec, dspec)
    session.start()
    session.write_blocks(inputs.partition, inputs.setup.work)
    rows = run_baselines(session, inputs) if args.baselines else []
    return run_search(session, inputs, plan, rows)


def run_baselines(session: Session, inputs: Inputs) -> list[Baseline]:
    """The tuned linear probe and full finetuning (kept in baselines.json; reused by ``autosub resume``)."""
    from .._io import read_json, write_json

    args, path = session.args, session.run_dir
    assert path is not None
    saved = path / rundir.BASELINES
    if session.resume and saved.is_file():
        rows = [Baseline(**r) for r in read_json(saved, what="baselines")["rows"]]
        session.step("baselines: reusing the ones this run already trained")
        return rows
    session.step(f"baselines: linear probe (C in {args.probe_c}), full finetuning (lr in {args.ft_lrs})")
    blocks = inputs.partition
    rows = [linear_probe(inputs.model, inputs.task, blocks=blocks, seed=args.seed, device=args.device,
                         cs=args.probe_c),
            full_finetune(inputs.model, inputs.task, blocks=blocks, epochs=args.epochs, lrs=args.ft_lrs,
                          batch_size=args.batch_size, seed=args.seed, device=args.device, progress=session.progress)]
    session.written.append(write_json({"rows": [r.to_dict() for r in rows], "task": _sizes(inputs.task)}, saved))
    return rows


def _sizes(task: Any) -> dict[str, int]:
    return {"train": len(task.train), "val": len(task.val), "test": len(task.test) if task.test is not None else 0}


def run_search(session: Session, inputs: Inputs, plan: SearchPlan, baselines: list[Baseline]) -> dict[str, Any]:
    """Run (or continue) the search, save the result, print the final table; return the summary."""
    from dataclasses import replace

    from ..hpo.searching import search

    path = session.run_dir
    assert path is not None
    kwargs = dict(plan.kwargs)
    kwargs["run"] = replace(kwargs["run"], run_dir=path, progress=session.progress)
    budget, resume = plan.budget, False
    if session.resume:
        resume, budget = _resume_budget(kwargs["run"], plan, getattr(session.args, "more_trials", None))
    with warnings.catch_warnings():  # the 0.1 Ray keywords, until RayBackend lands (autosub.cli.backend)
        warnings.simplefilter("ignore", DeprecationWarning)
        result = search(inputs.model, inputs.task, budget, resume=resume, **kwargs)
    result.save(path / rundir.RESULT)
    names = list(inputs.partition.names)
    best = next((r for r in result.records if r.number == result.best_trial), None)
    params = int(best.user_attrs.get("trainable_params", 0)) if best else None
    chosen = ", ".join(f"{b} {names[b]}" for b in result.selection)
    lr = result.hparams.get("lr")
    rows = [(b.name + f" ({b.how.split(',')[0]})" if b.name == "linear probe" else b.name, b.trainable_params, b.val,
             b.test) for b in baselines]
    rows.append((f"autosub.search: blocks {', '.join(map(str, result.selection))}", params, result.score,
                 result.test_score))
    print_table(session, rows)
    profiled = sum(r.user_attrs.get("proposed_by") == "profile" for r in result.records)
    searched = len(result.records) - profiled
    session.say(f"\nautosub.search chose {chosen} at lr {lr:.2g}: {searched} trials (stopped by "
                f"{result.spent.get('stop_reason')})" + (f" after a one-epoch profile of all {profiled} blocks (its "
                                                          "prior), both inside the budget" if profiled else "") + ".")
    for b in baselines:
        session.say(f"  {b.name}: {b.how}; tried " + ", ".join(
            f"{k}={v:g}→{t['val']:.3f}" for t in b.tried for k, v in t.items() if k != "val"))
    session.say(f"Result: {path / rundir.RESULT} (autosub.json, tuned.safetensors, trials.csv); study: "
                f"`{result.dashboard_command}`.")
    summary = session.finish({
        "selection": list(result.selection), "names": [names[b] for b in result.selection],
        "hparams": result.hparams, "score": result.score, "test_score": result.test_score,
        "trainable_params": params, "trials": len(result.records), "profile_trials": profiled,
        "stop_reason": result.spent.get("stop_reason"), "spent": result.spent,
        "baselines": [b.to_dict() for b in baselines], "result": str(path / rundir.RESULT),
        "storage": result.storage})
    if "report" in summary:
        session.say(f"Report: {summary['report']}")
    return summary


def _resume_budget(run_cfg: Any, plan: SearchPlan, more: int | None) -> tuple[bool, Any]:
    """Continue the study if it exists, else start it; return ``(resume, budget)``.

    The budget is the study's total (:mod:`autosub.hpo.budget`), so a resume passes the run's own budget: the
    search finishes the trials it had left. ``more`` (``autosub resume --trials N``) extends it to the trials
    the study has spent plus N.
    """
    import optuna

    from ..hpo.budget import Budget
    from ..hpo.engines import count_spent, open_storage

    storage, _ = open_storage(run_cfg.storage, Path(run_cfg.run_dir))
    if run_cfg.study_name not in optuna.study.get_all_study_names(storage):
        return False, plan.budget  # interrupted before the study began: start it now
    if more is None:
        return True, plan.budget
    study = optuna.load_study(study_name=run_cfg.study_name, storage=storage)
    return True, Budget(trials=count_spent(study.get_trials(deepcopy=False)) + more)


def print_table(session: Session, rows: list[tuple[str, int | None, float, float | None]]) -> None:
    """The final table: one row per selection, validation and test accuracy (test read once per row)."""
    width = max(34, max(len(r[0]) for r in rows) + 1)
    session.say(f"\n{'selection':<{width}} {'trainable':>10} {'val acc':>8} {'test acc':>9}")
    for label, params, val, test in rows:
        p = f"{params:,}" if params is not None else "—"
        t = f"{test:.3f}" if test is not None else "—"
        session.say(f"{label:<{width}} {p:>10} {val:>8.3f} {t:>9}")
