"""The result store benchmark (issue 16): its synthetic commits look like a sweep's single writer, and
its dry run measures both layouts end to end, gets the same answers from both, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.benchmarks.modules import load

REPO = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    return load("bench_store")


def test_commits_are_new_trials_and_the_previous_commits_running_ones_finished() -> None:
    bench = _bench()
    parts = list(bench.commits(2500, 500, seed=1))
    assert all(p.schema == bench.TRIAL_SCHEMA for p in parts)
    assert sum(p.num_rows for p in parts[:-1]) == 500 * (len(parts) - 1)
    seen: dict[str, str] = {}
    for i, part in enumerate(parts):
        keys, status = part.column("trial_key").to_pylist(), part.column("status").to_pylist()
        assert len(set(keys)) == len(keys) and all(len(k) == 16 for k in keys)
        updated = [(k, s) for k, s in zip(keys, status, strict=True) if k in seen]
        assert all(seen[k] == "running" and s == "finished" for k, s in updated)
        assert (len(updated) > 0) == (i > 0)
        no_outcome = pc.is_in(part.column("status"), pa.array(["running", "failed"]))
        assert pc.all(pc.equal(pc.is_null(part.column("val_auroc")), no_outcome)).as_py()
        seen.update(zip(keys, status, strict=True))
    assert len(seen) == 2500
    final = bench.final_rows(2500, 500, seed=1)
    assert final.num_rows == 2500 and dict(zip(*final.select(["trial_key", "status"]).to_pydict().values(),
                                               strict=True)) == seen  # fmt: skip
    again = bench.final_rows(2500, 500, seed=1)
    assert again.equals(final)  # deterministic: both layouts are written from the same rows


def test_the_dry_run_measures_both_layouts_and_leaves_nothing_behind(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "store.json"
    env = {**os.environ, "TMPDIR": str(scratch)}
    done = subprocess.run([sys.executable, "benchmarks/bench_store.py", "--dry-run", "--json", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "deltalake" in done.stdout.splitlines()[1] and "targets of issue 16" in done.stdout
    result = json.loads(out.read_text())
    runs = {(r["backend"], r["layout"], r["rows"]): r for r in result["runs"]}
    assert set(runs) == {("local", "delta", 100), ("local", "delta", 500), ("local", "per-file", 100)}
    assert runs["local", "delta", 100]["agree"] is runs["local", "per-file", 100]["agree"] is True
    delta = runs["local", "delta", 500]["write"]
    assert sum(delta["counts"].values()) == 500 and delta["updates"] > 0
    assert [m["after_commit"] for m in delta["maintain"]] == [3, delta["commits"]]
    assert 0 < delta["bytes_per_row_live"] <= delta["bytes_per_row_disk"]
    for r in runs.values():
        assert r["reads"]["top5"]["wall_s"] > r["reads"]["top5"]["work_s"] > 0
        assert len(r["reads"]["top5"]["answer"]) == 5
    assert len(result["targets"]) == 5
    assert list(scratch.iterdir()) == []  # the temp directory is gone


@pytest.mark.integration
def test_the_dry_run_on_moto(tmp_path: Path) -> None:
    """``--dry-run --s3``: the same steps on a moto server it starts on 127.0.0.1 and stops."""
    pytest.importorskip("moto.server")
    out = tmp_path / "store.json"
    done = subprocess.run([sys.executable, "benchmarks/bench_store.py", "--dry-run", "--s3", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = {(r["backend"], r["layout"], r["rows"]): r for r in json.loads(out.read_text())["runs"]}
    assert {k for k in runs if k[0] == "moto"} == {("moto", "delta", 100), ("moto", "delta", 500),
                                                   ("moto", "per-file", 100)}  # fmt: skip
    assert runs["moto", "delta", 100]["agree"] is True
    assert runs["moto", "delta", 500]["uri"].startswith("s3://")
