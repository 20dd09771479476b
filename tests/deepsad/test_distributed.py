"""Data-parallel training with 2 gloo processes on the CPU equals the single-process run."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deepsad.data.sources import load_dataset
from deepsad.data.splits import Protocol, SemiSupervisedSplit, make_split
from deepsad.distributed import DistContext, batches
from deepsad.model import DeepSADModel
from deepsad.networks import build_encoder, default_net_config
from deepsad.training import OptimConfig, TrainConfig, init_center, train

pytestmark = pytest.mark.slow


def make_case() -> tuple[SemiSupervisedSplit, TrainConfig]:
    # digits: 64 features, an MLP with BatchNorm1d in every hidden layer
    split = make_split(load_dataset("digits", None),
                       Protocol(normal_classes=(0,), known_anomaly_classes=(1,), n_labeled_anomalies=8,
                                ratio_pollution=0.05, seed=0))
    cfg = TrainConfig(
        net=default_net_config(split.dataset, split.train.x.shape[1:]),
        sad=OptimConfig(lr=1e-3, epochs=3, milestones=(2,), batch_size=33),  # odd: ranks get 17 + 16
        ae=OptimConfig(lr=1e-3, epochs=2, milestones=(1,), batch_size=33, weight_decay=0.5e-3),
        seed=1,
    )
    return split, cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo on loopback
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        split, cfg = make_case()
        torch.manual_seed(0)
        net = build_encoder(cfg.net)
        c = init_center(net, torch.as_tensor(split.train.x), DistContext.current())
        result = train(split, cfg)
        if rank == 0:
            result.model.save(Path(out) / "model")
            torch.save({"c_init": c, "val_auroc": torch.tensor(result.val_auroc)}, Path(out) / "extra.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, 2, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]

    split, cfg = make_case()
    single = train(split, cfg)
    ddp = DeepSADModel.load(tmp_path / "model")
    extra = torch.load(tmp_path / "extra.pt", weights_only=True)

    torch.manual_seed(0)
    net = build_encoder(cfg.net)
    c_single = init_center(net, torch.as_tensor(split.train.x), DistContext())
    torch.testing.assert_close(extra["c_init"], c_single, atol=1e-6, rtol=0)  # c averaged over ranks

    for k, v in single.model.state_dict.items():
        torch.testing.assert_close(ddp.state_dict[k], v, atol=1e-4, rtol=1e-4, msg=k)
    torch.testing.assert_close(ddp.c, single.model.c, atol=1e-5, rtol=0)
    assert float(extra["val_auroc"]) == pytest.approx(single.val_auroc, abs=1e-3)
    scores_ddp, scores_single = ddp.score(split.test.x), single.model.score(split.test.x)
    np.testing.assert_allclose(scores_ddp, scores_single, rtol=1e-3, atol=1e-5)


def test_batches_are_the_same_for_one_and_two_ranks() -> None:
    perm = torch.randperm(101)
    one, two = batches(perm, 50, 1), batches(perm, 50, 2)
    assert [len(b) for b in one] == [50, 51] and all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    shards = [DistContext(r, 2).shard(one[0]) for r in range(2)]
    assert torch.equal(torch.cat(shards), one[0])
