"""``autosub greedy``: the paper's greedy SubTuning — add the block that helps most until the gain is under ε."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from ..report import rundir
from .common import Session, blocks_arg, check_inputs, load_inputs
from .options import add_data_options, add_model_options, add_output_options, add_training_options

__all__ = ["add_parser", "run"]

EXAMPLES = """examples:
  autosub greedy --model efficientnet_lite0 --data mnist --samples-per-class 50 --epsilon 0.005
  autosub greedy --model minilm_l6 --data fine_food --samples-per-class 100 --stopping official --max-blocks 3
  autosub greedy --model test_resnet --data digits --image-size 16 --epochs 1 --cv-folds 3
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("greedy", help="greedy SubTuning: add (or remove) the best block until the gain < epsilon",
                       description="Greedy block selection (Kaplun et al.): from the linear probe, add the block "
                       "that helps most until the validation gain falls under epsilon (or, backward, remove blocks "
                       "from all of them). Writes RUN_DIR/greedy.json and RUN_DIR/report.html.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    add_data_options(p)
    add_training_options(p)
    g = p.add_argument_group("greedy")
    g.add_argument("--epsilon", type=float, default=0.005, help="the smallest gain worth a block (default: 0.005)")
    g.add_argument("--direction", choices=("forward", "backward"), default="forward")
    g.add_argument("--stopping", choices=("strict", "official"), default="strict", help="strict: the paper's rule "
                   "(stop at the first gain < ε); official: the official code's (go on within ε of the best)")
    g.add_argument("--max-blocks", type=int, default=None, help="at most this many blocks")
    g.add_argument("--cv-folds", type=int, default=None, help="score by k-fold cross-validation over train+val "
                   "(for tiny data)")
    g.add_argument("--candidates", type=int, nargs="+", metavar="I", help="consider only these block indices")
    add_output_options(p)
    p.set_defaults(func=run, parser=p)
    return p


def run(session: Session) -> dict[str, Any]:
    from ..selection.greedy_selection import greedy

    args = session.args
    if not args.epsilon >= 0:
        raise ConfigError(f"--epsilon must be a number >= 0; got {args.epsilon}.")
    mspec, dspec = check_inputs(args)
    session.plan_run_dir()
    inputs = load_inputs(session, mspec, dspec)
    path = session.start()
    session.write_blocks(inputs.partition, inputs.setup.work)
    res = greedy(inputs.model, inputs.task, blocks=blocks_arg(args.blocks), candidates=args.candidates,
                 direction=args.direction, epsilon=args.epsilon, max_blocks=args.max_blocks, stopping=args.stopping,
                 cv_folds=args.cv_folds, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                 device=args.device, progress=session.progress)
    res.save(path / rundir.GREEDY)
    names = list(inputs.partition.names)
    sign = "+" if args.direction == "forward" else "-"
    session.say(f"\n{'step':>4} {'move':<28} {'val acc':>8} {'gain':>8}  accepted")
    session.say(f"{'':>4} {'start ' + str(list(res.path[0].start) if res.path else []):<28} {res.start_score:>8.4f}")
    for st in res.path:
        move = f"{sign}{st.chosen} {names[st.chosen]}"
        session.say(f"{st.step + 1:>4} {move[:28]:<28} {st.score:>8.4f} {st.gain:>+8.4f}  "
                    f"{'yes' if st.accepted else 'no'}")
    chosen = ", ".join(f"{b} {names[b]}" for b in res.selection) or "(head only)"
    session.say(f"\ngreedy chose {chosen}: val {res.score:.4f} after {res.n_fits} runs in {res.cost_seconds:.1f}s "
                f"({res.stop_reason}). Path: {path / rundir.GREEDY}")
    summary = session.finish({"selection": list(res.selection), "names": [names[b] for b in res.selection],
                              "score": res.score, "start_score": res.start_score, "stop_reason": res.stop_reason,
                              "n_fits": res.n_fits, "seconds": round(res.cost_seconds, 3),
                              "greedy": str(path / rundir.GREEDY)})
    if "report" in summary:
        session.say(f"Report: {summary['report']}")
    return summary
