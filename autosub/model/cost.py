"""Inference cost of a selection: the FLOP share a tuned task adds when it forks from a shared frozen trunk.

In a multi-task deployment the frozen prefix runs once for all tasks; a task whose first tuned block is ``i``
must run blocks ``i..n-1`` and the head on its own. That share of the model's FLOPs is the *added inference
cost* of the selection (0 < cost ≤ 1; full finetuning costs 1).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .blocks import Partition
from ..data.task import Inputs
from ..errors import ConfigError
from .splitting import eval_mode
from .subtune import FULL, Selection

__all__ = ["FlopProfile", "added_cost", "count_flops", "try_count_flops"]

log = logging.getLogger(__name__)


def added_cost(shares: Sequence[float], selection: Selection) -> float:
    """The added inference cost of ``selection`` from per-boundary fork shares (``shares[i]``: the FLOP share from
    block ``i`` on; ``shares[n]``: the head side only). It depends only on the first tuned block; full FT costs 1."""
    if selection == FULL:
        return 1.0
    return float(shares[min(selection) if selection else len(shares) - 1])


@dataclass(frozen=True)
class FlopProfile:
    """FLOPs of one forward on one example: the stem, each block, and everything after the last block."""

    stem: float
    blocks: tuple[float, ...]
    tail: float

    @property
    def total(self) -> float:
        return self.stem + sum(self.blocks) + self.tail

    def fork_share(self, boundary: int) -> float:
        """Share of the FLOPs from block ``boundary`` (``len(blocks)`` = only the head side) to the output."""
        after = sum(self.blocks[boundary:]) + self.tail
        return after / self.total if self.total > 0 else 1.0

    def shares(self) -> list[float]:
        """The fork share at every boundary 0..n (n = only the head side)."""
        return [self.fork_share(b) for b in range(len(self.blocks) + 1)]

    def added_cost(self, selection: Selection) -> float:
        """The added inference cost of ``selection`` (1.0 for full finetuning)."""
        return added_cost(self.shares(), selection)


def count_flops(model: nn.Module, partition: Partition, example: Inputs) -> FlopProfile:
    """Count FLOPs per block with torch's FlopCounterMode on a one-example batch."""
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    counts = counter.get_flop_counts()
    root = type(model).__name__

    def flops_of(paths) -> float:
        return float(sum(sum(counts.get(f"{root}.{p}", {}).values()) for p in paths))

    blocks = tuple(flops_of(b.modules) for b in partition)
    stem_paths = {name.rsplit(".", 1)[0] for name in partition.stem if "." in name}
    stem = flops_of(_outermost(stem_paths))
    total = float(counter.get_total_flops())
    return FlopProfile(stem=stem, blocks=blocks, tail=max(0.0, total - stem - sum(blocks)))


def try_count_flops(model: nn.Module, partition: Partition, example: Inputs, *, required: bool = False,
                    owner: str = "autosub") -> FlopProfile | None:
    """:func:`count_flops`, or None with a warning when the model's FLOPs cannot be counted (``required`` → error).

    The cost is informative for profiles and single-objective searches, so they go on without it; a search that
    optimizes or constrains the added cost cannot.
    """
    try:
        return count_flops(model, partition, example)
    except Exception as exc:
        if required:
            raise ConfigError(f"{owner} needs the added inference cost, but the model's FLOPs could not be counted "
                              f"({type(exc).__name__}: {exc}); drop the cost objective / max_added_cost.") from exc
        log.warning("%s: could not count FLOPs (%s: %s); the added inference cost is not recorded", owner,
                    type(exc).__name__, exc)
        return None


def _outermost(paths: set[str]) -> set[str]:
    """Drop paths nested inside another path of the set, so no FLOP is counted twice."""
    return {p for p in paths if not any(p != q and p.startswith(q + ".") for q in paths)}
