"""The option groups the subcommands share, and config files that mirror every flag.

A config file (``--config run.toml``; YAML when PyYAML is installed; JSON) is a flat table whose keys are the flag
names without the leading dashes (``batch-size`` or ``batch_size``). Its values become the subcommand's defaults, so a
flag given on the command line wins over the file. Every run writes the *resolved* configuration — every option with
the value it ran with — as ``RUN_DIR/config.toml``; ``autosub <command> --config RUN_DIR/config.toml`` runs it again
and ``autosub resume RUN_DIR`` continues it.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError, MissingDependencyError
from ..report.rundir import tomllib

__all__ = ["CONFIG_EXCLUDED", "REQUIRED", "add_data_options", "add_model_options", "add_output_options",
           "add_training_options", "apply_config", "check_required", "config_of", "load_config", "parse_resources"]

#: Options that describe how a command prints, not what it computes: never written to the resolved config.
CONFIG_EXCLUDED = frozenset({"config", "json", "quiet", "verbose", "func", "parser", "command", "resume_of"})
#: Options a command needs, from the command line or the config file (argparse's ``required=`` cannot see the file).
REQUIRED = {"profile": ("model", "data"), "greedy": ("model", "data"), "search": ("model", "data"),
            "predict": ("model", "data")}


# ------------------------------------------------------------------------------------------------ option groups
def add_output_options(p: argparse.ArgumentParser, *, config: bool = True) -> None:
    """``--config``, ``--json``, ``--quiet``, ``--verbose``: on every subcommand."""
    g = p.add_argument_group("output")
    if config:
        g.add_argument("--config", metavar="FILE", help="a .toml (or .yaml/.json) file whose keys mirror the flags "
                       "(flags given here win); every run writes its resolved config as RUN_DIR/config.toml")
    g.add_argument("--json", action="store_true", help="print one JSON object (the summary) on stdout, for scripts")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or step messages (warnings, errors "
                   "and the result are still printed)")
    g.add_argument("-v", "--verbose", action="count", default=0, help="log autosub's steps (-vv: debug)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The network and its blocks."""
    g = p.add_argument_group("model")
    g.add_argument("-m", "--model", metavar="SPEC", help="a zoo name (efficientnet_lite0, minilm_l6: real weights "
                   "shipped in pip packages), a timm name (with --weights FILE, else random init), a Hugging Face "
                   "directory (an encoder + its tokenizer), or module:function returning an nn.Module")
    g.add_argument("--weights", metavar="FILE", help="local weights for a timm --model (.safetensors, or a "
                   "tensors-only torch file); nothing is downloaded")
    g.add_argument("--key-map", choices=("exact", "in_order"), default="exact",
                   help="match --weights by name (exact) or by position (in_order, for another implementation)")
    g.add_argument("--blocks", nargs="+", metavar="REGEX|NAME", help="block override: one regex over module names "
                   r"(e.g. '^features\.(\d+)': one block per captured group) or several module names")


def add_data_options(p: argparse.ArgumentParser) -> None:
    """The dataset, its files' columns and the low-data subsample."""
    g = p.add_argument_group("data")
    g.add_argument("-d", "--data", metavar="SPEC", help="a dataset name (mnist, digits, fine_food), an ImageFolder "
                   "directory, or a .npz (arrays x, y), .csv or .parquet file (a text + a label column, or numeric "
                   "feature columns + a label column)")
    g.add_argument("--test-data", metavar="FILE", help="a held-out test file of the same kind (read once, for the "
                   "final table); .npz files may instead hold x_test / y_test")
    g.add_argument("--text-column", default="text", help="the text column of a .csv/.parquet file (default: text)")
    g.add_argument("--label-column", default="label", help="the label column (default: label); string labels are "
                   "mapped to 0..C-1 in sorted order")
    g.add_argument("--x-key", default="x", help="the inputs array of a .npz file (default: x)")
    g.add_argument("--y-key", default="y", help="the labels array of a .npz file (default: y)")
    g.add_argument("--image-size", type=int, default=None, help="resize images to this many pixels (default: the "
                   "model's input size; 32 for the shipped digit sets)")
    g.add_argument("--max-length", type=int, default=64, help="tokens per text (default: 64)")
    g.add_argument("--samples-per-class", type=int, default=None, help="low data: at most this many training "
                   "examples per class (val and test untouched)")
    g.add_argument("--max-samples", type=int, default=None, help="at most this many training examples")
    g.add_argument("--val-fraction", type=float, default=0.2, help="share of the data held out for validation")


def add_training_options(p: argparse.ArgumentParser, *, lr: bool = True, epochs: int = 3) -> None:
    """How each run trains and where."""
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=epochs, help=f"epochs per run (default: {epochs})")
    if lr:
        g.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    g.add_argument("--batch-size", type=int, default=32, help="examples per step (default: 32)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--seed", type=int, default=0, help="seeds heads, data order, splits and samplers (default: 0)")
    g.add_argument("--run-dir", metavar="DIR", help="where the results go (default: autosub-runs/<command>-<time>)")


