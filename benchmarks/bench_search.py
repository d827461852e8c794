"""Search strategies at equal compute on real low-data MNIST with pretrained EfficientNet-Lite0 — one configuration
of the benchmark harness (``autosub.bench``), not a second harness.

    PYTHONPATH=. python benchmarks/bench_search.py [--quick] [--predictor] [other benchmarks/run.py options]

is ``benchmarks/run.py --config search``: greedy (the paper's rule, run trial by trial inside the budget), random
subsets, TPE without a prior, TPE with the profile prior (``tpe-prior``: a one-epoch profile of every block, inside
the budget) and TPE with the learned layer predictor's prior (``tpe-predictor``: network statistics from a few
batches, no training, their seconds charged to the same budget) on ``lite0-mnist`` (200 training examples, 3
seeds), each with the same compute allowance in full-finetune-epoch equivalents — greedy's allowance. ``--quick``
runs one seed; ``--predictor`` runs only greedy (the reference), ``tpe-prior`` and ``tpe-predictor``: the
predictor prior against the profile prior. Results: benchmarks/results/bench/search/ (cells, report.md,
summary.json, plots). The earlier version's anytime curves (test accuracy of every best-so-far model) are not kept:
the harness reads test once per cell, after selection.
"""
from __future__ import annotations

import sys

from autosub.cli.bench import main

PREDICTOR_VS_PROFILE = ("greedy", "tpe-prior", "tpe-predictor")


def _argv(argv: list[str]) -> list[str]:
    quick, predictor = "--quick" in argv, "--predictor" in argv
    rest = [a for a in argv if a not in ("--quick", "--predictor")]
    out = ["--config", "search", *rest]
    if quick and "--seeds" not in rest:
        out += ["--seeds", "0"]
    if predictor and "--strategies" not in rest:
        out += ["--strategies", *PREDICTOR_VS_PROFILE]
    return out


if __name__ == "__main__":
    raise SystemExit(main(_argv(sys.argv[1:])))
