"""Deployable bundles of a pulled model (TorchScript or ONNX), and loading any model for scoring.

An export directory is self-contained::

    scorer.pt | scorer.onnx   raw inputs -> anomaly scores (preprocessing inside), dynamic batch
    export.json               what it is: input spec, threshold + FPR, provenance, sha256 of the file
    model/                    the source model bundle (safetensors + JSON), to rebuild without the artefact
    README.md                 how to load it and why loading it runs no pickled code

The decision threshold is calibrated on the model's *validation* split, rebuilt from the data, the
protocol and the seed — recorded at pull time (``selection.json``) for a pulled model, or by
``deepsad train`` in the model's own ``meta.json`` (``"split"``) —; the rebuilt split's fingerprint must
equal the model's (else the data changed and the threshold would be meaningless). The threshold is
computed from the exported artefact's own scores, so "at most ``fpr`` of the validation normals
score above it" holds for exactly the scores a deployment computes; the artefact must also reproduce
:meth:`DeepSADModel.score_raw` within 1e-5 relative, or the export fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import platform
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepsad.errors import CheckpointError, ConfigError, DataError, StorageError
from orchestration.store.outputs import OutputDir

if TYPE_CHECKING:
    from deepsad.deploy import InputSpec
    from deepsad.model import DeepSADModel

EXPORT_FILE = "export.json"
EXPORT_FORMAT = "deepsad-export"
ARTEFACTS: dict[str, str] = {"torchscript": "scorer.pt", "onnx": "scorer.onnx"}
SELECTION_FILE = "selection.json"  # orchestration.deploy.registry.SELECTION_FILE
#: What `export` writes into --out (and so all that its --force may replace).
EXPORT_OWNS: tuple[str, ...] = (*ARTEFACTS.values(), EXPORT_FILE, "README.md", "model/**")
PARITY_RTOL = 1e-5
_PARITY_ATOL = 1e-7  # scores are squared distances >= 0; this only matters for scores of ~0


def check_format(fmt: str) -> str:
    if fmt not in ARTEFACTS:
        raise ConfigError(f"--format: must be one of {', '.join(ARTEFACTS)} (got {fmt!r})")
    return fmt


def check_fpr(fpr: float) -> float:
    """``fpr`` as a float if it is a finite number in [0, 1) (0: the largest validation normal score);
    ConfigError naming ``--fpr`` otherwise."""
    if isinstance(fpr, bool) or not isinstance(fpr, float | int) or not (math.isfinite(fpr) and 0.0 <= fpr < 1.0):
        raise ConfigError(f"--fpr: must be a number in [0, 1) (got {fpr!r})")
    return float(fpr)


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float if it is finite; ConfigError naming ``--threshold`` otherwise (with
    ``nan`` nothing would ever be flagged, with ``inf`` nothing finite)."""
    if isinstance(threshold, bool) or not isinstance(threshold, float | int) or not math.isfinite(threshold):
        raise ConfigError(f"--threshold: must be a finite number (got {threshold!r})")
    return float(threshold)


# ------------------------------------------------------------------------------------- model dirs


