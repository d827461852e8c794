"""The learned layer predictor: which blocks to finetune, from per-block network statistics, in seconds.

Each statistic of :mod:`autosub.selection.stats` is one selector of the literature (Auto-RGN, SPT's Fisher
sensitivity, SNIP, synflow, CKA, LogME, H-score, a linear probe, KappaTune's condition number, depth). None is best
everywhere; :class:`LayerPredictor` learns to combine them from a corpus of measured finetuning profiles shipped
with the package (``autosub/selection/corpus/*.json``, built by ``benchmarks/build_corpus.py``).

Features are normalized *within a task* (each statistic's rank among the model's blocks, in [0, 1]), so one model
transfers across architectures of different depth; a few task-level features (training-set size, classes, how
linearly decodable the last block's output already is, text or image) let the tree model learn interactions such as
"far from the pretraining domain → earlier blocks". The target is the per-task z-score of the block's measured
validation accuracy, averaged over the seeds each task was profiled with (three in the shipped corpus: one seed's
ranking agrees with another's at a Spearman of only ~0.56). It is fitted from the JSON when first needed — there is no pickled model.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from ..errors import ConfigError, DataError
from .prior import Prior
from .stats import STATS, BlockStats, block_stats

__all__ = ["BLOCK_FEATURES", "DEFAULT_FEATURES", "TASK_FEATURES", "ZERO_COST_PRIORS", "BlockPrediction",
           "corpus_directions", "CorpusEntry", "directions", "feature_matrix", "LayerPredictor", "load_corpus",
           "load_seed_profiles", "normalize_scores", "predict_blocks", "PredictorNotFittedError", "statistic_scores",
           "zero_cost_prior"]

log = logging.getLogger(__name__)

#: Per-block features: each is ranked within the task. ``*_pp`` = per parameter, ``d_*`` = gain over the block before,
#: ``since_reshape`` = blocks since the last block that changed the shape (the position inside a stage).
BLOCK_FEATURES = (*STATS, "fisher_pp", "snip_pp", "synflow_pp", "d_lp", "d_logme", "d_hscore", "since_reshape")
#: The predictor's default block features: all of them. A drop-one ablation once kept 8 (depth, flops, reshapes,
#: spectrum, hscore, logme, d_hscore, d_lp) against single-seed targets; against the 3-seed mean that choice scores
#: 0.594 and all features 0.613 (no architecture blend; 0.636 vs 0.654 with it), and the same rule run inside each
#: training fold (0.649) does no better than no selection at all, so there is none (benchmarks/bench_predictor.py).
DEFAULT_FEATURES = BLOCK_FEATURES
#: Task-level features (the same for every block of a task): they only act through interactions.
TASK_FEATURES = ("log_train", "log_classes", "final_lp", "final_logme", "text", "n_blocks")
ESTIMATORS = ("gbm", "ridge", "pairwise")
TARGETS = ("zscore", "rank")
#: The priors :func:`zero_cost_prior` builds with no training: the learned predictor, or one statistic alone.
ZERO_COST_PRIORS = ("predictor", *STATS)


class PredictorNotFittedError(ConfigError, NotFittedError):
    """``predict`` before ``fit``: an autosub ConfigError that is also scikit-learn's NotFittedError."""


# --------------------------------------------------------------------------------------------------- corpus
@dataclass(frozen=True)
class CorpusEntry:
    """One measured task: the statistics of every block and its profiled score (full fidelity).

    ``seed_scores`` holds each profiled seed's per-block scores, the entry's own seed (``profile_seed``) first, then
    the repeats merged into its JSON (``benchmarks/build_corpus.py --merge-repeats``); ``scores`` is their mean — one
    seed's profile agrees with another's at a Spearman of only ~0.6, so the mean is the less noisy target.
    """

    id: str
    model: str
    dataset: str
    variant: str
    kind: str
    stats: BlockStats
    scores: np.ndarray
    baselines: dict[str, float] = field(default_factory=dict)
    profile_wall: float = float("nan")
    stats_wall: float = float("nan")
    profile_cpu: float = float("nan")
    stats_cpu: float = float("nan")
    profile_seed: int = 0
    seed_scores: tuple[np.ndarray, ...] = ()

    @property
    def group(self) -> tuple[str, str]:
        """The (model, dataset) pair: leave-one-out evaluation holds out a whole group."""
        return (self.model, self.dataset)


def _shipped_files() -> list[Any]:
    """The corpus JSON files shipped in the package, by name."""
    return sorted((f for f in resources.files(__package__).joinpath("corpus").iterdir() if f.name.endswith(".json")),
                  key=lambda f: f.name)


