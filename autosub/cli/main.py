"""The ``autosub`` command (and ``python -m autosub``): one subcommand per job, config files, meaningful exit codes.

Each subcommand lives in its own module (``cmd_<name>.py``: ``add_parser(sub)`` + ``run(session)``) and is added by
one ``_add_<name>`` function here, so a new subcommand (``export``, ``serve-check``, ``bench``) is one function and
one line in :data:`SUBCOMMANDS`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import traceback
from typing import Any, Callable, Sequence

from .._version import __version__
from ..errors import (AutoSubError, BlockDiscoveryError, ConfigError, DataError, MissingDependencyError,
                      WeightsError)
from .common import Session
from .options import apply_config, check_required, load_config

from .bench import add_bench_parser
from .deploy import add_parsers as add_deploy_parsers

__all__ = ["EXIT_BAD_INPUT", "EXIT_CRASH", "EXIT_INTERRUPTED", "EXIT_MISSING_DEPENDENCY", "EXIT_OK", "SUBCOMMANDS",
           "build_parser", "console", "exit_code", "main", "parse_args"]

EXIT_OK, EXIT_CRASH, EXIT_BAD_INPUT, EXIT_MISSING_DEPENDENCY, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES_SHORT = (f"\nexit codes: {EXIT_OK} ok, {EXIT_CRASH} crash, {EXIT_BAD_INPUT} bad input (before any work), "
                    f"{EXIT_MISSING_DEPENDENCY} missing optional dependency, {EXIT_INTERRUPTED} interrupted "
                    "(see autosub --help)\n")
BAD_INPUT = (ConfigError, DataError, BlockDiscoveryError, WeightsError)

EPILOG = f"""examples:
  autosub demo                                              # the whole job on shipped weights + data, offline
  autosub profile --model efficientnet_lite0 --data mnist --samples-per-class 50
  autosub search  --model resnet50 --weights resnet50.safetensors --data ./images --trials 30 --baselines
  autosub search  --config run.toml --backend ray --address auto
  autosub resume  autosub-runs/search-20250101-120000        # after Ctrl-C
  autosub report  autosub-runs/search-20250101-120000        # -> RUN_DIR/report.html
  autosub <command> --help                                  # every option of one command

config files: --config run.toml (or .yaml with PyYAML, or .json) holds the same options as the flags, as
  `option-name = value` (e.g. model = "efficientnet_lite0", samples-per-class = 50); flags given on the command
  line win. Every run writes its resolved config to RUN_DIR/config.toml and its command line to RUN_DIR/command.txt.

exit codes:
  {EXIT_OK}    success
  {EXIT_CRASH}    a crash (a bug, or a failure while running: the traceback is printed)
  {EXIT_BAD_INPUT}    bad input, found before any work: a wrong flag or config key, a missing file, data or weights
       that do not fit the model, a block override that matches nothing
  {EXIT_MISSING_DEPENDENCY}    an optional dependency is missing (the message names what to pip install)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); a search keeps its finished trials: `autosub resume RUN_DIR` continues it
