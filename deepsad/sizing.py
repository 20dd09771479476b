"""How much device memory one member of a training bundle needs (an estimate, for planning bundles).

Per member: weights, gradients and Adam's two moments (4 × the parameters of the larger phase, the
autoencoder when there is pretraining) plus the activations of one training batch, counted as the
outputs of every module in a forward pass, times :data:`ACTIVATION_FACTOR` for what autograd keeps
and what backward allocates. Calibrated against one measurement: 512 MNIST LeNet members (batch 128)
in one process on an H200 took 29 GB, 57 MB each (the factor is fitted to it: 55 MB).
"""

from __future__ import annotations

import torch
from torch import nn

from deepsad.networks import build_autoencoder, build_encoder
from deepsad.training import TrainConfig

BYTES = 4  # fp32 master weights and activations (bf16 autocast halves some activations: not counted)
ACTIVATION_FACTOR = 5.0  # calibrated: gives 55 MB for the MNIST LeNet (measured 57)


def _activations_per_sample(net: nn.Module, shape: tuple[int, ...]) -> int:
    total = [0]

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel()

    handles = [m.register_forward_hook(hook) for m in net.modules() if m is not net]
    try:
        net.train()
        with torch.no_grad():
            net(torch.rand(2, *shape))
    finally:
        for h in handles:
            h.remove()
    return total[0] // 2


def member_bytes(cfg: TrainConfig) -> int:
    """Estimated peak device bytes of one bundle member training ``cfg``."""
    shape = tuple(cfg.net.input_shape)
    nets = [(build_encoder(cfg.net), cfg.sad.batch_size)]
    if cfg.ae is not None:
        nets.append((build_autoencoder(cfg.net), cfg.ae.batch_size))
    peak = 0
    for net, batch in nets:
        params = sum(p.numel() for p in net.parameters())
        acts = _activations_per_sample(net, shape)
        peak = max(peak, int(BYTES * (4 * params + ACTIVATION_FACTOR * acts * batch)))
    return peak