def load_corpus(path: str | Path | None = None) -> list[CorpusEntry]:
    """Read every ``*.json`` entry of the corpus folder (default: the one shipped in the package), sorted by id."""
    if path is None:
        files = _shipped_files()
    else:
        folder = Path(path)
        if not folder.is_dir():
            raise ConfigError(f"The 'path' parameter of load_corpus must be a folder of corpus JSON files; "
                              f"{str(folder)!r} is not a folder.")
        files = sorted(folder.glob("*.json"))
    out = []
    for f in files:
        d = json.loads(f.read_text())
        if "profile" not in d or "stats" not in d:
            log.warning("load_corpus: %s has no profile or statistics; skipped", f.name)
            continue
        by_block = {int(e["selection"][0]): float(e["mean"]) for e in d["profile"]["entries"]}
        stats = BlockStats.from_dict(d["stats"])
        missing = [k for k in STATS if k not in stats.values]
        if missing:
            log.warning("load_corpus: %s lacks statistics %s (built by an older stats.py; rebuild it with "
                        "benchmarks/build_corpus.py --stats-only); skipped", f.name, missing)
            continue
        if sorted(by_block) != list(range(len(stats))):
            log.warning("load_corpus: %s profiles blocks %s of %d; skipped", f.name, sorted(by_block), len(stats))
            continue
        seeds = [np.array([by_block[i] for i in range(len(stats))])]
        for rep in d.get("repeats", []):
            if len(rep.get("scores", ())) != len(stats):
                log.warning("load_corpus: %s has a repeat (seed %s) of %d blocks, not %d; that repeat is skipped",
                            f.name, rep.get("profile_seed"), len(rep.get("scores", ())), len(stats))
                continue
            seeds.append(np.asarray(rep["scores"], dtype=float))
        out.append(CorpusEntry(id=d["id"], model=d["model"], dataset=d["dataset"], variant=d["variant"],
                               kind=d.get("kind", stats.task.get("kind", "image")), stats=stats,
                               scores=np.mean(seeds, axis=0), seed_scores=tuple(seeds),
                               baselines={k: float(v["mean"]) for k, v in d["profile"].get("baselines", {}).items()},
                               profile_wall=float(d.get("profile_wall", float("nan"))),
                               stats_wall=float(d.get("stats_wall", float("nan"))),
                               profile_cpu=float(d.get("profile_cpu", float("nan"))),
                               stats_cpu=float(d.get("stats_cpu", float("nan"))),
                               profile_seed=int(d.get("profile_seed", 0))))
    if not out:
        raise DataError(f"No corpus entries found in {str(path) if path else 'the package'}; build them with "
                        "benchmarks/build_corpus.py.")
    return sorted(out, key=lambda e: e.id)


