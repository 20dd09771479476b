"""Terminal views of a sweep's result store: ``sweep status`` and ``results show``."""

from __future__ import annotations

import json
import sys
from typing import Any

from deepsad.errors import StorageError
from deepsad.jsonio import load_json_bounded
from orchestration.store.results import CORRUPT, ResultStore

#: Columns ``results show`` prints, in order (the store has many more; csv/json give them all).
SHOWN = ["trial_key", "status", "seed", "eta", "rep_dim", "weight_decay", "lr", "val_auroc", "val_ap",
         "test_auroc", "test_ap", "epochs_done", "cache_hit", "total_seconds", "error"]


#: ``sweep status`` lists every trial up to this many, else the ones that did not finish (as many).
STATUS_ROWS = 50

ABLATION = ["method", "policy", "selected", "normal_classes", "ratio_known_outlier", "n_labeled_anomalies",
            "ratio_pollution"]


def _console() -> Any:
    from rich.console import Console

    # piped output (logs, CI) gets a wide table instead of rich's default of 80 columns
    return Console() if sys.stdout.isatty() else Console(width=200)


def _key_column(header: str, rows: list[dict[str, Any]]) -> Any:
    """The trial key column, never shortened: the key is what ``checkpoint pull`` and ``replay`` take."""
    from rich.table import Column

    return Column(header, no_wrap=True, min_width=max((len(str(r.get("trial_key") or "")) for r in rows), default=0))


def _rows(prep: Any, table: Any = None) -> list[dict[str, Any]]:
    table = ResultStore(prep.sweep_dir).trials() if table is None else table
    rows: list[dict[str, Any]] = table.to_pylist()
    objective = prep.spec.search.objective.metric

    def order(r: dict[str, Any]) -> tuple[int, float]:
        v = r.get(objective)
        return (0, -float(v)) if isinstance(v, float) else (1, 0.0)

    return sorted(rows, key=order)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def status_table(prep: Any) -> None:
    """Progress of the sweep: counts by status, then one line per trial (past :data:`STATUS_ROWS` trials,
    one per trial that did not finish, up to as many)."""
    import pyarrow.compute as pc
    from rich.table import Table

    spec = prep.spec
    metric = spec.search.objective.metric
    store = ResultStore(prep.sweep_dir)
    read = store.read_trials(["trial_key", "status"])  # two columns of every row, then only the rows listed
    counted = pc.value_counts(read.table.column("status"))
    by_status = dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True))
    if read.corrupt:
        by_status[CORRUPT] = len(read.corrupt)
    keys = read.table
    if keys.num_rows > STATUS_ROWS:  # a big sweep: the trials that need a look, not a million lines
        keys = keys.filter(pc.field("status") != "finished").slice(0, STATUS_ROWS)
    columns = ["trial_key", "status", "attempt", "seed", "params_json", metric, "epochs_done", "cache_hit", "error"]
    listed = (store.read_trials(columns).table if keys.num_rows == read.table.num_rows
              else store.read_trials(columns, keys=keys.column("trial_key")).table)
    # a row file that cannot be read is a trial of its own status: resume runs it again
    rows = _rows(prep, listed) + [
        {"trial_key": bad.key, "status": CORRUPT, "error": f"unreadable row file: {bad.reason}"} for bad in read.corrupt
    ]
    total = (spec.search.num_trials or 0) * len(spec.seeds) if spec.search.algorithm == "tpe" else len(prep.cells)
    console = _console()
    counts = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "no trials yet"
    kind = "ablation" if getattr(spec, "ablation", None) is not None else spec.search.algorithm
    console.print(f"[bold]{spec.name}[/] · {kind} · {total} trials planned · {counts}")
    console.print(f"directory: {prep.sweep_dir.uri}")
    table = Table(_key_column("trial", rows), "status", "attempt", "seed", "params", spec.search.objective.metric, "epochs", "cache", "error")
    for r in rows:
        params = load_json_bounded(r["params_json"], f"trial {r['trial_key']}: params_json",
                                   error=StorageError) if r.get("params_json") else {}
        params = params if isinstance(params, dict) else {}
        table.add_row(r["trial_key"], r["status"], _fmt(r.get("attempt")), _fmt(r.get("seed")),
                      " ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items())),
                      _fmt(r.get(spec.search.objective.metric)), _fmt(r.get("epochs_done")),
                      "hit" if r.get("cache_hit") else "", (r.get("error") or "")[:60])
    console.print(table)
    if listed.num_rows < read.table.num_rows:
        console.print(f"{read.table.num_rows - listed.num_rows} more trials not listed (the best: `deepsad results "
                      f"show {spec.name} --top 20`)")
    if read.corrupt:
        console.print(f"{len(read.corrupt)} trial(s) {CORRUPT}: their row files cannot be read (left in place); "
                      f"`deepsad sweep resume {spec.name}` runs them again and their new rows replace the files")


def results_output(prep: Any, *, top: int | None, fmt: str) -> None:
    """Best trials first, as a table (selected columns) or CSV/JSON (every column)."""
    if top:
        rows = _rows(prep, ResultStore(prep.sweep_dir).best(prep.spec.search.objective.metric, top))
    else:
        rows = _rows(prep)
    if fmt == "json":
        print(json.dumps(rows, default=str, indent=1))
        return
    if fmt == "csv":
        import csv

        if rows:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
            writer.writeheader()
            for r in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
        return
    from rich.table import Table

    if not rows:
        _console().print(f"{prep.spec.name}: no trial rows yet (`deepsad sweep status {prep.spec.name}`)")
        return
    # ablation rows also say which method and policy produced them, and whether they were selected
    if any(r.get("method") for r in rows):
        tuned = ("eta", "rep_dim", "weight_decay", "lr")  # the cell's axes matter more than fixed settings
        shown = SHOWN[:2] + ABLATION + [c for c in SHOWN[2:] if c not in tuned]
    else:
        shown = SHOWN
    table = Table(_key_column(shown[0], rows), *shown[1:])
    for r in rows:
        table.add_row(*[_fmt(r.get(c)) for c in shown])
    _console().print(table)
