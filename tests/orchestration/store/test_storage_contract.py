"""The storage contract, proven on every backend: a local directory, moto's S3 and SeaweedFS.

The same assertions run on each (the ``any_storage`` fixture of ``tests/s3_servers.py``): atomic
replace, listing, key safety, manifest-guarded directory copies that verify sha256 on the way back,
and the Parquet result store and AE cache on top. Tampering goes through the storage API itself
(``write_bytes``/``delete``), which reaches the bytes the same way on every backend.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import IO

import pyarrow as pa
import pytest
import torch

from deepsad.errors import IntegrityError, StorageError
from orchestration.store.cache import AECache, ae_cache_key
from orchestration.store.legacy import LegacyTables, write_row_file
from orchestration.store.results import TRIAL_SCHEMA, ResultStore
from orchestration.store.schema import epoch_rows, trial_rows
from orchestration.store.storage import MANIFEST_FILE, IncompleteUploadError, Storage


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bundle(path: Path) -> dict[str, bytes]:
    """A checkpoint-like directory; returns {relative path: bytes}."""
    files = {
        "tensors.safetensors": os.urandom(300_000),
        "meta.json": b'{"top": true}',
        "nested/meta.json": b'{"nested": true}',
        "nested/z.bin": b"z",
        "empty.bin": b"",
    }
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return files


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------- files


def test_uri_round_trips_and_hides_the_filesystem(any_storage: Storage) -> None:
    again = Storage.from_uri(any_storage.uri)
    assert again == any_storage and again.root == any_storage.root
    assert str(any_storage) == any_storage.uri and "filesystem" not in repr(any_storage)
    child = any_storage.child("sweep", "results/trials")
    assert child.uri == f"{any_storage.uri}/sweep/results/trials"
    assert Storage.from_uri(child.uri) == child


def test_write_read_replace_list_delete_with_sha256(any_storage: Storage) -> None:
    s = any_storage
    s.check_writable()
    assert not s.exists("a", "b.bin") and s.list() == [] and s.list("nope") == []
    big = os.urandom(3 * (1 << 20) + 7)  # more than one read/write chunk
    s.write_bytes(b"one", "a", "b.bin")
    s.write_bytes(big, "a", "b.bin")  # replaces
    s.write_bytes(b"", "a", "sub", "c.bin")
    assert sha(s.read_bytes("a/b.bin")) == sha(big)
    assert s.read_bytes("a", "sub", "c.bin") == b""
    assert s.exists("a") and s.exists("a", "b.bin") and s.exists("a", "sub")
    assert s.list() == ["a"] and s.list("a") == ["b.bin", "sub"]
    s.delete("a", "b.bin")
    assert s.list("a") == ["sub"]
    s.delete("a")  # recursive
    s.delete("a")  # missing is fine
    assert not s.exists("a") and not s.exists("a", "sub", "c.bin")


def test_read_missing_names_the_uri(any_storage: Storage) -> None:
    with pytest.raises(
        StorageError, match=rf"^storage {any_storage.uri}/x/y\.bin: cannot read \(not found\)$"
    ):
        any_storage.read_bytes("x", "y.bin")


@pytest.mark.parametrize("key", ["..", "a/../b", "/etc/passwd", "a\\b", "%2e%2e", "a/%252E%252E/b"])
def test_unsafe_keys_are_refused_before_any_io(any_storage: Storage, key: str) -> None:
    with pytest.raises(StorageError, match="invalid storage key"):
        any_storage.write_bytes(b"x", key)
    with pytest.raises(StorageError, match="invalid storage key"):
        any_storage.read_bytes(key)


# --------------------------------------------------------------------------------------- directories


def test_upload_download_round_trip_verifies_sha256(any_storage: Storage, tmp_path: Path) -> None:
    files = _bundle(tmp_path / "local")
    any_storage.upload_dir(tmp_path / "local", "ckpt", "t1")
    assert any_storage.is_complete("ckpt", "t1")
    manifest = json.loads(any_storage.read_bytes("ckpt", "t1", MANIFEST_FILE))
    assert manifest["version"] == 1 and manifest["created_at"].endswith("+00:00")
    assert {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]} == {
        rel: (len(data), sha(data)) for rel, data in files.items()
    }
    out = any_storage.download_dir(tmp_path / "copy", "ckpt", "t1")
    assert _tree(out) == files  # byte for byte, and without the manifest itself


def test_manifest_is_written_last_after_meta_json(
    any_storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    real_put = Storage._put

    def spy(self: Storage, key: str, src: IO[bytes]) -> None:
        order.append(key)
        real_put(self, key, src)

    monkeypatch.setattr(Storage, "_put", spy)
    _bundle(tmp_path / "local")
    any_storage.upload_dir(tmp_path / "local", "b")
    assert order[-1] == f"b/{MANIFEST_FILE}"
    assert order[-3:-1] == ["b/nested/meta.json", "b/meta.json"]


def test_reupload_hides_the_old_manifest_first(
    any_storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _bundle(tmp_path / "local")
    any_storage.upload_dir(tmp_path / "local", "b")
    complete_while_writing: list[bool] = []
    real_put = Storage._put

    def spy(self: Storage, key: str, src: IO[bytes]) -> None:
        if not key.endswith(MANIFEST_FILE):
            complete_while_writing.append(self.is_complete("b") or self.exists("b", "meta.json"))
        real_put(self, key, src)

    monkeypatch.setattr(Storage, "_put", spy)
    (tmp_path / "local" / "nested" / "z.bin").write_bytes(b"new")
    any_storage.upload_dir(tmp_path / "local", "b")
    assert complete_while_writing and not any(complete_while_writing)
    assert any_storage.download_dir(tmp_path / "copy", "b").joinpath("nested", "z.bin").read_bytes() == b"new"


def test_torn_upload_is_never_used(any_storage: Storage, tmp_path: Path) -> None:
    # An upload that died after its data (and meta.json) but before the manifest.
    for rel, data in _bundle(tmp_path / "local").items():
        any_storage.write_bytes(data, "b", rel)
    assert not any_storage.is_complete("b")
    with pytest.raises(IncompleteUploadError, match=rf"^storage {any_storage.uri}/b: incomplete upload"):
        any_storage.download_dir(tmp_path / "copy", "b")
    with pytest.raises(StorageError, match="no such directory"):
        any_storage.download_dir(tmp_path / "copy", "nope")


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("flip", r"tensors\.safetensors: sha256 mismatch: expected [0-9a-f]{64} \(MANIFEST\.json\), actual"),
        (
            "truncate",
            r"tensors\.safetensors: size mismatch: expected 300000 bytes \(MANIFEST\.json\), actual 299990",
        ),
        ("delete", r"tensors\.safetensors: missing \(listed in .*/b/MANIFEST\.json\)"),
    ],
)
def test_altered_or_missing_object_fails_naming_its_key(
    any_storage: Storage, tmp_path: Path, tamper: str, message: str
) -> None:
    files = _bundle(tmp_path / "local")
    any_storage.upload_dir(tmp_path / "local", "b")
    data = bytearray(files["tensors.safetensors"])
    if tamper == "flip":
        data[-1] ^= 0xFF
        any_storage.write_bytes(bytes(data), "b", "tensors.safetensors")
    elif tamper == "truncate":
        any_storage.write_bytes(bytes(data[:-10]), "b", "tensors.safetensors")
    else:
        any_storage.delete("b", "tensors.safetensors")
    with pytest.raises(IntegrityError, match=rf"^{any_storage.uri}/b/{message}"):
        any_storage.download_dir(tmp_path / "copy", "b")
    assert not (tmp_path / "copy" / "tensors.safetensors").exists()  # a bad file never lands


@pytest.mark.parametrize("evil", ["../escaped", "a/../../escaped", "/abs/escaped", "%2e%2e/escaped"])
def test_forged_manifest_cannot_write_outside_the_target(
    any_storage: Storage, tmp_path: Path, evil: str
) -> None:
    any_storage.write_bytes(b"ok", "b", "good")
    forged = {"version": 1, "files": [{"path": evil, "size": 2, "sha256": sha(b"ok")}], "created_at": "x"}
    any_storage.write_bytes(json.dumps(forged).encode(), "b", MANIFEST_FILE)
    with pytest.raises(StorageError, match="invalid storage key in"):
        any_storage.download_dir(tmp_path / "out" / "dl", "b")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped").exists()


def test_malformed_manifest_is_an_integrity_error(any_storage: Storage, tmp_path: Path) -> None:
    any_storage.write_bytes(b"x", "b", "f")
    any_storage.write_bytes(b"{not json", "b", MANIFEST_FILE)
    with pytest.raises(IntegrityError, match=rf"^{any_storage.uri}/b/MANIFEST\.json: not a valid manifest"):
        any_storage.download_dir(tmp_path / "copy", "b")


def test_delete_removes_the_manifest_with_the_directory(any_storage: Storage, tmp_path: Path) -> None:
    _bundle(tmp_path / "local")
    any_storage.upload_dir(tmp_path / "local", "b")
    any_storage.delete("b")
    assert not any_storage.is_complete("b") and not any_storage.exists("b", "meta.json")


# --------------------------------------------------------------------------------------- stores on top


def test_result_store_replaces_rows_and_reads_tables(any_storage: Storage) -> None:
    store = ResultStore(any_storage.child("sweep"))
    assert store.trials().num_rows == 0 and store.row("k1") is None
    store.write_trial({"trial_key": "k1", "status": "running", "seed": 0})
    store.write_trial({"trial_key": "k1", "status": "finished", "seed": 0, "val_auroc": 0.9})  # replaces
    store.write_trial({"trial_key": "k2", "status": "failed", "error": "boom"})
    store.write_epochs(
        "k1", [{"phase": "ae", "epoch": 1, "loss": 1.0}, {"phase": "sad", "epoch": 1, "loss": 0.5}]
    )
    trials = store.trials()
    assert trials.column("trial_key").to_pylist() == ["k1", "k2"]
    assert trials.column("status").to_pylist() == ["finished", "failed"]
    assert store.finished_keys() == {"k1"}
    row = store.row("k1")
    assert row is not None and row["val_auroc"] == 0.9
    assert store.epochs().column("phase").to_pylist() == ["ae", "sad"]
    assert store.summary()["by_status"]["finished"] == 1


def test_a_row_replaced_while_a_reader_lists_the_table_is_read_again(
    any_storage: Storage, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A running sweep rewrites a trial's row while `sweep status` reads the table: the reader's listing
    (which records object sizes, trusted by S3 reads) goes stale. Seen in CI on moto as "Parquet magic
    bytes not found"; the store reads the file again, whole, instead of failing — and it is not corrupt."""
    sweep = any_storage.child("sweep")
    legacy = LegacyTables(sweep)  # the file-per-trial layout (earlier versions); ResultStore reads it with this
    _legacy_row(sweep, {"trial_key": "k1", "status": "running"})
    stale = legacy._dataset(legacy.trials, TRIAL_SCHEMA)
    _legacy_row(sweep, {"trial_key": "k1", "status": "failed", "error": "x" * 5000})  # a bigger object
    if any_storage.uri.startswith("s3://"):
        with pytest.raises(pa.ArrowException):
            assert stale is not None
            stale.to_table()  # the race itself, as a reader without retries meets it
    calls: list[int] = []

    def always_stale(where: Storage, schema: pa.Schema) -> object:
        calls.append(1)
        return stale

    monkeypatch.setattr(legacy, "_dataset", always_stale)
    read = legacy.read_trials()
    assert read.table.column("status").to_pylist() == ["failed"] and read.corrupt == ()
    assert calls == [1] and capsys.readouterr().err == ""