# ------------------------------------------------------------------------------------------------ config files
def load_config(path: str | Path) -> dict[str, Any]:
    """Read a flat config table from .toml (stdlib tomllib), .yaml/.yml (PyYAML) or .json."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {str(p)!r} does not exist; give a .toml, .yaml or .json file.")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib().loads(p.read_text(encoding="utf-8"))
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise MissingDependencyError(f"--config {p.name} is YAML, which needs PyYAML: pip install pyyaml "
                                             "(or write the same keys as TOML).") from None
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        elif suffix == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
        else:
            raise ConfigError(f"--config {p.name!r}: unknown format {suffix or '(no suffix)'!r}; use .toml, .yaml or "
                              ".json.")
    except (ConfigError, MissingDependencyError):
        raise
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError
        raise ConfigError(f"--config {str(p)!r} is not valid {suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"--config {str(p)!r} must hold a table of option = value; got {type(data).__name__}.")
    return dict(data)


def apply_config(parser: argparse.ArgumentParser, command: str, config: Mapping[str, Any], source: str) -> None:
    """Make ``config``'s values the defaults of ``parser`` (one subcommand), checked like the flags they mirror."""
    wanted = config.get("command")
    if wanted is not None and wanted != command:
        raise ConfigError(f"{source} is a config for `autosub {wanted}`, not `autosub {command}`; run "
                          f"`autosub {wanted} --config {source}` or remove its 'command' key.")
    actions = {a.dest: a for a in parser._actions if a.dest not in CONFIG_EXCLUDED and a.dest != "help"}
    defaults: dict[str, Any] = {}
    for key, value in config.items():
        if key == "command":
            continue
        dest = str(key).replace("-", "_")
        if dest not in actions:
            known = ", ".join(sorted(k.replace("_", "-") for k in actions))
            close = _close(dest, list(actions))
            hint = f"did you mean {close!r}?" if close else f"it takes: {known}."
            raise ConfigError(f"{source}: unknown option {key!r} for `autosub {command}`; {hint}")
        defaults[dest] = _coerce(actions[dest], value, f"{source}: {key!r}")
    parser.set_defaults(**defaults)


def _close(name: str, names: Sequence[str]) -> str | None:
    import difflib

    hit = difflib.get_close_matches(name, list(names), n=1)
    return hit[0].replace("_", "-") if hit else None


def _coerce(action: argparse.Action, value: Any, where: str) -> Any:
    """A config value checked (and converted) the way argparse would treat the flag."""
    flag = action.option_strings[-1] if action.option_strings else action.dest
    if action.nargs == 0:  # store_true / store_false / count
        if isinstance(action, argparse._CountAction):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{where} ({flag}) must be an int >= 0; got {value!r}.")
            return value
        if not isinstance(value, bool):
            raise ConfigError(f"{where} ({flag}) is a switch: true or false; got {value!r}.")
        return value
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if action.nargs == "+" and not items:
            raise ConfigError(f"{where} ({flag}) needs at least one value; got an empty list.")
        if isinstance(action.nargs, int) and len(items) != action.nargs:
            raise ConfigError(f"{where} ({flag}) takes {action.nargs} values; got {value!r}.")
        return [_scalar(action, v, where, flag) for v in items]
    if isinstance(value, (list, tuple, dict)):
        raise ConfigError(f"{where} ({flag}) takes one value; got {value!r}.")
    return _scalar(action, value, where, flag)


def _scalar(action: argparse.Action, value: Any, where: str, flag: str) -> Any:
    kind = action.type
    if value is None:
        return None
    if kind is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and
                                                                       re.fullmatch(r"[+-]?\d+", value.strip()))):
            raise ConfigError(f"{where} ({flag}) must be an integer; got {value!r}.")
        value = int(value)
    elif kind is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} ({flag}) must be a number; got {value!r}.") from None
        if not math.isfinite(value):
            raise ConfigError(f"{where} ({flag}) must be finite; got {value!r}.")
    elif kind is not None and isinstance(value, str):
        try:
            value = kind(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"{where} ({flag}): {exc}") from None
    elif kind is None and not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # e.g. `blocks = [0, 2]` → module names "0", "2"
        else:
            raise ConfigError(f"{where} ({flag}) must be a string; got {value!r}.")
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where} ({flag}) must be one of {list(action.choices)}; got {value!r}.")
    return value


def check_required(parser: argparse.ArgumentParser, command: str, args: argparse.Namespace) -> None:
    """The options ``command`` needs, given as a flag or in the config file (else argparse's usage error, exit 2)."""
    missing = [f"--{name.replace('_', '-')}" for name in REQUIRED.get(command, ()) if getattr(args, name, None) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (as flags or keys of --config)")


def config_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The resolved config of one run: ``command`` plus every option of ``parser`` that has a value."""
    out: dict[str, Any] = {"command": args.command}
    for action in parser._actions:
        dest = action.dest
        if dest in CONFIG_EXCLUDED or dest == "help" or dest.startswith("_"):
            continue
        value = getattr(args, dest, None)
        if value is not None:
            out[dest.replace("_", "-")] = list(value) if isinstance(value, tuple) else value
    return out


def parse_resources(text: str | None) -> dict[str, float] | None:
    """``"cpu=1,gpu=0.25"`` → ``{"cpu": 1.0, "gpu": 0.25}`` (Ray's resources per trial)."""
    if text is None:
        return None
    out: dict[str, float] = {}
    for part in filter(None, (s.strip() for s in str(text).split(","))):
        name, eq, amount = part.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = float("nan")
        if not eq or not name.strip() or not math.isfinite(value) or value < 0:
            raise ConfigError(f"--resources-per-trial must look like 'cpu=1,gpu=0.25'; got {text!r}.")
        out[name.strip().lower()] = value
    if not out:
        raise ConfigError(f"--resources-per-trial must look like 'cpu=1,gpu=0.25'; got {text!r}.")
    return out
