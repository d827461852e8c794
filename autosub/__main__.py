"""``python -m autosub`` runs the ``autosub`` command."""
from .cli.main import console

console()
