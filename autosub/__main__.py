"""``python -m autosub`` runs the ``autosub`` command."""
import sys

from .cli import main

sys.exit(main())
