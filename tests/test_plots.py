"""Plots: profile bars, pair heatmap and greedy path are written as PNG and SVG with their labels, never via pyplot."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import autosub

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


def svg_text(path: Path) -> list[str]:
    """The text of every label in a matplotlib SVG, in drawing order (it writes each as a comment)."""
    return re.findall(r"<!-- (.*?) -->", path.read_text(), re.S)


def assert_written(paths):
    assert [p.suffix for p in paths] == [".png", ".svg"]
    png, svg = paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    text = svg.read_text()
    assert "<svg" in text and len(text) > 5000


def test_profile_bars_and_pair_heatmap(prof, tmp_path):
    paths = plot_profile(prof, tmp_path / "out" / "profile.png")  # suffix ignored, parents created
    assert_written(paths)
    assert paths[1] == tmp_path / "out" / "profile.svg"
    labels = svg_text(paths[1])
    assert [t for t in labels if t in {"b0", "b1", "b2", "b3"}] == ["b0", "b1", "b2", "b3"]  # one bar per block
    assert [t for t in labels if t.endswith(" ep")] == ["1 ep", "3 ep", "3 ep", "1 ep"]  # mixed fidelity is shown
    assert "linear probe 0.510" in labels and "full finetune 0.855" in labels  # baselines with their means
    paths = plot_pairs(prof, tmp_path / "pairs")
    assert_written(paths)
    m = prof.pair_matrix()[1:, 1:]  # blocks 1..3 appear in pairs; every cell is annotated, row by row
    cells = [t for t in svg_text(paths[1]) if re.fullmatch(r"\d\.\d\d", t)][:9]  # the colorbar's ticks follow
    assert cells == [f"{v:.2f}" for v in m.flat]


def test_pairs_plot_needs_pairs(prof, tmp_path):
    prof.pairs = []
    with pytest.raises(ValueError, match="pairs=True"):
        plot_pairs(prof, tmp_path / "pairs")


def greedy_result() -> GreedyResult:
    table = {(): 0.5, (0,): 0.55, (1,): 0.6, (0, 1): 0.7, (1, 2): 0.58, (0, 1, 2): 0.69}
    sel, best, path, start, reason = greedy_search(lambda s: table.get(s, 0.3), [0, 1, 2], epsilon=0.01)
    return GreedyResult(selection=sel, score=best, path=path, start_score=start, stop_reason=reason,
                        config={"direction": "forward", "stopping": "strict", "epsilon": 0.01})


def test_greedy_path_plot(tmp_path):
    res = greedy_result()
    paths = plot_greedy(res, tmp_path / "greedy")
    assert_written(paths)
    labels = svg_text(paths[1])
    assert [t for t in labels if re.fullmatch(r"[+−]\d", t)] == ["+1", "+0", "+2"]  # the move of every step
    assert "returned [0, 1]: 0.700" in labels  # the returned subset is marked


def test_plots_open_no_pyplot_figure(prof, tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    before = plt.get_fignums()
    plot_profile(prof, tmp_path / "p")
    plot_pairs(prof, tmp_path / "q")
    plot_greedy(greedy_result(), tmp_path / "g")
    assert plt.get_fignums() == before


SCRIPT = """
import json, sys
from pathlib import Path
from autosub.selection.greedy_selection import GreedyResult
from autosub.selection.profiling import Profile
from autosub.report.plots import plot_greedy, plot_pairs, plot_profile
loaded = "matplotlib.pyplot" in sys.modules
out = Path(sys.argv[1])
prof = Profile.load(out / "profile.json")
paths = plot_profile(prof, out / "p") + plot_pairs(prof, out / "q")
paths += plot_greedy(GreedyResult.load(out / "g.json"), out / "g")
print(json.dumps({"pyplot_at_import": loaded, "pyplot_after": "matplotlib.pyplot" in sys.modules,
                  "figure": "matplotlib.figure" in sys.modules, "written": [p.name for p in paths if p.exists()]}))
"""


def test_plots_never_import_pyplot(prof, tmp_path):
    """In a fresh interpreter, where nothing has imported pyplot, importing autosub and plotting leave it out."""
    prof.save(tmp_path / "profile.json")
    greedy_result().save(tmp_path / "g.json")
    root = str(Path(autosub.__file__).resolve().parents[1])  # this checkout's autosub, whatever the cwd
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    env.pop("MPLBACKEND", None)
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["written"] == ["p.png", "p.svg", "q.png", "q.svg", "g.png", "g.svg"]
    assert seen["figure"]  # it did plot through matplotlib ...
    assert not seen["pyplot_at_import"] and not seen["pyplot_after"]  # ... without ever importing pyplot
