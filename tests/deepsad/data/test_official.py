"""Official files recognised by checksum: another data set's files are refused, damaged copies too,
a user's own files load as unverified. Real MNIST / Fashion-MNIST from ../shared/data; CIFAR-10 on
files written here, with the known-checksum table patched to hold their checksums."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from deepsad.data import official
from deepsad.data.cifar import BIN_TEST, BIN_TRAIN
from deepsad.data.fetch import REMOTE, DatasetStatus, check
from deepsad.data.idx import MNIST_FILES
from deepsad.data.official import OfficialFile, content_digest, identify
from deepsad.data.sources import load_dataset
from deepsad.errors import DataError
from tests.deepsad.data.test_cifar import write_bin
from tests.deepsad.data.test_idx import write_mnist


def link_set(src: Path, dest: Path, names: dict[str, str] | None = None) -> Path:
    """Symlink the four IDX files of ``src`` into ``dest`` (``names`` maps a link name to a source)."""
    dest.mkdir(parents=True, exist_ok=True)
    for stem in MNIST_FILES:
        target = (names or {}).get(stem, stem)
        (dest / f"{stem}.gz").symlink_to(src / f"{target}.gz")
    return dest


def status(root: Path, name: str) -> DatasetStatus:
    return next(s for s in check(root) if s.name == name)


def test_the_table_is_the_one_fetch_verifies_against() -> None:
    for name in ("mnist", "fmnist"):
        assert {rf.filename.removesuffix(".gz"): rf.digest for rf in REMOTE[name]} == official.official_md5s(
            name
        )
    md5s = [f.md5 for f in official.OFFICIAL_FILES]
    assert len(md5s) == len(set(md5s))  # each official file is recognisable


def test_real_files_are_verified(shared_data: Path) -> None:
    for name, sub in (("mnist", "mnist"), ("fmnist", "fashion-mnist")):
        for stem in MNIST_FILES:
            assert identify(name, stem, shared_data / sub / f"{stem}.gz").status == "verified"
    s = status(shared_data, "fmnist")
    assert s.present and s.checksums == "verified" and s.notes == ()


def test_mnist_where_fashion_mnist_belongs_is_refused(shared_data: Path, tmp_path: Path) -> None:
    link_set(shared_data / "mnist", tmp_path / "fashion-mnist")
    s = status(tmp_path, "fmnist")
    assert not s.present
    assert s.missing[0] == (
        f"{tmp_path}/fashion-mnist/train-images-idx3-ubyte.gz is MNIST's train-images-idx3-ubyte "
        "(recognised by its checksum), not Fashion-MNIST's (and 3 more such file(s))"
    )
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"fmnist: {tmp_path}/fashion-mnist/train-images-idx3-ubyte.gz is MNIST's")
    assert msg.endswith(f"run `deepsad data fetch fmnist --to {tmp_path}`") and "\n" not in msg


def test_another_sets_files_are_passed_over_for_the_right_ones(shared_data: Path, tmp_path: Path) -> None:
    # MNIST in the data directory itself, where the fmnist layout looks first; Fashion-MNIST in its folder
    link_set(shared_data / "mnist", tmp_path)
    link_set(shared_data / "fashion-mnist", tmp_path / "fashion-mnist")
    statuses = {s.name: s for s in check(tmp_path)}
    assert statuses["mnist"].present and statuses["mnist"].found[0].parent == tmp_path
    assert statuses["fmnist"].present and statuses["fmnist"].checksums == "verified"
    assert {p.parent for p in statuses["fmnist"].found} == {tmp_path / "fashion-mnist"}
    ds = load_dataset("fmnist", tmp_path)
    assert ds.source == str(tmp_path / "fashion-mnist")
    assert np.bincount(ds.y_train).tolist() == [6000] * 10  # Fashion-MNIST's, not MNIST's 5923 6742 ...


def test_a_swapped_file_of_the_same_set_is_refused(shared_data: Path, tmp_path: Path) -> None:
    link_set(shared_data / "mnist", tmp_path / "mnist", {"train-images-idx3-ubyte": "t10k-images-idx3-ubyte"})
    with pytest.raises(DataError, match=r"^mnist: .*/mnist/train-images-idx3-ubyte.gz is MNIST's "
                                        r"t10k-images-idx3-ubyte \(recognised by its checksum\), not its "
                                        r"train-images-idx3-ubyte; run"):  # fmt: skip
        load_dataset("mnist", tmp_path)


def test_a_damaged_official_file_is_refused(shared_data: Path, tmp_path: Path) -> None:
    d = link_set(shared_data / "mnist", tmp_path / "mnist")
    labels = bytearray(gzip.decompress((shared_data / "mnist" / "train-labels-idx1-ubyte.gz").read_bytes()))
    labels[100] = (
        labels[100] + 1
    ) % 10  # still a valid IDX file with labels in 0..9: only the checksum can tell
    (d / "train-labels-idx1-ubyte.gz").unlink()
    (d / "train-labels-idx1-ubyte").write_bytes(bytes(labels))
    s = status(tmp_path, "mnist")
    assert not s.present
    assert s.missing[0].startswith(
        f"{d}/train-labels-idx1-ubyte has the size of MNIST's official train-labels-idx1-ubyte but not its checksum"
    )
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path)
    msg = str(e.value)
    assert "expected a25bea736e30d166cdddb491f175f624" in msg and "a damaged copy" in msg and ".npz" in msg
    assert f"run `deepsad data fetch mnist --to {tmp_path}`" in msg and "\n" not in msg


def test_a_format_error_is_reported_before_the_checksum(shared_data: Path, tmp_path: Path) -> None:
    d = link_set(shared_data / "mnist", tmp_path / "mnist")
    labels = gzip.decompress((shared_data / "mnist" / "train-labels-idx1-ubyte.gz").read_bytes())
    (d / "train-labels-idx1-ubyte.gz").unlink()
    (d / "train-labels-idx1-ubyte").write_bytes(b"\x12\x34\x08\x01" + labels[4:])
    with pytest.raises(DataError, match=r"bad magic"):
        load_dataset("mnist", tmp_path)


def test_own_idx_files_load_unverified(tmp_path: Path) -> None:
    write_mnist(tmp_path / "fashion-mnist")
    assert load_dataset("fmnist", tmp_path).x_train.shape == (6, 1, 28, 28)
    s = status(tmp_path, "fmnist")
    assert s.present and s.checksums == "unverified" and len(s.notes) == 4
    assert s.notes[0] == (
        f"{tmp_path}/fashion-mnist/train-images-idx3-ubyte.gz: matches no official Fashion-MNIST file (your own data?)"
    )
    assert status(tmp_path, "arrhythmia").checksums == ""  # no official files known: not hashed


def test_unreadable_gzip_is_left_to_the_reader(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot gzip")
    assert identify("mnist", "train-images-idx3-ubyte", tmp_path / "train-images-idx3-ubyte.gz").status == (
        "unverified"
    )
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: not a valid gzip file"):
        load_dataset("mnist", tmp_path)


def test_checksums_are_cached_by_file_identity(tmp_path: Path) -> None:
    f = tmp_path / "a"
    f.write_bytes(b"one")
    first = content_digest(f)
    assert first == (hashlib.md5(b"one").hexdigest(), 3)
    st = f.stat()
    f.write_bytes(b"two")  # same size; put the old modification time back: the cache answers
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert content_digest(f) == first
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert content_digest(f) == (hashlib.md5(b"two").hexdigest(), 3)
    official.clear_cache()


# --- CIFAR-10: the official batches are not available here, so the table is patched to hold the
# checksums of batches written by the test; the logic is the same for every set.


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Binary batches in tmp/cifar-10-batches-bin, registered as the official CIFAR-10 files."""
    d = tmp_path / "cifar-10-batches-bin"
    write_bin(d)
    table = [OfficialFile("cifar10", f, md5(d / f), (d / f).stat().st_size) for f in (*BIN_TRAIN, BIN_TEST)]
    monkeypatch.setattr(official, "OFFICIAL_FILES", (*official.OFFICIAL_FILES, *table))
    return d


