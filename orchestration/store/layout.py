"""The layout of a sweep directory (``<storage>/<name>/``): the names every layer uses for its files.

::

    spec.yaml          the sweep file as submitted (grown files replace it; see plan.identity)
    submission.json    where it was submitted from (source path, base directory, time)
    plan.json          what the last submit planned (``--dry-run`` prints the same)
    optuna.db          the Optuna study of a tpe sweep (SQLite)
    results/           the result store (orchestration.store.results)
    cache/ae/          pretrained autoencoders (orchestration.store.cache)
    checkpoints/<key>  each finished trial's model bundle (safetensors + JSON)
    tune/run-NNN/      Ray Tune's experiment directories (never read back by resume)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the constants are imported by light modules (the CLI's --help): no pyarrow here
    from orchestration.store.storage import Storage

#: Where sweeps live unless the sweep file (``storage:``) or ``--storage`` says otherwise.
DEFAULT_STORAGE = "runs/sweeps"
SPEC_FILE = "spec.yaml"
SUBMISSION_FILE = "submission.json"
PLAN_FILE = "plan.json"
STUDY_FILE = "optuna.db"
#: A raced sweep's rounds: who led, who was in contention, what each round ran (orchestration.plan.racing)
RACING_FILE = "racing.json"


def sweep_location(name: str, storage: str | None) -> Storage:
    """The directory of sweep ``name`` under ``storage`` (default :data:`DEFAULT_STORAGE`)."""
    from orchestration.store.storage import Storage

    return Storage.from_uri(storage or DEFAULT_STORAGE).child(name)


def checkpoint_location(sweep_dir: Storage, trial_key: str) -> Storage:
    """Where the final model bundle of trial ``trial_key`` is kept."""
    return sweep_dir.child("checkpoints", trial_key)
