"""autosub.search end to end on a tiny real task (sklearn digits, timm test_resnet, 1–2 epochs per trial)."""
from __future__ import annotations

import time

import optuna
import pytest
import torch

import autosub.hpo.searching
from autosub.data.task import Split, Task
from autosub.hpo.engines import Job, TrialOutcome
from autosub.hpo.engines.optuna import OptunaEngine, open_storage
from autosub.errors import ConfigError, SearchAborted
from autosub.hpo.result import SearchResult
from autosub.hpo.searching import search
from autosub.hpo.selectors import SelectorContext, get_selector
from autosub.hpo.budget import Budget, Meter
from autosub.hpo.space import SearchSpace


@pytest.fixture(scope="module")
def model():
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False).eval()


@pytest.fixture(scope="module")
def task(model):
    from autosub.data.datasets import digits

    t = digits(model=model, image_size=16, samples_per_class=6)
    val = Split(t.val.inputs[:60], t.val.targets[:60], name="val")
    test = Split(t.test.inputs[:60], t.test.targets[:60], name="test")
    return Task(train=t.train, val=val, num_classes=t.num_classes, test=test)


@pytest.fixture()
def spied(spy_split):
    """``spied(task)``: the task with a test split that records who reads it (only the final report may)."""
    return lambda task: Task(train=task.train, val=task.val, num_classes=task.num_classes, test=spy_split(task.test))


def fast(**kw):
    """Common small settings: a known full-FT epoch cost skips calibration."""
    return {"epochs": 1, "prior": None, "progress": False, "seed": 0, **kw}


# ------------------------------------------------------------------------------------------------ basics
def test_search_finishes_within_budget_with_a_valid_result_and_never_reads_test_before_the_end(model, task,
                                                                                                tmp_path, spied):
    t = spied(task)
    res = search(model, t, 4, run_dir=tmp_path, space=SearchSpace(max_blocks=2), **fast(epochs=2))
    ran = [r for r in res.records if r.state != "WAITING"]
    assert len(ran) == 4 and res.spent["trials"] == 4 and res.spent["stop_reason"].startswith("trials")
    assert 1 <= len(res.selection) <= 2 and 0.0 <= res.score <= 1.0
    assert res.score == max(r.values[0] for r in res.records if r.state == "COMPLETE")
    assert res.test_score is not None and 0.0 <= res.test_score <= 1.0
    assert res.spent["compute"] > 0 and set(res.spent["phases"]) >= {"cache", "calibration"}
    assert list(res.trials["number"]) == sorted(r.number for r in res.records)
    assert res.storage == str((tmp_path / "study.journal").resolve()) and (tmp_path / "study.journal").exists()
    # the spy: every read of the test data happened in the final report, once
    assert t.test.reads and all("_test_score" in stack for stack in t.test.reads)
    x = task.val.inputs[:4]
    assert res.model(x).shape == (4, task.num_classes)


def test_profile_prior_runs_inside_the_budget_and_warm_starts_the_study(model, task, tmp_path):
    res = search(model, task, 3, run_dir=tmp_path, epochs=2, progress=False)
    by = res.trials["proposed_by"].tolist()
    assert by.count("profile") == 4  # one finished trial per block, from the profile's runs
    assert {"COMPLETE", "PRUNED"} >= set(res.trials[res.trials.proposed_by == "profile"].state)
    assert res.spent["phases"]["prior"] > 0 and res.prior["source"] == "profile"
    assert res.spent["trials"] == 3  # the warm-start trials are not counted as trials run


def test_compute_budget_stops_cleanly_and_reports_what_was_spent(model, task, tmp_path):
    res = search(model, task, Budget(compute=1.0, epoch_seconds=0.2), run_dir=tmp_path, **fast())
    reason = res.spent["stop_reason"]
    # spent, or so nearly spent that no epoch fits in what is left: checked before asking a trial ("no epoch
    # fits") or when admitting the one asked ("budget stop: its first epoch"); which one depends on this machine's speed
    assert reason.startswith(("compute", "budget: no epoch fits", "budget stop: its first epoch")), reason
    epoch = float(reason.split("~")[1].split(" s")[0]) if reason.startswith("budget") else 0.0
    # (the reason prints the epoch to 2 decimals: allow its rounding)
    assert res.spent["compute"] >= 1.0 - (epoch + 0.005) / 0.2 and res.spent["epoch_seconds"] == 0.2
    assert res.spent["trials"] >= 1


