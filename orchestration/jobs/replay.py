"""Replaying one result row: retrain what wrote it, with its recorded configuration and seed, and compare
the metrics (``deepsad replay SWEEP TRIAL_KEY``).

:func:`prepare_replay` finds the cell that wrote the row in the sweep's own file (``spec.yaml``: a
trial is rebuilt from its ``params_json`` and seed and must have the row's key; an ablation row is the
unit of that key, or a tuned unit's inner training ``<unit>-<i>`` with the row's suggested values),
rebuilds its split and refuses data whose fingerprint is not the row's — all before any training.
:func:`run_replay` then runs the very job code the sweep ran, against a scratch directory: no row is
stored anywhere (:class:`DiscardRows`) and nothing of the sweep is written.

What is retrained, and why:

* a trial, or an ablation's Deep SAD / Deep SVDD unit: :func:`~orchestration.jobs.trial.train_member`;
* a bundle member (``bundle`` set): every member that trained with it (same ``bundle`` and Tune trial
  id), again as one bundle (:class:`~orchestration.jobs.bundle.BundleJob`). A member trained alone
  agrees with its bundled self only up to float rounding (the bundle pretrains with
  :func:`deepsad.bundle.pretrain_bundle` and evaluates all members at once);
* a baseline (Isolation Forest, OC-SVM): :class:`~orchestration.jobs.ablation.BaselineJob`, which
  chooses the hyperparameters again on the sweep's validation objective; the choice is compared too.

Autoencoders: a row that pretrained its own AE (``cache_hit`` false) pretrains it again. A row that
took it from the sweep's cache gets that cache entry (read, verified by sha256, never written) if it
was created before the row finished — the state the trial used, whoever trained it (a single trial and
a bundle pretrain differently in the last bits); otherwise, or with ``retrain_ae``, it is pretrained
again. Either way the comparison of the metrics is the check.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepsad.errors import CheckpointError, ConfigError, DataError, DeepSADError, StorageError
from deepsad.jsonio import load_json_bounded
from orchestration.jobs.ablation import BaselineJob, unit_member
from orchestration.jobs.base import Member, NoLock, RunContext, load_data, resolve_device
from orchestration.jobs.bundle import BundleJob
from orchestration.jobs.trial import train_member
from orchestration.plan.ablation import AblationUnit, expand_units, with_params
from orchestration.plan.cells import build_trial, enumerate_cells, resolve_data
from orchestration.plan.trial import TrialConfig
from orchestration.spec.model import REGISTRY_SAMPLE_SHAPES, SweepSpec, is_data_file
from orchestration.store.cache import AECache, ae_cache_key
from orchestration.store.layout import checkpoint_location
from orchestration.store.results import ResultStore, check_trial_key, code_version
from orchestration.store.storage import Storage

if TYPE_CHECKING:
    import pyarrow as pa

    from deepsad.data.dataset import Dataset
    from deepsad.data.splits import SemiSupervisedSplit

#: The outcome columns a replay compares (baselines: also their chosen hyperparameters, ``params_json``).
METRICS: tuple[str, ...] = ("val_auroc", "val_ap", "val_auroc_oracle", "val_ap_oracle", "test_auroc", "test_ap")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


class DiscardRows:
    """A :class:`~orchestration.store.results.RowSink` that stores nothing: a replay's rows are
    compared, never written (they are still validated against the schema)."""

    def commit(self, trials: pa.Table | None = None, epochs: pa.Table | None = None) -> None:
        return None

    def delete(self, keys: Sequence[str]) -> None:
        return None


class QuietReporter:
    """A :class:`~orchestration.jobs.base.Reporter` of one process that starts fresh and keeps nothing."""

    rank = 0
    world_size = 1

    def restored(self) -> None:
        return None

    def report(self, metrics: dict[str, Any], state: Any) -> None:
        return None


# ------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay retrains (checked; nothing trained yet).

    Attributes:
        row: the recorded row. kind: ``trial``, ``unit``, ``inner`` (a tuned unit's inner training),
            ``bundle`` or ``baseline``.
        members: the Deep SAD trainings to run (a bundle's in its planned order; empty for a baseline),
            on the replay's device and data location; ``baseline``: the baseline unit.
        autoencoders: scratch cache key → ``(state, meta)``: the sweep's cached AEs the rows took.
        notes: what the reader should know (another device, code or torch version, a retrained AE).
    """

    sweep: str
    sweep_dir: Storage
    row: dict[str, Any]
    kind: str
    device: str
    members: tuple[Member, ...] = ()
    baseline: AblationUnit | None = None
    bundle_rows: tuple[dict[str, Any], ...] = ()
    autoencoders: dict[str, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)
    recorded_checkpoint: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return str(self.row["trial_key"])

    def describe(self) -> list[str]:
        """Lines for the terminal: what is retrained, and how."""
        row = self.row
        method = row.get("method") or "deepsad"
        what = {
            "trial": f"trial {self.key} ({method}, seed {row.get('seed')})",
            "unit": f"ablation unit {self.key} ({method}, seed {row.get('seed')})",
            "inner": f"inner training {row.get('inner_trial')} of tuned unit {self.key.rpartition('-')[0]}",
            "bundle": f"trial {self.key} ({method}, seed {row.get('seed')}), member of bundle {row.get('bundle')}",
            "baseline": f"{method} baseline {self.key} (seed {row.get('seed')})",
        }[self.kind]
        lines = [f"replaying {what} of sweep {self.sweep} on {self.device}"]
        if self.kind == "bundle":
            lines.append(f"  retraining the {len(self.members)} members that trained together, as one bundle "
                         "(a member alone agrees with its bundled self only up to float rounding)")
        if self.kind == "baseline":
            lines.append("  choosing its hyperparameters again on the validation objective, as the sweep did")
        if self.autoencoders:
            lines.append(f"  autoencoder{'s' if len(self.autoencoders) > 1 else ''}: taken from the sweep's cache, "
                         "as the trial took it")
        lines += [f"  note: {n}" for n in self.notes]
        return lines


