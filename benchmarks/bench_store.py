"""The result store at sweep scale (issue 16): the Delta Lake table of ``orchestration.store.delta`` against
today's one-Parquet-file-per-trial layout of ``orchestration.store.results``, on local disk and (``--s3``)
on a moto S3 server on 127.0.0.1.

Rows are synthetic but shaped like a sweep's (:data:`TRIAL_SCHEMA`, all 57 columns): unique 16-hex keys,
floats, ``list<int64>`` classes and milestones, UTC timestamps, a ~70-character ``params_json``, an
~80-character checkpoint URI, ablation columns on 30 % of the rows, outcome columns null while a trial
runs and when it failed. They arrive as a sweep's single writer sees them: commits of ``--batch`` rows,
most of them new trials (86 % finished, 3 % failed, 1 % stopped, 10 % still running) and the rest the
trials that were running in the previous commit, now finished. Figures, per size and backend:

* **write** (Delta): ``DeltaRows.upsert(rows, stored=ledger)``, the ledger (key → status) kept by the
  bench as ``GroupCommitter`` keeps it, so new keys are appended and the running → finished updates
  MERGEd within the ``running`` partition. Rows committed per second of commit time, mean and max
  seconds per commit (row generation is not timed); ``DeltaRows.maintain()`` (compact + vacuum +
  checkpoint) every ``--maintain-every`` commits and at the end, timed apart. Bytes per row after the
  last ``maintain()``: *live* = the snapshot's data files + ``_delta_log/`` (the table once the
  vacuum's retention window, an hour, has passed; an upper bound, as the log entries of that hour are
  still there too) and *disk* = every file under the table directory right now (the files compaction
  replaced are kept for that hour).
* **write** (per file): the same final rows (last row per key of the same commits) as one
  ``results/trials/<key>.parquet`` each. ``--per-file-writer direct`` (the default) encodes each row as
  ``ResultStore.write_trial`` does (``pq.write_table`` of a one-row table of TRIAL_SCHEMA) and writes it
  with the store's own atomic ``Storage.write_bytes``, skipping only the per-row validation; ``store``
  calls ``ResultStore.write_trial`` itself. Only up to ``--per-file-max`` rows (each file costs ~20 KB
  and a few ms): the per-file sizes are ``min(size, --per-file-max)``.
* **reads**, each in a fresh ``python`` process (so interpreter start, imports and cold opens count):
  *top-5* (the five best ``val_auroc`` with ``trial_key`` and ``status``: ``DeltaRows.read`` of those
  three columns, or ``ResultStore.trials()``) and *status* (rows per status: ``DeltaRows.counts()``
  from the log alone, or ``ResultStore.summary()``). Wall time from the parent's start of the process
  to its exit, and the time after imports (open + query), medians of ``--repeats`` runs. Where both
  layouts hold the same rows their answers are compared (``agree``).

* **the commands** a user runs, on a sweep directory made of the Delta table and a ``spec.yaml`` (the
  quickstart's, renamed): ``deepsad results show NAME --top 5`` and ``deepsad sweep status NAME``, each
  in a fresh process (the installed ``deepsad`` script), wall time, median of ``--repeats``; their output
  is checked against the direct reads (the five keys, the counts by status).

At the end the figures are set against the issue's targets (1M rows locally: ``results show --top 5`` <
2 s, ``sweep status`` < 3 s, < 300 B/row after compaction; moto with 100k rows: both < 5 s), the
commands' wall times: measured where that size ran, otherwise extrapolated (marked ``~``) linearly from
the two largest sizes (if the largest is at least 1 % of the target's); bytes per row as measured at the
largest size (same 1 % rule; it only falls with size).

    python benchmarks/bench_store.py [--sizes 10000,100000] [--batch 1000] [--repeats 3] [--per-file-max 10000]
        [--s3] [--dir DIR] [--json PATH] [--dry-run]

``--dry-run``: 100 and 500 rows, commits of 100, 100 per-file rows, one repeat, no S3 unless ``--s3`` is
given (a smoke check of every step in well under a minute). Nothing is written outside the temporary
directory (or ``--dir``, where a fresh subdirectory is kept); the only network is 127.0.0.1 (moto).
Prints; asserts nothing but the row counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
#: The sweep file each synthetic sweep directory gets as its spec.yaml (its objective: val_auroc).
SPEC = REPO / "sweeps" / "quickstart.yaml"
sys.path.insert(0, str(REPO))

from orchestration.store.delta import storage_options, table_uri  # noqa: E402
from orchestration.store.results import TRIAL_SCHEMA, ResultStore, tables  # noqa: E402
from orchestration.store.storage import Storage  # noqa: E402

TOP5_COLUMNS = ["trial_key", "val_auroc", "status"]
NEW_STATUS = (("finished", 0.86), ("failed", 0.03), ("stopped", 0.01), ("running", 0.10))
BUCKET = "bench-store"
REGION = "us-east-1"
TARGETS = (  # (backend, rows, figure, limit, unit) of issue 16
    ("local", 1_000_000, "cli_top5_wall_s", 2.0, "s"),
    ("local", 1_000_000, "cli_status_wall_s", 3.0, "s"),
    ("local", 1_000_000, "bytes_per_row_live", 300.0, "B/row"),
    ("moto", 100_000, "cli_top5_wall_s", 5.0, "s"),
    ("moto", 100_000, "cli_status_wall_s", 5.0, "s"),
)
#: Variables that could point the AWS SDKs elsewhere than the moto server (as tests/s3_servers.py).
FOREIGN_ENV = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "DEEPSAD_S3_REGION", "DEEPSAD_S3_ADDRESSING", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)  # fmt: skip


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "host": platform.node(), "cpu": model, "cpus": os.cpu_count(), "cpus_usable": usable,
        "load_average": [round(x, 2) for x in os.getloadavg()], "nice": os.nice(0),
        "python": platform.python_version(), "pyarrow": pa.__version__, "deltalake": version("deltalake"),
        "numpy": np.__version__, "moto": version("moto"),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ rows


def _keys(start: int, n: int) -> list[str]:
    """Unique 16-hex keys: a 64-bit mix (splitmix64) of the global row index."""
    h = np.arange(start, start + n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = (h + np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    return [f"{int(x):016x}" for x in h]


def _nullable(values: Any, valid: np.ndarray, typ: pa.DataType) -> pa.Array:
    return pa.array(values, type=typ, mask=~valid)


def _lists(values: np.ndarray, width: int) -> pa.Array:
    n = len(values) // width
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.astype(np.int64)))


def _outcome(rng: np.random.Generator, n: int, done: np.ndarray, started_us: np.ndarray,
             hit: np.ndarray, ae_s: np.ndarray) -> dict[str, pa.Array]:
    """The outcome columns: null (or partial) where not ``done``."""
    sad_s = rng.uniform(30, 600, n)
    total = sad_s + np.where(hit, 0, ae_s) + rng.uniform(1, 5, n)
    return {
        "val_auroc": _nullable(rng.beta(8, 2, n), done, pa.float64()),
        "val_ap": _nullable(rng.beta(6, 3, n), done, pa.float64()),
        "val_auroc_oracle": _nullable(rng.beta(8, 2, n), done, pa.float64()),
        "val_ap_oracle": _nullable(rng.beta(6, 3, n), done, pa.float64()),
        "test_auroc": _nullable(rng.beta(8, 2, n), done, pa.float64()),
        "test_ap": _nullable(rng.beta(6, 3, n), done, pa.float64()),
        "epochs_done": pa.array(np.where(done, 150, rng.integers(0, 150, n))),
        "best_epoch": _nullable(rng.integers(1, 151, n), done, pa.int64()),
        "sad_seconds": _nullable(sad_s, done, pa.float64()),
        "total_seconds": _nullable(total, done, pa.float64()),
        "finished_at": _nullable(started_us + (total * 1e6).astype(np.int64), done, pa.timestamp("us", tz="UTC")),
    }


def new_rows(rng: np.random.Generator, start: int, n: int) -> pa.Table:
    """``n`` new trials, rows ``start``..``start+n-1`` of the sweep, with the statuses of :data:`NEW_STATUS`."""
    keys = _keys(start, n)
    names, p = zip(*NEW_STATUS, strict=True)
    status = rng.choice(np.array(names), n, p=np.array(p))
    done = np.isin(status, ["finished", "stopped"])  # a failed or running trial has no outcome
    ds = np.array(["mnist", "fmnist", "cifar10"])[rng.integers(0, 3, n)]
    normal = rng.integers(0, 10, n)
    seed = rng.integers(0, 10, n)
    eta, lr = rng.choice([0.5, 1.0, 2.0, 5.0], n), np.exp(rng.uniform(np.log(1e-5), np.log(1e-2), n))
    rko, rp = rng.choice([0.01, 0.05, 0.1, 0.2], n), rng.choice([0.0, 0.05, 0.1], n)
    ablation, bundled, hit = rng.random(n) < 0.3, rng.random(n) < 0.5, rng.random(n) < 0.8
    ae_s = rng.uniform(20, 200, n)
    started = 1_750_000_000_000_000 + start * 1_000_000 + np.cumsum(rng.integers(100_000, 2_000_000, n))
    cols: dict[str, pa.Array] = {
        "sweep": pa.array(["mnist-grid-2025"] * n),
        "trial_key": pa.array(keys),
        "trial_id": pa.array([f"{(start + i) // 1000:05x}_{(start + i) % 100_000:05d}" for i in range(n)]),
        "status": pa.array(status),
        "error": _nullable(["RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"] * n, status == "failed",
                           pa.string()),
        "attempt": pa.array(np.where(rng.random(n) < 0.05, 2, 1)),
        "code_version": pa.array(np.where(rng.random(n) < 0.5, "git:3f2a9c1", "git:77b0e4d")),
        "bundle": _nullable([f"b{x:08x}" for x in rng.integers(0, 2**31, n)], bundled, pa.string()),
        "bundle_size": _nullable(rng.integers(1, 9, n), bundled, pa.int64()),
        "dataset": pa.array(ds),
        "normal_classes": _lists(normal, 1),
        "known_anomaly_classes": _lists((normal + rng.integers(1, 10, n)) % 10, 1),
        "n_known_outlier_classes": pa.array(np.ones(n, dtype=np.int64)),
        "n_labeled_anomalies": pa.array(rng.choice([0, 10, 50, 100], n)),
        "ratio_known_outlier": pa.array(rko),
        "ratio_pollution": pa.array(rp),
        "ratio_known_normal": pa.array(np.zeros(n)),
        "val_fraction": pa.array(np.full(n, 0.1)),
        "seed": pa.array(seed),
        "net": pa.array(np.where(ds == "cifar10", "cifar10_LeNet", "mnist_LeNet")),
        "rep_dim": pa.array(np.where(ds == "cifar10", 128, 32)),
        "eta": pa.array(eta),
        "lr": pa.array(lr),
        "epochs": pa.array(np.full(n, 150)),
        "weight_decay": pa.array(np.full(n, 5e-7)),
        "batch_size": pa.array(np.full(n, 128)),
        "milestones": _lists(np.tile([50, 100], n), 2),
        "ae_lr": pa.array(np.full(n, 1e-4)),
        "ae_epochs": pa.array(np.full(n, 100)),
        "ae_weight_decay": pa.array(np.full(n, 5e-3)),
        "bf16": pa.array(rng.random(n) < 0.5),
        "reference_compat": pa.array(np.zeros(n, dtype=bool)),
        "params_json": pa.array([
            json.dumps({"eta": float(e), "lr": float(f"{x:.6g}"), "ratio_known_outlier": float(r), "seed": int(s)},
                       sort_keys=True) for e, x, r, s in zip(eta, lr, rko, seed, strict=True)]),
        "method": _nullable(rng.choice(["deepsad", "deepsvdd", "isoforest", "ocsvm"], n), ablation, pa.string()),
        "policy": _nullable(rng.choice(["fixed", "tuned", "search"], n), ablation, pa.string()),
        "cell": _nullable([f"c{x:010x}" for x in rng.integers(0, 2**40, n)], ablation, pa.string()),
        "axes_json": _nullable([f'{{"ratio_known_outlier": {r}, "ratio_pollution": {q}}}'
                                for r, q in zip(rko, rp, strict=True)], ablation, pa.string()),
        "selected": _nullable(rng.random(n) < 0.2, ablation, pa.bool_()),
        "inner_trial": _nullable(rng.integers(0, 8, n), ablation, pa.int64()),
        "fingerprint": pa.array([f"{x:016x}" for x in rng.integers(0, 2**63, n)]),
        "ae_key": pa.array([f"{x:016x}" for x in rng.integers(0, 2**63, n)]),
        "cache_hit": pa.array(hit),
        "ae_seconds": pa.array(np.where(hit, 0.0, ae_s)),
        "ae_seconds_saved": _nullable(ae_s, hit, pa.float64()),
        "started_at": pa.array(started, type=pa.timestamp("us", tz="UTC")),
        "checkpoint": pa.array([f"s3://deepsad-results/sweeps/mnist-grid-2025/checkpoints/{k}/bundle" for k in keys]),
        "device": pa.array([f"cuda:{d}" for d in rng.integers(0, 8, n)]),
        "workers": pa.array(np.ones(n, dtype=np.int64)),
        **_outcome(rng, n, done, started, hit, ae_s),
    }  # fmt: skip
    return pa.Table.from_arrays([cols[f.name].cast(f.type) for f in TRIAL_SCHEMA], schema=TRIAL_SCHEMA)


def finished(rng: np.random.Generator, running: pa.Table) -> pa.Table:
    """The rows of ``running`` trials as they finish: same configuration, status and outcome filled in."""
    n = running.num_rows
    started = running.column("started_at").cast(pa.int64()).to_numpy()
    hit = running.column("cache_hit").to_numpy()
    ae_s = running.column("ae_seconds_saved").fill_null(0.0).to_numpy()
    cols = {"status": pa.array(["finished"] * n), **_outcome(rng, n, np.ones(n, dtype=bool), started, hit, ae_s)}
    out = running
    for name, values in cols.items():
        i = TRIAL_SCHEMA.get_field_index(name)
        out = out.set_column(i, TRIAL_SCHEMA.field(name), values.cast(TRIAL_SCHEMA.field(name).type))
    return out


def commits(n: int, batch: int, seed: int) -> Iterator[pa.Table]:
    """The commits of a sweep of ``n`` trials: each ``batch`` rows, the trials left running by the commit
    before now finished, the rest new. The last commit's running trials stay running. Deterministic, and
    the commits for ``n`` rows begin with those for fewer (up to the last one)."""
    made, running, i = 0, None, 0
    while made < n:
        rng = np.random.default_rng([seed, i])
        parts = []
        if running is not None and running.num_rows:
            parts.append(finished(rng, running))
        k = min(max(1, batch - (running.num_rows if running is not None else 0)), n - made)
        fresh = new_rows(rng, made, k)
        parts.append(fresh)
        made, i = made + k, i + 1
        running = fresh.filter(pc.equal(fresh.column("status"), "running"))
        yield pa.concat_tables(parts)


def final_rows(n: int, batch: int, seed: int) -> pa.Table:
    """The last row of every key of :func:`commits` (what either layout holds at the end)."""
    rows = pa.concat_tables(list(commits(n, batch, seed)))
    last = {k: i for i, k in enumerate(rows.column("trial_key").to_pylist())}
    return rows.take(sorted(last.values()))


# ------------------------------------------------------------------------------------------- writing


def tree_bytes(storage: Storage) -> tuple[int, int, int]:
    """(files, bytes, bytes under ``_delta_log/``) of every file under ``storage``."""
    infos = storage.filesystem.get_file_info(pafs.FileSelector(storage.root, recursive=True))
    files = [i for i in infos if i.type == pafs.FileType.File]
    log = sum(i.size for i in files if "/_delta_log/" in i.path)
    return len(files), sum(i.size for i in files), log


def live_data_bytes(storage: Storage) -> tuple[int, int]:
    """(files, bytes) of the data files in the latest snapshot, from the log."""
    from deltalake import DeltaTable

    actions = pa.table(DeltaTable(table_uri(storage), storage_options=storage_options(storage))
                       .get_add_actions(flatten=True))
    return actions.num_rows, int(pc.sum(actions.column("size_bytes")).as_py() or 0)


def write_delta(sweep: Storage, n: int, batch: int, maintain_every: int, seed: int) -> dict[str, Any]:
    table = tables(sweep)[0]  # the sweep's trial table exactly as the result store defines it
    storage = table.storage
    ledger: dict[str, str] = {}
    times: list[float] = []
    maint: list[dict[str, Any]] = []
    rows = updates = 0

    def maintain() -> None:
        t = time.perf_counter()
        files = table.maintain()
        maint.append({"after_commit": len(times), "s": round(time.perf_counter() - t, 3), **files})

    for part in commits(n, batch, seed):
        keys = part.column("trial_key").to_pylist()
        updates += sum(k in ledger for k in keys)
        t = time.perf_counter()
        table.upsert(part, stored=ledger)
        times.append(time.perf_counter() - t)
        ledger.update(zip(keys, part.column("status").to_pylist(), strict=True))
        rows += part.num_rows
        if len(times) % maintain_every == 0:
            maintain()
        if len(times) % 100 == 0:
            print(f"  … {len(times)} commits, {len(ledger)} trials, last commit {times[-1]:.3f} s", flush=True)
    if not maint or maint[-1]["after_commit"] != len(times):
        maintain()
    counts = table.counts()
    if sum(counts.values()) != n or len(ledger) != n:
        raise SystemExit(f"delta table of {n} trials holds {sum(counts.values())} rows ({counts})")
    files, disk, log = tree_bytes(storage)
    live_files, live = live_data_bytes(storage)
    commit_s = sum(times)
    return {
        "commits": len(times), "rows_committed": rows, "updates": updates, "commit_s_total": round(commit_s, 3),
        "rows_per_s": round(rows / commit_s), "commit_mean_s": round(commit_s / len(times), 4),
        "commit_median_s": round(statistics.median(times), 4), "commit_max_s": round(max(times), 4),
        "commit_first10_mean_s": round(statistics.mean(times[:10]), 4),
        "commit_last10_mean_s": round(statistics.mean(times[-10:]), 4),
        "maintain": maint, "maintain_s_total": round(sum(m["s"] for m in maint), 3),
        "rows_per_s_with_maintain": round(rows / (commit_s + sum(m["s"] for m in maint))),
        "version": table.version(), "counts": counts,
        "files_on_disk": files, "bytes_on_disk": disk, "log_bytes": log, "live_files": live_files,
        "live_data_bytes": live, "bytes_per_row_live": round((live + log) / n, 1),
        "bytes_per_row_disk": round(disk / n, 1),
    }  # fmt: skip


def write_per_file(storage: Storage, rows: pa.Table, writer: str) -> dict[str, Any]:
    """One ``results/trials/<key>.parquet`` per row, as :class:`ResultStore` lays them out."""
    store, trials = ResultStore(storage), storage.child("results", "trials")
    keys = rows.column("trial_key").to_pylist()
    t = time.perf_counter()
    for i, key in enumerate(keys):
        one = rows.slice(i, 1)
        if writer == "store":
            store.write_trial(one.to_pylist()[0])
        else:  # the bytes of ResultStore._to_parquet, through the same atomic write
            sink = pa.BufferOutputStream()
            pq.write_table(one, sink)
            trials.write_bytes(sink.getvalue().to_pybytes(), f"{key}.parquet")
    seconds = time.perf_counter() - t
    files, disk, _ = tree_bytes(trials)
    if files != rows.num_rows:
        raise SystemExit(f"per-file store of {rows.num_rows} trials holds {files} files")
    return {"writer": writer, "files": files, "write_s": round(seconds, 3),
            "ms_per_file": round(seconds / files * 1e3, 3), "rows_per_s": round(files / seconds),
            "bytes_on_disk": disk, "bytes_per_row_disk": round(disk / files, 1),
            "bytes_per_row_live": round(disk / files, 1)}  # fmt: skip


# ------------------------------------------------------------------------------------------- reading

#: One read in a fresh interpreter: argv[1] is {"layout", "query", "uri"}; prints one JSON line.
CHILD = r"""
import time
t0 = time.perf_counter()
import json, sys
spec = json.loads(sys.argv[1])
import pyarrow.compute as pc
from orchestration.store.storage import Storage
from orchestration.store.results import TRIAL_SCHEMA, ResultStore
if spec["layout"] == "delta":
    import deltalake  # DeltaRows imports it on first use: counted with the imports
    from orchestration.store.delta import DeltaRows