def test_a_budget_too_small_for_the_profile_searches_without_a_prior(model, task, tmp_path):
    res = search(model, task, Budget(compute=0.5, epoch_seconds=0.2), run_dir=tmp_path, **fast(prior="profile"))
    assert res.prior is None and "prior" not in res.spent["phases"] and res.spent["trials"] >= 1
    # a selector that cannot work without the profile says so (it used to fail on an assert)
    with pytest.raises(ConfigError, match="too small for the one-epoch profile the 'profile-top-k' selector"):
        search(model, task, Budget(compute=0.5, epoch_seconds=0.2), run_dir=tmp_path / "topk",
               **fast(prior="profile", selector="profile-top-k"))


def test_failing_trials_are_recorded_with_their_reason_and_the_search_goes_on(model, task, tmp_path, monkeypatch):
    real = autosub.hpo.searching.fit

    def flaky(m, t, selection, **kw):
        if 3 in selection:
            raise RuntimeError("boom in block 3")
        return real(m, t, selection, **kw)

    monkeypatch.setattr(autosub.hpo.searching, "fit", flaky)  # the trainer the search's trials call
    res = search(model, task, 6, run_dir=tmp_path, selector="greedy", space=SearchSpace(max_blocks=1), **fast())
    failed = res.trials[res.trials.state == "FAIL"]
    assert len(failed) == 1 and "boom in block 3" in failed.fail_reason.iloc[0]
    assert (res.trials.state == "COMPLETE").sum() == 3 and 3 not in res.selection


def test_pruned_trials_are_recorded_as_pruned(model, task, tmp_path):
    class OddPruner(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.number % 2 == 1

    res = search(model, task, 4, run_dir=tmp_path, pruner=OddPruner(), **fast(epochs=2))
    pruned = res.records[1]
    assert pruned.state == "PRUNED" and list(pruned.intermediate) == [1]
    assert set(res.trials.state) == {"COMPLETE", "PRUNED"} and res.best_trial % 2 == 0
    assert res.trials.epochs_run.tolist() == [2, 1, 2, 1]


def test_multi_objective_returns_a_non_dominated_front(model, task, tmp_path):
    res = search(model, task, 5, run_dir=tmp_path, objectives=("score", "cost"), **fast())
    assert res.objectives == ("score", "cost") and res.pareto
    assert set(res.trials.state) == {"COMPLETE"}  # no pruning in multi-objective mode
    pts = [(p["values"][0], p["values"][1]) for p in res.pareto]
    done = [(r.values[0], r.values[1]) for r in res.records if r.state == "COMPLETE"]
    for s, c in pts:
        assert not any(s2 >= s and c2 <= c and (s2, c2) != (s, c) for s2, c2 in done)
    for s, c in done:  # every trial is on the front or dominated by (or equal to) a front point
        assert any(s2 >= s and c2 <= c for s2, c2 in pts)


def test_consecutive_space_with_lr_multipliers_and_a_params_objective(model, task, tmp_path):
    space = SearchSpace(kind="consecutive", max_blocks=2, lr_multipliers=(0.5, 2.0), max_trainable_params=100_000)
    res = search(model, task, 3, run_dir=tmp_path, space=space, selector="nsga2", objectives=("score", "params"),
                 **fast())
    for r in res.records:
        assert r.selection == tuple(range(r.selection[0], r.selection[-1] + 1))
        assert set(r.hparams["lr_multipliers"]) == set(r.selection)
        assert r.values[1] == r.user_attrs["trainable_params"] <= 100_000
    assert res.hparams["lr_multipliers"] and all(p["values"] for p in res.pareto)


# ------------------------------------------------------------------------------------------------ storage
def test_resume_continues_the_same_study_without_duplicates_or_losses(model, task, tmp_path):
    kw = dict(run_dir=tmp_path, selector="greedy", space=SearchSpace(max_blocks=2), study_name="g", **fast())
    first = search(model, task, 2, **kw)  # nothing is left WAITING: the unrun singles are settled FAIL, unrun
    assert [r.state for r in first.records] == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    assert all(r.user_attrs["unrun"] and "not run" in r.user_attrs["fail_reason"] for r in first.records[2:])
    with pytest.raises(ConfigError, match="resume=True"):
        search(model, task, 2, **kw)
    second = search(model, task, 5, resume=True, **kw)  # the budget is the study's total: 3 more trials
    assert second.spent["trials"] == 5 and not [r for r in second.records if r.state in ("WAITING", "RUNNING")]
    done = [r for r in second.records if r.state == "COMPLETE"]
    assert [r.selection for r in done[:4]] == [(0,), (1,), (2,), (3,)]  # the queued singles ran, once each
    assert len(done) == 5 and len(done[4].selection) == 2  # then greedy's second step started
    assert [(r.params, r.values) for r in second.records[:2]] == [(r.params, r.values) for r in first.records[:2]]
    assert len({r.number for r in second.records}) == len(second.records)
    with pytest.raises(ConfigError, match="no study named"):
        search(model, task, 1, resume=True, **{**kw, "study_name": "other"})


def test_a_trial_whose_process_died_is_retried_on_resume(model, task, tmp_path):
    url = f"sqlite:///{tmp_path / 'hb.db'}"
    storage, _ = open_storage(url, tmp_path, heartbeat_interval=1, grace_period=1)
    search(model, task, 1, storage=storage, study_name="hb", **fast())
    study = optuna.load_study(study_name="hb", storage=storage)
    with pytest.warns(UserWarning, match="Heartbeat"):
        dead = study.ask()  # a trial left RUNNING by a killed worker: one heartbeat, then silence
    for name in ("b00", "b01", "b02", "b03"):
        dead.suggest_categorical(name, [False, True])
    dead.suggest_float("lr", 1e-4, 1e-2, log=True)
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)
    res = search(model, task, 2, storage=storage, study_name="hb", resume=True, **fast())
    assert res.records[dead.number].state == "FAIL"
    retried = [r for r in res.records if r.retry_of == dead.number]
    assert len(retried) == 1 and retried[0].state in ("COMPLETE", "FAIL")
    assert retried[0].params == res.records[dead.number].params


