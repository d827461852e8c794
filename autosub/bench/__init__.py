"""The selector benchmark harness: strategies × tasks × training-set sizes × seeds at equal compute.

* :mod:`~autosub.bench.tasks` — the task registry (``register_task(name, model_fn, data_fn)``);
* :mod:`~autosub.bench.strategies` — the strategy registry (baselines, searches, zero-cost rankings);
* :mod:`~autosub.bench.configs` — named configurations (``micro``, ``quick``, ``cpu``, ``search``, ``gpu``);
* :mod:`~autosub.bench.runner` — cells, resume, budgets; :mod:`~autosub.bench.report` — tables, claims, plots.

``run_benchmark(get_config("quick"), "benchmarks/results/bench/quick")`` runs one end to end.
"""
from __future__ import annotations

from .configs import CONFIGS, BenchConfig, get_config
from .runner import load_cells, run_benchmark, run_cell
from .strategies import (Allowance, BaseStrategy, BudgetExceeded, CellContext, Outcome, get_strategy,
                         register_strategy, strategy_names)
from .tasks import BenchTask, TaskUnavailable, available_tasks, get_task, register_task, task_names

__all__ = ["Allowance", "BaseStrategy", "BenchConfig", "BenchTask", "BudgetExceeded", "CONFIGS", "CellContext",
           "Outcome", "TaskUnavailable", "available_tasks", "get_config", "get_strategy", "get_task", "load_cells",
           "register_strategy", "register_task", "run_benchmark", "run_cell", "strategy_names", "task_names"]
