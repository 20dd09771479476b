"""Input preprocessing fitted on the training part of a split, and applied to everything else.

Two kinds, as in the reference Deep SAD code:

- ``"scale255"`` (images): ``x / 255`` as float32, i.e. torchvision's ``ToTensor`` range ``[0, 1]``.
  It has no fitted parameters.
- ``"standard_minmax"`` (tabular): scikit-learn's ``StandardScaler`` followed by ``MinMaxScaler``, both
  fitted on the training part (the reference ODDS preprocessing), re-implemented in numpy so that the
  fitted statistics are four float64 vectors a checkpoint can hold as tensors or JSON.

The parameters are fitted on the training part only; validation, test and user inputs are transformed
with the training statistics (they may then fall outside ``[0, 1]``, which is intended).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np

from deepsad.errors import CheckpointError, ConfigError, DataError

PreprocessingKind = Literal["scale255", "standard_minmax"]

# The fitted vectors of each kind, in the order ``apply`` uses them.
_PARAM_NAMES: dict[str, tuple[str, ...]] = {
    "scale255": (),
    "standard_minmax": ("mean", "scale", "min", "range"),
}


@dataclass(frozen=True, eq=False)
class Preprocessing:
    """A fitted, stateless input transform.

    Attributes:
        kind: ``"scale255"`` or ``"standard_minmax"``.
        params: for ``"standard_minmax"`` the float64 vectors ``mean``, ``scale`` (of the standardiser)
            and ``min``, ``range`` (of the min-max scaler, on standardised values), each ``(D,)``;
            empty for ``"scale255"``. ``scale`` and ``range`` are strictly positive and finite.

    Raises:
        ConfigError: on an unknown kind, missing/extra parameters, or parameters of the wrong shape or
            with non-finite or non-positive scales.
    """

    kind: PreprocessingKind
    params: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in _PARAM_NAMES:
            raise ConfigError(
                f"preprocessing.kind: unknown kind {self.kind!r} (known: {', '.join(_PARAM_NAMES)})"
            )
        expected = _PARAM_NAMES[self.kind]
        if set(self.params) != set(expected):
            raise ConfigError(
                f"preprocessing.params: {self.kind} needs exactly {list(expected)}, got {sorted(self.params)}"
            )
        # Own copies as float64 vectors, so that a caller mutating its arrays cannot change us.
        params = {name: np.array(self.params[name], dtype=np.float64) for name in expected}
        for name, value in params.items():
            if value.ndim != 1 or value.shape != params[expected[0]].shape:
                raise ConfigError(
                    f"preprocessing.params.{name}: must be 1-D and as long as {expected[0]}, "
                    f"got shape {value.shape}"
                )
            if not np.isfinite(value).all():
                raise ConfigError(f"preprocessing.params.{name}: has a non-finite value")
        for name in ("scale", "range"):
            if name in params and not (params[name] > 0).all():
                raise ConfigError(f"preprocessing.params.{name}: must be > 0 everywhere")
        object.__setattr__(self, "params", params)

    @property
    def n_features(self) -> int | None:
        """``D`` for tabular preprocessing, ``None`` when any shape is accepted."""
        return int(self.params["mean"].shape[0]) if "mean" in self.params else None

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transform raw inputs.

        Args:
            x: raw inputs, ``(N, C, H, W)`` with values 0..255 for ``"scale255"``, ``(N, D)`` raw feature
                values for ``"standard_minmax"``.

        Returns:
            float32 array of the same shape.

        Raises:
            DataError: if tabular inputs are not ``(N, D)`` with the fitted ``D``.
        """
        if self.kind == "scale255":
            return (np.asarray(x).astype(np.float32)) / np.float32(255.0)
        x = np.asarray(x)
        d = self.n_features
        if x.ndim != 2 or x.shape[1] != d:
            raise DataError(f"preprocessing: expected inputs of shape (N, {d}), got {x.shape}")
        p = self.params
        # float64 arithmetic, as scikit-learn does, then one cast at the end.
        z = (x.astype(np.float64) - p["mean"]) / p["scale"]
        return ((z - p["min"]) / p["range"]).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """Plain-value form: ``{"kind": str, "params": {name: list[float]}}`` (JSON-safe, exact)."""
        return {"kind": self.kind, "params": {k: v.tolist() for k, v in self.params.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`; parameter values may be lists, numpy arrays or CPU tensors.

        Raises:
            CheckpointError: if the mapping is malformed.
        """
        try:
            kind = d["kind"]
            params = {str(k): np.asarray(v, dtype=np.float64) for k, v in dict(d["params"]).items()}
            return cls(kind=cast(PreprocessingKind, kind), params=params)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"preprocessing: malformed stored preprocessing ({e!r})") from e
        except ConfigError as e:
            raise CheckpointError(f"stored {e}") from e


def fit_preprocessing(kind: PreprocessingKind, x_train: np.ndarray) -> Preprocessing:
    """Fit a preprocessing of ``kind`` on the training part only.

    Args:
        kind: ``"scale255"`` or ``"standard_minmax"``.
        x_train: raw training inputs, ``(N, ...)``; ``(N, D)`` for ``"standard_minmax"``, N >= 1.

    Returns:
        The fitted :class:`Preprocessing`. A constant feature gets ``scale = 1`` and ``range = 1``
        (as scikit-learn does), so it maps to a constant instead of NaN/inf.

    Raises:
        DataError: if tabular training data is empty or not 2-D.
    """
    if kind == "scale255":
        return Preprocessing(kind)
    if x_train.ndim != 2 or x_train.shape[0] == 0:
        raise DataError(f"preprocessing: need non-empty (N, D) training data, got shape {x_train.shape}")
    x = x_train.astype(np.float64)
    mean = x.mean(axis=0)
    # Population std (ddof=0) as StandardScaler. A feature is constant exactly when its peak-to-peak
    # is 0; testing std > 0 instead would let float noise (std ~1e-17) blow the feature up.
    constant = np.ptp(x, axis=0) == 0
    scale = np.where(constant, 1.0, x.std(axis=0))
    z = (x - mean) / scale
    zmin = z.min(axis=0)
    zrange = z.max(axis=0) - zmin
    # A constant feature is standardised to one value, so its range is exactly 0 here too.
    zrange = np.where(zrange > 0, zrange, 1.0)
    return Preprocessing(kind, {"mean": mean, "scale": scale, "min": zmin, "range": zrange})
