"""autosub: automated SubTuning — finetune only the blocks of a pretrained network that matter.

The package is grouped by concern (as Optuna groups ``samplers/``, ``pruners/``, ``storages/``); data flows
downward: ``cli`` → ``hpo`` / ``deploy`` → ``selection`` → ``training`` → ``model`` / ``data`` → ``errors``.

* :mod:`autosub.model` — what a network is to autosub: blocks, heads, freezing, boundaries, cost, the zoo;
* :mod:`autosub.data` — tasks and splits, ``as_task``, the shipped datasets;
* :mod:`autosub.training` — run one selection: the setup path, the trainer, the prefix cache, checkpoints;
* :mod:`autosub.selection` — rate blocks: the finetuning profile, greedy, the prior;
* :mod:`autosub.hpo` — the search: ``search()``, spaces, budgets, selectors, engines (Optuna, Ray), results;
* :mod:`autosub.deploy` — deltas (``export``, ``load_delta``) and ``MultiTaskModel`` (many tasks, one trunk);
* :mod:`autosub.report` — plots; :mod:`autosub.cli` — the ``autosub`` command.

Public names are imported lazily, so ``import autosub`` stays cheap and never imports optional extras (ray,
matplotlib, transformers) until they are used.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _compat
from ._version import __version__

_EXPORTS: dict[str, str] = {
    "Block": "model.blocks",
    "Partition": "model.blocks",
    "discover_blocks": "model.blocks",
    "replace_head": "model.heads",
    "Task": "data.task",
    "Split": "data.task",
    "as_task": "data.sources",
    "fit": "training.trainer",
    "evaluate": "training.trainer",
    "FitResult": "training.trainer",
    "ActivationCache": "training.cache",
    "MemoryBudget": "training.cache",
    "profile": "selection.profiling",
    "Profile": "selection.profiling",
    "greedy": "selection.greedy_selection",
    "predict_blocks": "selection.predictor",
    "LayerPredictor": "selection.predictor",
    "BlockPrediction": "selection.predictor",
    "block_stats": "selection.stats",
    "GreedyResult": "selection.greedy_selection",
    "search": "hpo.searching",
    "SearchResult": "hpo.result",
    "Budget": "hpo.budget",
    "SearchSpace": "hpo.space",
    "TrainingConfig": "hpo.config",
    "RunConfig": "hpo.config",
    "OptunaBackend": "hpo.backends",
    "RayBackend": "hpo.backends",
    "export": "deploy.delta",
    "load_delta": "deploy.delta",
    "Delta": "deploy.delta",
    "MultiTaskModel": "deploy.multitask",
    "export_program": "deploy.serving",
    "AutoSubError": "errors",
    "BlockDiscoveryError": "errors",
    "SelectionError": "errors",
    "DataError": "errors",
    "ConfigError": "errors",
    "WeightsError": "errors",
    "MissingDependencyError": "errors",
    "ExportError": "errors",
    "TrialFailed": "errors",
    "TrainingDiverged": "errors",
    "TrialOutOfMemory": "errors",
    "SearchAborted": "errors",
}
# Public submodules reachable as attributes (``from autosub import zoo``); ``import autosub.zoo`` works too.
_SUBMODULES = {"datasets": "data.datasets", "zoo": "model.zoo", "text": "model.text"}

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])

_compat.install(__name__, public={f"{__name__}.{k}": f"{__name__}.{v}" for k, v in _SUBMODULES.items()})


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    raise AttributeError(f"module 'autosub' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from .data.sources import as_task
    from .data.task import Split, Task
    from .deploy.delta import Delta, export, load_delta
    from .deploy.multitask import MultiTaskModel
    from .deploy.serving import export_program
    from .errors import (AutoSubError, BlockDiscoveryError, ConfigError, DataError, ExportError,
                         MissingDependencyError, SearchAborted, SelectionError, TrainingDiverged, TrialFailed,
                         TrialOutOfMemory, WeightsError)
    from .hpo.backends import OptunaBackend, RayBackend
    from .hpo.budget import Budget
    from .hpo.config import RunConfig, TrainingConfig
    from .hpo.result import SearchResult
    from .hpo.searching import search
    from .hpo.space import SearchSpace
    from .model.blocks import Block, Partition, discover_blocks
    from .model.heads import replace_head
    from .selection.greedy_selection import GreedyResult, greedy
    from .selection.predictor import BlockPrediction, LayerPredictor, predict_blocks
    from .selection.profiling import Profile, profile
    from .selection.stats import block_stats
    from .training.cache import ActivationCache, MemoryBudget
    from .training.trainer import FitResult, evaluate, fit
