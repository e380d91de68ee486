"""The entry point ``aselect`` runs: parse, run the command (one rank per process under torchrun), and turn every
error into one line."""

from __future__ import annotations

import contextlib
import io
import os
import sys

from ..plan import CommandPlan, DryRunDone, watch_runs
from .checks import CliError, under_launcher
from .parser import DEBUG_ENV, build_parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """What the library raises for bad input (its messages name the problem)."""
    import zipfile

    return (CliError, ValueError, TypeError, OSError, RuntimeError, FloatingPointError, EOFError, zipfile.BadZipFile)


def error_line(exc: BaseException) -> str:
    """One line for an exception: its message (whitespace folded, cut at 400 characters); an exception of another
    kind is an internal error, reported with its type."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > 400:
        text = text[:399] + "…"
    if not isinstance(exc, _user_errors()):
        text = f"internal error ({type(exc).__name__}: {text}); rerun with --debug for the traceback"
    return f"aselect: error: {text}"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 2 for any error, 130 when interrupted)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (2), --help and --version (0)
        return exc.code if isinstance(exc.code, int) else 2
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    joined = False
    distributed = None
    try:
        if under_launcher():  # torchrun: one rank per process; rank 0 prints and writes
            from .. import distributed

            joined = distributed.init_from_env()
        quiet = distributed is not None and not distributed.is_main()
        watcher = CommandPlan(getattr(args, "dry_run", False), getattr(args, "yes", False))
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext(), watch_runs(watcher):
            args.func(args)
    except DryRunDone:
        print("dry run: stopped before the forward; nothing was written")
        return 0
    except KeyboardInterrupt:
        print("aselect: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        print(error_line(exc), file=sys.stderr)
        return 2
    finally:
        if joined and distributed is not None:
            distributed.shutdown()
    return 0
