"""A search's trials as fused groups: the :class:`~autosub.hpo.engines.base.GroupRunner` that ``search()`` hands an
engine when ``TrainingConfig.fuse`` is on.

It turns candidates into :class:`~autosub.training.fused.TrialSpec` s of one
:class:`~autosub.training.fused.FusedGroup` — built once per search on the search's working model, blocks, device
and prefix cache, so the trunk copy and the cache are shared by every group the engine runs — and the group's
:class:`~autosub.training.fused.FusedOutcome` s into the engine's :class:`~autosub.hpo.engines.base.MemberOutcome`
(values and attributes exactly as an unfused trial's, through the same ``to_outcome``). The engine decides how many
trials to ask and when; this module only trains them.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Hashable

from ..training.fused import COMPLETE, FAILED, PRUNED, FusedGroup, FusionError, TrialSpec
from ..training.trainer import FitResult
from .budget import BudgetStop
from .engines.base import MemberOutcome, Reporter, TrialOutcome
from .space import Candidate

__all__ = ["SearchGroups"]

log = logging.getLogger(__name__)


class SearchGroups:
    """Fused groups for one search: every trial trains ``epochs`` epochs with ``seed``, as an unfused trial does.

    Args:
        make_group: Builds the :class:`FusedGroup` from the share of the device's memory this process may use
            (called on the first ``add``; may raise :class:`FusionError`).
        to_outcome: A trial's :class:`FitResult` → its :class:`TrialOutcome` (the unfused path's own function).
        epochs: Epochs per trial.
        seed: The trials' seed (heads, data order).
        max_trials: The most trials one group trains at once.
        tensors: A trained model and its selection → the tuned tensors a checkpoint holds (a Ray group saves each
            member's; see :func:`autosub.model.subtune.tuned_tensors`).
    """

    def __init__(self, make_group: Callable[[float], FusedGroup], to_outcome: Callable[[FitResult], TrialOutcome], *,
                 epochs: int, seed: int, max_trials: int,
                 tensors: Callable[[Any, Any], dict[str, Any]] | None = None) -> None:
        self._make, self._to_outcome, self.tensors = make_group, to_outcome, tensors
        self.epochs, self.seed, self.max_trials = int(epochs), int(seed), int(max_trials)
        self._group: FusedGroup | None = None
        self.broken = ""  # why this model cannot be fused (then every trial trains alone)
        self.memory_share = 1.0  # a Ray worker on a fractional GPU sets its share before the first group

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_group": None}  # a Ray worker builds its own group (trunk copy, device)

    def fusable(self, candidate: Candidate) -> str:
        """Why ``candidate`` trains alone: the model cannot be fused (found on the first group); else ""."""
        return self.broken

    def open(self) -> "SearchGroups":
        return self

    # -- the TrialGroup protocol -----------------------------------------------------------------------------
    @property
    def active(self) -> list[Hashable]:
        return self._group.active if self._group is not None else []

    def add(self, key: Hashable, candidate: Candidate, report: Reporter) -> bool:
        """Add one trial; False when it does not fit the group's memory limit now.

        Raises:
            FusionError: this model cannot be trained fused (recorded in :attr:`broken`: later trials train alone).
        """
        try:
            if self._group is None:
                self._group = self._make(self.memory_share)
            spec = TrialSpec(candidate.selection, lr=candidate.lr, weight_decay=candidate.weight_decay,
                             lr_multipliers=dict(candidate.lr_multipliers) or None, epochs=self.epochs,
                             seed=self.seed, key=key, callback=report)
            return bool(self._group.add(spec, partial=True))
        except FusionError as exc:
            self.broken = f"the model cannot be trained fused: {exc}"
            log.warning("fused search: %s; trials train one at a time", exc)
            raise

    def run_epoch(self) -> None:
        if self._group is not None:
            self._group.run_epoch()

    def pop_finished(self) -> list[MemberOutcome]:
        if self._group is None:
            return []
        out = []
        for o in self._group.pop_finished():
            if o.status == COMPLETE:
                out.append(MemberOutcome(o.key, "complete", self._to_outcome(o.result), None, o.seconds))
            else:
                pruned = o.status == PRUNED or isinstance(o.error, BudgetStop)
                out.append(MemberOutcome(o.key, "pruned" if pruned else "failed", None, o.error, o.seconds))
        return out

    def fail_all(self, error: BaseException) -> list[MemberOutcome]:
        if self._group is not None:
            for key in self._group.active:
                self._group.remove(key, status=FAILED, error=error)
        return self.pop_finished()
