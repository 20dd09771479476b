"""One trial's configuration and the keys that name it.

A *trial* is one hyperparameter configuration × one seed (the seed seeds both the split and the
training). Its :attr:`TrialConfig.key` names it everywhere (result rows, checkpoints, resubmits), so
it hashes exactly what changes the result: the data set, the protocol and the training config — not
the device, the data directory, the storage or the sweep's name.

Core modules (torch, scikit-learn) are imported inside the functions, so that importing this module
stays cheap for the command line.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from deepsad.errors import ConfigError
from orchestration.spec.model import SPACE_KEYS

if TYPE_CHECKING:
    from deepsad.data.splits import Protocol
    from deepsad.training import OptimConfig, TrainConfig

# Bump when the meaning of a key's inputs changes (old results then stop matching new trials).
TRIAL_KEY_VERSION = "deepsad-trial-v1"
AE_KEY_VERSION = "deepsad-ae-v1"

DeviceRequest = Literal["auto", "cpu", "cuda"]
Params = dict[str, float | int]


def digest(obj: Any) -> str:
    """sha256 (first 16 hex chars) of canonical JSON: sorted keys, no whitespace, no NaN."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [plain(x) for x in v]
    return v


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial runs with; what the Tune trainable receives (as :meth:`to_dict`).

    Attributes:
        dataset: registry name, or the absolute path of a ``.npz``/``.csv`` file.
        data_dir: absolute data directory, or None.
        protocol: the semi-supervised setting, with ``seed`` = the trial's seed.
        train: the training config, with ``seed`` = the trial's seed and ``device="cpu"`` as a
            placeholder: the trainable resolves :attr:`device_request` on the machine it runs on.
        params: the searched values of this trial (``eta``, ``rep_dim``, ...), for display.
        seed: the trial's seed.
        device_request: ``auto`` (cuda when the trial has a GPU), ``cpu`` or ``cuda``.

    Raises:
        ConfigError: the seeds disagree, an unknown searched key, a relative data directory.
    """

    dataset: str
    data_dir: str | None
    protocol: Protocol
    train: TrainConfig
    params: Params = field(default_factory=dict, hash=False)
    seed: int = 0
    device_request: DeviceRequest = "auto"

    def __post_init__(self) -> None:
        if self.protocol.seed != self.seed or self.train.seed != self.seed:
            raise ConfigError(
                f"trial: protocol seed {self.protocol.seed} and train seed {self.train.seed} must equal "
                f"the trial seed {self.seed}"
            )
        unknown = sorted(set(self.params) - set(SPACE_KEYS))
        if unknown:
            raise ConfigError(
                f"trial: unknown searched parameter {unknown[0]!r} (known: {', '.join(SPACE_KEYS)})"
            )
        if self.device_request not in ("auto", "cpu", "cuda"):
            raise ConfigError(
                f"trial: device_request must be auto, cpu or cuda (got {self.device_request!r})"
            )
        if self.data_dir is not None and not os.path.isabs(self.data_dir):
            raise ConfigError(f"trial: data_dir must be absolute (got {self.data_dir!r})")
        object.__setattr__(self, "params", dict(self.params))

    def identity(self) -> dict[str, Any]:
        train = self.train.to_dict()
        del train["device"]  # the device changes where a trial runs, not what it computes
        return {"dataset": self.dataset, "protocol": plain(asdict(self.protocol)), "train": train}

    @cached_property  # every input is frozen; a trial reports (and names its rows by) it every epoch
    def key(self) -> str:
        """The trial key: 16 hex chars of sha256 over the data set, protocol and training config."""
        return digest({"version": TRIAL_KEY_VERSION, **self.identity()})

    @property
    def ae_key(self) -> str | None:
        """What the pretrained autoencoder depends on, apart from the data bytes (the trainable adds
        the split fingerprint): data set, protocol, network, AE optimiser, seed, bf16. None without
        pretraining."""
        ae = self.train.ae
        if ae is None:
            return None
        return digest(
            {
                "version": AE_KEY_VERSION,
                "dataset": self.dataset,
                "protocol": plain(asdict(self.protocol)),
                "net": self.train.net.to_dict(),
                "ae": plain(asdict(ae)),
                "seed": self.train.seed,
                "bf16": self.train.bf16,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; :meth:`from_dict` rebuilds an equal config."""
        return {
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "protocol": plain(asdict(self.protocol)),
            "train": self.train.to_dict(),
            "params": dict(self.params),
            "seed": self.seed,
            "device_request": self.device_request,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: a missing or malformed entry.
        """
        from deepsad.data.splits import Protocol
        from deepsad.netconfig import NetConfig
        from deepsad.training import TrainConfig

        try:
            p = dict(d["protocol"])
            for name in ("normal_classes", "known_anomaly_classes"):
                p[name] = None if p[name] is None else tuple(p[name])
            t = d["train"]
            train = TrainConfig(
                net=NetConfig.from_dict(t["net"]),
                eta=float(t["eta"]),
                sad=_optim(t["sad"]),
                ae=None if t["ae"] is None else _optim(t["ae"]),
                seed=int(t["seed"]),
                device=str(t["device"]),
                bf16=bool(t["bf16"]),
                reference_compat=bool(t["reference_compat"]),
            )
            return cls(
                dataset=str(d["dataset"]),
                data_dir=d["data_dir"],
                protocol=Protocol(**p),
                train=train,
                params=dict(d["params"]),
                seed=int(d["seed"]),
                device_request=d["device_request"],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"trial config: malformed ({type(e).__name__}: {e})") from e

    def columns(self) -> dict[str, object]:
        """Flat typed values for the result store (lists for classes and milestones; AE columns are
        None without pretraining)."""
        p, t, ae = self.protocol, self.train, self.train.ae
        return {
            "dataset": self.dataset,
            "normal_classes": list(p.normal_classes),
            "known_anomaly_classes": None
            if p.known_anomaly_classes is None
            else list(p.known_anomaly_classes),
            "n_known_outlier_classes": p.n_known_outlier_classes,
            "n_labeled_anomalies": p.n_labeled_anomalies,
            "ratio_known_outlier": p.ratio_known_outlier,
            "ratio_pollution": p.ratio_pollution,
            "ratio_known_normal": p.ratio_known_normal,
            "val_fraction": p.val_fraction,
            "seed": self.seed,
            "net": t.net.name,
            "rep_dim": t.net.rep_dim,
            "eta": t.eta,
            "lr": t.sad.lr,
            "epochs": t.sad.epochs,
            "weight_decay": t.sad.weight_decay,
            "batch_size": t.sad.batch_size,
            "milestones": list(t.sad.milestones),
            "ae_lr": None if ae is None else ae.lr,
            "ae_epochs": None if ae is None else ae.epochs,
            "ae_weight_decay": None if ae is None else ae.weight_decay,
            "bf16": t.bf16,
            "reference_compat": t.reference_compat,
        }


def _optim(d: Mapping[str, Any]) -> OptimConfig:
    from deepsad.training import OptimConfig

    return OptimConfig(
        lr=float(d["lr"]),
        epochs=int(d["epochs"]),
        milestones=tuple(int(m) for m in d["milestones"]),
        batch_size=int(d["batch_size"]),
        weight_decay=float(d["weight_decay"]),
    )
