"""Choosing a configuration over seeds, the seed policies, and pulling its checkpoint safely."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deepsad.data.splits import Preprocessing
from deepsad.errors import CheckpointError, ConfigError, IntegrityError, StorageError
from deepsad.model import DeepSADModel
from deepsad.networks import NetConfig, build_encoder
from orchestration.deploy.registry import (
    CONFIG_COLUMNS,
    SELECTION_FILE,
    SeedResult,
    format_ranking,
    lucky,
    pull,
    rank_configurations,
)
from orchestration.store.results import TRIAL_SCHEMA, ResultStore
from orchestration.store.storage import Storage

BASE: dict[str, Any] = {
    "sweep": "unit", "dataset": "digits", "normal_classes": [0], "known_anomaly_classes": [1],
    "n_known_outlier_classes": 1, "n_labeled_anomalies": 5, "ratio_known_outlier": 0.0, "ratio_pollution": 0.1,
    "ratio_known_normal": 0.0, "val_fraction": 0.2, "net": "mlp", "rep_dim": 4, "eta": 1.0, "lr": 1e-3,
    "epochs": 3, "weight_decay": 1e-6, "batch_size": 32, "milestones": [2], "ae_lr": None, "ae_epochs": None,
    "ae_weight_decay": None, "bf16": False, "reference_compat": False,
}  # fmt: skip


def row(
    key: str, seed: int, value: float | None, *, eta: float = 1.0, status: str = "finished", **extra: Any
) -> dict[str, Any]:
    return {
        **BASE,
        "trial_key": key,
        "seed": seed,
        "status": status,
        "eta": eta,
        "params_json": json.dumps({"eta": eta}, sort_keys=True),
        "val_auroc": value,
        "val_ap": value,
        "test_auroc": 0.5,
        "test_ap": 0.5,
        **extra,
    }


# Configuration A is steady (mean .81); B has the single best trial (.99) but a mean of .7333.
STEADY = [row("a0", 0, 0.80, eta=1.0), row("a1", 1, 0.82, eta=1.0), row("a2", 2, 0.81, eta=1.0)]
LUCKY = [row("b0", 0, 0.99, eta=2.0), row("b1", 1, 0.60, eta=2.0), row("b2", 2, 0.61, eta=2.0)]


def test_mean_over_seeds_beats_a_single_lucky_seed() -> None:
    ranked = rank_configurations(LUCKY + STEADY, "val_auroc")
    assert [c.params["eta"] for c in ranked] == [1.0, 2.0]
    best = ranked[0]
    assert best.n == 3 and best.mean == pytest.approx(0.81) and best.std == pytest.approx(0.01)
    assert [s.seed for s in best.seeds] == [0, 1, 2]
    lines = format_ranking(ranked, "val_auroc")
    assert lines[1].startswith("→") and "0.8100 ± 0.0100" in lines[1] and "eta=1" in lines[1]


def test_a_winner_by_its_best_seed_only_is_flagged_lucky() -> None:
    ranked = rank_configurations(LUCKY + STEADY, "val_auroc")
    assert lucky(ranked) == (1, ranked[1]) and ranked[1].best == SeedResult(0, "b0", 0.99)
    lines = format_ranking(ranked, "val_auroc")
    assert lines[-2] == "ranked by val_auroc: mean over seeds"
    assert lines[-1].startswith("lucky: rank 2 holds the best single seed (seed 0: val_auroc 0.9900, trial b0)")
    assert lucky(rank_configurations(STEADY, "val_auroc")) is None


def test_the_lower_confidence_bound_ranks_a_noisy_or_thinly_seeded_configuration_lower() -> None:
    # C: mean .83 over 2 seeds far apart; A (STEADY): mean .81 over 3 close seeds
    noisy = [row("c0", 0, 0.90, eta=3.0), row("c1", 1, 0.76, eta=3.0)]
    by_mean = rank_configurations(noisy + STEADY, "val_auroc", min_seeds=2)
    by_lcb = rank_configurations(noisy + STEADY, "val_auroc", min_seeds=2, by="lcb")
    assert [c.params["eta"] for c in by_mean] == [3.0, 1.0]
    assert [c.params["eta"] for c in by_lcb] == [1.0, 3.0]
    # A's bound by hand: .81 - t(0.975, 2) · 0.01 / √3
    assert by_lcb[0].lower() == pytest.approx(0.81 - 4.302652729911275 * 0.01 / 3**0.5)
    lines = format_ranking(by_lcb, "val_auroc", by="lcb")
    assert lines[-2] == "ranked by val_auroc: lower bound of the 95% interval of the mean"
    assert lines[-1].startswith("lucky: rank 2 holds the best single seed (seed 0: val_auroc 0.9000, trial c0) "
                                "but not the best lower bound")
    with pytest.raises(ConfigError, match=r"^--by: must be one of mean, lcb \(got 'median'\)$"):
        rank_configurations(STEADY, "val_auroc", by="median")


def test_policies_pick_a_seed_of_the_chosen_configuration() -> None:
    best = rank_configurations(STEADY, "val_auroc")[0]
    assert best.pick("median") == SeedResult(2, "a2", 0.81)
    assert best.pick("best") == SeedResult(1, "a1", 0.82)
    assert best.pick("mean-closest").trial_key == "a2"
    values = [0.5, 0.125, 0.375, 0.25]  # exact in binary: mean .3125, and .375/.25 tie exactly for it
    even = rank_configurations([row(f"e{s}", s, v) for s, v in enumerate(values)], "val_auroc")[0]
    assert even.pick("median").value == 0.25  # the lower median: a real seed's model
    assert even.pick("mean-closest") == SeedResult(2, "e2", 0.375)  # the tie goes to the lower seed
    with pytest.raises(ConfigError, match="--policy"):
        best.pick("luckiest")


def test_unfinished_and_incomplete_configurations_do_not_win() -> None:
    rows = [
        *STEADY,
        row("c0", 0, 0.95, eta=3.0),
        row("c1", 1, None, eta=3.0, status="failed"),
        row("c2", 2, 0.97, eta=3.0, status="running"),
        row("d0", 0, None, eta=4.0),
        row("d1", 1, float("nan"), eta=4.0),
    ]
    ranked = rank_configurations(rows, "val_auroc")
    assert [c.params["eta"] for c in ranked] == [1.0]  # c has one finished seed of three
    assert [c.params["eta"] for c in rank_configurations(rows, "val_auroc", min_seeds=1)] == [3.0, 1.0]
    with pytest.raises(ConfigError, match="--min-seeds"):
        rank_configurations(rows, "val_auroc", min_seeds=0)


def test_configuration_is_more_than_the_searched_params() -> None:
    rows = [row("a0", 0, 0.8), row("a1", 1, 0.8, epochs=50)]  # same params_json, other epochs
    assert len(rank_configurations(rows, "val_auroc", min_seeds=1)) == 2


def test_test_metrics_are_refused() -> None:
    for metric in ("test_auroc", "test_ap"):
        with pytest.raises(ConfigError, match="test metrics never select") as e:
            rank_configurations(STEADY, metric)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="one of val_auroc, val_ap"):
        rank_configurations(STEADY, "loss")


def test_config_columns_are_the_trial_columns_but_the_seed() -> None:
    from deepsad.data.splits import Protocol
    from deepsad.training import TrainConfig
    from orchestration.plan.trial import TrialConfig

    trial = TrialConfig(
        "digits", None, Protocol(seed=3), TrainConfig(NetConfig("mlp", 4, (64,), (8,)), seed=3), seed=3
    )
    assert set(CONFIG_COLUMNS) == set(trial.columns()) - {"seed"}
    assert set(CONFIG_COLUMNS) <= set(TRIAL_SCHEMA.names)


# ------------------------------------------------------------------------------------------ pulling


def tiny_model(trial_key: str, fingerprint: str = "f" * 64) -> DeepSADModel:
    cfg = NetConfig("mlp", 2, (3,), (4,))
    prep = Preprocessing(
        "standard_minmax", {"mean": np.zeros(3), "scale": np.ones(3), "min": np.zeros(3), "range": np.ones(3)}
    )
    state = {k: v.clone() for k, v in build_encoder(cfg).state_dict().items()}
    return DeepSADModel(
        cfg,
        state,
        torch.tensor([0.1, -0.2]),
        1.0,
        prep,
        {"trial_key": trial_key, "fingerprint": fingerprint, "dataset": "digits"},
    )


def make_store(root: Path, rows: list[dict[str, Any]]) -> Storage:
    sweep = Storage.from_uri(root).child("unit")
    store = ResultStore(sweep)
    for r in rows:
        local = root / "staging" / r["trial_key"]
        tiny_model(r["trial_key"]).save(local)
        ckpt = sweep.child("checkpoints", r["trial_key"])
        ckpt.upload_dir(local)
        store.write_trial({**r, "checkpoint": ckpt.uri, "fingerprint": "f" * 64})
    return sweep


def test_pull_writes_the_bundle_and_selection(tmp_path: Path) -> None:
    sweep = make_store(tmp_path, LUCKY + STEADY)
    dest = tmp_path / "pulled"
    result = pull(sweep, dest, policy="median")
    assert result.picked.trial_key == "a2"
    assert sorted(os.listdir(dest)) == ["meta.json", SELECTION_FILE, "tensors.safetensors"]
    assert DeepSADModel.load(dest).meta["trial_key"] == "a2"
    sel = json.loads((dest / SELECTION_FILE).read_text())
    assert sel["trial_key"] == "a2" and sel["policy"] == "median" and sel["metric"] == "val_auroc"
    assert sel["n"] == 3 and sel["mean"] == pytest.approx(0.81) and sel["std"] == pytest.approx(0.01)
    assert [v["value"] for v in sel["values"]] == [0.80, 0.82, 0.81]
    assert sel["config"]["eta"] == 1.0 and sel["params"] == {"eta": 1.0}
    assert sel["split"]["from"] == "row" and sel["split"]["protocol"]["seed"] == 2  # no spec.yaml here
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pulled")]  # temp dir cleaned


def test_pull_never_overwrites_without_force(tmp_path: Path) -> None:
    sweep = make_store(tmp_path, STEADY)
    dest = tmp_path / "pulled"
    dest.mkdir()
    (dest / "meta.json").write_text("mine")
    with pytest.raises(StorageError, match="--force"):
        pull(sweep, dest)
    assert (dest / "meta.json").read_text() == "mine"
    pull(sweep, dest, force=True, policy="best")
    assert DeepSADModel.load(dest).meta["trial_key"] == "a1"
    with pytest.raises(StorageError, match="not a directory"):
        pull(sweep, dest / "meta.json")


def test_pull_reads_the_canonical_checkpoint_not_the_rows_uri(tmp_path: Path) -> None:
    sweep = make_store(tmp_path, STEADY)
    ResultStore(sweep).write_trial(
        {**STEADY[2], "checkpoint": str(tmp_path / "elsewhere"), "fingerprint": "f" * 64}
    )
    assert pull(sweep, tmp_path / "pulled").picked.trial_key == "a2"


def _only_in(tmp_path: Path, allowed: set[str]) -> None:
    """Nothing was created next to the store but what the test expects."""
    assert {p.name for p in tmp_path.iterdir()} <= allowed


def test_encoded_dot_key_in_checkpoint_is_refused(tmp_path: Path) -> None:
    sweep = make_store(tmp_path, STEADY)
    ckpt = Path(sweep.path("checkpoints", "a2"))
    (ckpt / "%2e%2e").mkdir()
    (ckpt / "%2e%2e" / "evil").write_text("x")
    with pytest.raises(StorageError, match="unsafe segment"):
        pull(sweep, tmp_path / "pulled")
    _only_in(tmp_path, {"unit", "staging"})


def test_symlink_in_checkpoint_is_refused(tmp_path: Path) -> None:
    sweep = make_store(tmp_path, STEADY)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("s3cr3t")
    os.symlink(secret, Path(sweep.path("checkpoints", "a2")) / "link")
    with pytest.raises(StorageError, match="symbolic link"):
        pull(sweep, tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()


@pytest.mark.parametrize("evil", ["../../escaped", "/tmp/abs-escaped", "%2e%2e/escaped", "a/../../escaped"])
def test_forged_manifest_cannot_write_outside(evil: str, tmp_path: Path) -> None:
    sweep = make_store(tmp_path, STEADY)
    ckpt = Path(sweep.path("checkpoints", "a2"))
    manifest = json.loads((ckpt / "MANIFEST.json").read_text())
    manifest["files"].append({"path": evil, "size": 1, "sha256": "0" * 64})
    (ckpt / "MANIFEST.json").write_text(json.dumps(manifest))
    dest = tmp_path / "d1" / "d2" / "pulled"
    with pytest.raises(StorageError, match=r"unsafe segment|must be relative"):
        pull(sweep, dest)
    assert not (tmp_path / "d1" / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert not Path("/tmp/abs-escaped").exists() and not dest.exists()


def test_a_download_that_plants_a_link_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = make_store(tmp_path, STEADY)
    original = Storage.download_dir

    def planting(self: Storage, local: Path, *parts: str) -> Path:
        out = original(self, local, *parts)
        os.symlink("/etc", Path(local) / "etc")
        return out

    monkeypatch.setattr(Storage, "download_dir", planting)
    with pytest.raises(StorageError, match="not a regular file"):
        pull(sweep, tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()


def test_tampered_or_pickled_checkpoint_is_refused(tmp_path: Path) -> None:
    sweep = make_store(tmp_path, STEADY)
    ckpt = Path(sweep.path("checkpoints", "a2"))
    tensors = ckpt / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-1] + b"\x00")
    with pytest.raises(IntegrityError):
        pull(sweep, tmp_path / "pulled")
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    # a consistent forgery: the pickle's sha256 in meta.json, uploaded with a fresh manifest
    forged = tmp_path / "forged"
    tiny_model("a2").save(forged)
    data = pickle.dumps(Payload())
    (forged / "tensors.safetensors").write_bytes(data)
    record = json.loads((forged / "meta.json").read_text())
    record.update(tensors_sha256=hashlib.sha256(data).hexdigest(), tensors_bytes=len(data))
    (forged / "meta.json").write_text(json.dumps(record))
    sweep.child("checkpoints", "a2").upload_dir(forged)
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        pull(sweep, tmp_path / "pulled")
    assert not marker.exists() and not (tmp_path / "pulled").exists()


def test_a_swapped_checkpoint_is_refused(tmp_path: Path) -> None:
    sweep = make_store(tmp_path, STEADY)
    tiny_model("a1").save(tmp_path / "other")
    sweep.child("checkpoints", "a2").upload_dir(tmp_path / "other")
    with pytest.raises(CheckpointError, match="trial_key"):
        pull(sweep, tmp_path / "pulled")


def test_pull_errors(tmp_path: Path) -> None:
    empty = Storage.from_uri(tmp_path).child("nothing")
    with pytest.raises(StorageError, match="no trial results"):
        pull(empty, tmp_path / "p")
    sweep = make_store(tmp_path, STEADY)
    sweep.delete("checkpoints", "a2")
    with pytest.raises(CheckpointError, match="no model checkpoint"):
        pull(sweep, tmp_path / "p")
    with pytest.raises(ConfigError, match="test metrics"):
        pull(sweep, tmp_path / "p", metric="test_auroc")


def test_hostile_json_from_storage_is_one_error(tmp_path: Path) -> None:
    """Issue 12, item 4: JSON that storage provides is bounded — a deeply nested params_json in a row
    was a RecursionError; a hostile submission.json only loses the spec as the split's source."""
    deep = '{"eta": ' * 5_000 + "1" + "}" * 5_000
    with pytest.raises(StorageError, match=r"trial a0: params_json: JSON nested deeper than") as e:
        rank_configurations([row("a0", 0, 0.8, params_json=deep)], "val_auroc")
    assert "\n" not in str(e.value)
    with pytest.raises(StorageError, match="duplicate key 'eta'"):
        rank_configurations([row("a0", 0, 0.8, params_json='{"eta": 1, "eta": 2}')], "val_auroc")
    sweep = make_store(tmp_path, STEADY)
    sweep.write_bytes(b"name: unit\n", "spec.yaml")
    sweep.write_bytes(("[" * 100_000 + "]" * 100_000).encode(), "submission.json")
    result = pull(sweep, tmp_path / "p")
    assert result.selection["split"]["from"] == "row"
