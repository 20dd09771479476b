"""Raw inputs → Deep SAD anomaly scores in one torch module, for exports and for batch scoring.

:class:`RawScorer` folds the fitted preprocessing, the network and the centre ``c`` into a single
``nn.Module`` that maps *raw* inputs (uint8 images ``(N, C, H, W)`` or raw feature rows ``(N, D)``) to
scores ``||φ(preprocess(x)) - c||²``. It is written so that ``torch.jit.script`` and the ONNX exporter
accept it, and it computes exactly what :meth:`deepsad.model.DeepSADModel.score_raw` computes: images
are cast to float32 and divided by 255; tabular rows are standardised and min-max scaled in float64
(as the numpy preprocessing does) and cast to float32 once.

:class:`InputSpec` says what one raw sample looks like, so that inputs can be checked (one clear
error line) before they reach a network. Pure torch + numpy: no orchestration imports.
"""

from __future__ import annotations

import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from deepsad.data.idx import read_idx
from deepsad.data.tabular import is_header_row, is_number  # noqa: F401  (is_header_row: re-exported)
from deepsad.errors import CheckpointError, ConfigError, DataError
from deepsad.model import DeepSADModel
from deepsad.objective import squared_distance

InputKind = Literal["image", "tabular"]
_DTYPES: dict[str, str] = {"image": "uint8", "tabular": "float64"}


@dataclass(frozen=True)
class InputSpec:
    """The raw input a scorer accepts.

    Attributes:
        kind: ``"image"`` (uint8 pixels 0..255) or ``"tabular"`` (raw feature values).
        shape: one sample: ``(C, H, W)`` or ``(D,)``.
        dtype: what the module's input tensor holds: ``"uint8"`` for images, ``"float64"`` for rows.

    Raises:
        CheckpointError: an unknown kind, a dtype that does not fit the kind, or a bad shape.
    """

    kind: InputKind
    shape: tuple[int, ...]
    dtype: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _DTYPES:
            raise CheckpointError(f"input spec: unknown kind {self.kind!r} (image or tabular)")
        dtype = self.dtype or _DTYPES[self.kind]
        if dtype != _DTYPES[self.kind]:
            raise CheckpointError(f"input spec: {self.kind} inputs are {_DTYPES[self.kind]}, not {dtype}")
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != (3 if self.kind == "image" else 1) or min(shape, default=0) < 1:
            raise CheckpointError(f"input spec: bad {self.kind} sample shape {list(shape)}")
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "shape", shape)

    @classmethod
    def of_model(cls, model: DeepSADModel) -> InputSpec:
        """Images for ``scale255`` preprocessing, raw feature rows for ``standard_minmax``."""
        if model.preprocessing.kind == "scale255":
            return cls("image", tuple(model.net_config.input_shape))
        return cls("tabular", (int(model.preprocessing.n_features or 0),))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Any) -> InputSpec:
        """Inverse of :meth:`to_dict`. Raises CheckpointError if ``d`` is malformed."""
        try:
            return cls(kind=d["kind"], shape=tuple(d["shape"]), dtype=d.get("dtype", ""))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"input spec: malformed ({e!r})") from e

    def describe(self) -> str:
        if self.kind == "image":
            return f"uint8 images of shape {'×'.join(map(str, self.shape))}"
        return f"rows of {self.shape[0]} numeric features"

    def conform(self, x: np.ndarray, source: str) -> np.ndarray:
        """``x`` checked against the spec and cast to :attr:`dtype`, ready for the module.

        Images: ``(N, C, H, W)``, or ``(N, H, W)`` when ``C == 1``; integer pixels 0..255 (floats
        are refused: they are not raw pixels). Rows: ``(N, D)`` finite numbers.

        Raises:
            DataError: naming ``source``, the expected and the actual shape or dtype.
        """
        x = np.asarray(x)
        if self.kind == "image":
            if x.ndim == len(self.shape) and self.shape[0] == 1:
                x = x[:, None]
            if x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
                raise DataError(f"{source}: expected {self.describe()}, got an array of shape {x.shape}")
            if x.dtype != np.uint8:
                if x.dtype.kind not in "iu" or (x.size and (x.min() < 0 or x.max() > 255)):
                    raise DataError(f"{source}: expected raw uint8 pixels 0..255, got {x.dtype} values")
                x = x.astype(np.uint8)
            return np.ascontiguousarray(x)
        if x.ndim != 2 or x.shape[1] != self.shape[0]:
            got = f"{x.shape[1]} features" if x.ndim == 2 else f"an array of shape {x.shape}"
            raise DataError(f"{source}: expected {self.describe()}, got {got}")
        if x.dtype.kind not in "biuf":
            raise DataError(f"{source}: features must be numeric, got dtype {x.dtype}")
        x = x.astype(np.float64)
        if not np.isfinite(x).all():
            row, col = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
            raise DataError(f"{source}: non-finite value (NaN, inf or missing) at row {row}, column {col}")
        return np.ascontiguousarray(x)


