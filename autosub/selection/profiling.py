"""Finetuning profile: SubTune each block alone (plus pairs and baselines) and compare validation accuracy.

The paper's profile trains one fresh model per block for the full epochs. Here every run shares one prefix
cache filled in a single pass at every block boundary, and ``fidelity="halving"`` runs successive halving over
the blocks (all blocks a short run → the best 1/eta run longer → … up to ``epochs``), so a whole profile costs a
small multiple of one full-finetune run. A shorter rung trains at a proportionally higher learning rate (lr × epochs
constant, capped at 4×), so it predicts where the full-length run ends rather than how fast it starts. Each entry
records the fidelity (epochs) and lr its score comes from, and the ranking orders by (fidelity reached, mean score).
Only ``task.train`` and ``task.val`` are ever read.
"""
from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._io import read_artifact, read_json, write_json
from .._version import __version__
from ..data.task import Task
from ..errors import AutoSubError, ConfigError, check_positive
from ..model.blocks import Partition
from ..model.cost import try_count_flops
from ..model.fingerprint import data_fingerprint, trunk_fingerprint
from ..model.subtune import FULL, Selection, normalize_blocks
from ..training.cache import ActivationCache
from ..training.setup import BlocksSpec, check_task, prepare
from ..training.fused import TrialSpec, fit_many
from ..training.trainer import FitResult, fit

__all__ = ["FIDELITIES", "Profile", "ProfileEntry", "candidates_arg", "halving_rungs", "profile", "rung_lr_scale"]

log = logging.getLogger(__name__)

FIDELITIES = ("full", "halving")
PROBE, FULL_FT = "linear_probe", "full_finetune"