def prepare_replay(spec: SweepSpec, sweep_dir: Storage, trial_key: str, *, data_dir: str | None = None,
                   device: str | None = None, retrain_ae: bool = False) -> ReplayPlan:
    """Check that the row ``trial_key`` of the sweep in ``sweep_dir`` (whose file is ``spec``) can be
    replayed, and plan it (see the module docstring).

    ``data_dir``: where the data is now (a data file is looked for there by its name); ``device``:
    ``auto``, ``cpu`` or ``cuda`` (default: the row's).

    Raises:
        StorageError: no such row, or an unreadable store.
        ConfigError: the row is not finished, the sweep file no longer builds it, a bad ``device``.
        DataError: the data cannot be loaded, or its split's fingerprint is not the row's.
    """
    key = check_trial_key(trial_key)
    store = ResultStore(sweep_dir)
    row = store.row(key)
    if row is None:
        raise StorageError(f"sweep {spec.name}: no row {key!r} (see `deepsad results show {spec.name}`)")
    if row.get("status") != "finished":
        raise ConfigError(f"trial {key} of sweep {spec.name} is {row.get('status')}, not finished: "
                          "it has no metrics to compare")
    cells = _Cells(spec, data_dir)
    run_on = _device(row, device)
    notes = _notes(row, run_on)
    found = cells.locate(row)
    if isinstance(found, AblationUnit):  # a baseline: no network, no autoencoder
        unit = replace(found, trial=cells.relocated(found.trial, "cpu"))
        _check_fingerprint(unit.trial, row)
        return ReplayPlan(spec.name, sweep_dir, row, "baseline", "cpu", baseline=unit, notes=tuple(notes))
    bundle_rows = _bundle_rows(store, row) if row.get("bundle") else [row]
    pairs = [(r, found if r["trial_key"] == key else cells.locate(r)) for r in bundle_rows]
    members: list[Member] = []
    for r, m in pairs:
        if not isinstance(m, Member):
            raise ConfigError(f"trial {r['trial_key']}: a baseline row in bundle {row.get('bundle')}")
        members.append(replace(m, trial=cells.relocated(m.trial, run_on)))
    order = cells.order() if row.get("bundle") else {}
    planned = sorted(zip(bundle_rows, members, strict=True), key=lambda rm: (order.get(rm[1].key, len(order)), rm[1].key))
    splits = [_check_fingerprint(m.trial, r) for r, m in planned]
    aes, ae_notes = _autoencoders(sweep_dir, planned, splits, retrain_ae)
    kind = "bundle" if row.get("bundle") else "inner" if row.get("inner_trial") is not None else \
        "unit" if row.get("method") else "trial"
    if kind == "bundle" and len(planned) < int(row.get("bundle_size") or len(planned)):
        notes.append(f"{len(planned)} of the bundle's {row.get('bundle_size')} members trained in this run of it "
                     "(the others in an earlier one)")
    recorded = _recorded_checkpoint(sweep_dir, key)
    notes += _version_notes(recorded)
    return ReplayPlan(spec.name, sweep_dir, row, kind, run_on, tuple(m for _, m in planned),
                      bundle_rows=tuple(r for r, _ in planned), autoencoders=aes, recorded_checkpoint=recorded,
                      notes=tuple(notes + ae_notes))


