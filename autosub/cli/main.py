"""The ``autosub`` command: ``autosub demo`` runs autosub.search end to end on shipped weights and data, offline."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .bench import add_bench_parser
from .deploy import add_parsers as add_deploy_parsers

__all__ = ["build_parser", "main"]


def _demo(args: argparse.Namespace) -> int:
    """autosub's main job on shipped data: EfficientNet-Lite0 (ImageNet weights) → MNIST in low data.

    ``autosub.search`` picks which blocks to tune and their learning rate within a trial budget; the linear probe
    and full finetuning, trained the same way, are the baselines. The test split is read only for the final table.
    """
    from ..data import datasets
    from ..model import zoo
    from ..model.blocks import discover_blocks
    from ..hpo.searching import search
    from ..hpo.budget import Budget
    from ..hpo.config import RunConfig, TrainingConfig
    from ..training.trainer import evaluate, fit

    torch.manual_seed(args.seed)
    model = zoo.efficientnet_lite0()
    part = discover_blocks(model)
    task = datasets.mnist(model=model, image_size=args.image_size, samples_per_class=args.samples_per_class,
                          val_fraction=0.1, seed=args.seed)
    print(f"EfficientNet-Lite0 (ImageNet weights, {len(part)} blocks) -> MNIST digits, "
          f"{len(task.train)} train / {len(task.val)} val / {len(task.test)} test examples at {args.image_size}px, "
          f"{args.epochs} epochs per run")
    start = time.perf_counter()
    rows = []
    for label, sel in tqdm([("linear probe", ()), ("full finetuning", "all")], desc="baselines", unit="run"):
        res = fit(model, task, sel, partition=part, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                  seed=args.seed)
        rows.append((label, res.trainable_params, res.score, evaluate(res.model, task.test), res.wall_time))
    t0 = time.perf_counter()
    run_dir = Path(args.run_dir) if args.run_dir else Path("autosub-runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    result = search(model, task, Budget(trials=args.trials), epochs=args.epochs, seed=args.seed,
                    training=TrainingConfig(batch_size=args.batch_size), run=RunConfig(run_dir=run_dir))
    best = next(r for r in result.records if r.number == result.best_trial)
    rows.append((f"autosub.search: blocks {', '.join(map(str, result.selection))}",
                 int(best.user_attrs.get("trainable_params", 0)), result.score, result.test_score,
                 time.perf_counter() - t0))
    print(f"\n{'selection':<34} {'trainable':>10} {'val acc':>8} {'test acc':>9} {'time':>7}")
    for label, params, val, test, secs in rows:
        print(f"{label:<34} {params:>10,} {val:>8.3f} {test:>9.3f} {secs:>6.1f}s")
    names = ", ".join(part[b].name for b in result.selection)
    profiled = sum(r.user_attrs.get("proposed_by") == "profile" for r in result.records)
    print(f"\nautosub.search chose {names} at lr {result.hparams['lr']:.2g}: {len(result.records) - profiled} trials "
          f"(stopped by {result.spent['stop_reason']}) after a one-epoch profile of all {profiled} blocks (its prior), "
          f"both inside the search time.\nEvidence: {result.save(run_dir / 'result')} (autosub.json, "
          f"tuned.safetensors, trials.csv); the study opens with `{result.dashboard_command}`.")
    print(f"total {time.perf_counter() - start:.0f}s. The test split was read only for this final table.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (kept in one place so ``--help`` documents them all)."""
    parser = argparse.ArgumentParser(prog="autosub", description="Automated SubTuning.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="autosub.search on shipped EfficientNet-Lite0 weights and real MNIST, "
                                         "offline, against the linear probe and full finetuning")
    demo.add_argument("--samples-per-class", type=int, default=50, help="training examples per digit (low data)")
    demo.add_argument("--image-size", type=int, default=32)
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--lr", type=float, default=1e-3)
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--trials", type=int, default=8, help="the search's trial budget")
    demo.add_argument("--run-dir", default=None, help="where the study and the result go "
                      "(default autosub-runs/demo-<time>)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    add_deploy_parsers(sub)  # export, serve-check
    add_bench_parser(sub)  # bench
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``autosub`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ..errors import AutoSubError

    try:
        return args.func(args)
    except AutoSubError as exc:
        print(f"autosub: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