def load_seed_profiles(folder: str | Path, entries: Sequence[CorpusEntry]) -> dict[str, np.ndarray]:
    """Per-block scores of repeat profiles (another training seed) of corpus ``entries``, by entry id: what
    ``benchmarks/build_corpus.py --merge-repeats`` folds into the shipped entries.

    ``folder`` holds JSON files written by ``benchmarks/build_corpus.py --profile-seed N --out folder``. A file is
    used when its id is one of ``entries``, its profile is at least as recent a seed as another (``profile_seed``
    differs from the entry's), and it profiles exactly the entry's blocks; anything else is skipped with a warning.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"The 'folder' parameter of load_seed_profiles must be a folder of corpus JSON files; "
                          f"{str(folder)!r} is not a folder.")
    by_id = {e.id: e for e in entries}
    out: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob("*.json")):
        d = json.loads(f.read_text())
        entry = by_id.get(d.get("id"))
        if entry is None or "profile" not in d:
            continue
        if int(d.get("profile_seed", 0)) == entry.profile_seed:
            log.warning("load_seed_profiles: %s has the corpus entry's own profile seed %d; skipped", f.name,
                        entry.profile_seed)
            continue
        by_block = {int(e["selection"][0]): float(e["mean"]) for e in d["profile"]["entries"]
                    if len(e["selection"]) == 1}
        if sorted(by_block) != list(range(len(entry.scores))):
            log.warning("load_seed_profiles: %s profiles blocks %s, the corpus entry has %d; skipped", f.name,
                        sorted(by_block), len(entry.scores))
            continue
        out[entry.id] = np.array([by_block[i] for i in range(len(entry.scores))])
    return out


# ------------------------------------------------------------------------------------------------- features
def _ranks(values: np.ndarray) -> np.ndarray:
    """Rank percentiles in [0, 1] within one task (ties share their average rank); constant input → 0.5."""
    from scipy.stats import rankdata

    v = np.asarray(values, dtype=float)
    if len(v) < 2 or np.allclose(v, v[0]):
        return np.full(len(v), 0.5)
    return (rankdata(v) - 1) / (len(v) - 1)


def _block_columns(stats: BlockStats) -> dict[str, np.ndarray]:
    v = {k: np.asarray(stats.values[k], dtype=float) for k in STATS}
    params = np.maximum(v["params"], 1.0)
    cols = dict(v)
    cols["fisher_pp"] = v["fisher"] / params
    cols["snip_pp"] = v["snip"] / params
    cols["synflow_pp"] = v["synflow"] - np.log10(params)  # synflow is stored as a log10
    for k in ("lp", "logme", "hscore"):
        cols[f"d_{k}"] = np.diff(v[k], prepend=v[k][0])
    since, last = np.zeros(len(params)), 0
    for i, r in enumerate(v["reshapes"]):
        last = i if r else last
        since[i] = i - last  # blocks since the last one that reshaped: the position inside a stage
    cols["since_reshape"] = since
    return cols


def _task_columns(stats: BlockStats) -> dict[str, float]:
    t = stats.task
    return {"log_train": math.log10(max(1, int(t.get("n_train", 1)))),
            "log_classes": math.log2(max(2, int(t.get("num_classes", 2)))),
            "final_lp": float(stats.values["lp"][-1]), "final_logme": float(stats.values["logme"][-1]),
            "text": 1.0 if t.get("kind") == "text" else 0.0, "n_blocks": float(len(stats))}


def feature_matrix(stats: BlockStats, features: Sequence[str] = BLOCK_FEATURES,
                   task_features: Sequence[str] = TASK_FEATURES) -> np.ndarray:
    """blocks × (features + task_features): block statistics ranked within the task, then task-level constants.

    ``depth`` is kept as is (it is already a position in [0, 1]).
    """
    cols = _block_columns(stats)
    unknown = [f for f in features if f not in cols]
    unknown += [f for f in task_features if f not in TASK_FEATURES]
    if unknown:
        raise ConfigError(f"Unknown features {unknown}; block features are {list(cols)}, task features "
                          f"{list(TASK_FEATURES)}.")
    block = [cols[f] if f == "depth" else _ranks(cols[f]) for f in features]
    ctx = _task_columns(stats)
    task = [np.full(len(stats), ctx[f]) for f in task_features]
    return np.column_stack([*block, *task]) if (block or task) else np.zeros((len(stats), 0))


def architecture_key(stats: BlockStats) -> tuple[int, ...]:
    """The blocks' parameter counts: equal for two tasks on the same architecture (the head is not a block)."""
    return tuple(int(round(float(p))) for p in stats.values["params"])


def normalize_scores(scores: Sequence[float], how: str = "zscore") -> np.ndarray:
    """Per-task target: the z-score of the blocks' measured scores (or their rank percentile)."""
    s = np.asarray(scores, dtype=float)
    if how == "rank":
        return _ranks(s)
    sd = s.std()
    return (s - s.mean()) / sd if sd > 0 else np.zeros_like(s)


