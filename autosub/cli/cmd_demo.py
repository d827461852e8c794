"""``autosub demo``: autosub's main job end to end on shipped weights and real data, offline, in a few minutes.

EfficientNet-Lite0 (real ImageNet weights) → real MNIST digits in low data. ``autosub.search`` picks which blocks
to tune and their learning rate within a trial budget; the baselines get their own tuning on the same validation
split (the linear probe: logistic regression on the frozen features with C chosen on val; full finetuning: a small
learning-rate search), so the table compares tuned against tuned. The test split is read only for the final table.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

from .baselines import DEFAULT_CS, DEFAULT_FT_LRS
from .common import Session, load_inputs
from .loading import check_data_spec, check_model_spec
from .options import add_data_options, add_model_options, add_output_options, add_training_options

__all__ = ["add_parser", "run"]

EXAMPLES = """examples:
  autosub demo                                   # about 3 minutes on a 2-core CPU
  autosub demo --trials 16 --samples-per-class 100 --run-dir runs/demo
  autosub demo --samples-per-class 3 --epochs 1 --trials 2 --ft-lrs 1e-3 --json     # a smoke test
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="autosub.search on shipped EfficientNet-Lite0 weights and real MNIST, offline, "
                       "against a tuned linear probe and tuned full finetuning",
                       description=__doc__.split("\n\n", 1)[1].strip() if __doc__ else None, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("demo")
    g.add_argument("--samples-per-class", type=int, default=50, help="training examples per digit (default: 50)")
    g.add_argument("--image-size", type=int, default=32, help="pixels (default: 32)")
    g.add_argument("--epochs", type=int, default=5, help="epochs of every run: trials and baselines (default: 5)")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--trials", type=int, default=8, help="the search's trial budget (default: 8)")
    g.add_argument("--probe-c", type=float, nargs="+", default=list(DEFAULT_CS), metavar="C",
                   help="linear probe: logistic-regression C values tried on val")
    g.add_argument("--ft-lrs", type=float, nargs="+", default=list(DEFAULT_FT_LRS), metavar="LR",
                   help="full finetuning: learning rates tried on val (default: 1e-3 3e-3 1e-2)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g.add_argument("--run-dir", default=None, help="where the results go (default: autosub-runs/demo-<time>)")
    g.add_argument("--seed", type=int, default=0)
    add_output_options(p)
    p.set_defaults(func=run, parser=p)
    return p


def _search_args(demo: argparse.Namespace) -> argparse.Namespace:
    """The `autosub search` arguments the demo runs: the search's defaults plus the demo's model, data and sizes."""
    from .cmd_search import add_search_options

    p = argparse.ArgumentParser(add_help=False)
    add_model_options(p)
    add_data_options(p)
    add_training_options(p, lr=False)
    add_search_options(p)
    add_output_options(p, config=False)
    args = p.parse_args([])
    for k, v in vars(demo).items():
        if k not in ("func", "parser"):
            setattr(args, k, v)
    args.model, args.data, args.val_fraction, args.baselines = "efficientnet_lite0", "mnist", 0.1, True
    return args


def run(session: Session) -> dict[str, Any]:
    from .cmd_search import plan_search, run_baselines, run_search

    args = session.args = _search_args(session.args)  # the demo's own options stay what config.toml records
    plan = plan_search(args)
    mspec, dspec = check_model_spec(args.model), check_data_spec(args.data)
    session.plan_run_dir()
    session.resumable = True
    inputs = load_inputs(session, mspec, dspec)
    task = inputs.task
    session.say(f"EfficientNet-Lite0 (ImageNet weights, {len(inputs.partition)} blocks) -> MNIST digits, "
                f"{len(task.train)} train / {len(task.val)} val / {len(task.test)} test examples at "
                f"{args.image_size}px, {args.epochs} epochs per run")
    start = time.perf_counter()
    session.start()
    session.write_blocks(inputs.partition, inputs.setup.work)
    baselines = run_baselines(session, inputs)
    summary = run_search(session, inputs, plan, baselines)
    session.say(f"total {time.perf_counter() - start:.0f}s. The test split was read only for this final table.")
    return summary
