"""The schemas of a sweep's result tables and the validation of every row written to them.

Both tables carry an explicit schema (:data:`TRIAL_SCHEMA`, :data:`EPOCH_SCHEMA`), so they read with any
Parquet or Delta reader with no type drift; :func:`trial_rows` and :func:`epoch_rows` refuse a row that
does not fit before anything is written.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from deepsad.errors import StorageError

SCHEMA_VERSION = "1"
TRIAL_STATUSES = ("finished", "failed", "stopped", "running")
#: What status and summaries call a trial whose row cannot be read (never stored).
CORRUPT = "corrupt"
EPOCH_PHASES = ("ae", "sad")

_INT_LIST = pa.list_(pa.int64())
_UTC = pa.timestamp("us", tz="UTC")


def _schema(table: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={"deepsad.table": table, "deepsad.schema_version": SCHEMA_VERSION})


#: One row per trial. Only ``trial_key`` and ``status`` are required; everything else may be null.
TRIAL_SCHEMA = _schema(
    "trials",
    [
        # identity
        pa.field("sweep", pa.string()),
        pa.field("trial_key", pa.string(), nullable=False),
        pa.field("trial_id", pa.string()),  # Ray Tune's id of the (latest) run of this trial
        pa.field("status", pa.string(), nullable=False),  # one of TRIAL_STATUSES
        pa.field("error", pa.string()),
        pa.field("attempt", pa.int64()),
        pa.field("code_version", pa.string()),
        pa.field("bundle", pa.string()),  # the bundle (deepsad.bundle) the trial trained in, if any
        pa.field("bundle_size", pa.int64()),  # its number of members
        # configuration
        pa.field("dataset", pa.string()),
        pa.field("normal_classes", _INT_LIST),
        pa.field("known_anomaly_classes", _INT_LIST),
        pa.field("n_known_outlier_classes", pa.int64()),
        pa.field("n_labeled_anomalies", pa.int64()),
        pa.field("ratio_known_outlier", pa.float64()),
        pa.field("ratio_pollution", pa.float64()),
        pa.field("ratio_known_normal", pa.float64()),
        pa.field("val_fraction", pa.float64()),
        pa.field("seed", pa.int64()),
        pa.field("net", pa.string()),
        pa.field("rep_dim", pa.int64()),
        pa.field("eta", pa.float64()),
        pa.field("lr", pa.float64()),
        pa.field("epochs", pa.int64()),
        pa.field("weight_decay", pa.float64()),
        pa.field("batch_size", pa.int64()),
        pa.field("milestones", _INT_LIST),
        pa.field("ae_lr", pa.float64()),
        pa.field("ae_epochs", pa.int64()),
        pa.field("ae_weight_decay", pa.float64()),
        pa.field("bf16", pa.bool_()),
        pa.field("reference_compat", pa.bool_()),
        pa.field("params_json", pa.string()),  # the searched parameters, canonical JSON
        # ablation cells (null on rows of plain sweeps and on rows written before ablations existed)
        pa.field("method", pa.string()),  # deepsad | deepsvdd | isoforest | ocsvm; null reads as deepsad
        pa.field("policy", pa.string()),  # fixed | tuned | search
        pa.field("cell", pa.string()),  # short id of the cell: its axis values + seed + method
        pa.field("axes_json", pa.string()),  # the cell's axis values, canonical JSON
        pa.field("selected", pa.bool_()),  # tuned: the inner trial chosen on validation; fixed: true
        pa.field("inner_trial", pa.int64()),  # tuned: 0..budget-1
        # outcome
        pa.field("fingerprint", pa.string()),  # of the semi-supervised split
        pa.field("val_auroc", pa.float64()),  # labelled anomalies against the rest (deepsad.metrics)
        pa.field("val_ap", pa.float64()),
        pa.field("test_auroc", pa.float64()),
        pa.field("test_ap", pa.float64()),
        pa.field("epochs_done", pa.int64()),  # Deep SAD epochs completed
        pa.field("best_epoch", pa.int64()),
        pa.field("ae_key", pa.string()),
        pa.field("cache_hit", pa.bool_()),
        pa.field("ae_seconds", pa.float64()),  # AE training time spent by this trial (0 on a cache hit)
        pa.field("ae_seconds_saved", pa.float64()),  # the cached AE's original training time, on a hit
        pa.field("sad_seconds", pa.float64()),
        pa.field("total_seconds", pa.float64()),
        pa.field("started_at", _UTC),
        pa.field("finished_at", _UTC),
        pa.field("checkpoint", pa.string()),  # URI of the trial's final model bundle
        pa.field("device", pa.string()),
        pa.field("workers", pa.int64()),
        # validation on the true labels (for comparison only; val_auroc/val_ap use the labels a user has)
        pa.field("val_auroc_oracle", pa.float64()),
        pa.field("val_ap_oracle", pa.float64()),
    ],
)

#: One row per finished epoch of either phase (``"ae"`` pretraining, ``"sad"`` Deep SAD); the columns
#: of :class:`deepsad.training.EpochReport` plus the trial key and attempt.
EPOCH_SCHEMA = _schema(
    "epochs",
    [
        pa.field("trial_key", pa.string(), nullable=False),
        pa.field("phase", pa.string(), nullable=False),  # one of EPOCH_PHASES
        pa.field("epoch", pa.int64(), nullable=False),  # from 1 within its phase
        pa.field("epochs", pa.int64()),  # planned epochs of the phase
        pa.field("loss", pa.float64()),
        pa.field("lr", pa.float64()),
        pa.field("seconds", pa.float64()),
        pa.field("samples_per_s", pa.float64()),
        pa.field("val_auroc", pa.float64()),
        pa.field("val_ap", pa.float64()),
        pa.field("attempt", pa.int64()),
        pa.field("val_auroc_oracle", pa.float64()),
        pa.field("val_ap_oracle", pa.float64()),
    ],
)

#: Trial keys name files and checkpoint directories: a safe alphabet.
KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_trial_key(key: object) -> str:
    """Return ``key`` if it is a usable trial key (letters, digits, ``_.-``; ≤ 128 chars) else raise StorageError."""
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise StorageError(f"results: invalid trial_key {key!r} (letters, digits, '_', '.', '-' only)")
    return key


# ---------------------------------------------------------------------------------------- validation


def _check_value(f: pa.Field, v: Any, where: str) -> Any:
    """``v`` as a plain Python value of ``f``'s type; StorageError naming the column if it is not one.

    Stricter than pyarrow's own conversion on purpose: a bool is not a number, 1.0 is not an int and a
    naive datetime has no defined instant.
    """

    def bad(what: str) -> StorageError:
        return StorageError(f"{where}: column {f.name!r} ({f.type}): {what} (got {v!r})")

    t = f.type
    if pa.types.is_boolean(t):
        if not isinstance(v, bool | np.bool_):
            raise bad("expected a bool")
        return bool(v)
    if pa.types.is_integer(t):
        if isinstance(v, bool | np.bool_) or not isinstance(v, int | np.integer):
            raise bad("expected an int")
        if not -(2**63) <= int(v) < 2**63:
            raise bad("out of the int64 range")
        return int(v)
    if pa.types.is_floating(t):
        if isinstance(v, bool | np.bool_) or not isinstance(v, int | float | np.integer | np.floating):
            raise bad("expected a number")
        return float(v)
    if pa.types.is_string(t):
        if not isinstance(v, str):
            raise bad("expected a str")
        return str(v)
    if pa.types.is_list(t):
        if not isinstance(v, list | tuple | np.ndarray):
            raise bad("expected a list")
        item = pa.field(f.name, t.value_type, nullable=False)
        return [_check_value(item, x, where) for x in list(v)]
    if pa.types.is_timestamp(t):
        if not isinstance(v, dt.datetime):
            raise bad("expected a datetime")
        if v.tzinfo is None or v.utcoffset() is None:
            raise bad("expected a timezone-aware datetime (e.g. datetime.now(timezone.utc))")
        return v.astimezone(dt.UTC)
    raise bad(f"unsupported column type {t}")  # a schema edit without a validator


def _validate(row: Mapping[str, Any], schema: pa.Schema, where: str) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise StorageError(f"{where}: expected a mapping of column -> value, got {type(row).__name__}")
    unknown = sorted(str(k) for k in row if k not in schema.names)
    if unknown:
        raise StorageError(f"{where}: unknown column(s) {', '.join(map(repr, unknown))}")
    out: dict[str, Any] = {}
    for f in schema:
        v = row.get(f.name)
        if v is None:
            if not f.nullable:
                raise StorageError(f"{where}: column {f.name!r} is required")
            out[f.name] = None
        else:
            out[f.name] = _check_value(f, v, where)
    return out


def trial_rows(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """``rows`` (trial rows: missing columns are null) as a table of :data:`TRIAL_SCHEMA`. Raises
    StorageError on an unknown column, a value of the wrong type, a missing ``trial_key``/``status`` or a
    status outside :data:`TRIAL_STATUSES`."""
    clean = []
    for row in rows:
        key = check_trial_key(row.get("trial_key") if isinstance(row, Mapping) else None)
        where = f"results: trial {key}"
        c = _validate(row, TRIAL_SCHEMA, where)
        if c["status"] not in TRIAL_STATUSES:
            raise StorageError(f"{where}: status must be one of {', '.join(TRIAL_STATUSES)} (got {c['status']!r})")
        clean.append(c)
    return _table(clean, TRIAL_SCHEMA, "results: trial rows")


def epoch_rows(trial_key: str, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """The epoch rows of ``trial_key`` as a table of :data:`EPOCH_SCHEMA`. Rows may omit ``trial_key``
    (it is filled in); one naming another key is an error, as is a phase outside :data:`EPOCH_PHASES`."""
    key = check_trial_key(trial_key)
    clean = []
    for i, row in enumerate(rows):
        where = f"results: epochs of trial {key}, row {i}"
        if not isinstance(row, Mapping):
            raise StorageError(f"{where}: expected a mapping, got {type(row).__name__}")
        if row.get("trial_key", key) != key:
            raise StorageError(f"{where}: belongs to trial {row.get('trial_key')!r}")
        c = _validate({**row, "trial_key": key}, EPOCH_SCHEMA, where)
        if c["phase"] not in EPOCH_PHASES:
            raise StorageError(f"{where}: phase must be one of {', '.join(EPOCH_PHASES)} (got {c['phase']!r})")
        clean.append(c)
    return _table(clean, EPOCH_SCHEMA, f"results: epochs of trial {key}")


def _table(rows: list[dict[str, Any]], schema: pa.Schema, where: str) -> pa.Table:
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowException, ValueError, TypeError) as e:  # e.g. an int beyond int64
        raise StorageError(f"{where}: cannot encode as Parquet ({e})") from e