def test_journal_storage_and_the_dashboard_open_the_study(model, task, tmp_path):
    path = tmp_path / "journal.log"
    res = search(model, task, 2, storage=str(path), study_name="j", **fast())
    assert path.exists() and res.storage == str(path)
    url = f"sqlite:///{tmp_path / 'd.db'}"
    search(model, task, 1, storage=url, study_name="dash", **fast())
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    environ, out = {"PATH_INFO": "/api/studies"}, []
    setup_testing_defaults(environ)
    body = wsgi(url)(environ, lambda status, headers, *exc: out.append(status))
    assert out[0].startswith("200") and b'"dash"' in b"".join(body)


def test_interrupted_trial_is_requeued_for_resume(tmp_path):
    bound = SearchSpace(max_blocks=1).bind([10, 10, 10])
    ctx = SelectorContext(space=bound, seed=0, n_trials=5)
    calls = []

    def run_trial(cand, report):
        calls.append(cand.selection)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return TrialOutcome([0.5], {})

    def job():
        return Job(space=bound, selector=get_selector("random"), context=ctx, run_trial=run_trial,
                   budget=Budget(trials=3), meter=Meter(1.0), objectives=("score",), progress=False)

    url = f"sqlite:///{tmp_path / 'i.db'}"
    with pytest.raises(KeyboardInterrupt):
        OptunaEngine(storage=url, study_name="i", run_dir=tmp_path, resume=False, directions=["maximize"]).run(job())
    out = OptunaEngine(storage=url, study_name="i", run_dir=tmp_path, resume=True, directions=["maximize"]).run(job())
    interrupted, again = out.records[1], out.records[2]
    assert interrupted.state == "FAIL" and interrupted.user_attrs["fail_reason"] == "interrupted"
    assert again.params == interrupted.params and again.state == "COMPLETE" and again.retry_of == 1


