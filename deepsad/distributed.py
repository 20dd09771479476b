"""Data parallelism over ``torch.distributed`` that reproduces the single-process run.

The trainer is written once; with one process every helper here is a no-op. With W processes:

* every rank draws the same global batch order (same seeded generator) and takes its contiguous
  share of each global batch (:meth:`DistContext.shard`);
* BatchNorm statistics in training mode are computed over the *global* batch
  (:class:`GlobalBatchNorm`, a differentiable all-reduce that also works with gloo on CPU, where
  ``nn.SyncBatchNorm`` refuses to run), so every forward pass equals the single-process one;
* each rank's loss is ``sum(local losses) / global batch size`` and gradients are *summed* over ranks
  (:meth:`DistContext.sum_gradients`), which is exactly the gradient of the global mean;
* the centre c is a sum of embeddings and a count, both summed over ranks.

The process group is created by whoever launches the workers (Ray Train, ``torchrun`` or a test);
this module only uses it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """This process's place in the data-parallel group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> DistContext:
        """The context of the initialised default process group, else a single process."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch of indices idx: (B,) -> (≈B/W,)."""
        if not self.active:
            return idx
        return torch.tensor_split(idx, self.world_size)[self.rank]

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks in place (not differentiable) and return it."""
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def sum_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Sum every parameter's gradient over ranks, in one flat all-reduce."""
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n


def min_last_batch(world_size: int) -> int:
    """Smallest allowed final batch: BatchNorm needs 2 samples, and every rank needs one."""
    return max(2, world_size)


def batches(perm: torch.Tensor, batch_size: int, world_size: int = 1) -> list[torch.Tensor]:
    """Split a permutation into global batches; a too-small final batch joins the one before it.

    perm: (N,) -> list of (≤ batch_size + min_last_batch,) index tensors. The rule depends only on
    N, batch_size and the world size's minimum, so one process and W processes see the same batches
    whenever ``min_last_batch`` agrees (always for W ≤ 2).
    """
    parts = list(perm.split(batch_size))
    if len(parts) > 1 and len(parts[-1]) < min_last_batch(world_size):
        parts[-2] = torch.cat([parts[-2], parts[-1]])
        parts.pop()
    return parts


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics span the batch of every rank.

    Same parameters and buffers as ``nn.BatchNorm1d/2d`` (state dicts are interchangeable). Uses two
    differentiable all-reduces (sum, then centred sum of squares) so the result and its gradient equal
    those of one process seeing the whole batch. Outside training, or without a process group, it is
    plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        channels = x.size(1)
        count = torch.tensor([x.numel() / channels], dtype=x.dtype, device=x.device)
        stats = dist_fn.all_reduce(torch.cat([x.sum(dims), count]))
        n = stats[-1]
        mean = stats[:channels] / n
        xc = x - mean.view(shape)
        var = dist_fn.all_reduce((xc * xc).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.0
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
        out = xc / torch.sqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d/2d in ``module`` (in place) by :class:`GlobalBatchNorm`, keeping state."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm1d | nn.BatchNorm2d) and not isinstance(child, GlobalBatchNorm):
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(next(iter(child.buffers())).device if list(child.buffers()) else "cpu")
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_batchnorm(child)
    return module