class _Cells:
    """Finds the cell of the sweep file that wrote a row: a trial, an ablation unit, or a tuned unit's
    inner training; and where its data is now."""

    def __init__(self, spec: SweepSpec, data_dir: str | None) -> None:
        self.spec = spec
        self.data_dir = None if data_dir is None else os.path.abspath(os.path.expanduser(data_dir))
        self.shapes = {name: self._dataset(*resolve_data(self._with_dataset(name))).sample_shape
                       for name in self._datasets() if is_data_file(name)}
        self.units: list[AblationUnit] | None = None
        if spec.ablation is not None:
            self.units = expand_units(spec, shapes=self.shapes)
        self.by_key = {u.key: u for u in self.units or []}

    def _datasets(self) -> list[str]:
        axes = self.spec.ablation.axes.dataset if self.spec.ablation is not None else None
        return list(axes) if axes is not None else [self.spec.data.dataset]

    def _with_dataset(self, name: str) -> SweepSpec:
        return self.spec.model_copy(update={"data": self.spec.data.model_copy(update={"dataset": name})})

    def _shape(self) -> tuple[int, ...]:
        name = self.spec.data.dataset
        return self.shapes[name] if name in self.shapes else REGISTRY_SAMPLE_SHAPES[name]

    def where(self, dataset: str, data_dir: str | None) -> tuple[str, str | None]:
        """Where a trial's data is now: with ``--data-dir``, that directory (a data file by its name)."""
        if self.data_dir is None:
            return dataset, data_dir
        return (os.path.join(self.data_dir, Path(dataset).name) if is_data_file(dataset) else dataset), self.data_dir

    def _dataset(self, dataset: str, data_dir: str | None) -> Dataset:
        name, where = self.where(dataset, data_dir)
        try:
            return load_data(name, where)
        except (ConfigError, DataError) as e:
            hint = "" if self.data_dir is not None else "; pass --data-dir if the data moved"
            raise type(e)(f"{e} (rebuilding the split{hint})") from e

    def relocated(self, trial: TrialConfig, device: str) -> TrialConfig:
        """``trial`` reading its data where it is now, on ``device`` (neither changes its key)."""
        dataset, data_dir = self.where(trial.dataset, trial.data_dir)
        return replace(trial, dataset=dataset, data_dir=data_dir, device_request=device)  # type: ignore[arg-type]

    def locate(self, row: Mapping[str, Any]) -> Member | AblationUnit:
        """The training (a :class:`Member`) or baseline unit that wrote ``row``.

        Raises ConfigError if the sweep file does not build it (edited since, or another sweep's row).
        """
        key = str(row["trial_key"])
        params = _params(row)
        if self.units is None:
            try:
                trial = build_trial(self.spec, params, int(row.get("seed") or 0), sample_shape=self._shape())
            except (ConfigError, TypeError, ValueError) as e:  # an edited params_json, or an edited file
                raise ConfigError(f"trial {key}: the sweep file does not build its configuration ({e})") from e
            if trial.key != key:
                raise ConfigError(f"trial {key}: the sweep's spec.yaml no longer builds this trial (it builds "
                                  f"{trial.key} from params {json.dumps(params, sort_keys=True)} and seed "
                                  f"{row.get('seed')}); cannot replay it")
            return Member(trial, key)
        unit = self.by_key.get(key)
        if unit is not None and unit.policy != "tuned":  # a tuned unit's rows are its inner trainings'
            return unit if unit.is_baseline else unit_member(unit)
        base, _, inner = key.rpartition("-")
        unit = self.by_key.get(base)
        if unit is None or unit.policy != "tuned" or not inner.isdigit() or int(inner) >= unit.budget:
            raise ConfigError(f"row {key}: no unit of the sweep's spec.yaml has this key; cannot replay it")
        trial = with_params(unit.trial, params)
        # the unit's key hashes its space, not the suggested values: the row's columns must be the trial's
        differ = sorted(c for c, v in trial.columns().items() if row.get(c) != v)
        if differ:
            raise ConfigError(f"row {key}: its {', '.join(differ)} differ from the inner training the sweep file "
                              "builds from its params_json; cannot replay it")
        return unit_member(unit, inner=int(inner), trial=trial)

    def order(self) -> dict[str, int]:
        """Row key → position in the sweep's plan (a bundle's members in the order it trained them);
        empty for tpe, whose trials are suggested while it runs."""
        if self.units is not None:
            return {u.key: i for i, u in enumerate(self.units)}
        if self.spec.search.algorithm == "tpe":
            return {}
        return {t.key: i for i, t in enumerate(enumerate_cells(self.spec, sample_shape=self._shape()))}


