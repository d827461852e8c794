"""Run a benchmark configuration cell by cell: one JSON per (task, size, strategy, seed), resumable.

For each task × size × seed the task is loaded once and the compute unit (one full-finetune epoch, measured with
:func:`autosub.hpo.calibration.measure_epoch_seconds`) is measured once and stored, so every strategy of that
group is charged in the same unit — also after a resume. Each strategy then runs on the task *without its test
split*; the runner scores the returned model on the test split afterwards (the only read of test) and writes the
cell atomically. A cell file that is missing, unreadable, truncated or from another configuration is recomputed.

A strategy's compute is measured on the runner's clock (wall time / unit). A cell over ``budget × (1 + tolerance)``
is flagged ``over_budget`` and left out of the tables; a strategy that trips its allowance is cut
(``status="cut"``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from .._io import read_json, write_json
from .._version import __version__
from ..errors import AutoSubError, MissingDependencyError
from ..hpo.calibration import measure_epoch_seconds
from ..model.cost import try_count_flops
from ..training.setup import prepare, selection_view
from ..training.trainer import evaluate
from .configs import BenchConfig
from .strategies import Allowance, BudgetExceeded, CellContext, Outcome, get_strategy
from .tasks import TaskUnavailable, get_task

__all__ = ["CELL_VERSION", "cell_path", "load_cells", "machine_info", "run_benchmark", "run_cell"]

log = logging.getLogger(__name__)

CELL_VERSION = 1
_REQUIRED = ("version", "key", "fingerprint", "status")


def cell_name(task: str, size: int | None, strategy: str, seed: int) -> str:
    return f"{task}__n{'all' if size is None else size}__{strategy}__s{seed}.json"


def cell_path(out: Path, task: str, size: int | None, strategy: str, seed: int) -> Path:
    return Path(out) / "cells" / cell_name(task, size, strategy, seed)


def fingerprint(config: BenchConfig, strategy: str) -> str:
    """What a cell's result depends on besides its key: a changed budget or epoch count invalidates old cells."""
    fields = {k: v for k, v in config.to_dict().items() if k not in ("name", "tasks", "strategies", "sizes", "seeds",
                                                                     "threads")}
    fields["strategy"] = get_strategy(strategy).describe()
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_cell(path: Path, fp: str) -> dict[str, Any] | None:
    """A finished cell, or None when it must be (re)computed: missing, corrupt, or from another configuration."""
    if not path.is_file():
        return None
    try:
        cell = read_json(path, what="benchmark cell", required=_REQUIRED)
    except Exception as exc:  # noqa: BLE001 - a damaged cell is recomputed, never trusted
        log.warning("recomputing %s: %s", path.name, exc)
        return None
    if cell.get("version") != CELL_VERSION or cell.get("fingerprint") != fp:
        log.warning("recomputing %s: written by another configuration", path.name)
        return None
    if cell.get("status") in ("ok", "over_budget") and "test" not in cell:
        log.warning("recomputing %s: no test score", path.name)
        return None
    return cell