class RawScorer(nn.Module):
    """raw x ``(N, *shape)`` → scores ``(N,)`` float32; see the module docstring.

    Buffers: ``c`` (rep_dim,) float32; ``prep_mean``, ``prep_scale``, ``prep_min``, ``prep_range``
    (D,) float64 for tabular models (empty for images).
    """

    # a TorchScript constant: the branch not taken is compiled away
    __constants__ = ("tabular",)
    if TYPE_CHECKING:  # the buffers, for mypy; TorchScript cannot read string annotations
        prep_mean: torch.Tensor
        prep_scale: torch.Tensor
        prep_min: torch.Tensor
        prep_range: torch.Tensor
        c: torch.Tensor

    def __init__(self, model: DeepSADModel) -> None:
        super().__init__()
        self.net = model.network("cpu")
        self.tabular = model.preprocessing.kind == "standard_minmax"
        params = model.preprocessing.params
        for name in ("mean", "scale", "min", "range"):
            value = params[name] if self.tabular else np.zeros(0)
            self.register_buffer(f"prep_{name}", torch.as_tensor(np.asarray(value), dtype=torch.float64))
        self.register_buffer("c", model.c.detach().to("cpu", torch.float32).clone())
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tabular:
            # float64 as numpy/scikit-learn do, then one cast: bit-equal to Preprocessing.apply
            z = (x.to(torch.float64) - self.prep_mean) / self.prep_scale
            h = ((z - self.prep_min) / self.prep_range).to(torch.float32)
        else:
            h = x.to(torch.float32) / 255.0
        return squared_distance(self.net(h).float(), self.c)


def build_scorer(model: DeepSADModel, device: str | torch.device = "cpu") -> RawScorer:
    """The model's :class:`RawScorer` in eval mode on ``device``."""
    return RawScorer(model).to(device).eval()


@torch.inference_mode()
def score_array(
    module: Any, x: np.ndarray, *, batch_size: int = 8192, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Scores of raw inputs ``x`` (already :meth:`InputSpec.conform` ed) with a torch or TorchScript
    module, ``batch_size`` rows at a time on ``device``. Returns ``(N,)`` float32 on the host."""
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1 (got {batch_size})")
    out = []
    dev = torch.device(device)
    for i in range(0, x.shape[0], batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(dev, non_blocking=True)
        out.append(module(xb).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def flag_scores(scores: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """Anomaly flags ``(N,)`` bool for ``scores`` ``(N,)`` at ``threshold``, and how many scores are
    not finite.

    A score is flagged when ``score > threshold`` — or when it is NaN or ±inf: a raw input far
    outside anything the model saw (say a feature of 1e308, which overflows float32 in the
    preprocessing) gives a non-finite distance, and ``nan > t`` would silently call it normal.

    Raises:
        ConfigError: ``threshold`` is not a finite number.
    """
    if not isinstance(threshold, float | int) or isinstance(threshold, bool) or not np.isfinite(threshold):
        raise ConfigError(f"threshold: must be a finite number (got {threshold!r})")
    scores = np.asarray(scores)
    nonfinite = ~np.isfinite(scores)
    return (scores > threshold) | nonfinite, int(nonfinite.sum())


def check_input_file(path: Path, what: str = "INPUT") -> Path:
    """``path`` if it is a regular file; else DataError naming what it is (missing, a directory, a
    pipe or device — which a reader could block on)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory; {what} must be a file (IDX, .npz, .csv or .parquet)")
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file; {what} must be a file (IDX, .npz, .csv or .parquet)")
    return path


#: What a malformed or hostile ``.npz`` can raise from ``np.load`` / reading its member: zip and
#: zlib errors, a member in an unsupported compression or encrypted, a bad ``.npy`` header, a
#: shape too large to allocate.
_NPZ_ERRORS = (
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    KeyError,
    MemoryError,
    TypeError,
    SyntaxError,
    struct.error,
    tokenize.TokenError,  # numpy parses a .npy header with tokenize: a cut-off one raises this
)


def read_array_file(path: Path) -> np.ndarray:
    """Raw inputs from an IDX file (``.gz`` or not; e.g. ``t10k-images-idx3-ubyte.gz``) or an
    ``.npz`` holding ``X`` (object arrays are refused: loading them would unpickle).

    Raises:
        DataError: the file is missing, not a regular file, unreadable, of an unknown type, or has
            no ``X``.
    """
    path = check_input_file(Path(path))
    if path.suffix.lower() != ".npz":
        return read_idx(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy file under an .npz name
            raise DataError(f"{path}: not an .npz archive (a single .npy array?); save it with np.savez(X=...)")
        with loaded as z:
            if "X" not in z.files:
                raise DataError(f"{path}: expected an array X, found {sorted(z.files)[:20]}")
            return np.asarray(z["X"])
    except ValueError as e:
        raise DataError(f"{path}: cannot load ({_first_line(e)}); object arrays are not accepted") from e
    except _NPZ_ERRORS as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
