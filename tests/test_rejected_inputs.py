"""The catalogue of rejected inputs: each bad input a new user is likely to pass, the exact error type and a
fragment of its message (what was wrong, what was got, how to fix it), and no work done. One test per row.

``docs/errors.md`` is generated from this table (``python tools/error_catalogue.py``); a test checks it is current.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest
import torch

from autosub import Budget, SearchResult, SearchSpace, as_task, fit, greedy, profile, search, zoo
from autosub.errors import (BlockDiscoveryError, ConfigError, DataError, SelectionError, WeightsError)
from autosub.hpo.config import TrainingConfig

DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


class Case(NamedTuple):
    where: str  # the entry point
    what: str  # the bad input, in words
    call: Callable[[dict[str, Any]], Any]  # takes the context (model, task, X, y, tmp)
    error: type  # the exception (or warning) class
    fragment: str  # a fragment of its message


def _nan_task(c):
    x = c["X"].clone()
    x[3, 0, 0, 0] = float("nan")
    return as_task(x, c["y"])


def _result_dir(c, text: str | None, name: str) -> Path:
    d = c["tmp"] / name
    d.mkdir()
    if text is not None:
        (d / "autosub.json").write_text(text)
    return d


CASES = [
    Case("as_task", "X and y of different lengths", lambda c: as_task(c["X"], c["y"][:10]), DataError,
         "The data has 40 examples but 10 targets"),
    Case("as_task", "a single class", lambda c: as_task(c["X"], torch.zeros(40, dtype=torch.long)), DataError,
         "hold a single class (0); classification needs at least 2 classes"),
    Case("as_task", "float labels", lambda c: as_task(c["X"], torch.rand(40)), DataError,
         "labels must be integers 0..C-1; got dtype float32"),
    Case("as_task", "a negative label", lambda c: as_task(c["X"], -torch.ones(40, dtype=torch.long)), DataError,
         "got a negative label -1"),
    Case("as_task", "a directory that does not exist", lambda c: as_task("/nonexistent/path"), DataError,
         "The data directory '/nonexistent/path' does not exist"),
    Case("as_task", "an int instead of data", lambda c: as_task(5), DataError, "Cannot build a task from int"),
    Case("as_task", "val_fraction outside (0, 1)", lambda c: as_task(c["X"], c["y"], val_fraction=1.5), ConfigError,
         "The 'val_fraction' parameter of as_task must be a float in the open interval (0, 1)"),
    Case("as_task", "no examples", lambda c: as_task(c["X"][:0], c["y"][:0]), DataError, "The data is empty"),
    Case("as_task", "a test set that overlaps the training data (warns)",
         lambda c: as_task(c["X"], c["y"], test=(c["X"][:8], c["y"][:8])), UserWarning,
         "8 of 8 test examples also appear in the training data"),
    Case("fit", "selection=None", lambda c: fit(c["model"], c["task"], None), SelectionError,
         "selection=None is ambiguous"),
    Case("fit", "a fractional block index", lambda c: fit(c["model"], c["task"], (1.7,)), SelectionError,
         "must be block indices (ints) 0..3; got 1.7 (float)"),
    Case("fit", "a block index out of range", lambda c: fit(c["model"], c["task"], (99,)), SelectionError,
         "Block index 99 is out of range: the model has 4 blocks"),
    Case("fit", "an unknown selection name", lambda c: fit(c["model"], c["task"], "some"), SelectionError,
         "Unknown selection 'some'"),
    Case("fit", "epochs=0", lambda c: fit(c["model"], c["task"], (1,), epochs=0), ConfigError,
         "The 'epochs' parameter of fit must be a positive int; got 0"),
    Case("fit", "lr=nan", lambda c: fit(c["model"], c["task"], (1,), lr=float("nan")), ConfigError,
         "The 'lr' parameter of fit must be a positive finite number; got nan"),
    Case("fit", "lr=inf", lambda c: fit(c["model"], c["task"], (1,), lr=float("inf")), ConfigError,
         "must be a positive finite number; got inf"),
    Case("fit", "a negative lr", lambda c: fit(c["model"], c["task"], (1,), lr=-1.0), ConfigError,
         "must be a positive finite number; got -1.0"),
    Case("fit", "weight_decay=nan", lambda c: fit(c["model"], c["task"], (1,), weight_decay=float("nan")),
         ConfigError, "The 'weight_decay' parameter of fit must be a finite number >= 0; got nan"),
    Case("fit", "batch_size=0", lambda c: fit(c["model"], c["task"], (1,), batch_size=0), ConfigError,
         "The 'batch_size' parameter of fit must be a positive int; got 0"),
    Case("fit", "device='cuda' on a machine without one", lambda c: _no_cuda(c), ConfigError,
         "device='cuda' was asked for but this machine has no usable CUDA device"),
    Case("fit", "an unknown device", lambda c: fit(c["model"], c["task"], (1,), device="tpu9"), ConfigError,
         "The 'device' parameter must be None, 'cpu', 'cuda' or 'cuda:N'; got 'tpu9'"),
    Case("fit", "a blocks= regex that matches nothing",
         lambda c: fit(c["model"], c["task"], (0,), blocks=r"^nomatch\.(\d+)"), BlockDiscoveryError,
         "matched no module name of ResNet"),
    Case("fit", "a model that is not an nn.Module", lambda c: fit("model", c["task"], (1,)), ConfigError,
         "The 'model' must be a torch.nn.Module; got str"),
    Case("fit", "NaN in the inputs", lambda c: fit(c["model"], _nan_task(c), (1,)), DataError,
         "with NaN or Inf inputs; drop or fix them before training"),
    Case("profile", "epochs=0", lambda c: profile(c["model"], c["task"], epochs=0), ConfigError,
         "The 'epochs' parameter of profile must be a positive int; got 0"),
    Case("profile", "seeds=0", lambda c: profile(c["model"], c["task"], seeds=0), ConfigError,
         "The 'seeds' parameter of profile must be a positive int; got 0"),
    Case("profile", "an unknown fidelity", lambda c: profile(c["model"], c["task"], fidelity="quarter"), ConfigError,
         "The 'fidelity' parameter of profile must be one of ('full', 'halving'); got 'quarter'"),
    Case("profile", "a candidate block out of range", lambda c: profile(c["model"], c["task"], candidates=[42]),
         SelectionError, "Block index 42 is out of range"),
    Case("greedy", "a negative epsilon", lambda c: greedy(c["model"], c["task"], epsilon=-1), ConfigError,
         "The 'epsilon' parameter of greedy must be a number >= 0; got -1"),
    Case("greedy", "an unknown stopping rule", lambda c: greedy(c["model"], c["task"], stopping="sometimes"),
         ConfigError, "The 'stopping' parameter of greedy must be one of ('strict', 'official')"),
    Case("search", "budget=0", lambda c: search(c["model"], c["task"], 0), ConfigError,
         "The 'budget' parameter of search must be a positive int (trials), a Budget or a dict"),
    Case("search", "a fractional trial budget", lambda c: search(c["model"], c["task"], 2.5), ConfigError,
         "got 2.5 instead"),
    Case("search", "an empty Budget()", lambda c: Budget(), ConfigError,
         "A Budget needs at least one of 'trials', 'seconds' or 'compute'"),
    Case("search", "negative seconds", lambda c: Budget(seconds=-1), ConfigError,
         "The 'seconds' parameter of Budget must be a positive finite number; got -1"),
    Case("search", "an unknown selector", lambda c: search(c["model"], c["task"], 2, selector="bayes"), ConfigError,
         "The 'selector' parameter of search must be one of"),
    Case("search", "an unknown space", lambda c: search(c["model"], c["task"], 2, space="pairs"), ConfigError,
         "The 'space' parameter must be one of ('subset', 'consecutive', 'single')"),
    Case("search", "an unknown backend", lambda c: search(c["model"], c["task"], 2, backend="dask"), ConfigError,
         "The 'backend' parameter of search must be one of ['optuna', 'ray']"),
    Case("search", "objectives without 'score' first",
         lambda c: search(c["model"], c["task"], 2, objectives=("cost",)), ConfigError,
         "The 'objectives' parameter of search must start with 'score'"),
    Case("search", "resume='yes'", lambda c: search(c["model"], c["task"], 2, resume="yes"), ConfigError,
         "The 'resume' parameter of search must be False, True or 'join'"),
    Case("search", "a str seed", lambda c: search(c["model"], c["task"], 2, seed="0"), ConfigError,
         "The 'seed' parameter of search must be an int; got '0'"),
    Case("search", "fuse='yes'", lambda c: search(c["model"], c["task"], 2, training={"fuse": "yes"}), ConfigError,
         "The 'fuse' parameter of TrainingConfig must be 'auto' (fuse on CUDA only), True or False; got 'yes'"),
    Case("search", "fuse=True with cross-validation", lambda c: TrainingConfig(fuse=True, cv_folds=3), ConfigError,
         "TrainingConfig(fuse=True) does not support cv_folds yet"),
    Case("search", "a storage that is no URL",
         lambda c: search(c["model"], c["task"], 2, run={"storage": "nota url", "run_dir": str(c["tmp"] / "r")}),
         ConfigError, "The 'storage' parameter of search must be an Optuna URL"),
    Case("search", "an unknown keyword (lr=)", lambda c: search(c["model"], c["task"], 2, lr=1e-3), ConfigError,
         "search() got unknown keyword argument(s) ['lr']"),
    Case("search", "an lr range low > high", lambda c: SearchSpace(lr=(1e-2, 1e-4)), ConfigError,
         "The 'lr' parameter of SearchSpace must be a (low, high) tuple"),
    Case("search", "an infinite lr bound", lambda c: SearchSpace(lr=(1e-4, float("inf"))), ConfigError,
         "with finite values > 0 and low < high; got (0.0001, inf)"),
    Case("search", "resume=True where no study exists",
         lambda c: search(c["model"], c["task"], 2, resume=True, run={"run_dir": str(c["tmp"] / "r2")}),
         ConfigError, "resume=True but"),
    Case("search", "resume with another model (same block count)", lambda c: _resume_other_model(c), ConfigError,
         "was run on another model (trunk fingerprint"),
    Case("SearchResult.load", "a path that does not exist", lambda c: SearchResult.load(c["tmp"] / "nope"),
         ConfigError, "is not a directory; point load() at a directory written by SearchResult.save()"),
    Case("SearchResult.load", "a file instead of a directory",
         lambda c: SearchResult.load(_file(c["tmp"] / "afile")), ConfigError, "is not a directory"),
    Case("SearchResult.load", "a directory without autosub.json",
         lambda c: SearchResult.load(_result_dir(c, None, "empty")), WeightsError,
         "autosub.json does not exist (or is not a file)"),
    Case("SearchResult.load", "a truncated autosub.json",
         lambda c: SearchResult.load(_result_dir(c, '{"sel', "trunc")), WeightsError,
         "autosub.json is not valid JSON"),
    Case("SearchResult.load", "an autosub.json missing fields",
         lambda c: SearchResult.load(_result_dir(c, json.dumps({"autosub_version": "0.2.0"}), "partial")),
         WeightsError, "lacks the field(s) ['kind', 'selection', 'hparams', 'score']"),
    Case("zoo.from_weights", "an unknown architecture", lambda c: zoo.from_weights("no_such_arch_xyz", "w.bin"),
         ConfigError, "The 'arch' parameter of from_weights must be a timm model name; got 'no_such_arch_xyz'"),
    Case("zoo.from_weights", "a weights file that does not exist",
         lambda c: zoo.from_weights("resnet18", c["tmp"] / "missing.safetensors"), WeightsError,
         "does not exist; check the path"),
    Case("zoo.from_weights", "a file that is not a tensor file",
         lambda c: zoo.from_weights("resnet18", _file(c["tmp"] / "w.bin")), WeightsError,
         "autosub never unpickles"),
]


def _no_cuda(c):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    return fit(c["model"], c["task"], (1,), device="cuda")


def _file(path: Path) -> Path:
    path.write_bytes(b"garbage, not a tensor file")
    return path


def _resume_other_model(c):
    import timm

    kw = dict(epochs=1, prior=None, selector="random", run={"run_dir": str(c["tmp"] / "fp"), "progress": False})
    search(c["model"], c["task"], 1, **kw)
    torch.manual_seed(7)
    twin = timm.create_model("test_resnet", pretrained=False).eval()
    return search(twin, c["task"], 2, resume=True, **kw)


@pytest.fixture(scope="module")
def model():
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False).eval()


@pytest.fixture()
def context(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written outside tmp_path (autosub-runs/ for a default run_dir)
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(40, 3, 16, 16, generator=g), torch.arange(40) % 4
    return {"model": model, "task": as_task(X, y), "X": X, "y": y, "tmp": tmp_path}


def _id(case: Case) -> str:
    return f"{case.where}: {case.what}"


def test_the_catalogue_has_at_least_30_kinds_across_every_entry_point():
    assert len(CASES) >= 30
    assert {c.where for c in CASES} == {"as_task", "fit", "profile", "greedy", "search", "SearchResult.load",
                                        "zoo.from_weights"}


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_a_rejected_input_raises_its_error_with_its_message(case, context):
    if issubclass(case.error, Warning):
        with pytest.warns(case.error) as record:
            case.call(context)
        assert any(case.fragment in str(w.message) for w in record), [str(w.message) for w in record]
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(case.error) as info:
            case.call(context)
    assert type(info.value).__module__.startswith("autosub"), type(info.value)  # never a raw torch/json error
    assert case.fragment in str(info.value), str(info.value)


def render() -> str:
    """The Markdown table of ``docs/errors.md``."""
    lines = ["# Rejected inputs", "",
             "Generated from `tests/test_rejected_inputs.py` by `python tools/error_catalogue.py`; each row is a "
             "test. Every error is an `autosub.errors.AutoSubError` that is also the builtin named in brackets "
             "(`ConfigError` is a `ValueError`, …); a bad argument fails before any work and before anything is "
             "written to disk.", "",
             "| entry point | input | error | message (fragment) |", "|---|---|---|---|"]
    for c in CASES:
        bases = [b.__name__ for b in c.error.__mro__[1:] if b.__module__ == "builtins" and b not in (object,
                                                                                                    BaseException)]
        kind = c.error.__name__ + (f" ({bases[0]})" if bases and not issubclass(c.error, Warning) else "")
        lines.append(f"| `{c.where}` | {c.what} | `{kind}` | {c.fragment.replace('|', '¦')} |")
    return "\n".join(lines) + "\n"


def test_docs_errors_md_is_the_current_catalogue():
    if os.environ.get("AUTOSUB_WRITE_CATALOGUE"):
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(render())
    assert DOC.exists() and DOC.read_text() == render(), "run: python tools/error_catalogue.py"
