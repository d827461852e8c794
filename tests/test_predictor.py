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
                                         PredictorNotFittedError, feature_matrix, load_corpus, normalize_scores,
                                         predict_blocks)
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
                           "learning_rate", "subsample", "alpha", "random_state"}
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


@pytest.mark.parametrize("bad, match", [({"estimator": "svm"}, "'estimator'"), ({"target": "raw"}, "'target'"),
                                        ({"n_estimators": 0}, "'n_estimators'"), ({"subsample": 1.5}, "'subsample'"),
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