t1 = time.perf_counter()
storage = Storage.from_uri(spec["uri"])

def top5(t):
    t = t.filter(pc.is_valid(t.column("val_auroc")))
    best = t.take(pc.select_k_unstable(t, k=5, sort_keys=[("val_auroc", "descending")]))
    return [[r["trial_key"], round(r["val_auroc"], 9), r["status"]] for r in best.to_pylist()]

if spec["layout"] == "delta":
    table = DeltaRows(storage, TRIAL_SCHEMA, key="trial_key", partition="status")
    if spec["query"] == "top5":
        t = table.read(["trial_key", "val_auroc", "status"]).table
        rows, answer = t.num_rows, top5(t)
    else:
        answer = table.counts()
        rows = sum(answer.values())
else:
    store = ResultStore(storage)
    if spec["query"] == "top5":
        t = store.trials()
        rows, answer = t.num_rows, top5(t)
    else:
        s = store.summary()
        rows, answer = s["trials"], {k: v for k, v in s["by_status"].items() if v}
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "work_s": t2 - t1, "rows": rows, "answer": answer}), flush=True)
"""


def read_once(layout: str, query: str, uri: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    spec = json.dumps({"layout": layout, "query": query, "uri": uri})
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, spec], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800, check=False)  # fmt: skip
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{layout} {query} read of {uri} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, **out}


def read_all(layout: str, uri: str, repeats: int, rows: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for query in ("top5", "status"):
        runs = [read_once(layout, query, uri) for _ in range(repeats)]
        if any(r["rows"] != rows for r in runs):
            raise SystemExit(f"{layout} {query} read {[r['rows'] for r in runs]} rows of {rows}")
        out[query] = {
            "wall_s": round(statistics.median(r["wall_s"] for r in runs), 3),
            "work_s": round(statistics.median(r["work_s"] for r in runs), 3),
            "import_s": round(statistics.median(r["import_s"] for r in runs), 3),
            "wall_runs_s": [round(r["wall_s"], 3) for r in runs],
            "answer": runs[0]["answer"],
        }
    return out


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("deepsad")
    if script.exists():
        return [str(script)]
    found = shutil.which("deepsad")
    if found is None:
        raise SystemExit("the deepsad command is not installed (pip install -e .)")
    return [found]


def read_cli(sweeps: str, name: str, repeats: int, reads: dict[str, Any]) -> dict[str, Any]:
    """The user's commands on the sweep directory: ``deepsad results show NAME --top 5`` and ``deepsad
    sweep status NAME``, each in a fresh process, wall time (median of ``repeats``); their output is
    checked against the direct reads (the five keys; the counts by status)."""
    env = {**os.environ, "COLUMNS": "250", "DEEPSAD_STORAGE": sweeps}
    out: dict[str, Any] = {}
    top_keys = [k for k, _, _ in reads["top5"]["answer"]]
    commands = {
        "cli_top5": (["results", "show", name, "--top", "5"], top_keys),
        "cli_status": (["sweep", "status", name], [f"{n} {s}" for s, n in sorted(reads["status"]["answer"].items())]),
    }
    for query, (argv, expected) in commands.items():
        walls = []
        for _ in range(repeats):
            t = time.perf_counter()
            done = subprocess.run([*_cli(), *argv, "--storage", sweeps], env=env, capture_output=True, text=True,
                                  timeout=1800, check=False)  # fmt: skip
            walls.append(time.perf_counter() - t)
            missing = [e for e in expected if e not in done.stdout]
            if done.returncode != 0 or missing:
                raise SystemExit(f"deepsad {' '.join(argv)} failed ({done.returncode}; missing {missing}):\n"
                                 f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        out[query] = {"command": f"deepsad {' '.join(argv)} --storage {sweeps}", "wall_s": round(
            statistics.median(walls), 3), "wall_runs_s": [round(w, 3) for w in walls], "lines": done.stdout.count("\n")}
    return out


# ------------------------------------------------------------------------------------------------ moto


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Moto:
    """moto's S3 server on 127.0.0.1 (as tests/s3_servers.py starts it), with the bucket :data:`BUCKET`."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "moto.log"
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
        env = {**{k: os.environ[k] for k in keep if k in os.environ}, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=workdir,
                start_new_session=True,
            )  # fmt: skip
        self.env = {
            "DEEPSAD_S3_ENDPOINT": self.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": REGION, "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(workdir / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "aws-credentials"),
        }  # fmt: skip

    def wait(self, timeout: float = 60.0) -> None:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id="testing",
                              aws_secret_access_key="testing",
                              config=Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=10,
                                            retries={"max_attempts": 1}))  # fmt: skip
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"moto exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                client.create_bucket(Bucket=BUCKET)
                return
            except Exception as e:  # not up yet
                last = f"{type(e).__name__}: {e}"
                time.sleep(0.2)
        self.stop()
        raise SystemExit(f"moto not ready after {timeout:.0f} s ({last})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


# ----------------------------------------------------------------------------------------------- report


def extrapolate(points: dict[int, float], n: int) -> tuple[float | None, str]:
    """The figure at ``n`` rows: measured, else linear through the two largest sizes (never decreasing),
    if the largest is at least 1 % of ``n`` (below that, noise would be extrapolated)."""
    if n in points:
        return points[n], ""
    if len(points) < 2 or max(points) * 100 < n:
        return None, ""
    (n1, v1), (n2, v2) = sorted(points.items())[-2:]
    slope = max(0.0, (v2 - v1) / (n2 - n1))
    return v2 + slope * (n - n2), "~"


def targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for backend, n, figure, limit, unit in TARGETS:
        points: dict[int, float] = {}
        value: float | None
        for r in runs:
            if r["backend"] != backend or r["layout"] != "delta":
                continue
            if figure.startswith("bytes"):
                points[r["rows"]] = r["write"][figure]
            else:
                read = r["reads"][figure.removesuffix("_wall_s")]
                points[r["rows"]] = read["wall_s"]  # the whole command: what a user waits for
        if figure.startswith("bytes") and n not in points and points and max(points) * 100 >= n:
            largest = max(points)  # per-row size falls with size (fixed log costs spread): the largest as is
            value, how = points[largest], f"at {largest:,} rows"
        else:
            value, how = extrapolate(points, n)
            how = "measured" if how == "" and value is not None else ("extrapolated" if value is not None else "")
        out.append({"backend": backend, "rows": n, "figure": figure, "limit": limit, "unit": unit,
                    "value": None if value is None else round(value, 3), "how": how or "not measured",
                    "met": None if value is None else value < limit})  # fmt: skip
    return out


def print_tables(result: dict[str, Any]) -> None:
    runs = result["runs"]
    print("\nwrites")
    print(f"{'backend':<8}{'layout':<10}{'rows':>10}{'commits':>9}{'rows/s':>9}{'commit mean/max s':>19}"
          f"{'maintain s (n)':>16}{'files':>8}{'B/row live':>12}{'B/row disk':>12}")
    for r in runs:
        w = r["write"]
        if r["layout"] == "delta":
            commit = f"{w['commit_mean_s']:.3f}/{w['commit_max_s']:.3f}"
            maint = f"{w['maintain_s_total']:.1f} ({len(w['maintain'])})"
            files = w["live_files"]
        else:
            commit, maint, files = f"{w['ms_per_file'] / 1e3:.4f}/file", "-", w["files"]
        writes = w["commits"] if "commits" in w else w["files"]
        print(f"{r['backend']:<8}{r['layout']:<10}{r['rows']:>10,}{writes:>9,}{w['rows_per_s']:>9,}"
              f"{commit:>19}{maint:>16}{files:>8,}{w['bytes_per_row_live']:>12,.0f}{w['bytes_per_row_disk']:>12,.0f}")
    print(f"\nreads (fresh process, median of {result['args']['repeats']}: wall / after imports, seconds)")
    print(f"{'backend':<8}{'layout':<10}{'rows':>10}{'top-5 wall':>12}{'after imp.':>12}{'status wall':>13}"
          f"{'after imp.':>12}{'imports':>9}{'agree':>7}")
    for r in runs:
        t, s = r["reads"]["top5"], r["reads"]["status"]
        agree = {True: "yes", False: "NO", None: "-"}[r.get("agree")]
        print(f"{r['backend']:<8}{r['layout']:<10}{r['rows']:>10,}{t['wall_s']:>12.3f}{t['work_s']:>12.3f}"
              f"{s['wall_s']:>13.3f}{s['work_s']:>12.3f}{t['import_s']:>9.3f}{agree:>7}")
    print("\nthe commands (fresh process, wall seconds, median)")
    for r in runs:
        for q in ("cli_top5", "cli_status"):
            if q in r["reads"]:
                c = r["reads"][q]
                print(f"  {r['backend']:<8}{r['rows']:>10,} rows  {c['wall_s']:>7.3f}  {c['command']}")
    print("\ntargets of issue 16 (the commands on the Delta layout; ~ = extrapolated: wall time linear in rows from "
          "the two largest sizes)")
    for t in result["targets"]:
        value = "n/a" if t["value"] is None else f"{'~' if t['how'] == 'extrapolated' else ''}{t['value']:,.3f}"
        met = {True: "met", False: "MISSED", None: "-"}[t["met"]]
        print(f"  {t['backend']:<6}{t['rows']:>10,} rows  {t['figure']:<20} < {t['limit']:>6g} {t['unit']:<6}"
              f"{value:>12}  {met:<7}({t['how']})")


# ------------------------------------------------------------------------------------------------- main


def run_backend(backend: str, root: Any, sizes: list[int], per_file_sizes: list[int], args: argparse.Namespace,
                result: dict[str, Any], save: Any) -> None:
    """Delta write + reads for every size, then the per-file layout, under ``root`` (a Path or an s3:// URI)."""

    def storage(*parts: str) -> Storage:
        return Storage.from_uri(f"{root}/{'/'.join(parts)}" if isinstance(root, str) else root.joinpath(*parts))

    delta_answers: dict[int, dict[str, Any]] = {}
    for n in sizes:
        print(f"[{backend}] delta: writing {n:,} trials in commits of {args.batch}", flush=True)
        sweep = storage("sweeps", f"delta-{n}")
        sweep.write_bytes(SPEC.read_text().replace("name: quickstart\n", f"name: delta-{n}\n", 1).encode(), "spec.yaml")
        where = sweep.child("results", "trials.delta")
        write = write_delta(sweep, n, args.batch, args.maintain_every, args.seed)
        print(f"[{backend}] delta: {write['rows_per_s']:,} rows/s, {write['bytes_per_row_live']:.0f} B/row live; "
              f"reading {n:,} rows ({args.repeats}× each query, fresh processes)", flush=True)
        reads = read_all("delta", where.uri, args.repeats, n)
        reads.update(read_cli(storage("sweeps").uri, f"delta-{n}", args.repeats, reads))
        delta_answers[n] = reads
        result["runs"].append({"backend": backend, "layout": "delta", "rows": n, "uri": where.uri, "write": write,
                               "reads": reads})  # fmt: skip
        save()
    for n in per_file_sizes:
        print(f"[{backend}] per-file: writing {n:,} files ({args.per_file_writer})", flush=True)
        where = storage(f"perfile-{n}")
        write = write_per_file(where, final_rows(n, args.batch, args.seed), args.per_file_writer)
        print(f"[{backend}] per-file: {write['ms_per_file']:.2f} ms/file; reading", flush=True)
        reads = read_all("per-file", where.uri, args.repeats, n)
        agree = None
        if n in delta_answers:
            d = delta_answers[n]
            agree = all(d[q]["answer"] == reads[q]["answer"] for q in ("top5", "status"))
        result["runs"].append({"backend": backend, "layout": "per-file", "rows": n, "uri": where.uri, "write": write,
                               "reads": reads, "agree": agree})  # fmt: skip
        for r in result["runs"]:
            if r["backend"] == backend and r["layout"] == "delta" and r["rows"] == n:
                r["agree"] = agree
        save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="trials per table, comma-separated")
    parser.add_argument("--batch", type=int, default=1000, help="rows per commit")
    parser.add_argument("--maintain-every", type=int, default=100, help="DeltaRows.maintain() every N commits")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs of each read (median)")
    parser.add_argument("--per-file-max", type=int, default=10_000, help="most rows of the per-file layout, local")
    parser.add_argument("--per-file-writer", choices=["direct", "store"], default="direct")
    parser.add_argument("--s3", action="store_true", help="also on a moto S3 server on 127.0.0.1")
    parser.add_argument("--s3-max", type=int, default=100_000, help="largest Delta size on moto")
    parser.add_argument("--s3-per-file-max", type=int, default=2000, help="most rows of the per-file layout on moto")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--dir", type=Path, help="work in a new subdirectory of DIR (kept) instead of a temp dir")
    parser.add_argument("--json", type=Path, help="write the figures here (after every step)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, one repeat: a smoke check")
    args = parser.parse_args()
    if args.dry_run:
        args.sizes, args.batch, args.maintain_every, args.repeats = "100,500", 100, 3, 1
        args.per_file_max = args.s3_per_file_max = 100
        args.s3_max = 500
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not sizes or min(sizes) < 1 or args.batch < 2 or args.repeats < 1 or args.maintain_every < 1:
        parser.error("sizes, --repeats and --maintain-every must be positive, --batch at least 2")

    result: dict[str, Any] = {"benchmark": "bench_store", "machine": machine(), "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "runs": [], "targets": []}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")

    m = result["machine"]
    print(f"machine: {m['host']} · {m['cpu']} · {m['cpus']} CPUs ({m['cpus_usable']} usable) · load average "
          f"{', '.join(map(str, m['load_average']))} · nice {m['nice']}")
    print(f"versions: Python {m['python']} · pyarrow {m['pyarrow']} · deltalake {m['deltalake']} · "
          f"numpy {m['numpy']}"
          + (f" · moto {m['moto']}" if args.s3 else ""))

    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="bench_store-", dir=args.dir))
    else:
        work = Path(tempfile.mkdtemp(prefix="bench_store-"))
    print(f"directory: {work}{' (kept)' if args.dir else ' (removed at the end)'}", flush=True)
    moto: Moto | None = None
    saved_env = dict(os.environ)
    try:
        local_pf = sorted({min(n, args.per_file_max) for n in sizes} - {0})  # 0: no per-file layout
        run_backend("local", work / "local", sizes, local_pf, args, result, save)
        if args.s3:
            s3_sizes = [n for n in sizes if n <= args.s3_max] or [args.s3_max]
            s3_pf = sorted({min(n, args.s3_per_file_max) for n in s3_sizes} - {0})
            moto = Moto(work)
            for name in FOREIGN_ENV:
                os.environ.pop(name, None)
            os.environ.update(moto.env)
            moto.wait()
            print(f"[moto] {moto.endpoint}, bucket {BUCKET}", flush=True)
            run_backend("moto", f"s3://{BUCKET}/bench", s3_sizes, s3_pf, args, result, save)
    finally:
        if moto is not None:
            moto.stop()
        os.environ.clear()
        os.environ.update(saved_env)
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    result["targets"] = targets(result["runs"])
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    save()
    print_tables(result)
    if args.json:
        print(f"\nfigures: {args.json}")


if __name__ == "__main__":
    main()
