"""Fault injection: a search driver SIGKILLed at five points (cache fill, prior, mid-trial, between trials, at the
end), then resumed with the same arguments. Every time: no completed trial lost or duplicated, the interrupted
trial failed with a reason and retried at once, the prior's finished work reused, the study consistent (nothing
left WAITING or RUNNING), and the search finishing its original budget (the budget is the study's total).

The driver runs in a subprocess and kills itself with SIGKILL exactly at the point under test (a patched hook),
so where the kill lands is structural, not a matter of timing. Resume checks against another model or another
space are refused before any trial. Only Optuna's public API reads the study.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch

from autosub.data.task import Split, Task
from autosub.errors import ConfigError
from autosub.hpo.searching import search
from autosub.hpo.space import SearchSpace

from _faults import counted as _counted
from _faults import study_of, trials_of

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 4

DRIVER = textwrap.dedent('''
    import os, signal, sys
    import torch, timm
    import autosub.hpo.searching as S
    from autosub.data.datasets import digits
    from autosub.data.task import Split, Task

    point, run_dir = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False).eval()
    t = digits(model=model, image_size=16, samples_per_class=6)
    task = Task(train=t.train, val=Split(t.val.inputs[:60], t.val.targets[:60], name="val"),
                num_classes=t.num_classes, test=Split(t.test.inputs[:60], t.test.targets[:60], name="test"))

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "cache":  # while the prefix cache is being filled
        real_caches = S._caches
        S._caches = lambda plan, setup, boundaries: (real_caches(plan, setup, boundaries), die())[0]
    elif point == "prior":  # while the profile prior runs: after its second entry was checkpointed
        import autosub.selection.profiling as P
        real_put = P._Checkpoint.put
        def put(self, entries, epochs):
            real_put(self, entries, epochs)
            if len(self.entries) == 2:
                die()
        P._Checkpoint.put = put
    elif point == "mid-trial":  # after the first epoch of the second trial that trains
        real_fit, calls = S.fit, []
        def fit(*a, callback=None, **k):
            calls.append(1)
            if len(calls) == 2 and callback is not None:
                def dying(epoch, score):
                    callback(epoch, score)
                    die()
                return real_fit(*a, callback=dying, **k)
            return real_fit(*a, callback=callback, **k)
        S.fit = fit
    elif point == "end":  # every trial done, before the result is built
        S._finish = lambda *a, **k: die()
    callbacks = []
    if point == "between":  # after the second trial was told to the study, before the third starts
        seen = []
        callbacks = [lambda rec, model: (seen.append(rec.number), len(seen) == 2 and die())]
    S.search(model, task, %(budget)d, epochs=2, seed=0, space=S.SearchSpace(max_blocks=2),
             run={"run_dir": run_dir, "study_name": "f", "progress": False, "callbacks": callbacks})
    print("FINISHED")
''') % {"budget": BUDGET}


@pytest.fixture(scope="module")
def model():
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False).eval()


@pytest.fixture(scope="module")
def task(model):
    from autosub.data.datasets import digits

    t = digits(model=model, image_size=16, samples_per_class=6)
    return Task(train=t.train, val=Split(t.val.inputs[:60], t.val.targets[:60], name="val"),
                num_classes=t.num_classes, test=Split(t.test.inputs[:60], t.test.targets[:60], name="test"))


def _drive(point: str, run_dir: Path) -> subprocess.CompletedProcess:
    script = run_dir.parent / f"driver-{point}.py"
    script.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, str(script), point, str(run_dir)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=str(run_dir.parent))


def _trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    return trials_of(run_dir, "f")


def _state(run_dir: Path) -> dict:
    study = study_of(run_dir, "f")
    return {} if study is None else dict(study.user_attrs.get("autosub", {}))


@pytest.mark.parametrize("point", ["cache", "prior", "mid-trial", "between", "end"])
def test_a_driver_killed_at_any_point_resumes_and_finishes_its_original_budget(point, model, task, tmp_path,
                                                                               monkeypatch):
    run_dir = tmp_path / "run"
    proc = _drive(point, run_dir)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    before = _trials(run_dir)
    complete_before = {t.number: (t.params, t.values) for t in before if t.state.name == "COMPLETE"}
    running_before = [t.number for t in before if t.state.name == "RUNNING"]
    prior_before = _state(run_dir).get("prior")
    if point == "mid-trial":
        assert len(running_before) == 1  # the killed trial, left RUNNING by the dead driver
    profiled: list = []
    if point in ("mid-trial", "between", "end"):  # the prior finished before the kill: it must be reused
        monkeypatch.setattr("autosub.hpo.searching.run_profile", lambda *a, **k: profiled.append(1) or 1 / 0)
    partial = run_dir / "prior-f.partial.json"
    if point == "prior":  # killed mid-profile: its two finished entries are reused, the others trained
        import autosub.hpo.searching as S

        assert len(json.loads(partial.read_text())["entries"]) == 2
        real_profile = S.run_profile

        def spy(*a, **k):
            prof = real_profile(*a, **k)
            whole = real_profile(*a, **{**k, "checkpoint": None})  # the same profile, uninterrupted
            profiled.append((prof, whole))
            return prof

        monkeypatch.setattr(S, "run_profile", spy)

    res = search(model, task, BUDGET, epochs=2, seed=0, space=SearchSpace(max_blocks=2), resume=True,
                 run={"run_dir": run_dir, "study_name": "f", "progress": False})

    after = _trials(run_dir)
    if point == "prior":
        (prof, whole), = profiled
        n = len(whole.entries)
        assert prof.config["reused"] == 2 and prof.n_fits == n - 2 and whole.n_fits == n  # not retrained
        assert prof.ranking() == whole.ranking() and res.prior == _state(run_dir)["prior"]
        assert [e.scores for e in prof.entries] == [e.scores for e in whole.entries]
        assert not partial.exists()  # recorded in the study: the checkpoint is gone
    else:
        assert not profiled
    assert not [t for t in after if t.state.name in ("WAITING", "RUNNING")]  # the study is consistent
    for number, (params, values) in complete_before.items():  # no completed trial lost or changed
        assert after[number].state.name == "COMPLETE" and after[number].params == params
        assert after[number].values == values
    trained = [t for t in after if t.state.name == "COMPLETE" and not t.user_attrs.get("known")
               and "duplicate_of" not in t.user_attrs]
    keys = [tuple(sorted(t.params.items())) for t in trained]
    assert len(keys) == len(set(keys))  # nothing trained twice to completion
    assert len(_counted(after)) == BUDGET and res.spent["trials"] == BUDGET  # the original budget, finished
    for number in running_before:  # the interrupted trial: failed with a reason, retried at once
        lost = after[number]
        assert lost.state.name == "FAIL"
        assert res.records[number].user_attrs["fail_reason"].startswith("lost: its driver")
        retry = [t for t in after if t.user_attrs.get("retry_of") == number]
        assert len(retry) == 1 and retry[0].params == lost.params and retry[0].state.name == "COMPLETE"
        assert retry[0].number == min(t.number for t in after if t.number > number and not t.user_attrs.get("known"))
    if point in ("mid-trial", "between", "end"):
        assert res.prior == prior_before  # the prior the dead driver computed, not a new one
    assert res.test_score is not None and res.score == max(t.values[0] for t in after if t.state.name == "COMPLETE")


def test_resume_refuses_another_model_or_another_space_before_any_trial(model, task, tmp_path, monkeypatch):
    kw = dict(epochs=1, seed=0, prior=None, run={"run_dir": tmp_path, "study_name": "v", "progress": False})
    search(model, task, 1, space=SearchSpace(max_blocks=2), **kw)
    import timm

    torch.manual_seed(1)
    twin = timm.create_model("test_resnet", pretrained=False).eval()  # same blocks, other weights
    monkeypatch.setattr("autosub.hpo.searching.fit", lambda *a, **k: 1 / 0)  # no trial may start
    with pytest.raises(ConfigError, match="was run on another model"):
        search(twin, task, 2, space=SearchSpace(max_blocks=2), resume=True, **kw)
    with pytest.raises(ConfigError, match=r"another search space \(differs in \['max_blocks'\]"):
        search(model, task, 2, space=SearchSpace(max_blocks=3), resume=True, **kw)
    trials = study_of(tmp_path, "v").get_trials()
    assert len(trials) == 1


def test_a_finished_search_is_extended_only_by_a_bigger_budget(model, task, tmp_path):
    kw = dict(epochs=1, seed=0, prior=None, selector="random",
              run={"run_dir": tmp_path, "study_name": "x", "progress": False})
    search(model, task, 2, **kw)
    same = search(model, task, 2, resume=True, **kw)  # the same budget: already spent, nothing more runs
    assert same.spent["trials"] == 2 and len([r for r in same.records if r.state != "FAIL"]) == 2
    more = search(model, task, 3, resume=True, **kw)
    assert more.spent["trials"] == 3 and len([r for r in more.records if r.state == "COMPLETE"]) == 3


def test_resume_join_is_validated():
    with pytest.raises(ConfigError, match="'resume' parameter of search must be False, True or 'join'"):
        search(None, None, 1, resume="yes")


def test_ctrl_c_in_a_trial_then_resume_finishes_the_original_budget(model, task, tmp_path, monkeypatch):
    import autosub.hpo.searching as S

    real, calls = S.fit, []

    def interrupt_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    kw = dict(epochs=1, seed=0, prior=None, selector="random", space=SearchSpace(max_blocks=2),
              run={"run_dir": tmp_path, "study_name": "c", "progress": False})
    monkeypatch.setattr(S, "fit", interrupt_the_second)
    with pytest.raises(KeyboardInterrupt):
        search(model, task, 3, **kw)
    monkeypatch.setattr(S, "fit", real)
    res = search(model, task, 3, resume=True, **kw)  # the same budget: the trials it had left
    trials = study_of(tmp_path, "c").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].user_attrs["fail_reason"] == "interrupted"
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].params == trials[1].params  # retried first
    assert res.spent["trials"] == 3 and len(_counted(trials)) == 3
    assert res.records[1].user_attrs["fail_reason"] == "interrupted" and len(res.records) == 4
