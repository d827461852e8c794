"""Finetuning profile: per-block entries on real data, an oracle block, multi-fidelity, no test leakage, JSON."""
from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from autosub.data.task import Split, Task
from autosub.errors import ConfigError
from autosub.selection.profiling import Profile, halving_rungs, profile, rung_lr_scale

FIELDS = ("mean", "std", "wall_time", "trainable_params", "fork_cost")


class SpySplit(Split):
    """A test split that records and refuses every read of its data: profile/greedy must never touch it."""

    def __init__(self) -> None:
        self.name = "test"
        self.touched: list[str] = []

    def _refuse(self, what: str):
        self.touched.append(what)
        raise AssertionError(f"the test split was read ({what})")

    inputs = property(lambda self: self._refuse("inputs"))
    targets = property(lambda self: self._refuse("targets"))

    def __len__(self) -> int:
        return self._refuse("len")

    def __getitem__(self, index):
        return self._refuse("getitem")


class Oracle(nn.Module):
    """A well-scaled random MLP on 8×8 digits whose block ``dead`` outputs a constant (weight 0, bias 1).

    Every block after ``dead`` sees no information and gradients cannot reach the blocks before it, so only a
    selection that tunes block ``dead`` can beat chance: the profile's top block and greedy's first pick must be it.
    """

    def __init__(self, dead: int, depth: int = 4, width: int = 48) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.stem = nn.Linear(64, width)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)])
        self.head = nn.Linear(width, 10)
        with torch.no_grad():
            for m in [self.stem, *(b[0] for b in self.blocks)]:  # orthogonal ×√2: signal survives frozen layers
                nn.init.orthogonal_(m.weight, gain=2**0.5, generator=gen)
                m.bias.zero_()
            self.blocks[dead][0].weight.zero_()
            self.blocks[dead][0].bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(torch.relu(self.stem(x))))


def digits_features(n_train: int = 400, n_val: int = 300, *, spy: bool = True) -> Task:
    """Real sklearn digits as standardized 64-d vectors; the test split is a spy."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, va = perm[:n_train], perm[n_train:n_train + n_val]
    return Task(Split(x[tr], y[tr], name="train"), Split(x[va], y[va], name="val"), 10,
                test=SpySplit() if spy else None, kind="features")


ORACLE_BLOCK = 2


@pytest.fixture(scope="module")
def oracle():
    return Oracle(ORACLE_BLOCK), digits_features()


@pytest.fixture(scope="module")
def real_profiles():
    """The same profile twice (same seed) of timm's test_resnet on 160 real digits at 16 px, with a test spy."""
    import timm

    from autosub import datasets

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False).eval()
    task = datasets.digits(model=model, image_size=16, samples_per_class=16, val_fraction=0.1)
    task.test = SpySplit()
    kw = dict(epochs=2, seeds=2, lr=1e-2, batch_size=16, seed=0, progress=False)
    first = profile(model, task, pairs=2, **kw)
    second = profile(model, task, baselines=False, **kw)
    return first, second, task


def test_real_profile_has_every_field_finite_and_is_reproducible(real_profiles):
    first, second, task = real_profiles
    assert [e.block for e in first.entries] == [0, 1, 2, 3]  # test_resnet has 4 blocks
    for e in [*first.entries, *first.baselines.values(), *first.pairs]:
        assert len(e.scores) == 2 and e.epochs == 2
        for f in FIELDS:
            assert math.isfinite(getattr(e, f)), (e.name, f)
        assert 0.0 <= e.mean <= 1.0 and e.trainable_params > 0 and 0.0 < e.fork_cost <= 1.0
    # fork cost shrinks toward the output; full finetuning costs all of it, the probe almost nothing
    costs = [e.fork_cost for e in first.entries]
    assert costs == sorted(costs, reverse=True)
    assert first.baselines["full_finetune"].fork_cost == 1.0 > costs[0]
    assert first.baselines["linear_probe"].fork_cost < costs[-1]
    assert first.baselines["full_finetune"].trainable_params > max(e.trainable_params for e in first.entries)
    # same seed ⇒ same scores and ranking (the second run has no baselines and no pairs: ranking is entries-only)
    assert first.ranking() == second.ranking()
    assert [e.scores for e in first.entries] == [e.scores for e in second.entries]
    assert len({e.mean for e in first.entries}) > 1, "degenerate profile: every block scored the same"
    assert len(first.pairs) == 1 and set(first.pairs[0].selection) == set(first.ranking()[:2])
    assert first.n_fits == 2 * (4 + 1 + 2) and first.config["cached"]
    assert task.test.touched == []


def test_profile_json_and_frame_round_trip(real_profiles, tmp_path):
    first = real_profiles[0]
    path = first.save(tmp_path / "profile.json")
    text = path.read_text()
    assert '"autosub_version"' in text and text.index('"baselines"') < text.index('"entries"')  # sorted keys
    back = Profile.load(path)
    assert back.ranking() == first.ranking()
    assert back.to_dict() == first.to_dict()
    assert back.pairs[0].selection == first.pairs[0].selection and isinstance(back.pairs[0].selection, tuple)
    assert back.baselines["full_finetune"].selection == "all"
    frame = first.to_frame()
    assert len(frame) == 4 + 1 + 2 and set(frame["kind"]) == {"block", "pair", "baseline"}
    ranked = frame[frame.kind == "block"].sort_values("rank")
    assert [s[0] for s in ranked["selection"]] == first.ranking()
    m = first.pair_matrix()
    i, j = first.pairs[0].selection
    assert m[i, j] == m[j, i] == first.pairs[0].mean and np.isnan(m).sum() == 16 - 4 - 2