# ------------------------------------------------------------------------------------------------ estimator
class LayerPredictor(BaseEstimator):
    """Predict, per block, how good finetuning that block alone is, from its statistics (scikit-learn contract).

    ``fit(tasks, targets)`` takes a list of :class:`BlockStats` (one per task) and, per task, the measured score of
    every block; ``predict(stats)`` returns one score per block of a new task (higher = better to tune; only the
    order is meaningful). ``estimator``: ``"gbm"`` (gradient boosting on the per-task targets), ``"ridge"`` or
    ``"pairwise"`` (logistic regression on within-task pairs, RankNet-style). ``target``: ``"zscore"`` or ``"rank"``.
    ``architecture_weight``: for a model whose architecture (its blocks' parameter counts) is among the training
    tasks, the prediction is the rank average of the statistics model (weight 1 − w) and that architecture's mean
    measured profile (weight w); a new architecture gets the statistics model alone. 0 turns it off.
    """

    def __init__(self, *, estimator: str = "gbm", target: str = "zscore",
                 features: Sequence[str] = DEFAULT_FEATURES, task_features: Sequence[str] = TASK_FEATURES,
                 n_estimators: int = 150, max_depth: int = 2, learning_rate: float = 0.05, subsample: float = 0.8,
                 alpha: float = 1.0, architecture_weight: float = 0.5, random_state: int = 0) -> None:
        self.estimator = estimator
        self.target = target
        self.features = features
        self.task_features = task_features
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.alpha = alpha
        self.architecture_weight = architecture_weight
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"The 'estimator' parameter of LayerPredictor must be one of {ESTIMATORS}; got "
                              f"{self.estimator!r} instead.")
        if self.target not in TARGETS:
            raise ConfigError(f"The 'target' parameter of LayerPredictor must be one of {TARGETS}; got "
                              f"{self.target!r} instead.")
        for name in ("n_estimators", "max_depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"The '{name}' parameter of LayerPredictor must be a positive int; got {v!r}.")
        for name, lo, hi in (("learning_rate", 0.0, math.inf), ("subsample", 0.0, 1.0), ("alpha", 0.0, math.inf)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= hi:
                raise ConfigError(f"The '{name}' parameter of LayerPredictor must be a number in ({lo}, {hi}]; "
                                  f"got {v!r} instead.")
        w = self.architecture_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0:
            raise ConfigError(f"The 'architecture_weight' parameter of LayerPredictor must be a number in [0, 1]; "
                              f"got {w!r} instead.")
        if not list(self.features) + list(self.task_features):
            raise ConfigError("LayerPredictor needs at least one feature; got features=() and task_features=().")

    def fit(self, tasks: Sequence[BlockStats], targets: Sequence[Sequence[float]]) -> "LayerPredictor":
        """Fit on ``tasks`` (BlockStats) and their per-block measured scores; returns self."""
        self._check_params()
        tasks, targets = list(tasks), [np.asarray(t, dtype=float) for t in targets]
        if not tasks or len(tasks) != len(targets):
            raise DataError(f"LayerPredictor.fit needs one target array per task; got {len(tasks)} tasks and "
                            f"{len(targets)} targets.")
        for i, (s, t) in enumerate(zip(tasks, targets)):
            if not isinstance(s, BlockStats):
                raise DataError(f"LayerPredictor.fit: task {i} is a {type(s).__name__}, not a BlockStats.")
            if len(t) != len(s) or not np.isfinite(t).all():
                raise DataError(f"LayerPredictor.fit: task {i} has {len(s)} blocks but {len(t)} targets (or "
                                "non-finite ones); give one measured score per block.")
        xs = [feature_matrix(s, self.features, self.task_features) for s in tasks]
        ys = [normalize_scores(t, self.target) for t in targets]
        x, y = np.vstack(xs), np.concatenate(ys)
        if self.estimator == "gbm":
            from sklearn.ensemble import GradientBoostingRegressor

            model = GradientBoostingRegressor(n_estimators=self.n_estimators, max_depth=self.max_depth,
                                              learning_rate=self.learning_rate, subsample=self.subsample,
                                              random_state=self.random_state)
            model.fit(x, y)
        elif self.estimator == "ridge":
            from sklearn.linear_model import Ridge

            model = Ridge(alpha=self.alpha).fit(x, y)
        else:
            from sklearn.linear_model import LogisticRegression

            dx, dy = _pairs(xs, ys)
            model = LogisticRegression(C=1.0 / self.alpha, fit_intercept=False, max_iter=1000).fit(dx, dy)
        self.model_ = model
        profiles: dict[tuple[int, ...], list[np.ndarray]] = {}
        for stats, y in zip(tasks, targets):
            profiles.setdefault(architecture_key(stats), []).append(normalize_scores(y))
        self.architectures_ = {k: np.mean(v, axis=0) for k, v in profiles.items()}
        self.feature_names_ = [*self.features, *self.task_features]
        self.n_features_in_ = x.shape[1]
        self.n_tasks_ = len(tasks)
        return self

    def predict(self, stats: BlockStats) -> np.ndarray:
        """One score per block of ``stats`` (higher = better to tune alone)."""
        if not hasattr(self, "model_"):
            raise PredictorNotFittedError("This LayerPredictor is not fitted yet; call fit(tasks, targets) first, or use "
                              "LayerPredictor.from_corpus().")
        if not isinstance(stats, BlockStats):
            raise DataError(f"LayerPredictor.predict needs a BlockStats; got {type(stats).__name__}. Compute it with "
                            "autosub.selection.stats.block_stats(model, task).")
        x = feature_matrix(stats, self.features, self.task_features)
        pred = x @ self.model_.coef_.ravel() if self.estimator == "pairwise" else self.model_.predict(x)
        known = self.architectures_.get(architecture_key(stats))
        if known is None or self.architecture_weight == 0:
            return pred
        w = float(self.architecture_weight)
        return (1 - w) * _ranks(pred) + w * _ranks(known)

    def score(self, tasks: Sequence[BlockStats], targets: Sequence[Sequence[float]]) -> float:
        """Mean Spearman correlation between predicted and measured block scores over ``tasks``."""
        from scipy.stats import spearmanr

        rhos = [spearmanr(self.predict(s), t).statistic for s, t in zip(tasks, targets)]
        return float(np.nanmean(rhos))

    @classmethod
    def from_corpus(cls, corpus: str | Path | Iterable[CorpusEntry] | None = None, **params: Any) -> "LayerPredictor":
        """A predictor fitted on a corpus (default: the one shipped with autosub); ``params`` go to ``__init__``."""
        entries = list(corpus) if corpus is not None and not isinstance(corpus, (str, Path)) else load_corpus(corpus)
        return cls(**params).fit([e.stats for e in entries], [e.scores for e in entries])


def _pairs(xs: list[np.ndarray], ys: list[np.ndarray], margin: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Within-task pairs (x_i − x_j, y_i > y_j), both orders, for pairs whose targets differ by more than margin."""
    dx, dy = [], []
    for x, y in zip(xs, ys):
        i, j = np.triu_indices(len(y), k=1)
        keep = np.abs(y[i] - y[j]) > margin
        i, j = i[keep], j[keep]
        d = x[i] - x[j]
        lab = (y[i] > y[j]).astype(int)
        dx += [d, -d]
        dy += [lab, 1 - lab]
    return np.vstack(dx), np.concatenate(dy)


@functools.lru_cache(maxsize=1)
def shipped_fingerprint() -> str:
    """A short digest of the shipped corpus files and the default predictor's parameters: what every zero-cost
    ranking depends on besides the model and task (a benchmark cell made with another corpus is stale)."""
    h = hashlib.sha256()
    for f in _shipped_files():
        h.update(f.name.encode())
        h.update(f.read_bytes())
    h.update(json.dumps(LayerPredictor().get_params(), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _default_predictor() -> LayerPredictor:
    t0 = time.perf_counter()
    predictor = LayerPredictor.from_corpus()
    log.info("layer predictor fitted on %d corpus tasks in %.2fs", predictor.n_tasks_, time.perf_counter() - t0)
    return predictor


def directions(entries: Sequence[CorpusEntry], names: Sequence[str] = STATS) -> dict[str, float]:
    """+1 where a statistic's mean within-task Spearman with the measured scores is ≥ 0 on ``entries``, else −1."""
    import warnings

    from scipy.stats import ConstantInputWarning, spearmanr

    out = {}
    for name in names:
        with warnings.catch_warnings():  # a statistic constant over a task's blocks has no correlation (nan: skipped)
            warnings.simplefilter("ignore", ConstantInputWarning)
            rhos = [spearmanr(e.stats.values[name], e.scores).statistic for e in entries]
        out[name] = 1.0 if not np.all(np.isnan(rhos)) and np.nanmean(rhos) >= 0 else -1.0
    return out


@functools.lru_cache(maxsize=1)
def _shipped_directions() -> tuple[tuple[str, float], ...]:
    return tuple(directions(load_corpus()).items())


def corpus_directions() -> dict[str, float]:
    """Which way each single statistic points on the shipped corpus (+1: higher = better block to tune)."""
    return dict(_shipped_directions())


def statistic_scores(stats: BlockStats, name: str, *, direction: float | None = None) -> dict[int, float]:
    """``{block: score}`` from one statistic alone — the peers' selectors (``"rgn"``, ``"cka"``, ``"logme"`` …).

    ``direction`` (+1 / −1) says whether higher values mean a better block; by default the direction the statistic
    has on the shipped corpus (:func:`corpus_directions`), so each peer runs in its better orientation.
    """
    if name not in stats.values:
        raise ConfigError(f"Unknown statistic {name!r}; choose one of {list(stats.values)}.")
    if direction is None:
        direction = corpus_directions()[name]
    elif direction not in (1, -1, 1.0, -1.0):
        raise ConfigError(f"The 'direction' parameter of statistic_scores must be +1 or -1; got {direction!r}.")
    return {i: float(direction) * float(v) for i, v in enumerate(stats.values[name])}


# ---------------------------------------------------------------------------------------------- prediction
@dataclass
class BlockPrediction:
    """Predicted per-block scores (higher = better to tune) with the statistics behind them."""

    scores: np.ndarray
    block_names: list[str]
    block_stats: BlockStats
    wall_time: float = 0.0

    @property
    def stats(self) -> Any:
        """The per-block statistics table (a pandas DataFrame), with the predicted score as a column."""
        frame = self.block_stats.to_frame()
        frame["predicted"] = self.scores
        return frame

    def ranking(self) -> list[int]:
        """Block indices, best first (ties: the lower index first)."""
        return sorted(range(len(self.scores)), key=lambda b: (-float(self.scores[b]), b))

    def as_prior(self) -> dict[int, float]:
        """``{block: score}``: what ``autosub.search(prior=...)`` accepts."""
        return {i: float(s) for i, s in enumerate(self.scores)}


def predict_blocks(model: Any, task: Any, *, partition: Any = None, seed: int = 0,
                   predictor: LayerPredictor | None = None, examples: int = 128, grad_examples: int = 32,
                   batch_size: int = 16, device: Any = None) -> BlockPrediction:
    """Predict which blocks of ``model`` are best to finetune on ``task``, with no training (seconds).

    Computes :func:`~autosub.selection.stats.block_stats` on a few batches of ``task.train`` (never the test split)
    and scores them with ``predictor`` (default: a :class:`LayerPredictor` fitted on the shipped corpus).
    """
    if predictor is not None and not isinstance(predictor, LayerPredictor):
        raise ConfigError(f"The 'predictor' parameter of predict_blocks must be a LayerPredictor or None; got "
                          f"{type(predictor).__name__} instead.")
    t0 = time.perf_counter()
    stats = block_stats(model, task, partition=partition, examples=examples, grad_examples=grad_examples,
                        batch_size=batch_size, seed=seed, device=device)
    fitted = predictor if predictor is not None else _default_predictor()
    scores = np.asarray(fitted.predict(stats), dtype=float)
    return BlockPrediction(scores=scores, block_names=list(stats.block_names), block_stats=stats,
                           wall_time=time.perf_counter() - t0)


def zero_cost_prior(model: Any, task: Any, name: str = "predictor", *, partition: Any = None, seed: int = 0,
                    direction: float | None = None, device: Any = None,
                    predictor: LayerPredictor | None = None) -> Prior:
    """A :class:`~autosub.selection.prior.Prior` over the blocks of ``model`` on ``task``, with no training.

    ``name``: ``"predictor"`` (:func:`predict_blocks`) or a statistic of :data:`~autosub.selection.stats.STATS`
    (:func:`statistic_scores` of :func:`~autosub.selection.stats.block_stats`, oriented by ``direction``: +1 =
    higher is better, −1 = lower, None = the orientation it has on the shipped corpus). Only ``task.train`` is
    read. The prior's ``evidence`` holds every statistic per block, their wall time and the orientation used.
    """
    if name not in ZERO_COST_PRIORS:
        raise ConfigError(f"Unknown zero-cost prior {name!r}; choose one of {list(ZERO_COST_PRIORS)}.")
    if direction is not None and direction not in (1, -1):
        raise ConfigError(f"The 'direction' parameter of zero_cost_prior must be +1, -1 or None; got {direction!r}.")
    t0 = time.perf_counter()
    if name == "predictor":
        if direction is not None:
            raise ConfigError("The learned predictor has no orientation to choose; leave 'direction' as None.")
        pred = predict_blocks(model, task, partition=partition, seed=seed, predictor=predictor, device=device)
        stats, scores = pred.block_stats, pred.as_prior()
    else:
        stats = block_stats(model, task, partition=partition, seed=seed, device=device)
        direction = corpus_directions()[name] if direction is None else float(direction)
        scores = statistic_scores(stats, name, direction=direction)
    wall = time.perf_counter() - t0
    evidence = {"kind": "predictor" if name == "predictor" else "statistic", "name": name,
                "direction": direction, "wall_time": round(wall, 4), "stats_wall_time": round(stats.wall_time, 4),
                "times": {k: round(v, 4) for k, v in stats.times.items()}, "block_names": list(stats.block_names),
                "n_examples": int(stats.task.get("n_sample", 0)),
                "values": {k: [float(x) for x in v] for k, v in stats.values.items()}}
    ranking = sorted(scores, key=lambda b: (-scores[b], b))
    return Prior(ranking, dict(scores), [], source=name, evidence=evidence)
