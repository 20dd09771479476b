"""Storage: URIs, safe keys, atomic writes, bundle-safe directory copies, writability probe."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import IO

import pyarrow.fs as pafs
import pytest

from deepsad.errors import StorageError
from orchestration.store.storage import Storage, safe_key
from tests.real import unavailable


def test_local_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Storage.from_uri("sweeps/../runs")
    assert s.uri == s.root == str(tmp_path / "runs")
    assert isinstance(s.filesystem, pafs.LocalFileSystem)
    assert Storage.from_uri(tmp_path / "x").uri == str(tmp_path / "x")
    assert Storage.from_uri(f"file://{tmp_path}/y").root == str(tmp_path / "y")
    assert Storage.from_uri("runs:1").root == str(tmp_path / "runs:1")  # a colon is not a scheme


def test_unknown_schemes_are_refused_without_echoing_credentials() -> None:
    # s3:// itself is covered by tests/orchestration/store/test_s3.py and test_storage_contract.py
    for uri in ("gs://AKIAXXX:topsecret@bucket/p", "gs://bucket/p?secret_key=topsecret"):
        with pytest.raises(StorageError, match="unsupported scheme 'gs'") as info:
            Storage.from_uri(uri)
        assert "topsecret" not in str(info.value) and "AKIAXXX" not in str(info.value)


def test_child_and_path(tmp_path: Path) -> None:
    s = Storage.from_uri(tmp_path)
    c = s.child("sweep", "results/trials")
    assert c.uri == f"{tmp_path}/sweep/results/trials" and c.root == c.uri
    assert s.path("a", "b//c.txt") == f"{tmp_path}/a/b/c.txt"
    assert s.path() == str(tmp_path) and s.child() == s


@pytest.mark.parametrize(
    "key",
    ["..", "a/../b", "/etc/passwd", "a\x00b", "a\\b", "%2e%2e", "a/%2E%2E/b", "%252e%252e", "x%2fy", "", "."],
)
def test_unsafe_keys_are_refused(tmp_path: Path, key: str) -> None:
    s = Storage.from_uri(tmp_path)
    with pytest.raises(StorageError, match="invalid storage key"):
        s.write_bytes(b"x", key)
    with pytest.raises(StorageError):
        safe_key(key)


def test_safe_key_normalises_separators() -> None:
    assert safe_key("a//b/c/") == "a/b/c"
    assert safe_key("a.b/..c/%41") == "a.b/..c/%41"  # dots inside names and harmless escapes are fine


def test_read_write_exists_list_delete(tmp_path: Path) -> None:
    s = Storage.from_uri(tmp_path / "root")
    assert not s.exists("a", "b.bin") and s.list() == [] and s.list("nope") == []
    s.write_bytes(b"one", "a", "b.bin")
    s.write_bytes(b"two", "a", "b.bin")  # replaces
    s.write_bytes(b"", "a", "sub", "c.bin")
    assert s.read_bytes("a/b.bin") == b"two" and s.read_bytes("a", "sub", "c.bin") == b""
    assert s.exists("a") and s.exists("a", "b.bin")
    assert s.list() == ["a"] and s.list("a") == ["b.bin", "sub"]
    assert not any(".tmp-" in p.name for p in (tmp_path / "root").rglob("*"))  # no temp leftovers
    s.delete("a", "b.bin")
    assert s.list("a") == ["sub"]
    s.delete("a")  # recursive
    s.delete("a")  # missing is fine
    assert not s.exists("a")


def test_read_missing_names_the_uri(tmp_path: Path) -> None:
    s = Storage.from_uri(tmp_path)
    with pytest.raises(StorageError, match=rf"storage {tmp_path}/x/y\.bin: cannot read \(not found\)"):
        s.read_bytes("x", "y.bin")


def test_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    s = Storage.from_uri(tmp_path)
    s.write_bytes(b"x", "dir", "f")
    (tmp_path / "dir" / "target").mkdir()  # cannot replace a directory with a file
    (tmp_path / "dir" / "target" / "keep").write_bytes(b"k")
    with pytest.raises(StorageError, match=rf"storage {tmp_path}/dir/target: cannot write"):
        s.write_bytes(b"new", "dir", "target")
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["f", "target"]


def test_temp_files_are_hidden_from_list(tmp_path: Path) -> None:
    s = Storage.from_uri(tmp_path)
    s.write_bytes(b"x", "d", "a.parquet")
    (tmp_path / "d" / ".a.parquet.tmp-0123456789abcdef").write_bytes(b"partial")
    assert s.list("d") == ["a.parquet"]


def test_readers_see_old_or_new_never_partial(tmp_path: Path) -> None:
    s = Storage.from_uri(tmp_path)
    a, b = b"a" * 300_000, b"b" * 200_000
    s.write_bytes(a, "f")
    stop = threading.Event()

    def writer() -> None:
        for i in range(60):
            s.write_bytes(b if i % 2 else a, "f")
        stop.set()

    t = threading.Thread(target=writer)
    t.start()
    seen = set()
    while not stop.is_set():
        data = s.read_bytes("f")
        assert data in (a, b)
        seen.add(len(data))
    t.join()
    assert seen


def _bundle(path: Path) -> Path:
    (path / "nested").mkdir(parents=True)
    (path / "tensors.safetensors").write_bytes(b"T" * 1000)
    (path / "meta.json").write_text('{"top": true}')
    (path / "nested" / "meta.json").write_text('{"nested": true}')
    (path / "nested" / "z.bin").write_bytes(b"z")
    return path


def test_upload_writes_meta_json_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Storage.from_uri(tmp_path / "remote")
    order: list[str] = []
    real_put = Storage._put

    def spy(self: Storage, key: str, src: IO[bytes]) -> None:
        order.append(key)
        real_put(self, key, src)

    monkeypatch.setattr(Storage, "_put", spy)
    s.upload_dir(_bundle(tmp_path / "local"), "ckpt", "t1")
    assert order[-1] == "ckpt/t1/MANIFEST.json"  # the visibility marker comes after everything
    assert order[-2] == "ckpt/t1/meta.json"
    assert order[-3] == "ckpt/t1/nested/meta.json"
    assert set(order[:2]) == {"ckpt/t1/tensors.safetensors", "ckpt/t1/nested/z.bin"}
    assert s.read_bytes("ckpt/t1/nested/z.bin") == b"z"


def test_reupload_hides_the_old_meta_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Storage.from_uri(tmp_path / "remote")
    s.upload_dir(_bundle(tmp_path / "local"), "b")
    seen_meta_during_data_writes: list[bool] = []
    real_put = Storage._put

    def spy(self: Storage, key: str, src: IO[bytes]) -> None:
        if not key.endswith(("meta.json", "MANIFEST.json")):
            seen_meta_during_data_writes.append(self.exists("b", "meta.json"))
        real_put(self, key, src)

    monkeypatch.setattr(Storage, "_put", spy)
    s.upload_dir(tmp_path / "local", "b")
    assert seen_meta_during_data_writes == [False, False]
    assert s.exists("b", "meta.json")


def test_upload_refuses_symlinks_and_non_dirs(tmp_path: Path) -> None:
    s = Storage.from_uri(tmp_path / "remote")
    local = _bundle(tmp_path / "local")
    (local / "link").symlink_to("/etc/hostname")
    with pytest.raises(StorageError, match="refusing to upload a symlink"):
        s.upload_dir(local, "b")
    with pytest.raises(StorageError, match="not a directory"):
        s.upload_dir(tmp_path / "missing", "b")


def test_download_round_trip(tmp_path: Path) -> None:
    s = Storage.from_uri(tmp_path / "remote")
    s.upload_dir(_bundle(tmp_path / "local"), "b")
    (tmp_path / "remote" / "b" / ".x.tmp-abc").write_bytes(b"in flight")
    out = s.download_dir(tmp_path / "copy", "b")
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert got == ["meta.json", "nested/meta.json", "nested/z.bin", "tensors.safetensors"]
    assert (out / "tensors.safetensors").read_bytes() == b"T" * 1000
    with pytest.raises(StorageError, match=rf"storage {tmp_path}/remote/nope: no such directory"):
        s.download_dir(tmp_path / "copy2", "nope")


@pytest.mark.parametrize(
    "evil", ["../escaped", "a/../../escaped", "/abs/escaped", "a\x00b", "%2e%2e/escaped", "a/%252E%252E/x"]
)
def test_download_rejects_keys_that_leave_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, evil: str
) -> None:
    # Local listings cannot produce such keys, S3 listings can: inject them into the listing.
    s = Storage.from_uri(tmp_path / "remote")
    s.write_bytes(b"ok", "b", "good")
    monkeypatch.setattr(Storage, "_walk_files", lambda self, key: ["good", evil])
    with pytest.raises(StorageError, match="invalid storage key under"):
        s.download_dir(tmp_path / "out" / "dl", "b")
    assert not (tmp_path / "out").exists()  # refused before anything was written
    assert not (tmp_path / "escaped").exists()


def test_check_writable(tmp_path: Path) -> None:
    s = Storage.from_uri(tmp_path / "new" / "root")
    s.check_writable()
    assert (tmp_path / "new" / "root").is_dir() and s.list() == []
    (tmp_path / "file").write_bytes(b"")
    bad = Storage.from_uri(tmp_path / "file" / "root")
    with pytest.raises(StorageError, match=rf"^storage {tmp_path}/file/root: not writable \(.+\)$"):
        bad.check_writable()


def test_check_writable_read_only_dir(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(StorageError, match="not writable"):
                Storage.from_uri(ro).check_writable()
        finally:
            ro.chmod(0o700)
        return
    # Root ignores file permissions (CI runs as root), but not a read-only mount: mount a small tmpfs
    # read-only over a directory of this test and check against it.
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k,mode=0755", "deepsad-ro", str(ro)],
        capture_output=True, text=True, timeout=60,
    )
    if mounted.returncode != 0:
        unavailable(f"root cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
    try:
        with pytest.raises(StorageError, match=r"not writable \(Read-only file system\)"):
            Storage.from_uri(ro).check_writable()
        with pytest.raises(StorageError, match="not writable"):
            Storage.from_uri(ro / "sub" / "root").check_writable()
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True, timeout=60, check=True)
