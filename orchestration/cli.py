"""The ``deepsad`` command line: a typer app whose commands are thin (parse → validate → call).

Heavy imports (torch, ray) happen inside the commands so that ``deepsad --help`` is instant.
A user error (:class:`deepsad.errors.DeepSADError`) prints one line per problem and exits 2;
``DEEPSAD_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

import click
import typer

from deepsad.errors import DeepSADError
from orchestration.commands import data as data_commands
from orchestration.commands import deploy as deploy_commands
from orchestration.commands import report as report_commands
from orchestration.commands import sweep as sweep_commands
from orchestration.commands import train as train_commands

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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and turn user errors into one line + exit 2."""
    try:
        rc = app(args=argv, standalone_mode=False)
    except DeepSADError as e:
        if os.environ.get("DEEPSAD_DEBUG"):
            raise
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except click.exceptions.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
