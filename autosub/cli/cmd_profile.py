"""``autosub profile``: the finetuning profile — SubTune each block alone, compare validation accuracy."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from ..report import rundir
from .common import Session, blocks_arg, check_inputs, load_inputs
from .options import add_data_options, add_model_options, add_output_options, add_training_options

__all__ = ["add_parser", "run"]

EXAMPLES = """examples:
  autosub profile --model efficientnet_lite0 --data mnist --samples-per-class 50 --epochs 3 --seeds 3
  autosub profile --model resnet50 --weights resnet50.safetensors --data ./images --fidelity halving --pairs 4
  autosub profile --model test_resnet --data digits --image-size 16 --epochs 1 --seeds 1 --run-dir runs/p
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("profile", help="SubTune each block alone and compare (the paper's finetuning profile)",
                       description="SubTune every block alone (plus the linear probe and full finetuning) and rank "
                       "the blocks by validation accuracy, mean ± std over seeds. Writes RUN_DIR/profile.json and "
                       "RUN_DIR/report.html.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    add_data_options(p)
    add_training_options(p)
    g = p.add_argument_group("profile")
    g.add_argument("--seeds", type=int, default=3, help="runs per block, for the error bars (default: 3)")
    g.add_argument("--candidates", type=int, nargs="+", metavar="I", help="profile only these block indices")
    g.add_argument("--pairs", type=int, default=None, metavar="M", help="also profile the pairs among the top M "
                   "blocks (0: all pairs)")
    g.add_argument("--fidelity", choices=("full", "halving"), default="full", help="full: every block for all "
                   "epochs; halving: successive halving (short runs for all, longer for the best)")
    g.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True, help="also run the linear "
                   "probe and full finetuning (default: yes)")
    add_output_options(p)
    p.set_defaults(func=run, parser=p)
    return p


def run(session: Session) -> dict[str, Any]:
    from ..selection.profiling import profile

    args = session.args
    if args.seeds <= 0:
        raise ConfigError(f"--seeds must be a positive integer; got {args.seeds}.")
    if args.pairs is not None and args.pairs < 0:
        raise ConfigError(f"--pairs must be 0 (all pairs) or the number of top blocks M >= 2; got {args.pairs}.")
    mspec, dspec = check_inputs(args)
    session.plan_run_dir()
    inputs = load_inputs(session, mspec, dspec)
    path = session.start()
    session.write_blocks(inputs.partition, inputs.setup.work)
    pairs: bool | int = False if args.pairs is None else (True if args.pairs == 0 else args.pairs)
    prof = profile(inputs.model, inputs.task, blocks=blocks_arg(args.blocks), candidates=args.candidates,
                   epochs=args.epochs, seeds=args.seeds, lr=args.lr, batch_size=args.batch_size, pairs=pairs,
                   fidelity=args.fidelity, baselines=args.baselines, device=args.device, seed=args.seed,
                   progress=session.progress)
    prof.save(path / rundir.PROFILE)
    names = prof.block_names
    session.say(f"\n{'rank':>4} {'block':>5} {'name':<24} {'val acc':>8} {'± std':>7} {'epochs':>6} {'params':>11}")
    for rank, b in enumerate(prof.ranking()):
        e = prof.entry(b)
        session.say(f"{rank + 1:>4} {b:>5} {names[b][:24]:<24} {e.mean:>8.4f} {e.std:>7.4f} {e.epochs:>6} "
                    f"{e.trainable_params:>11,}")
    for key, e in prof.baselines.items():
        session.say(f"{'':>4} {'':>5} {key.replace('_', ' '):<24} {e.mean:>8.4f} {e.std:>7.4f} {e.epochs:>6} "
                    f"{e.trainable_params:>11,}")
    session.say(f"\n{prof.n_fits} runs in {prof.wall_time:.1f}s (prefix cache {prof.cache_time:.1f}s). "
                f"Profile: {path / rundir.PROFILE}")
    top = prof.ranking()[0]
    summary = session.finish({
        "ranking": prof.ranking(), "block_names": list(names), "top_block": top, "top_name": names[top],
        "scores": {str(e.block): e.mean for e in prof.entries},
        "baselines": {k: e.mean for k, e in prof.baselines.items()}, "n_fits": prof.n_fits,
        "seconds": round(prof.wall_time, 3), "profile": str(path / rundir.PROFILE)})
    if "report" in summary:
        session.say(f"Report: {summary['report']}")
    return summary
