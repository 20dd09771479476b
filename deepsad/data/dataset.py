"""The in-memory form of a labelled data set, before the semi-supervised protocol is applied."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from deepsad.errors import DataError

Kind = Literal["image", "tabular"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled data set as loaded from disk.

    Attributes:
        name: registry name (``"mnist"``, ``"cardio"``, ...) or ``"custom"``.
        kind: ``"image"`` (``x`` is ``(N, C, H, W)`` uint8, values 0..255) or ``"tabular"``
            (``x`` is ``(N, D)`` float64/float32 raw feature values).
        x_train, y_train: the training pool; ``y`` holds integer class labels ``(N,)`` int64.
        x_test, y_test: the standard test split, or ``None`` for sets that have none (ODDS, scikit-
            learn sets, user files); the protocol then carves a stratified test split itself.
        source: where the data came from (a path or a package name), for provenance.

    For the ODDS sets and other binary outlier sets the classes are 0 (normal) and 1 (outlier).
    """

    name: str
    kind: Kind
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    source: str

    def __post_init__(self) -> None:
        if self.kind not in ("image", "tabular"):
            raise DataError(f"{self.name}: unknown data kind {self.kind!r}")
        pairs = [("train", self.x_train, self.y_train)]
        if (self.x_test is None) != (self.y_test is None):
            raise DataError(f"{self.name}: x_test and y_test must both be given or both be None")
        if self.x_test is not None and self.y_test is not None:
            pairs.append(("test", self.x_test, self.y_test))
        for part, x, y in pairs:
            if x.shape[0] != y.shape[0]:
                raise DataError(f"{self.name}: {part} has {x.shape[0]} samples but {y.shape[0]} labels")
            if y.ndim != 1:
                raise DataError(f"{self.name}: {part} labels must be 1-D, got shape {y.shape}")
            if self.kind == "image" and x.ndim != 4:
                raise DataError(f"{self.name}: image {part} data must be (N, C, H, W), got {x.shape}")
            if self.kind == "tabular":
                if x.ndim != 2:
                    raise DataError(f"{self.name}: tabular {part} data must be (N, D), got {x.shape}")
                if not np.isfinite(x).all():
                    bad = np.argwhere(~np.isfinite(x))[0]
                    raise DataError(
                        f"{self.name}: {part} data has a non-finite value (NaN or inf) at row {bad[0]}, "
                        f"column {bad[1]}"
                    )

    @property
    def classes(self) -> tuple[int, ...]:
        """All class labels present in the training pool and the test split, sorted."""
        ys = [self.y_train] if self.y_test is None else [self.y_train, self.y_test]
        return tuple(int(c) for c in np.unique(np.concatenate(ys)))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``(C, H, W)`` or ``(D,)``."""
        return tuple(int(s) for s in self.x_train.shape[1:])