def model_bundle_dir(directory: Path) -> Path:
    """The model bundle of a pulled directory (``DIR``) or of ``deepsad train --out`` (``DIR/model``).

    Raises CheckpointError if neither holds a ``meta.json``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"--model {directory}: no such directory")
    for candidate in (directory, directory / "model"):
        if (candidate / "meta.json").is_file():
            return candidate
    raise CheckpointError(
        f"{directory}: not a model directory (no meta.json; pull one with `deepsad checkpoint pull`)"
    )


def read_json(path: Path) -> dict[str, Any]:
    """A strict-JSON object file, bounded in size and depth (:mod:`deepsad.jsonio`).

    Raises CheckpointError (one line) if unreadable, too large, too deep, not strict JSON or not an
    object.
    """
    from deepsad.jsonio import read_json_file

    value = read_json_file(path, error=CheckpointError)
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


#: Where a ``deepsad train`` model records how to rebuild its split (see :func:`calibration_source`).
TRAIN_SPLIT_KEY = "split"


def calibration_source(directory: Path, model: DeepSADModel) -> dict[str, Any]:
    """What threshold calibration needs to rebuild the validation split, as a ``selection.json``-like
    dict with at least ``"split"`` (``dataset``, ``data_dir``, ``protocol`` with the seed, ``from``).

    A pulled model has ``selection.json`` in ``directory``; a ``deepsad train --out`` directory (or
    its ``model/``) has the split in the model's ``meta.json``.

    Raises:
        CheckpointError: neither is there, or ``selection.json`` is malformed.
    """
    path = Path(directory) / SELECTION_FILE
    if path.is_file():
        return read_json(path)
    split = model.meta.get(TRAIN_SPLIT_KEY)
    if isinstance(split, dict):
        protocol = split.get("protocol")
        return {
            "source": "deepsad train",
            "seed": protocol.get("seed") if isinstance(protocol, dict) else None,
            "metrics": model.meta.get("metrics"),
            "split": split,
        }
    raise CheckpointError(
        f"{directory}: no {SELECTION_FILE} and no recorded split; the threshold is calibrated on the "
        "validation split, whose protocol a pulled model (`deepsad checkpoint pull`) or a model from "
        "`deepsad train` records"
    )


@dataclass(frozen=True)
class Validation:
    """The rebuilt validation part: raw inputs ``x`` (N, ...) and labels ``(N,)`` 0 normal / 1 anomaly."""

    x: np.ndarray
    labels: np.ndarray
    fingerprint: str


def rebuild_validation(
    model: DeepSADModel, selection: dict[str, Any], data_dir: str | None = None
) -> Validation:
    """Rebuild the model's split from ``selection["split"]`` (dataset, data_dir, protocol with seed).

    Raises:
        ConfigError/DataError: the data cannot be loaded (the message says to pass ``--data-dir``)
            or the rebuilt split's fingerprint differs from the model's (the data changed).
        CheckpointError: ``selection`` has no usable split description.
    """
    from deepsad.data.sources import load_dataset
    from deepsad.data.splits import Protocol, make_split

    try:
        split = selection["split"]
        p = dict(split["protocol"])
        for name in ("normal_classes", "known_anomaly_classes"):
            p[name] = None if p.get(name) is None else tuple(p[name])
        protocol = Protocol(**p)
        dataset = str(split["dataset"])
    except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as e:
        raise CheckpointError(f"{SELECTION_FILE}: no usable split description ({e})") from e
    where = data_dir if data_dir is not None else split.get("data_dir")
    if where is not None and not isinstance(where, str):
        raise CheckpointError(f"{SELECTION_FILE}: split.data_dir must be a string (got {where!r})")
    try:
        data = load_dataset(dataset, where)
    except (ConfigError, DataError) as e:
        raise type(e)(f"{e} (rebuilding the validation split; pass --data-dir if the data moved)") from e
    rebuilt = make_split(data, protocol)
    expected = model.meta.get("fingerprint")
    if rebuilt.fingerprint != expected:
        raise DataError(
            f"{dataset}: the rebuilt split has fingerprint {rebuilt.fingerprint[:16]} but the model was "
            f"trained on {str(expected)[:16]}: the data changed (or the protocol recorded "
            f"from the {split.get('from', '?')} is not the model's); refusing to calibrate on it"
        )
    val = rebuilt.val
    raw = data.x_train[val.indices]  # the validation part is always carved from the training pool
    return Validation(np.ascontiguousarray(raw), np.asarray(val.labels), rebuilt.fingerprint)


@dataclass(frozen=True)
class Calibration:
    """A threshold at a false-positive rate on the validation normals (flag: ``score > threshold``)."""

    threshold: float
    fpr: float
    n_normal: int
    n_anomalous: int
    false_positives: int
    tpr: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": "validation",
            "threshold": self.threshold,
            "fpr": self.fpr,
            "n_normal": self.n_normal,
            "n_anomalous": self.n_anomalous,
            "false_positives": self.false_positives,
            "fpr_achieved": self.false_positives / self.n_normal,
            "tpr": self.tpr,
        }


def calibrate(scores: np.ndarray, labels: np.ndarray, fpr: float) -> Calibration:
    """The threshold of :func:`deepsad.metrics.threshold_at_fpr` on the normal scores, with its counts."""
    from deepsad.metrics import threshold_at_fpr

    normal = scores[labels == 0]
    threshold = threshold_at_fpr(normal, fpr)
    anomalous = scores[labels == 1]
    tpr = float(np.mean(anomalous > threshold)) if anomalous.size else None
    return Calibration(
        threshold, fpr, int(normal.size), int(anomalous.size), int((normal > threshold).sum()), tpr
    )


# ------------------------------------------------------------------------------------- exporting


@dataclass(frozen=True)
class ExportResult:
    out: Path
    metadata: dict[str, Any]


def export_model(
    model_dir: Path,
    out: Path | None = None,
    *,
    fmt: str,
    fpr: float = 0.05,
    data_dir: str | None = None,
    force: bool = False,
) -> ExportResult:
    """Export the model in ``model_dir`` — pulled (``deepsad checkpoint pull``) or trained
    (``deepsad train --out``) — as a self-contained bundle (see the module docstring).

    ``out`` defaults to ``<model_dir>-<fmt>`` beside it.

    Raises:
        ConfigError: bad format or fpr. CheckpointError: no model / nothing that records its split
        (:func:`calibration_source`), or the export does not reproduce the model's scores. DataError: the data changed. StorageError: ``out``
        may not be written (:mod:`orchestration.store.outputs`: not empty without ``force``, or holding files
        an export did not write), or a write failed.
    """
    from deepsad.deploy import InputSpec
    from deepsad.model import DeepSADModel

    check_format(fmt)
    check_fpr(fpr)
    model_dir = Path(model_dir).expanduser()
    bundle = model_bundle_dir(model_dir)
    out = (
        Path(out).expanduser() if out is not None else model_dir.parent / f"{model_dir.resolve().name}-{fmt}"
    )
    if out.resolve() == model_dir.resolve() or bundle.resolve().is_relative_to(out.resolve()):
        raise StorageError(f"--out {out}: must not contain the model directory {model_dir}")
    output = OutputDir(out, command="export", flag="--out", owns=EXPORT_OWNS, force=force, what="the export")
    output.check()
    model = DeepSADModel.load(bundle)
    selection = calibration_source(model_dir, model)
    val = rebuild_validation(model, selection, data_dir)
    spec = InputSpec.of_model(model)
    with output.staging() as tmp:
        try:
            artefact = tmp / ARTEFACTS[fmt]
            raw = spec.conform(val.x, "validation split")
            reference = model.score_raw(raw)
            writer = _write_torchscript if fmt == "torchscript" else _write_onnx
            scores = writer(model, artefact, raw, lambda s: calibrate(s, val.labels, fpr).threshold)
            max_rel = _check_parity(scores, reference, fmt)
            cal = calibrate(scores, val.labels, fpr)
            meta = _metadata(model, selection, spec, cal, fmt, artefact, max_rel, int(raw.shape[0]))
            shutil.copytree(bundle, tmp / "model", ignore=shutil.ignore_patterns(SELECTION_FILE, "*.pt", "*.pkl"))
            (tmp / EXPORT_FILE).write_text(json.dumps(meta, indent=1, allow_nan=False) + "\n", encoding="utf-8")
            (tmp / "README.md").write_text(_readme(meta), encoding="utf-8")
        except OSError as e:
            raise StorageError(f"--out {out}: cannot write the export ({e.strerror or e})") from e
    return ExportResult(out, meta)


def _embedded(threshold: float) -> str:
    """What travels inside the artefact itself (export.json holds the rest)."""
    return json.dumps({"format": EXPORT_FORMAT, "threshold": threshold, "flag": "score > threshold"})


def _write_torchscript(
    model: DeepSADModel, path: Path, raw: np.ndarray, threshold_of: Callable[[np.ndarray], float]
) -> np.ndarray:
    import torch

    from deepsad.deploy import build_scorer, score_array

    with _quiet_jit():
        scripted = torch.jit.script(build_scorer(model))
        threshold = threshold_of(score_array(scripted, raw))
        torch.jit.save(scripted, str(path), _extra_files={"deepsad.json": _embedded(threshold)})
        # the file is what a deployment runs: measure parity (and the threshold) on it, reloaded
        reloaded = torch.jit.load(str(path), map_location="cpu")
    return score_array(reloaded, raw)


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """TorchScript is deprecated in favour of torch.export (torch >= 2.10) but is still the
    self-contained, pickle-free format torch itself loads; its warning says nothing actionable here."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\..* is deprecated", category=DeprecationWarning
        )
        yield


