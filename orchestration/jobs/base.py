"""What every job shares: the :class:`Job` protocol, the :class:`Member` trainings a job is made of,
where its progress goes (:class:`Reporter`), what it needs besides its configuration
(:class:`RunContext`), the AE cache's lock protocol, and the helpers every kind uses.

A job is one Ray Tune trial's worth of work. Its kinds — :class:`~orchestration.jobs.trial.TrialJob`,
:class:`~orchestration.jobs.bundle.BundleJob` and the ablation units of
:mod:`orchestration.jobs.ablation` — are interchangeable to the engine: it plans them, hands each to a
Tune trial as a plain dict (:meth:`Job.to_dict`, :func:`orchestration.jobs.kinds.job_from_dict`),
runs it (:meth:`Job.run`) and, when Tune ends a trial that could not write its own rows, has the job
record that end (:meth:`Job.record_end`). Rows are written only through
:class:`orchestration.store.results.RowWriter`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from deepsad.data.dataset import Dataset
from deepsad.data.sources import load_dataset
from deepsad.data.splits import SemiSupervisedSplit
from orchestration.plan.trial import TrialConfig
from orchestration.store.results import RowSink, RowWriter
from orchestration.store.storage import Storage

if TYPE_CHECKING:
    from collections.abc import Callable


class Reporter(Protocol):
    """Where a trial's progress goes (Ray Tune, Ray Train, or a list in a test)."""

    rank: int
    world_size: int

    def restored(self) -> Any:
        """The checkpoint this (retried or resumed) trial starts from, if any (a :class:`TrainState`,
        or a bundle's :class:`deepsad.bundle.BundleState`)."""

    def report(self, metrics: dict[str, Any], state: Any) -> None:
        """Report one result; ``state`` (if given) becomes the trial's latest checkpoint."""


class CacheLock(Protocol):
    """Makes sure two concurrent trials never both train the same autoencoder."""

    def acquire(self, key: str, owner: str) -> bool: ...
    def release(self, key: str, owner: str) -> None: ...
    def renew(self, key: str, owner: str) -> None: ...


class NoLock:
    """For a single process: every acquire succeeds."""

    def acquire(self, key: str, owner: str) -> bool:
        return True

    def release(self, key: str, owner: str) -> None:
        return None

    def renew(self, key: str, owner: str) -> None:
        return None


@dataclass(frozen=True)
class RunContext:
    """What a trial needs besides its configuration."""

    sweep: str
    storage_uri: str
    trial_id: str = "local"
    checkpoint_interval_s: float = 10.0
    # a report is a round trip to the Tune driver (~7 ms): epochs of a few ms are reported at most
    # this often (always with a checkpoint, at a phase end, and every epoch on Ray Train, whose
    # report is a barrier that every rank must reach together)
    report_interval_s: float = 0.5
    cache_wait_s: float = 3600.0
    # where rows are committed: the driver's committer during a sweep on Ray; None: this process's
    sink: RowSink | None = field(default=None, compare=False)

    @property
    def storage(self) -> Storage:
        return Storage.from_uri(self.storage_uri)

    def rows(self) -> RowWriter:
        """The writer of this trial's result rows."""
        return RowWriter(self.storage, self.sweep, self.trial_id, self.sink)


@dataclass(frozen=True)
class Member:
    """One Deep SAD training of a job: its trial, the key of its row, extra row columns (an ablation
    unit's) and whether the training part keeps its labels (False: Deep SVDD, whose semi-targets are
    zeroed; it pretrains on, and shares the cache entry of, the labelled split)."""

    trial: TrialConfig
    key: str
    columns: dict[str, Any] = field(default_factory=dict)
    labels: bool = True

    def row_columns(self) -> dict[str, Any]:
        """The configuration columns of the member's row."""
        return {**self.trial.columns(), **self.columns}

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.trial.to_dict(), "key": self.key, "columns": self.columns, "labels": self.labels}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Member:
        return cls(TrialConfig.from_dict(d["trial"]), str(d["key"]), dict(d["columns"]), bool(d["labels"]))


class Job(Protocol):
    """One Tune trial's work. ``kind`` names it in :meth:`to_dict`; ``id`` is the value the Tune
    trial's config carries; ``keys`` are the planned keys it settles (a resume runs the job again
    while one of them is not settled, see :meth:`orchestration.store.results.Ledger.settled`)."""

    kind: ClassVar[str]

    @property
    def id(self) -> str: ...

    @property
    def keys(self) -> list[str]: ...

    def run(self, reporter: Reporter, ctx: RunContext, lock: CacheLock) -> list[dict[str, Any]]:
        """Do the work (skipping what has finished rows), write its rows, report to ``reporter``;
        return the rows."""
        ...

    def record_end(self, rows: RowWriter, status: str, error: str | None, last: Mapping[str, Any]) -> None:
        """The driver's record of a Tune trial of this job that ended without writing its outcome:
        ``failed`` after its last retry, or ``stopped`` by the scheduler (``last``: its last report)."""
        ...

    def to_dict(self) -> dict[str, Any]: ...


@functools.lru_cache(maxsize=4)
def load_data(name: str, data_dir: str | None) -> Dataset:
    """The data set, loaded once per worker process: every trial of a sweep uses the same one."""
    return load_dataset(name, data_dir)


def resolve_device(request: str) -> str:
    """``auto`` → ``cuda`` when this process was given a GPU, else ``cpu``."""
    import torch

    if request == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return request


def without_labels(split: SemiSupervisedSplit) -> SemiSupervisedSplit:
    """``split`` with every semi-target of its training part 0 (Deep SVDD); validation and test
    unchanged. Its fingerprint is derived from the original's, so that checkpoints of the two never
    pass for each other."""
    train = replace(split.train, semi_targets=np.zeros_like(split.train.semi_targets))
    fingerprint = hashlib.sha256(f"{split.fingerprint}:semi-targets-zeroed".encode()).hexdigest()
    return replace(split, train=train, fingerprint=fingerprint)


def final_metrics(row: Mapping[str, Any], *, skipped: bool) -> dict[str, Any]:
    """A finished (or skipped) training's last report to Tune: its metrics and ``done``."""
    keys = ("trial_key", "val_auroc", "val_ap", "val_auroc_oracle", "val_ap_oracle", "test_auroc", "test_ap",
            "cache_hit", "epochs_done")
    return {**{k: row.get(k) for k in keys}, "epoch": row.get("epochs_done"), "done": True, "skipped": skipped}


def decide(reporter: Reporter, fn: Callable[[], Any]) -> bool:
    """Rank 0 decides (e.g. takes a lock); every rank of a data-parallel group gets the same answer."""
    if reporter.world_size == 1:
        return bool(fn())
    import torch
    import torch.distributed as dist

    flag = torch.tensor([int(bool(fn())) if reporter.rank == 0 else 0])
    dist.broadcast(flag, src=0)
    return bool(flag.item())