# ------------------------------------------------------------------------------------------------ fail fast
@pytest.mark.parametrize("kwargs, error, match", [
    ({"budget": 0}, ConfigError, "budget"),
    ({"budget": -5}, ConfigError, "budget"),
    ({"selector": "bayes"}, ConfigError, "'selector'"),
    ({"space": "pairs"}, ConfigError, "'space'"),
    ({"backend": "dask"}, ConfigError, "'backend'"),
    ({"objectives": ("cost",)}, ConfigError, "'objectives'"),
    ({"objectives": ("score", "cost"), "pruner": optuna.pruners.MedianPruner()}, ConfigError, "prune"),
    ({"selector": "greedy", "space": "single"}, ConfigError, "greedy"),
    ({"selector": "profile-top-k", "prior": None}, ConfigError, "needs a prior"),
    ({"prior": "rgnn"}, ConfigError, "'prior'.*'predictor'.*'rgn'"),
    ({"selector": "rgn", "prior": "profile"}, ConfigError, "ranks blocks by 'rgn' only"),
    ({"selector": "logme", "prior": None}, ConfigError, "ranks blocks by 'logme' only"),
    ({"epochs": 0}, ConfigError, "'epochs'"),
    ({"lr": 1e-3}, ConfigError, "SearchSpace"),
    ({"storage": "sqlite:////nonexistent-dir/x/study.db"}, SearchAborted, "Cannot reach"),
    ({"storage": "not a url"}, ConfigError, "'storage'"),
])
def test_bad_arguments_fail_before_any_work(model, task, tmp_path, monkeypatch, kwargs, error, match):
    monkeypatch.setattr(autosub.hpo.searching, "fit", lambda *a, **k: pytest.fail("trained despite a bad argument"))
    args = {"budget": 3, "run_dir": tmp_path, **kwargs}
    budget = args.pop("budget")
    with pytest.raises(error, match=match):
        search(model, task, budget, **fast(**args))


def test_an_unknown_prior_name_is_refused_before_any_set_up_or_run_dir(model, task, tmp_path, monkeypatch):
    monkeypatch.setattr(autosub.hpo.searching, "prepare", lambda *a, **k: pytest.fail("set up despite a bad prior"))
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"got 'auto-rgn'") as err:
        search(model, task, 3, run_dir=run_dir, **fast(prior="auto-rgn"))
    assert all(f"'{n}'" in str(err.value) for n in ("predictor", "profile", "rgn", "cka", "logme", "spectrum"))
    assert not run_dir.exists()


def test_autosub_search_is_the_function_whatever_was_imported(model, task, tmp_path):
    import autosub
    import autosub.hpo.searching as module

    assert autosub.search is module.search  # no module is named like the function (no sys.modules class swap)
    with pytest.raises(ConfigError, match="'budget'"):
        autosub.search(model, task, 0, run_dir=tmp_path)


def test_diverged_trials_fail_with_their_reason_and_are_never_the_result(model, task, tmp_path):
    with pytest.raises(ConfigError, match="finished no trial.*TrainingDiverged.*lower the learning rate"):
        search(model, task, 2, run_dir=tmp_path, space=SearchSpace(lr=1e12), **fast())
    from _faults import study_of

    study = study_of(tmp_path, "autosub")
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "FAIL"] and all("epoch 1" in t.user_attrs["fail_reason"] for t in study.trials)


def test_a_block_override_on_a_backbone_no_rule_discovers(tmp_path):
    from torch import nn

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(16, 10))
    y = torch.arange(96) % 4
    x = torch.randn(96, 3, 8, 8) + y.view(-1, 1, 1, 1).float()
    res = search(backbone, (x, y), 3, blocks=["0", "2", "4"], **fast(run_dir=tmp_path / "run"))
    assert res.config["block_names"] == ["0", "2", "4"] and res.config["blocks"] == [["0"], ["2"], ["4"]]
    assert set(res.selection) <= {0, 1, 2} and res.score > 0.25
    back = SearchResult.load(res.save(tmp_path / "result")).to_model(backbone)  # the override travels with it
    with torch.no_grad():
        torch.testing.assert_close(back(x[:5]), res.model(x[:5]))


