"""The benchmark report from hand-made cells: intervals, ranks, wins/ties/losses, the CV effect, claims C1–C3,
the Markdown table and the plots (no training)."""
from __future__ import annotations

import math

import pytest

from autosub.bench import BenchConfig, register_task
from autosub.bench.report import (claims, cv_effect, markdown, mean_ci, mean_ranks, near_best_share, summarize,
                                  win_tie_loss, write_report)

STRATS = ("linear-probe", "full-ft", "greedy", "autosub", "autosub-cv")
FAMILY = {"linear-probe": "probe", "full-ft": "full"}


def cell(task, size, strategy, seed, test, *, selection=(1,), compute=5.0, status="ok", prior=None):
    return {"key": {"task": task, "size": size, "strategy": strategy, "seed": seed}, "status": status, "test": test,
            "val": test, "compute": compute, "wall_s": 1.0, "trainable_params": 100, "added_cost": 0.1,
            "selection": list(selection) if not isinstance(selection, str) else selection,
            "n_blocks": None if isinstance(selection, str) else len(selection), "n_train": size or 1000,
            "family": FAMILY.get(strategy, "subtuning"), "extra": {"prior_scores": prior}}


@pytest.fixture()
def cells():
    out = []
    for seed in (0, 1, 2):
        for task, sel in (("a", (3,)), ("b", (0, 1))):
            # little data: SubTuning beats both baselines; lots of data: greedy 0.5 pt under full finetuning
            out += [cell(task, 50, "linear-probe", seed, 0.60, selection="probe"),
                    cell(task, 50, "full-ft", seed, 0.55, selection="all"),
                    cell(task, 50, "greedy", seed, 0.70 + 0.01 * seed, selection=sel),
                    cell(task, 50, "autosub", seed, 0.72, selection=sel, prior=[0.1, 0.5, 0.2, 0.9]),
                    cell(task, 50, "autosub-cv", seed, 0.74 if seed else 0.72, selection=sel if seed == 0 else (2,)),
                    cell(task, 1000, "linear-probe", seed, 0.80, selection="probe"),
                    cell(task, 1000, "full-ft", seed, 0.95, selection="all"),
                    cell(task, 1000, "greedy", seed, 0.945, selection=sel),
                    cell(task, 1000, "autosub", seed, 0.95, selection=sel)]
    out.append(cell("a", 50, "greedy", 9, 0.0, status="over_budget"))  # flagged: never counted
    return out


@pytest.fixture()
def config():
    return BenchConfig("t", tasks=("a", "b"), strategies=STRATS, sizes=(50, 1000), seeds=(0, 1, 2))


def test_mean_ci_is_the_student_t_interval():
    m, h = mean_ci([0.5, 0.6, 0.7])
    assert m == pytest.approx(0.6) and h == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert math.isnan(mean_ci([0.5])[1]) and math.isnan(mean_ci([])[0])


def test_ranks_wins_and_near_best_ignore_flagged_cells(cells):
    ranks, counted = mean_ranks(cells)
    assert counted["greedy"] == 4 and ranks["linear-probe"] > ranks["autosub"]
    wtl = win_tie_loss(cells)
    assert wtl["full-ft"] == {"wins": 6, "ties": 6, "losses": 0}  # 0.95 vs 0.95 ties at 1000
    assert wtl["autosub-cv"] == {"wins": 0, "ties": 2, "losses": 4}
    assert near_best_share(cells)["share"] == pytest.approx(0.5)  # autosub-cv's 0.733 beats it by > 0.5 pt at 50


def test_cv_effect_counts_changed_winners_and_the_test_delta(cells):
    cv = cv_effect(cells)
    assert cv["pairs"] == 6 and cv["winner_changed"] == 4
    assert cv["mean_test_delta"] == pytest.approx(4 * 0.02 / 6) and cv["cv_better"] == 4 and cv["cv_worse"] == 0


def test_claims_are_measured_with_their_numbers(cells, config):
    c = claims(cells, config)
    assert c["C1"]["holds"] is True and c["C1"]["size"] == 50
    assert c["C1"]["numbers"]["a"]["best_subtuning"] == "autosub-cv"
    assert c["C2"]["holds"] is True and c["C2"]["numbers"]["a"]["gap"] == pytest.approx(0.005)
    assert c["C3"]["holds"] is True and c["C3"]["numbers"]["a"]["modal_selection"] == [3]
    assert c["C3"]["numbers"]["a"]["top_profile_block"] == 3
    worse = [dict(x, test=0.99) if x["key"]["strategy"] == "full-ft" else x for x in cells]
    assert claims(worse, config)["C1"]["holds"] is False and claims(worse, config)["C2"]["holds"] is False
    same = [dict(x, selection=[3]) if isinstance(x["selection"], list) else x for x in cells]
    assert claims(same, config)["C3"]["holds"] is False


def test_markdown_and_plots_are_written(cells, config, tmp_path):
    meta = {"command": "python benchmarks/run.py --config t", "unavailable": {"predictor": "missing"},
            "machine": {"cpu": "x", "cores": 2}, "wall_s": 1.0}
    summary = write_report(tmp_path, config, cells, meta)
    md = (tmp_path / "report.md").read_text()
    assert "| autosub | 72.0" in md and "a@50" in md and "mean rank" in md
    assert "**C1**" in md and "holds" in md and "`predictor`: missing" in md and "over_budget" in md
    assert summary["plots"] == ["acc_vs_size.png", "acc_vs_compute.png", "profiles.png"]
    for name in summary["plots"]:
        assert (tmp_path / name).stat().st_size > 5_000
    s = summarize(cells, config, meta)
    assert s["table"]["a@50"]["autosub"]["n"] == 3 and s["seeds"] == [0, 1, 2] and s["sizes"] == ["1000", "50"]
    # a rerun that only rewrote the report still says how long its cells took
    assert s["cells_wall_s"] == round(sum(c["wall_s"] for c in cells), 1) > 0
    assert f"cells' own wall times sum to {s['cells_wall_s']} s" in md


def test_register_task_in_a_few_lines_and_bad_names_are_refused():
    import autosub

    t = register_task("test-mine", lambda: None, lambda model, *, size, seed, options: None, overwrite=True)
    assert t.availability() is None
    with pytest.raises(autosub.ConfigError):
        register_task("test-mine", lambda: None, lambda *a, **k: None)
    with pytest.raises(autosub.ConfigError):
        register_task("bad__name", lambda: None, lambda *a, **k: None)
