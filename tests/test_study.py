"""The study bookkeeping (``autosub.hpo.engines._study``) and the one budget check (``Meter.exhausted``).

Synthetic objectives, in-memory or SQLite storages: no training, seconds in all.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import autosub
import autosub.hpo.budget as budget_module
from autosub.hpo.budget import Budget, Meter
from autosub.hpo.engines import Hooks, Job, StudyBook, StudyStore, TrialOutcome
from autosub.hpo.engines.optuna import OptunaEngine
from autosub.hpo.selectors import BaseSelector, Proposal, RandomSelector, SelectorContext
from autosub.hpo.space import SearchSpace

N = 4
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")


def _engine(tmp: Path, storage=None, *, resume=False) -> OptunaEngine:
    return OptunaEngine(storage=storage or optuna.storages.InMemoryStorage(), study_name="s", run_dir=tmp,
                        resume=resume, directions=["maximize"])


def _job(bound, selector, *, budget, meter=None, calls=None, callbacks=()) -> Job:
    def run_trial(cand, report):
        if calls is not None:
            calls.append(cand.selection)
        return TrialOutcome([0.1 * sum(cand.selection) + 0.01 * len(cand.selection)], {"curve": [0.5]})

    ctx = SelectorContext(space=bound, seed=0, n_trials=budget.trials)
    return Job(space=bound, selector=selector, context=ctx, run_trial=run_trial, budget=budget,
               meter=meter or Meter(1.0), objectives=("score",), progress=False, callbacks=list(callbacks))


# ---------------------------------------------------------------------------------------------- public API
def test_autosub_uses_only_optunas_public_api_and_never_unpickles_searcher_state():
    root = Path(autosub.__file__).parent
    private = re.compile(r"\._storage|_study_id|_trial_id|optuna\.Trial\(")
    hits = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert hits == []
    engines = root / "hpo" / "engines"
    assert not [p.name for p in engines.glob("*.py") if "pickle.load" in p.read_text()]


def test_engines_share_the_bookkeeping_by_composition():
    from autosub.hpo.engines.base import Engine

    assert OptunaEngine.__mro__[1] is Engine  # not a subclass of another engine
    engine_src = (Path(autosub.__file__).parent / "hpo" / "engines" / "ray.py").read_text()
    assert "OptunaEngine" not in engine_src and "from .optuna" not in engine_src


# ------------------------------------------------------------------------------------------- per-trial attrs
def test_every_trial_records_what_it_trained_and_what_it_cost(tmp_path):
    bound = SearchSpace(max_blocks=2).bind([100] * N, head_params=10)
    seen = []
    out = _engine(tmp_path).run(_job(bound, RandomSelector(), budget=Budget(trials=4), meter=Meter(2.0),
                                     callbacks=[lambda rec, model: seen.append((rec.number, model is not None))]))
    assert [r.state for r in out.records] == ["COMPLETE"] * 4 and out.stop_reason == "trials (4/4)"
    for r in out.records:
        a = r.user_attrs
        assert {"selection", "n_blocks", "proposed_by", "trainable_params", "added_cost", "seconds", "compute",
                "cum_compute", "curve"} <= set(a)
        assert tuple(a["selection"]) == r.selection and a["n_blocks"] == len(r.selection)
        assert a["trainable_params"] == bound.trainable_params(r.selection) and a["proposed_by"] == "random"
        assert a["compute"] == pytest.approx(a["seconds"] / 2.0, abs=1e-4)  # seconds are rounded
    cum = [r.user_attrs["cum_compute"] for r in out.records]
    assert cum == sorted(cum)  # the search's compute so far only grows
    assert [n for n, _ in seen] == [0, 1, 2, 3]  # the after-trial step called the callbacks once per trial


# ---------------------------------------------------------------------------------- infeasible, duplicates
class _Plan(BaseSelector):
    """Proposes the given selections once, then stops."""

    def __init__(self, selections):
        super().__init__()
        self.selections = selections

    def initial(self, ctx):
        return [Proposal(ctx.space.encode(s, defaults=True), {"proposed_by": "plan"}) for s in self.selections]

    def propose(self, ctx, history):
        return None


def test_an_infeasible_proposal_fails_with_its_reason_and_is_never_trained(tmp_path):
    bound = SearchSpace(max_blocks=1).bind([100] * N)
    calls = []
    out = _engine(tmp_path).run(_job(bound, _Plan([(0, 1), (2,)]), budget=Budget(trials=5), calls=calls))
    bad, good = out.records
    assert bad.state == "FAIL" and bad.user_attrs["fail_reason"].startswith("infeasible:")
    assert good.state == "COMPLETE" and calls == [(2,)]
    assert out.stop_reason == "selector finished" and not _Plan.samples  # overrides propose: waits, never samples


def test_duplicates_reuse_the_finished_twin_and_an_exhausted_space_stops_the_search(tmp_path):
    bound = SearchSpace(kind="single", lr=1e-3).bind([100, 100])  # two configurations in all
    calls = []
    out = _engine(tmp_path).run(_job(bound, RandomSelector(), budget=Budget(trials=200), calls=calls))
    assert sorted(calls) == [(0,), (1,)]  # each configuration trained once
    twins = [r for r in out.records if "duplicate_of" in r.user_attrs]
    assert len(twins) >= 25 and out.stop_reason.startswith("space exhausted")
    by_number = {r.number: r for r in out.records}
    for r in twins:
        twin = by_number[r.user_attrs["duplicate_of"]]
        assert twin.state == r.state == "COMPLETE" and twin.params == r.params and twin.values == r.values
        assert r.user_attrs["curve"] == twin.user_attrs["curve"]


# ------------------------------------------------------------------------------------------------ budget
def test_the_budget_check_names_the_first_limit_reached():
    m = Meter(epoch_seconds=1e-9)
    m.trials = 3
    assert m.exhausted(Budget(trials=3)) == "trials (3/3)"
    assert m.exhausted(Budget(trials=5)) is None
    assert m.exhausted(Budget(trials=5, compute=1)).startswith("compute (")
    assert m.exhausted(Budget(trials=9), trials=9) == "trials (9/9)"  # a count of started trials (Ray)
    idle = Meter(epoch_seconds=1e9)
    assert idle.exhausted(Budget(trials=5, compute=1, seconds=1e6)) is None
    assert idle.seconds_left(Budget(trials=5)) is None
    assert 0 < idle.seconds_left(Budget(seconds=1e6, compute=1)) <= 1e6


def test_a_meter_away_from_the_driver_counts_on_the_wall_clock_as_a_deadline(monkeypatch):
    m = Meter(epoch_seconds=10.0)
    copy = pickle.loads(pickle.dumps(m))
    assert copy.exhausted(Budget(seconds=100)) is None and copy.epoch_seconds == 10.0
    real = budget_module.time.time
    monkeypatch.setattr(budget_module.time, "time", lambda: real() + 150)  # 150 s later on the wall clock
    assert copy.seconds >= 150 and copy.exhausted(Budget(seconds=100)).startswith("seconds (")
    assert copy.exhausted(Budget(compute=12)).startswith("compute (")  # 150 s = 15 full-FT epochs
    assert m.exhausted(Budget(seconds=100)) is None  # the driver's own meter runs on its own clock


def test_a_spent_compute_budget_stops_the_engine_after_one_trial(tmp_path):
    bound = SearchSpace(max_blocks=2).bind([100] * N)
    out = _engine(tmp_path).run(_job(bound, RandomSelector(), budget=Budget(trials=10, compute=1),
                                     meter=Meter(epoch_seconds=1e-9)))
    assert len(out.records) == 1 and out.stop_reason.startswith("compute (")


# --------------------------------------------------------------------------------------------- lost trials
def _book(tmp_path: Path, bound) -> StudyBook:
    store = StudyStore(storage=f"sqlite:///{tmp_path / 'b.db'}", study_name="b", run_dir=tmp_path, resume=False,
                       directions=["maximize"])
    job = _job(bound, RandomSelector(), budget=Budget(trials=5))
    return store.open(job, sampler=RandomSelector().sampler(job.context), pruner=optuna.pruners.NopPruner())


def test_a_trial_lost_with_its_driver_is_failed_by_number_with_its_reason_and_retried(tmp_path):
    bound = SearchSpace(max_blocks=2).bind([100] * N)
    book = _book(tmp_path, bound)
    trial = book.study.ask()  # asked by a driver that then died: its Trial object is gone
    bound.suggest(trial)
    number, params = trial.number, dict(trial.params)
    del trial
    again = pickle.loads(pickle.dumps(book))  # a fresh process: the study is loaded again from the storage
    again.fail_lost(number, "lost: the driver stopped")
    again.retry(params, number, "lost: the driver stopped")
    lost, retry = again.records()
    assert lost.state == "FAIL" and lost.user_attrs["fail_reason"] == "lost: the driver stopped"
    assert retry.state == "WAITING" and retry.retry_of == number and retry.user_attrs["retry_reason"].startswith("lost")
    assert book.record(number).user_attrs["fail_reason"] == "lost: the driver stopped"  # the same storage


def test_a_run_continued_for_a_lost_trial_is_recorded_once_as_a_new_trial(tmp_path):
    bound = SearchSpace(max_blocks=2).bind([100] * N)
    book = _book(tmp_path, bound)
    trial = book.study.ask()
    book.label(trial, bound.suggest(trial), ray_experiment="e", tune_trial="t1")
    trial.report(0.4, 1)
    book.fail_lost(trial.number, "lost: continued")
    kw = dict(state=TrialState.COMPLETE, values=[0.7], user_attrs={"curve": [0.4, 0.7]}, intermediate={2: 0.7})
    new = book.add_continuation(trial.number, **kw)
    assert book.add_continuation(trial.number, **kw) == new  # recorded once
    rec = book.record(new)
    assert rec.state == "COMPLETE" and rec.values == [0.7] and rec.params == trial.params
    assert rec.retry_of == trial.number and rec.intermediate == {1: 0.4, 2: 0.7}
    assert rec.user_attrs["ray_experiment"] == "e" and "fail_reason" not in rec.user_attrs
    assert len(book.records()) == 2


def test_known_results_become_finished_trials_and_reach_the_callbacks(tmp_path):
    bound = SearchSpace(max_blocks=2).bind([100] * N)
    book = _book(tmp_path, bound)

    class Known(RandomSelector):
        def initial(self, ctx):
            return [Proposal(ctx.space.encode((1,), defaults=True), {"proposed_by": "profile"}, values=[0.3],
                             state="COMPLETE"), Proposal(ctx.space.encode((2,), defaults=True))]

    book.selector = Known()
    seen = []
    assert book.begin(resumed=False, hooks=Hooks(Meter(1.0), None, [lambda r, m: seen.append(r.state)])) == ""
    done, queued = book.records()
    assert done.state == "COMPLETE" and done.values == [0.3] and "cum_compute" in done.user_attrs
    assert queued.state == "WAITING" and seen == ["COMPLETE"]


def test_the_default_storage_is_a_journal_file_and_a_run_dir_with_an_old_study_db_keeps_it(tmp_path):
    from optuna.storages import JournalStorage, RDBStorage

    from autosub.hpo.engines import default_storage, open_storage

    fresh = tmp_path / "new"
    storage, shown = open_storage(None, fresh)
    assert isinstance(storage, JournalStorage) and shown == str((fresh / "study.journal").resolve())
    assert default_storage(fresh) == shown and (fresh / "study.journal").is_file()
    optuna.create_study(study_name="s", storage=storage).enqueue_trial({"x": 1.0})
    again, _ = open_storage(None, fresh)  # a second opening (a resume) reads the same study back
    assert [t.state for t in optuna.load_study(study_name="s", storage=again).trials] == [TrialState.WAITING]

    old = tmp_path / "old"  # a run of an earlier autosub: its SQLite study stays the storage, so it resumes
    old.mkdir()
    optuna.create_study(study_name="s", storage=f"sqlite:///{old / 'study.db'}").enqueue_trial(
        {"x": 2.0}, user_attrs={"from": "sqlite"})
    storage, shown = open_storage(None, old)
    assert isinstance(storage, RDBStorage) and shown == f"sqlite:///{(old / 'study.db').resolve()}"
    assert [t.user_attrs for t in optuna.load_study(study_name="s", storage=storage).trials] == [{"from": "sqlite"}]
    assert not (old / "study.journal").exists()
