"""``autosub predict``: rate every block from network statistics, without training (the learned layer predictor).

The predictor is :func:`autosub.selection.predictor.predict_blocks` (statistics from a few batches of the training
split, scored by the :class:`~autosub.selection.predictor.LayerPredictor` fitted on the shipped corpus).
"""
from __future__ import annotations

import argparse
from typing import Any

from .._io import write_json
from ..errors import ConfigError
from ..report import rundir
from .common import Session, check_inputs, load_inputs
from .options import add_data_options, add_model_options, add_output_options

__all__ = ["add_parser", "run"]

EXAMPLES = """examples:
  autosub predict --model efficientnet_lite0 --data mnist --samples-per-class 50
  autosub predict --model minilm_l6 --data fine_food --json
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="rate every block from network statistics, without training",
                       description="The learned layer predictor: a value per block from a few batches of the target "
                       "data (gradient, saliency and similarity statistics), in seconds. Writes "
                       "RUN_DIR/prediction.json and RUN_DIR/report.html.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    add_data_options(p)
    g = p.add_argument_group("run")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--run-dir", metavar="DIR", help="where the results go (default: autosub-runs/predict-<time>)")
    g.add_argument("--top", type=int, default=3, help="how many of the best blocks to name (default: 3)")
    add_output_options(p)
    p.set_defaults(func=run, parser=p)
    return p


def run(session: Session) -> dict[str, Any]:
    from ..selection.predictor import predict_blocks

    args = session.args
    if args.top <= 0:
        raise ConfigError(f"--top must be a positive integer; got {args.top}.")
    mspec, dspec = check_inputs(args)
    session.plan_run_dir()
    inputs = load_inputs(session, mspec, dspec)
    path = session.start()
    session.write_blocks(inputs.partition, inputs.setup.work)
    session.step("predicting block values from network statistics (no training)")
    pred = predict_blocks(inputs.model, inputs.setup.view, partition=inputs.partition,
                          seed=args.seed, device=args.device)  # the view without test: the predictor never sees it
    names = list(inputs.partition.names)
    scores, ranking = [float(v) for v in pred.scores], pred.ranking()
    write_json({"scores": scores, "ranking": ranking, "block_names": names, "seconds": pred.wall_time,
                "statistics": pred.block_stats.to_dict()}, path / rundir.PREDICTION)
    session.say(f"\n{'rank':>4} {'block':>5} {'name':<28} {'predicted':>10}")
    for r, b in enumerate(ranking):
        session.say(f"{r + 1:>4} {b:>5} {names[b][:28]:<28} {scores[b]:>10.4f}")
    top = ranking[: args.top]
    session.say(f"\nbest predicted: {', '.join(f'{b} {names[b]}' for b in top)}. Prediction: {path / rundir.PREDICTION}")
    summary = session.finish({"scores": scores, "ranking": ranking, "top": top, "names": [names[b] for b in top],
                              "prediction": str(path / rundir.PREDICTION)})
    if "report" in summary:
        session.say(f"Report: {summary['report']}")
    return summary
