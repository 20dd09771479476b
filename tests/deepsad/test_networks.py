from __future__ import annotations

import pytest
import torch
from torch import nn

from deepsad.errors import ConfigError
from deepsad.networks import (
    DEFAULT_NETS,
    NetConfig,
    build_autoencoder,
    build_encoder,
    default_net_config,
)
from deepsad.training import transfer_encoder

CASES = [
    NetConfig("mnist_lenet", 32, (1, 28, 28)),
    NetConfig("mnist_lenet", 64, (1, 28, 28)),
    NetConfig("fmnist_lenet", 64, (1, 28, 28)),
    NetConfig("fmnist_lenet", 10, (1, 28, 28)),
    NetConfig("cifar10_lenet", 128, (3, 32, 32)),
    NetConfig("mlp", 32, (274,), (128, 64)),
    NetConfig("mlp", 4, (6,), (32, 16)),
]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.name}-{c.rep_dim}")
def test_shapes_and_reference_layer_conventions(cfg: NetConfig) -> None:
    torch.manual_seed(0)
    enc, ae = build_encoder(cfg), build_autoencoder(cfg)
    x = torch.rand(5, *cfg.input_shape)
    assert enc(x).shape == (5, cfg.rep_dim)
    x_hat = ae(x)
    assert x_hat.shape == x.shape
    assert bool(((x_hat > 0) & (x_hat < 1)).all())  # sigmoid output, like the reference
    for m in list(enc.modules()) + list(ae.modules()):
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            assert m.bias is None, "every layer is bias-free"
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            assert not m.affine and m.eps == 1e-4


def test_parameter_counts_match_the_reference() -> None:
    # counted from Deep-SAD-PyTorch's networks/mnist_LeNet.py: conv1 8*1*25, conv2 4*8*25, fc1 196*32
    enc = build_encoder(NetConfig("mnist_lenet", 32, (1, 28, 28)))
    assert sum(p.numel() for p in enc.parameters()) == 200 + 800 + 196 * 32
    enc = build_encoder(NetConfig("fmnist_lenet", 64, (1, 28, 28)))
    assert sum(p.numel() for p in enc.parameters()) == 16 * 25 + 32 * 16 * 25 + 1568 * 128 + 128 * 64


def test_encoder_of_autoencoder_has_the_network_architecture() -> None:
    cfg = NetConfig("fmnist_lenet", 64, (1, 28, 28))
    net, ae = build_encoder(cfg), build_autoencoder(cfg)
    assert {k: v.shape for k, v in net.state_dict().items()} == {
        k.removeprefix("encoder."): v.shape for k, v in ae.state_dict().items() if k.startswith("encoder.")
    }


@pytest.mark.parametrize("cfg", CASES[:1] + CASES[2:3] + CASES[5:6], ids=lambda c: c.name)
def test_transfer_copies_every_encoder_tensor(cfg: NetConfig) -> None:
    torch.manual_seed(0)
    ae = build_autoencoder(cfg)
    for b in ae.buffers():  # make BatchNorm statistics distinguishable from a fresh net's
        b.add_(3)
    torch.manual_seed(1)
    net = build_encoder(cfg)
    ae_state = ae.state_dict()
    n = transfer_encoder(net, ae_state)
    assert n == len(net.state_dict())
    for k, v in net.state_dict().items():
        assert torch.equal(v, ae_state[f"encoder.{k}"]), k


def test_reference_compat_transfer_copies_nothing() -> None:
    cfg = NetConfig("mnist_lenet", 32, (1, 28, 28))
    ae, net = build_autoencoder(cfg), build_encoder(cfg)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert transfer_encoder(net, ae.state_dict(), reference_compat=True) == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_transfer_rejects_a_mismatched_autoencoder() -> None:
    ae = build_autoencoder(NetConfig("mnist_lenet", 64, (1, 28, 28)))
    net = build_encoder(NetConfig("mnist_lenet", 32, (1, 28, 28)))
    with pytest.raises(ConfigError, match="does not match"):
        transfer_encoder(net, ae.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet", "rep_dim": 32, "input_shape": (1, 28, 28)}, "unknown network 'resnet'"),
        ({"name": "mnist_lenet", "rep_dim": 0, "input_shape": (1, 28, 28)}, "rep_dim: must be >= 1"),
        ({"name": "mnist_lenet", "rep_dim": 20, "input_shape": (1, 28, 28)}, "multiple of 16"),
        ({"name": "mnist_lenet", "rep_dim": 32, "input_shape": (3, 32, 32)}, "needs inputs of shape"),
        ({"name": "mlp", "rep_dim": 8, "input_shape": (6,)}, "h_dims"),
    ],
)
def test_bad_net_configs(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NetConfig(**kwargs)  # type: ignore[arg-type]


def test_defaults_follow_the_reference() -> None:
    assert default_net_config("mnist", (1, 28, 28)).rep_dim == 32
    assert default_net_config("fmnist", (1, 28, 28)).name == "fmnist_lenet"
    assert default_net_config("cifar10", (3, 32, 32)).rep_dim == 128
    assert default_net_config("thyroid", (6,)) == NetConfig("mlp", 4, (6,), (32, 16))
    assert default_net_config("digits", (64,)).name == "mlp"
    assert set(DEFAULT_NETS) >= {"arrhythmia", "cardio", "satellite", "satimage-2", "shuttle"}
    assert NetConfig.from_dict(default_net_config("cardio", (21,)).to_dict()) == default_net_config("cardio", (21,))
