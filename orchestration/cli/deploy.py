"""``deepsad checkpoint pull``, ``deepsad export`` and ``deepsad score``: from a sweep to a deployable
model, and batch scoring of raw inputs with it.

Heavy modules (torch, onnx, pyarrow) are imported inside the commands so that ``deepsad --help`` stays
instant. Errors are :class:`deepsad.errors.DeepSADError` s: ``orchestration.cli.app.main`` prints one line
and exits 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from deepsad.errors import ConfigError, DataError, StorageError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from deepsad.deploy import InputSpec
    from orchestration.deploy.export import LoadedScorer
    from orchestration.store.outputs import OutputFile

checkpoint_app = typer.Typer(
    help="Choose the best configuration of a sweep and download its model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Column names (case-insensitive) of a label in CSV/Parquet input: dropped before scoring.
LABEL_COLUMNS = ("y", "label", "class")


@checkpoint_app.command("pull")
def pull(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    to: Annotated[str, typer.Option("--to", help="Local directory for the model (created).")],
    storage: Annotated[
        str | None, typer.Option("--storage", help="Sweep storage (default runs/sweeps).")
    ] = None,
    metric: Annotated[
        str, typer.Option("--metric", help="Validation metric: val_auroc or val_ap (labelled anomalies against the rest), "
                     "val_auroc_oracle or val_ap_oracle (true labels, for comparison only).")
    ] = "val_auroc",
    policy: Annotated[
        str,
        typer.Option("--policy", help="Which seed of the best configuration: median, best, mean-closest."),
    ] = "median",
    min_seeds: Annotated[
        int | None,
        typer.Option(
            "--min-seeds",
            min=1,
            help="Rank only configurations with this many finished seeds "
            "(default: as many as the best-covered configuration).",
        ),
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Configurations to show.")] = 5,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an earlier pull in --to (never other files).")
    ] = False,
    by: Annotated[
        str, typer.Option("--by", help="Rank configurations by their mean over seeds, or by lcb: the lower "
                          "bound of the mean's 95% t interval (fewer or noisier seeds rank lower).")
    ] = "mean",
) -> None:
    """Download the model of the sweep's best configuration.

    The configuration with the best mean validation metric over its seeds (or, --by lcb, the best lower
    confidence bound) wins; one that would win by its best seed only is flagged lucky. --policy says
    which seed's checkpoint is downloaded into --to, with selection.json saying why.
    """
    from orchestration.deploy.registry import format_ranking, sweep_dir
    from orchestration.deploy.registry import pull as pull_model

    result = pull_model(
        sweep_dir(name, storage), to, metric=metric, policy=policy, force=force, min_seeds=min_seeds, top=top, by=by
    )
    for line in format_ranking(result.ranked, metric, top=top, by=by):
        typer.echo(line)
    if result.n_unranked:
        typer.echo(
            f"({result.n_unranked} configurations with fewer finished seeds were not ranked; see --min-seeds)"
        )
    c, p = result.chosen, result.picked
    spread = f" ± {c.std:.4f}" if c.std is not None else ""
    typer.echo(
        f"pulled trial {p.trial_key} (seed {p.seed}, {metric} {p.value:.4f}; policy {policy}) of the best "
        f"configuration ({metric} {c.mean:.4f}{spread} over {c.n} seed{'s' if c.n != 1 else ''}) into {to}"
    )


def export(
    model_dir: Annotated[
        Path,
        typer.Argument(
            help="A pulled model directory (`deepsad checkpoint pull`) or a `deepsad train --out` directory."
        ),
    ],
    fmt: Annotated[str, typer.Option("--format", help="torchscript or onnx.")] = "torchscript",
    out: Annotated[
        str | None, typer.Option("--out", help="Export directory (default: <DIR>-<format>).")
    ] = None,
    fpr: Annotated[
        float, typer.Option("--fpr", help="False-positive rate of the threshold on validation normals.")
    ] = 0.05,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Where the data is now, if not where the sweep read it.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an earlier export in --out (never other files).")
    ] = False,
) -> None:
    """Export a pulled or trained model as a self-contained, deployable bundle.

    The exported module maps raw inputs to scores; the threshold is calibrated on the validation
    split at --fpr.
    """
    from orchestration.deploy.export import export_model
    from orchestration.store.outputs import output_path

    out_dir = None if out is None else output_path(out, "--out")
    result = export_model(model_dir, out_dir, fmt=fmt, fpr=fpr, data_dir=data_dir, force=force)
    cal = result.metadata["calibration"]
    tpr = "n/a" if cal["tpr"] is None else f"{cal['tpr']:.4f}"
    typer.echo(
        f"exported {fmt} to {result.out} · threshold {cal['threshold']:.6g} (validation FPR "
        f"{cal['fpr_achieved']:.4f} ≤ {cal['fpr']}, TPR {tpr}) · parity max rel. error "
        f"{result.metadata['parity']['max_relative_error']:.1e}"
    )


def score(
    input_path: Annotated[
        Path, typer.Argument(metavar="INPUT", help="IDX images, .npz (X), .csv or .parquet rows.")
    ],
    model: Annotated[
        Path,
        typer.Option("--model", help="An export directory, a pulled model or a `deepsad train --out` directory."),
    ],
    out: Annotated[
        str | None, typer.Option("--out", help="Output .csv or .parquet (default: CSV on stdout).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Inputs per batch.")] = 8192,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu or cuda (default: cuda if present).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Override the decision threshold.")
    ] = None,
    fpr: Annotated[
        float | None,
        typer.Option("--fpr", help="Model dirs: calibrate the threshold at this FPR (default 0.05)."),
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Model dirs: where the data for calibration is now.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an earlier score table at --out (never another file).")
    ] = False,
) -> None:
    """Score raw inputs: one row per input with its score and anomaly flag (score > threshold).

    A score that is not finite (NaN or inf: an input far outside the training data, e.g. a feature of
    1e308 that overflows float32) is flagged as an anomaly, never as normal; how many is said on
    stderr. Inputs holding NaN, inf or missing values are refused (one line naming the row and
    column). A CSV's first line is a header, not a row, when a cell is not a number or when the cells
    are 0,1,...,n-1 (pandas' `to_csv(index=False)` of an unnamed frame).
    """
    from deepsad.deploy import check_input_file, flag_scores
    from orchestration.deploy.export import load_scorer

    threshold, fpr = _checked_score_flags(threshold, fpr, batch_size)
    output, fmt = _score_destination(out, force)
    dev = _device(device)
    check_input_file(input_path)
    scorer = load_scorer(model, dev)
    if fpr is not None and scorer.kind != "model" and threshold is None and fpr != scorer.fpr:
        raise ConfigError(
            f"--fpr {fpr}: this export's threshold was calibrated at FPR {scorer.fpr}; re-export, or pass --threshold"
        )
    x = read_input(input_path, scorer.input)
    cut, how = _threshold(scorer, threshold, fpr, data_dir)
    scores = scorer.score(x, batch_size)
    flags, n_nonfinite = flag_scores(scores, cut)
    _write_scores(scores, flags, output, fmt)
    typer.echo(
        f"scored {scores.size} inputs of {input_path} on {dev} · threshold {cut:.6g} ({how}) · "
        f"{int(flags.sum())} flagged as anomalies{_nonfinite_note(n_nonfinite)}",
        err=True,
    )


# ------------------------------------------------------------------------------------- helpers


def _checked_score_flags(
    threshold: float | None, fpr: float | None, batch_size: int
) -> tuple[float | None, float | None]:
    """``--threshold`` and ``--fpr`` as checked (each may be absent), after checking ``--batch-size``."""
    from orchestration.deploy.export import check_fpr, check_threshold

    if threshold is not None:
        threshold = check_threshold(threshold)
    if fpr is not None:
        fpr = check_fpr(fpr)
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1 (got {batch_size})")
    return threshold, fpr


def _score_destination(out: str | None, force: bool) -> tuple[OutputFile | None, str]:
    """The ``--out`` file, checked under the output rule (None: stdout), and the format of the scores."""
    from orchestration.store.outputs import output_path

    output = None if out is None else score_output(output_path(out, "--out"), force)
    fmt = _output_format(out)
    if output is not None:
        output.check()
    return output, fmt


def _threshold(scorer: LoadedScorer, threshold: float | None, fpr: float | None, data_dir: str | None) -> tuple[float, str]:
    """The decision threshold and where it comes from: ``--threshold``, else the export's, else one
    calibrated on the model's validation split at ``--fpr`` (default 0.05)."""
    from orchestration.deploy.export import calibrate_model_dir

    if threshold is not None:
        return threshold, "--threshold"
    if scorer.threshold is not None:
        return scorer.threshold, f"export, FPR {scorer.fpr}"
    cal = calibrate_model_dir(scorer, 0.05 if fpr is None else fpr, data_dir)
    return cal.threshold, f"validation FPR {cal.fpr}"


def _nonfinite_note(n_nonfinite: int) -> str:
    if not n_nonfinite:
        return ""
    return f" ({n_nonfinite} with a non-finite score — NaN or inf: inputs far outside the training data)"


def _device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"--device: must be cpu or cuda (got {device!r})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return device


def _output_format(out: str | None) -> str:
    if out is None:
        return "csv"
    suffix = Path(out).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ConfigError(f"--out {out}: unknown output type {Path(out).suffix!r} (use .csv or .parquet)")


def read_input(path: Path, spec: InputSpec) -> np.ndarray:
    """Raw inputs from ``path``, checked against ``spec``: IDX (``.gz`` or not) and ``.npz`` (``X``)
    arrays, or ``.csv``/``.parquet`` rows of numeric columns (a ``y``/``label``/``class`` column is
    dropped; a CSV header is recognised by :func:`deepsad.deploy.is_header_row`).

    Raises:
        DataError: missing, not a regular file (a directory has its own message) or unreadable file,
            non-numeric column, or inputs that do not fit ``spec`` (one line naming the file, what
            was expected and what was found). Nothing else, whatever the bytes.
    """
    from deepsad.deploy import check_input_file, read_array_file

    check_input_file(path)
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        x = _table_features(_read_csv(path), path)
    elif name.endswith((".parquet", ".pq")):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{path}: not a readable Parquet file ({_first_line(e)})") from e
        x = _table_features(table, path)
    else:
        x = read_array_file(path)
    return spec.conform(x, str(path))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _read_csv(path: Path) -> pa.Table:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from deepsad.deploy import is_header_row

    try:
        # pyarrow takes the first line for the column names; when it is data, read it again as data
        table = pcsv.read_csv(path)
        if table.num_columns and not is_header_row(table.column_names):
            table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(autogenerate_column_names=True))
    except (OSError, pa.ArrowException, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV file ({_first_line(e)})") from e
    return table


def _table_features(table: pa.Table, path: Path) -> np.ndarray:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    # by position: a header may name two columns alike
    keep = [i for i, n in enumerate(table.column_names) if n.strip().lower() not in LABEL_COLUMNS]
    columns = []
    for i in keep:
        col, name = table.column(i), table.column_names[i]
        if not (
            pa.types.is_integer(col.type)
            or pa.types.is_floating(col.type)
            or pa.types.is_boolean(col.type)
            or pa.types.is_null(col.type)
        ):
            raise DataError(f"{path}: column {name!r} is not numeric ({col.type})")
        # nulls become NaN, which the input check reports with their row and column
        try:
            columns.append(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False))
        except pa.ArrowException as e:
            raise DataError(f"{path}: column {name!r} cannot be read as numbers ({_first_line(e)})") from e
    if not columns:
        raise DataError(f"{path}: no feature columns")
    return np.column_stack(columns)


