"""autosub: automated SubTuning — finetune only the blocks of a pretrained network that matter.

Public names are imported lazily, so ``import autosub`` stays cheap and never imports optional extras (ray,
matplotlib, transformers) until they are used.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Block": "blocks",
    "Partition": "blocks",
    "discover_blocks": "blocks",
    "replace_head": "heads",
    "Task": "data",
    "Split": "data",
    "as_task": "sources",
    "fit": "train",
    "evaluate": "train",
    "FitResult": "train",
    "search": "search",
    "SearchResult": "result",
    "Budget": "space",
    "SearchSpace": "space",
    "profile": "profile",
    "Profile": "profile",
    "greedy": "greedy",
    "GreedyResult": "greedy",
    "ActivationCache": "cache",
    "MemoryBudget": "cache",
    "AutoSubError": "errors",
    "BlockDiscoveryError": "errors",
    "SelectionError": "errors",
    "DataError": "errors",
    "ConfigError": "errors",
    "WeightsError": "errors",
    "MissingDependencyError": "errors",
    "TrialFailed": "errors",
    "SearchAborted": "errors",
}
_SUBMODULES = {"datasets", "zoo", "text"}

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'autosub' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from .blocks import Block, Partition, discover_blocks
    from .cache import ActivationCache, MemoryBudget
    from .data import Split, Task
    from .sources import as_task
    from .errors import (AutoSubError, BlockDiscoveryError, ConfigError, DataError, MissingDependencyError,
                         SearchAborted, SelectionError, TrialFailed, WeightsError)
    from .greedy import GreedyResult, greedy
    from .heads import replace_head
    from .profile import Profile, profile
    from .result import SearchResult
    from .search import search
    from .space import Budget, SearchSpace
    from .train import FitResult, evaluate, fit
