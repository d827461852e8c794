"""Greedy SubTuning (the paper's selection): add (or remove) the block that helps most until the gain falls under ε.

Two stopping rules, both on validation scores (or k-fold cross-validation on train+val merged; never test):

* ``stopping="strict"`` — the paper's text. *Forward*: from the linear probe, add the best block while its gain
  over the current subset is at least ε; stop at the first step whose best gain is below ε and return the current
  subset (the block that failed is not added). *Backward*: from all candidate blocks, remove the block whose removal
  costs least while that cost is below ε (gain > −ε); stop at the first step where every removal costs ε or more.
* ``stopping="official"`` — the official code (``GreedySubsetSearch.search``): it always moves to the best
  candidate; a step that beats the best score seen so far (by any margin, even < ε) becomes the new best; it stops
  only when a step falls more than ε *below the best score seen*, or after every block was added / removed; it
  returns the best subset ever seen, not the last one.

Where they differ: (1) strict stops on a gain < ε, official keeps going through plateaus and small drops (within
ε of the best) and can find a better subset behind them; (2) official accepts a block that improves by less than
ε (any improvement makes a new best), strict never does; (3) official returns the best subset of the path (strict:
the last accepted one). Two deliberate differences from the official code in both modes: the official code scores
on the test split when its cross-validation is off (here: the validation split or folds of train+val), and it
breaks ties by iteration order while autosub breaks them by lower block index (the same order for its layer lists).

Computation is shared: one prefix cache (one pass, every candidate boundary) serves every fit. With cross-validation
the folds differ but a frozen prefix's output for an example does not depend on the fold, so one cache is filled
over train+val merged and each fold reads its rows through a view: k folds cost one prefix pass, not k.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._io import read_artifact, write_json
from .._version import __version__
from ..data.task import Task
from ..errors import ConfigError, check_positive
from ..model.blocks import Partition
from ..model.subtune import normalize_blocks
from ..training.cache import ActivationCache
from ..training.folds import CacheView, cv_folds_of
from ..training.setup import BlocksSpec, build_cache, check_task, prepare
from ..training.trainer import fit
from .profiling import candidates_arg

__all__ = ["DIRECTIONS", "STOPPINGS", "GreedyResult", "GreedyStep", "greedy", "greedy_search"]

log = logging.getLogger(__name__)

DIRECTIONS = ("forward", "backward")
STOPPINGS = ("strict", "official")
Subset = tuple[int, ...]


@dataclass
class GreedyStep:
    """One greedy step: every candidate's score from ``start``, the chosen move and what happened to it."""

    step: int
    start: Subset
    candidates: dict[int, float]
    chosen: int
    selection: Subset
    score: float
    gain: float
    accepted: bool
    new_best: bool

    def to_dict(self) -> dict:
        return {"step": self.step, "start": list(self.start),
                "candidates": {str(k): v for k, v in self.candidates.items()}, "chosen": self.chosen,
                "selection": list(self.selection), "score": self.score, "gain": self.gain, "accepted": self.accepted,
                "new_best": self.new_best}

    @classmethod
    def from_dict(cls, d: dict) -> "GreedyStep":
        return cls(step=int(d["step"]), start=tuple(d["start"]), candidates={int(k): float(v) for k, v in
                   d["candidates"].items()}, chosen=int(d["chosen"]), selection=tuple(d["selection"]),
                   score=float(d["score"]), gain=float(d["gain"]), accepted=bool(d["accepted"]),
                   new_best=bool(d["new_best"]))


@dataclass
class GreedyResult:
    """The chosen subset, its score, and the whole path (every candidate's score at every step)."""

    selection: Subset
    score: float
    path: list[GreedyStep]
    start_score: float
    stop_reason: str
    cost_seconds: float = 0.0
    n_fits: int = 0
    config: dict = field(default_factory=dict)
    version: str = ""

    @property
    def first_pick(self) -> int | None:
        return self.path[0].chosen if self.path else None

    def to_dict(self) -> dict:
        return {"autosub_version": self.version, "selection": list(self.selection), "score": self.score,
                "path": [s.to_dict() for s in self.path], "start_score": self.start_score,
                "stop_reason": self.stop_reason, "cost_seconds": self.cost_seconds, "n_fits": self.n_fits,
                "config": self.config}

    @classmethod
    def from_dict(cls, d: dict) -> "GreedyResult":
        return cls(selection=tuple(d["selection"]), score=float(d["score"]),
                   path=[GreedyStep.from_dict(s) for s in d["path"]], start_score=float(d["start_score"]),
                   stop_reason=d["stop_reason"], cost_seconds=float(d.get("cost_seconds", 0.0)),
                   n_fits=int(d.get("n_fits", 0)), config=dict(d.get("config", {})),
                   version=str(d.get("autosub_version", "")))

    def save(self, path: str | Path) -> Path:
        """Write sorted-key JSON (with the autosub version) and return the path."""
        return write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> "GreedyResult":
        """Read a saved greedy result; a truncated, corrupt or newer-version file raises a clear WeightsError."""
        return read_artifact(path, cls.from_dict, what="greedy result",
                             required=("selection", "score", "path", "start_score", "stop_reason"))


