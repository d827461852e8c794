"""The Optuna engine's logging: autosub's own TrialFailed verdicts are one line, real failures keep their trace."""
from __future__ import annotations

import logging

import optuna

from autosub.errors import TrialFailed
from autosub.hpo.engines.optuna import OPTIMIZE_LOGGER, _quiet


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_trialfailed_verdict_is_logged_without_a_traceback_a_training_error_with_one():
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 0:
            raise TrialFailed("trial 0 not run: the budget has 0.1 s left")
        try:
            raise ValueError("loss is NaN")
        except ValueError as exc:
            raise TrialFailed("trial 1 failed: loss is NaN") from exc
        return x

    keep = _Keep()
    logger = logging.getLogger(OPTIMIZE_LOGGER)
    logger.addHandler(keep)
    try:
        with _quiet():
            study = optuna.create_study()
            study.optimize(objective, n_trials=2, catch=(TrialFailed,))
    finally:
        logger.removeHandler(keep)
    failed = {r.getMessage().split()[1]: r for r in keep.records if "failed with parameters" in r.getMessage()}
    assert set(failed) == {"0", "1"}
    assert "not run: the budget" in failed["0"].getMessage() and failed["0"].exc_info is None
    assert failed["1"].exc_info is not None and isinstance(failed["1"].exc_info[1].__cause__, ValueError)
    assert not logger.filters  # the filter is gone after the search
