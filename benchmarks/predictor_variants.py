"""Model variants of the layer predictor beyond ``LayerPredictor``'s own options, on the same evaluation.

Leave-one-(model, dataset)-out exactly as ``benchmarks/bench_predictor.py`` (every hyperparameter fixed a priori;
monotonic directions chosen on the training groups of each fold): scikit-learn's HistGradientBoostingRegressor
(z-score or rank target, with and without monotonic constraints), ExtraTrees and random forests, and rank-average
ensembles of two. Each is trained on and scored against the entries' seed-mean profiles (the goal's metric), and
scored against the seed-0 profile alone beside it.
None of them is in the shipped predictor: none beat it by more than the evaluation's noise (see docs/predictor.md).

    PYTHONPATH=. python benchmarks/predictor_variants.py     # writes benchmarks/results/predictor_variants.json
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predictor import ROOT, _metrics, architecture_profile  # noqa: E402
from machine import describe_machine  # noqa: E402

from autosub.selection.predictor import (BLOCK_FEATURES, TASK_FEATURES, LayerPredictor,  # noqa: E402
                                         _ranks, feature_matrix, load_corpus, normalize_scores)
from autosub.selection.profiling import write_json  # noqa: E402


#: The 8 features an earlier drop-one ablation kept against single-seed targets (DEFAULT_FEATURES until all were).
ABLATION_8 = ("depth", "flops", "reshapes", "spectrum", "hscore", "logme", "d_hscore", "d_lp")


def layer_predictor(**params):
    def fit(train, ys):
        model = LayerPredictor(**params).fit([e.stats for e in train], ys)
        return lambda e: model.predict(e.stats)
    return fit


def feature_directions(train, ys, features, threshold: float = 0.15) -> list[int]:
    """+1 / −1 where a feature's mean within-task Spearman with the target on the training tasks is beyond
    ±threshold, else 0 (unconstrained): the monotonic constraints, from the training groups only."""
    out = []
    for f in features:
        rhos = [_metrics(feature_matrix(e.stats, [f], ())[:, 0], y)[0] for e, y in zip(train, ys)]
        m = float(np.mean(rhos))
        out.append(int(np.sign(m)) if abs(m) >= threshold else 0)
    return out


def sklearn_model(make, features=BLOCK_FEATURES, target="zscore", monotonic=False):
    def fit(train, ys):
        x = np.vstack([feature_matrix(e.stats, features, TASK_FEATURES) for e in train])
        y = np.concatenate([normalize_scores(t, target) for t in ys])
        kw = {"monotonic_cst": [*feature_directions(train, ys, features), *[0] * len(TASK_FEATURES)]} if monotonic else {}
        model = make(**kw).fit(x, y)
        return lambda e: model.predict(feature_matrix(e.stats, features, TASK_FEATURES))
    return fit


def arch(train, ys):
    return lambda e: architecture_profile(train, ys, e)


def ensemble(*fits):
    """Rank-average (within the task) of the members' predictions."""
    def fit(train, ys):
        members = [f(train, ys) for f in fits]
        return lambda e: sum(_ranks(m(e)) for m in members)
    return fit


def hgb(**kw):
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(max_iter=150, learning_rate=0.05, max_depth=2, min_samples_leaf=20,
                                         random_state=0, **kw)


def extra_trees(**kw):
    from sklearn.ensemble import ExtraTreesRegressor

    return ExtraTreesRegressor(n_estimators=300, min_samples_leaf=5, max_features=0.5, random_state=0, n_jobs=1)


def forest(**kw):
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=300, min_samples_leaf=5, max_features=0.5, random_state=0, n_jobs=1)


VARIANTS = {
    "predictor (shipped)": layer_predictor(),
    "predictor, ablation-8 features": layer_predictor(features=ABLATION_8),
    "predictor, no architecture blend": layer_predictor(architecture_weight=0.0),
    "hgb all features, z-score": sklearn_model(hgb),
    "hgb all features, rank target": sklearn_model(hgb, target="rank"),
    "hgb all features, z-score, monotonic": sklearn_model(hgb, monotonic=True),
    "hgb all features, rank target, monotonic": sklearn_model(hgb, target="rank", monotonic=True),
    "hgb ablation-8 features, z-score": sklearn_model(hgb, features=ABLATION_8),
    "hgb ablation-8 features, z-score, monotonic": sklearn_model(hgb, features=ABLATION_8, monotonic=True),
    "extra trees all features": sklearn_model(extra_trees),
    "extra trees all features, rank target": sklearn_model(extra_trees, target="rank"),
    "extra trees ablation-8 features": sklearn_model(extra_trees, features=ABLATION_8),
    "random forest all features": sklearn_model(forest),
    "random forest ablation-8 features": sklearn_model(forest, features=ABLATION_8),
    "ensemble predictor + rank target": ensemble(layer_predictor(), layer_predictor(target="rank")),
    "ensemble predictor + extra trees default": ensemble(layer_predictor(),
                                                         sklearn_model(extra_trees, features=ABLATION_8)),
    "ensemble predictor + architecture profile": ensemble(layer_predictor(), arch),
    "ensemble predictor x5 random_state": ensemble(*[layer_predictor(random_state=s) for s in range(5)]),
}


def main() -> int:
    warnings.filterwarnings("ignore", message="An input array is constant")
    entries = load_corpus()
    groups = sorted({e.group for e in entries})
    results = {}
    for name, fit in VARIANTS.items():
        t0 = time.perf_counter()
        rows = []
        for g in groups:
            train = [e for e in entries if e.group != g]
            predict = fit(train, [e.scores for e in train])
            for e in (e for e in entries if e.group == g):
                p = predict(e)
                rows.append((*_metrics(p, e.scores), _metrics(p, e.seed_scores[0])[0]))
        rows = np.array(rows)
        results[name] = {"spearman": rows[:, 0].mean(), "top1": rows[:, 1].mean(), "top3": rows[:, 2].mean(),
                         "spearman_seed0": rows[:, 3].mean(), "seconds": time.perf_counter() - t0}
        r = results[name]
        print(f"{name:<44} sp {r['spearman']:.3f} top1 {r['top1']:.2f} top3 {r['top3']:.2f} | "
              f"seed 0 sp {r['spearman_seed0']:.3f}", flush=True)
    out = ROOT / "benchmarks" / "results" / "predictor_variants.json"
    write_json({"command": "PYTHONPATH=. python benchmarks/predictor_variants.py", "machine": describe_machine(),
                "n_entries": len(entries), "seeds_per_entry": {e.id: len(e.seed_scores) for e in entries},
                "results": {k: {m: float(v) for m, v in r.items()} for k, r in results.items()}}, out)
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