"""


# ---------------------------------------------------------------------------------------------- subcommands
def _add_demo(sub: Any) -> None:
    from . import cmd_demo

    cmd_demo.add_parser(sub)


def _add_profile(sub: Any) -> None:
    from . import cmd_profile

    cmd_profile.add_parser(sub)


def _add_greedy(sub: Any) -> None:
    from . import cmd_greedy

    cmd_greedy.add_parser(sub)


def _add_search(sub: Any) -> None:
    from . import cmd_search

    cmd_search.add_parser(sub)


def _add_predict(sub: Any) -> None:
    from . import cmd_predict

    cmd_predict.add_parser(sub)


def _add_report(sub: Any) -> None:
    from . import cmd_report

    cmd_report.add_parser(sub)


def _add_resume(sub: Any) -> None:
    from . import cmd_resume

    cmd_resume.add_parser(sub)


#: One function per subcommand, in the order ``--help`` lists them (export / serve-check: the deploy branch).
SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (_add_demo, _add_profile, _add_greedy, _add_search, _add_predict,
                                                   _add_report, _add_resume)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand (``autosub --help`` lists them; ``autosub CMD --help`` documents one)."""
    parser = argparse.ArgumentParser(
        prog="autosub", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Automated SubTuning: find which blocks of a pretrained network to finetune (and with which "
                    "learning rate) for your task, for far less compute than finetuning it all.")
    parser.add_argument("--version", action="version", version=f"autosub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (*SUBCOMMANDS, add_deploy_parsers, add_bench_parser):  # + export, serve-check; bench
        add(sub)
    for child in sub.choices.values():  # every subcommand's --help ends with the exit codes
        child.epilog = (child.epilog or "") + EXIT_CODES_SHORT
        if child.get_default("parser") is None:  # export, serve-check, bench: handlers that take the args
            plain = child.get_default("func")
            child.set_defaults(parser=child, func=lambda session, plain=plain: plain(session.args))
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; with ``--config FILE`` its values become the subcommand's defaults (flags win)."""
    args = parser.parse_args(list(argv))
    sub: argparse.ArgumentParser = args.parser
    if getattr(args, "config", None):
        apply_config(sub, args.command, load_config(args.config), args.config)
        args = parser.parse_args(list(argv))
    check_required(sub, args.command, args)
    return args


def exit_code(exc: BaseException) -> int:
    """The documented exit code of an exception (see ``autosub --help``)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, MissingDependencyError):
        return EXIT_MISSING_DEPENDENCY
    if isinstance(exc, BAD_INPUT):
        return EXIT_BAD_INPUT
    return EXIT_CRASH


def _configure_logging(args: argparse.Namespace) -> None:
    verbose = 0 if getattr(args, "quiet", False) else getattr(args, "verbose", 0)
    logging.basicConfig(level=logging.INFO if verbose >= 2 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("autosub").setLevel(logging.DEBUG if verbose >= 2 else logging.INFO if verbose else
                                          logging.WARNING)
    if "optuna" in sys.modules or args.command in ("search", "demo", "resume"):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.INFO if verbose >= 2 else optuna.logging.WARNING)
        for handler in logging.getLogger("optuna").handlers:  # Ctrl-C is reported once, by autosub, without a trace
            if not any(isinstance(f, _NoInterruptTraces) for f in handler.filters):
                handler.addFilter(_NoInterruptTraces())


class _NoInterruptTraces(logging.Filter):
    """Drops log records that carry a KeyboardInterrupt traceback (Optuna logs the interrupted trial with one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, KeyboardInterrupt)


def _emit_error(args_json: bool, code: int, kind: str, message: str, **extra: Any) -> int:
    print(f"autosub: error: {message}" if code != EXIT_INTERRUPTED else f"autosub: {message}", file=sys.stderr)
    if args_json:
        print(json.dumps({"ok": False, "exit_code": code, "error": kind, "message": message, **extra}, sort_keys=True))
    return code


def _interrupted(session: Session) -> int:
    from ..report import rundir

    path, cmd = session.run_dir, session.args.command
    if path is not None and (path / rundir.CONFIG).is_file() and session.resumable:
        msg = (f"interrupted. Every finished trial is kept in the run's study; continue with:\n"
               f"  autosub resume {path}")
        return _emit_error(session.args.json, EXIT_INTERRUPTED, "interrupted", msg, resume=f"autosub resume {path}")
    if path is not None and (path / rundir.CONFIG).is_file():
        again = f"autosub {cmd} --config {path / rundir.CONFIG} --run-dir NEW_DIR"
        msg = f"interrupted. `autosub {cmd}` saves its result when it finishes; run it again with:\n  {again}"
        return _emit_error(session.args.json, EXIT_INTERRUPTED, "interrupted", msg, rerun=again)
    return _emit_error(session.args.json, EXIT_INTERRUPTED, "interrupted", "interrupted before the run began.")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``autosub`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    want_json = "--json" in argv
    try:
        args = parse_args(parser, argv)
    except SystemExit as exc:  # argparse: --help / --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    except AutoSubError as exc:  # a bad --config file
        return _emit_error(want_json, exit_code(exc), type(exc).__name__, str(exc))
    _configure_logging(args)
    session = Session(args=args, argv=argv, parser=args.parser)
    want_json = bool(getattr(args, "json", False))
    try:
        summary = args.func(session)
    except KeyboardInterrupt:
        return _interrupted(session)
    except AutoSubError as exc:
        code = exit_code(exc)
        if code == EXIT_BAD_INPUT:
            session.discard()
        return _emit_error(want_json, code, type(exc).__name__, str(exc))
    except Exception as exc:  # a crash: show where, then the one-line reason
        traceback.print_exc()
        return _emit_error(want_json, EXIT_CRASH, type(exc).__name__, f"{type(exc).__name__}: {exc} (a crash: "
                           "please report it with the traceback above)")
    if isinstance(summary, int):  # a handler that returns its exit code
        return summary
    if want_json:
        from .._io import dumps

        print(dumps({"ok": True, **summary}, indent=None))
    return EXIT_OK


def console() -> None:
    """The console script (``autosub``, ``python -m autosub``): :func:`main`, then exit with its code.

    A library may leave a non-daemon thread behind when Ctrl-C lands at the wrong moment (Optuna's trial heartbeat,
    started just as the interrupt arrived, waits forever); the process must still end. Everything the run wrote is
    complete by then (atomic files, committed study), so after a short grace period the process exits without
    waiting for such threads.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    stray = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    for t in stray:
        t.join(timeout=1.0)
    if any(t.is_alive() for t in stray):
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
