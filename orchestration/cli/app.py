"""The ``deepsad`` command line: a typer app whose commands are thin (parse → validate → call).

Heavy imports (torch, ray) happen inside the commands so that ``deepsad --help`` is instant.
A user error — a :class:`deepsad.errors.DeepSADError` or a usage error of the command line — prints one
line per problem and exits 2; anything unexpected prints one line and exits 1. ``DEEPSAD_DEBUG=1`` shows
the traceback instead. Usage errors are tested through the installed entry point
(``tests/orchestration/cli/test_cli_usage.py``), so a typer or click upgrade cannot turn them into tracebacks
unnoticed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Any

import typer

from deepsad.errors import DeepSADError
from orchestration.cli import data as data_commands
from orchestration.cli import deploy as deploy_commands
from orchestration.cli import replay as replay_commands
from orchestration.cli import report as report_commands
from orchestration.cli import sweep as sweep_commands
from orchestration.cli import train as train_commands

app = typer.Typer(
    name="deepsad",
    help="Deep SAD sweeps and ablations: train, tune on Ray, compare, deploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_commands.app, name="data")
app.add_typer(sweep_commands.app, name="sweep")
app.add_typer(sweep_commands.results_app, name="results")
train_commands.register(app)
deploy_commands.register(app)
report_commands.register(app)
replay_commands.register(app)


def _click_modules() -> list[Any]:
    """The click exception modules in play: typer >= 0.29 vendors its own click (``typer._click``), whose
    exceptions are not ``click``'s — catching only one of them turned every usage error into a traceback."""
    import click.exceptions as plain

    modules = [plain]
    with contextlib.suppress(ImportError):
        vendored = importlib.import_module("typer._click.exceptions")
        if vendored is not plain:
            modules.append(vendored)
    return modules


def _kinds(name: str) -> tuple[type[BaseException], ...]:
    return tuple(getattr(m, name) for m in _click_modules() if isinstance(getattr(m, name, None), type))


def _usage_line(e: Any) -> str:
    """One line for a usage error: the command it is about, what is wrong, where to look."""
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "deepsad"
    message = " ".join(str(e.format_message()).split()) or type(e).__name__
    return f"error: {where}: {message} (see `{where} --help`)"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and turn every error into one line.

    A reader that goes away (``deepsad results show x | head``) ends the command quietly with 1 (what
    Python's documentation recommends, and what rich does when it prints the help).

    Exit codes: 0 success (and ``deepsad`` or a command group with no arguments, which shows its help);
    2 a user error — a usage error of the command line (unknown command or option, missing or malformed
    value) or a :class:`DeepSADError` (bad file, flag value, data, storage); 130 interrupted; 1 an
    unexpected internal error (one line too, naming ``DEEPSAD_DEBUG=1`` for the traceback).
    """
    try:
        _main(argv)
    except BrokenPipeError:
        with contextlib.suppress(OSError):  # flushing at exit must not raise again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


def _main(argv: list[str] | None) -> None:
    debug = bool(os.environ.get("DEEPSAD_DEBUG"))
    no_args, usage, click_error = _kinds("NoArgsIsHelpError"), _kinds("UsageError"), _kinds("ClickException")
    aborted: tuple[type[BaseException], ...] = (*_kinds("Abort"), KeyboardInterrupt)
    exited = _kinds("Exit")
    try:
        rc = app(args=argv, standalone_mode=False)
    except DeepSADError as e:
        if debug:
            raise
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except no_args as e:  # `deepsad`, `deepsad sweep`: the help is the answer
        ctx = getattr(e, "ctx", None)
        print(ctx.get_help() if ctx is not None else app.info.help, file=sys.stdout)
        sys.exit(0)
    except usage as e:
        if debug:
            raise
        print(_usage_line(e), file=sys.stderr)
        sys.exit(2)
    except aborted:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except exited as e:
        sys.exit(getattr(e, "exit_code", 0))
    except click_error as e:  # other click errors (a file option that cannot be opened): one line
        if debug:
            raise
        message = " ".join(str(e.format_message()).split())  # type: ignore[attr-defined]
        print(f"error: {message}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 1) or 1)
    except BrokenPipeError:
        raise
    except Exception as e:
        if debug:
            raise
        detail = " ".join(str(e).split())[:300]
        print(
            f"error: internal error ({type(e).__name__}{': ' + detail if detail else ''}); "
            "run again with DEEPSAD_DEBUG=1 for the traceback, and please report it",
            file=sys.stderr,
        )
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