def greedy(
    model: nn.Module,
    task: Task,
    *,
    blocks: BlocksSpec = None,
    candidates: Sequence[int] | None = None,
    partition: Partition | None = None,
    direction: str = "forward",
    epsilon: float = 0.005,
    max_blocks: int | None = None,
    stopping: str = "strict",
    cv_folds: int | None = None,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device | None = None,
    cache: bool | ActivationCache = True,
    progress: bool = True,
) -> GreedyResult:
    """Greedy SubTuning over the ``candidates`` (default: all blocks): forward adds, backward removes, until the
    gain is < ε. ``blocks``: the discovery override or a Partition, as in :func:`autosub.discover_blocks`.

    Every fit uses the same ``seed`` (same head init and batch order), so candidates are compared on equal terms.
    With ``cv_folds`` the score is the mean over stratified folds of train+val merged (for tiny data).
    """
    _check_args(direction=direction, epsilon=epsilon, max_blocks=max_blocks, stopping=stopping, cv_folds=cv_folds,
                epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    blocks, candidates = candidates_arg(blocks, candidates, "greedy")
    start = time.perf_counter()
    run = prepare(model, task, blocks=partition if partition is not None else blocks, seed=seed, device=device,
                  check=False)
    view, part, dev, work = run.view, run.partition, run.device, run.work
    todo = normalize_blocks(candidates, part, "greedy")
    check_task(run.work, run.view)  # after every argument: a bad one fails before the data is touched
    boundaries = [*todo, len(part)]
    if cv_folds:  # the prefix does not depend on the fold: one cache over train+val, each fold a view of its rows
        merged, split_rows = cv_folds_of(view, cv_folds, seed=seed)
        folds = [t for t, _ in split_rows]
        if isinstance(cache, ActivationCache):
            log.info("greedy: cross-validation builds its own cache over train+val; the given cache is unused")
        base = build_cache(work, part, {"all": merged}, boundaries, device=dev, batch_size=batch_size,
                           progress=progress, cache=cache is not False and cache is not None)
        augmented = view.train_transform is not None
        caches = [CacheView(base, r, augmented=augmented) if base is not None else None for _, r in split_rows]
    else:
        folds = [view]
        caches = [run.cache(boundaries, batch_size=batch_size, progress=progress, cache=cache)]
    del work, run

    bar = tqdm(desc=f"greedy ({direction})", unit="fit", disable=not progress)
    n_fits = 0
    memo: dict[Subset, float] = {}

    def score(sel: Subset) -> float:
        nonlocal n_fits
        if sel not in memo:
            vals = []
            for fold, c in zip(folds, caches):
                r = fit(model, fold, sel, blocks=part, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                        device=dev, cache=c if c is not None else False, keep_model=False)
                vals.append(float(r.score))
                n_fits += 1
                bar.update(1)
            memo[sel] = float(np.mean(vals))
            bar.set_postfix(last=f"{sel} {memo[sel]:.3f}")
        return memo[sel]

    sel, best, path, start_score, reason = greedy_search(score, todo, direction=direction, epsilon=epsilon,
                                                         max_blocks=max_blocks, stopping=stopping)
    bar.close()
    cost = time.perf_counter() - start
    log.info("greedy: %s (score %.4f) after %d steps, %d fits, %.1fs; stop: %s", sel, best, len(path), n_fits, cost,
             reason)
    config = {"model": type(model).__name__, "blocks": list(todo), "direction": direction, "epsilon": epsilon,
              "max_blocks": max_blocks, "stopping": stopping, "cv_folds": cv_folds, "epochs": epochs, "lr": lr,
              "batch_size": batch_size, "seed": seed, "device": str(dev), "block_names": list(part.names),
              "cached": caches[0] is not None}
    return GreedyResult(selection=sel, score=best, path=path, start_score=start_score, stop_reason=reason,
                        cost_seconds=cost, n_fits=n_fits, config=config, version=__version__)


def greedy_search(
    score: Callable[[Subset], float],
    candidates: Sequence[int],
    *,
    direction: str = "forward",
    epsilon: float = 0.005,
    max_blocks: int | None = None,
    stopping: str = "strict",
) -> tuple[Subset, float, list[GreedyStep], float, str]:
    """The greedy loop on any ``score(subset)``: returns (subset, score, path, start score, stop reason).

    ``max_blocks`` caps the returned subset: forward stops when it is reached; backward removes blocks regardless
    of the rule while the subset is larger, and only subsets within the cap can be returned.
    """
    if direction not in DIRECTIONS or stopping not in STOPPINGS:
        raise ConfigError(f"greedy_search needs direction in {DIRECTIONS} and stopping in {STOPPINGS}; got "
                          f"{direction!r} and {stopping!r} instead.")
    forward = direction == "forward"
    current: Subset = () if forward else tuple(sorted(candidates))
    cur_score = start_score = score(current)

    def fits_cap(s: Subset) -> bool:
        return max_blocks is None or len(s) <= max_blocks

    best: tuple[Subset, float] | None = (current, cur_score) if fits_cap(current) else None
    path: list[GreedyStep] = []
    reason = "exhausted"
    while True:
        if forward and max_blocks is not None and len(current) >= max_blocks:
            reason = "max_blocks"
            break
        moves = [b for b in candidates if b not in current] if forward else list(current)
        if not moves:
            break
        scores = {b: score(_move(current, b, forward)) for b in moves}
        chosen = choose_move(scores)
        new, s = _move(current, chosen, forward), scores[chosen]
        gain = s - cur_score
        forced = not forward and not fits_cap(current)
        if stopping == "strict":
            ok = forced or accepts(gain, epsilon, forward=forward)
            step = GreedyStep(len(path), current, scores, chosen, new, s, gain, ok, ok and fits_cap(new))
            path.append(step)
            if not ok:
                reason = f"best gain {gain:+.4f} {'<' if forward else '<='} {'' if forward else '-'}epsilon"
                break
            current, cur_score = new, s
            if fits_cap(current):
                best = (current, cur_score)
        else:  # official: always move; any improvement is a new best; stop on a drop of more than ε below best
            improved = fits_cap(new) and (best is None or s > best[1])
            path.append(GreedyStep(len(path), current, scores, chosen, new, s, gain, True, improved))
            current, cur_score = new, s
            if improved:
                best = (new, s)
            elif best is not None and s < best[1] - epsilon:
                reason = f"score {s:.4f} fell more than epsilon below the best {best[1]:.4f}"
                break
    assert best is not None  # backward always reaches the cap; forward starts within it
    return best[0], best[1], path, start_score, reason


def choose_move(scores: Mapping[int, float]) -> int:
    """The greedy move among candidate blocks scored ``{block: score}``: the best score; ties go to the lower index."""
    return max(scores, key=lambda b: (scores[b], -b))


def accepts(gain: float, epsilon: float, *, forward: bool = True) -> bool:
    """The paper's strict rule: a forward step is taken when it gains ≥ ε, a backward one when it loses < ε."""
    return gain >= epsilon if forward else gain > -epsilon


def _move(current: Subset, block: int, forward: bool) -> Subset:
    return tuple(sorted({*current, block})) if forward else tuple(b for b in current if b != block)


def _check_args(*, direction, epsilon, max_blocks, stopping, cv_folds, epochs, lr, batch_size, seed) -> None:
    """Validate greedy's options before any work."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"The 'direction' parameter of greedy must be one of {DIRECTIONS}; "
                          f"got {direction!r} instead.")
    if stopping not in STOPPINGS:
        raise ConfigError(f"The 'stopping' parameter of greedy must be one of {STOPPINGS}; got {stopping!r} instead.")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon >= 0:
        raise ConfigError(f"The 'epsilon' parameter of greedy must be a number >= 0; got {epsilon!r} instead.")
    if max_blocks is not None:
        check_positive("max_blocks", max_blocks, "greedy", integer=True)
    if cv_folds is not None and (isinstance(cv_folds, bool) or not isinstance(cv_folds, int) or cv_folds < 2):
        raise ConfigError(f"The 'cv_folds' parameter of greedy must be None or an int >= 2; got {cv_folds!r} instead.")
    check_positive("epochs", epochs, "greedy", integer=True)
    check_positive("lr", lr, "greedy")
    check_positive("batch_size", batch_size, "greedy", integer=True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"The 'seed' parameter of greedy must be an int; got {seed!r} instead.")