def machine_info() -> dict[str, Any]:
    """CPU, cores, accelerator, library versions and the load average (the machine is often shared)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None, "autosub": __version__}


def _unit(out: Path, task_name: str, size: int | None, seed: int, setup: Any, config: BenchConfig) -> float:
    """The compute unit of one (task, size, seed) group, measured once and reused (so a resume charges alike)."""
    path = Path(out) / "units" / f"{task_name}__n{'all' if size is None else size}__s{seed}.json"
    try:
        return float(read_json(path, what="benchmark unit", required=("epoch_seconds",))["epoch_seconds"])
    except Exception:  # noqa: BLE001 - absent or damaged: measure again
        pass
    es = measure_epoch_seconds(setup.work, setup.view, setup.partition, batch_size=config.batch_size,
                               device=setup.device, steps=3)
    write_json({"epoch_seconds": es, "task": task_name, "size": size, "seed": seed, "loadavg": os.getloadavg()},
               path)
    return es


def _accounting(setup: Any) -> Callable[[Any], tuple[int, float | None]]:
    """selection → (trainable parameters, added inference cost as a FLOP share), the same way for every strategy."""
    work, part = setup.work, setup.partition
    head = set(part.head)
    head_params = sum(p.numel() for n, p in work.named_parameters() if n in head)
    total = sum(p.numel() for p in work.parameters())
    flops = try_count_flops(work, part, setup.example(), owner="bench")

    def account(sel: Any) -> tuple[int, float | None]:
        if sel == "probe" or sel == ():
            return head_params, 0.0
        if sel == "all":
            return total, flops.added_cost(tuple(range(len(part)))) if flops else None
        sel = tuple(int(b) for b in sel)
        return (head_params + sum(part[b].num_params for b in sel),
                float(flops.added_cost(sel)) if flops else None)

    return account


def run_cell(config: BenchConfig, strategy: str, task_name: str, size: int | None, seed: int, *, model: Any,
             task: Any, unit: float, account: Callable[[Any], tuple[int, float | None]]) -> dict[str, Any]:
    """Run one strategy on one task (test split withheld), then score its model on test; the cell's record."""
    strat = get_strategy(strategy)
    budget, epochs = config.budget_for(len(task.train)), config.fit_epochs(len(task.train))
    key = {"task": task_name, "size": size, "strategy": strategy, "seed": seed}
    base = {"version": CELL_VERSION, "key": key, "fingerprint": fingerprint(config, strategy),
            "budget": budget, "epochs": epochs, "epoch_seconds": unit, "n_train": len(task.train), "n_val": len(task.val),
            "family": strat.family}
    view = selection_view(task)  # the strategy never sees test
    allowance = Allowance(budget, unit)
    ctx = CellContext(model=model, task=view, allowance=allowance, seed=seed, epochs=epochs,
                      batch_size=config.batch_size, device=config.device, max_blocks=config.max_blocks,
                      options=dict(config.options))
    if config.trials is not None:
        ctx.options["trials"] = config.trials
    _configure(strat, config)
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    status, reason = "ok", None
    try:
        outcome: Outcome = strat.run(ctx)
    except BudgetExceeded as exc:
        return {**base, "status": "cut", "reason": str(exc), "wall_s": round(time.perf_counter() - t0, 3),
                "compute": round(allowance.spent, 4)}
    except AutoSubError as exc:
        return {**base, "status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                "wall_s": round(time.perf_counter() - t0, 3)}
    wall = time.perf_counter() - t0
    compute = wall / unit
    if compute > budget * (1 + config.tolerance):
        status, reason = "over_budget", f"spent {compute:.2f} full-FT epochs of {budget:g} (+{config.tolerance:.0%} tolerance)"
    test = float(evaluate(outcome.model, task.test, device=config.device))  # the one read of test: after selection
    base["n_test"] = len(task.test)
    params, cost = account(outcome.selection)
    sel = outcome.selection if isinstance(outcome.selection, str) else [int(b) for b in outcome.selection]
    return {**base, "status": status, "reason": reason, "test": test, "val": float(outcome.val_score),
            "selection": sel, "n_blocks": None if isinstance(sel, str) else len(sel), "compute": round(compute, 4),
            "wall_s": round(wall, 3), "trainable_params": int(params), "added_cost": cost,
            "hparams": outcome.hparams, "extra": outcome.extra, "loadavg": [round(load0, 2),
                                                                           round(os.getloadavg()[0], 2)]}


def _configure(strat: Any, config: BenchConfig) -> None:
    """Config-level grids and caps onto the strategy (the full-FT baseline's lr grid, the searches' trial cap)."""
    from .strategies import FullFinetune, SearchStrategy

    if isinstance(strat, FullFinetune):
        strat.lrs = tuple(config.full_lrs)
    if isinstance(strat, SearchStrategy):
        strat.trials = config.trials


def run_benchmark(config: BenchConfig, out: str | Path, *, command: str | None = None,
                  echo: Callable[[str], None] | None = None, max_seconds: float | None = None) -> dict[str, Any]:
    """Run every missing cell of ``config`` into ``out`` (resuming), then write the report; returns the summary.

    ``max_seconds``: start no new (task, size, seed) group after this long; the report then covers what finished
    (``meta.stopped_early``) and a rerun continues where this one stopped.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:  # torch's threads and the BLAS / OpenMP pools scikit-learn and numpy use, alike
        torch.set_num_threads(config.threads)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=config.threads):
            return _run(config, out, command=command, echo=echo, max_seconds=max_seconds)
    return _run(config, out, command=command, echo=echo, max_seconds=max_seconds)


def _run(config: BenchConfig, out: Path, *, command: str | None, echo: Callable[[str], None] | None,
         max_seconds: float | None) -> dict[str, Any]:
    from .report import write_report

    say = echo or (lambda s: log.info("%s", s))
    _warm_imports()
    started, load0 = time.time(), os.getloadavg()
    unavailable: dict[str, str] = {}
    for name in config.strategies:
        why = get_strategy(name).availability()
        if why:
            unavailable[name] = why
    strategies = [s for s in config.strategies if s not in unavailable]
    ran = skipped = 0
    stopped = False
    # cells done / left with an ETA (on a terminal; off when output is captured)
    bar = tqdm(total=len(config.tasks) * len(config.sizes) * len(config.seeds) * len(strategies), desc="bench",
               unit="cell", disable=None)
    for task_name in config.tasks:
        if stopped:
            break
        bt = get_task(task_name)
        why = bt.availability()
        if why:
            unavailable[task_name] = why
            say(f"task {task_name}: unavailable ({why})")
            continue
        model = None
        for size in config.sizes:
            for seed in config.seeds:
                todo = [s for s in strategies
                        if read_cell(cell_path(out, task_name, size, s, seed), fingerprint(config, s)) is None]
                skipped += len(strategies) - len(todo)
                bar.update(len(strategies) - len(todo))
                if not todo:
                    continue
                if max_seconds is not None and time.time() - started > max_seconds:
                    stopped = True
                    say(f"stopping: {max_seconds:g} s reached; rerun to continue")
                    break
                try:
                    model, task = bt.load(size=size, seed=seed, model=model,
                                          options={"image_size": config.image_size, "max_length": config.max_length,
                                                   "val_size": config.val_size})
                except (TaskUnavailable, MissingDependencyError) as exc:
                    unavailable[task_name] = str(exc)
                    say(f"task {task_name}: unavailable ({exc})")
                    break
                setup = prepare(model, task, seed=seed, device=config.device)
                unit = _unit(out, task_name, size, seed, setup, config)
                account = _accounting(setup)
                del setup
                for s in todo:
                    cell = run_cell(config, s, task_name, size, seed, model=model, task=task, unit=unit,
                                    account=account)
                    write_json(cell, cell_path(out, task_name, size, s, seed))
                    ran += 1
                    bar.update(1)
                    say(_line(cell))
            if task_name in unavailable or stopped:
                break
    bar.close()
    meta = {"config": config.to_dict(), "command": command, "machine": machine_info(), "loadavg_start": list(load0),
            "loadavg_end": list(os.getloadavg()), "wall_s": round(time.time() - started, 1), "cells_run": ran,
            "cells_reused": skipped, "stopped_early": stopped, "unavailable": unavailable, "autosub_version": __version__}
    return write_report(out, config, load_cells(out, config), meta)


def _warm_imports() -> None:
    """Import the solvers' libraries before any clock starts, so no strategy is charged for an import."""
    import optuna
    import sklearn.linear_model  # noqa: F401

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def load_cells(out: str | Path, config: BenchConfig) -> list[dict[str, Any]]:
    """Every valid cell of ``config`` under ``out`` (corrupt or foreign ones are skipped)."""
    cells = []
    for t in config.tasks:
        for n in config.sizes:
            for s in config.strategies:
                for seed in config.seeds:
                    try:
                        fp = fingerprint(config, s)
                    except AutoSubError:
                        continue
                    cell = read_cell(cell_path(out, t, n, s, seed), fp)
                    if cell is not None:
                        cells.append(cell)
    return cells


def _line(cell: dict[str, Any]) -> str:
    k = cell["key"]
    head = f"{k['task']:16s} n={str(k['size']):>4s} {k['strategy']:14s} s{k['seed']}"
    if "test" not in cell:
        return f"{head} {cell['status']}: {cell.get('reason')}"
    return (f"{head} val {cell['val']:.3f} test {cell['test']:.3f} sel {cell['selection']} "
            f"compute {cell['compute']:.1f}/{cell['budget']:g} [{cell['wall_s']:.0f}s] {cell['status']}")


def iter_keys(config: BenchConfig) -> Iterable[tuple[str, int | None, str, int]]:
    for t in config.tasks:
        for n in config.sizes:
            for s in config.strategies:
                for seed in config.seeds:
                    yield t, n, s, seed