def test_cross_validated_trials_score_the_mean_over_folds_from_one_cache(model, task, tmp_path, monkeypatch):
    from autosub.training import setup as setup_module

    fills = []
    real = setup_module.ActivationCache.ensure

    def counting(self, boundaries, splits=None):
        fills.append(tuple(splits or ()))
        return real(self, boundaries, splits)

    monkeypatch.setattr(setup_module.ActivationCache, "ensure", counting)
    res = search(model, task, 2, run_dir=tmp_path, training={"cv_folds": 3}, **fast(epochs=2))
    done = [r for r in res.records if r.state == "COMPLETE"]
    assert len(done) == 2
    for r in done:
        folds = r.user_attrs["fold_scores"]
        assert len(folds) == 3 and r.values[0] == pytest.approx(sum(folds) / 3)
        assert r.intermediate == {}  # cross-validated trials are not pruned mid-way
    assert fills[0] == ("all",)  # one cache over train+val merged serves every fold
    unc = res.config["uncertainty"]
    assert unc["fold_scores"] == next(r for r in done if r.number == res.best_trial).user_attrs["fold_scores"]
    assert res.config["cv_folds"] == 3 and res.model is not None


def test_ties_go_to_the_cheaper_selection():
    from autosub.hpo.result import TrialRecord
    from autosub.hpo.result import preference

    def rec(n, score, params, cost):
        return TrialRecord(n, "COMPLETE", [score], {}, (n,), user_attrs={"trainable_params": params, "added_cost": cost})

    recs = [rec(0, 0.9, 5000, 0.5), rec(1, 0.9, 800, 0.6), rec(2, 0.9, 800, 0.2), rec(3, 0.85, 10, 0.0)]
    assert max(recs, key=preference).number == 2


# ------------------------------------------------------------------------------------- zero-cost priors
def test_predictor_prior_trains_no_profile_and_its_statistics_never_read_test(model, task, tmp_path, spied,
                                                                              monkeypatch):
    import autosub.selection.predictor as predictor
    from autosub.selection.stats import STATS

    monkeypatch.setattr(autosub.hpo.searching, "run_profile",
                        lambda *a, **k: pytest.fail("profiled despite prior='predictor'"))
    seen, real = [], predictor.predict_blocks

    def spy(model_, task_, **kw):
        seen.append(task_)
        return real(model_, task_, **kw)

    monkeypatch.setattr(predictor, "predict_blocks", spy)
    t = spied(task)
    res = search(model, t, 2, run_dir=tmp_path, **fast(prior="predictor"))
    assert len(seen) == 1 and seen[0].test is None and len(seen[0].train) == len(task.train)
    assert res.spent["phases"]["prior"] > 0 and res.prior["source"] == "predictor"
    assert "profile" not in set(res.trials["proposed_by"]) and res.spent["trials"] == 2
    ev = res.prior["evidence"]
    assert ev["kind"] == "predictor" and set(ev["values"]) >= set(STATS) and ev["wall_time"] > 0
    assert all(len(v) == 4 for v in ev["values"].values()) and ev["block_names"] == res.config["block_names"]
    assert res.records[0].selection == (res.prior["ranking"][0],)  # TPE tries the predictor's top block first
    assert t.test.reads and all("_test_score" in stack for stack in t.test.reads)


def test_a_statistic_prior_and_a_statistic_selector(model, task, tmp_path):
    from autosub.selection.predictor import corpus_directions

    res = search(model, task, 1, run_dir=tmp_path / "a", **fast(prior="rgn"))
    ev, d = res.prior["evidence"], corpus_directions()["rgn"]
    assert res.prior["source"] == "rgn" and ev["direction"] == d
    assert res.prior["ranking"] == sorted(range(4), key=lambda b: (-d * ev["values"]["rgn"][b], b))
    res = search(model, task, 5, run_dir=tmp_path / "b", selector="cka", space=SearchSpace(max_blocks=2),
                 **fast(prior="auto"))
    top = res.prior["ranking"]
    assert res.prior["source"] == "cka" and res.spent["phases"]["prior"] > 0
    assert [r.selection for r in res.records] == [(top[0],), tuple(sorted(top[:2]))]
    assert res.spent["stop_reason"] == "selector finished" and res.config["selector"] == {"name": "cka",
                                                                                         "direction": None}