#: The columns of a score table, in order: how `score --force` recognises its own earlier output.
SCORE_COLUMNS = ("index", "score", "anomaly")


def is_score_table(path: Path) -> bool:
    """Whether ``path`` is a table that ``deepsad score`` wrote: a CSV whose header is exactly the score
    columns, or a Parquet file with exactly those columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return tuple(pq.read_schema(path).names) == SCORE_COLUMNS
        with path.open("rb") as f:
            first = f.readline(256).strip().decode("utf-8", "replace")
    except (OSError, pa.ArrowException):
        return False
    return tuple(c.strip('"') for c in first.split(",")) == SCORE_COLUMNS


def score_output(path: Path, force: bool) -> OutputFile:
    """The ``--out`` file of ``deepsad score`` under the output rule (:mod:`orchestration.store.outputs`)."""
    from orchestration.store.outputs import OutputFile

    return OutputFile(path, command="score", flag="--out", is_own=is_score_table, force=force, what="the scores")


def _write_scores(scores: np.ndarray, flags: np.ndarray, output: OutputFile | None, fmt: str) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "index": np.arange(scores.size, dtype=np.int64),
            "score": scores.astype(np.float64),
            "anomaly": flags.astype(bool),
        }
    )
    if output is None:
        sink = pa.BufferOutputStream()
        pcsv.write_csv(table, sink)
        sys.stdout.buffer.write(sink.getvalue().to_pybytes())
        sys.stdout.flush()
        return
    with output.staging() as tmp:
        try:
            if fmt == "parquet":
                pq.write_table(table, tmp)
            else:
                pcsv.write_csv(table, tmp)
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"--out {output.path}: cannot write ({_first_line(e)})") from e


def register(app: Any) -> None:
    """Add ``checkpoint pull``, ``export`` and ``score`` to the ``deepsad`` app."""
    app.add_typer(checkpoint_app, name="checkpoint")
    app.command("export")(export)
    app.command("score")(score)
