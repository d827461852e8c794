"""Finetuning profile: per-block entries on real data, an oracle block, multi-fidelity, no test leakage, JSON."""
from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest
import torch

from autosub.data.task import Task
from autosub.errors import ConfigError
from autosub.selection.profiling import Profile, halving_rungs, profile, rung_lr_scale

FIELDS = ("mean", "std", "wall_time", "trainable_params", "fork_cost")


@pytest.fixture(scope="module")
def real_profiles(spy_split):
    """The same profile twice (same seed) of timm's test_resnet on 160 real digits at 16 px, with a test spy."""
    import timm

    from autosub import datasets

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False).eval()
    task = datasets.digits(model=model, image_size=16, samples_per_class=16, val_fraction=0.1)
    task.test = spy_split()
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
        assert e.trainable_params > 0 and 0.0 < e.fork_cost <= 1.0
        correct = [s * len(task.val) for s in e.scores]  # each score is an accuracy on the val split
        assert correct == pytest.approx([round(c) for c in correct], abs=1e-6), (e.name, e.scores)
        assert e.mean == pytest.approx(np.mean(e.scores)) and e.std == pytest.approx(np.std(e.scores, ddof=1))
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
    assert task.test.reads == []


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
    assert prof.ranking()[0] == model.oracle_block
    top = prof.entry(model.oracle_block).mean
    rest = [e.mean for e in prof.entries if e.block != model.oracle_block]
    assert top > 0.4 and max(rest) < 0.2  # 10 classes: the others stay near chance
    assert prof.baselines["linear_probe"].mean < 0.2 < prof.baselines["full_finetune"].mean
    assert task.test.reads == []


def test_halving_records_fidelity_and_ranks_by_it(oracle):
    model, task = oracle
    prof = profile(model, task, epochs=3, min_epochs=1, eta=2, fidelity="halving", seeds=1, lr=1e-2,
                   baselines=False, progress=False)
    assert prof.config["rungs"] == [1, 2, 3]
    assert prof.config["rung_lrs"] == pytest.approx([3e-2, 1.5e-2, 1e-2])  # lr × epochs held constant
    assert prof.entry(model.oracle_block).lr == pytest.approx(1e-2)  # the top rung trains at the given lr
    assert sorted(prof.entry(b).lr for b in range(4)) == pytest.approx([1e-2, 1.5e-2, 3e-2, 3e-2])
    by_epochs = {b: prof.entry(b).epochs for b in range(4)}
    assert sorted(by_epochs.values()) == [1, 1, 2, 3]  # 4 blocks → 2 → 1
    assert by_epochs[model.oracle_block] == 3 and prof.ranking()[0] == model.oracle_block
    fidelity = [by_epochs[b] for b in prof.ranking()]
    assert fidelity == sorted(fidelity, reverse=True)  # the fidelity reached orders first
    assert sorted(prof.entry(model.oracle_block).history) == [1, 2, 3]
    assert prof.n_fits == 4 + 2 + 1
    assert task.test.reads == []


def test_halving_schedule():
    assert halving_rungs(1, 8, 4) == [1, 4, 8]
    assert halving_rungs(1, 5, 3) == [1, 3, 5]
    assert halving_rungs(2, 2, 2) == [2]
    assert [rung_lr_scale(r, 5) for r in (1, 2, 5)] == [4.0, 2.5, 1.0]  # lr × epochs constant, capped at 4


@pytest.mark.parametrize("kw", [dict(seeds=0), dict(epochs=0), dict(fidelity="fast"), dict(eta=1),
                                dict(fidelity="halving", min_epochs=5, epochs=2), dict(pairs=1), dict(pairs=9),
                                dict(candidates=[0, 9]), dict(candidates=[]), dict(blocks=[0, 9]),  # 0.1 spelling
                                dict(candidates=[1.5]), dict(lr=-1.0), dict(lr=float("inf")), dict(seed=1.5)])
def test_bad_arguments_fail_before_any_work(oracle, spy_split, kw):
    model, _ = oracle
    spy = Task(spy_split(), spy_split(), 10)  # any training would read these
    with pytest.raises(ConfigError):
        profile(model, spy, progress=False, **kw)


def test_autosub_profile_and_greedy_stay_functions_after_any_import(oracle, spy_split):
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
        autosub.profile(oracle[0], Task(spy_split(), spy_split(), 10), seeds=0)


def test_all_pairs_on_the_oracle_and_the_cache_changes_no_score(oracle):
    model, task = oracle
    kw = dict(epochs=1, seeds=1, lr=1e-2, baselines=False, progress=False)
    cached = profile(model, task, pairs=True, **kw)
    plain = profile(model, task, cache=False, **kw)
    assert cached.config["cached"] and not plain.config["cached"]
    assert [e.mean for e in cached.entries] == pytest.approx([e.mean for e in plain.entries], abs=1e-6)
    assert sorted(p.selection for p in cached.pairs) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    with_oracle = [p.mean for p in cached.pairs if model.oracle_block in p.selection]
    without = [p.mean for p in cached.pairs if model.oracle_block not in p.selection]
    assert min(with_oracle) > max(without)
    assert task.test.reads == []


def test_a_damaged_profile_file_fails_with_a_clear_error(tmp_path):
    from autosub.errors import WeightsError

    (tmp_path / "p.json").write_text('{"entries": [{"selection": [0]')
    with pytest.raises(WeightsError, match="not valid JSON"):
        Profile.load(tmp_path / "p.json")
    (tmp_path / "p.json").write_text('{"entries": [{"selection": [0]}]}')
    with pytest.raises(WeightsError, match="not a valid profile: KeyError"):
        Profile.load(tmp_path / "p.json")


def test_a_profile_checkpoint_is_reused_only_for_the_same_trunk_data_and_settings(oracle, tmp_path, caplog):
    model, task = oracle
    kw = dict(epochs=2, min_epochs=1, eta=2, fidelity="halving", seeds=1, lr=1e-2, baselines=False, progress=False)
    path = tmp_path / "partial.json"
    whole = profile(model, task, checkpoint=path, **kw)
    assert whole.n_fits == 4 + 2 and whole.config["reused"] == 0 and path.is_file()
    again = profile(model, task, checkpoint=path, **kw)  # every entry finished: nothing is trained
    assert again.n_fits == 0 and again.config["reused"] == 6
    assert again.ranking() == whole.ranking() and [e.to_dict() for e in again.entries] == [
        e.to_dict() for e in whole.entries]  # the rung histories merged as before
    import json

    data = json.loads(path.read_text())
    keep = sorted(data["entries"])[:2]  # as if killed after two entries of the first rung
    data["entries"] = {k: data["entries"][k] for k in keep}
    path.write_text(json.dumps(data))
    part = profile(model, task, checkpoint=path, **kw)
    assert part.config["reused"] == 2 and part.n_fits == 4 + 2 - 2 and part.ranking() == whole.ranking()
    other = profile(model, task, checkpoint=path, **{**kw, "seed": 1})  # other settings: nothing reused
    assert other.config["reused"] == 0 and other.n_fits == 6 and "another model, data or settings" in caplog.text
    path.write_text("{trunc")
    assert profile(model, task, checkpoint=path, **kw).n_fits == 6 and "ignoring the checkpoint" in caplog.text
