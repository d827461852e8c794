"""``autosub report RUN_DIR``: one self-contained HTML page (inline SVG, no external references) of a run."""
from __future__ import annotations

import argparse
from typing import Any

from .common import Session
from .options import add_output_options

__all__ = ["add_parser", "run"]

EXAMPLES = """examples:
  autosub report autosub-runs/demo-20250101-120000            # writes RUN_DIR/report.html
  autosub report runs/mnist --output mnist-report.html
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="write RUN_DIR/report.html: figures, the final table, config and command",
                       description="One self-contained HTML file from whatever RUN_DIR holds: the final table "
                       "(linear probe / full finetuning / the chosen selection), the chosen blocks on the block "
                       "diagram, the profile with error bars and baselines, the pair heatmap, the greedy path, the "
                       "search history (score vs trial and vs compute), the Pareto front, and the config and "
                       "command that produced it.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir_path", metavar="RUN_DIR", help="a directory written by an autosub command")
    p.add_argument("-o", "--output", default=None, help="the HTML file to write (default: RUN_DIR/report.html)")
    add_output_options(p, config=False)
    p.set_defaults(func=run, parser=p)
    return p


def run(session: Session) -> dict[str, Any]:
    from ..report.html import build_report

    path = build_report(session.args.run_dir_path, session.args.output)
    session.say(f"Report: {path}")
    return {"command": "report", "report": str(path), "run_dir": session.args.run_dir_path}
