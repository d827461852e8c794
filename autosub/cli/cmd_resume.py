"""``autosub resume RUN_DIR``: continue an interrupted ``autosub search`` or ``autosub demo`` where it stopped.

The run's ``config.toml`` says what it was; its Optuna study (``study.journal``; ``study.db`` in an earlier
autosub's runs; or the ``--storage`` it used) keeps every finished trial. The search continues with the trials its
budget had left (``--trials N``: N more), the demo reuses the baselines it had already trained.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..report import rundir
from .common import Session
from .options import add_output_options, load_config

__all__ = ["RESUMABLE", "add_parser", "run"]

RESUMABLE = ("search", "demo")
EXAMPLES = """examples:
  autosub resume autosub-runs/search-20250101-120000
  autosub resume runs/mnist --trials 10          # ten more trials, then a new result
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("resume", help="continue an interrupted search (or demo) from its run directory",
                       description=__doc__.split("\n\n", 1)[1].strip() if __doc__ else None, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir_path", metavar="RUN_DIR", help="the run directory of the interrupted run")
    p.add_argument("--trials", type=int, default=None, help="run this many more trials (default: what the budget "
                   "had left; required to extend a finished search)")
    add_output_options(p, config=False)
    p.set_defaults(func=run, parser=p)
    return p


def run(session: Session) -> dict[str, Any]:
    from .main import build_parser, parse_args

    args = session.args
    path = Path(args.run_dir_path)
    if not path.is_dir():
        raise ConfigError(f"{str(path)!r} is not a directory; give the run directory of the search to continue.")
    cfg = path / rundir.CONFIG
    if not cfg.is_file():
        raise ConfigError(f"{str(path)!r} holds no {rundir.CONFIG}, so it is not an autosub run directory (or it is "
                          "damaged); give the --run-dir of an autosub search.")
    command = load_config(cfg).get("command")
    if command not in RESUMABLE:
        raise ConfigError(f"{str(path)!r} holds an `autosub {command}` run, which cannot be resumed (it writes its "
                          f"result when it finishes); run it again: autosub {command} --config {cfg} --run-dir "
                          "NEW_DIR")
    if args.trials is not None and args.trials <= 0:
        raise ConfigError(f"--trials must be a positive integer; got {args.trials}.")
    if (path / rundir.RESULT / "autosub.json").is_file() and args.trials is None:
        raise ConfigError(f"The search in {str(path)!r} already finished (its result is in {path / rundir.RESULT}); "
                          f"pass --trials N to search N more trials, or start a new run.")
    flags = (["--json"] if args.json else []) + (["--quiet"] if args.quiet else []) + ["--verbose"] * args.verbose
    inner_args = parse_args(build_parser(), [command, "--config", str(cfg), "--run-dir", str(path), *flags])
    inner_args.more_trials = args.trials
    inner = Session(args=inner_args, argv=session.argv, parser=inner_args.parser, resume=True)
    session.run_dir, session.resumable = path, True
    session.step(f"resuming the `autosub {command}` run in {path}")
    return inner_args.func(inner)
