"""Budgets are kept: a time or compute budget ends within 5% of its limit, with slow trials (made slow by sleeping,
so the overshoot a wrong rule would cause is structural, not noise on a loaded machine): the running trial is
stopped and recorded PRUNED at its last epoch, no trial is started that cannot finish an epoch in time, and no
enqueued trial is left WAITING. Storage URLs with passwords never reach a log, a result or an error message."""
from __future__ import annotations

import logging
import time

import optuna
import pytest

from autosub.errors import ConfigError, SearchAborted
from autosub.hpo.budget import Budget, Meter
from autosub.hpo.engines import Job, TrialOutcome, mask_url
from autosub.hpo.engines.optuna import OptunaEngine
from autosub.hpo.selectors import SelectorContext, get_selector
from autosub.hpo.space import SearchSpace

EPOCH_S = 0.25  # each epoch of a trial sleeps this long
EPOCHS = 6  # a trial: 1.5 s


def _job(budget: Budget, meter: Meter, *, epochs: int = EPOCHS, epoch_s: float = EPOCH_S) -> Job:
    bound = SearchSpace(max_blocks=2).bind([10, 10, 10, 10])
    ctx = SelectorContext(space=bound, seed=0, n_trials=budget.trials, epochs=epochs)

    def run_trial(cand, report):
        for epoch in range(epochs):
            time.sleep(epoch_s)
            if report is not None:
                report(epoch, 0.1 * epoch)
        return TrialOutcome([0.1 * epochs], {})

    return Job(space=bound, selector=get_selector("random"), context=ctx, run_trial=run_trial, budget=budget,
               meter=meter, objectives=("score",), pruner=None, progress=False)


@pytest.mark.parametrize("budget, unit", [
    (Budget(seconds=6.4), 1.0),
    (Budget(compute=16.0, epoch_seconds=0.4), 0.4),  # 16 full-FT epochs of 0.4 s: 6.4 s
], ids=["seconds", "compute"])
def test_a_time_or_compute_budget_ends_within_5_percent_with_the_last_trial_stopped_at_its_last_epoch(
        budget, unit, tmp_path):
    limit = budget.seconds or budget.compute * budget.epoch_seconds
    engine = OptunaEngine(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="b", run_dir=tmp_path, resume=False,
                          directions=["maximize"])
    meter = Meter(epoch_seconds=unit)  # the search's clock starts here
    out = engine.run(_job(budget, meter, epochs=10))  # trials of 2.5 s: the third runs into the limit
    spent = meter.seconds
    assert 0.95 * limit <= spent <= 1.05 * limit, (spent, limit, out.stop_reason)
    states = [r.state for r in out.records]
    assert "WAITING" not in states and "RUNNING" not in states
    assert set(states[:-1]) == {"COMPLETE"}  # two trials of 2.5 s fit (one when the machine is slow to start)
    last = out.records[-1]  # the one running at the limit: stopped and recorded at its last epoch
    assert last.state == "PRUNED" and last.user_attrs["stopped_by"].startswith("budget stop after epoch")
    assert max(last.intermediate) == int(last.user_attrs["stopped_by"].split("epoch ")[1].split()[0]) < 10
    assert out.stop_reason.startswith("budget stop")


def test_no_trial_starts_when_not_one_epoch_fits_and_nothing_is_left_waiting(tmp_path):
    budget = Budget(seconds=1.9)  # trials of one 1-s epoch: the first runs; then < 0.9 s is left, less than an epoch
    engine = OptunaEngine(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="n", run_dir=tmp_path, resume=False,
                          directions=["maximize"])
    study = optuna.create_study(study_name="n", storage=f"sqlite:///{tmp_path / 's.db'}", load_if_exists=True,
                                direction="maximize")
    meter = Meter(epoch_seconds=1.0)
    job = _job(budget, meter, epochs=1, epoch_s=1.0)
    for sel in ((0,), (1,), (2,), (3,)):  # four enqueued proposals, as a prior-driven selector adds them
        study.enqueue_trial(job.space.encode(sel, defaults=True), user_attrs={"proposed_by": "test"})
    out = engine.run(job)
    assert [r.state for r in out.records] == ["COMPLETE", "FAIL", "FAIL", "FAIL"], out.stop_reason
    assert all(r.user_attrs["unrun"] and r.user_attrs["fail_reason"].startswith("not run") for r in out.records[1:])
    assert not any("seconds" in r.user_attrs for r in out.records[1:])  # settled without training
    # (on a machine so loaded that one 1-s trial takes > 1.9 s, the time limit itself is the reason)
    assert out.stop_reason.startswith(("budget: no epoch fits", "seconds"))


@pytest.mark.parametrize("url, shown", [
    ("postgresql://alice:s3cr%40t@db.example:5432/optuna", "postgresql://alice:***@db.example:5432/optuna"),
    ("postgresql+psycopg://bob:pw@127.0.0.1/x", "postgresql+psycopg://bob:***@127.0.0.1/x"),
    ("mysql://u:p@h/d?x=1", "mysql://u:***@h/d?x=1"),
    ("sqlite:////tmp/a:b@c/study.db", "sqlite:////tmp/a:b@c/study.db"),
    ("postgresql://carol@host/db", "postgresql://carol@host/db"),
])
def test_passwords_in_storage_urls_are_masked(url, shown):
    assert mask_url(url) == shown


def test_a_storage_password_never_reaches_a_log_or_an_error(tmp_path, caplog):
    url = "postgresql://alice:hunter2@127.0.0.1:9/optuna"  # port 9: nothing listens; the connection fails
    caplog.set_level(logging.DEBUG)
    with pytest.raises((SearchAborted, ConfigError)) as info:  # no server (or no driver installed)
        OptunaEngine(storage=url, study_name="m", run_dir=tmp_path, resume=False, directions=["maximize"])
    assert "alice:***@127.0.0.1" in str(info.value) and "hunter2" not in str(info.value)
    assert "hunter2" not in caplog.text
