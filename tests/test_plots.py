"""Plots: profile bars, pair heatmap and greedy path are written as non-empty PNG and SVG, without pyplot state."""
from __future__ import annotations

import sys

import pytest

from autosub.selection.greedy_selection import GreedyResult, greedy_search
from autosub.selection.profiling import Profile, ProfileEntry
from autosub.report.plots import plot_greedy, plot_pairs, plot_profile


def entry(sel, scores, epochs=3, cost=0.5):
    name = sel if isinstance(sel, str) else "+".join(f"b{i}" for i in sel) or "probe"
    return ProfileEntry(selection=sel, name=name, scores=scores, epochs=epochs, wall_time=1.0,
                        trainable_params=100, fork_cost=cost)


@pytest.fixture()
def prof() -> Profile:
    entries = [entry((0,), [0.6, 0.62], 1), entry((1,), [0.7, 0.74]), entry((2,), [0.8, 0.78]),
               entry((3,), [0.65, 0.6], 1)]
    pairs = [entry((1, 2), [0.82, 0.83]), entry((1, 3), [0.75, 0.76]), entry((2, 3), [0.8, 0.79])]
    base = {"linear_probe": entry((), [0.5, 0.52]), "full_finetune": entry("all", [0.85, 0.86], cost=1.0)}
    return Profile(entries=entries, baselines=base, pairs=pairs, block_names=["b0", "b1", "b2", "b3"],
                   config={"fidelity": "halving"})


def assert_written(paths):
    assert [p.suffix for p in paths] == [".png", ".svg"]
    png, svg = paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    text = svg.read_text()
    assert "<svg" in text and len(text) > 5000


def test_profile_bars_and_pair_heatmap(prof, tmp_path):
    assert_written(plot_profile(prof, tmp_path / "out" / "profile.png"))  # suffix ignored, parents created
    assert (tmp_path / "out" / "profile.svg").exists()
    paths = plot_pairs(prof, tmp_path / "pairs")
    assert_written(paths)
    assert "0.83" in paths[1].read_text() or "0.82" in paths[1].read_text()  # the best pair is annotated (svg text)


def test_pairs_plot_needs_pairs(prof, tmp_path):
    prof.pairs = []
    with pytest.raises(ValueError, match="pairs=True"):
        plot_pairs(prof, tmp_path / "pairs")


def test_greedy_path_plot(tmp_path):
    table = {(): 0.5, (0,): 0.55, (1,): 0.6, (0, 1): 0.7, (1, 2): 0.58, (0, 1, 2): 0.69}
    sel, best, path, start, reason = greedy_search(lambda s: table.get(s, 0.3), [0, 1, 2], epsilon=0.01)
    res = GreedyResult(selection=sel, score=best, path=path, start_score=start, stop_reason=reason,
                       config={"direction": "forward", "stopping": "strict", "epsilon": 0.01})
    assert_written(plot_greedy(res, tmp_path / "greedy"))


def test_plots_do_not_touch_pyplot(prof, tmp_path):
    had = "matplotlib.pyplot" in sys.modules
    plot_profile(prof, tmp_path / "p")
    assert had or "matplotlib.pyplot" not in sys.modules
