"""What a search may spend: ``Budget`` (the limits a user sets) and ``Meter`` (what the search has spent).

**The budget is the study's total.** Trials, seconds and compute count everything the study has spent, across
every call and every worker that ran it: a ``resume=True`` call with the same budget finishes it, and extending a
finished search takes an explicitly bigger budget. A time or compute budget is kept to within one epoch: after
every epoch a trial asks :meth:`Meter.epoch_fits`; when the next epoch would end past the limit the trial stops
there (:class:`BudgetStop`, recorded PRUNED at its last epoch), and a trial whose first epoch cannot finish in time
is not started.

**Several workers of one study** (``resume="join"``, each a ``search()`` call in its own process or machine):

* ``Budget(seconds=S)`` is the search's **wall clock**, as ``timeout``/``time_budget_s`` is for one Optuna or Ray
  Tune run: the time during which at least one worker of the study ran (the union of the workers' intervals).
  Workers that overlap share one deadline, the first worker's start + S — a worker that joins 50 s into a 60-s
  search gets 10 s, and every worker stops starting trials whose first epoch cannot end before it and stops its
  running trial at its last epoch that does. It is not a sum of worker-seconds: that is what ``compute`` counts.
* ``Budget(compute=C)`` is the search's **work**: every worker's own seconds, summed, in full-FT epochs (N workers
  spend it N times as fast; the compute left is split between the workers running now when a trial asks whether
  its next epoch fits).
* A time when no worker ran does not count. A resume after every worker stopped or died (``resume=True``, or a
  worker joining a study nobody runs) gets a **fresh window for what is left**: its deadline is its own start +
  (S − the wall time of the earlier windows, each up to its workers' last record).

How: every worker records its own clock entry in the study (:meth:`Meter.entry`: its seconds, last beat, phases,
epochs; study user attr ``autosub_clock:<host>:<pid>:<id>``, one key per worker, so concurrent writers never
overwrite each other) after every trial and every few seconds within one (``CLOCK_EVERY``, at an epoch's end),
and reads every other entry back
(:meth:`Meter.sync`): totals are unions and sums computed on read, not one stored total. A worker of this machine
counts as running while its process lives; one of another machine while its last entry is recent (its time then
counts on to now). The clocks of different machines are compared as wall-clock time (``time.time``): keep them
synchronized (NTP). A running worker on another machine is known up to its last record (at most one epoch or one
set-up phase old).

This is the one home of the budget check: every engine asks :meth:`Meter.exhausted` whether another trial may
start — the Optuna engine after each trial, the Ray searcher before it starts one. A Meter that travels to
another process (the Ray searcher unpickled on the head node under Ray Client) keeps counting there on the wall
clock from the same origin, so the same check becomes a deadline there, with no second copy of the rule.
"""
from __future__ import annotations

import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import ConfigError, check_positive

__all__ = ["Budget", "BudgetStop", "Meter"]


class BudgetStop(Exception):
    """Raised by a trial's per-epoch hook when its next epoch would end past the time or compute limit.

    Engines record the trial at its last finished epoch (PRUNED, ``stopped_by`` giving the reason) and end the
    search. (Optuna's ``TrialPruned`` is raised from it by the Optuna engine.)
    """


