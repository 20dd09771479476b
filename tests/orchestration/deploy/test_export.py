"""Exports (TorchScript, ONNX): parity with the PyTorch model, the validation threshold, safe loading."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deepsad.data.idx import read_idx
from deepsad.data.sources import load_dataset
from deepsad.data.splits import Protocol, make_split
from deepsad.deploy import InputSpec, build_scorer, score_array
from deepsad.errors import CheckpointError, ConfigError, DataError, StorageError
from deepsad.model import DeepSADModel
from deepsad.networks import default_net_config
from deepsad.training import OptimConfig, TrainConfig, train
from orchestration.deploy.export import ARTEFACTS, EXPORT_FILE, export_model, load_scorer, rebuild_validation

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")

DIGITS_PROTOCOL = Protocol(
    normal_classes=(0, 1, 2, 3, 4),
    known_anomaly_classes=(5,),
    n_labeled_anomalies=10,
    ratio_pollution=0.05,
    val_fraction=0.2,
    seed=1,
)
MNIST_PROTOCOL = Protocol(
    normal_classes=(0,), ratio_pollution=0.05, val_fraction=0.25, test_fraction=0.3, seed=2
)


def _protocol_json(p: Protocol) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(p).items()}


def train_pulled_dir(
    dest: Path, dataset: str, protocol: Protocol, data_dir: str | None = None
) -> DeepSADModel:
    """Train one Deep SAD epoch (no pretraining) and lay it out as `checkpoint pull` does."""
    data = load_dataset(dataset, data_dir)
    split = make_split(data, protocol)
    net = default_net_config(data.name, tuple(split.train.x.shape[1:]))
    cfg = TrainConfig(
        net=net, sad=OptimConfig(lr=1e-3, epochs=1, milestones=(), batch_size=64), ae=None, seed=protocol.seed
    )
    model = train(split, cfg).model
    model.meta.update(sweep="unit", trial_key="t" + split.fingerprint[:15])
    model.save(dest)
    selection = {
        "format": "deepsad-selection",
        "format_version": 1,
        "sweep": "unit",
        "trial_key": model.meta["trial_key"],
        "seed": protocol.seed,
        "metric": "val_auroc",
        "policy": "median",
        "mean": 0.5,
        "std": None,
        "n": 1,
        "values": [],
        "metrics": {},
        "params": {},
        "split": {
            "dataset": dataset,
            "data_dir": data_dir,
            "protocol": _protocol_json(protocol),
            "from": "spec",
        },
    }
    (dest / "selection.json").write_text(json.dumps(selection))
    return DeepSADModel.load(dest)


def mnist_slice(shared_data: Path, dest: Path, n: int = 800) -> Path:
    """The first ``n`` MNIST test images as a user .npz (X uint8 (N, 1, 28, 28), y)."""
    x = read_idx(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz")[:n]
    y = read_idx(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz")[:n]
    path = dest / "mnist_slice.npz"
    np.savez(path, X=x[:, None], y=y.astype(np.int64))
    return path


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("digits") / "pulled"
    train_pulled_dir(d, "digits", DIGITS_PROTOCOL)
    return d


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    npz = mnist_slice(shared_data, root)
    d = root / "pulled"
    train_pulled_dir(d, str(npz), MNIST_PROTOCOL)
    return d


def _raw_inputs(model_dir: Path) -> tuple[DeepSADModel, np.ndarray, np.ndarray]:
    model = DeepSADModel.load(model_dir)
    selection = json.loads((model_dir / "selection.json").read_text())
    val = rebuild_validation(model, selection)
    return model, InputSpec.of_model(model).conform(val.x, "val"), val.labels


def _artefact_scores(out: Path, x: np.ndarray) -> np.ndarray:
    meta = json.loads((out / EXPORT_FILE).read_text())
    if meta["export_format"] == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out / "scorer.onnx"), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {"x": x})[0])
    return score_array(torch.jit.load(str(out / "scorer.pt")), x)


def test_raw_scorer_equals_score_raw(digits_dir: Path, mnist_dir: Path) -> None:
    for d in (digits_dir, mnist_dir):
        model, x, _ = _raw_inputs(d)
        np.testing.assert_array_equal(score_array(build_scorer(model), x, batch_size=37), model.score_raw(x))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("which", ["digits", "mnist"])
def test_export_parity_and_threshold(
    fmt: str, which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    model_dir = request.getfixturevalue(f"{which}_dir")
    out = tmp_path / "export"
    fpr = 0.1
    result = export_model(model_dir, out, fmt=fmt, fpr=fpr)
    model, x, labels = _raw_inputs(model_dir)
    # raw inputs in, scores out, as the PyTorch model scores them (batches of any size)
    for batch in (x[:1], x[:7], x):
        got, want = _artefact_scores(out, batch), model.score_raw(batch)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    meta = json.loads((out / EXPORT_FILE).read_text())
    assert meta == result.metadata
    assert meta["input"]["dtype"] == ("uint8" if which == "mnist" else "float64")
    # at most fpr of the validation normals score above the threshold
    normal = _artefact_scores(out, x[labels == 0])
    assert np.mean(normal > meta["threshold"]) <= fpr
    assert meta["calibration"]["false_positives"] <= int(fpr * normal.size)
    assert meta["fingerprint"] == model.meta["fingerprint"] and meta["trial_key"] == model.meta["trial_key"]
    assert set(os.listdir(out)) == {EXPORT_FILE, ARTEFACTS[fmt], "model", "README.md"}
    # the bundled source model is the same model
    np.testing.assert_array_equal(DeepSADModel.load(out / "model").score_raw(x[:20]), model.score_raw(x[:20]))
    loaded = load_scorer(out)
    assert loaded.threshold == meta["threshold"] and loaded.kind == fmt
    np.testing.assert_allclose(loaded.score(x, 5), model.score_raw(x), rtol=1e-5, atol=1e-7)


def test_export_refuses_changed_data(mnist_dir: Path, tmp_path: Path) -> None:
    selection = json.loads((mnist_dir / "selection.json").read_text())
    src = Path(selection["split"]["dataset"])
    with np.load(src) as z:
        x, y = z["X"].copy(), z["y"]
    x[0, 0, 0, 0] ^= 1  # one pixel differs
    moved = tmp_path / "mnist_slice.npz"
    np.savez(moved, X=x, y=y)
    copy = tmp_path / "pulled"
    copy.mkdir()
    for name in ("meta.json", "tensors.safetensors"):
        (copy / name).write_bytes((mnist_dir / name).read_bytes())
    selection["split"]["dataset"] = str(moved)
    (copy / "selection.json").write_text(json.dumps(selection))
    with pytest.raises(DataError, match="the data changed"):
        export_model(copy, tmp_path / "out", fmt="onnx")
    assert not (tmp_path / "out").exists()


def test_export_refuses_wrong_protocol_and_missing_selection(digits_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pulled"
    copy.mkdir()
    for name in ("meta.json", "tensors.safetensors"):
        (copy / name).write_bytes((digits_dir / name).read_bytes())
    with pytest.raises(CheckpointError, match=r"no selection\.json"):
        export_model(copy, tmp_path / "out", fmt="torchscript")
    selection = json.loads((digits_dir / "selection.json").read_text())
    selection["split"]["protocol"]["seed"] = 7  # another seed draws another split
    (copy / "selection.json").write_text(json.dumps(selection))
    with pytest.raises(DataError, match="fingerprint"):
        export_model(copy, tmp_path / "out", fmt="torchscript")


def test_export_never_overwrites_without_force(digits_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(StorageError, match="--force"):
        export_model(digits_dir, out, fmt="torchscript")
    assert (out / "keep.txt").read_text() == "mine"
    # --force replaces only an export's own files: a user's file makes it refuse, and stays (issue 12, item 3)
    with pytest.raises(StorageError, match=r"keep\.txt.*did not write"):
        export_model(digits_dir, out, fmt="torchscript", force=True)
    assert (out / "keep.txt").read_text() == "mine" and not (out / "scorer.pt").exists()
    (out / "keep.txt").unlink()
    export_model(digits_dir, out, fmt="torchscript")
    export_model(digits_dir, out, fmt="onnx", force=True)  # an earlier export is replaced whole
    assert (out / "scorer.onnx").is_file() and not (out / "scorer.pt").exists()
    with pytest.raises(StorageError, match="must not contain"):
        export_model(digits_dir, digits_dir.parent, fmt="onnx", force=True)


class _Payload:
    """Unpickling this creates a marker file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _plant(out: Path, name: str, data: bytes) -> None:
    """Replace the artefact and fix export.json's sha256, as an attacker with write access would."""
    import hashlib

    (out / name).write_bytes(data)
    meta = json.loads((out / EXPORT_FILE).read_text())
    meta["sha256"] = hashlib.sha256(data).hexdigest()
    (out / EXPORT_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_pickle_payload_as_model_file_is_refused(fmt: str, digits_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export_model(digits_dir, out, fmt=fmt)
    marker = tmp_path / "PWNED"
    name = ARTEFACTS[fmt]
    torch_zip = tmp_path / "payload.pt"
    torch.save({"x": _Payload(marker)}, torch_zip)  # a zip archive with data.pkl inside
    for payload in (pickle.dumps(_Payload(marker)), torch_zip.read_bytes()):
        _plant(out, name, payload)
        with pytest.raises(CheckpointError):
            load_scorer(out)
        assert not marker.exists()
    # and a model bundle whose tensors file is a pickle (its sha256 recorded) does not load either
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    data = pickle.dumps(_Payload(marker))
    (bundle / "tensors.safetensors").write_bytes(data)
    record = json.loads((digits_dir / "meta.json").read_text())
    import hashlib

    record.update(tensors_sha256=hashlib.sha256(data).hexdigest(), tensors_bytes=len(data))
    (bundle / "meta.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError):
        load_scorer(bundle)
    assert not marker.exists()


def test_tampered_export_json_is_refused(digits_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export_model(digits_dir, out, fmt="onnx")
    original = json.loads((out / EXPORT_FILE).read_text())
    for change, match in (
        ({"file": "../../scorer.onnx"}, "file must be"),
        ({"sha256": "0" * 64}, "sha256 mismatch"),
        ({"format": "other"}, "not a deepsad export"),
        ({"threshold": "x"}, "threshold"),
    ):
        (out / EXPORT_FILE).write_text(json.dumps({**original, **change}))
        with pytest.raises(CheckpointError, match=match):
            load_scorer(out)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_parity_check_refuses_a_scorer_that_does_not_match_the_model(
    fmt: str, digits_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12: no test showed the parity check can fail. Here the module that gets scripted/traced
    has its centre c moved by 0.1 % — the artefact then scores differently from the model it claims to
    be — and export refuses it and leaves nothing behind."""
    import deepsad.deploy

    real = deepsad.deploy.build_scorer

    def drifted(model: DeepSADModel, device: Any = "cpu") -> Any:
        scorer = real(model, device)
        with torch.no_grad():
            scorer.c.mul_(1.001)
        return scorer

    monkeypatch.setattr(deepsad.deploy, "build_scorer", drifted)
    out = tmp_path / "export"
    with pytest.raises(CheckpointError, match=rf"{fmt} export does not reproduce the model's scores"):
        export_model(digits_dir, out, fmt=fmt)
    assert not out.exists() and os.listdir(tmp_path) == []
    monkeypatch.setattr(deepsad.deploy, "build_scorer", real)
    export_model(digits_dir, out, fmt=fmt)  # the same export with the true module passes


def test_parity_tolerance_boundary() -> None:
    from orchestration.deploy.export import PARITY_RTOL, _check_parity

    reference = np.array([1.0, 2.0, 0.5], dtype=np.float32)
    assert _check_parity(reference * (1 + PARITY_RTOL / 4), reference, "onnx") < PARITY_RTOL
    with pytest.raises(CheckpointError, match="max relative error"):
        _check_parity(reference * (1 + 4 * PARITY_RTOL), reference, "onnx")
    with pytest.raises(CheckpointError):
        _check_parity(np.array([np.nan, 2.0, 0.5], dtype=np.float32), reference, "onnx")


def test_export_of_a_train_out_directory_calibrates_on_its_recorded_split(
    digits_dir: Path, tmp_path: Path
) -> None:
    """Issue 12, item 10: `deepsad train --out DIR` records the split in the model's meta; export (of
    DIR or DIR/model) rebuilds the validation part from it, checks the fingerprint, calibrates."""
    from orchestration.deploy.export import calibration_source

    run = tmp_path / "run"
    model = DeepSADModel.load(digits_dir)
    selection = json.loads((digits_dir / "selection.json").read_text())
    model.meta["split"] = {**selection["split"], "from": "deepsad train run"}
    for key in ("sweep", "trial_key"):  # what `checkpoint pull` adds; a train run has neither
        model.meta.pop(key)
    model.save(run / "model")
    source = calibration_source(run, DeepSADModel.load(run / "model"))
    assert source["split"]["protocol"]["seed"] == DIGITS_PROTOCOL.seed and source["source"] == "deepsad train"
    pulled = export_model(digits_dir, tmp_path / "pulled-export", fmt="torchscript").metadata
    for src in (run, run / "model"):
        meta = export_model(src, tmp_path / f"e-{src.name}", fmt="torchscript").metadata
        assert meta["threshold"] == pulled["threshold"] and meta["source"] == "deepsad train"
        assert meta["calibration"] == pulled["calibration"]
    assert "A model from `deepsad train`" in (tmp_path / "e-run" / "README.md").read_text()
    # a recorded split that does not build the model's split is refused, as for a pulled model
    model.meta["split"]["protocol"]["seed"] = 7
    model.save(tmp_path / "other" / "model")
    with pytest.raises(DataError, match="fingerprint"):
        export_model(tmp_path / "other", tmp_path / "e-other", fmt="torchscript")


def test_hostile_export_json_is_one_error(digits_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export_model(digits_dir, out, fmt="onnx")
    original = (out / EXPORT_FILE).read_text()
    for text, match in (
        ('{"a": ' * 10_000 + "1" + "}" * 10_000, "nested deeper than"),  # was a RecursionError
        (original.rstrip()[:-1] + ', "threshold": 1e999}', "out of range"),  # inf via an overflowing literal
        (original.rstrip()[:-1] + ', "threshold": 0.5}', "duplicate key 'threshold'"),
    ):
        (out / EXPORT_FILE).write_text(text)
        with pytest.raises(CheckpointError, match=match) as e:
            load_scorer(out)
        assert "\n" not in str(e.value)


def test_fpr_and_threshold_must_be_finite() -> None:
    from orchestration.deploy.export import check_fpr, check_threshold

    for bad in (float("nan"), float("inf"), -0.1, 1.0, True):
        with pytest.raises(ConfigError, match=r"^--fpr: must be a number in \[0, 1\)"):
            check_fpr(bad)
    assert check_fpr(0) == 0.0 and check_fpr(0.05) == 0.05  # 0: the largest validation normal score
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ConfigError, match=r"^--threshold: must be a finite number"):
            check_threshold(bad)
    assert check_threshold(-1) == -1.0
