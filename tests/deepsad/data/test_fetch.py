"""Downloads with checksum checks, served from a local HTTP server on 127.0.0.1, and `check`."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tarfile
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from deepsad.data import fetch as fetch_mod
from deepsad.data.archive import extract_tar_safely
from deepsad.data.fetch import REMOTE, RemoteFile, check, fetch
from deepsad.data.sources import load_dataset
from deepsad.errors import ConfigError, DataError, IntegrityError

Serve = Callable[[Path], tuple[str, list[str]]]


class _Handler(SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start a static HTTP server for a directory; returns its base URL and the paths requested."""
    servers: list[ThreadingHTTPServer] = []

    def start(directory: Path) -> tuple[str, list[str]]:
        requests: list[str] = []
        handler = type("Handler", (_Handler,), {"requests": requests})
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(directory)))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.startswith(".") or p.suffix == ".part"]


def test_fetch_mnist_and_arrhythmia_then_load(tmp_path: Path, shared_data: Path, serve: Serve) -> None:
    url, requests = serve(shared_data)
    to = tmp_path / "data"
    paths = fetch("mnist", to, mirror=url + "/")
    assert sorted(p.name for p in paths) == sorted(f.filename for f in REMOTE["mnist"])
    assert all(p.parent == to / "mnist" for p in paths)
    assert sorted(requests) == sorted(f"/mnist/{f.filename}" for f in REMOTE["mnist"])
    assert fetch("arrhythmia", to, mirror=url) == [to / "uci" / "arrhythmia.data"]
    assert requests[-1] == "/uci/arrhythmia.data"
    ds = load_dataset("mnist", to)
    assert ds.x_train.shape == (60000, 1, 28, 28)
    assert load_dataset("arrhythmia", to).x_train.shape == (452, 274)
    assert not leftovers(to)

    n = len(requests)
    assert fetch("mnist", to, mirror=url) == paths  # verified files are kept, nothing downloaded
    assert fetch("arrhythmia", to, mirror=url) == [to / "uci" / "arrhythmia.data"]
    assert len(requests) == n


def test_mirror_from_environment_and_file_urls(tmp_path: Path, shared_data: Path, serve: Serve,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    url, requests = serve(shared_data)
    monkeypatch.setenv("DEEPSAD_DATA_MIRROR", url)
    fetch("arrhythmia", tmp_path / "a")
    assert requests == ["/uci/arrhythmia.data"]
    monkeypatch.delenv("DEEPSAD_DATA_MIRROR")
    assert fetch("arrhythmia", tmp_path / "b", mirror=shared_data.as_uri()) == [
        tmp_path / "b/uci/arrhythmia.data"
    ]


def test_tampered_file_is_rejected_and_nothing_is_left(
    tmp_path: Path, shared_data: Path, serve: Serve
) -> None:
    served = tmp_path / "served"
    (served / "uci").mkdir(parents=True)
    data = (shared_data / "uci" / "arrhythmia.data").read_bytes().replace(b"75,0,190", b"76,0,190", 1)
    (served / "uci" / "arrhythmia.data").write_bytes(data)
    url, _ = serve(served)
    to = tmp_path / "data"
    with pytest.raises(IntegrityError) as e:
        fetch("arrhythmia", to, mirror=url)
    msg = str(e.value)
    assert "arrhythmia.data" in msg and REMOTE["arrhythmia"][0].digest in msg
    assert hashlib.sha256(data).hexdigest() in msg and "nothing was saved" in msg
    assert list((to / "uci").iterdir()) == []


def only_labels(monkeypatch: pytest.MonkeyPatch) -> RemoteFile:
    """Keep just MNIST's small test-label file, so a test need not hash 50 MB of images."""
    labels = next(f for f in REMOTE["mnist"] if f.filename == "t10k-labels-idx1-ubyte.gz")
    monkeypatch.setitem(REMOTE, "mnist", (labels,))
    return labels


def test_mnist_checks_the_decompressed_content(tmp_path: Path, shared_data: Path, serve: Serve,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    only_labels(monkeypatch)
    served = tmp_path / "served"
    (served / "mnist").mkdir(parents=True)
    labels = served / "mnist" / "t10k-labels-idx1-ubyte.gz"
    shutil.copy(shared_data / "mnist" / labels.name, labels)
    # Recompressed with other settings: different .gz bytes, same content -> accepted.
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes()), compresslevel=1, mtime=123))
    url, _ = serve(served)
    to = tmp_path / "data"
    fetch("mnist", to, mirror=url)
    # Changed content -> refused, naming the digest of the decompressed data.
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[-1] ^= 1
    labels.write_bytes(gzip.compress(bytes(content)))
    (to / "mnist" / labels.name).unlink()
    with pytest.raises(
        IntegrityError,
        match=rf"{labels.name} .*\(of the decompressed content\), got {hashlib.md5(content).hexdigest()}",
    ):
        fetch("mnist", to, mirror=url)
    labels.write_bytes(b"not gzip")
    with pytest.raises(IntegrityError, match=r"not a valid gzip file"):
        fetch("mnist", to, mirror=url)
    assert not (to / "mnist" / labels.name).exists() and not leftovers(to)