@dataclass(frozen=True)
class Budget:
    """How much one ``search()`` call may spend: trials, wall-clock seconds and/or compute; the first reached stops it.

    ``seconds`` is the search's wall clock: with several workers of one study, one deadline for all of them (the
    first worker's start + ``seconds``), not a time per worker. ``compute`` is counted in full-finetune-epoch
    equivalents: the search's work (every worker's seconds, summed) divided by the time of one full-finetuning
    epoch on the same task, measured on the fly (or given as ``epoch_seconds``). The limits are the study's
    totals (see the module docs: a resume after every worker stopped gets a fresh window for the seconds left);
    a running trial stops at its last epoch that fits.
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
    """Wall-clock and compute spent by one search call (one worker), by phase, and by the study it works on.

    In this process the clock is ``time.perf_counter``; user callbacks run outside it (``paused``). The study's
    other workers (and the earlier calls of the study) are known from their clock entries (:meth:`entry`), which
    the engines exchange through the study after every trial and every few seconds within one (:meth:`sync`):

    * :attr:`seconds`, the search's **wall time**: the time during which at least one worker of the study ran —
      the union of the workers' intervals. Overlapping workers share one clock (a worker that joins 50 s into a
      60-s search has 10 s left); time when no worker ran is not counted.
    * :attr:`compute`, the search's **work**: every worker's own seconds, summed, in full-FT epochs.

    A pickled copy carries its origin as wall-clock time (``time.time``, comparable across machines with
    synchronized clocks) and counts on from there: a deadline.
    """

    def __init__(self, epoch_seconds: float | None = None) -> None:
        self.epoch_seconds = epoch_seconds
        self.trials = 0
        self.phases: dict[str, float] = {}
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # this call's clock key
        self._wall = False  # True in a copy unpickled elsewhere: the clock is time.time()
        self._start = self._now()
        self._paused = 0.0
        self._epochs: list[float] = []  # wall seconds of the trial epochs seen (the estimate of the next one)
        self._base = 0.0  # the study's wall time outside this worker's interval (before it started)
        self._others = 0.0  # the other workers' own seconds, summed, at the last sync (compute)
        self._live = 0  # other workers running at the last sync: their seconds grow with the clock
        self._sync_at = -math.inf  # wall time of the last sync (never yet)
        self._others_phases: dict[str, float] = {}
        self._workers = 1

    def _now(self) -> float:
        return time.time() if self._wall else time.perf_counter()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_wall": True, "_start": time.time() - self.worker_seconds, "_paused": 0.0}

    @property
    def synced_at(self) -> float:
        """The wall time of the last :meth:`sync` (``-inf`` before one)."""
        return self._sync_at

    @property
    def worker_seconds(self) -> float:
        """This worker's own seconds (this call, from its start, user callbacks excluded)."""
        return self._now() - self._start - self._paused

    @property
    def seconds(self) -> float:
        """The search's wall time so far: this worker's seconds plus the study's time before it started."""
        return self._base + self.worker_seconds

    @property
    def work_seconds(self) -> float:
        """Every worker's own seconds, summed (the other running workers' counted on from the last sync)."""
        grow = self._live * max(0.0, time.time() - self._sync_at) if self._live else 0.0
        return self.worker_seconds + self._others + grow

    @property
    def compute(self) -> float:
        """The study's work so far in full-finetune-epoch equivalents (nan until ``epoch_seconds`` is known)."""
        return self.work_seconds / self.epoch_seconds if self.epoch_seconds else float("nan")

    def to_compute(self, seconds: float) -> float:
        return seconds / self.epoch_seconds if self.epoch_seconds else float("nan")

    def add_phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def pause(self) -> "_Pause":
        return _Pause(self)

    def exhausted(self, budget: Budget, *, trials: int | None = None) -> str | None:
        """Why no further trial may start under ``budget``, or None while it may.

        Args:
            budget: The search's limits.
            trials: The trial count to hold against ``budget.trials``, when it is not this meter's count of
                finished trials (the Ray searcher counts the trials it *started*: Tune runs several at once).

        Returns:
            ``"trials (n/N)"``, ``"seconds (s/S)"`` or ``"compute (c/C full-FT epochs)"`` — the first limit
            reached —, or None.
        """
        n = self.trials if trials is None else trials
        if budget.trials is not None and n >= budget.trials:
            return f"trials ({n}/{budget.trials})"
        if budget.seconds is not None and self.seconds >= budget.seconds:
            return f"seconds ({self.seconds:.1f}/{budget.seconds:g})"
        if budget.compute is not None and self.compute >= budget.compute:
            return f"compute ({self.compute:.2f}/{budget.compute:g} full-FT epochs)"
        return None

    def seconds_left(self, budget: Budget) -> float | None:
        """Wall seconds until the time or compute limit is reached (None without either; ≥ 1 ms).

        The compute left is shared by the workers running now: with ``n`` of them it lasts ``1/n`` as long."""
        left = [budget.seconds - self.seconds] if budget.seconds is not None else []
        if budget.compute is not None and self.epoch_seconds:
            left.append((budget.compute - self.compute) * self.epoch_seconds / (1 + self._live))
        return max(1e-3, min(left)) if left else None

    def entry(self, *, done: bool = False) -> dict[str, Any]:
        """This worker's clock entry, recorded in the study under its own key (no worker overwrites another's)."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "beat": round(time.time(), 4),
                "seconds": round(self.worker_seconds, 4), "done": bool(done),
                "phases": {k: round(v, 4) for k, v in self.phases.items()},
                "epochs": [round(x, 4) for x in self._epochs[-20:]]}

    def sync(self, others: Sequence[Mapping[str, Any]], *, legacy: Mapping[str, Any] | None = None) -> None:
        """Count on from the study's clock: the other workers' entries (each with ``live``: whether it still runs).

        A worker's interval is ``[beat - seconds, beat]`` (its pauses shift its start), extended to now while it
        runs. The study's wall time before this worker started (:attr:`seconds`) is the union of the other
        intervals up to this worker's start; the study's work (:attr:`compute`) sums every worker's seconds.
        ``legacy``: a total recorded by an autosub before per-worker clocks (one ``{"seconds", "phases"}``).
        """
        now = time.time()
        mine = now - self.worker_seconds
        spans, work, live, phases = [], 0.0, 0, {}
        for e in others:
            beat, secs = float(e.get("beat", now)), float(e.get("seconds", 0.0))
            grow = max(0.0, now - beat) if e.get("live") else 0.0
            spans.append((beat - secs, min(beat + grow, mine)))
            work += secs + grow
            live += bool(e.get("live"))
            for k, v in (e.get("phases") or {}).items():
                phases[k] = phases.get(k, 0.0) + float(v)
        old = float((legacy or {}).get("seconds") or 0.0)
        for k, v in ((legacy or {}).get("phases") or {}).items():
            phases[k] = phases.get(k, 0.0) + float(v)
        self._base, self._others, self._live, self._sync_at = _union(spans) + old, work + old, live, now
        self._others_phases, self._workers = phases, 1 + len(others)
        if not self._epochs:  # a new worker estimates its first epoch from the study's latest
            latest = max(others, key=lambda e: float(e.get("beat", 0.0)), default={}) if others else {}
            self._epochs = [float(x) for x in (latest.get("epochs") or (legacy or {}).get("epochs") or [])][-20:]

    def add_epoch(self, seconds: float) -> None:
        """Record the wall time of one trial epoch (feeds :meth:`epoch_fits`)."""
        self._epochs.append(float(seconds))

    @property
    def epoch_estimate(self) -> float | None:
        """The expected wall time of the next trial epoch: the mean of the last five seen (None before one)."""
        last = self._epochs[-5:]
        return sum(last) / len(last) if last else None

    def epoch_fits(self, budget: Budget, seconds: float | None = None) -> bool:
        """Whether one more epoch (``seconds``, default :attr:`epoch_estimate`) ends within the time/compute limit."""
        need = self.epoch_estimate if seconds is None else seconds
        left = self.seconds_left(budget)
        return need is None or left is None or need <= left

    def report(self) -> dict[str, Any]:
        """What the search spent: the study's wall ``seconds`` and ``compute`` (every worker), this call's
        ``worker_seconds``, the number of ``workers`` (calls) the study has had, and the phases summed over them."""
        phases = dict(self._others_phases)
        for k, v in self.phases.items():
            phases[k] = phases.get(k, 0.0) + v
        return {"trials": self.trials, "seconds": round(self.seconds, 3),
                "compute": None if math.isnan(self.compute) else round(self.compute, 4),
                "epoch_seconds": self.epoch_seconds, "worker_seconds": round(self.worker_seconds, 3),
                "work_seconds": round(self.work_seconds, 3), "workers": self._workers,
                "phases": {k: round(v, 3) for k, v in phases.items()}}


def _union(spans: Sequence[tuple[float, float]]) -> float:
    """The total length of the union of intervals ``(start, end)`` (empty ones ignored)."""
    total, reach = 0.0, -math.inf
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if b <= reach:
            continue
        total += b - max(a, reach)
        reach = b
    return total


class _Pause:
    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def __enter__(self) -> None:
        self.t0 = self.meter._now()

    def __exit__(self, *exc: Any) -> None:
        self.meter._paused += self.meter._now() - self.t0
