"""``deepsad data fetch`` and ``deepsad data check``: get the benchmark data sets and see what is there.

deepsad modules are imported inside the commands so that ``deepsad --help`` stays instant.
Errors are :class:`deepsad.errors.DeepSADError` subclasses; ``orchestration.cli.app.main`` prints them
as one line and exits 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Download the benchmark data sets (with checksum checks) and check a data directory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def fetch(
    name: Annotated[str, typer.Argument(help="Data set: mnist, fmnist, cifar10, arrhythmia (see `check`).")],
    to: Annotated[Path, typer.Option("--to", help="Data directory to download into (created).")],
    mirror: Annotated[
        str | None,
        typer.Option(
            "--mirror",
            help="Base URL replacing the canonical homes; files come from MIRROR/SUBDIR/FILE. "
            "Default: $DEEPSAD_DATA_MIRROR.",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds before a stalled download fails.")
    ] = 60,
) -> None:
    """Download NAME into DIR and verify every file's checksum; verified files are not re-downloaded."""
    from deepsad.data.fetch import fetch as fetch_dataset

    paths = fetch_dataset(name, to, mirror=mirror, timeout=timeout)
    if not paths:
        typer.echo(f"{name}: ships with scikit-learn; nothing to fetch")
        return
    for path in paths:
        typer.echo(str(path))
    typer.echo(f"{name}: {len(paths)} file(s) verified in {to}")


@app.command()
def check(
    data_dir: Annotated[Path, typer.Argument(help="The data directory to inspect.")],
) -> None:
    """Show which data sets DATA_DIR holds, where, and how to get the missing ones.

    MNIST, Fashion-MNIST and CIFAR-10 files are recognised by their checksums: another data set's
    files do not count, and files that match no official one are shown as unverified.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from deepsad.data.fetch import check as check_dir

    statuses = check_dir(data_dir)
    table = Table(title=f"data sets in {data_dir}", show_lines=True)
    table.add_column("data set", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("checksums", no_wrap=True)
    table.add_column("where / what is missing")
    for s in statuses:
        if s.present:
            where = ", ".join(sorted({str(p.parent) for p in s.found})) or "-"
            notes = [*s.notes[:1], *([f"(and {len(s.notes) - 1} more)"] if len(s.notes) > 1 else [])]
            checksums = {"verified": "[green]verified[/green]", "unverified": "[yellow]unverified[/yellow]"}
            table.add_row(
                s.name,
                f"[green]present[/green] ({escape(s.layout or '')})",
                checksums.get(s.checksums, "-"),
                escape("\n".join([where, *notes])),
            )
        else:
            table.add_row(s.name, "[red]missing[/red]", "-", escape("\n".join([*s.missing, f"→ {s.hint}"])))
    Console(width=max(120, Console().width)).print(table)
    present = sum(s.present for s in statuses)
    typer.echo(f"{present} of {len(statuses)} data sets present")
