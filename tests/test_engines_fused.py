"""The Optuna engine with fused trials (``TrainingConfig(fuse=True)``): it asks several trials, trains them as one
group and tells each — and the study records what one-at-a-time trials record.

Tiny CPU searches (the Oracle MLP on real digits, 1–3 epochs) in an in-memory study (SQLite writes would take most
of the time); the calibration is skipped with a known epoch cost.
"""
from __future__ import annotations

import optuna
import pytest
import torch

from autosub.data.task import Split, Task
from autosub.errors import ConfigError
from autosub.hpo.budget import Budget
from autosub.hpo.config import TrainingConfig
from autosub.hpo.searching import search
from autosub.training.fused import FusedGroup, TrialSpec
from conftest import Folding


@pytest.fixture(scope="module")
def model_task(oracle):
    model, task = oracle
    return model, Task(task.train, task.val, task.num_classes)  # no test split: search() reports on it at the end


def run(model_task, tmp_path, name, trials, *, fuse, epochs=2, selector="random", pruner=None, space="subset",
        **training):
    model, task = model_task
    return search(model, task, Budget(trials=trials, epoch_seconds=0.05), selector=selector, space=space,
                  prior=None, pruner=pruner, epochs=epochs, seed=0,
                  training={"fuse": fuse, "batch_size": 32, **training},
                  run={"run_dir": tmp_path / name, "progress": False, "storage": optuna.storages.InMemoryStorage()})


def ran(res):
    """(number, state, selection, lr, values) of every trial, in order."""
    return [(r.number, r.state, r.selection, r.hparams["lr"], r.values) for r in res.records]


def assert_same_values(got, want):
    assert [(n, s, sel) for n, s, sel, _, _ in got] == [(n, s, sel) for n, s, sel, _, _ in want]
    for (n, _, _, lr_a, va), (_, _, _, lr_b, vb) in zip(got, want):
        assert lr_a == pytest.approx(lr_b, rel=1e-12), n
        assert (va is None) == (vb is None) and (va is None or va == pytest.approx(vb, abs=1e-9)), n


def test_fused_search_records_the_same_trials_and_values_as_one_at_a_time(model_task, tmp_path):
    alone = run(model_task, tmp_path, "alone", 5, fuse=False)
    fused = run(model_task, tmp_path, "fused", 5, fuse=True)
    assert_same_values(ran(fused), ran(alone))
    for a, b in zip(fused.records, alone.records):
        assert a.user_attrs["curve"] == pytest.approx(b.user_attrs["curve"], abs=1e-9)
        assert a.user_attrs["train_loss"] == pytest.approx(b.user_attrs["train_loss"], rel=1e-5)
    assert all(r.user_attrs["fused"] is True and r.user_attrs["fused_k"] == 5 for r in fused.records)
    assert not any("fused" in r.user_attrs for r in alone.records)
    assert fused.config["fuse"] == {"setting": True, "fused_trials": 5}
    assert fused.score == alone.score and fused.selection == alone.selection
    assert fused.model(model_task[1].val.inputs[:3]).shape == (3, 10)  # the best member's own trained model


class PruneOne(optuna.pruners.BasePruner):
    """Prunes trial ``number`` at its first report, no other."""

    def __init__(self, number: int) -> None:
        self.number = number

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == self.number


def test_a_member_pruned_mid_group_leaves_and_the_others_values_do_not_change(model_task, tmp_path):
    want = run(model_task, tmp_path, "alone", 4, fuse=False, epochs=3)
    got = run(model_task, tmp_path, "fused", 4, fuse=True, epochs=3, pruner=PruneOne(1), fuse_trials=3)
    pruned = got.records[1]
    assert pruned.state == "PRUNED" and list(pruned.intermediate) == [1] and pruned.user_attrs["fused"]
    assert pruned.values == pytest.approx([want.records[1].user_attrs["curve"][0]])
    others = [r for r in ran(got) if r[0] != 1]
    assert_same_values(others, [r for r in ran(want) if r[0] != 1])
    # trial 3 joined the group between epochs, in the room trial 1 left: the group never held more than 3
    assert [r.user_attrs["fused_k"] for r in got.records] == [3, 3, 3, 3]
    assert got.spent["trials"] == 4


def test_k_never_exceeds_the_trials_the_budget_has_left(model_task, tmp_path):
    res = run(model_task, tmp_path, "k", 5, fuse=True, epochs=1, fuse_trials=3)
    assert [r.state for r in res.records] == ["COMPLETE"] * 5  # not one trial asked beyond the budget
    assert [r.user_attrs["fused_k"] for r in res.records] == [3, 3, 3, 2, 2]
    small = run(model_task, tmp_path, "small", 2, fuse=True, epochs=1)  # fuse_trials=8 > 2 trials left
    assert len(small.records) == 2 and [r.user_attrs["fused_k"] for r in small.records] == [2, 2]
    assert not any(r.user_attrs.get("unrun") for r in [*res.records, *small.records])


