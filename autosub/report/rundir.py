"""The run directory: what every ``autosub`` command writes, and the reader ``autosub report`` / ``resume`` use.

::

    RUN_DIR/
      command.txt      the command line that made the run (then one line per `autosub resume`)
      config.toml      the resolved config: every option with the value it ran with (`--config` takes it back)
      blocks.json      the network's blocks (names, parameter counts, how they were found), stem and head
      summary.json     the run's summary (what --json prints)
      profile.json     `autosub profile`: autosub.Profile.save
      greedy.json      `autosub greedy`: autosub.GreedyResult.save
      prediction.json  `autosub predict`: the predicted value of each block
      study.journal    `autosub search` / `demo`: the Optuna study, a journal file (optuna-dashboard
                       RUN_DIR/study.journal; a run of an earlier autosub has study.db, SQLite, and keeps it)
      result/          `autosub search` / `demo`: autosub.SearchResult.save (autosub.json, tuned.safetensors, trials.csv)
      baselines.json   `autosub demo`, `autosub search --baselines`: the tuned linear probe and full finetuning
      report.html      `autosub report RUN_DIR` (written at the end of every run too)

Files are written atomically (``autosub._io``); a reader takes whatever is there.
"""
from __future__ import annotations

import json
import math
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._io import atomic_write, read_json, write_json
from .._version import __version__
from ..errors import ConfigError, MissingDependencyError

__all__ = ["BASELINES", "BLOCKS", "COMMAND", "CONFIG", "GREEDY", "PREDICTION", "PROFILE", "REPORT", "RESULT",
           "STUDY", "STUDY_DB", "SUMMARY", "Run", "append_command", "blocks_record", "check_new_run_dir",
           "command_line", "default_run_dir", "read_run", "start_run", "toml_dumps", "tomllib", "write_summary"]

COMMAND, CONFIG, BLOCKS, SUMMARY = "command.txt", "config.toml", "blocks.json", "summary.json"
PROFILE, GREEDY, PREDICTION = "profile.json", "greedy.json", "prediction.json"
STUDY, STUDY_DB = "study.journal", "study.db"  # the default Optuna storage; the earlier default (SQLite)
RESULT, BASELINES, REPORT = "result", "baselines.json", "report.html"
_OURS = (COMMAND, CONFIG, BLOCKS, SUMMARY)


