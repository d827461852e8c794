"""Engines run what a selector proposes: every engine takes a :class:`Job` and returns an :class:`EngineRun`.

* :class:`Engine` (``base.py``) — the contract: the constructor validates and opens the storage before any work,
  ``load_state()`` reads what an earlier run recorded, ``run(job)`` runs the trials;
* ``_study.py`` — the one study bookkeeping, on Optuna's public API, that both engines use by composition;
* ``optuna.py`` — :class:`~autosub.hpo.engines.optuna.OptunaEngine`, in process (``study.optimize``);
* ``ray.py`` + ``ray_search.py`` — ``RayEngine``, a Ray Tune experiment (imported only for ``backend="ray"``).

Engines are built by a backend (:func:`autosub.hpo.backends.resolve_backend` then ``backend.engine(...)``).
"""
from __future__ import annotations

from ._study import Hooks, StudyBook, StudyStore, count_spent, default_storage, mask_url, open_storage, to_record
from .base import Engine, EngineRun, Job, Reporter, TrialOutcome

__all__ = ["Engine", "EngineRun", "Hooks", "Job", "Reporter", "StudyBook", "StudyStore", "TrialOutcome",
           "count_spent", "default_storage", "mask_url", "open_storage", "to_record"]