def _damage(sweep: Storage, key: str, how: str) -> None:
    good = sweep.read_bytes("results", "trials", f"{key}.parquet")
    data = {"empty": b"", "garbage": b"not parquet at all", "truncated": good[: len(good) // 2],
            "tail": good[:-9] + b"XXXXXXXXX"}[how]
    sweep.write_bytes(data, "results", "trials", f"{key}.parquet")


@pytest.mark.parametrize("how", ["empty", "garbage", "truncated", "tail"])
def test_a_corrupt_row_file_is_skipped_named_and_counted_and_left_in_place(
    any_storage: Storage, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    """One bad file must not block every reader (status, results show, pull, report, resume): its trial
    counts as corrupt, the others read as usual, one warning line names the file, nothing is deleted,
    and the trial's next row replaces it."""
    sweep = any_storage.child("sweep")
    store = ResultStore(sweep)  # of a sweep in the file-per-trial layout (earlier versions)
    _legacy_row(sweep, {"trial_key": "k1", "status": "finished", "val_auroc": 0.9})
    _legacy_row(sweep, {"trial_key": "k2", "status": "finished", "val_auroc": 0.8})
    _legacy_row(sweep, {"trial_key": "k3", "status": "failed", "error": "boom"})
    _damage(sweep, "k2", how)
    capsys.readouterr()

    read = store.read_trials()
    assert read.table.column("trial_key").to_pylist() == ["k1", "k3"]
    assert [(b.key, b.name) for b in read.corrupt] == [("k2", "k2.parquet")] and read.strays == ()
    assert store.corrupt_keys() == {"k2"} and store.finished_keys() == {"k1"}
    assert store.row("k2") is None and store.row("k1") is not None
    summary = store.summary()
    assert summary["trials"] == 3 and summary["by_status"]["corrupt"] == 1
    assert summary["by_status"]["finished"] == 1 and summary["by_status"]["failed"] == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines  # one line per file, however often it is read
    assert lines[0].startswith(f"warning: {sweep.uri}/results/trials/k2.parquet: not a readable trial row (")
    assert "trial k2 counts as corrupt" in lines[0] and "deepsad sweep resume" in lines[0]
    assert sweep.exists("results", "trials", "k2.parquet"), "a corrupt file must not be deleted"

    store.write_trial({"trial_key": "k2", "status": "finished", "val_auroc": 0.7})  # the rerun's row
    # (the first write converts the sweep to the Delta tables: the readable rows, then this one)
    assert "2 trial rows of the file-per-trial layout copied" in capsys.readouterr().err
    again = store.read_trials()
    assert again.corrupt == () and again.table.column("trial_key").to_pylist() == ["k1", "k2", "k3"]


def test_a_corrupt_epoch_history_is_skipped_with_a_warning(
    any_storage: Storage, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = any_storage.child("sweep")
    store = ResultStore(sweep)  # of a sweep in the file-per-trial layout
    _legacy_row(sweep, {"trial_key": "k1", "status": "finished"})
    write_row_file(sweep, epoch_rows("k1", [{"phase": "sad", "epoch": 1, "loss": 1.0}]))
    sweep.write_bytes(b"", "results", "epochs", "k2.parquet")
    assert store.epochs().column("trial_key").to_pylist() == ["k1"]
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: {sweep.uri}/results/epochs/k2.parquet: not a readable epoch history (")


def test_stray_files_in_a_result_table_are_ignored_with_a_warning_and_left_alone(
    any_storage: Storage, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = any_storage.child("sweep")
    store = ResultStore(sweep)  # of a sweep in the file-per-trial layout
    _legacy_row(sweep, {"trial_key": "k1", "status": "finished"})
    sweep.write_bytes(b"my notes", "results", "trials", "notes.txt")
    sweep.write_bytes(sweep.read_bytes("results/trials/k1.parquet"), "results", "trials", "old", "k9.parquet")
    capsys.readouterr()
    read = store.read_trials()
    assert read.table.column("trial_key").to_pylist() == ["k1"] and read.corrupt == ()
    assert sorted(b.name for b in read.strays) == ["notes.txt", "old/k9.parquet"]
    assert store.corrupt_keys() == set() and store.summary()["by_status"].get("corrupt") is None
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all("not a row of this table" in line and "left in place" in line for line in lines)
    assert sweep.exists("results", "trials", "notes.txt") and sweep.exists("results", "trials", "old", "k9.parquet")


def _legacy_row(sweep: Storage, row: dict[str, object]) -> None:
    write_row_file(sweep, trial_rows([row]))


def test_ae_cache_round_trip(any_storage: Storage) -> None:
    cache = AECache(any_storage.child("sweep"))
    key = ae_cache_key("ae-settings", "ab" * 32)
    state = {"encoder.weight": torch.randn(16, 8), "encoder.bias": torch.zeros(16)}
    assert not cache.exists(key) and cache.get(key) is None
    cache.put(key, state, {"ae_seconds": 1.5, "epochs": 2, "trial_key": "t"})
    assert cache.exists(key) and any_storage.is_complete("sweep", "cache", "ae", key)
    got = cache.get(key)
    assert got is not None
    tensors, meta = got
    assert all(torch.equal(tensors[k], state[k]) for k in state) and meta["cache_key"] == key
    assert [e["key"] for e in cache.entries()] == [key]
    cache.delete(key)
    assert cache.get(key) is None and cache.entries() == []
