"""``autosub predict``: rate every block from network statistics, without training (the learned layer predictor).

The predictor is ``autosub.selection.predictor.predict_blocks(model, task)`` (issue 11). It is imported only when
the command runs; an autosub without it answers with a MissingDependencyError (exit code 3) that says so.
"""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from .._io import jsonable, write_json
from ..errors import ConfigError, MissingDependencyError
from ..report import rundir
from .common import Session, check_inputs, load_inputs
from .options import add_data_options, add_model_options, add_output_options

__all__ = ["add_parser", "block_scores", "predictor", "run"]

PREDICTOR = "autosub.selection.predictor"
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


def predictor() -> Any:
    """``predict_blocks``, imported lazily; a clear MissingDependencyError when this autosub has no predictor."""
    try:
        module = importlib.import_module(PREDICTOR)
    except ModuleNotFoundError as exc:
        if exc.name != PREDICTOR:
            raise MissingDependencyError(f"`autosub predict` needs {exc.name!r}, which is not installed: pip install "
                                         f"{exc.name}.") from None
        module = None
    fn = getattr(module, "predict_blocks", None)
    if fn is None:
        raise MissingDependencyError(f"`autosub predict` needs {PREDICTOR}.predict_blocks, which this autosub build "
                                     "does not include yet (the learned layer predictor). Rate the blocks by training "
                                     "instead: autosub profile --model … --data ….")
    return fn


def block_scores(prediction: Any, n_blocks: int) -> list[float]:
    """One value per block from what ``predict_blocks`` returns (an object with ``scores``/``values``/``to_dict``, a
    ``{block: value}`` mapping, or a sequence), checked to cover every block."""
    obj = prediction
    for attr in ("scores", "values", "predicted", "prediction"):
        cand = getattr(obj, attr, None)
        if cand is not None and not callable(cand):
            obj = cand
            break
    else:
        if hasattr(obj, "to_dict") and callable(obj.to_dict):
            d = obj.to_dict()
            obj = next((d[k] for k in ("scores", "values", "predicted", "prediction") if k in d), d)
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    if isinstance(obj, Mapping):
        out = [float("nan")] * n_blocks
        for k, v in obj.items():
            i = int(k)
            if 0 <= i < n_blocks:
                out[i] = float(v)
        values = out
    elif isinstance(obj, Sequence) and not isinstance(obj, str):
        values = [float(v) for v in obj]
    else:
        raise ConfigError(f"predict_blocks returned {type(prediction).__name__}, which holds no per-block values.")
    if len(values) != n_blocks:
        raise ConfigError(f"predict_blocks returned {len(values)} values for a model with {n_blocks} blocks.")
    return values


def run(session: Session) -> dict[str, Any]:
    args = session.args
    predict_blocks = predictor()  # before any work: an autosub without the predictor says so at once
    if args.top <= 0:
        raise ConfigError(f"--top must be a positive integer; got {args.top}.")
    mspec, dspec = check_inputs(args)
    session.plan_run_dir()
    inputs = load_inputs(session, mspec, dspec)
    path = session.start()
    session.write_blocks(inputs.partition, inputs.setup.work)
    session.step("predicting block values from network statistics (no training)")
    raw = predict_blocks(inputs.model, inputs.setup.view)  # the view without test: the predictor never sees it
    names = list(inputs.partition.names)
    scores = block_scores(raw, len(names))
    ranking = sorted(range(len(scores)), key=lambda b: (-(scores[b] if scores[b] == scores[b] else -1e300), b))
    detail = raw.to_dict() if hasattr(raw, "to_dict") and callable(raw.to_dict) else None
    write_json({"scores": scores, "ranking": ranking, "block_names": names,
                "detail": jsonable_tree(detail)}, path / rundir.PREDICTION)
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


def jsonable_tree(obj: Any) -> Any:
    """A JSON-safe copy of the predictor's own record (numbers, strings, lists and dicts; other leaves as text)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): jsonable_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable_tree(v) for v in obj]
    try:
        return jsonable(obj)
    except TypeError:
        return str(obj)
