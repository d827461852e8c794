"""What a search may spend: ``Budget`` (the limits a user sets) and ``Meter`` (what one search call has spent).

This is the one home of the budget check: every engine asks :meth:`Meter.exhausted` whether another trial may
start (the Ray searcher too, through the same meter on the driver).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError, check_positive

__all__ = ["Budget", "Meter"]


@dataclass(frozen=True)
class Budget:
    """How much one ``search()`` call may spend: trials, wall-clock seconds and/or compute; the first reached stops it.

    ``compute`` is counted in full-finetune-epoch equivalents: the search's wall time divided by the time of
    one full-finetuning epoch on the same task, measured on the fly (or given as ``epoch_seconds``).
    The trial in flight always finishes, as with Optuna's ``timeout``.
    """

    trials: int | None = None
    seconds: float | None = None
    compute: float | None = None
    epoch_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.trials is not None:
            check_positive("trials", self.trials, "Budget", integer=True)
            object.__setattr__(self, "trials", int(self.trials))
        for name in ("seconds", "compute", "epoch_seconds"):
            value = getattr(self, name)
            if value is not None:
                check_positive(name, value, "Budget")
        if self.trials is None and self.seconds is None and self.compute is None:
            raise ConfigError("A Budget needs at least one of 'trials', 'seconds' or 'compute'; got none. "
                              "Example: Budget(trials=20) or Budget(compute=10) (full-finetune epochs).")

    @classmethod
    def of(cls, value: Budget | int | float | Mapping[str, Any]) -> Budget:
        """An int means trials; a dict holds Budget fields; a Budget passes through."""
        if isinstance(value, Budget):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"trials", "seconds", "compute", "epoch_seconds"}
            if unknown:
                raise ConfigError(f"Unknown Budget field(s) {sorted(unknown)}; use trials, seconds, compute, "
                                  "epoch_seconds.")
            return cls(**value)
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer()
                or value <= 0):
            raise ConfigError(f"The 'budget' parameter of search must be a positive int (trials), a Budget or a "
                              f"dict of Budget fields; got {value!r} instead.")
        return cls(trials=int(value))

    def describe(self) -> str:
        parts = [f"{self.trials} trials" if self.trials else "", f"{self.seconds:g} s" if self.seconds else "",
                 f"{self.compute:g} full-FT epochs" if self.compute else ""]
        return " / ".join(p for p in parts if p)


class Meter:
    """Wall-clock and compute spent by one search call, by phase; user callbacks run outside it (``paused``)."""

    def __init__(self, epoch_seconds: float | None = None) -> None:
        self.epoch_seconds = epoch_seconds
        self.trials = 0
        self.phases: dict[str, float] = {}
        self._start = time.perf_counter()
        self._paused = 0.0

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._start - self._paused

    @property
    def compute(self) -> float:
        """Seconds spent so far in full-finetune-epoch equivalents (nan until ``epoch_seconds`` is known)."""
        return self.seconds / self.epoch_seconds if self.epoch_seconds else float("nan")

    def to_compute(self, seconds: float) -> float:
        return seconds / self.epoch_seconds if self.epoch_seconds else float("nan")

    def add_phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def pause(self) -> "_Pause":
        return _Pause(self)

    def exhausted(self, budget: Budget) -> str | None:
        """The reason the budget is spent, or None."""
        if budget.trials is not None and self.trials >= budget.trials:
            return f"trials ({self.trials}/{budget.trials})"
        if budget.seconds is not None and self.seconds >= budget.seconds:
            return f"seconds ({self.seconds:.1f}/{budget.seconds:g})"
        if budget.compute is not None and self.compute >= budget.compute:
            return f"compute ({self.compute:.2f}/{budget.compute:g} full-FT epochs)"
        return None

    def report(self) -> dict[str, Any]:
        return {"trials": self.trials, "seconds": round(self.seconds, 3),
                "compute": None if math.isnan(self.compute) else round(self.compute, 4),
                "epoch_seconds": self.epoch_seconds, "phases": {k: round(v, 3) for k, v in self.phases.items()}}


class _Pause:
    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.meter._paused += time.perf_counter() - self.t0
