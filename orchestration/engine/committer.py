"""The driver's committer: during a sweep on Ray, the one writer of the sweep's result tables.

The driver starts a named actor (:func:`start_committer`, on its own node) holding a
:class:`~orchestration.store.results.Committer` with ``sole_writer``; every trial, every Ray Train rank 0
and the driver's own store callback send their rows to it through an :class:`ActorSink`. A sender's
call returns once its rows are committed, and rows that arrive during a commit share the next one, so a
sweep of thousands of concurrent trials makes a handful of commits a second. The tables are compacted
every :data:`~orchestration.store.results.MAINTAIN_EVERY` commits and when the run ends
(:func:`finish`).

Nothing is acknowledged before it is committed: if the driver dies, the rows still waiting die with it,
their trials have not ended (their senders fail) and ``deepsad sweep resume`` runs them again; a finished
trial's row is committed before its trial ends. The actor restarts where it can if its node dies (calls
wait for it); a commit repeated after a restart replaces the same rows (epochs written twice are read
once).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from orchestration.jobs import faults
from orchestration.store.results import Committer
from orchestration.store.storage import Storage

NAMESPACE = "deepsad"


class RowCommitter:
    """The actor's class (``max_concurrency`` threads: concurrent senders share commits)."""

    def __init__(self, storage_uri: str) -> None:
        self.committer = Committer(Storage.from_uri(storage_uri), sole_writer=True)

    def commit(self, trials: pa.Table | None = None, epochs: pa.Table | None = None) -> None:
        if trials is not None:
            for key, status in zip(trials.column("trial_key").to_pylist(), trials.column("status").to_pylist(),
                                   strict=True):
                if status == "finished":  # fault tests stop the driver between a finished row and its commit
                    faults.checkpoint("rows_commit", trial_key=key)
        self.committer.commit(trials, epochs)

    def delete(self, keys: Sequence[str]) -> None:
        self.committer.delete(keys)

    def maintain(self) -> dict[str, dict[str, int]]:
        return self.committer.maintain()


def start_committer(name: str, storage_uri: str) -> Any:
    """The sweep's committer actor (see the module docstring); held by the driver for the run."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # on the driver's node, like the AE-cache lock table (see runner._lock_table): soft affinity, and a
    # restart wherever it can if that node dies anyway
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(num_cpus=0)(RowCommitter).options(
        name=name, namespace=NAMESPACE, get_if_exists=True, scheduling_strategy=here,
        max_restarts=-1, max_task_retries=-1, max_concurrency=64,
    ).remote(storage_uri)


def finish(actor: Any, progress: Any) -> None:
    """Compact and vacuum the tables at the end of a run (a failure is a warning: the rows stand)."""
    import ray

    try:
        done = ray.get(actor.maintain.remote())
        files = done["trials"]
        progress(f"results: compacted, trial rows in {files['files_after']} file(s) (were {files['files_before']})")
    except Exception as e:
        print(f"warning: results: compaction at the end of the run failed ({' '.join(str(e).split())[:300]}); "
              "run `deepsad results compact` later", file=sys.stderr, flush=True)


class ActorSink:
    """A :class:`~orchestration.store.results.RowSink` that sends rows to the driver's committer.
    Pickles as its name: trials and Ray Train workers build their own handle."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._handle: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.name, self._handle = state["name"], None

    def _actor(self) -> Any:
        import ray

        if self._handle is None:
            self._handle = ray.get_actor(self.name, namespace=NAMESPACE)
        return self._handle

    def commit(self, trials: pa.Table | None = None, epochs: pa.Table | None = None) -> None:
        import ray

        ray.get(self._actor().commit.remote(trials, epochs))

    def delete(self, keys: Sequence[str]) -> None:
        import ray

        ray.get(self._actor().delete.remote(list(keys)))
