"""The pretrained-autoencoder cache of a sweep (storage side).

Deep SAD's autoencoder pretraining depends only on the data split and the AE's own settings, not on
η, the Deep SAD learning rate or anything else a sweep usually searches, so trials that share both
reuse one pretrained AE. Entries are content-addressed: the key hashes the trial's AE settings key and
the split fingerprint (itself a hash over the data bytes), so a changed data set or protocol can never
hit a stale entry.

Layout under the sweep's storage: ``cache/ae/<key>/`` holding a :mod:`deepsad.checkpoint` bundle of
kind ``"autoencoder"``. Uploads write ``MANIFEST.json`` last (see :meth:`Storage.upload_dir`), so an
entry without it is torn (an upload that died, or one still running) and counts as absent.
Coordination of trials that want the same entry at the same time (a lock, so that only one trains it)
lives above this module.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from deepsad.checkpoint import META_FILE, load_bundle, read_bundle_meta, save_bundle
from deepsad.errors import CheckpointError, StorageError
from orchestration.store.storage import IncompleteUploadError, Storage

KIND = "autoencoder"
_KEY = re.compile(r"[0-9a-f]{24}")
_REQUIRED_META: dict[str, tuple[tuple[type, ...], str]] = {
    "ae_seconds": ((int, float), "a number of seconds"),
    "epochs": ((int,), "an int"),
    "trial_key": ((str,), "a str"),
}


def ae_cache_key(trial_ae_key: str, split_fingerprint: str) -> str:
    """The cache key (24 hex digits) of the AE trained with settings ``trial_ae_key`` on the split
    ``split_fingerprint``. Raises StorageError if either is empty."""
    for name, v in (("trial_ae_key", trial_ae_key), ("split_fingerprint", split_fingerprint)):
        if not isinstance(v, str) or not v:
            raise StorageError(f"ae cache: {name} must be a non-empty string (got {v!r})")
    # A JSON list, not a concatenation, so that ("ab", "c") and ("a", "bc") differ.
    payload = json.dumps([trial_ae_key, split_fingerprint], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise StorageError(
            f"ae cache: invalid key {key!r} (expected 24 lowercase hex digits from ae_cache_key)"
        )
    return key


class AECache:
    """Pretrained autoencoders of one sweep under ``<storage>/cache/ae/``."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage.child("cache", "ae")

    def uri(self, key: str) -> str:
        """Where the entry ``key`` lives (for logs and result rows)."""
        return self.storage.child(_check_key(key)).uri

    def exists(self, key: str) -> bool:
        """Whether a complete entry (its manifest written) exists."""
        return self.storage.is_complete(_check_key(key))

    def get(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The cached ``(state_dict, meta)`` of ``key`` on CPU, or None if absent or torn.

        The bundle is downloaded to a temp dir and verified (size and sha256) before it is parsed.
        Raises IntegrityError if the tensors do not match their meta.json (a corrupt entry: delete it
        and retrain), CheckpointError if the entry is not an autoencoder bundle, StorageError on I/O.
        """
        key = _check_key(key)
        if not self.exists(key):
            return None
        with tempfile.TemporaryDirectory(prefix="deepsad-ae-") as tmp:
            try:
                local = self.storage.download_dir(Path(tmp) / key, key)
            except IncompleteUploadError:
                return None  # deleted or being rewritten between our check and the download
            try:
                return load_bundle(local, kind=KIND)
            except CheckpointError as e:
                raise _at_uri(e, local, self.uri(key)) from e

    def put(self, key: str, state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Store the AE ``state_dict`` under ``key``, replacing any existing entry.

        ``meta`` must be strict JSON (see :mod:`deepsad.checkpoint`) and hold at least ``ae_seconds``
        (training time in seconds), ``epochs`` and ``trial_key`` (the trial that trained it);
        ``created_at`` (ISO-8601 UTC) and ``cache_key`` are filled in when absent. The bundle is
        built in a local temp dir and uploaded with meta.json last, so a crash mid-way leaves a torn
        entry that reads as absent. Raises CheckpointError (bad meta or tensors), StorageError (I/O).
        """
        key = _check_key(key)
        for name, (types, what) in _REQUIRED_META.items():
            v = meta.get(name)
            if not isinstance(v, types) or isinstance(v, bool):
                raise CheckpointError(f"ae cache {key}: meta[{name!r}] must be {what} (got {v!r})")
        record = {
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "cache_key": key,
            **meta,
        }
        with tempfile.TemporaryDirectory(prefix="deepsad-ae-") as tmp:
            bundle = Path(tmp) / key
            save_bundle(bundle, state_dict, record, kind=KIND)
            self.storage.upload_dir(bundle, key)

    def delete(self, key: str) -> None:
        """Remove the entry ``key`` (e.g. after an IntegrityError); a missing one is fine."""
        key = _check_key(key)
        # Storage.delete removes the manifest first: a concurrent reader sees an absent entry, not half of one.
        self.storage.delete(key)

    def entries(self) -> list[dict[str, Any]]:
        """The metas of all complete entries, each with ``key`` and ``tensors_bytes`` added.

        Torn entries are skipped; tensors are not read. Raises CheckpointError on an unreadable meta.json.
        """
        out = []
        for name in self.storage.list():
            if not _KEY.fullmatch(name) or not self.storage.is_complete(name):
                continue
            record = self._meta_record(name)
            out.append({**record["meta"], "key": name, "tensors_bytes": record["tensors_bytes"]})
        return out

    def _meta_record(self, key: str) -> dict[str, Any]:
        # read_bundle_meta checks format, version and kind, but needs a local directory.
        data = self.storage.read_bytes(key, META_FILE)
        with tempfile.TemporaryDirectory(prefix="deepsad-ae-") as tmp:
            (Path(tmp) / META_FILE).write_bytes(data)
            try:
                return read_bundle_meta(Path(tmp), kind=KIND)
            except CheckpointError as e:
                raise _at_uri(e, Path(tmp), self.uri(key)) from e


def _at_uri(e: CheckpointError, local: Path, uri: str) -> CheckpointError:
    """The same error (same class: IntegrityError stays one) naming the cache entry, not our temp copy."""
    return type(e)(str(e).replace(str(local), uri))