def test_cifar_official_files_verified(cifar: Path) -> None:
    s = status(cifar.parent, "cifar10")
    assert s.present and s.layout == "CIFAR-10 binary" and s.checksums == "verified"
    assert load_dataset("cifar10", cifar.parent).x_train.shape == (15, 3, 32, 32)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("same set", "is CIFAR-10's test_batch.bin (recognised by its checksum), not its data_batch_1.bin"),
        ("another set", "is CIFAR-100's train.bin (recognised by its checksum), not CIFAR-10's"),
    ],
)
def test_cifar_file_of_another_kind_is_refused(
    cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, expected: str
) -> None:
    batch = cifar / "data_batch_1.bin"
    if case == "same set":
        batch.write_bytes((cifar / BIN_TEST).read_bytes())
    else:  # a file the table knows as another data set's
        batch.write_bytes(batch.read_bytes()[:-3073])  # other content, other size
        monkeypatch.setitem(official.TITLES, "cifar100", "CIFAR-100")
        other = OfficialFile("cifar100", "train.bin", md5(batch), batch.stat().st_size)
        monkeypatch.setattr(official, "OFFICIAL_FILES", (*official.OFFICIAL_FILES, other))
    s = status(tmp_path, "cifar10")
    assert not s.present and s.missing[0] == f"{batch} {expected}"
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", tmp_path)
    assert str(e.value) == f"cifar10: {batch} {expected}; run `deepsad data fetch cifar10 --to {tmp_path}`"


def test_cifar_damaged_and_unverified(cifar: Path, tmp_path: Path) -> None:
    batch = cifar / "data_batch_3.bin"
    data = bytearray(batch.read_bytes())
    data[5] ^= 0xFF  # a pixel: same size, other checksum
    batch.write_bytes(bytes(data))
    assert not status(tmp_path, "cifar10").present
    with pytest.raises(
        DataError, match=r"data_batch_3.bin has the size of CIFAR-10's official data_batch_3.bin"
    ):
        load_dataset("cifar10", tmp_path)
    batch.write_bytes(bytes(data[:-3073]))  # other size: the user's own batch
    s = status(tmp_path, "cifar10")
    assert (
        s.present
        and s.checksums == "unverified"
        and s.notes == (f"{batch}: matches no official CIFAR-10 file (your own data?)",)
    )
    assert load_dataset("cifar10", tmp_path).x_train.shape == (14, 3, 32, 32)


def test_cifar_binary_has_no_published_checksums(tmp_path: Path) -> None:
    write_bin(tmp_path / "cifar-10-batches-bin")
    s = status(tmp_path, "cifar10")
    assert s.present and s.checksums == "unverified"
    assert s.notes[0].endswith("data_batch_1.bin: no published checksum for CIFAR-10's data_batch_1.bin")