def test_corrupt_existing_file_is_replaced_and_raw_files_count(tmp_path: Path, shared_data: Path, serve: Serve,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    only_labels(monkeypatch)
    url, requests = serve(shared_data)
    to = tmp_path / "data"
    (to / "uci").mkdir(parents=True)
    (to / "uci" / "arrhythmia.data").write_text("garbage")
    fetch("arrhythmia", to, mirror=url)
    assert (to / "uci" / "arrhythmia.data").read_bytes() == (
        shared_data / "uci" / "arrhythmia.data"
    ).read_bytes()
    (to / "mnist").mkdir()
    for f in REMOTE["mnist"]:
        (to / "mnist" / f.filename.removesuffix(".gz")).write_bytes(
            gzip.decompress((shared_data / "mnist" / f.filename).read_bytes())
        )
    before = len(requests)
    paths = fetch("mnist", to, mirror=url)
    assert len(requests) == before and all(not p.name.endswith(".gz") for p in paths)


def test_download_failure_is_a_data_error(tmp_path: Path, serve: Serve) -> None:
    url, _ = serve(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        DataError,
        match=r"arrhythmia: download of http://127\.0\.0\.1:\d+/uci/arrhythmia\.data failed: HTTP Error 404",
    ):
        fetch("arrhythmia", tmp_path / "data", mirror=url)
    assert not leftovers(tmp_path / "data")


def test_what_cannot_be_fetched(tmp_path: Path) -> None:
    with pytest.raises(
        DataError,
        match=r"thyroid: there is no verifiable canonical download; download thyroid.mat from .* put it in .*/odds/",
    ):
        fetch("thyroid", tmp_path)
    with pytest.raises(DataError, match=r"cardio: .*ctg.csv"):
        fetch("cardio", tmp_path)
    assert fetch("digits", tmp_path) == []
    with pytest.raises(ConfigError, match=r"unknown data set 'mnist2'"):
        fetch("mnist2", tmp_path)
    with pytest.raises(ConfigError, match=r"must be an http"):
        fetch("mnist", tmp_path, mirror="ftp://example.org")


def cifar_archive(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_cifar_archive_is_verified_and_unpacked(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = np.concatenate([np.array([[3]], np.uint8), np.full((1, 3072), 7, np.uint8)], axis=1).tobytes()
    names = [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]
    archive = cifar_archive(
        {f"cifar-10-batches-bin/{n}": batch for n in names} | {"cifar-10-batches-bin/readme.html": b"hi"}
    )
    served = tmp_path / "served"
    served.mkdir()
    (served / "cifar-10-binary.tar.gz").write_bytes(archive)
    real = REMOTE["cifar10"][0]
    fake = RemoteFile(real.filename, real.url, "", "md5", hashlib.md5(archive).hexdigest(),
                      extract_to=real.extract_to, expect=tuple((n, len(batch)) for n in names))  # fmt: skip
    monkeypatch.setitem(REMOTE, "cifar10", (fake,))
    url, requests = serve(served)
    to = tmp_path / "data"
    paths = fetch("cifar10", to, mirror=url)
    assert requests == ["/cifar-10-binary.tar.gz"]
    assert [p.name for p in paths] == names and sorted(p.name for p in to.iterdir()) == [
        "cifar-10-batches-bin"
    ]
    ds = load_dataset("cifar10", to)
    assert ds.x_train.shape == (5, 3, 32, 32) and ds.y_train.tolist() == [3] * 5
    assert fetch("cifar10", to, mirror=url) == paths and len(requests) == 1
    # The real entry checks the published archive digest.
    assert real.digest == "c32a1d4ab5d03f1284b67883e8d87530"
    monkeypatch.setitem(REMOTE, "cifar10", (real,))
    shutil.rmtree(to)
    with pytest.raises(IntegrityError, match=r"c32a1d4ab5d03f1284b67883e8d87530"):
        fetch("cifar10", to, mirror=url)
    assert list(to.iterdir()) == []


def _tar_with(build: Callable[[tarfile.TarFile], None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        good = tarfile.TarInfo("ok/file.txt")
        good.size = 2
        tf.addfile(good, io.BytesIO(b"ok"))
        build(tf)
    return buf.getvalue()


def _file(name: str) -> Callable[[tarfile.TarFile], None]:
    def build(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = 4
        tf.addfile(info, io.BytesIO(b"evil"))

    return build


def _link(kind: bytes, target: str) -> Callable[[tarfile.TarFile], None]:
    def build(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("ok/link")
        info.type = kind
        info.linkname = target
        tf.addfile(info)

    return build


@pytest.mark.parametrize(
    ("build", "why"),
    [
        (_file("../escape.txt"), "leaves the target"),
        (_file("ok/../../escape.txt"), "leaves the target"),
        (_file("/tmp/absolute-escape.txt"), "leaves the target"),
        (_link(tarfile.SYMTYPE, "/etc/passwd"), "not a regular file"),
        (_link(tarfile.LNKTYPE, "ok/file.txt"), "not a regular file"),
        (_link(tarfile.FIFOTYPE, ""), "not a regular file"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "fifo"],
)
def test_unsafe_archive_members_are_refused(
    tmp_path: Path, build: Callable[[tarfile.TarFile], None], why: str
) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_with(build))
    to = tmp_path / "to"
    to.mkdir()
    with pytest.raises(DataError, match=f"x.tar.gz: refusing archive member .*{why}"):
        extract_tar_safely(archive, to, label="x.tar.gz")
    assert list(to.iterdir()) == []  # checked before anything was written
    assert not (tmp_path / "escape.txt").exists()


def test_symlinked_target_inside_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    to = tmp_path / "to"
    to.mkdir()
    (to / "ok").symlink_to(outside)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_with(lambda tf: None))
    with pytest.raises(DataError, match=r"resolves outside"):
        extract_tar_safely(archive, to, label="a")
    assert list(outside.iterdir()) == []


def test_check_reports_what_is_there(shared_data: Path, tmp_path: Path) -> None:
    statuses = {s.name: s for s in check(shared_data)}
    assert {n for n, s in statuses.items() if s.present} == {
        "mnist",
        "fmnist",
        "arrhythmia",
        "cardio",
        "digits",
        "breast_cancer",
    }
    assert (
        statuses["mnist"].layout == "IDX"
        and statuses["mnist"].found[0] == shared_data / "mnist" / "train-images-idx3-ubyte.gz"
    )
    assert statuses["cardio"].layout == "UCI raw"
    cifar = statuses["cifar10"]
    assert (
        not cifar.present
        and len(cifar.missing) == 2
        and cifar.hint == f"run `deepsad data fetch cifar10 --to {shared_data}`"
    )
    assert "odds.cs.stonybrook.edu" in statuses["shuttle"].hint
    assert all(not s.present for s in check(tmp_path) if s.name not in ("digits", "breast_cancer"))
    with pytest.raises(DataError, match=r"data directory .*nothing does not exist"):
        check(tmp_path / "nothing")


def test_remote_table_matches_the_registry() -> None:
    from deepsad.data.sources import DATASETS

    assert set(REMOTE) == {n for n, i in DATASETS.items() if i.fetchable}
    assert fetch_mod.MNIST_BASE == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert (
        REMOTE["arrhythmia"][0].digest == "a7f0f4ca289a4c58b5ed85a9adb793189acd38425828ce3dfbb70adb45f30169"
    )
