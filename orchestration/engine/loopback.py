"""A Ray Train ``TorchConfig`` whose rendezvous listens on 127.0.0.1 only (local, one-node Ray).

Ray's stock ``TorchConfig`` initialises the process group with ``init_method="env://"``; torch's
``TCPStore`` server then binds the wildcard address (``*:PORT``) whatever ``MASTER_ADDR`` says.
On the laptop sweep nothing may listen beyond loopback, so rank 0 binds a loopback socket itself and
hands it to the store (``master_listen_fd``). One node only: a cluster needs the stock config.
This subclasses Ray Train internals (``_TorchBackend``) — checked against Ray 2.60 by the sweep
tests with 2 workers per trial.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch.distributed as dist
from ray.train.torch.config import TorchConfig, _set_torch_distributed_env_vars, _TorchBackend


def _loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _init_process_group(backend: str, world_rank: int, world_size: int, port: int, timeout_s: int) -> None:
    timeout = timedelta(seconds=timeout_s)
    if world_rank == 0:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        store = dist.TCPStore("127.0.0.1", port, world_size, True, timeout=timeout,
                              master_listen_fd=sock.detach(), use_libuv=False)
    else:
        store = dist.TCPStore("127.0.0.1", port, world_size, False, timeout=timeout)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group: Any, backend_config: Any) -> None:
        import ray

        port = worker_group.execute_single(0, _loopback_port)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([
            worker_group.execute_single_async(
                i, _init_process_group, backend=backend_config.backend or "gloo", world_rank=i,
                world_size=len(worker_group), port=port, timeout_s=backend_config.timeout_s,
            )
            for i in range(len(worker_group))
        ])


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """``TorchConfig`` for a one-node Ray on 127.0.0.1."""

    @property
    def backend_cls(self) -> type:
        return _LoopbackTorchBackend
