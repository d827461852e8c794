"""The AutoSubError family: one base, each subclass also a builtin so ``except ValueError`` keeps working.

Messages follow one rule: say what was wrong, what was got, and how to fix it.
"""
from __future__ import annotations

import math


__all__ = ["AutoSubError", "BlockDiscoveryError", "ConfigError", "DataError", "MissingDependencyError",
           "SearchAborted", "SelectionError", "TrainingDiverged", "TrialFailed", "TrialOutOfMemory", "WeightsError",
           "check_positive"]


class AutoSubError(Exception):
    """Base class of every error autosub raises on purpose."""


class BlockDiscoveryError(AutoSubError, ValueError):
    """The model's blocks could not be found or the user's ``blocks=`` override is wrong."""


class DataError(AutoSubError, ValueError):
    """The dataset is empty, mislabelled, mis-shaped, or does not fit the model."""


class ConfigError(AutoSubError, ValueError):
    """A hyperparameter, budget or option has an invalid value."""


class SelectionError(ConfigError):
    """A selection (or a list of candidate blocks) names a block that does not exist or is malformed."""


class WeightsError(AutoSubError, ValueError):
    """A weights file is missing, unsafe, or does not fit the architecture."""


class ExportError(AutoSubError, RuntimeError):
    """A model could not be exported for serving (torch.export failed, or the program's outputs differ)."""


class MissingDependencyError(AutoSubError, ImportError):
    """An optional extra (``autosub[ray]``, ``autosub[data]``) is needed but not installed."""


class TrialFailed(AutoSubError, RuntimeError):
    """One trial failed; the search records the reason and goes on."""


class TrainingDiverged(TrialFailed):
    """The loss or the tuned parameters became NaN/Inf: the trial fails (never counts as a result)."""


class TrialOutOfMemory(TrialFailed):
    """The device ran out of memory in a trial; the message says what to lower."""


class SearchAborted(AutoSubError, RuntimeError):
    """The whole search must stop (e.g. the storage is unreachable)."""


def check_positive(name: str, value: float, owner: str, *, integer: bool = False) -> None:
    """Raise ConfigError in scikit-learn's style unless ``value`` is a positive number (an int if ``integer``)."""
    kind = "int" if integer else "finite number"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)
    if integer and ok and not float(value).is_integer():
        ok = False
    if not ok or value != value:  # NaN
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be a positive {kind}; got {value!r} instead."
        )
