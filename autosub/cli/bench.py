"""``autosub bench``: run a benchmark configuration of :mod:`autosub.bench` (resumable) and print its table."""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["add_bench_arguments", "add_bench_parser", "config_from_args", "main", "run_bench"]

DEFAULT_ROOT = Path("benchmarks") / "results" / "bench"


def _size(text: str) -> int | None:
    return None if text == "all" else int(text)


def add_bench_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options shared by ``autosub bench`` and ``benchmarks/run.py``."""
    p.add_argument("--config", default=None, help="a named configuration: micro, quick, cpu, cpu-breadth, cpu-text, cpu-all, search, gpu "
                                                  "(default: quick)")
    p.add_argument("--quick", action="store_true", help="the same as --config quick (<= 5 min on an idle CPU)")
    p.add_argument("--tasks", nargs="+", default=None, help="override the tasks (registered names)")
    p.add_argument("--strategies", nargs="+", default=None, help="override the strategies (registered names)")
    p.add_argument("--sizes", nargs="+", type=_size, default=None, help="training-set sizes ('all' = all)")
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--budget", type=float, default=None, help="compute per strategy and cell, full-FT epochs")
    p.add_argument("--trials", type=int, default=None, help="a trial cap for the searches as well")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--out", type=Path, default=None, help=f"results folder (default {DEFAULT_ROOT}/<config>)")
    p.add_argument("--max-minutes", type=float, default=None, help="start no new cell group after this long "
                                                                   "(a rerun continues)")
    p.add_argument("--list", action="store_true", help="list the registered tasks and strategies and exit")
    return p


def config_from_args(args: argparse.Namespace) -> Any:
    from ..bench import get_config

    name = args.config or "quick"
    return get_config(name).with_overrides(tasks=args.tasks, strategies=args.strategies, sizes=args.sizes,
                                           seeds=args.seeds, budget=args.budget, trials=args.trials,
                                           epochs=args.epochs, image_size=args.image_size, device=args.device,
                                           threads=args.threads)


def run_bench(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Handle parsed ``bench`` arguments: run (or resume) the configuration, print the report's path and table."""
    from ..bench import available_tasks, get_strategy, run_benchmark, strategy_names, task_names

    if args.list:
        avail = set(available_tasks())
        for t in task_names():
            print(f"task     {t:18s} {'available' if t in avail else 'unavailable'}")
        for s in strategy_names():
            why = get_strategy(s).availability()
            print(f"strategy {s:18s} {'available' if why is None else 'unavailable: ' + why}")
        return 0
    if args.quick and args.config not in (None, "quick"):
        print("--quick and --config name different configurations; give one.", file=sys.stderr)
        return 2
    config = config_from_args(args)
    out = args.out or DEFAULT_ROOT / config.name
    command = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv))
    summary = run_benchmark(config, out, command=command, echo=lambda s: print(s, flush=True),
                            max_seconds=args.max_minutes * 60 if args.max_minutes else None)
    print((Path(out) / "report.md").read_text())
    print(f"wrote {out}/summary.json, report.md, {', '.join(summary['plots'])} and cells/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m autosub.cli.bench`` / ``benchmarks/run.py``."""
    p = add_bench_arguments(argparse.ArgumentParser(prog="autosub bench", description=__doc__))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return run_bench(args, ["autosub", "bench", *(argv if argv is not None else sys.argv[1:])])


def add_bench_parser(subparsers: Any) -> None:
    """Register ``autosub bench`` on the CLI's subparsers (the 3-line hook in main.py calls this)."""
    p = subparsers.add_parser("bench", help="benchmark selector strategies at equal compute (autosub.bench)",
                              description=__doc__)
    add_bench_arguments(p)
    p.set_defaults(func=lambda args: run_bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
