"""The decoders' two formulations of ``deconv(up(x))`` give the same numbers up to float rounding:
forward, gradients of every parameter and of the input, alone, channels-last and under ``vmap``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from deepsad.errors import ConfigError
from deepsad.networks import (
    DEFAULT_DECONV,
    NetConfig,
    build_autoencoder,
    deconv,
    set_deconv_formulation,
)

NETS = [NetConfig("mnist_lenet", 32, (1, 28, 28)), NetConfig("mnist_lenet", 64, (1, 28, 28)),
        NetConfig("fmnist_lenet", 64, (1, 28, 28)), NetConfig("cifar10_lenet", 128, (3, 32, 32))]


def _pair(cfg: NetConfig, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ae = build_autoencoder(cfg).to(dtype)
    return set_deconv_formulation(copy.deepcopy(ae), "transpose"), set_deconv_formulation(copy.deepcopy(ae), "phase")


def _loss_and_grads(ae: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    x = x.clone().requires_grad_(True)
    ae.train()
    out = ae(x)
    ((out - x.detach()) ** 2).sum().backward()
    assert x.grad is not None
    grads = {n: p.grad.clone() for n, p in ae.named_parameters() if p.grad is not None}
    return out.detach(), grads, x.grad


@pytest.mark.parametrize("cfg", NETS, ids=lambda c: f"{c.name}-{c.rep_dim}")
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)], ids=["f64", "f32"])
def test_phase_decomposition_equals_the_transposed_convolution(cfg: NetConfig, dtype: torch.dtype,
                                                               tol: float) -> None:
    """Forward, every parameter's gradient and the input's gradient (through BatchNorm in training
    mode); tolerances relative to each tensor's largest entry: float64 shows the identity exactly,
    float32 that only rounding differs."""
    old, new = _pair(cfg, dtype)
    x = torch.rand(6, *cfg.input_shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    out_a, grads_a, gx_a = _loss_and_grads(old, x)
    out_b, grads_b, gx_b = _loss_and_grads(new, x)
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=tol * float(out_a.abs().max()))
    assert grads_a.keys() == grads_b.keys() and any(n.startswith("decoder.deconv") for n in grads_a)
    for name, ga in grads_a.items():
        torch.testing.assert_close(grads_b[name], ga, rtol=0, atol=tol * float(ga.abs().max()), msg=name)
    torch.testing.assert_close(gx_b, gx_a, rtol=0, atol=tol * float(gx_a.abs().max()))


def test_the_formulations_agree_channels_last_and_under_vmap() -> None:
    """Single runs keep images channels-last; bundles call the decoder under vmap with stacked weights."""
    cfg = NETS[0]
    old, new = _pair(cfg, torch.float32)
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    cl = x.contiguous(memory_format=torch.channels_last)
    a = old.to(memory_format=torch.channels_last).train()(cl)  # type: ignore[call-overload]
    b = new.to(memory_format=torch.channels_last).train()(cl)  # type: ignore[call-overload]
    torch.testing.assert_close(b, a, rtol=0, atol=2e-5)

    decoders = [build_autoencoder(cfg).decoder for _ in range(3)]
    names = [n for n, _ in decoders[0].named_parameters()]
    stacked = {n: torch.stack([dict(d.named_parameters())[n].detach() for d in decoders]) for n in names}
    z = torch.randn(3, 4, cfg.rep_dim, generator=torch.Generator().manual_seed(3))

    def loss(params: dict[str, torch.Tensor], z: torch.Tensor, module: nn.Module) -> torch.Tensor:
        return functional_call(module, params, (z,)).square().sum()

    results = {}
    for how in ("transpose", "phase"):
        module = set_deconv_formulation(copy.deepcopy(decoders[0]), how).eval()  # eval: BatchNorm without updates
        results[how] = vmap(grad(loss), in_dims=(0, 0, None))(stacked, z, module)
    for n in names:
        ref = results["transpose"][n]
        torch.testing.assert_close(results["phase"][n], ref, rtol=0, atol=2e-5 * float(ref.abs().max()), msg=n)


def test_odd_geometries_are_covered() -> None:
    """Kernel sizes and paddings beyond the paper's decoders (asymmetric cover, crops of both kinds)."""
    g = torch.Generator().manual_seed(4)
    for k, p, size in [(3, 1, 5), (5, 0, 4), (5, 4, 6), (4, 1, 3), (7, 3, 5), (1, 0, 3)]:
        layer = nn.ConvTranspose2d(3, 2, k, bias=False, padding=p).double()
        x = torch.rand(2, 3, size, size + 1, dtype=torch.float64, generator=g)
        torch.testing.assert_close(deconv(x, layer, upsample=True, formulation="phase"),
                                   deconv(x, layer, upsample=True, formulation="transpose"), rtol=0, atol=1e-12)
        torch.testing.assert_close(deconv(x, layer, upsample=False, formulation="phase"),
                                   deconv(x, layer, upsample=False, formulation="transpose"), rtol=0, atol=1e-12)


def test_phase_is_the_default_and_unknown_formulations_are_refused() -> None:
    assert DEFAULT_DECONV == "phase"
    assert all(getattr(m, "formulation", "phase") == "phase" for m in build_autoencoder(NETS[0]).modules())
    with pytest.raises(ConfigError, match="formulation"):
        set_deconv_formulation(build_autoencoder(NETS[0]), "fft")  # type: ignore[arg-type]
