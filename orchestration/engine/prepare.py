"""Before any Ray: a sweep file (``submit``) or a submitted sweep's directory (``resume``, ``status``)
made into a :class:`Prepared` sweep — the validated spec, its cells and which of them are left.

Everything a user can get wrong is checked here, with one line per problem naming the file and field
(:mod:`orchestration.plan.preflight`, :func:`orchestration.plan.ablation.validate_ablation`), the data
and the storage, so that a bad sweep costs no Ray start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deepsad.errors import StorageError
from deepsad.jsonio import load_json_bounded
from orchestration.plan.ablation import AblationUnit, expand_units, validate_ablation
from orchestration.plan.cells import enumerate_cells
from orchestration.plan.identity import check_identity
from orchestration.plan.preflight import check_resources, validate_spec
from orchestration.plan.trial import TrialConfig
from orchestration.spec.load import load_spec, parse_spec
from orchestration.spec.model import SweepSpec
from orchestration.store.layout import DEFAULT_STORAGE, SPEC_FILE, SUBMISSION_FILE, sweep_location
from orchestration.store.results import ResultStore
from orchestration.store.storage import Storage

#: A sweep's unit of planning: a trial (grid/random) or an ablation unit.
Cell = TrialConfig | AblationUnit


@dataclass
class Prepared:
    """A validated sweep, ready to run: nothing has started yet."""

    spec: SweepSpec
    spec_text: str
    sweep_dir: Storage
    # grid/random: every cell; tpe: the probe trials that were validated; ablation: every unit
    cells: list[Cell]
    pending: list[Cell]  # grid/random: cells without a finished row; ablation: units not done; tpe: none
    finished: set[str]


def prepare(
    spec_path: Path, storage: str | None, *, in_cluster: bool = False, base_dir: str | None = None
) -> Prepared:
    """Load and validate the spec, every trial config, the data and the storage — before any Ray.

    ``in_cluster``: the driver runs on a Ray cluster, whose resources (autoscaled) are not this
    machine's, so the local CPU/GPU check is skipped. ``base_dir``: where relative paths in the file
    are taken from (default: the current directory).

    Raises:
        ConfigError: the sweep file or a trial configuration is invalid (one line per problem).
        DataError: the data set cannot be loaded.
        StorageError: the storage location is not writable.
    """
    spec = load_spec(spec_path, base_dir=base_dir)
    text = Path(spec_path).read_text(encoding="utf-8")
    cells: list[Cell] = list(validate_ablation(spec) if spec.ablation is not None else validate_spec(spec))
    if not in_cluster:
        check_resources(spec, *machine())
    try:
        root = Storage.from_uri(storage or spec.storage or DEFAULT_STORAGE)
        root.check_writable()
    except StorageError as e:
        # say where the location came from: the flag, the sweep file, or the default
        where = "--storage" if storage else f"{spec.source}: storage" if spec.storage else "default storage"
        raise StorageError(f"{where}: {e}") from e
    sweep_dir = root.child(spec.name)
    check_identity(spec, sweep_dir)  # a changed file under an existing sweep's name is refused
    finished = set(ResultStore(sweep_dir).ledger().done)
    pending = [] if spec.search.algorithm == "tpe" else [c for c in cells if c.key not in finished]
    return Prepared(spec, text, sweep_dir, cells, pending, finished)


def load_submitted(name: str, storage: str | None, *, plan: bool = True) -> Prepared:
    """A submitted sweep, from its directory alone (for ``resume`` and ``status``); with ``plan=False``
    only its spec and directory (no cells, pending or finished trials: nothing read from the rows and
    nothing that imports torch, for readers such as ``results show``).

    Raises:
        StorageError: no sweep of that name under ``storage``.
    """
    sweep_dir = sweep_location(name, storage)
    if not sweep_dir.exists(SPEC_FILE):
        raise StorageError(f"no sweep {name!r} under {sweep_dir.uri.rsplit('/', 1)[0]} (no {SPEC_FILE})")
    try:
        text = sweep_dir.read_bytes(SPEC_FILE).decode()
    except UnicodeDecodeError as e:
        raise StorageError(f"{sweep_dir.uri}/{SPEC_FILE}: not UTF-8 text") from e
    submission = (load_json_bounded(sweep_dir.read_bytes(SUBMISSION_FILE), f"{sweep_dir.uri}/{SUBMISSION_FILE}",
                                    error=StorageError) if sweep_dir.exists(SUBMISSION_FILE) else {})
    submission = submission if isinstance(submission, dict) else {}
    source, base_dir = submission.get("source"), submission.get("base_dir")
    spec = parse_spec(text, source if isinstance(source, str) else f"{sweep_dir.uri}/{SPEC_FILE}",
                      base_dir=base_dir if isinstance(base_dir, str) else None)
    if not plan:
        return Prepared(spec, text, sweep_dir, [], [], set())
    cells: list[Cell]
    if spec.ablation is not None:
        cells = list(expand_units(spec))
    else:
        cells = [] if spec.search.algorithm == "tpe" else list(enumerate_cells(spec))
    finished = set(ResultStore(sweep_dir).ledger().done) if cells else set()  # a TPE study keeps its own count
    pending = [c for c in cells if c.key not in finished]
    return Prepared(spec, text, sweep_dir, cells, pending, finished)


def machine() -> tuple[float, float]:
    """This machine's CPUs and GPUs."""
    import torch

    return float(os.cpu_count() or 1), float(torch.cuda.device_count())
