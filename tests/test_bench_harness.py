"""The benchmark harness end to end on the micro configuration (timm test_resnet + real digits at 16 px): cells,
resume, corrupted cells, equal budgets, the report and plots, the test split read only after selection."""
from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from autosub.bench import (Allowance, BaseStrategy, BudgetExceeded, CellContext, Outcome, get_config,
                           register_strategy, register_task, run_benchmark)
from autosub.bench.runner import cell_path, read_cell, fingerprint
from autosub.bench.strategies import LinearProbe
from autosub.errors import ConfigError
from autosub.bench.tasks import get_task
from autosub.training.setup import prepare

pytest.importorskip("timm")
pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """The micro configuration (linear probe + random subsets, 1 task, 1 seed) run once for the module."""
    out = tmp_path_factory.mktemp("bench") / "micro"
    config = get_config("micro")
    summary = run_benchmark(config, out, command="pytest micro")
    return config, out, summary


def test_micro_run_writes_one_cell_per_strategy_and_a_full_report(micro):
    config, out, summary = micro
    cells = sorted(p.name for p in (out / "cells").glob("*.json"))
    assert cells == ["test-digits__n60__linear-probe__s0.json", "test-digits__n60__random__s0.json"]
    for name in cells:
        cell = json.loads((out / "cells" / name).read_text())
        assert cell["status"] == "ok"
        assert 0.0 <= cell["test"] <= 1.0 and cell["compute"] > 0 and cell["wall_s"] > 0
        assert cell["trainable_params"] > 0 and cell["n_train"] == 60
        assert "selection" in cell and "added_cost" in cell
    probe = json.loads((out / "cells" / cells[0]).read_text())
    assert probe["selection"] == "probe" and probe["added_cost"] == 0.0
    assert set(summary["mean_rank"]) == {"linear-probe", "random"}
    assert summary["tasks"] == ["test-digits"] and summary["seeds"] == [0] and summary["sizes"] == ["60"]
    assert set(summary["claims"]) == {"C1", "C2", "C3"} and all("holds" in c for c in summary["claims"].values())
    report = (out / "report.md").read_text()
    assert "| linear-probe |" in report and "| random |" in report and "mean rank" in report
    assert "pytest micro" in report  # the exact command is recorded
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["mean_rank"] == summary["mean_rank"] and on_disk["machine"]["cores"] >= 1
    for plot in ("acc_vs_size.png", "acc_vs_compute.png", "profiles.png"):
        data = (out / plot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


def test_a_zero_cost_cell_made_with_another_shipped_corpus_is_recomputed(micro, monkeypatch):
    """The predictor and the single statistics depend on the shipped corpus: a cell made with an older one is stale."""
    import autosub.selection.predictor as predictor

    config, out, _ = micro
    assert len(predictor.shipped_fingerprint()) == 16  # the real digest: the corpus files + the parameters
    before = {s: fingerprint(config, s) for s in ("predictor", "tpe-predictor", "auto-rgn", "linear-probe")}
    monkeypatch.setattr(predictor, "shipped_fingerprint", lambda: "another-corpus")
    after = {s: fingerprint(config, s) for s in before}
    assert all(after[s] != before[s] for s in ("predictor", "tpe-predictor", "auto-rgn"))
    assert after["linear-probe"] == before["linear-probe"]  # a baseline's cells do not depend on it


def test_resume_skips_finished_cells_and_recomputes_a_corrupted_one(micro):
    config, out, _ = micro
    again = run_benchmark(config, out)
    assert again["meta"]["cells_run"] == 0 and again["meta"]["cells_reused"] == 2
    path = cell_path(out, "test-digits", 60, "linear-probe", 0)
    before = json.loads(path.read_text())
    path.write_text(path.read_text()[: len(path.read_text()) // 2])  # an interrupted write / damaged file
    assert read_cell(path, fingerprint(config, "linear-probe")) is None
    third = run_benchmark(config, out)
    assert third["meta"]["cells_run"] == 1
    after = json.loads(path.read_text())
    assert after["test"] == before["test"] and after["selection"] == before["selection"]  # same seed, same result


class _Hog(BaseStrategy):
    """Ignores its allowance: keeps working until it has spent three times its budget."""

    family = "probe"

    def run(self, ctx: CellContext) -> Outcome:
        while ctx.allowance.spent <= 3 * ctx.allowance.limit:
            time.sleep(0.01)
        setup = prepare(ctx.model, ctx.task, seed=ctx.seed, device=ctx.device)
        return Outcome("probe", 0.0, setup.work)


class _Checked(BaseStrategy):
    """Asks its allowance before every unit of work, and would go on for ever: the allowance cuts it."""

    def run(self, ctx: CellContext) -> Outcome:
        while True:
            ctx.allowance.check("checked")
            time.sleep(0.01)


def test_a_strategy_that_overspends_is_flagged_and_left_out_and_one_that_checks_is_cut(tmp_path):
    register_strategy("test-hog", _Hog, overwrite=True)
    register_strategy("test-checked", _Checked, overwrite=True)
    config = replace(get_config("micro"), name="budget", strategies=("test-hog", "test-checked"),
                     budget=0.5, tolerance=0.5)
    summary = run_benchmark(config, tmp_path)
    hog = json.loads(cell_path(tmp_path, "test-digits", 60, "test-hog", 0).read_text())
    assert hog["status"] == "over_budget" and hog["compute"] > config.budget * (1 + config.tolerance)
    checked = json.loads(cell_path(tmp_path, "test-digits", 60, "test-checked", 0).read_text())
    assert checked["status"] == "cut" and "test" not in checked
    assert "test-hog" not in summary["mean_rank"] and "test-checked" not in summary["mean_rank"]
    assert {f["key"]["strategy"] for f in summary["flagged"]} == {"test-hog", "test-checked"}
    assert "test-hog" not in (tmp_path / "report.md").read_text().split("## Cells left out")[0]


def test_allowance_hands_searches_the_rest_of_the_budget_in_the_same_unit():
    a = Allowance(10.0, 2.0)
    b = a.budget(reserve=3.0, trials=5)
    assert b.epoch_seconds == 2.0 and b.trials == 5 and 6.9 < b.compute <= 7.0
    assert a.affords(9.0) and not a.affords(11.0)
    a._t0 -= 30  # 15 units spent
    with pytest.raises(BudgetExceeded):
        a.check("x")


def test_the_test_split_is_read_only_after_selection(tmp_path, spy_split):
    events: list[str] = []
    base = get_task("test-digits")

    def data_fn(model, *, size, seed, options):
        task = base.data_fn(model, size=size, seed=seed, options=options)
        task.test = spy = spy_split(task.test)
        events.append(spy)  # the spy itself, to count its reads
        return task

    class Watched(LinearProbe):
        def run(self, ctx):
            assert ctx.task.test is None  # the strategy gets the task without test
            events.append(("start", len(events[0].reads)))
            out = super().run(ctx)
            events.append(("end", len(events[0].reads)))
            return out

    register_task("test-spy-digits", base.model_fn, data_fn, requires=base.requires, overwrite=True)
    register_strategy("test-watched", Watched, overwrite=True)
    config = replace(get_config("micro"), name="spy", tasks=("test-spy-digits",), strategies=("test-watched",))
    summary = run_benchmark(config, tmp_path)
    spy = events[0]
    assert events[1] == ("start", 0) and events[2] == ("end", 0)  # nothing read test up to the selection
    assert len(spy.reads) > 0 and all("run_cell" in r for r in spy.reads)  # then the runner scored it, once per cell
    assert summary["valid_cells"] == 1


def test_an_unavailable_task_or_strategy_is_recorded_not_fatal(tmp_path):
    base = get_task("test-digits")
    register_task("test-missing", base.model_fn, base.data_fn, requires=("autosub.model.zoo:no_such_network",),
                  overwrite=True)
    config = replace(get_config("micro"), name="missing", tasks=("test-missing",),
                     strategies=("linear-probe", "predictor") if _predictor_missing() else ("linear-probe",))
    summary = run_benchmark(config, tmp_path)
    assert "test-missing" in summary["unavailable"] and "no_such_network" in summary["unavailable"]["test-missing"]
    if _predictor_missing():
        assert "predictor" in summary["unavailable"]
    assert summary["valid_cells"] == 0 and not list(tmp_path.glob("cells/*.json"))


def _predictor_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("autosub.selection.predictor") is None


def test_autosub_bench_lists_tasks_and_strategies_and_a_time_cap_stops_before_new_work(tmp_path, capsys):
    from autosub.cli.main import main

    assert main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "task     lite0-mnist" in listed and "strategy autosub " in listed and "strategy linear-probe" in listed
    summary = run_benchmark(get_config("micro"), tmp_path, max_seconds=0.0)
    assert summary["meta"]["stopped_early"] is True and summary["meta"]["cells_run"] == 0


def test_the_default_never_returns_worse_on_validation_than_the_endpoints_it_computes():
    from types import SimpleNamespace

    from autosub.bench.strategies import WithEndpoints

    bt = get_task("test-digits")
    model, task = bt.load(size=60, seed=0, options={"image_size": 16, "val_size": "quarter"})
    from autosub.training.setup import selection_view

    view = selection_view(task)
    weak = prepare(model, view, seed=0, device="cpu").work  # an untrained head: a poor subset

    class Fixed(WithEndpoints):
        def search(self, ctx, *, reserve=0.0):
            return SimpleNamespace(selection=(0,), score=0.0, model=weak, hparams={"lr": 1e-3}, prior=None,
                                   spent={"trials": 1, "stop_reason": "trials (1/1)", "compute": 0.1},
                                   config={"uncertainty": None, "block_names": ["layer1"]})

    ctx = CellContext(model=model, task=view, allowance=Allowance(1e6, 1.0), seed=0, epochs=1, device="cpu")
    out = Fixed(endpoint_lrs=(1e-3,)).run(ctx)
    ends = out.extra["endpoints"]
    assert out.extra["chosen"] in ("probe", "full") and out.val_score == max(ends["probe"], ends["full"])
    assert out.val_score >= ends["subset"]


def test_the_full_ft_endpoint_doubles_its_epochs_only_within_its_share_of_the_allowance():
    from autosub.bench.strategies import FullFinetune

    bt = get_task("test-digits")
    model, task = bt.load(size=60, seed=0, options={"image_size": 16, "val_size": "quarter"})
    from autosub.training.setup import selection_view

    view = selection_view(task)

    def runs(strategy, limit):  # an allowance whose clock barely moves: only the nominal costs decide
        ctx = CellContext(model=model, task=view, allowance=Allowance(limit, 1e9), seed=0, epochs=1, device="cpu")
        return sorted(int(k.split("epochs=")[1]) for k in strategy.run(ctx).extra["val_by_run"])

    assert runs(FullFinetune((1e-3,)), 20.0) == [1, 2, 4, 8, 16]  # the baseline: the whole allowance
    assert runs(FullFinetune((1e-3,), share=0.5), 20.0) == [1, 2, 4, 8]  # 16 more epochs would pass 10
    assert runs(FullFinetune((1e-3,), share=1.0, max_factor=2), 20.0) == [1, 2]
    assert "share" not in FullFinetune().describe()  # the baseline's fingerprint (its cells) did not change
    with pytest.raises(ConfigError, match="'share' parameter of FullFinetune"):
        FullFinetune(share=0.0)


def test_zero_cost_strategies_run_through_search_with_their_statistics_charged_to_the_allowance(tmp_path):
    from autosub.bench import get_strategy

    wanted = {"predictor": ("predictor", "auto"), "tpe-predictor": ("tpe", "predictor"), "auto-rgn": ("rgn", "auto"),
              "cka": ("cka", "auto"), "logme": ("logme", "auto")}
    for name, (selector, prior) in wanted.items():
        d = get_strategy(name).describe()
        assert (d["selector"], d["prior"]) == (selector, prior) and get_strategy(name).availability() is None
    config = replace(get_config("micro"), name="zero-cost", strategies=("predictor", "tpe-predictor", "auto-rgn"))
    summary = run_benchmark(config, tmp_path)
    assert summary["valid_cells"] == 3 and not summary["flagged"]
    for name, source in (("predictor", "predictor"), ("tpe-predictor", "predictor"), ("auto-rgn", "rgn")):
        cell = json.loads(next((tmp_path / "cells").glob(f"*__{name}__*.json")).read_text())
        extra = cell["extra"]
        assert cell["status"] == "ok" and extra["prior_source"] == source
        assert extra["phases"]["prior"] > 0 and extra["prior_seconds"] > 0  # inside the search, on its meter
        assert extra["prior_scores"] is None  # not a profile: kept out of the per-task profile plot
        assert cell["compute"] >= extra["search_compute"] > 0
    top = json.loads(next((tmp_path / "cells").glob("*__predictor__*.json")).read_text())
    assert list(top["selection"]) == top["extra"]["prior_ranking"][:1]  # max_blocks=1: the top block


def test_full_finetuning_spends_its_allowance_on_longer_runs_of_its_best_learning_rate():
    from autosub.bench.strategies import FullFinetune
    from autosub.training.setup import selection_view

    bt = get_task("test-digits")
    model, task = bt.load(size=60, seed=0, options={"image_size": 16, "val_size": "quarter"})
    # 7 units of 1000 s each: the fits themselves take a negligible share, so the schedule alone decides the runs
    ctx = CellContext(model=model, task=selection_view(task), allowance=Allowance(7.0, 1000.0), seed=0, epochs=1,
                      device="cpu")
    out = FullFinetune(lrs=(1e-3, 1e-2)).run(ctx)
    runs = out.extra["val_by_run"]
    grid = {k: v for k, v in runs.items() if k.endswith("epochs=1")}
    best_lr = max(grid, key=lambda k: (grid[k], -list(grid).index(k))).split(",")[0]
    assert sorted(runs) == sorted([*grid, f"{best_lr},epochs=2", f"{best_lr},epochs=4"])  # 8 epochs would not fit
    assert out.val_score == max(runs.values()) and out.selection == "all"