def test_a_memory_limit_that_holds_two_trials_gives_groups_of_at_most_two(model_task, tmp_path):
    model, task = model_task
    probe = FusedGroup(model, task, batch_size=32, cache=False)
    probe.add(TrialSpec((0,), epochs=1))
    per_trial = probe.memory_used  # every single-block trial of this model needs the same (equal blocks)
    res = run(model_task, tmp_path, "mem", 5, fuse=True, epochs=2, space="single", fuse_memory=2 * per_trial + 1)
    assert [r.state for r in res.records] == ["COMPLETE"] * 5
    assert [r.user_attrs["fused_k"] for r in res.records] == [2, 2, 2, 2, 1]
    want = run(model_task, tmp_path, "alone", 5, fuse=False, epochs=2, space="single")
    assert_same_values(ran(res), ran(want))


def test_a_trial_that_does_not_fit_the_memory_limit_alone_trains_alone(model_task, tmp_path):
    res = run(model_task, tmp_path, "tiny", 2, fuse=True, epochs=1, fuse_memory=1)
    assert [r.state for r in res.records] == ["COMPLETE"] * 2
    assert all(r.user_attrs["fused"] is False and "memory limit" in r.user_attrs["unfused_reason"]
               for r in res.records)


def test_a_compute_budget_stops_a_fused_search_cleanly(model_task, tmp_path):
    model, task = model_task
    res = search(model, task, Budget(compute=15, epoch_seconds=0.2), selector="random", prior=None, pruner=None,
                 epochs=2, seed=0, training={"fuse": True},
                 run={"run_dir": tmp_path / "c", "progress": False, "storage": optuna.storages.InMemoryStorage()})
    assert res.spent["stop_reason"].startswith(("compute", "budget")) and res.spent["trials"] >= 1
    assert not any(r.state in ("WAITING", "RUNNING") for r in res.records)
    for r in res.records:  # a member stopped by the budget is PRUNED at its last epoch, saying so
        assert r.state in ("COMPLETE", "PRUNED") or r.user_attrs.get("unrun"), r
        if r.state == "PRUNED":
            assert "budget stop" in r.user_attrs["stopped_by"] and r.user_attrs["fused"]


def test_greedy_fuses_only_the_candidates_of_a_step_it_queued(model_task, tmp_path):
    want = run(model_task, tmp_path, "alone", 7, fuse=False, epochs=1, selector="greedy")
    got = run(model_task, tmp_path, "fused", 7, fuse=True, epochs=1, selector="greedy")
    assert_same_values(ran(got), ran(want))
    steps = [(r.user_attrs["greedy_step"], r.user_attrs["fused_k"]) for r in got.records]
    assert steps == [(0, 4)] * 4 + [(1, 3)] * 3  # a step's 4 (then 3) candidates as one group, no sampled trial
    assert got.selection == want.selection and 2 in got.selection  # the oracle block


def test_a_model_that_cannot_be_fused_trains_its_trials_alone_with_the_reason(tmp_path):
    torch.manual_seed(0)
    model = Folding()
    x, y = torch.randn(40, 8), torch.arange(40) % 3
    task = Task(Split(x[:30], y[:30], name="train"), Split(x[30:], y[30:], name="val"), 3, kind="features")
    kw = dict(blocks=["blocks.0", "blocks.1"], selector="random", prior=None, pruner=None, epochs=1, seed=0)
    res = search(model, task, Budget(trials=3, epoch_seconds=0.05), training={"fuse": True, "batch_size": 8},
                 run={"run_dir": tmp_path / "f", "progress": False, "storage": optuna.storages.InMemoryStorage()}, **kw)
    want = search(model, task, Budget(trials=3, epoch_seconds=0.05), training={"fuse": False, "batch_size": 8},
                  run={"run_dir": tmp_path / "a", "progress": False, "storage": optuna.storages.InMemoryStorage()},
                  **kw)
    # the first trial alone passes the group's exactness check; the second one's join fails it (FusionError):
    # from then on every trial trains alone, saying why, and the values are those of an unfused search
    assert [r.user_attrs["fused"] for r in res.records] == [True, False, False]
    assert all("cannot be trained fused" in r.user_attrs["unfused_reason"] for r in res.records[1:])
    assert_same_values(ran(res), ran(want))


@pytest.mark.parametrize("field, value, match", [
    ("fuse", "yes", "'fuse' parameter of TrainingConfig must be 'auto'"),
    ("fuse", 1, "'fuse' parameter"),
    ("fuse_trials", 0, "'fuse_trials' parameter"),
    ("fuse_memory", -5, "'fuse_memory' parameter"),
])
def test_bad_fuse_options_are_refused_before_any_work(model_task, tmp_path, field, value, match):
    model, task = model_task
    with pytest.raises(ConfigError, match=match):
        search(model, task, 3, prior=None, training={field: value}, run={"run_dir": tmp_path / "r"})
    assert not (tmp_path / "r").exists()


def test_fuse_true_is_refused_under_cross_validation():
    with pytest.raises(ConfigError, match="cv_folds"):
        TrainingConfig(fuse=True, cv_folds=3)


def test_fuse_auto_fuses_on_cuda_only():
    auto = TrainingConfig()
    assert auto.fuse == "auto" and auto.fuses(torch.device("cuda")) and not auto.fuses(torch.device("cpu"))
    assert TrainingConfig(fuse=True).fuses(torch.device("cpu")) and not TrainingConfig(fuse=False).fuses("cuda")
    assert not TrainingConfig(cv_folds=3).fuses(torch.device("cuda"))