def default_run_dir(command: str) -> Path:
    """``autosub-runs/<command>-<YYYYmmdd-HHMMSS>`` (made unique with a suffix when that exists)."""
    base = Path("autosub-runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def check_new_run_dir(path: Path) -> None:
    """A new run needs a directory that holds no earlier run (refused before any work)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--run-dir {str(path)!r} is a file; give a directory.")
    if path.is_dir() and any((path / name).exists() for name in (CONFIG, COMMAND, RESULT, STUDY, STUDY_DB, PROFILE,
                                                              GREEDY)):
        raise ConfigError(f"--run-dir {str(path)!r} already holds a run; continue it with `autosub resume {path}`, "
                          "or give another --run-dir.")


def start_run(path: Path, config: Mapping[str, Any], argv: Sequence[str]) -> list[Path]:
    """Create the run directory and write ``config.toml`` + ``command.txt``; return the files written."""
    path.mkdir(parents=True, exist_ok=True)
    header = (f"autosub {__version__}: the resolved config of `autosub {config['command']}` "
              f"({time.strftime('%Y-%m-%d %H:%M:%S')}).\nRun it again: autosub {config['command']} --config "
              f"{path / CONFIG} --run-dir NEW_DIR")
    return [atomic_write(path / CONFIG, toml_dumps(dict(config), header=header)),
            atomic_write(path / COMMAND, command_line(argv) + "\n")]


def command_line(argv: Sequence[str]) -> str:
    """The shell-quoted command line of this invocation."""
    return shlex.join(["autosub", *argv])


def append_command(path: Path, argv: Sequence[str]) -> None:
    """Record one more invocation (``autosub resume``) in ``command.txt``."""
    old = (path / COMMAND).read_text(encoding="utf-8") if (path / COMMAND).exists() else ""
    atomic_write(path / COMMAND, old + command_line(argv) + "\n")


def blocks_record(partition: Any, model: Any) -> dict[str, Any]:
    """What the block diagram needs: each block's name and size, how they were found, the stem and the head.

    ``model`` is the working copy the partition was found on (with autosub's fresh head).
    """
    sizes = {n: int(p.numel()) for n, p in model.named_parameters()}
    return {"blocks": [{"index": b.index, "name": b.name, "num_params": int(b.num_params), "modules": list(b.modules)}
                       for b in partition],
            "source": partition.source, "head_module": partition.head_module, "model": type(model).__name__,
            "stem_params": sum(sizes.get(n, 0) for n in partition.stem),
            "head_params": sum(sizes.get(n, 0) for n in partition.head)}


def write_summary(path: Path, summary: Mapping[str, Any]) -> Path:
    return write_json(dict(summary), path / SUMMARY)


@dataclass
class Run:
    """Whatever one run directory holds (None / empty where a file is absent)."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    blocks: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    greedy: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    trials: Any = None  # pandas DataFrame of result/trials.csv
    baselines: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        return str(self.config.get("command") or ("search" if self.result else "profile" if self.profile else
                                                  "greedy" if self.greedy else "run"))

    @property
    def block_names(self) -> list[str]:
        if self.blocks:
            return [b["name"] for b in self.blocks["blocks"]]
        for source in (self.result and self.result.get("config"), self.profile, self.greedy and self.greedy.get(
                "config")):
            if source and source.get("block_names"):
                return list(source["block_names"])
        return []


def read_run(path: str | Path) -> Run:
    """Read a run directory (any subset of the layout); a directory with none of it is a ConfigError."""
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{str(p)!r} is not a directory; give a run directory written by an autosub command.")
    run = Run(p)
    if (p / CONFIG).is_file():
        run.config = _read_toml(p / CONFIG)
    if (p / COMMAND).is_file():
        run.command = (p / COMMAND).read_text(encoding="utf-8").strip()
    for attr, name, what in (("blocks", BLOCKS, "block list"), ("summary", SUMMARY, "run summary"),
                             ("profile", PROFILE, "profile"), ("greedy", GREEDY, "greedy result"),
                             ("prediction", PREDICTION, "block prediction"), ("baselines", BASELINES, "baselines")):
        if (p / name).is_file():
            setattr(run, attr, read_json(p / name, what=what))
    if (p / RESULT / "autosub.json").is_file():
        run.result = read_json(p / RESULT / "autosub.json", what="search result")
        if (p / RESULT / "trials.csv").is_file():
            import pandas as pd

            run.trials = pd.read_csv(p / RESULT / "trials.csv")
    if not (run.config or run.profile or run.greedy or run.result or run.prediction or run.baselines):
        raise ConfigError(f"{str(p)!r} holds no autosub run (no {CONFIG}, {PROFILE}, {GREEDY}, {PREDICTION} or "
                          f"{RESULT}/); give the --run-dir of an autosub command.")
    return run


# ------------------------------------------------------------------------------------------------ TOML
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_dumps(data: Mapping[str, Any], *, header: str = "") -> str:
    """A flat table as TOML (str, int, float, bool and lists of them; None values are left out)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for key, value in data.items():
        if value is None:
            continue
        k = key if _BARE_KEY.match(key) else json.dumps(key)
        lines.append(f"{k} = {_toml_value(value, key)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value == math.inf else "-inf" if value == -math.inf
                                             else repr(value))
    if isinstance(value, (str, Path)):
        return json.dumps(str(value), ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, key) for v in value if v is not None) + "]"
    raise ConfigError(f"Cannot write {key!r} = {value!r} ({type(value).__name__}) to a TOML config.")


def tomllib() -> Any:
    """The stdlib TOML reader (Python >= 3.11), or tomli on 3.10."""
    try:
        import tomllib as reader
    except ImportError:  # Python 3.10
        try:
            import tomli as reader  # type: ignore[no-redef]
        except ImportError:
            raise MissingDependencyError("TOML config files need Python >= 3.11 or the tomli package: "
                                         "pip install tomli.") from None
    return reader


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return dict(tomllib().loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"{path} is not a readable TOML file ({exc}); it is damaged — restore it or start a new "
                          "run.") from None