def _write_onnx(
    model: DeepSADModel, path: Path, raw: np.ndarray, threshold_of: Callable[[np.ndarray], float]
) -> np.ndarray:
    import onnx
    import torch

    from deepsad.deploy import build_scorer

    scorer = build_scorer(model)
    example = torch.from_numpy(raw[: min(2, raw.shape[0])])
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript-based exporter: no onnxscript dependency, and it handles these plain nets
        warnings.simplefilter("ignore")
        torch.onnx.export(
            scorer,
            (example,),
            buffer,  # type: ignore[arg-type]  # file-likes work with dynamo=False
            dynamo=False,
            input_names=["x"],
            output_names=["score"],
            dynamic_axes={"x": {0: "batch"}, "score": {0: "batch"}},
            opset_version=17,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    threshold = threshold_of(_onnx_session_scores(proto.SerializeToString(), raw))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "deepsad", _embedded(threshold)
    data = proto.SerializeToString()
    path.write_bytes(data)
    return _onnx_session_scores(path.read_bytes(), raw)


def _onnx_session_scores(data: bytes, raw: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return _run_session(session, raw, batch_size)


def _run_session(session: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    out = [
        np.asarray(session.run(None, {"x": x[i : i + batch_size]})[0], dtype=np.float32)
        for i in range(0, x.shape[0], batch_size)
    ]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _check_parity(scores: np.ndarray, reference: np.ndarray, fmt: str) -> float:
    err = np.abs(scores.astype(np.float64) - reference.astype(np.float64))
    rel = err / np.maximum(np.abs(reference.astype(np.float64)), 1e-30)
    if not np.all(err <= PARITY_RTOL * np.abs(reference) + _PARITY_ATOL):
        raise CheckpointError(
            f"{fmt} export does not reproduce the model's scores (max relative error {rel.max():.2e} > {PARITY_RTOL})"
        )
    return float(rel.max()) if rel.size else 0.0


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    import torch

    import deepsad

    out = {
        "deepsad": deepsad.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    for name in ("onnx", "onnxruntime"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out


def _metadata(
    model: DeepSADModel,
    selection: dict[str, Any],
    spec: InputSpec,
    cal: Calibration,
    fmt: str,
    artefact: Path,
    max_rel: float,
    n_parity: int,
) -> dict[str, Any]:
    from deepsad.checkpoint import sha256_file

    m = model.meta
    return {
        "format": EXPORT_FORMAT,
        "format_version": 1,
        "export_format": fmt,
        "file": artefact.name,
        "sha256": sha256_file(artefact),
        "bytes": artefact.stat().st_size,
        "input": {**spec.to_dict(), "name": "x", "batch": "dynamic"},
        "output": {"name": "score", "dtype": "float32", "shape": ["batch"], "meaning": "||phi(x) - c||^2"},
        "threshold": cal.threshold,
        "fpr": cal.fpr,
        "flag": "score > threshold",
        "calibration": cal.to_dict(),
        "parity": {"max_relative_error": max_rel, "n": n_parity, "reference": "DeepSADModel.score_raw"},
        "source": selection.get("source", "deepsad checkpoint pull"),
        "sweep": selection.get("sweep", m.get("sweep")),
        "trial_key": selection.get("trial_key", m.get("trial_key")),
        "seed": selection.get("seed"),
        "dataset": m.get("dataset"),
        "fingerprint": m.get("fingerprint"),
        "config": m.get("config"),
        "params": m.get("params", selection.get("params")),
        "metrics": selection.get("metrics", m.get("metrics")),
        "selection": {k: selection.get(k) for k in ("metric", "policy", "mean", "std", "n", "values")},
        "versions": {"trained_with": m.get("versions"), "exported_with": _versions()},
        "exported_at": datetime.now(UTC).isoformat(),
    }


def _readme(meta: dict[str, Any]) -> str:
    spec = meta["input"]
    shape = ", ".join(str(s) for s in spec["shape"])
    load = (
        "import torch\nm = torch.jit.load('scorer.pt')\nscores = m(torch.from_numpy(x))  # x: "
        if meta["export_format"] == "torchscript"
        else "import onnxruntime as ort\ns = ort.InferenceSession('scorer.onnx')\nscores = s.run(None, {'x': x})[0]  # x: "
    )
    origin = (
        f"Trial `{meta['trial_key']}` of sweep `{meta['sweep']}`"
        if meta.get("sweep") is not None
        else f"A model from `{meta.get('source')}`"
    )
    return f"""# Deep SAD scorer ({meta["export_format"]})

{origin} ({meta["dataset"]}). Input `x`: {spec["dtype"]}
array of shape (N, {shape}) — **raw** values ({"pixels 0..255" if spec["kind"] == "image" else "features as in the training data"});
the preprocessing is inside. Output `score`: (N,) float32; flag an anomaly when
`score > {meta["threshold"]!r}` (calibrated at FPR {meta["fpr"]} on the validation split).

```python
{load}{spec["dtype"]} (N, {shape})
```

Or: `deepsad score --model <this dir> INPUT`. `model/` holds the source weights (safetensors + JSON).

## Why loading this runs no pickled code

* `scorer.onnx` is a protobuf graph; ONNX Runtime parses it and runs only ONNX operators.
* `scorer.pt` is a TorchScript archive. `torch.jit.load` does not use Python's `pickle`: its C++
  deserializer resolves only TorchScript types and tensors (a `GLOBAL` such as `os.system` is
  refused as an unknown type) and compiles the archive's TorchScript code, which can call torch
  operators only. `torch.load` (which would unpickle) is never used.
* `model/tensors.safetensors` is raw tensor bytes behind a JSON header; `meta.json` is strict JSON.
* `export.json` records the sha256 of the artefact; `deepsad score` checks it before loading.
"""


# ------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class LoadedScorer:
    """A model ready to score raw inputs: a pulled model dir or an export dir.

    ``threshold`` is the export's (None for a model dir: see :func:`calibrate_model_dir`).
    """

    input: InputSpec
    threshold: float | None
    fpr: float | None
    kind: str  # "model", "torchscript" or "onnx"
    directory: Path
    run: Callable[[np.ndarray, int], np.ndarray]
    model: DeepSADModel | None = None

    def score(self, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """Scores ``(N,)`` float32 of raw inputs already conformed to :attr:`input`."""
        if batch_size < 1:
            raise ConfigError(f"--batch-size: must be >= 1 (got {batch_size})")
        return self.run(x, batch_size)


def load_scorer(directory: Path, device: str = "cpu") -> LoadedScorer:
    """Load an export dir (``export.json``) or a model dir, verified, for scoring on ``device``.

    Nothing here unpickles: safetensors + JSON, a TorchScript archive (``torch.jit.load``) or ONNX.

    Raises:
        CheckpointError: not a model/export dir, a malformed ``export.json``, a sha256 mismatch,
            or an artefact that does not load (e.g. a pickle put in its place).
        ConfigError: ``device`` is cuda and this machine (or ONNX Runtime) has none.
    """
    directory = Path(directory).expanduser()
    if (directory / EXPORT_FILE).is_file():
        return _load_export(directory, device)
    import torch

    from deepsad.deploy import InputSpec, build_scorer, score_array
    from deepsad.model import DeepSADModel

    model = DeepSADModel.load(model_bundle_dir(directory))
    module = build_scorer(model, device)
    return LoadedScorer(
        InputSpec.of_model(model),
        None,
        None,
        "model",
        directory,
        lambda x, b: score_array(module, x, batch_size=b, device=torch.device(device)),
        model,
    )


def _load_export(directory: Path, device: str) -> LoadedScorer:
    from deepsad.checkpoint import sha256_file
    from deepsad.deploy import InputSpec, score_array

    meta = read_json(directory / EXPORT_FILE)
    where = directory / EXPORT_FILE
    fmt = meta.get("export_format")
    if meta.get("format") != EXPORT_FORMAT or meta.get("format_version") != 1 or fmt not in ARTEFACTS:
        raise CheckpointError(f"{where}: not a deepsad export (format {meta.get('format')!r}, {fmt!r})")
    if meta.get("file") != ARTEFACTS[fmt]:  # never a path taken from the file
        raise CheckpointError(f"{where}: file must be {ARTEFACTS[fmt]!r} (got {meta.get('file')!r})")
    artefact = directory / ARTEFACTS[fmt]
    if artefact.is_symlink() or not artefact.is_file():
        raise CheckpointError(f"{directory}: missing {artefact.name} (or it is a link)")
    digest = sha256_file(artefact)
    if digest != meta.get("sha256"):
        raise CheckpointError(f"{artefact}: sha256 mismatch: expected {meta.get('sha256')}, actual {digest}")
    spec = InputSpec.from_dict(meta.get("input"))
    threshold, fpr = meta.get("threshold"), meta.get("fpr")
    if not isinstance(threshold, float | int) or isinstance(threshold, bool) or not math.isfinite(threshold):
        raise CheckpointError(f"{where}: threshold must be a finite number (got {threshold!r})")
    if fmt == "torchscript":
        import torch

        try:
            with _quiet_jit():
                module = torch.jit.load(str(artefact), map_location=device).eval()
        except (RuntimeError, ValueError, OSError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"{artefact}: not a TorchScript archive ({first[:200]})") from e

        def run(x: np.ndarray, b: int) -> np.ndarray:
            return score_array(module, x, batch_size=b, device=device)
    else:
        session = _onnx_session(artefact, device)

        def run(x: np.ndarray, b: int) -> np.ndarray:
            return _run_session(session, x, b)

    return LoadedScorer(spec, float(threshold), fpr if isinstance(fpr, float) else None, fmt, directory, run)


def _onnx_session(artefact: Path, device: str) -> Any:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(
                "--device cuda: this ONNX Runtime has no CUDA provider (install onnxruntime-gpu)"
            )
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(artefact), providers=providers)
    except Exception as e:  # ONNX Runtime raises its own exception types for a malformed model
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{artefact}: not a valid ONNX model ({first[:200]})") from e


def calibrate_model_dir(scorer: LoadedScorer, fpr: float, data_dir: str | None = None) -> Calibration:
    """A threshold for a model dir (pulled, or from ``deepsad train``), computed now on its rebuilt
    validation split.

    Raises as :func:`rebuild_validation` and :func:`calibration_source` (nothing records the split:
    pass --threshold, or score with an export).
    """
    assert scorer.model is not None
    check_fpr(fpr)
    val = rebuild_validation(scorer.model, calibration_source(scorer.directory, scorer.model), data_dir)
    x = scorer.input.conform(val.x, "validation split")
    return calibrate(scorer.score(x), val.labels, check_fpr(fpr))
