"""Generate docs/errors.md: the exact message autosub gives for each common mistake.

Every entry is a snippet that is executed here, in a scratch directory; the page shows the snippet, the error's
type and its message as raised. ``tests/test_docs.py`` regenerates the page and fails when it differs from the
committed one, so the catalogue never drifts from the code.

    python docs/gen_errors.py           # rewrite docs/errors.md
    python docs/gen_errors.py --check   # exit 1 if docs/errors.md is out of date
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

PAGE = Path(__file__).with_name("errors.md")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's autosub, not an installed one

SETUP = """\
import timm, torch
from torch import nn
import autosub
from autosub import datasets
from autosub.cli.main import main as autosub_cli
torch.manual_seed(0)
model = timm.create_model("test_resnet", pretrained=False)
task = datasets.digits(model=model, image_size=16, samples_per_class=10)
"""

# (heading, snippet); the snippet's last statement raises (Python) or prints the CLI error (command line).
PYTHON: list[tuple[str, str]] = [
    ("A learning rate that is not positive", "autosub.fit(model, task, (3,), lr=-1.0)"),
    ("A selection left out", "autosub.fit(model, task, None)"),
    ("A block that does not exist", "autosub.fit(model, task, (7,))"),
    ("A block override that matches nothing", "autosub.discover_blocks(model, blocks=r'^features\\.(\\d+)')"),
    ("A block override that names a missing module", "autosub.discover_blocks(model, blocks=['layer1', 'layer9'])"),
    ("A backbone no rule can split", "autosub.discover_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), "
                                     "nn.Linear(4, 2)))"),
    ("Labels that are not 0..C-1", "autosub.as_task(torch.randn(20, 4), torch.arange(20) % 2 + 5)"),
    ("A class with a single example", "autosub.as_task(torch.randn(21, 4), torch.tensor([0] * 10 + [1] * 10 + [2]))"),
    ("Texts without a tokenizer", "autosub.as_task(['good', 'bad'] * 5, [1, 0] * 5)"),
    ("Inputs the model cannot take", "autosub.fit(model, autosub.as_task(torch.randn(40, 5), torch.arange(40) % 2), "
                                     "(3,))"),
    ("NaN in the inputs", "x = torch.randn(40, 3, 16, 16); x[3, 0, 0, 0] = float('nan')\n"
                          "autosub.fit(model, autosub.as_task(x, torch.arange(40) % 2), (3,))"),
    ("A budget without a limit", "autosub.Budget()"),
    ("An unknown selector", "autosub.search(model, task, 2, selector='bayes')"),
    ("A 0.1 keyword that no longer exists", "autosub.search(model, task, 2, n_trials=5)"),
    ("A search space whose bounds cross", "autosub.SearchSpace(min_blocks=3, max_blocks=2)"),
    ("A weights file that does not exist", "autosub.zoo.from_weights('resnet18', 'resnet18.safetensors')"),
    ("Weights of another architecture", "torch.save(timm.create_model('test_resnet').state_dict(), 'small.pt')\n"
                                         "autosub.zoo.from_weights('resnet18', 'small.pt')"),
    ("A result directory that does not exist", "autosub.SearchResult.load('runs/nowhere')"),
    ("Resuming a study that was never started", "autosub.search(model, task, 2, run={'run_dir': 'runs/new'}, "
                                                "resume=True)"),
]
CLI: list[tuple[str, str]] = [
    ("A data file that does not exist", "autosub profile --model test_resnet --data reviews.csv"),
    ("A model name that is neither zoo, timm, a directory nor module:function",
     "autosub profile --model resnet_50 --data digits"),
    ("A weights file given as the model", "autosub profile --model resnet50.safetensors --data digits"),
    ("A missing label column", "autosub profile --model minilm_l6 --data table.csv"),
    ("A Ray option without the Ray backend", "autosub search --model test_resnet --data digits --address auto"),
    ("A typo in a config file", "autosub search --config run.toml"),
    ("Resuming a run that cannot be resumed", "autosub resume runs/profile"),
]
CLI_FILES = {"table.csv": "review,stars\ngreat food,5\nawful,1\n",
             "run.toml": 'model = "test_resnet"\ndata = "digits"\ntrails = 30\n',
             "runs/profile/config.toml": 'command = "profile"\nmodel = "test_resnet"\ndata = "digits"\n'}


def _python_error(ns: dict[str, Any], snippet: str) -> tuple[str, str]:
    try:
        exec(compile(snippet, "<errors.md>", "exec"), ns)
    except Exception as exc:  # the point: what it raised
        return type(exc).__name__, str(exc)
    raise AssertionError(f"the errors.md snippet did not raise: {snippet}")


def _cli_error(ns: dict[str, Any], command: str) -> tuple[str, str]:
    import shlex

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = ns["autosub_cli"](shlex.split(command)[1:])
    lines = [line for line in err.getvalue().splitlines() if line.startswith("autosub: error:")]
    if code == 0 or not lines:
        raise AssertionError(f"the errors.md command did not fail: {command} (exit {code})")
    return f"exit code {code}", lines[-1].removeprefix("autosub: error: ")


def generate() -> str:
    """The page's text (run in a scratch directory, so relative paths in messages are stable)."""
    import logging
    import warnings

    old = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            for name, text in CLI_FILES.items():
                Path(name).parent.mkdir(parents=True, exist_ok=True)
                Path(name).write_text(text)
            ns: dict[str, Any] = {}
            logging.disable(logging.WARNING)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(SETUP, ns)
                here = os.path.realpath(scratch) + os.sep
                py = [(title, code, kind, msg.replace(here, "")) for title, code in PYTHON
                      for kind, msg in [_python_error(ns, code)]]
                cli = [(title, cmd, kind, msg.replace(here, "")) for title, cmd in CLI
                       for kind, msg in [_cli_error(ns, cmd)]]
        finally:
            logging.disable(logging.NOTSET)
            os.chdir(old)
    out = ["# Errors", "",
           "What autosub says for common mistakes: each message says what was wrong, what it got, and how to fix it.",
           "Every error autosub raises on purpose is an `autosub.AutoSubError`; each kind is also a builtin "
           "(`ConfigError`, `DataError`, `BlockDiscoveryError` and `WeightsError` are `ValueError`s, "
           "`MissingDependencyError` an `ImportError`), so `except ValueError` keeps working. The command line exits "
           "with code 2 for these bad inputs (3 for a missing optional dependency), before any work.", "",
           "This page is generated by `python docs/gen_errors.py` from the snippets below, run against "
           "`timm.create_model(\"test_resnet\")` and `datasets.digits(image_size=16)`; a test regenerates it.", "",
           "## In Python", "", "Set-up of every snippet:", "", "```python", SETUP.rstrip(), "```", ""]
    for title, code, kind, message in py:
        out += [f"### {title}", "", "<!-- doctest: skip raises on purpose; tests/test_docs.py regenerates this page -->",
                "```python", code, "```", "", f"`{kind}`:", "", "```text", message, "```", ""]
    out += ["## On the command line", "",
            "Files the commands refer to: " + ", ".join(f"`{n}`" for n in CLI_FILES) + " (a two-column review table, "
            "a config with a typo, a finished profile run).", ""]
    for title, cmd, code, message in cli:
        out += [f"### {title}", "", "```bash", cmd, "```", "", f"{code}:", "", "```text", message, "```", ""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    text = generate()
    if "--check" in argv:
        if PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run python docs/gen_errors.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
