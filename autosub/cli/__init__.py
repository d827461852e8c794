"""The ``autosub`` command (``python -m autosub`` too)."""
from .main import main

__all__ = ["main"]