def test_oracle_block_tops_the_profile(oracle):
    model, task = oracle
    prof = profile(model, task, epochs=2, seeds=1, lr=1e-2, progress=False)
    assert prof.ranking()[0] == ORACLE_BLOCK
    top, rest = prof.entry(ORACLE_BLOCK).mean, [e.mean for e in prof.entries if e.block != ORACLE_BLOCK]
    assert top > 0.4 and max(rest) < 0.2  # 10 classes: the others stay near chance
    assert prof.baselines["linear_probe"].mean < 0.2 < prof.baselines["full_finetune"].mean
    assert task.test.touched == []


def test_halving_records_fidelity_and_ranks_by_it(oracle):
    model, task = oracle
    prof = profile(model, task, epochs=3, min_epochs=1, eta=2, fidelity="halving", seeds=1, lr=1e-2,
                   baselines=False, progress=False)
    assert prof.config["rungs"] == [1, 2, 3]
    assert prof.config["rung_lrs"] == pytest.approx([3e-2, 1.5e-2, 1e-2])  # lr × epochs held constant
    assert prof.entry(ORACLE_BLOCK).lr == pytest.approx(1e-2)  # the top rung trains at the given lr
    assert sorted(prof.entry(b).lr for b in range(4)) == pytest.approx([1e-2, 1.5e-2, 3e-2, 3e-2])
    by_epochs = {b: prof.entry(b).epochs for b in range(4)}
    assert sorted(by_epochs.values()) == [1, 1, 2, 3]  # 4 blocks → 2 → 1
    assert by_epochs[ORACLE_BLOCK] == 3 and prof.ranking()[0] == ORACLE_BLOCK
    fidelity = [by_epochs[b] for b in prof.ranking()]
    assert fidelity == sorted(fidelity, reverse=True)  # the fidelity reached orders first
    assert sorted(prof.entry(ORACLE_BLOCK).history) == [1, 2, 3]
    assert prof.n_fits == 4 + 2 + 1
    assert task.test.touched == []


def test_halving_schedule():
    assert halving_rungs(1, 8, 4) == [1, 4, 8]
    assert halving_rungs(1, 5, 3) == [1, 3, 5]
    assert halving_rungs(2, 2, 2) == [2]
    assert [rung_lr_scale(r, 5) for r in (1, 2, 5)] == [4.0, 2.5, 1.0]  # lr × epochs constant, capped at 4


@pytest.mark.parametrize("kw", [dict(seeds=0), dict(epochs=0), dict(fidelity="fast"), dict(eta=1),
                                dict(fidelity="halving", min_epochs=5, epochs=2), dict(pairs=1), dict(pairs=9),
                                dict(candidates=[0, 9]), dict(candidates=[]), dict(blocks=[0, 9]),  # 0.1 spelling
                                dict(candidates=[1.5]), dict(lr=-1.0), dict(lr=float("inf")), dict(seed=1.5)])
def test_bad_arguments_fail_before_any_work(oracle, kw):
    model, task = oracle
    spy = Task(SpySplit(), SpySplit(), 10)  # any training would read these
    with pytest.raises(ConfigError):
        profile(model, spy, progress=False, **kw)


def test_autosub_profile_and_greedy_stay_functions_after_any_import():
    import importlib

    import autosub

    importlib.import_module("autosub.selection.profiling")  # no module is named like the function any more
    importlib.import_module("autosub.selection.greedy_selection")
    if "autosub.profile" not in sys.modules:  # before any deprecated import: the plain functions
        assert autosub.profile is importlib.import_module("autosub.selection.profiling").profile
    assert autosub.greedy is importlib.import_module("autosub.selection.greedy_selection").greedy
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sys.modules.pop("autosub.profile", None)
        old = importlib.import_module("autosub.profile")  # the 0.1 path: a deprecated alias that stays callable
    assert any("autosub.selection.profiling" in str(w.message) for w in caught)
    assert old.Profile is autosub.Profile and callable(autosub.profile)
    with pytest.raises(ConfigError, match="seeds"):
        autosub.profile(Oracle(0), Task(SpySplit(), SpySplit(), 10), seeds=0)


def test_all_pairs_on_the_oracle_and_the_cache_changes_no_score(oracle):
    model, task = oracle
    kw = dict(epochs=1, seeds=1, lr=1e-2, baselines=False, progress=False)
    cached = profile(model, task, pairs=True, **kw)
    plain = profile(model, task, cache=False, **kw)
    assert cached.config["cached"] and not plain.config["cached"]
    assert [e.mean for e in cached.entries] == pytest.approx([e.mean for e in plain.entries], abs=1e-6)
    assert sorted(p.selection for p in cached.pairs) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    with_oracle = [p.mean for p in cached.pairs if ORACLE_BLOCK in p.selection]
    without = [p.mean for p in cached.pairs if ORACLE_BLOCK not in p.selection]
    assert min(with_oracle) > max(without)
    assert task.test.touched == []
