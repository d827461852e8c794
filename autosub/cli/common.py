"""What every subcommand does the same way: check its inputs, open its run directory, load the model and data, and
finish with a summary (``summary.json``, ``--json``) and the HTML report.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from ..report import rundir
from .loading import DataSpec, ModelSpec, check_data_spec, check_model_spec, load_model, load_task
from .options import config_of

__all__ = ["Inputs", "Session", "blocks_arg", "check_inputs", "load_inputs"]

log = logging.getLogger(__name__)


@dataclass
class Session:
    """One invocation: its arguments, its run directory, and how it talks (``--json`` / ``--quiet``)."""

    args: argparse.Namespace
    argv: list[str]
    parser: argparse.ArgumentParser
    run_dir: Path | None = None
    created: bool = False  # this invocation created run_dir (so a bad-input exit may remove it again)
    resumable: bool = False  # an interrupted run can be continued with `autosub resume`
    resume: bool = False  # this invocation continues an earlier run
    written: list[Path] = field(default_factory=list)

    @property
    def progress(self) -> bool:
        """tqdm bars: on unless ``--quiet`` (they go to stderr, so ``--json`` output stays clean)."""
        return not self.args.quiet

    def say(self, text: str = "") -> None:
        """A line of human output on stdout (none with ``--json``: stdout then holds only the JSON object)."""
        if not self.args.json:
            print(text, flush=True)

    def step(self, text: str) -> None:
        """A progress message (stderr; none with ``--quiet``)."""
        if not self.args.quiet:
            log.info(text)
            if not self.args.verbose:
                import sys

                print(text, file=sys.stderr, flush=True)

    def plan_run_dir(self) -> Path:
        """The run directory this invocation will write (checked to hold no earlier run, unless resuming)."""
        path = Path(self.args.run_dir) if self.args.run_dir else rundir.default_run_dir(self.args.command)
        if not self.resume:
            rundir.check_new_run_dir(path)
        self.run_dir = path
        self.args.run_dir = str(path)
        return path

    def start(self) -> Path:
        """Create the run directory with ``config.toml`` and ``command.txt`` (``resume`` appends its command)."""
        path = self.run_dir or self.plan_run_dir()
        if self.resume:
            rundir.append_command(path, self.argv)
        else:
            self.created = not path.exists() or not any(path.iterdir())
            self.written += rundir.start_run(path, config_of(self.parser, self.args), self.argv)
        return path

    def write_blocks(self, partition: Any, work: Any) -> None:
        from .._io import write_json

        assert self.run_dir is not None
        self.written.append(write_json(rundir.blocks_record(partition, work), self.run_dir / rundir.BLOCKS))

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Write ``summary.json`` and the report into the run directory; return the summary with their paths."""
        summary = {"command": self.args.command, **summary}
        if self.run_dir is not None:
            summary["run_dir"] = str(self.run_dir)
            try:
                from ..report.html import build_report

                rundir.write_summary(self.run_dir, summary)
                summary["report"] = str(build_report(self.run_dir))
            except Exception as exc:  # the results are saved; a report problem must not fail the run
                log.warning("could not write the report: %s: %s (run `autosub report %s` to retry)",
                            type(exc).__name__, exc, self.run_dir)
            rundir.write_summary(self.run_dir, summary)
        return summary

    def discard(self) -> None:
        """After a bad-input exit: remove the run directory this invocation made, if it holds nothing but the
        config, command and block list it wrote (a directory with any result in it is left as it is)."""
        if self.run_dir is None or not self.created or not self.run_dir.is_dir():
            return
        ours = {p.resolve() for p in self.written if p.name in (rundir.CONFIG, rundir.COMMAND, rundir.BLOCKS)}
        if any(p.resolve() not in ours for p in self.run_dir.iterdir()):
            return
        for p in ours:
            p.unlink(missing_ok=True)
        self.run_dir.rmdir()


def blocks_arg(values: Sequence[str] | None) -> Any:
    """``--blocks``: one value is a regex over module names, several are module names (autosub's ``blocks=``)."""
    if not values:
        return None
    return values[0] if len(values) == 1 else list(values)


@dataclass
class Inputs:
    """A loaded model and task, checked against each other (one forward), with their blocks."""

    model: Any
    task: Any
    setup: Any
    model_spec: ModelSpec
    data_spec: DataSpec

    @property
    def partition(self) -> Any:
        return self.setup.partition


def check_inputs(args: argparse.Namespace) -> tuple[ModelSpec, DataSpec]:
    """The cheap checks of ``--model`` / ``--data`` and their options (no model built, no data read)."""
    for name in ("image_size", "max_length", "samples_per_class", "max_samples", "threads", "batch_size", "epochs"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer; got {value}.")
    if not 0 < args.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be between 0 and 1; got {args.val_fraction}.")
    mspec = check_model_spec(args.model, weights=args.weights, key_map=args.key_map)
    dspec = check_data_spec(args.data, test=args.test_data, text_column=args.text_column,
                            label_column=args.label_column, x_key=args.x_key, y_key=args.y_key)
    return mspec, dspec


def load_inputs(session: Session, mspec: ModelSpec, dspec: DataSpec) -> Inputs:
    """Build the model, read the data, and check they fit (autosub's one setup path: blocks + one forward)."""
    import torch

    from ..training.setup import prepare

    args = session.args
    if args.threads:
        torch.set_num_threads(args.threads)
    session.step(f"loading {mspec.describe()} and {dspec.kind} {dspec.name}")
    torch.manual_seed(args.seed)  # a randomly initialized model (timm name without --weights) is seeded too
    model = load_model(mspec)
    task = load_task(dspec, model, test=args.test_data, image_size=args.image_size, max_length=args.max_length,
                     samples_per_class=args.samples_per_class, max_samples=args.max_samples,
                     val_fraction=args.val_fraction, seed=args.seed, text_column=args.text_column,
                     label_column=args.label_column, x_key=args.x_key, y_key=args.y_key)
    setup = prepare(model, task, blocks=blocks_arg(args.blocks), seed=args.seed, device=args.device)
    test = f" / {len(task.test)} test" if task.test is not None else ""
    session.step(f"{type(model).__name__}: {len(setup.partition)} blocks ({setup.partition.source}); "
                 f"{len(task.train)} train / {len(task.val)} val{test} examples, {task.num_classes} classes")
    return Inputs(model, task, setup, mspec, dspec)
