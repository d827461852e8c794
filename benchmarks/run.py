"""The benchmark harness from the command line: ``autosub.bench`` on a named configuration, resumable.

    PYTHONPATH=. python benchmarks/run.py --quick            # <= 5 min on an idle 2-core CPU
    PYTHONPATH=. python benchmarks/run.py --config cpu       # <= 60 min on an idle 2-core CPU
    PYTHONPATH=. python benchmarks/run.py --config search    # the former bench_search.py
    PYTHONPATH=. python benchmarks/run.py --list

Results: benchmarks/results/bench/<config>/ (cells/*.json, report.md, summary.json, *.png). A rerun reuses every
finished cell and recomputes missing or damaged ones.
"""
from __future__ import annotations

import sys

from autosub.cli.bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
