"""A time budget holds across the worker processes of one study (``resume="join"``), and compute sums over them.

Three worker processes run one search on a shared storage (a journal file; PostgreSQL when
``$AUTOSUB_TEST_POSTGRES`` is set, as in ``test_postgres``) with ``Budget(seconds=S)``; the third joins when the
first has already spent part of the budget. Each epoch sleeps ``EPOCH_S`` (so the overshoot a wrong rule causes is
structural, not noise on a loaded machine). The rule (``autosub/hpo/budget.py``): ``seconds`` is the search's wall
time — the union of the workers' intervals —, so every worker stops at one deadline, the first worker's start + S:

* no trial starts after the deadline;
* the search's last trial ends within the deadline plus one epoch's length (the longest epoch recorded: the
  running trial stops at its last epoch that fits, on an estimate of the next one) plus ``SLACK`` for the study
  writes that end a trial on a loaded machine; and not more than two epochs before it (the budget is used);
* the compute is exact across workers: every worker's own seconds are recorded under its own key, and their sum
  is what the last worker reports as the study's work (``work_seconds``, ``compute`` × the unit).

The pure rule (union of intervals, live workers, a resume's fresh window) is tested on ``Meter.sync`` directly.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from autosub.hpo.budget import Budget, Meter
from autosub.hpo.engines._study import CLOCK_KEY, StudyStore, sync_clock
from conftest import throwaway_database

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 20.0  # the budget S
EPOCH_S = 0.6  # each epoch of a trial sleeps this long on top of its (tiny) training
UNIT = 0.5  # Budget.epoch_seconds: the compute unit, given (no calibration)
SLACK = 1.0  # s: the study writes after a trial's last epoch (tell, timing, clock) on a loaded machine

WORKER = textwrap.dedent('''
    import json, sys, time
    import torch, timm
    import autosub.hpo.searching as S
    from autosub.data.datasets import digits
    from autosub.hpo.budget import Budget

    url, run_dir, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False).eval()
    task = digits(model=model, image_size=16, samples_per_class=4)
    real_fit = S.fit
    def fit(*a, callback=None, **k):  # every epoch of a trial is slow
        def slow(epoch, score):
            time.sleep(%(epoch_s)r)
            callback(epoch, score)
        return real_fit(*a, callback=slow if callback is not None else None, **k)
    S.fit = fit
    res = S.search(model, task, Budget(seconds=%(seconds)r, epoch_seconds=%(unit)r), selector="random", prior=None,
                   epochs=4, seed=seed, pruner=None, resume="join",
                   run={"run_dir": run_dir, "storage": url, "study_name": "clock", "progress": False})
    print("SPENT " + json.dumps(res.spent))
''') % {"epoch_s": EPOCH_S, "seconds": SECONDS, "unit": UNIT}


@pytest.fixture
def storage(tmp_path):
    """A journal file; or a fresh database on ``$AUTOSUB_TEST_POSTGRES``."""
    base = os.environ.get("AUTOSUB_TEST_POSTGRES")
    if not base:
        yield str(tmp_path / "study.log")
        return
    pytest.importorskip("psycopg", reason="no PostgreSQL driver: pip install 'psycopg[binary]'")
    with throwaway_database(base, "autosub_clock") as url:
        yield url


def _study(storage: str) -> optuna.Study | None:
    from autosub.hpo.engines._study import open_storage

    store, _ = open_storage(storage, Path("."))
    try:
        return optuna.load_study(study_name="clock", storage=store)
    except KeyError:
        return None


def test_three_workers_of_one_study_stop_at_one_deadline_and_their_compute_sums(storage, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    script = tmp_path / "worker.py"
    script.write_text(WORKER)

    def start(i: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), storage, str(tmp_path / f"w{i}"), str(i)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path))

    procs = [start(0), start(1)]
    t0 = time.time()  # the third worker joins late: once the study has finished trials (the old rule's failure)
    while time.time() - t0 < 60:
        study = _study(storage)
        if study is not None and len([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]) >= 2:
            break
        time.sleep(0.5)
    procs.append(start(2))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    spent = [json.loads(next(line for line in out.splitlines() if line.startswith("SPENT "))[6:]) for out, _ in outs]

    study = _study(storage)
    entries = {k: v for k, v in study.user_attrs.items() if k.startswith(CLOCK_KEY)}
    assert len(entries) == 3 and all(e["done"] for e in entries.values())  # one key per worker, none overwritten
    begin = min(e["beat"] - e["seconds"] for e in entries.values())  # the first worker's start
    deadline = begin + SECONDS
    epoch = max(x for e in entries.values() for x in e["epochs"])  # the longest epoch of the search
    trials = study.get_trials(deepcopy=False)
    ran = [t for t in trials if "seconds" in t.user_attrs and not t.user_attrs.get("unrun")]
    assert len({t.user_attrs["pid"] for t in ran}) == 3, [(t.number, t.user_attrs["pid"]) for t in ran]
    late = procs[2].pid
    assert any(t.user_attrs["pid"] == late for t in ran)  # the late worker ran, and stopped at the same deadline
    starts = {t.number: t.datetime_start.timestamp() - deadline for t in ran}
    assert max(starts.values()) < 0, starts  # no trial started after the deadline
    last = max(t.datetime_complete.timestamp() for t in ran)
    print(f"deadline margins: last trial ended {last - deadline:+.2f} s, last start {max(starts.values()):+.2f} s, "
          f"longest epoch {epoch:.2f} s, {len(ran)} trials by {len({t.user_attrs['pid'] for t in ran})} workers")
    assert deadline - 2 * epoch - SLACK <= last <= deadline + epoch + SLACK, (last - deadline, epoch)
    assert not [t for t in trials if t.state.name in ("WAITING", "RUNNING")]
    stopped = [t for t in ran if t.state.name == "PRUNED"]
    assert stopped and all(t.user_attrs["stopped_by"].startswith("budget stop") for t in stopped)

    # compute: each worker's own seconds, under its own key, sum to the study's work (no lost update)
    by_pid = {e["pid"]: e for e in entries.values()}
    for p, s in zip(procs, spent):
        assert abs(by_pid[p.pid]["seconds"] - s["worker_seconds"]) < 0.05, (by_pid[p.pid], s)
        assert s["workers"] == 3 or p is not procs[-1]
    total = sum(e["seconds"] for e in entries.values())
    final = max(entries.values(), key=lambda e: e["beat"])  # the last worker to finish read every final entry
    report = next(s for p, s in zip(procs, spent) if p.pid == final["pid"])
    assert abs(report["work_seconds"] - total) < 0.05, (report, total)
    assert abs(report["compute"] * UNIT - report["work_seconds"]) < 1e-3
    assert report["seconds"] <= SECONDS + epoch + SLACK  # the study's wall time, as the last worker saw it
    assert total > 1.5 * report["seconds"]  # three workers overlapped: their work exceeds the wall time


# ------------------------------------------------------------------------------------------------ the pure rule
def _entry(start: float, end: float, *, live: bool = False, done: bool = False) -> dict:
    return {"beat": end, "seconds": end - start, "live": live, "done": done, "phases": {"cache": 1.0}, "epochs": [2.0]}


def test_overlapping_workers_share_one_clock_and_their_work_sums():
    m = Meter(epoch_seconds=10.0)
    now = time.time()
    # two workers started 30 s and 12 s ago; one still runs, one stopped 5 s ago
    m.sync([_entry(now - 30, now, live=True), _entry(now - 12, now - 5, done=True)])
    assert 29.5 < m.seconds < 30.5  # the study's wall time: from the first start
    assert 9.5 < m.seconds_left(Budget(seconds=40)) < 10.5  # one deadline: the first start + 40
    assert 36.5 < m.work_seconds < 37.5 and 3.6 < m.compute < 3.8  # 30 + 7 s of work (+ this worker's ms)
    # the compute left is shared by the two workers running now (this one and the live one)
    assert abs(m.seconds_left(Budget(compute=5.0)) - (5.0 - m.compute) * 10.0 / 2) < 0.05
    assert m.report()["phases"]["cache"] == 2.0 and m.report()["workers"] == 3
    assert m.epoch_estimate == 2.0  # a new worker's first estimate: the study's latest epochs


def test_a_resume_after_every_worker_died_gets_a_fresh_window_for_what_is_left():
    m = Meter()
    now = time.time()
    # an earlier window: two overlapping workers, 0–20 s and 10–25 s, an hour ago; then nobody ran
    m.sync([_entry(now - 3600, now - 3580), _entry(now - 3590, now - 3575)])
    assert 24.5 < m.seconds < 25.5  # the union (25 s), not the sum (35 s) nor the hour since
    assert 34.5 < m.seconds_left(Budget(seconds=60)) < 35.5  # the new window: what is left, from this start
    m.sync([_entry(now - 3600, now - 3580), _entry(now - 3590, now - 3575)], legacy={"seconds": 5.0})
    assert 29.5 < m.seconds < 30.5  # a total recorded by an older autosub counts as one more closed window


def test_the_clock_goes_through_the_study_one_key_per_worker(tmp_path):
    study = optuna.create_study(study_name="k", storage=f"sqlite:///{tmp_path / 's.db'}")
    a, b = Meter(epoch_seconds=1.0), Meter(epoch_seconds=1.0)
    sync_clock(study, a)
    sync_clock(study, b)  # both run in this process: b counts a as another call of it, not as running
    sync_clock(study, a, done=True)
    keys = sorted(k for k in study.user_attrs if k.startswith(CLOCK_KEY))
    assert keys == sorted(f"{CLOCK_KEY}{m.worker}" for m in (a, b))
    assert study.user_attrs[f"{CLOCK_KEY}{a.worker}"]["done"] and not study.user_attrs[f"{CLOCK_KEY}{b.worker}"]["done"]
    assert a.report()["workers"] == 2 and a._live == 0


def test_a_new_search_that_takes_over_a_study_that_never_started_does_not_count_its_set_up(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="t", storage=url, direction="maximize")
    dead = Meter()
    sync_clock(study, dead, done=True)  # a driver that died while setting up: a clock, no trial
    study.set_user_attr(f"{CLOCK_KEY}{dead.worker}", {**dead.entry(done=True), "seconds": 500.0})
    kept = StudyStore(storage=url, study_name="t", run_dir=tmp_path, resume="join", directions=["maximize"])
    m = Meter()
    kept.sync_clock(m)
    assert m.seconds >= 500  # a joining worker counts it: the study is one search
    StudyStore(storage=url, study_name="t", run_dir=tmp_path, resume=False, directions=["maximize"])
    fresh = Meter()
    sync_clock(study, fresh)
    assert fresh.seconds < 100  # a new search took the study over: the dead set-up's time (and m's) is void