@dataclass
class ProfileEntry:
    """One profiled selection (a block, a pair or a baseline): per-seed validation scores at one fidelity."""

    selection: Selection
    name: str
    scores: list[float]
    epochs: int
    wall_time: float
    trainable_params: int
    fork_cost: float
    cached: bool = False
    history: dict[int, list[float]] = field(default_factory=dict)
    lr: float = float("nan")

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores)) if self.scores else float("nan")

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for one seed)."""
        return float(np.std(self.scores, ddof=1)) if len(self.scores) > 1 else 0.0

    @property
    def block(self) -> int | None:
        """The block index of a single-block entry, else None."""
        return self.selection[0] if isinstance(self.selection, tuple) and len(self.selection) == 1 else None

    def to_dict(self) -> dict:
        sel = self.selection if isinstance(self.selection, str) else list(self.selection)
        return {"selection": sel, "name": self.name, "scores": [float(s) for s in self.scores], "epochs": self.epochs,
                "wall_time": self.wall_time, "trainable_params": self.trainable_params, "fork_cost": self.fork_cost,
                "cached": self.cached, "mean": self.mean, "std": self.std, "lr": self.lr,
                "history": {str(k): [float(s) for s in v] for k, v in self.history.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "ProfileEntry":
        sel = d["selection"] if isinstance(d["selection"], str) else tuple(int(i) for i in d["selection"])
        return cls(selection=sel, name=d["name"], scores=list(d["scores"]), epochs=int(d["epochs"]),
                   wall_time=float(d["wall_time"]), trainable_params=int(d["trainable_params"]),
                   fork_cost=float(d["fork_cost"]), cached=bool(d.get("cached", False)),
                   lr=float(d.get("lr", float("nan"))),
                   history={int(k): list(v) for k, v in d.get("history", {}).items()})


@dataclass
class Profile:
    """A finetuning profile: one entry per profiled block, the baselines, optional pairs, and how it was run."""

    entries: list[ProfileEntry]
    baselines: dict[str, ProfileEntry] = field(default_factory=dict)
    pairs: list[ProfileEntry] = field(default_factory=list)
    block_names: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    wall_time: float = 0.0
    cache_time: float = 0.0
    n_fits: int = 0
    version: str = ""

    def ranking(self) -> list[int]:
        """Block indices, best first: highest fidelity reached, then mean score, then lower index."""
        order = sorted(self.entries, key=lambda e: (-e.epochs, -_finite(e.mean), e.block))
        return [e.block for e in order]

    def entry(self, block: int) -> ProfileEntry:
        """The entry of block ``block``."""
        for e in self.entries:
            if e.block == block:
                return e
        raise KeyError(f"block {block} was not profiled; profiled blocks: {[e.block for e in self.entries]}")

    def pair_matrix(self) -> np.ndarray:
        """n_blocks × n_blocks mean scores: pairs off the diagonal, single blocks on it, NaN where not run."""
        n = len(self.block_names) or (max(e.block for e in self.entries) + 1)
        m = np.full((n, n), np.nan)
        for e in self.entries:
            m[e.block, e.block] = e.mean
        for p in self.pairs:
            i, j = p.selection
            m[i, j] = m[j, i] = p.mean
        return m

    def to_frame(self) -> Any:
        """One row per entry (blocks, pairs, baselines) as a pandas DataFrame."""
        import pandas as pd

        rank = {b: r for r, b in enumerate(self.ranking())}
        rows = []
        for kind, items in (("block", self.entries), ("pair", self.pairs), ("baseline", self.baselines.values())):
            for e in items:
                rows.append({"kind": kind, "selection": e.selection, "name": e.name, "mean": e.mean, "std": e.std,
                             "n_seeds": len(e.scores), "epochs": e.epochs, "wall_time": e.wall_time,
                             "trainable_params": e.trainable_params, "fork_cost": e.fork_cost,
                             "rank": rank.get(e.block) if kind == "block" else None})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {"autosub_version": self.version, "entries": [e.to_dict() for e in self.entries],
                "baselines": {k: v.to_dict() for k, v in self.baselines.items()},
                "pairs": [p.to_dict() for p in self.pairs], "block_names": list(self.block_names),
                "config": self.config, "wall_time": self.wall_time, "cache_time": self.cache_time,
                "n_fits": self.n_fits, "ranking": self.ranking()}

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        return cls(entries=[ProfileEntry.from_dict(e) for e in d["entries"]],
                   baselines={k: ProfileEntry.from_dict(v) for k, v in d.get("baselines", {}).items()},
                   pairs=[ProfileEntry.from_dict(p) for p in d.get("pairs", [])],
                   block_names=list(d.get("block_names", [])), config=dict(d.get("config", {})),
                   wall_time=float(d.get("wall_time", 0.0)), cache_time=float(d.get("cache_time", 0.0)),
                   n_fits=int(d.get("n_fits", 0)), version=str(d.get("autosub_version", "")))

    def save(self, path: str | Path) -> Path:
        """Write sorted-key JSON (with the autosub version) and return the path."""
        return write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        """Read a saved profile; a truncated, corrupt or newer-version file raises a clear WeightsError."""
        return read_artifact(path, cls.from_dict, what="profile", required=("entries",))


def profile(
    model: nn.Module,
    task: Task,
    *,
    blocks: BlocksSpec = None,
    candidates: Sequence[int] | None = None,
    partition: Partition | None = None,
    epochs: int = 3,
    seeds: int = 3,
    lr: float = 1e-3,
    batch_size: int = 32,
    pairs: bool | int = False,
    fidelity: str = "full",
    eta: int = 2,
    min_epochs: int = 1,
    scale_lr: bool = True,
    baselines: bool = True,
    device: str | torch.device | None = None,
    cache: bool | ActivationCache = True,
    seed: int = 0,
    fuse: bool | str = "auto",
    progress: bool = True,
    checkpoint: str | Path | None = None,
) -> Profile:
    """Profile every block (or the ``candidates``) of ``model`` on ``task``: mean ± std val score over seeds, cost, size.

    ``blocks``: the discovery override (a regex or module names, see :func:`autosub.discover_blocks`) or a
    Partition (``partition=`` is the same). ``candidates``: the block indices to profile (default: all).
    ``pairs=True`` profiles all pairs of profiled blocks, ``pairs=m`` the pairs among the top-m blocks.
    ``fidelity="halving"`` runs successive halving from ``min_epochs`` up to ``epochs`` keeping the best 1/``eta``;
    with ``scale_lr`` a shorter rung trains at a proportionally higher lr (see :func:`rung_lr_scale`).
    ``baselines`` adds the linear probe and full finetuning at ``epochs`` with the same seeds.
    ``fuse``: train the runs of a rung (every block × seed), of the pairs and of the probe baseline as one fused group
    (:mod:`autosub.training.fused`: one forward/backward per step for all of them, results equal to separate runs).
    ``"auto"`` (default) fuses on CUDA, where small batches starve the device, and falls back to separate runs for
    a model that cannot be fused; on the CPU it does not fuse (measured: no gain on a 2-core CPU at 32 px, where a
    batch of 32 already keeps the cores busy — ``benchmarks/results/profile_quick.json``). ``True`` fuses anywhere
    (raising :class:`~autosub.training.fused.FusionError` for a model that cannot be fused), ``False`` never.
    ``checkpoint``: a JSON file that keeps every finished entry (written atomically after each one); a profile
    run again with the same settings on the same trunk and data reuses the entries it holds instead of training
    them again, so a killed profile resumes where it stopped (``n_fits`` counts only the fits this call ran,
    ``config["reused"]`` the entries it took from the file).
    """
    n_pairs = _check_args(epochs=epochs, seeds=seeds, lr=lr, batch_size=batch_size, pairs=pairs, fidelity=fidelity,
                          eta=eta, min_epochs=min_epochs, seed=seed, fuse=fuse)
    blocks, candidates = candidates_arg(blocks, candidates, "profile")
    start = time.perf_counter()
    run = prepare(model, task, blocks=partition if partition is not None else blocks, seed=seed, device=device,
                  check=False)
    view, part, dev = run.view, run.partition, run.device
    todo = normalize_blocks(candidates, part, "profile")
    if n_pairs is not None and n_pairs > len(todo):
        raise ConfigError(f"The 'pairs' parameter of profile asks for the top {n_pairs} blocks but only {len(todo)} "
                          "are profiled; pass pairs=True (all pairs) or a smaller int.")
    check_task(run.work, run.view)  # after every argument: a bad one fails before the data is touched
    shared = run.cache([*todo, len(part)], batch_size=batch_size, progress=progress, cache=cache)
    cache_time = time.perf_counter() - start
    fp = try_count_flops(run.work, part, run.example(), owner="profile")
    fusing = fuse is True or (fuse == "auto" and dev.type == "cuda")
    flops = (lambda sel: float(fp.added_cost(sel))) if fp is not None else (lambda sel: float("nan"))

    rungs = halving_rungs(min_epochs, epochs, eta) if fidelity == "halving" else [epochs]
    rung_lrs = [lr * (rung_lr_scale(rung, epochs) if scale_lr else 1.0) for rung in rungs]
    sizes = _rung_sizes(len(todo), rungs, eta)
    n_pair_fits = math.comb(n_pairs if n_pairs is not None else len(todo), 2) if pairs else 0
    total = seeds * (sum(sizes) + n_pair_fits + (2 if baselines else 0))
    saved = _Checkpoint.open(checkpoint, lambda: {  # fingerprints only when there is a checkpoint
        "trunk": trunk_fingerprint(run.work, part), "data": data_fingerprint(view.train, view.val),
        "blocks": list(todo), "seeds": seeds, "batch_size": batch_size, "seed": seed, "cached": shared is not None,
        "fused": fusing, "device": dev.type})
    bar = tqdm(total=total, desc="profile", disable=not progress)
    n_fits = 0

    def entry(selection: Selection, name: str, n_epochs: int, run_lr: float, runs: list[FitResult],
              seconds: list[float]) -> ProfileEntry:
        scores = [float(r.score) for r in runs]
        bar.set_postfix(last=f"{name} {np.mean(scores):.3f}")
        return ProfileEntry(selection=runs[-1].selection, name=name, scores=scores, epochs=n_epochs,
                            wall_time=float(np.mean(seconds)), trainable_params=runs[-1].trainable_params,
                            fork_cost=flops(runs[-1].selection), cached=runs[-1].cached,
                            history={n_epochs: scores}, lr=run_lr)

    def run_all(items: list[tuple[Selection, str, float]], n_epochs: int) -> list[ProfileEntry]:
        """Every item × seed, except those the checkpoint holds; each finished entry goes to the checkpoint."""
        got = {i: saved.get(name, n_epochs, run_lr) for i, (_, name, run_lr) in enumerate(items)}
        fresh = [i for i, e in got.items() if e is None]
        if len(fresh) < len(items):
            bar.update(seeds * (len(items) - len(fresh)))
        for i, e in zip(fresh, train_all([items[i] for i in fresh], n_epochs)):
            got[i] = e
        return [got[i] for i in range(len(items))]  # type: ignore[misc]

    def train_all(items: list[tuple[Selection, str, float]], n_epochs: int) -> list[ProfileEntry]:
        """Every item × seed: as one fused group when allowed (and more than one run), else one fit each."""
        nonlocal n_fits
        if not items:
            return []
        if fusing and seeds * len(items) > 1 and all(sel != FULL for sel, _, _ in items):
            specs = [TrialSpec(sel, lr=run_lr, epochs=n_epochs, seed=seed + s, key=(i, s))
                     for i, (sel, _, run_lr) in enumerate(items) for s in range(seeds)]
            t0 = time.perf_counter()
            outcomes = fit_many(model, view, specs, blocks=part, batch_size=batch_size, seed=seed, device=dev,
                                cache=shared if shared is not None else False, keep_models=False, split=True,
                                fallback=fuse == "auto")
            share = (time.perf_counter() - t0) / len(specs)  # a fused run's wall time: its share of the group's
            failed = [o for o in outcomes if o.status != "complete"]
            if failed:
                raise failed[0].error or RuntimeError(f"profile run {failed[0].key} did not complete")
            n_fits += len(specs)
            bar.update(len(specs))
            by_key = {o.key: o.result for o in outcomes}
            done = [entry(sel, name, n_epochs, run_lr, [by_key[(i, s)] for s in range(seeds)], [share] * seeds)
                    for i, (sel, name, run_lr) in enumerate(items)]
            saved.put(done, n_epochs)
            return done
        out = []
        for sel, name, run_lr in items:
            runs = []
            for s in range(seeds):
                runs.append(fit(model, view, sel, blocks=part, epochs=n_epochs, lr=run_lr, batch_size=batch_size,
                                seed=seed + s, device=dev, cache=shared if shared is not None else False,
                                keep_model=False))
                n_fits += 1
                bar.update(1)
            out.append(entry(sel, name, n_epochs, run_lr, runs, [r.wall_time for r in runs]))
            saved.put(out[-1:], n_epochs)
        return out

    found: dict[int, ProfileEntry] = {}
    active = list(todo)
    for k, rung in enumerate(rungs):
        for b, e in zip(active, run_all([((b,), part[b].name, rung_lrs[k]) for b in active], rung)):
            if b in found:
                e.history = {**found[b].history, **e.history}
            found[b] = e
        if k + 1 < len(rungs):
            active = sorted(active, key=lambda b: (-_finite(found[b].mean), b))[: sizes[k + 1]]
            log.info("profile: rung %d (%d epochs) keeps blocks %s", k, rung, active)
    result = Profile(entries=[found[b] for b in todo], block_names=list(part.names), version=__version__)
    if pairs:
        among = sorted(todo) if n_pairs is None else sorted(result.ranking()[:n_pairs])
        result.pairs = run_all([((a, b), f"{part[a].name}+{part[b].name}", lr) for i, a in enumerate(among)
                                for b in among[i + 1:]], epochs)
    if baselines:
        (result.baselines[PROBE],) = run_all([((), PROBE, lr)], epochs)
        (result.baselines[FULL_FT],) = run_all([(FULL, FULL_FT, lr)], epochs)
    bar.close()
    result.wall_time = time.perf_counter() - start
    result.cache_time = cache_time
    result.n_fits = n_fits
    result.config = {"model": type(model).__name__, "epochs": epochs, "seeds": seeds, "lr": lr,
                     "batch_size": batch_size, "pairs": pairs, "fidelity": fidelity, "eta": eta,
                     "min_epochs": min_epochs, "rungs": rungs, "rung_lrs": rung_lrs, "scale_lr": scale_lr,
                     "seed": seed, "device": str(dev), "fuse": fuse, "fused": fusing,
                     "blocks": list(todo), "cached": shared is not None, "train_size": len(view.train),
                     "val_size": len(view.val), "reused": saved.reused}
    log.info("profile: %d fits in %.1fs (cache fill %.1fs); ranking %s", n_fits, result.wall_time, cache_time,
             result.ranking())
    return result


class _Checkpoint:
    """The finished entries of a profile, in a JSON file written atomically after each one (see ``profile``).

    The file holds ``key`` (trunk and data fingerprints, the settings every entry depends on) and the entries by
    (name, epochs, lr); a file with another key, or one that cannot be read, is started afresh (with a warning).
    """

    def __init__(self, path: Path | None, key: dict[str, Any], entries: dict[str, dict]) -> None:
        self.path, self.key, self.entries, self.reused = path, key, entries, 0

    @classmethod
    def open(cls, path: str | Path | None, make_key: Callable[[], dict[str, Any]]) -> "_Checkpoint":
        """The checkpoint at ``path`` (None: none is kept); ``make_key`` gives what its entries depend on."""
        if path is None:
            return cls(None, {}, {})
        path, key = Path(path), make_key()
        entries: dict[str, dict] = {}
        if path.exists():
            try:
                data = read_json(path, what="profile checkpoint", required=("key", "entries"))
                if data["key"] == json.loads(json.dumps(key)):
                    entries = dict(data["entries"])
                else:
                    log.warning("profile: %s was written for another model, data or settings; profiling afresh", path)
            except AutoSubError as exc:
                log.warning("profile: ignoring the checkpoint %s (%s); profiling afresh", path, exc)
        return cls(path, key, entries)

    @staticmethod
    def _name(name: str, epochs: int, lr: float) -> str:
        return f"{name}@{epochs}@{lr!r}"

    def get(self, name: str, epochs: int, lr: float) -> ProfileEntry | None:
        """The saved entry for ``name`` at this rung (epochs, lr), or None."""
        d = self.entries.get(self._name(name, epochs, lr))
        if d is None:
            return None
        self.reused += 1
        e = ProfileEntry.from_dict(d)
        e.history = {epochs: list(e.scores)}  # this rung's scores; profile() merges the earlier rungs' again
        return e

    def put(self, entries: list[ProfileEntry], epochs: int) -> None:
        """Add finished entries and rewrite the file (atomically)."""
        if self.path is None:
            return
        for e in entries:
            self.entries[self._name(e.name, epochs, e.lr)] = e.to_dict()
        write_json({"autosub_version": __version__, "key": self.key, "entries": self.entries}, self.path)


# ------------------------------------------------------------------------------------------------ helpers
def candidates_arg(blocks: Any, candidates: Sequence[int] | None, owner: str) -> tuple[Any, Sequence[int] | None]:
    """Split ``blocks`` / ``candidates``: since 0.2 ``blocks=`` is the discovery override everywhere (as in
    ``discover_blocks``) and the indices to consider are ``candidates=``; block indices passed as ``blocks=`` still
    work for one release, with a DeprecationWarning."""
    as_indices = (isinstance(blocks, Sequence) and not isinstance(blocks, (str, bytes))
                  and all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in blocks))
    if not as_indices:
        return blocks, candidates
    if candidates is not None:
        raise ConfigError(f"{owner} got block indices in both 'blocks' and 'candidates'; pass them as candidates=.")
    warnings.warn(f"{owner}(blocks=[indices]) is deprecated: pass candidates={list(blocks)} (blocks= is now the "
                  "discovery override, as in discover_blocks).", DeprecationWarning, stacklevel=3)
    return None, list(blocks)


def halving_rungs(min_epochs: int, epochs: int, eta: int) -> list[int]:
    """The epochs of each successive-halving rung: min_epochs, min_epochs·eta, … capped by (and ending at) epochs."""
    rungs, e = [], min_epochs
    while e < epochs:
        rungs.append(e)
        e *= eta
    return [*rungs, epochs]


MAX_LR_SCALE = 4.0


def rung_lr_scale(rung_epochs: int, epochs: int) -> float:
    """The lr factor of a rung of ``rung_epochs`` when the full run has ``epochs``: epochs/rung, at most 4.

    Why: a short cosine run at the full run's lr stops far from where the full run ends, so it ranks blocks by how
    fast they start, not where they end. Keeping lr × epochs constant makes the short run cover similar ground
    (a compressed schedule, as in budgeted training). On EfficientNet-Lite0 → MNIST a 1-epoch rung at 3–4× lr
    ranks the 16 blocks like the 4-epoch runs at Spearman 0.97–0.99, against 0.83 at the same lr. The cap keeps
    very short rungs out of unstable learning rates.
    """
    return min(epochs / rung_epochs, MAX_LR_SCALE)


def _rung_sizes(n: int, rungs: list[int], eta: int) -> list[int]:
    sizes = [n]
    for _ in rungs[1:]:
        sizes.append(max(1, math.ceil(sizes[-1] / eta)))
    return sizes


def _finite(x: float) -> float:
    return x if x == x else -math.inf


def _check_args(*, epochs, seeds, lr, batch_size, pairs, fidelity, eta, min_epochs, seed, fuse="auto") -> int | None:
    """Validate profile's options before any work; returns the top-m for pairs (None = all pairs)."""
    check_positive("epochs", epochs, "profile", integer=True)
    check_positive("seeds", seeds, "profile", integer=True)
    check_positive("lr", lr, "profile")
    check_positive("batch_size", batch_size, "profile", integer=True)
    if fidelity not in FIDELITIES:
        raise ConfigError(f"The 'fidelity' parameter of profile must be one of {FIDELITIES}; got {fidelity!r} instead.")
    if isinstance(eta, bool) or not isinstance(eta, int) or eta < 2:
        raise ConfigError(f"The 'eta' parameter of profile must be an int >= 2 (keep the best 1/eta per rung); "
                          f"got {eta!r} instead.")
    check_positive("min_epochs", min_epochs, "profile", integer=True)
    if fidelity == "halving" and min_epochs > epochs:
        raise ConfigError(f"The 'min_epochs' parameter of profile must be <= epochs ({epochs}); got {min_epochs}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"The 'seed' parameter of profile must be an int; got {seed!r} instead.")
    if not (isinstance(fuse, bool) or fuse == "auto"):
        raise ConfigError(f"The 'fuse' parameter of profile must be True, False or 'auto'; got {fuse!r} instead.")
    if isinstance(pairs, bool):
        return None
    if not isinstance(pairs, (int, np.integer)) or pairs < 2:
        raise ConfigError(f"The 'pairs' parameter of profile must be False, True (all pairs) or an int m >= 2 (pairs "
                          f"among the top-m blocks); got {pairs!r} instead.")
    return int(pairs)


