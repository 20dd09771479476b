"""``deepsad report NAME --out DIR``: paper-style ablation tables and figures from a sweep's result store."""

from __future__ import annotations

from typing import Annotated

import typer


def report(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    out: Annotated[
        str, typer.Option("--out", help="Directory for report.md, report.html, figures/, tables/ (created).")
    ],
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage", help="Sweep storage: a directory (default runs/sweeps) or s3://bucket/prefix."
        ),
    ] = None,
    metric: Annotated[
        str, typer.Option("--metric", help="auroc or ap: the metric of the figures and the first table.")
    ] = "auroc",
    axis: Annotated[
        str | None,
        typer.Option(
            "--axis",
            help="Row axis column (default ratio_known_outlier, or n_labeled_anomalies "
            "when that is the ablation axis).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an earlier report in --out (never other files).")
    ] = False,
) -> None:
    """Write Markdown + HTML tables (mean ± std, 95% CI, n) and PNG figures of sweep NAME, with provenance."""
    from orchestration.report.build import build_report, load_sweep
    from orchestration.report.render import REPORT_OWNS, write_report
    from orchestration.store.outputs import OutputDir, output_path

    out_dir = output_path(out, "--out")
    OutputDir(out_dir, command="report", flag="--out", owns=REPORT_OWNS, force=force, what="the report").check()
    result = build_report(load_sweep(name, storage), metric=metric, axis=axis)
    files = write_report(result, out_dir, force=force)
    figures = sum(f.suffix == ".png" for f in files)
    tables = sum(f.parent.name == "tables" for f in files)
    typer.echo(
        f"report: {out_dir / 'report.md'} · {out_dir / 'report.html'} ({figures} figures, {tables} tables; "
        f"{result.provenance.used} trials)"
    )


def register(app: typer.Typer) -> None:
    app.command("report")(report)
