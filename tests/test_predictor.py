"""LayerPredictor: scikit-learn's estimator contract, learning from a corpus, the shipped corpus, predict_blocks."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from autosub.errors import ConfigError, DataError
from autosub.selection.predictor import (BLOCK_FEATURES, DEFAULT_FEATURES, TASK_FEATURES, BlockPrediction,
                                         LayerPredictor,
                                         PredictorNotFittedError, feature_matrix, load_corpus, load_seed_profiles,
                                         normalize_scores, predict_blocks)
from autosub.selection.stats import STATS, BlockStats


def fake_task(n_blocks: int, seed: int, *, noise: float = 0.1) -> tuple[BlockStats, np.ndarray]:
    """Random statistics whose measured score is a hidden function of two of them: high lp, low cka."""
    rng = np.random.default_rng(seed)
    values = {k: list(rng.normal(size=n_blocks)) for k in STATS}
    values["depth"] = [i / (n_blocks - 1) for i in range(n_blocks)]
    values["params"] = list(rng.integers(1_000, 100_000, n_blocks).astype(float))
    values["lp"] = list(rng.uniform(0.2, 0.9, n_blocks))
    scores = np.argsort(np.argsort(values["lp"])) - np.argsort(np.argsort(values["cka"])).astype(float)
    scores = scores / n_blocks + noise * rng.normal(size=n_blocks)
    stats = BlockStats([f"b{i}" for i in range(n_blocks)], values,
                       task={"n_train": 100 * (seed % 5 + 1), "num_classes": 2 + seed % 8, "kind": "image"})
    return stats, scores


@pytest.fixture(scope="module")
def fake_corpus():
    return [fake_task(8 + s % 9, s) for s in range(24)]


# ------------------------------------------------------------------------------------- estimator contract
def test_estimator_contract():
    p = LayerPredictor(estimator="ridge", alpha=2.0)
    params = p.get_params()
    assert params["estimator"] == "ridge" and params["alpha"] == 2.0 and params["target"] == "zscore"
    assert set(params) == {"estimator", "target", "features", "task_features", "n_estimators", "max_depth",
                           "learning_rate", "subsample", "alpha", "architecture_weight", "random_state"}
    assert p.set_params(alpha=3.0) is p and p.alpha == 3.0
    twin = clone(p)
    assert twin is not p and twin.get_params() == p.get_params()
    assert not hasattr(p, "model_")  # __init__ stores arguments only


def test_predict_before_fit_is_a_clear_error(fake_corpus):
    with pytest.raises(PredictorNotFittedError, match="not fitted"):
        LayerPredictor().predict(fake_corpus[0][0])
    assert issubclass(PredictorNotFittedError, NotFittedError) and issubclass(PredictorNotFittedError, ConfigError)


def test_fit_returns_self_and_sets_fitted_attributes(fake_corpus):
    tasks, targets = zip(*fake_corpus)
    p = LayerPredictor()
    assert p.fit(tasks, targets) is p
    assert p.n_tasks_ == 24 and p.n_features_in_ == len(DEFAULT_FEATURES) + len(TASK_FEATURES)
    assert p.feature_names_ == [*DEFAULT_FEATURES, *TASK_FEATURES]
    assert p.predict(tasks[0]).shape == (len(tasks[0]),)


def test_a_known_architecture_blends_in_its_measured_profile(fake_corpus):
    tasks, targets = map(list, zip(*fake_corpus))
    base = tasks[0]
    shape = np.linspace(1.0, -1.0, len(base))  # what this architecture measured: the earlier the block, the better

    def on_base(seed):  # another task on base's architecture (same blocks' parameter counts), other statistics
        rng = np.random.default_rng(100 + seed)
        values = {**{k: list(rng.normal(size=len(base))) for k in STATS}, "params": base.values["params"],
                  "depth": base.values["depth"], "lp": list(rng.uniform(0.2, 0.9, len(base)))}
        return BlockStats(list(base.block_names), values, task=base.task)

    train = [on_base(s) for s in range(3)]
    tasks[0:1], targets[0:1] = train, [shape + 0.01 * i for i in range(3)]
    new = on_base(9)
    only_stats = LayerPredictor(architecture_weight=0.0).fit(tasks, targets)
    blended = LayerPredictor(architecture_weight=1.0).fit(tasks, targets)
    assert spearmanr(blended.predict(new), shape).statistic == pytest.approx(1.0)  # the architecture's profile
    assert spearmanr(only_stats.predict(new), shape).statistic < 0.9
    stranger = fake_task(len(base), 77)[0]  # an architecture never seen: the statistics model alone
    assert np.allclose(blended.predict(stranger), only_stats.predict(stranger))


@pytest.mark.parametrize("bad, match", [({"estimator": "svm"}, "'estimator'"), ({"target": "raw"}, "'target'"),
                                        ({"n_estimators": 0}, "'n_estimators'"), ({"subsample": 1.5}, "'subsample'"),
                                        ({"architecture_weight": 1.5}, "'architecture_weight'"),
                                        ({"features": (), "task_features": ()}, "at least one feature")])
def test_bad_parameters_fail_at_fit(fake_corpus, bad, match):
    tasks, targets = zip(*fake_corpus)
    with pytest.raises(ConfigError, match=match):
        LayerPredictor(**bad).fit(tasks, targets)


def test_bad_training_data(fake_corpus):
    tasks, targets = zip(*fake_corpus)
    with pytest.raises(DataError, match="one target array per task"):
        LayerPredictor().fit(tasks, targets[:-1])
    with pytest.raises(DataError, match="blocks but"):
        LayerPredictor().fit(tasks[:1], [targets[0][:-1]])
    with pytest.raises(DataError, match="BlockStats"):
        LayerPredictor().fit([{"lp": [1, 2]}], [[0.1, 0.2]])


# ------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("estimator", ["gbm", "ridge", "pairwise"])
def test_learns_a_hidden_rule_that_no_single_statistic_gives(fake_corpus, estimator):
    """Held-out tasks: the predictor combines lp and cka; each statistic alone ranks the blocks far worse."""
    train, held = fake_corpus[:16], fake_corpus[16:]
    p = LayerPredictor(estimator=estimator, features=BLOCK_FEATURES).fit(*zip(*train))
    ours = np.mean([spearmanr(p.predict(s), y).statistic for s, y in held])
    best_single = max(abs(np.mean([spearmanr(s.values[k], y).statistic for s, y in held])) for k in ("lp", "cka"))
    assert ours > 0.8 and ours > best_single + 0.1
    assert p.score(*zip(*held)) == pytest.approx(ours)


def test_features_are_ranks_within_the_task(fake_corpus):
    stats = fake_corpus[0][0]
    assert set(DEFAULT_FEATURES) <= set(BLOCK_FEATURES)
    x = feature_matrix(stats)
    assert x.shape == (len(stats), len(BLOCK_FEATURES) + len(TASK_FEATURES))
    block = x[:, : len(BLOCK_FEATURES)]
    assert block.min() >= 0 and block.max() <= 1
    scaled = copy.deepcopy(stats)
    scaled.values["fisher"] = [1e3 * v + 7 for v in scaled.values["fisher"]]  # a monotone change of scale
    assert np.array_equal(feature_matrix(scaled), x)
    with pytest.raises(ConfigError, match="Unknown features"):
        feature_matrix(stats, ("nope",))


def test_normalize_scores():
    z = normalize_scores([0.5, 0.7, 0.9])
    assert z.mean() == pytest.approx(0) and z.std() == pytest.approx(1)
    assert normalize_scores([0.3, 0.9, 0.6], "rank").tolist() == [0.0, 1.0, 0.5]
    assert normalize_scores([0.5, 0.5]).tolist() == [0.0, 0.0]


def test_predictions_are_deterministic(fake_corpus):
    tasks, targets = zip(*fake_corpus)
    a = LayerPredictor().fit(tasks, targets).predict(tasks[3])
    b = LayerPredictor().fit(tasks, targets).predict(tasks[3])
    assert np.array_equal(a, b)


# ----------------------------------------------------------------------------------- the shipped corpus
def test_the_shipped_corpus_loads_and_the_predictor_fits_from_it():
    entries = load_corpus()
    assert len(entries) >= 6 and len({e.group for e in entries}) >= 4
    assert {e.kind for e in entries} == {"image", "text"}
    for e in entries:
        assert tuple(e.stats.values) == STATS and len(e.scores) == len(e.stats) >= 6
        assert np.isfinite(e.stats.matrix()).all() and ((0 <= e.scores) & (e.scores <= 1)).all()
    p = LayerPredictor.from_corpus(entries)
    assert p.n_tasks_ == len(entries)
    assert p.predict(entries[0].stats).shape == (len(entries[0].stats),)


def test_load_corpus_from_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        load_corpus(tmp_path / "missing")
    with pytest.raises(DataError, match="No corpus entries"):
        load_corpus(tmp_path)
    stats, scores = fake_task(6, 0)
    entry = {"id": "m__d__v", "model": "m", "dataset": "d", "variant": "v", "kind": "image",
             "stats": stats.to_dict(), "profile_wall": 10.0, "stats_wall": 0.4,
             "profile": {"entries": [{"selection": [i], "mean": float(s)} for i, s in enumerate(scores)],
                         "baselines": {"linear_probe": {"mean": 0.3}}}}
    (tmp_path / "m__d__v.json").write_text(json.dumps(entry))
    (tmp_path / "broken.json").write_text(json.dumps({"id": "x"}))  # no profile: skipped with a warning
    [got] = load_corpus(tmp_path)
    assert got.group == ("m", "d") and got.baselines == {"linear_probe": 0.3}
    assert np.allclose(got.scores, scores) and got.stats.values == stats.values


def _profile_json(tmp, name, scores, *, entry_id="m__d__v", seed=None, stats=None, order=None):
    order = list(range(len(scores))) if order is None else order
    d = {"id": entry_id, "model": "m", "dataset": "d", "variant": "v", "kind": "image",
         "profile": {"entries": [{"selection": [i], "mean": float(scores[i])} for i in order]}}
    if stats is not None:
        d["stats"] = stats.to_dict()
    if seed is not None:
        d["profile_seed"] = seed
    (tmp / name).write_text(json.dumps(d))


def test_seed_profiles_align_by_block_and_merge_into_the_corpus_mean(tmp_path):
    corpus, repeats = tmp_path / "corpus", tmp_path / "seed1"
    corpus.mkdir(), repeats.mkdir()
    stats, scores = fake_task(6, 0)
    _profile_json(corpus, "m__d__v.json", scores, stats=stats)
    _profile_json(corpus, "m__e__v.json", scores[::-1], entry_id="m__e__v", stats=stats)  # no usable repeat below
    second = np.linspace(0.1, 0.6, 6)
    _profile_json(repeats, "m__d__v.json", second, seed=1, order=[5, 3, 1, 0, 2, 4])  # stored out of block order
    _profile_json(repeats, "short.json", second[:4], entry_id="m__e__v", seed=1)  # 4 of 6 blocks: skipped
    _profile_json(repeats, "same_seed.json", second, entry_id="m__e__v", seed=0)  # the corpus's own seed: skipped
    _profile_json(repeats, "stranger.json", second, entry_id="x__y__z", seed=1)  # not in the corpus: ignored
    entries = load_corpus(corpus)
    got = load_seed_profiles(repeats, entries)
    assert set(got) == {"m__d__v"} and np.allclose(got["m__d__v"], second)
    with pytest.raises(ConfigError, match="not a folder"):
        load_seed_profiles(tmp_path / "missing", entries)

    build = _bench_module("build_corpus")
    assert build.merge_repeats([repeats], corpus) == {"m__d__v": [0, 1]}
    assert build.merge_repeats([repeats], corpus) == {"m__d__v": [0, 1]}  # merging again replaces, never doubles
    a, b = load_corpus(corpus)
    assert len(a.seed_scores) == 2 and np.allclose(a.seed_scores[0], scores) and np.allclose(a.seed_scores[1], second)
    assert np.allclose(a.scores, (scores + second) / 2)  # the target: the mean over seeds
    assert len(b.seed_scores) == 1 and np.allclose(b.scores, scores[::-1])  # no repeat: the single seed


def test_a_repeat_of_the_wrong_length_is_skipped(tmp_path):
    stats, scores = fake_task(6, 0)
    _profile_json(tmp_path, "m__d__v.json", scores, stats=stats)
    d = json.loads((tmp_path / "m__d__v.json").read_text())
    d["repeats"] = [{"profile_seed": 1, "scores": [0.5] * 4}, {"profile_seed": 2, "scores": list(scores + 1)}]
    (tmp_path / "m__d__v.json").write_text(json.dumps(d))
    [entry] = load_corpus(tmp_path)
    assert len(entry.seed_scores) == 2 and np.allclose(entry.scores, scores + 0.5)


def test_shipped_corpus_entries_hold_several_seeds_that_differ():
    entries = load_corpus()
    for e in entries:
        assert len(e.seed_scores) >= 2, f"{e.id}: one profiled seed; merge the repeats (build_corpus.py)"
        assert all(s.shape == e.scores.shape for s in e.seed_scores)
        assert not np.allclose(e.seed_scores[0], e.seed_scores[1])
        assert np.allclose(e.scores, np.mean(e.seed_scores, axis=0))


def _bench_module(name: str = "bench_predictor"):
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _with_seeds(entry, *seeds):
    import dataclasses

    seeds = tuple(np.asarray(s, dtype=float) for s in seeds)
    return dataclasses.replace(entry, seed_scores=seeds, scores=np.mean(seeds, axis=0))


def test_noise_ceiling_and_spearman_brown():
    bench = _bench_module()
    a, b = load_corpus()[:2]
    s0a, s0b = a.seed_scores[0], b.seed_scores[0]
    same = bench.ceiling([_with_seeds(a, s0a, s0a), _with_seeds(b, s0b)])
    assert same["mean_seed_to_seed"] == pytest.approx(1.0) and same["expected_max_vs_seed_mean"] == pytest.approx(1.0)
    assert list(same["per_entry"]) == [a.id]  # one seed: no agreement to measure
    rng = np.random.default_rng(0)
    noisy = bench.ceiling([_with_seeds(a, s0a, s0a + rng.normal(0, 0.05, len(s0a)), s0a + rng.normal(0, 0.05, len(s0a))),
                           _with_seeds(b, s0b, s0b + rng.normal(0, 0.05, len(s0b)), s0b + rng.normal(0, 0.05, len(s0b)))])
    r = noisy["mean_seed_to_seed"]
    assert 0 < r < 1 and noisy["spearman_brown_seed_mean"] == pytest.approx(3 * r / (1 + 2 * r))
    assert noisy["expected_max_vs_one_seed"] < noisy["expected_max_vs_seed_mean"] < 1  # averaging seeds helps
    assert bench.ceiling([_with_seeds(a, s0a)]) == {}


def test_evaluate_scores_the_seed_mean_and_seed_zero():
    bench = _bench_module()
    entries = load_corpus()
    twin = _with_seeds(entries[0], entries[0].seed_scores[0], entries[0].seed_scores[0])  # both targets agree
    s = entries[1].seed_scores[0]
    flipped = _with_seeds(entries[1], s, 2 * s.mean() - s)  # a second seed reversing the first: a flat mean
    entries = [twin, flipped, *entries[2:]]
    out = bench.evaluate(entries, {"arch": ("arch",), "depth": ("stat", "depth")})
    for m in ("arch", "depth"):
        rows = {r["id"]: r for r in out["rows"][m]}
        assert len(rows) == len(entries)
        assert rows[twin.id]["spearman"] == pytest.approx(rows[twin.id]["spearman_seed0"])
        assert rows[flipped.id]["spearman"] == 0.0 and rows[flipped.id]["spearman_seed0"] != 0.0
    assert out["summary"]["arch"]["spearman_seed0"] == pytest.approx(
        np.mean([r["spearman_seed0"] for r in out["rows"]["arch"]]))


# ------------------------------------------------------------------------------------------ predict_blocks
def test_predict_blocks_on_a_model_never_reads_test(image_task, fake_corpus):
    import timm
    import torch

    class Forbidden:
        def __getattr__(self, name):
            raise AssertionError("the test split was read")

        def __len__(self):
            raise AssertionError("the test split was read")

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, zero_init_last=False).eval()
    task = copy.copy(image_task)
    task.test = Forbidden()
    predictor = LayerPredictor(estimator="ridge", features=BLOCK_FEATURES).fit(*zip(*fake_corpus))
    pred = predict_blocks(model, task, predictor=predictor, examples=16, grad_examples=16)
    assert isinstance(pred, BlockPrediction) and pred.scores.shape == (4,)
    assert sorted(pred.ranking()) == [0, 1, 2, 3] and pred.scores[pred.ranking()[0]] == pred.scores.max()
    assert pred.as_prior() == {i: float(s) for i, s in enumerate(pred.scores)}
    assert list(pred.stats.columns) == ["block", *STATS, "predicted"] and pred.block_names == list(pred.stats.block)
    with pytest.raises(ConfigError, match="'predictor'"):
        predict_blocks(model, task, predictor="ridge")


def test_predict_blocks_with_the_shipped_predictor(image_task):
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, zero_init_last=False).eval()
    a = predict_blocks(model, image_task, examples=16, grad_examples=16, seed=3)
    b = predict_blocks(model, image_task, examples=16, grad_examples=16, seed=3)
    assert np.array_equal(a.scores, b.scores) and np.isfinite(a.scores).all()


def test_single_statistic_scores_and_directions(fake_corpus):
    from autosub.selection.predictor import CorpusEntry, directions, statistic_scores

    entries = [CorpusEntry(id=f"e{i}", model="m", dataset=f"d{i}", variant="v", kind="image", stats=s,
                           scores=np.asarray(y)) for i, (s, y) in enumerate(fake_corpus)]
    found = directions(entries, ["lp", "cka"])
    assert found == {"lp": 1.0, "cka": -1.0}  # the hidden rule: high lp and low cka are good
    stats = fake_corpus[0][0]
    up = statistic_scores(stats, "cka", direction=1)
    down = statistic_scores(stats, "cka", direction=-1)
    assert list(up) == list(range(len(stats))) and all(up[b] == -down[b] for b in up)
    with pytest.raises(ConfigError, match="Unknown statistic"):
        statistic_scores(stats, "nope", direction=1)
    with pytest.raises(ConfigError, match="'direction'"):
        statistic_scores(stats, "cka", direction=0.5)
