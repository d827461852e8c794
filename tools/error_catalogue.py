"""Write ``docs/errors.md``: the catalogue of rejected inputs, from ``tests/test_rejected_inputs.py``.

Usage (from the repository root)::

    python tools/error_catalogue.py

It runs that test module (every row is checked against the code) with ``AUTOSUB_WRITE_CATALOGUE=1``, which
makes its last test write the table; the exit status is pytest's.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Run the catalogue's tests and write the table; return pytest's exit status."""
    env = {**os.environ, "AUTOSUB_WRITE_CATALOGUE": "1"}
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "tests/test_rejected_inputs.py"], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
