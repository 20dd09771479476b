"""Which network to build, without building it: :class:`NetConfig`, the registry's names and shapes and the
reference's per-data-set defaults. No torch here, so a sweep file is checked (and ``sweep status`` answers)
without importing it; :mod:`deepsad.networks` builds the modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deepsad.errors import ConfigError

#: The registry's network names (:mod:`deepsad.networks` builds each).
NETWORKS = ("mnist_lenet", "fmnist_lenet", "cifar10_lenet", "mlp")

#: The largest latent dimension accepted (the paper's are 32-128): a typo must not allocate gigabytes.
MAX_REP_DIM = 4096


@dataclass(frozen=True)
class NetConfig:
    """Which network to build.

    Attributes:
        name: registry key (``mnist_lenet``, ``fmnist_lenet``, ``cifar10_lenet``, ``mlp``).
        rep_dim: latent dimension (a search axis). The MNIST and CIFAR-10 decoders reshape z to
            (rep_dim/16, 4, 4), so those need a multiple of 16.
        input_shape: shape of one sample, ``(C, H, W)`` or ``(D,)``.
        h_dims: hidden sizes of the MLP encoder (the decoder mirrors them); unused by LeNets.
    """

    name: str
    rep_dim: int
    input_shape: tuple[int, ...]
    h_dims: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.name not in NETWORKS:
            raise ConfigError(f"net: unknown network {self.name!r} (known: {', '.join(sorted(NETWORKS))})")
        if self.rep_dim < 1:
            raise ConfigError(f"rep_dim: must be >= 1 (got {self.rep_dim})")
        if self.rep_dim > MAX_REP_DIM:
            raise ConfigError(f"rep_dim: must be at most {MAX_REP_DIM} (got {self.rep_dim})")
        expected = INPUT_SHAPES.get(self.name)
        if expected is not None and tuple(self.input_shape) != expected:
            raise ConfigError(f"net {self.name}: needs inputs of shape {expected}, got {tuple(self.input_shape)}")
        if self.name in ("mnist_lenet", "cifar10_lenet") and self.rep_dim % 16 != 0:
            # the decoder reshapes z to (rep_dim / 16, 4, 4)
            raise ConfigError(f"rep_dim: {self.name} needs a multiple of 16 (got {self.rep_dim})")
        if self.name == "mlp":
            if len(self.input_shape) != 1:
                raise ConfigError(f"net mlp: needs flat inputs (D,), got {tuple(self.input_shape)}")
            if not self.h_dims or min(self.h_dims) < 1:
                raise ConfigError(f"net mlp: h_dims must be non-empty positive sizes (got {self.h_dims})")

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "rep_dim": self.rep_dim, "input_shape": list(self.input_shape),
                "h_dims": list(self.h_dims)}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> NetConfig:
        return cls(
            name=str(d["name"]),
            rep_dim=int(d["rep_dim"]),  # type: ignore[call-overload]
            input_shape=tuple(int(v) for v in d["input_shape"]),  # type: ignore[attr-defined]
            h_dims=tuple(int(v) for v in d.get("h_dims", ())),  # type: ignore[attr-defined]
        )


INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "mnist_lenet": (1, 28, 28),
    "fmnist_lenet": (1, 28, 28),
    "cifar10_lenet": (3, 32, 32),
}

#: The reference's per-data-set networks: data set -> (network, rep_dim, MLP hidden sizes).
DEFAULT_NETS: dict[str, tuple[str, int, tuple[int, ...]]] = {
    "mnist": ("mnist_lenet", 32, ()),
    "fmnist": ("fmnist_lenet", 64, ()),
    "cifar10": ("cifar10_lenet", 128, ()),
    "arrhythmia": ("mlp", 32, (128, 64)),
    "cardio": ("mlp", 8, (32, 16)),
    "satellite": ("mlp", 8, (32, 16)),
    "satimage-2": ("mlp", 8, (32, 16)),
    "shuttle": ("mlp", 8, (32, 16)),
    "thyroid": ("mlp", 4, (32, 16)),
}


def default_net_config(dataset: str, input_shape: tuple[int, ...], rep_dim: int | None = None) -> NetConfig:
    """The reference network for ``dataset``; unknown tabular sets get an MLP (32, 16) -> 8.

    Raises:
        ConfigError: an image shape with no matching network.
    """
    if dataset in DEFAULT_NETS:
        name, rep, h = DEFAULT_NETS[dataset]
    elif len(input_shape) == 1:
        name, rep, h = "mlp", 8, (32, 16)
    else:
        by_shape = {v: k for k, v in INPUT_SHAPES.items() if k != "fmnist_lenet"}
        if tuple(input_shape) not in by_shape:
            raise ConfigError(f"{dataset}: no network for image shape {tuple(input_shape)}")
        name, rep, h = by_shape[tuple(input_shape)], 32, ()
    return NetConfig(name=name, rep_dim=rep if rep_dim is None else rep_dim, input_shape=tuple(input_shape), h_dims=h)
