"""``deepsad sweep submit|status|resume`` and ``deepsad results show``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Run hyperparameter sweeps of Deep SAD on Ray Tune.", no_args_is_help=True)
results_app = typer.Typer(help="Inspect a sweep's results.", no_args_is_help=True)

StorageOpt = Annotated[
    str | None, typer.Option("--storage", help="Sweep storage: a directory (default runs/sweeps) or s3://bucket/prefix.")
]


@app.command("submit")
def submit(
    spec: Annotated[Path, typer.Argument(help="The sweep file (YAML).")],
    storage: StorageOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; start nothing.")] = False,
) -> None:
    """Validate SPEC and run it on a local Ray (started for you, on 127.0.0.1 only)."""
    from orchestration.plan import make_plan
    from orchestration.runner import prepare

    prep = prepare(spec, storage)
    plan = make_plan(prep.spec, prep.cells if prep.spec.search.algorithm != "tpe" else None,
                     storage=prep.sweep_dir.uri.rsplit("/", 1)[0])
    for line in plan.describe():
        typer.echo(line)
    if prep.spec.search.algorithm != "tpe":
        typer.echo(f"already finished: {len(prep.cells) - len(prep.pending)} of {len(prep.cells)} trials "
                   f"(they are skipped); to run: {len(prep.pending)}")
    typer.echo(f"sweep directory: {prep.sweep_dir.uri}")
    if dry_run:
        return
    _run(prep, resume=False)


@app.command("resume")
def resume(name: Annotated[str, typer.Argument(help="Sweep name.")], storage: StorageOpt = None) -> None:
    """Continue sweep NAME whose driver died or was interrupted (finished trials are not rerun)."""
    from orchestration.runner import load_submitted

    _run(load_submitted(name, storage), resume=True)


def _run(prep: object, *, resume: bool) -> None:
    from orchestration.runner import run_sweep

    try:
        summary = run_sweep(prep, resume=resume, progress=typer.echo)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        name = prep.spec.name  # type: ignore[attr-defined]
        typer.echo(f"\ninterrupted: finished trials are kept; continue with `deepsad sweep resume {name}`",
                   err=True)
        sys.exit(130)
    _print_summary(summary)
    name = prep.spec.name  # type: ignore[attr-defined]
    typer.echo(f"results: `deepsad results show {name}` · status: `deepsad sweep status {name}`")


def _print_summary(summary: dict[str, object]) -> None:
    by_status = summary.get("by_status", {})
    parts = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))  # type: ignore[attr-defined]
    saved = float(summary.get("ae_seconds_saved", 0.0) or 0.0)  # type: ignore[arg-type]
    typer.echo(f"trials: {summary.get('trials', 0)} ({parts or 'none'}) · AE cache hits: "
               f"{summary.get('cache_hits', 0)} · pretraining compute saved: {saved:.1f} s")


@app.command("status")
def status(name: Annotated[str, typer.Argument(help="Sweep name.")], storage: StorageOpt = None) -> None:
    """A table of the sweep's trials and its progress."""
    from orchestration.runner import load_submitted
    from orchestration.tables import status_table

    prep = load_submitted(name, storage)
    status_table(prep)


@results_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    storage: StorageOpt = None,
    top: Annotated[int | None, typer.Option("--top", help="Only the best K trials.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
) -> None:
    """The sweep's trials from its Parquet store, best validation objective first."""
    from deepsad.errors import ConfigError
    from orchestration.runner import load_submitted
    from orchestration.tables import results_output

    if fmt not in ("table", "csv", "json"):
        raise ConfigError(f"--format: must be table, csv or json (got {fmt})")
    if top is not None and top < 1:
        raise ConfigError(f"--top: must be >= 1 (got {top})")
    results_output(load_submitted(name, storage), top=top, fmt=fmt)
