"""Search strategies at equal compute on real low-data MNIST with pretrained EfficientNet-Lite0 — now one
configuration of the benchmark harness (``autosub.bench``), not a second harness.

    PYTHONPATH=. python benchmarks/bench_search.py [--quick] [other benchmarks/run.py options]

is ``benchmarks/run.py --config search``: greedy (the paper's rule, run trial by trial inside the budget), random
subsets, TPE without a prior and TPE with the profile prior on ``lite0-mnist`` (200 training examples, 3 seeds),
each with the same compute allowance in full-finetune-epoch equivalents. ``--quick`` runs one seed. Results:
benchmarks/results/bench/search/ (cells, report.md, summary.json, plots). The earlier version's anytime curves
(test accuracy of every best-so-far model) are not kept: the harness reads test once per cell, after selection.
"""
from __future__ import annotations

import sys

from autosub.cli.bench import main


def _argv(argv: list[str]) -> list[str]:
    quick = "--quick" in argv
    rest = [a for a in argv if a != "--quick"]
    out = ["--config", "search", *rest]
    if quick and "--seeds" not in rest:
        out += ["--seeds", "0"]
    return out


if __name__ == "__main__":
    raise SystemExit(main(_argv(sys.argv[1:])))
