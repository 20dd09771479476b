"""The paper's networks and their mirrored autoencoders, exactly as in the reference code.

Every layer is bias-free, BatchNorm is ``affine=False, eps=1e-4`` and activations are leaky ReLU
(slope 0.01), as in Deep-SAD-PyTorch. Layer names match the reference so state dicts are comparable.
``rep_dim`` is a constructor parameter because it is a search axis.

Registry names: ``mnist_lenet`` (rep 32), ``fmnist_lenet`` (rep 64), ``cifar10_lenet`` (rep 128),
``mlp`` (ODDS and other tabular sets; hidden sizes per data set, see :data:`deepsad.netconfig.DEFAULT_NETS`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from deepsad.errors import ConfigError
from deepsad.netconfig import (
    DEFAULT_NETS as DEFAULT_NETS,  # re-exported: the configuration lives apart, no torch
)
from deepsad.netconfig import INPUT_SHAPES as INPUT_SHAPES
from deepsad.netconfig import MAX_REP_DIM as MAX_REP_DIM
from deepsad.netconfig import NETWORKS, NetConfig
from deepsad.netconfig import default_net_config as default_net_config

_BN_EPS = 1e-4


def _bn2d(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS, affine=False)


def _bn1d(c: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(c, eps=_BN_EPS, affine=False)


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2)


# --------------------------------------------------------------------------- the decoders' deconvolutions

#: How a decoder computes ``deconv(up(x))`` (nearest 2x upsampling, then a stride-1 transposed
#: convolution), all equal up to float rounding (tests/deepsad/test_networks.py):
#:
#: * ``"transpose"`` — as written: ``interpolate`` then ``conv_transpose2d`` (the reference's layers).
#: * ``"phase"`` — no upsampled tensor: a stride-1 transposed convolution with kernel W, padding p is
#:   the convolution with W flipped and its in/out channels swapped, padding q = k−1−p; over a
#:   nearest-upsampled input, output pixel o = 2m + r + q (phase r ∈ {0, 1} per axis) reads only
#:   input pixels m … m + ⌊k/2⌋, so the 4 phases are one ordinary convolution of x with 4·O output
#:   channels and ⌊k/2⌋+1 taps (taps of W that fall on the same input pixel summed), interleaved by
#:   ``pixel_shuffle``. The MNIST decoder's multiply-adds drop 2.1-2.8x per layer, its largest
#:   activation (the upsampled (8, 28, 28)) is never stored, and every kernel is an ordinary
#:   convolution — under ``vmap`` a grouped one, like the encoder's, instead of a grouped
#:   transposed convolution. A layer without upsampling (CIFAR-10's first) becomes the flipped
#:   convolution.
DeconvFormulation = Literal["transpose", "phase"]

#: The formulation new decoders use (see :func:`set_deconv_formulation`).
DEFAULT_DECONV: DeconvFormulation = "phase"


_TAPS: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}


def _phase_taps(k: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(2, S, k) 0/1: tap t of a k-tap kernel over a 2x-upsampled axis reads input offset s in phase r
    (built once per device: no host-to-device copy per step)."""
    key = (k, device, dtype)
    if key not in _TAPS:
        taps = torch.zeros(2, k // 2 + 1, k, dtype=dtype)
        for r in range(2):
            for t in range(k):
                taps[r, (r + t) // 2, t] = 1
        _TAPS[key] = taps.to(device)
    return _TAPS[key]


def deconv(x: torch.Tensor, layer: nn.ConvTranspose2d, *, upsample: bool,
           formulation: DeconvFormulation = "transpose") -> torch.Tensor:
    """``layer(up(x))`` (``up`` = nearest 2x interpolation, when ``upsample``) in the given formulation.

    x: (B, C, H, W) -> (B, O, H', W'). ``layer``: a bias-free stride-1 ConvTranspose2d (its
    ``weight`` (C, O, k, k) is read through the module, so ``functional_call`` substitutes it).
    """
    if formulation == "transpose":
        return layer(_up(x) if upsample else x)
    if formulation != "phase":
        raise ConfigError(f"deconv formulation: must be 'transpose' or 'phase' (got {formulation!r})")
    w = layer.weight
    k = w.shape[-1]
    p = int(layer.padding[0])
    q = k - 1 - p  # padding of the equivalent ordinary convolution
    conv_w = w.transpose(0, 1).flip(2, 3)  # (O, C, k, k), a correlation kernel
    if not upsample:
        return F.conv2d(x, conv_w, padding=q)
    taps = _phase_taps(k, w.device, w.dtype)
    # (O, ry, rx, C, S, S): phase (ry, rx)'s kernel; channel order (o, ry, rx) is pixel_shuffle's
    phase_w = torch.einsum("ast,buv,octv->oabcsu", taps, taps, conv_w)
    o, c, s = conv_w.shape[0], conv_w.shape[1], taps.shape[1]
    pad = (q + 1) // 2  # input m - pad feeds conv output m; phase r of it is output 2m + r + q - 2 pad
    out_h, out_w = 2 * x.shape[-2] + 2 * q - k + 1, 2 * x.shape[-1] + 2 * q - k + 1
    start = 2 * pad - q
    extra_h = max(0, -(-(start + out_h) // 2) - (x.shape[-2] + 2 * pad - s + 1))
    extra_w = max(0, -(-(start + out_w) // 2) - (x.shape[-1] + 2 * pad - s + 1))
    if extra_h or extra_w:  # not for the paper's decoders: their outputs are covered by symmetric padding
        x = F.pad(x, (0, extra_w, 0, extra_h))
    y = F.conv2d(x, phase_w.reshape(4 * o, c, s, s), padding=pad)
    y = F.pixel_shuffle(y, 2)
    return y[..., start : start + out_h, start : start + out_w]


class _Decoder(nn.Module):
    """A decoder whose ``deconv`` layers follow :attr:`formulation` (see :data:`DeconvFormulation`)."""

    def __init__(self) -> None:
        super().__init__()
        self.formulation: DeconvFormulation = DEFAULT_DECONV

    def _deconv(self, x: torch.Tensor, layer: nn.ConvTranspose2d, upsample: bool = True) -> torch.Tensor:
        return deconv(x, layer, upsample=upsample, formulation=self.formulation)


def set_deconv_formulation(module: nn.Module, formulation: DeconvFormulation) -> nn.Module:
    """Switch every LeNet decoder inside ``module`` to ``formulation`` (in place); returns ``module``.

    Raises:
        ConfigError: an unknown formulation.
    """
    if formulation not in ("transpose", "phase"):
        raise ConfigError(f"deconv formulation: must be 'transpose' or 'phase' (got {formulation!r})")
    for m in module.modules():
        if isinstance(m, _Decoder):
            m.formulation = formulation
    return module


# --------------------------------------------------------------------------- MNIST


class MnistLeNet(nn.Module):
    """MNIST LeNet encoder: x (B, 1, 28, 28) -> z (B, rep_dim)."""

    def __init__(self, rep_dim: int = 32) -> None:
        super().__init__()
        self.rep_dim = rep_dim
        self.pool = nn.MaxPool2d(2, 2)
        self.conv1 = nn.Conv2d(1, 8, 5, bias=False, padding=2)
        self.bn1 = _bn2d(8)
        self.conv2 = nn.Conv2d(8, 4, 5, bias=False, padding=2)
        self.bn2 = _bn2d(4)
        self.fc1 = nn.Linear(4 * 7 * 7, rep_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 28, 28)
        x = self.pool(F.leaky_relu(self.bn1(self.conv1(x))))
        x = self.pool(F.leaky_relu(self.bn2(self.conv2(x))))
        return self.fc1(x.flatten(1))


class MnistLeNetDecoder(_Decoder):
    """Mirror of :class:`MnistLeNet`: z (B, rep_dim) -> x̂ (B, 1, 28, 28) in (0, 1)."""

    def __init__(self, rep_dim: int = 32) -> None:
        super().__init__()
        self.rep_dim = rep_dim
        self.deconv1 = nn.ConvTranspose2d(rep_dim // 16, 4, 5, bias=False, padding=2)
        self.bn3 = _bn2d(4)
        self.deconv2 = nn.ConvTranspose2d(4, 8, 5, bias=False, padding=3)
        self.bn4 = _bn2d(8)
        self.deconv3 = nn.ConvTranspose2d(8, 1, 5, bias=False, padding=2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.view(z.size(0), self.rep_dim // 16, 4, 4)
        x = self._deconv(F.leaky_relu(x), self.deconv1)
        x = self._deconv(F.leaky_relu(self.bn3(x)), self.deconv2)
        x = self._deconv(F.leaky_relu(self.bn4(x)), self.deconv3)
        return torch.sigmoid(x)


# --------------------------------------------------------------------------- Fashion-MNIST


class FmnistLeNet(nn.Module):
    """Fashion-MNIST LeNet encoder: x (B, 1, 28, 28) -> z (B, rep_dim)."""

    def __init__(self, rep_dim: int = 64) -> None:
        super().__init__()
        self.rep_dim = rep_dim
        self.pool = nn.MaxPool2d(2, 2)
        self.conv1 = nn.Conv2d(1, 16, 5, bias=False, padding=2)
        self.bn2d1 = _bn2d(16)
        self.conv2 = nn.Conv2d(16, 32, 5, bias=False, padding=2)
        self.bn2d2 = _bn2d(32)
        self.fc1 = nn.Linear(32 * 7 * 7, 128, bias=False)
        self.bn1d1 = _bn1d(128)
        self.fc2 = nn.Linear(128, rep_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 28, 28)
        x = self.pool(F.leaky_relu(self.bn2d1(self.conv1(x))))
        x = self.pool(F.leaky_relu(self.bn2d2(self.conv2(x))))
        x = F.leaky_relu(self.bn1d1(self.fc1(x.flatten(1))))
        return self.fc2(x)


class FmnistLeNetDecoder(_Decoder):
    """Mirror of :class:`FmnistLeNet`: z (B, rep_dim) -> x̂ (B, 1, 28, 28) in (0, 1)."""

    def __init__(self, rep_dim: int = 64) -> None:
        super().__init__()
        self.rep_dim = rep_dim
        self.fc3 = nn.Linear(rep_dim, 128, bias=False)
        self.bn1d2 = _bn1d(128)
        self.deconv1 = nn.ConvTranspose2d(8, 32, 5, bias=False, padding=2)
        self.bn2d3 = _bn2d(32)
        self.deconv2 = nn.ConvTranspose2d(32, 16, 5, bias=False, padding=3)
        self.bn2d4 = _bn2d(16)
        self.deconv3 = nn.ConvTranspose2d(16, 1, 5, bias=False, padding=2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.bn1d2(self.fc3(z))
        x = x.view(x.size(0), 8, 4, 4)
        x = self._deconv(F.leaky_relu(x), self.deconv1)
        x = self._deconv(F.leaky_relu(self.bn2d3(x)), self.deconv2)
        x = self._deconv(F.leaky_relu(self.bn2d4(x)), self.deconv3)
        return torch.sigmoid(x)


# --------------------------------------------------------------------------- CIFAR-10


class Cifar10LeNet(nn.Module):
    """CIFAR-10 LeNet encoder: x (B, 3, 32, 32) -> z (B, rep_dim)."""

    def __init__(self, rep_dim: int = 128) -> None:
        super().__init__()
        self.rep_dim = rep_dim
        self.pool = nn.MaxPool2d(2, 2)
        self.conv1 = nn.Conv2d(3, 32, 5, bias=False, padding=2)
        self.bn2d1 = _bn2d(32)
        self.conv2 = nn.Conv2d(32, 64, 5, bias=False, padding=2)
        self.bn2d2 = _bn2d(64)
        self.conv3 = nn.Conv2d(64, 128, 5, bias=False, padding=2)
        self.bn2d3 = _bn2d(128)
        self.fc1 = nn.Linear(128 * 4 * 4, rep_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 3, 32, 32)
        x = self.pool(F.leaky_relu(self.bn2d1(self.conv1(x))))
        x = self.pool(F.leaky_relu(self.bn2d2(self.conv2(x))))
        x = self.pool(F.leaky_relu(self.bn2d3(self.conv3(x))))
        return self.fc1(x.flatten(1))


class Cifar10LeNetDecoder(_Decoder):
    """Mirror of :class:`Cifar10LeNet`: z (B, rep_dim) -> x̂ (B, 3, 32, 32) in (0, 1)."""

    def __init__(self, rep_dim: int = 128) -> None:
        super().__init__()
        self.rep_dim = rep_dim
        gain = nn.init.calculate_gain("leaky_relu")
        self.deconv1 = nn.ConvTranspose2d(rep_dim // 16, 128, 5, bias=False, padding=2)
        self.bn2d4 = _bn2d(128)
        self.deconv2 = nn.ConvTranspose2d(128, 64, 5, bias=False, padding=2)
        self.bn2d5 = _bn2d(64)
        self.deconv3 = nn.ConvTranspose2d(64, 32, 5, bias=False, padding=2)
        self.bn2d6 = _bn2d(32)
        self.deconv4 = nn.ConvTranspose2d(32, 3, 5, bias=False, padding=2)
        for m in (self.deconv1, self.deconv2, self.deconv3, self.deconv4):
            nn.init.xavier_uniform_(m.weight, gain=gain)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.view(z.size(0), self.rep_dim // 16, 4, 4)
        x = self._deconv(F.leaky_relu(x), self.deconv1, upsample=False)
        x = self._deconv(F.leaky_relu(self.bn2d4(x)), self.deconv2)
        x = self._deconv(F.leaky_relu(self.bn2d5(x)), self.deconv3)
        x = self._deconv(F.leaky_relu(self.bn2d6(x)), self.deconv4)
        return torch.sigmoid(x)


# --------------------------------------------------------------------------- MLP (tabular)


class LinearBNLeakyReLU(nn.Module):
    """Linear -> BatchNorm1d -> leaky ReLU, bias-free (reference ``Linear_BN_leakyReLU``)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bn = _bn1d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.bn(self.linear(x)))


class Mlp(nn.Module):
    """MLP encoder: x (B, x_dim) -> z (B, rep_dim)."""

    def __init__(self, x_dim: int, h_dims: tuple[int, ...] = (128, 64), rep_dim: int = 32) -> None:
        super().__init__()
        self.rep_dim = rep_dim
        neurons = [x_dim, *h_dims]
        self.hidden = nn.ModuleList(LinearBNLeakyReLU(a, b) for a, b in itertools.pairwise(neurons))
        self.code = nn.Linear(h_dims[-1], rep_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.size(0), -1)
        for layer in self.hidden:
            x = layer(x)
        return self.code(x)


class MlpDecoder(nn.Module):
    """Mirror of :class:`Mlp`: z (B, rep_dim) -> x̂ (B, x_dim) in (0, 1)."""

    def __init__(self, x_dim: int, h_dims: tuple[int, ...] = (64, 128), rep_dim: int = 32) -> None:
        super().__init__()
        self.rep_dim = rep_dim
        neurons = [rep_dim, *h_dims]
        self.hidden = nn.ModuleList(LinearBNLeakyReLU(a, b) for a, b in itertools.pairwise(neurons))
        self.reconstruction = nn.Linear(h_dims[-1], x_dim, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.view(z.size(0), -1)
        for layer in self.hidden:
            x = layer(x)
        return torch.sigmoid(self.reconstruction(x))


class Autoencoder(nn.Module):
    """Encoder + decoder; ``encoder`` has the same architecture as the Deep SAD network."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)).view_as(x)


# --------------------------------------------------------------------------- configuration + registry


_Builder = Callable[[NetConfig], tuple[nn.Module, nn.Module]]

_BUILDERS: dict[str, _Builder] = {
    "mnist_lenet": lambda c: (MnistLeNet(c.rep_dim), MnistLeNetDecoder(c.rep_dim)),
    "fmnist_lenet": lambda c: (FmnistLeNet(c.rep_dim), FmnistLeNetDecoder(c.rep_dim)),
    "cifar10_lenet": lambda c: (Cifar10LeNet(c.rep_dim), Cifar10LeNetDecoder(c.rep_dim)),
    "mlp": lambda c: (
        Mlp(c.input_shape[0], c.h_dims, c.rep_dim),
        MlpDecoder(c.input_shape[0], tuple(reversed(c.h_dims)), c.rep_dim),
    ),
}

assert tuple(_BUILDERS) == NETWORKS, "deepsad.netconfig.NETWORKS names every builder"


def build_encoder(cfg: NetConfig) -> nn.Module:
    """The Deep SAD network φ(·; W) for ``cfg`` (freshly initialised from torch's global RNG)."""
    return _BUILDERS[cfg.name](cfg)[0]


def build_autoencoder(cfg: NetConfig) -> Autoencoder:
    """The autoencoder whose ``encoder`` has the architecture of :func:`build_encoder`."""
    enc, dec = _BUILDERS[cfg.name](cfg)
    return Autoencoder(enc, dec)


def is_image_net(module: nn.Module) -> bool:
    """Whether ``module`` has a convolution (so it takes images and runs channels-last in training)."""
    return any(isinstance(m, nn.Conv2d | nn.ConvTranspose2d) for m in module.modules())
