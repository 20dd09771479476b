"""A trained Deep SAD model: network weights, centre c, η and the preprocessing, saved without pickle.

On disk a model is a checkpoint bundle (``tensors.safetensors`` + ``meta.json``, see
:mod:`deepsad.checkpoint`) of kind ``"model"``: tensors ``net.*`` (the state dict), ``c`` and
``prep.*`` (the fitted preprocessing statistics); JSON with the network config, η, the preprocessing
kind, the split fingerprint, the training config and the library versions. Loading never unpickles,
and a loaded model scores exactly like the one that was trained.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import deepsad
from deepsad.checkpoint import load_bundle, save_bundle
from deepsad.data.splits import Preprocessing
from deepsad.errors import CheckpointError
from deepsad.networks import NetConfig, build_encoder
from deepsad.objective import squared_distance

KIND = "model"


def versions() -> dict[str, str]:
    """Library versions recorded with every model, for provenance."""
    return {"deepsad": deepsad.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


@dataclass(frozen=True, eq=False)
class DeepSADModel:
    """Everything needed to score new raw inputs (a training builds one with
    :func:`deepsad.training.trained_model`; :meth:`load` reads a saved one).

    Attributes:
        net_config: architecture and rep_dim.
        state_dict: the network's tensors (weights and BatchNorm buffers), on the CPU.
        c: (rep_dim,) the hypersphere centre.
        eta: η it was trained with.
        preprocessing: maps raw inputs to the network's input space (fitted on the training part).
        meta: provenance — dataset, split fingerprint, training config, versions, metrics.
    """

    net_config: NetConfig
    state_dict: dict[str, torch.Tensor]
    c: torch.Tensor
    eta: float
    preprocessing: Preprocessing
    meta: dict[str, Any] = field(default_factory=dict)

    def network(self, device: str | torch.device = "cpu") -> nn.Module:
        """The network with the trained weights, in eval mode, on ``device``."""
        net = build_encoder(self.net_config)
        net.load_state_dict(self.state_dict)
        return net.to(device).eval()

    @torch.no_grad()
    def score(self, x: np.ndarray | torch.Tensor, *, device: str | torch.device = "cpu",
              batch_size: int = 4096, net: nn.Module | None = None) -> np.ndarray:
        """Anomaly scores of preprocessed inputs. x: (N, *input_shape) float -> (N,) float32."""
        net = net if net is not None else self.network(device)
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else x,
                             dtype=torch.float32)
        c = self.c.to(device)
        out = [squared_distance(net(xt[i : i + batch_size].to(device)).float(), c).cpu()
               for i in range(0, xt.shape[0], batch_size)]
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)

    def score_raw(self, x_raw: np.ndarray, **kwargs: Any) -> np.ndarray:
        """Scores of raw inputs (uint8 images or raw feature values), preprocessed as in training."""
        return self.score(self.preprocessing.apply(x_raw), **kwargs)

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> None:
        """Write the model as a bundle (atomically); see the module docstring for the layout."""
        tensors = {f"net.{k}": v for k, v in self.state_dict.items()}
        tensors["c"] = self.c
        for k, v in self.preprocessing.params.items():
            tensors[f"prep.{k}"] = torch.as_tensor(np.asarray(v))
        meta = {
            "net": self.net_config.to_dict(),
            "eta": self.eta,
            "preprocessing": self.preprocessing.kind,
            **self.meta,
        }
        save_bundle(Path(directory), tensors, meta, kind=KIND)

    @classmethod
    def load(cls, directory: str | Path) -> DeepSADModel:
        """Read a model bundle written by :meth:`save`.

        Raises:
            CheckpointError: missing files, wrong kind or a malformed bundle.
            IntegrityError: the tensors file does not match its recorded sha256.
        """
        tensors, meta = load_bundle(Path(directory), kind=KIND)
        try:
            net_config = NetConfig.from_dict(meta["net"])
            prep = Preprocessing(
                kind=meta["preprocessing"],
                params={k[5:]: tensors[k].numpy() for k in tensors if k.startswith("prep.")},
            )
            state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
            rest = {k: v for k, v in meta.items() if k not in ("net", "eta", "preprocessing")}
            model = cls(net_config, state, tensors["c"], float(meta["eta"]), prep, rest)
            model.network()  # fail here, not at scoring time, if the tensors do not fit the net
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{directory}: not a valid Deep SAD model ({type(e).__name__}: {e})") from e
        return model