def _params(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's ``params_json`` (storage-provided): a bounded, strict JSON object."""
    text = row.get("params_json") or "{}"
    where = f"trial {row.get('trial_key')}: params_json"
    value = load_json_bounded(text, where, error=StorageError) if isinstance(text, str) else None
    if not isinstance(value, dict):
        raise StorageError(f"{where}: must be a JSON object")
    return value


def _device(row: Mapping[str, Any], requested: str | None) -> str:
    import torch

    recorded = row.get("device") if row.get("device") in ("cpu", "cuda") else "auto"
    device = requested if requested is not None else recorded
    if device not in DEVICES:
        raise ConfigError(f"--device: must be one of {', '.join(DEVICES)} (got {device!r})")
    if device == "cuda" and not torch.cuda.is_available():
        if requested is None:
            raise ConfigError(f"trial {row['trial_key']} trained on cuda and this machine has none: pass "
                              "--device cpu to replay it on the CPU (its numbers then agree only up to float rounding)")
        raise ConfigError("--device cuda: this machine has no CUDA device")
    return resolve_device(device)


def _notes(row: Mapping[str, Any], device: str) -> list[str]:
    notes = []
    if row.get("method") not in ("isoforest", "ocsvm") and row.get("device") not in (None, device):
        notes.append(f"the trial trained on {row.get('device')}: on {device} its numbers agree only up to float "
                     "rounding")
    if int(row.get("workers") or 1) > 1:
        notes.append(f"the trial trained data-parallel on {row.get('workers')} workers; a replay trains in one "
                     "process, so its numbers agree only up to float rounding")
    recorded, now = row.get("code_version"), code_version()
    if recorded and recorded != now:
        notes.append(f"the row was written by code {recorded}; this is {now}")
    return notes


def _version_notes(checkpoint: Mapping[str, Any] | None) -> list[str]:
    """A note if the row's model was trained with another torch than this one (its checkpoint says)."""
    import torch

    meta = (checkpoint or {}).get("meta")
    versions = meta.get("versions") if isinstance(meta, dict) else None
    trained = versions.get("torch") if isinstance(versions, dict) else None
    if isinstance(trained, str) and trained != torch.__version__:
        return [f"the model was trained with torch {trained}; this is torch {torch.__version__} (kernels may round "
                "differently)"]
    return []


def _bundle_rows(store: ResultStore, row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of the members that trained together with ``row``: its bundle, in the same Tune trial
    (a resumed bundle trains the members left in a new one)."""
    import pyarrow.compute as pc

    index = store.read_trials(["trial_key", "bundle", "trial_id"]).table
    run = index.column("trial_id")
    same_run = pc.is_null(run) if row.get("trial_id") is None else pc.equal(run, row["trial_id"])
    mine = index.filter(pc.and_(pc.equal(index.column("bundle"), row["bundle"]), same_run))
    keys = mine.column("trial_key").to_pylist() or [row["trial_key"]]
    return list(store.read_trials(keys=keys).table.to_pylist())


def _check_fingerprint(trial: TrialConfig, row: Mapping[str, Any]) -> SemiSupervisedSplit:
    """The trial's split, rebuilt; DataError if the row records another fingerprint (the data changed)."""
    from deepsad.data.splits import make_split

    split = make_split(load_data(trial.dataset, trial.data_dir), trial.protocol)
    recorded = row.get("fingerprint")
    if recorded is not None and split.fingerprint != recorded:
        raise DataError(f"{trial.dataset}: the rebuilt split of trial {row['trial_key']} has fingerprint "
                        f"{split.fingerprint[:16]} but the row records {str(recorded)[:16]}: the data is not the "
                        "data the sweep used; refusing to replay it")
    return split


def _autoencoders(sweep_dir: Storage, planned: Sequence[tuple[Mapping[str, Any], Member]],
                  splits: Sequence[SemiSupervisedSplit],
                  retrain: bool) -> tuple[dict[str, tuple[dict[str, Any], dict[str, Any]]], list[str]]:
    """The sweep's cached AEs that rows took (``cache_hit``), by the key the replay will look them up
    under; and notes on those it retrains instead."""
    hits = [(r, m, s) for (r, m), s in zip(planned, splits, strict=True)
            if r.get("cache_hit") and r.get("ae_key") and m.trial.ae_key is not None]
    if retrain:
        return {}, (["--retrain-ae: the autoencoders the rows took from the cache are pretrained again (by a "
                     "single trial and by a bundle they differ in the last bits)"] if hits else [])
    cache, out, notes = AECache(sweep_dir), {}, []
    for row, member, split in hits:
        source = str(row["ae_key"])
        try:
            got = cache.get(source)
        except (CheckpointError, StorageError) as e:
            notes.append(f"the cached autoencoder of trial {row['trial_key']} cannot be read ({e}); pretrained again")
            continue
        if got is None or not _taken_before(got[1], row):
            why = "is gone" if got is None else "was replaced after the trial finished"
            notes.append(f"the autoencoder trial {row['trial_key']} took from the cache {why}; pretrained again "
                         "(equal only if the trial's was pretrained the same way)")
            continue
        out[ae_cache_key(member.trial.ae_key or "", split.fingerprint)] = got
    return out, notes


def _taken_before(meta: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
    """Whether a cache entry existed before the row finished (a later one replaced what it took)."""
    created, finished = meta.get("created_at"), row.get("finished_at")
    if not isinstance(created, str) or not isinstance(finished, datetime):
        return True
    try:
        return datetime.fromisoformat(created) <= finished
    except (TypeError, ValueError):  # not ISO-8601, or naive
        return True


def _recorded_checkpoint(sweep_dir: Storage, key: str) -> dict[str, Any] | None:
    """The meta record of the row's model checkpoint (tensors' sha256, versions), if there is one."""
    try:
        where = checkpoint_location(sweep_dir, key)
        if not where.exists("meta.json"):
            return None
        record = load_json_bounded(where.read_bytes("meta.json"), f"{where.uri}/meta.json", error=CheckpointError)
    except DeepSADError:
        return None  # the metrics are the comparison; the weights are a bonus
    return record if isinstance(record, dict) else None


# ------------------------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Compared:
    """One compared value: a metric (or a baseline's chosen ``params_json``), recorded and replayed."""

    name: str
    recorded: Any
    replayed: Any
    tolerance: float = 0.0

    @property
    def difference(self) -> float | None:
        """replayed − recorded, for two numbers."""
        a, b = self.recorded, self.replayed
        if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
            return float(b) - float(a)
        return None

    @property
    def equal(self) -> bool:
        a, b, d = self.recorded, self.replayed, self.difference
        if d is None:
            return bool(a == b)
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(d) <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.name, "recorded": self.recorded, "replayed": self.replayed,
                "difference": self.difference, "equal": self.equal}


@dataclass(frozen=True)
class ReplayResult:
    """The replayed row's values against the recorded ones.

    ``weights``: ``identical`` or ``differ`` (the replayed model's tensors against the row's checkpoint),
    None without a recorded checkpoint (baselines have none).
    """

    plan: ReplayPlan
    compared: tuple[Compared, ...]
    replayed: dict[str, Any]
    weights: str | None
    notes: tuple[str, ...]
    #: a bundle's other members that finished: key → whether all their metrics are equal too
    fellows: dict[str, bool] = field(default_factory=dict)

    @property
    def differing(self) -> list[Compared]:
        return [c for c in self.compared if not c.equal]

    @property
    def equal(self) -> bool:
        return not self.differing

    def to_dict(self) -> dict[str, Any]:
        p = self.plan
        return {"sweep": p.sweep, "trial_key": p.key, "kind": p.kind, "method": p.row.get("method") or "deepsad",
                "device": p.device, "equal": self.equal, "differing": len(self.differing),
                "metrics": [c.to_dict() for c in self.compared], "weights": self.weights,
                "bundle_members": self.fellows if p.kind == "bundle" else None, "notes": list(self.notes)}


def run_replay(plan: ReplayPlan, *, tolerance: float = 0.0) -> ReplayResult:
    """Retrain what ``plan`` says in a scratch directory and compare with the row (see the module
    docstring). ``tolerance``: largest absolute difference of a metric that still counts as equal.

    Raises:
        ConfigError: a negative or non-finite tolerance.
    """
    if not (isinstance(tolerance, int | float) and math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"--tolerance: must be a finite number >= 0 (got {tolerance!r})")
    with tempfile.TemporaryDirectory(prefix="deepsad-replay-") as tmp:
        scratch = Storage.from_uri(str(Path(tmp) / "sweep"))
        ctx = RunContext(sweep=plan.sweep, storage_uri=scratch.uri, trial_id="replay",
                         checkpoint_interval_s=math.inf, report_interval_s=math.inf, sink=DiscardRows())
        cache = AECache(scratch)
        for key, (state, meta) in plan.autoencoders.items():
            cache.put(key, state, meta)
        rows = _train(plan, ctx)
        weights = _weights(plan, scratch)
    recorded = plan.row
    row = rows.get(plan.key) or next(iter(rows.values()))  # a relocated baseline's key is its data's
    names = [*METRICS, "params_json"] if plan.kind == "baseline" else list(METRICS)
    compared = _compare(names, recorded, row, tolerance)
    fellows = {str(r["trial_key"]): all(c.equal for c in _compare(names, r, rows.get(r["trial_key"], {}), tolerance))
               for r in plan.bundle_rows if r["trial_key"] != plan.key and r.get("status") == "finished"}
    notes = list(plan.notes)
    if row.get("status") != "finished":
        notes.append(f"the replayed training did not finish: {row.get('error')}")
    elif plan.baseline is None and bool(row.get("cache_hit")) != bool(recorded.get("cache_hit")):
        notes.append(f"the row's autoencoder {'came from' if recorded.get('cache_hit') else 'was not from'} the "
                     "cache; the replay's " + ("did" if row.get("cache_hit") else "did not"))
    return ReplayResult(plan, compared, row, weights, tuple(notes), fellows)


def _compare(names: Sequence[str], recorded: Mapping[str, Any], replayed: Mapping[str, Any],
             tolerance: float) -> tuple[Compared, ...]:
    return tuple(Compared(n, _value(n, recorded.get(n)), _value(n, replayed.get(n)), float(tolerance)) for n in names)


def _train(plan: ReplayPlan, ctx: RunContext) -> dict[str, dict[str, Any]]:
    """Run the plan's job in ``ctx``; its rows by key (a training that fails — e.g. diverges to NaN
    scores — gives a failed row: the row it replays finished, so it differs)."""
    reporter, lock = QuietReporter(), NoLock()
    try:
        if plan.baseline is not None:
            rows = BaselineJob(plan.baseline).run(reporter, ctx, lock)
        elif plan.kind == "bundle":
            rows = BundleJob(plan.members).run(reporter, ctx, lock)
        else:
            (member,) = plan.members
            rows = [train_member(member, reporter, ctx, lock, final=False)]
    except DataError as e:
        rows = [{"trial_key": plan.key, "status": "failed", "error": str(e)}]
    return {str(r["trial_key"]): r for r in rows}


def _value(name: str, value: Any) -> Any:
    """``params_json`` compared as the object it encodes (key order and spacing do not matter)."""
    if name == "params_json" and isinstance(value, str):
        try:
            return load_json_bounded(value, name, error=StorageError)
        except StorageError:
            return value
    return value


def _weights(plan: ReplayPlan, scratch: Storage) -> str | None:
    recorded = (plan.recorded_checkpoint or {}).get("tensors_sha256")
    if recorded is None or plan.baseline is not None:
        return None
    replayed = _recorded_checkpoint(scratch, plan.key)
    if replayed is None:
        return None
    return "identical" if replayed.get("tensors_sha256") == recorded else "differ"
