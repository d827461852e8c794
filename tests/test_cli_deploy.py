"""`autosub export` and `autosub serve-check` through main([...]): a saved search becomes a delta, and several
deltas on one trunk print the same predictions as their standalone models."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import autosub
from autosub import SearchResult, export
from autosub.cli.main import main
from autosub.hpo.result import trunk_fingerprint
from autosub.model.subtune import tuned_tensors


@pytest.fixture(scope="module")
def setup(test_resnet, image_task, tmp_path_factory):
    """The trunk as a weights file, two fitted tasks, one of them saved as a search result."""
    root = tmp_path_factory.mktemp("cli")
    save_file({k: v.contiguous() for k, v in test_resnet.state_dict().items()}, str(root / "trunk.safetensors"))
    a = autosub.fit(test_resnet, image_task, (3,), epochs=1, lr=1e-2, batch_size=16)
    b = autosub.fit(test_resnet, image_task, (1, 2), epochs=1, lr=1e-2, batch_size=16, seed=1)
    part = autosub.discover_blocks(test_resnet)
    SearchResult(selection=(3,), hparams={"lr": 1e-2}, score=a.score, test_score=None, model=None, trials=None,
                 records=[], pareto=[], spent={}, state=tuned_tensors(a.model, (3,), part),
                 config={"num_classes": 4, "block_names": list(part.names),
                         "trunk_fingerprint": trunk_fingerprint(test_resnet, part)}).save(root / "run" / "result")
    export(b, root / "b", trunk=test_resnet)
    x = torch.randn(3, 3, 32, 32)
    save_file({"x": x}, str(root / "x.safetensors"))
    return root, a, b, x


def test_export_then_serve_check_prints_each_tasks_predictions(setup, capsys):
    root, a, b, x = setup
    assert main(["export", str(root / "run"), str(root / "a"), "--classes", "w,x,y,z"]) == 0
    assert "layer4" in capsys.readouterr().out
    argv = ["serve-check", "--trunk", "test_resnet", "--weights", str(root / "trunk.safetensors"),
            "--delta", f"a={root / 'a'}", "--delta", f"b={root / 'b'}", "--inputs", str(root / "x.safetensors")]
    assert main([*argv, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    with torch.no_grad():
        want_a = ["wxyz"[i] for i in a.model(x).argmax(-1).tolist()]
        want_b = [str(i) for i in b.model(x).argmax(-1).tolist()]
    assert got["predictions"] == {"a": want_a, "b": want_b}
    assert got["mode"] == "blocks" and got["forks"] == {"a": 3, "b": 1}
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "every task verified equal to its standalone model" in table
    assert table.strip().splitlines()[-1].split()[:2] == ["2", want_a[2]]


def test_serve_check_refuses_a_delta_of_another_trunk(setup, capsys):
    root, *_ = setup
    torch.manual_seed(3)
    import timm

    other = timm.create_model("test_resnet").state_dict()
    save_file({k: v.contiguous() for k, v in other.items()}, str(root / "other.safetensors"))
    code = main(["serve-check", "--trunk", "test_resnet", "--weights", str(root / "other.safetensors"),
                 "--delta", f"b={root / 'b'}", "--random", "2", "--image-size", "32"])
    assert code == 2 and "fingerprint" in capsys.readouterr().err


def test_cli_arguments_are_checked(setup, capsys):
    root, *_ = setup
    assert main(["export", str(root / "nowhere"), str(root / "out")]) == 2
    assert "no saved search result" in capsys.readouterr().err
    assert main(["serve-check", "--trunk", "resnet50", "--delta", f"b={root / 'b'}"]) == 2
    assert "--weights" in capsys.readouterr().err
    assert main(["serve-check", "--trunk", "test_resnet", "--weights", str(root / "trunk.safetensors"),
                 "--delta", "b"]) == 2
    assert "NAME=DIR" in capsys.readouterr().err
