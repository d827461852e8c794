"""``autosub report``: one self-contained HTML page from a run directory, checked as text and in headless Chromium.

The run directory is made by the real library calls (profile with pairs, greedy, search, the tuned baselines) on a
small MLP over real sklearn digits, so every section of the report has real evidence to draw.
"""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from autosub._io import write_json
from autosub.data.task import Split, Task
from autosub.report import rundir
from autosub.report.html import build_report

FIGURES = {"blocks", "profile", "pairs", "greedy", "history", "pareto"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, oracle):
    """A run directory holding everything a report can show (profile + pairs, greedy, search, baselines)."""
    from sklearn.datasets import load_digits

    from autosub.cli.baselines import full_finetune, linear_probe
    from autosub.hpo.searching import search
    from autosub.selection.greedy_selection import greedy
    from autosub.selection.profiling import profile
    from autosub.training.setup import prepare

    model, _ = oracle
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, va, te = perm[:300], perm[300:500], perm[500:700]
    task = Task(Split(x[tr], y[tr], name="train"), Split(x[va], y[va], name="val"), 10,
                test=Split(x[te], y[te], name="test"), kind="features")
    path = tmp_path_factory.mktemp("run")
    rundir.start_run(path, {"command": "search", "model": "tests:oracle", "data": "digits", "trials": 5},
                     ["search", "--model", "tests:oracle", "--data", "digits", "--trials", "5"])
    setup = prepare(model, task, seed=0)
    write_json(rundir.blocks_record(setup.partition, setup.work), path / rundir.BLOCKS)
    profile(model, task, epochs=1, seeds=2, pairs=True, progress=False).save(path / rundir.PROFILE)
    greedy(model, task, epochs=1, epsilon=0.001, progress=False).save(path / rundir.GREEDY)
    result = search(model, task, 5, epochs=1, run={"run_dir": path, "progress": False})
    result.save(path / rundir.RESULT)
    rows = [linear_probe(model, task, cs=(0.1, 1.0)), full_finetune(model, task, epochs=1, lrs=(1e-3,))]
    write_json({"rows": [r.to_dict() for r in rows], "task": {"train": 300, "val": 200, "test": 200}},
               path / rundir.BASELINES)
    return path, result, rows


class _Figures(HTMLParser):
    """Counts, per ``<figure data-figure=…>``, the drawn SVG elements inside it; collects every URL-like attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[tuple[str, int]] = []
        self.refs: list[str] = []
        self._current: str | None = None
        self.cells: list[str] = []
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href", "xlink:href", "action"):
            if key in a:
                self.refs.append(a[key])
        if tag == "figure":
            self._current = a.get("data-figure")
            self.figures.append((self._current, 0))
        elif self._current and tag in ("rect", "circle", "path", "line"):
            kind, n = self.figures[-1]
            self.figures[-1] = (kind, n + 1)
        self._in_td = tag == "td"

    def handle_endtag(self, tag):
        if tag == "figure":
            self._current = None
        if tag == "td":
            self._in_td = False

    def handle_data(self, data):
        if self._in_td:
            self.cells.append(data.strip())


def test_report_has_every_figure_drawn_and_references_nothing_outside(run_dir):
    path, result, rows = run_dir
    text = build_report(path).read_text()
    parser = _Figures()
    parser.feed(text)
    kinds = {k for k, _ in parser.figures}
    assert kinds == FIGURES
    assert all(n >= 3 for _, n in parser.figures), parser.figures  # every figure draws marks, not just a frame
    assert len([k for k, _ in parser.figures if k == "history"]) == 2  # score vs trial and vs compute
    assert parser.refs == [] and "http" not in text and "<script" not in text  # self-contained, no scripts
    # the final table: LP / full FT / the search; each test accuracy appears once, in its own cell
    for label in ("linear probe", "full finetuning", "autosub.search: "):
        assert any(c.startswith(label) for c in parser.cells), label
    test_cells = [f"{r.test:.3f}" for r in rows] + [f"{result.test_score:.3f}"]
    for value in test_cells:
        assert value in parser.cells
    assert text.count(">test acc<") == 1
    assert "autosub search --model tests:oracle --data digits --trials 5" in text and 'trials = 5' in text


def test_report_sections_follow_what_the_run_directory_holds(run_dir, tmp_path):
    path, _, _ = run_dir
    only = tmp_path / "profile-only"
    only.mkdir()
    shutil.copy(path / rundir.PROFILE, only / rundir.PROFILE)
    text = build_report(only).read_text()
    parser = _Figures()
    parser.feed(text)
    assert {k for k, _ in parser.figures} == {"blocks", "profile", "pairs"}  # block names come from profile.json
    assert "No test accuracy: profiles and greedy runs never read the test split." in text
    from autosub.errors import ConfigError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no autosub run"):
        build_report(empty)


# ---------------------------------------------------------------------------------------------- in a browser
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


_CATCH = ("<script>window.__errors=[];window.addEventListener('error',function(e){window.__errors.push(String("
          "e.message||(e.target&&e.target.outerHTML)))},true);</script>")
_PROBE = """<script>
var figs=[].slice.call(document.querySelectorAll('figure[data-figure]')).map(function(f){
  var s=f.querySelector('svg'), b=s?s.getBBox():{width:0,height:0}, r=s?s.getBoundingClientRect():{width:0,height:0};
  return {kind:f.dataset.figure, marks:s?s.querySelectorAll('rect,circle,path,line').length:0,
          bbox:[b.width,b.height], shown:[r.width,r.height]};});
var out={figures:figs, errors:window.__errors, resources:performance.getEntriesByType('resource').map(function(e){
  return e.name}), tables:document.querySelectorAll('table tr').length};
var pre=document.createElement('pre'); pre.id='probe'; pre.textContent=JSON.stringify(out);
document.body.appendChild(pre); console.log('autosub-probe-done');
</script>"""


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (Debian: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium_without_console_errors(run_dir, tmp_path):
    path, _, _ = run_dir
    report = build_report(path, tmp_path / "report.html")
    probed = tmp_path / "probed.html"
    text = report.read_text()
    probed.write_text(text.replace("<head>", "<head>" + _CATCH, 1).replace("</body>", _PROBE + "</body>", 1))
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-extensions",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    proc = subprocess.run([*base, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stdout[-2000:]
    probe = json.loads(html.unescape(found.group(1)))
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert console and all("autosub-probe-done" in line for line in console), console  # only the probe spoke
    assert probe["errors"] == [] and probe["resources"] == [] and probe["tables"] >= 4
    assert {f["kind"] for f in probe["figures"]} == FIGURES
    for fig in probe["figures"]:  # laid out and drawn: a real box on the page with marks inside
        assert fig["marks"] >= 3 and min(fig["bbox"]) > 20 and min(fig["shown"]) > 20, fig
    shot = tmp_path / "report.png"
    subprocess.run([*base, "--hide-scrollbars", "--window-size=1200,3600", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, text=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 20_000  # a rendered page, not a blank one
