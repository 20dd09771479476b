"""The AE cache's storage side: content-addressed keys, verified round trips, torn and tampered entries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from deepsad.errors import CheckpointError, IntegrityError, StorageError
from deepsad.networks import NetConfig, build_autoencoder
from orchestration.store.cache import AECache, ae_cache_key
from orchestration.store.storage import MANIFEST_FILE, Storage

FP = "ab" * 32


@pytest.fixture
def state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_autoencoder(NetConfig("mlp", 8, (64,), (32, 16))).state_dict()


@pytest.fixture
def cache(tmp_path: Path) -> AECache:
    return AECache(Storage.from_uri(tmp_path / "sweep"))


def meta(**over: object) -> dict[str, object]:
    return {"ae_seconds": 12.5, "epochs": 3, "trial_key": "0123456789abcdef", **over}


def test_key_is_content_addressed() -> None:
    k = ae_cache_key("ae-settings", FP)
    assert len(k) == 24 and all(c in "0123456789abcdef" for c in k)
    assert ae_cache_key("ae-settings", FP) == k
    assert ae_cache_key("ae-settings", "cd" * 32) != k  # other data or split
    assert ae_cache_key("other-settings", FP) != k
    assert ae_cache_key("ab", "c") != ae_cache_key("a", "bc")  # no concatenation ambiguity
    with pytest.raises(StorageError, match="split_fingerprint must be a non-empty string"):
        ae_cache_key("ae-settings", "")


def test_round_trip(cache: AECache, state_dict: dict[str, torch.Tensor], tmp_path: Path) -> None:
    key = ae_cache_key("ae", FP)
    assert not cache.exists(key) and cache.get(key) is None
    cache.put(key, state_dict, meta())
    assert cache.exists(key)
    assert (tmp_path / "sweep" / "cache" / "ae" / key / "meta.json").is_file()
    got = cache.get(key)
    assert got is not None
    tensors, m = got
    assert tensors.keys() == state_dict.keys()
    assert all(torch.equal(tensors[k], state_dict[k]) for k in state_dict)
    assert m["ae_seconds"] == 12.5 and m["epochs"] == 3 and m["trial_key"] == "0123456789abcdef"
    assert m["cache_key"] == key and m["created_at"].endswith("+00:00")
    # The loaded weights fit a freshly built autoencoder.
    build_autoencoder(NetConfig("mlp", 8, (64,), (32, 16))).load_state_dict(tensors)
    assert cache.uri(key) == f"{tmp_path}/sweep/cache/ae/{key}"


def test_put_replaces_and_entries_report_compute(cache: AECache, state_dict: dict[str, torch.Tensor]) -> None:
    k1, k2 = ae_cache_key("ae", FP), ae_cache_key("ae", "cd" * 32)
    cache.put(k1, state_dict, meta(ae_seconds=1.0))
    cache.put(k1, state_dict, meta(ae_seconds=2.0, created_at="2025-01-01T00:00:00+00:00"))
    cache.put(k2, state_dict, meta(ae_seconds=3.0))
    entries = {e["key"]: e for e in cache.entries()}
    assert set(entries) == {k1, k2}
    assert entries[k1]["ae_seconds"] == 2.0 and entries[k1]["created_at"] == "2025-01-01T00:00:00+00:00"
    assert entries[k2]["tensors_bytes"] > 0
    cache.delete(k1)
    cache.delete(k1)  # missing is fine
    assert [e["key"] for e in cache.entries()] == [k2] and cache.get(k1) is None


def test_torn_entry_counts_as_absent(
    cache: AECache, state_dict: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    key = ae_cache_key("ae", FP)
    cache.put(key, state_dict, meta())
    (tmp_path / "sweep" / "cache" / "ae" / key / "MANIFEST.json").unlink()  # an upload that died before its manifest
    assert not cache.exists(key)
    assert cache.get(key) is None
    assert cache.entries() == []
    cache.put(key, state_dict, meta())  # a retry repairs it
    assert cache.get(key) is not None


def test_tampered_tensors_raise_integrity_error(
    cache: AECache, state_dict: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    key = ae_cache_key("ae", FP)
    cache.put(key, state_dict, meta())
    path = tmp_path / "sweep" / "cache" / "ae" / key / "tensors.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed in the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=rf"^{cache.uri(key)}/tensors.safetensors: sha256 mismatch"):
        cache.get(key)
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(IntegrityError, match="size mismatch"):
        cache.get(key)


def test_other_kind_of_bundle_is_refused(
    cache: AECache, state_dict: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    key = ae_cache_key("ae", FP)
    cache.put(key, state_dict, meta())
    # A complete, well-formed upload (its manifest matches) of a bundle of another kind: an in-place edit
    # of meta.json would be caught earlier, by the manifest's sha256.
    other = tmp_path / "other"
    shutil.copytree(
        tmp_path / "sweep" / "cache" / "ae" / key, other, ignore=shutil.ignore_patterns(MANIFEST_FILE)
    )
    record = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**record, "kind": "deepsad-model"}))
    cache.storage.upload_dir(other, key)
    with pytest.raises(CheckpointError, match="expected 'autoencoder'"):
        cache.get(key)
    with pytest.raises(CheckpointError, match=rf"^{cache.uri(key)}/meta.json: checkpoint kind is"):
        cache.entries()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"ae_seconds": None}, r"meta\['ae_seconds'\] must be a number of seconds"),
        ({"epochs": True}, r"meta\['epochs'\] must be an int"),
        ({"trial_key": 3}, r"meta\['trial_key'\] must be a str"),
        ({"extra": float("nan")}, "not valid JSON"),
        ({"extra": (1, 2)}, "would come back as a list"),
    ],
)
def test_bad_meta_is_refused(
    cache: AECache, state_dict: dict[str, torch.Tensor], bad: dict[str, object], message: str
) -> None:
    key = ae_cache_key("ae", FP)
    with pytest.raises(CheckpointError, match=message):
        cache.put(key, state_dict, meta(**bad))
    assert not cache.exists(key)


@pytest.mark.parametrize("key", ["../x", "ABCDEF0123456789abcdef01", "abc", "a" * 25])
def test_invalid_keys_are_refused(cache: AECache, key: str) -> None:
    with pytest.raises(StorageError, match="ae cache: invalid key"):
        cache.get(key)
