"""Choose the best configuration of a sweep (over seeds, on a validation metric) and pull its model.

A *configuration* is everything a trial ran with except its seed (the config columns of the result
store and ``params_json``). Configurations are ranked by the mean of a validation metric over their
finished seeds — never by one lucky trial, and never by a test metric (that would select on the test
set) — or, with ``by="lcb"``, by the lower bound of the mean's t interval (a configuration measured
on fewer or noisier seeds ranks lower; what a raced sweep, :mod:`orchestration.plan.racing`, wants).
A configuration that holds the best single seed of all but does not rank first is flagged *lucky*
(:func:`lucky`): it would win by one seed, not by its mean. A policy then says which seed's checkpoint
stands for the configuration: ``median`` (the lower median for an even count), ``best`` or
``mean-closest``.

:func:`pull` downloads that checkpoint into a local directory safely: into a temporary sibling first,
where every file is checked (regular files only, no key leaving the directory — on top of the
checks of :meth:`Storage.download_dir`) and the bundle is verified (sha256, kind), then swapped into
place (:mod:`orchestration.store.outputs`: an existing ``--to`` is replaced only with ``force``, and only if it
holds nothing but a pull's own files). ``selection.json`` records why this model.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deepsad.errors import CheckpointError, ConfigError, DeepSADError, StorageError
from deepsad.metrics import VALIDATION_METRICS
from orchestration.store.layout import sweep_location
from orchestration.store.outputs import OutputDir, output_path
from orchestration.store.results import ResultStore, check_trial_key
from orchestration.store.storage import Storage, safe_key

POLICIES: tuple[str, ...] = ("median", "best", "mean-closest")
#: What configurations are ranked by: the mean over seeds, or the lower bound of its t interval.
RANKINGS: tuple[str, ...] = ("mean", "lcb")
CONFIDENCE = 0.95
SELECTION_FILE = "selection.json"
#: What `checkpoint pull` writes into --to (and so what its --force may replace): the bundle and why.
PULL_OWNS: tuple[str, ...] = ("meta.json", "tensors.safetensors", SELECTION_FILE)
SELECTION_FORMAT = "deepsad-selection"

#: The result-store columns that, with ``params_json``, make a configuration (everything but the seed).
CONFIG_COLUMNS: tuple[str, ...] = (
    "dataset", "normal_classes", "known_anomaly_classes", "n_known_outlier_classes", "n_labeled_anomalies",
    "ratio_known_outlier", "ratio_pollution", "ratio_known_normal", "val_fraction", "net", "rep_dim", "eta",
    "lr", "epochs", "weight_decay", "batch_size", "milestones", "ae_lr", "ae_epochs", "ae_weight_decay", "bf16",
    "reference_compat",
)  # fmt: skip


@dataclass(frozen=True)
class SeedResult:
    """One finished trial of a configuration."""

    seed: int
    trial_key: str
    value: float


@dataclass(frozen=True)
class ConfigResult:
    """A configuration with its metric over seeds.

    Attributes:
        config: the :data:`CONFIG_COLUMNS` values plus ``params_json``.
        params: the searched values (``params_json`` decoded).
        seeds: its finished trials with a finite metric, by seed.
        mean: mean over ``seeds``; std: sample standard deviation (None for a single seed).
    """

    config: dict[str, Any]
    params: dict[str, Any]
    seeds: tuple[SeedResult, ...]

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("a configuration needs at least one seed")

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def mean(self) -> float:
        return statistics.fmean(s.value for s in self.seeds)

    @property
    def std(self) -> float | None:
        return statistics.stdev(s.value for s in self.seeds) if self.n > 1 else None

    @property
    def best(self) -> SeedResult:
        """Its best seed (ties: the lower seed)."""
        return min(self.seeds, key=lambda s: (-s.value, s.seed))

    def lower(self, confidence: float = CONFIDENCE) -> float:
        """The lower bound of the mean's t interval (-inf for a single seed: nothing bounds it)."""
        from orchestration.plan.racing import interval

        lo = interval([s.value for s in self.seeds], confidence)[1]
        return lo if lo is not None else -math.inf

    def score(self, by: str, confidence: float = CONFIDENCE) -> float:
        """What it is ranked by: ``mean`` or ``lcb`` (:data:`RANKINGS`)."""
        return self.mean if by == "mean" else self.lower(confidence)

    def pick(self, policy: str) -> SeedResult:
        """The seed that stands for this configuration under ``policy`` (ties: the lower seed).

        Raises ConfigError on an unknown policy.
        """
        by_value = sorted(self.seeds, key=lambda s: (s.value, s.seed))
        if policy == "median":
            return by_value[(self.n - 1) // 2]  # the lower median for even counts: a real seed's model
        if policy == "best":
            return min(self.seeds, key=lambda s: (-s.value, s.seed))
        if policy == "mean-closest":
            mean = self.mean
            return min(self.seeds, key=lambda s: (abs(s.value - mean), s.seed))
        raise ConfigError(f"--policy: must be one of {', '.join(POLICIES)} (got {policy!r})")


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is a validation metric; ConfigError (one line) otherwise."""
    if metric.startswith("test_"):
        raise ConfigError(
            f"--metric {metric}: test metrics never select a model (that leaks the test set); "
            f"use {' or '.join(VALIDATION_METRICS)}"
        )
    if metric not in VALIDATION_METRICS:
        raise ConfigError(f"--metric: must be one of {', '.join(VALIDATION_METRICS)} (got {metric!r})")
    return metric


def _config_of(row: Mapping[str, Any]) -> dict[str, Any]:
    return {**{c: row.get(c) for c in CONFIG_COLUMNS}, "params_json": row.get("params_json")}


def check_ranking(by: str) -> str:
    """``by`` if it is one of :data:`RANKINGS`; ConfigError (one line, naming ``--by``) otherwise."""
    if by not in RANKINGS:
        raise ConfigError(f"--by: must be one of {', '.join(RANKINGS)} (got {by!r})")
    return by


def lucky(ranked: Sequence[ConfigResult]) -> tuple[int, ConfigResult] | None:
    """``(rank index, configuration)`` of the one holding the best single seed of all, if it is not
    ranked first: it wins by its best seed, not by what it is ranked by."""
    if len(ranked) < 2:
        return None
    i, top = max(enumerate(ranked), key=lambda ic: (ic[1].best.value, -ic[0]))
    return (i, top) if i != 0 and top.best.value > ranked[0].best.value else None


def rank_configurations(
    rows: Sequence[Mapping[str, Any]], metric: str, *, min_seeds: int | None = None, by: str = "mean",
    confidence: float = CONFIDENCE,
) -> list[ConfigResult]:
    """Finished rows grouped by configuration, best first by ``by``: the mean over seeds, or the lower
    bound of its ``confidence`` t interval (``lcb``).

    Rows that are not ``finished`` or lack a finite ``metric`` are ignored. Only configurations with at
    least ``min_seeds`` seeds are ranked; ``None`` means as many as the best-covered configuration has
    (so a configuration whose other seeds failed cannot win on one lucky seed). Ties on the mean go to
    more seeds, then the smaller spread, then a stable order.

    Raises:
        ConfigError: a test or unknown metric, ``min_seeds < 1``.
    """
    check_metric(metric)
    check_ranking(by)
    if min_seeds is not None and min_seeds < 1:
        raise ConfigError(f"--min-seeds: must be >= 1 (got {min_seeds})")
    groups: dict[str, tuple[dict[str, Any], dict[int, SeedResult]]] = {}
    for row in rows:
        value = row.get(metric)
        if row.get("status") != "finished" or not isinstance(value, float | int) or not math.isfinite(value):
            continue
        config = _config_of(row)
        ident = json.dumps(config, sort_keys=True, default=str)
        seed = int(row.get("seed") or 0)
        _, seeds = groups.setdefault(ident, (config, {}))
        previous = seeds.get(seed)
        # one trial per (configuration, seed) by construction; keep the smaller key if a store has two
        if previous is None or str(row["trial_key"]) < previous.trial_key:
            seeds[seed] = SeedResult(seed, str(row["trial_key"]), float(value))
    ranked = []
    for ident, (config, seeds) in groups.items():
        params = _params(config.get("params_json"), f"trial {next(iter(seeds.values())).trial_key}")
        ranked.append((ident, ConfigResult(config, params, tuple(seeds[s] for s in sorted(seeds)))))
    need = min_seeds if min_seeds is not None else max((c.n for _, c in ranked), default=1)
    ranked = [(i, c) for i, c in ranked if c.n >= need]
    ranked.sort(key=lambda ic: (-ic[1].score(by, confidence), -ic[1].mean, -ic[1].n, ic[1].std or 0.0, ic[0]))
    return [c for _, c in ranked]


def _params(text: Any, where: str) -> dict[str, Any]:
    """A row's ``params_json`` (storage-provided): bounded, strict JSON object; StorageError if not."""
    from deepsad.jsonio import load_json_bounded

    if not text:
        return {}
    if not isinstance(text, str):
        raise StorageError(f"{where}: params_json must be a string (got {type(text).__name__})")
    value = load_json_bounded(text, f"{where}: params_json", error=StorageError)
    if not isinstance(value, dict):
        raise StorageError(f"{where}: params_json must be a JSON object")
    return value


def format_ranking(
    ranked: Sequence[ConfigResult], metric: str, *, top: int = 5, chosen: int = 0, by: str = "mean",
    confidence: float = CONFIDENCE,
) -> list[str]:
    """Lines of a table of the ``top`` configurations — rank, mean ± std, the lower bound, n, the
    searched values — saying what they are ranked by, and a line flagging a lucky one (:func:`lucky`)."""
    what = "mean over seeds" if by == "mean" else f"lower bound of the {confidence:.0%} interval of the mean"
    lines = [f"{'':2}{'rank':>4}  {metric + ' mean ± std':<22} {'lower':>7} {'n':>3}  params"]
    for i, c in enumerate(ranked[:top]):
        spread = f"± {c.std:.4f}" if c.std is not None else "± —"
        low = f"{c.lower(confidence):.4f}" if c.n > 1 else "—"
        params = " ".join(f"{k}={_short(v)}" for k, v in sorted(c.params.items())) or "(no searched params)"
        mark = "→ " if i == chosen else "  "
        lines.append(f"{mark}{i + 1:>4}  {c.mean:.4f} {spread:<15} {low:>7} {c.n:>3}  {params}")
    if len(ranked) > top:
        lines.append(f"  ({len(ranked) - top} more configurations)")
    lines.append(f"ranked by {metric}: {what}")
    flagged = lucky(ranked)
    if flagged is not None:
        i, c = flagged
        lines.append(f"lucky: rank {i + 1} holds the best single seed (seed {c.best.seed}: {metric} {c.best.value:.4f}, "
                     f"trial {c.best.trial_key}) but not the best {'mean' if by == 'mean' else 'lower bound'}: "
                     "one seed would have picked it")  # fmt: skip
    return lines


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------------------- pulling


@dataclass(frozen=True)
class PullResult:
    """What :func:`pull` chose and wrote."""

    ranked: list[ConfigResult]
    chosen: ConfigResult
    picked: SeedResult
    directory: Path
    selection: dict[str, Any]
    n_unranked: int = 0  # configurations left out for having fewer seeds than asked


def sweep_dir(name: str, storage: str | None) -> Storage:
    """The directory of sweep ``name`` under ``storage`` (default ``runs/sweeps``)."""
    return sweep_location(name, storage)


def pull(
    sweep: Storage,
    dest: Path | str,
    *,
    metric: str = "val_auroc",
    policy: str = "median",
    force: bool = False,
    min_seeds: int | None = None,
    top: int = 5,
    by: str = "mean",
) -> PullResult:
    """Choose the best configuration of the sweep at ``sweep`` and download one of its checkpoints.

    ``dest`` receives the model bundle (``meta.json``, ``tensors.safetensors``) and ``selection.json``.

    Raises:
        ConfigError: a test/unknown metric or an unknown policy.
        StorageError: no results, ``dest`` not empty without ``force``, a key that would leave
            ``dest``, a link, or a failed download.
        CheckpointError: the chosen trial has no checkpoint, or it fails verification.
    """
    check_metric(metric)
    if policy not in POLICIES:
        raise ConfigError(f"--policy: must be one of {', '.join(POLICIES)} (got {policy!r})")
    output = OutputDir(
        output_path(dest, "--to"), command="checkpoint pull", flag="--to", owns=PULL_OWNS, force=force,
        what="the model",
    )
    output.check()
    dest = output.path
    check_ranking(by)
    rows, ranked = _ranked_rows(sweep, metric, min_seeds, by)
    chosen = ranked[0]
    picked = chosen.pick(policy)
    key = check_trial_key(picked.trial_key)
    row = next(r for r in rows if r["trial_key"] == key)
    # The canonical location, not the row's `checkpoint` URI: a row must not steer where we read.
    source = sweep.child("checkpoints", key)
    if not source.exists("meta.json"):
        raise CheckpointError(f"trial {key}: no model checkpoint at {source.uri}")
    with output.staging() as tmp:
        _download_verified(source, tmp, row)
        from deepsad.checkpoint import read_bundle_meta

        model_meta = read_bundle_meta(tmp)["meta"]  # verified above; bounded strict JSON
        selection = _selection(
            sweep, row, chosen, picked, metric, policy, min_seeds, ranked[:top], model_meta
        )
        flagged = lucky(ranked)
        selection.update(ranked_by=by, confidence=CONFIDENCE if by == "lcb" else None,
                         lucky=None if flagged is None else {"rank": flagged[0] + 1, "params": flagged[1].params,
                                                             "seed": flagged[1].best.seed,
                                                             "value": flagged[1].best.value})  # fmt: skip
        try:
            (tmp / SELECTION_FILE).write_text(
                json.dumps(selection, indent=1, allow_nan=False) + "\n", encoding="utf-8"
            )
        except OSError as e:
            raise StorageError(f"--to {dest}: cannot write ({e.strerror or e})") from e
    n_unranked = len(rank_configurations(rows, metric, min_seeds=1)) - len(ranked)
    return PullResult(ranked, chosen, picked, dest, selection, n_unranked)


def _ranked_rows(
    sweep: Storage, metric: str, min_seeds: int | None, by: str = "mean"
) -> tuple[list[dict[str, Any]], list[ConfigResult]]:
    """The sweep's trial rows and its configurations ranked on ``metric`` (:func:`rank_configurations`).

    Raises:
        StorageError: no trial results, or no configuration with ``min_seeds`` finished seeds.
    """
    rows = ResultStore(sweep).trials().to_pylist()
    if not rows:
        raise StorageError(f"sweep {sweep.uri}: no trial results (is the name or --storage right?)")
    ranked = rank_configurations(rows, metric, min_seeds=min_seeds, by=by)
    if not ranked:
        n_finished = sum(1 for r in rows if r.get("status") == "finished")
        raise StorageError(
            f"sweep {sweep.uri}: no configuration has {min_seeds or 1}+ finished seeds with {metric} "
            f"({n_finished} finished trials of {len(rows)})"
        )
    return rows, ranked


def _download_verified(source: Storage, tmp: Path, row: Mapping[str, Any]) -> None:
    from deepsad.model import DeepSADModel

    _refuse_local_links(source)
    source.download_dir(tmp)
    for path in sorted(tmp.rglob("*")):
        rel = path.relative_to(tmp).as_posix()
        safe_key(rel, what=f"file in checkpoint {source.uri}")
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise StorageError(f"checkpoint {source.uri}: {rel} is not a regular file; refusing it")
        if not path.resolve().is_relative_to(tmp.resolve()):
            raise StorageError(f"checkpoint {source.uri}: {rel} escapes the download directory")
    model = DeepSADModel.load(tmp)  # sha256, size and kind; never unpickles
    for field in ("trial_key", "fingerprint"):
        recorded, expected = model.meta.get(field), row.get(field)
        if recorded is not None and expected is not None and recorded != expected:
            raise CheckpointError(
                f"checkpoint {source.uri}: its {field} is {recorded!r} but the trial row says {expected!r}"
            )


def _refuse_local_links(source: Storage) -> None:
    """On a local store a symlink inside the checkpoint could make the download read (and a listing
    walk) anything on this machine; object stores have no links."""
    if not getattr(source, "is_local", False):
        return
    root = Path(source.path())
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            if (Path(dirpath) / name).is_symlink():
                rel = (Path(dirpath) / name).relative_to(root).as_posix()
                raise StorageError(f"checkpoint {source.uri}: {rel} is a symbolic link; refusing it")


# --------------------------------------------------------------------------------------- selection.json


def _selection(
    sweep: Storage,
    row: Mapping[str, Any],
    chosen: ConfigResult,
    picked: SeedResult,
    metric: str,
    policy: str,
    min_seeds: int | None,
    top: Sequence[ConfigResult],
    model_meta: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "format": SELECTION_FORMAT,
        "format_version": 1,
        "sweep": row.get("sweep") or sweep.uri.rstrip("/").rsplit("/", 1)[-1],
        "sweep_uri": sweep.uri,
        "trial_key": picked.trial_key,
        "seed": picked.seed,
        "checkpoint": sweep.child("checkpoints", picked.trial_key).uri,
        "metric": metric,
        "policy": policy,
        "mean": chosen.mean,
        "std": chosen.std,
        "n": chosen.n,
        "min_seeds": min_seeds,
        "values": [{"seed": s.seed, "trial_key": s.trial_key, "value": s.value} for s in chosen.seeds],
        "config": chosen.config,
        "params": chosen.params,
        "metrics": {k: row.get(k) for k in (*VALIDATION_METRICS, "test_auroc", "test_ap")},
        "fingerprint": row.get("fingerprint"),
        "split": split_source(sweep, row, model_meta),
        "ranking": [
            {"rank": i + 1, "mean": c.mean, "std": c.std, "lower": c.lower() if c.n > 1 else None, "n": c.n,
             "params": c.params}
            for i, c in enumerate(top)
        ],
        "pulled_at": datetime.now(UTC).isoformat(),
    }


def split_source(sweep: Storage, row: Mapping[str, Any], model_meta: Mapping[str, Any]) -> dict[str, Any]:
    """How to rebuild the trial's split: ``{"dataset", "data_dir", "protocol", "from"}``.

    Preferably from the submitted sweep file (``spec.yaml`` + ``submission.json``), accepted only if the
    trial it builds has this row's key; else from the row's columns (``data_dir`` unknown, the
    protocol's ``test_fraction`` at its default). Either way the export checks the rebuilt split's
    fingerprint against the model's, so a wrong guess fails loudly rather than silently.
    """
    seed = int(row.get("seed") or 0)
    try:
        return _split_from_spec(sweep, row, seed, model_meta)
    except (DeepSADError, KeyError, TypeError, ValueError, json.JSONDecodeError, UnicodeDecodeError):
        pass  # an old, edited or missing sweep file: fall back to the row
    protocol = {
        "normal_classes": row.get("normal_classes"),
        "known_anomaly_classes": row.get("known_anomaly_classes"),
        "n_known_outlier_classes": row.get("n_known_outlier_classes"),
        "n_labeled_anomalies": row.get("n_labeled_anomalies"),
        "ratio_known_outlier": row.get("ratio_known_outlier"),
        "ratio_pollution": row.get("ratio_pollution"),
        "ratio_known_normal": row.get("ratio_known_normal"),
        "val_fraction": row.get("val_fraction"),
        "seed": seed,
    }
    protocol = {
        k: v
        for k, v in protocol.items()
        if v is not None or k in ("known_anomaly_classes", "n_labeled_anomalies")
    }
    return {"dataset": row.get("dataset"), "data_dir": None, "protocol": protocol, "from": "row"}


def _split_from_spec(
    sweep: Storage, row: Mapping[str, Any], seed: int, model_meta: Mapping[str, Any]
) -> dict[str, Any]:
    from dataclasses import asdict

    from deepsad.jsonio import load_json_bounded
    from orchestration.plan.cells import build_trial
    from orchestration.spec.load import parse_spec

    text = sweep.read_bytes("spec.yaml").decode("utf-8")
    submission = (
        load_json_bounded(sweep.read_bytes("submission.json"), "submission.json", error=StorageError)
        if sweep.exists("submission.json")
        else {}
    )
    if not isinstance(submission, dict):
        raise StorageError("submission.json: expected a JSON object")
    spec = parse_spec(text, str(submission.get("source", "spec.yaml")), base_dir=submission.get("base_dir"))
    params = _params(row.get("params_json"), f"trial {row.get('trial_key')}")
    shape = tuple(int(v) for v in model_meta["net"]["input_shape"])
    trial = build_trial(spec, params, seed, sample_shape=shape)
    if trial.key != row.get("trial_key"):
        raise ValueError("the sweep file no longer builds this trial")
    protocol = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(trial.protocol).items()}
    return {"dataset": trial.dataset, "data_dir": trial.data_dir, "protocol": protocol, "from": "spec"}
