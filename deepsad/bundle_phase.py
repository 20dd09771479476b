"""One training phase (AE pretraining or Deep SAD) of K bundle members: state, epoch loop, evaluation.

:class:`BundlePhase` holds the members' stacked parameters ``(K, P)``, BatchNorm buffers, Adam
state, shuffling generators and divergence flags, draws each epoch's batch plan, hands it to a
:mod:`strategy <deepsad.bundle_strategies>` — ``vmap`` (all members per step in one vectorised call)
or ``loop`` (one module per member, members' epochs on CPU threads) — and then applies the
learning-rate schedule and reports the epoch. At every step where a member has a batch, its Adam step
and running-stat update are kept only if its loss, gradient, batch statistics and new parameters are
finite; otherwise it is marked diverged and frozen at its last finite state, which no other member
can notice.

Each member follows the epoch loop of :func:`deepsad.training.train` for its own configuration: the
same seeded permutations, batches, loss normalisation (sum / batch size), Adam and MultiStepLR (γ = 0.1).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from deepsad.bundle_strategies import BundleStrategy, LoopStrategy, VmapStrategy
from deepsad.objective import Phase, adjust_center, squared_distance
from deepsad.pool import PooledPart, SamplePool, epoch_plan
from deepsad.seeding import derive_seed
from deepsad.stacked import StackedAdam, StackedNet
from deepsad.training import OptimConfig


@dataclass(frozen=True)
class EpochOutcome:
    """What one bundled epoch did. Lists are per member.

    Attributes:
        epoch: the finished epoch, counting from 1.
        losses: mean per-sample loss of the epoch; None for a member that was not training.
        lrs: learning rate the epoch ran with.
        seconds: wall time of the epoch (shared by all members).
        diverged: members that diverged in this epoch -> why.
    """

    epoch: int
    losses: list[float | None]
    lrs: list[float]
    seconds: float
    diverged: dict[int, str]


class BundlePhase:
    """K members' state in one phase, and its epoch loop.

    Args:
        phase: ``"ae"`` (reconstruction loss) or ``"sad"`` (Deep SAD loss, needs ``c`` and ``eta``).
        net: the functional view of the phase's architecture.
        template: a module of that architecture with torch's BatchNorm (the loop strategy copies it).
        flat: (K, P) initial parameters; buffers: name -> (K, *shape) BatchNorm buffers.
        pool, parts: the sample pool and each member's training part in it.
        optims: each member's optimiser settings (epochs, milestones and batch size must agree).
        seeds: each member's run seed (shuffling uses ``derive_seed(seed, f"{phase}-shuffle")``).
        alive: members that train (False: failed earlier, never stepped).
        strategy: ``"vmap"`` or ``"loop"`` (see :mod:`deepsad.bundle_strategies`; resolved already).
        c: (K, rep_dim) centres; eta: (K,) η — Deep SAD phase only.
    """

    def __init__(
        self, *, phase: Phase, net: StackedNet, template: nn.Module, flat: torch.Tensor,
        buffers: dict[str, torch.Tensor], pool: SamplePool, parts: Sequence[PooledPart],
        optims: Sequence[OptimConfig], seeds: Sequence[int], alive: Sequence[bool], bf16: bool,
        strategy: Literal["vmap", "loop"], c: torch.Tensor | None = None, eta: torch.Tensor | None = None,
    ) -> None:
        k = flat.shape[0]
        self.phase, self.net, self.flat, self.buffers = phase, net, flat, buffers
        self.pool, self.parts, self.bf16 = pool, list(parts), bf16
        self.device = flat.device
        self.cfg = optims[0]
        self.generators = [torch.Generator().manual_seed(derive_seed(s, f"{phase}-shuffle")) for s in seeds]
        self.adam = StackedAdam(flat, [o.lr for o in optims], [o.weight_decay for o in optims])
        self.lrs = [o.lr for o in optims]
        self.alive = torch.tensor(list(alive), dtype=torch.bool, device=self.device)
        self.epoch = 0
        self.c = c if c is not None else torch.zeros(k, 1, device=self.device)
        self.eta = eta if eta is not None else torch.ones(k, device=self.device)
        self.strategy: BundleStrategy
        if strategy == "loop":
            self.strategy = LoopStrategy(phase=phase, template=template, net=net, pool=pool, bf16=bf16,
                                         eta=self.eta, buffers=buffers)
        else:
            self.strategy = VmapStrategy(phase=phase, net=net, pool=pool, bf16=bf16, eta=self.eta)

    @property
    def k(self) -> int:
        return int(self.flat.shape[0])

    def run_epoch(self) -> EpochOutcome:
        """Train every live member for one epoch; returns its losses, lrs and the newly diverged."""
        t0 = time.perf_counter()
        alive_before = self.alive.cpu().tolist()
        plan = epoch_plan(self.parts, self.generators, self.cfg.batch_size, alive_before, self.device)
        lrs = list(self.lrs)
        totals = self.strategy.run_steps(self, plan)
        # MultiStepLR(γ=0.1) after the epoch, multiplicatively as torch does.
        self.epoch += 1
        if self.epoch in self.cfg.milestones:
            self.lrs = [lr * 0.1 for lr in self.lrs]
        self.adam.lr = torch.tensor(self.lrs, dtype=torch.float64, device=self.device)
        sums = totals.cpu().tolist()
        alive_after = self.alive.cpu().tolist()
        losses = [sums[k] / len(self.parts[k]) if alive_after[k] else None for k in range(self.k)]
        diverged = {k: self._reason() for k in range(self.k) if alive_before[k] and not alive_after[k]}
        return EpochOutcome(self.epoch, losses, lrs, time.perf_counter() - t0, diverged)

    def close(self) -> None:
        """Release the strategy's threads; the phase's state stays readable (state, state_dict)."""
        self.strategy.close()

    def mark_failed(self, members: Sequence[int]) -> None:
        """Stop training ``members`` (e.g. their validation scores were not finite)."""
        if members:
            idx = torch.tensor(list(members), dtype=torch.int64, device=self.device)
            self.alive[idx] = False

    # ------------------------------------------------------------------ evaluation

    def centers(self, eval_samples: int = 1 << 16) -> torch.Tensor:
        """c of every member: the mean eval-mode embedding of its training part (float64 sum), adjusted.

        Returns (K, rep_dim) float32, as :func:`deepsad.training.init_center` per member.
        """
        lengths = torch.tensor([len(p) for p in self.parts], device=self.device)
        total: torch.Tensor | None = None
        for members, cols, z in self.strategy.embeddings(self.flat, self.buffers, self.parts, eval_samples,
                                                         range(self.k)):
            keep = (torch.arange(cols.start, cols.stop, device=self.device).view(1, -1)
                    < lengths[members].view(-1, 1))
            part = torch.where(keep.unsqueeze(-1), z.double(), torch.zeros((), dtype=torch.float64,
                                                                           device=self.device)).sum(1)
            if total is None:
                total = torch.zeros(self.k, part.shape[-1], dtype=torch.float64, device=self.device)
            total[members] += part
        assert total is not None
        return adjust_center((total / lengths.view(-1, 1).double()).float())

    def score_rows(self, parts: Sequence[PooledPart], c: torch.Tensor, eval_samples: int = 1 << 16,
                   members: Sequence[int] | None = None) -> torch.Tensor:
        """Anomaly scores ||φ(x) - c_k||² (eval mode) of every member's part, on the device.

        Returns (K, L) float32, L = the longest part; row k is valid up to ``len(parts[k])``. With
        ``members``, only those rows are guaranteed (others may be NaN: the loop strategy skips them).
        """
        out = torch.full((self.k, max(len(p) for p in parts)), float("nan"), dtype=torch.float32,
                         device=self.device)
        wanted = range(self.k) if members is None else members
        for rows, cols, z in self.strategy.embeddings(self.flat, self.buffers, parts, eval_samples, wanted):
            out[rows, cols] = squared_distance(z, c[rows].unsqueeze(1))
        return out

    def scores(self, parts: Sequence[PooledPart], c: torch.Tensor, eval_samples: int = 1 << 16,
               members: Sequence[int] | None = None) -> list[np.ndarray]:
        """:meth:`score_rows` on the host, cut to each part: K arrays (N_k,) float32."""
        host = self.score_rows(parts, c, eval_samples, members).cpu().numpy()
        return [host[k, : len(p)] for k, p in enumerate(parts)]

    def _reason(self) -> str:
        return (f"diverged: non-finite loss, gradient or parameters in {self.phase} epoch {self.epoch}; "
                "parameters frozen at their last finite values")

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
        """Tensors and plain values that :meth:`load_state` restores exactly (taken between epochs)."""
        tensors = {"flat": self.flat, "alive": self.alive, "c": self.c,
                   "rng": torch.stack([g.get_state() for g in self.generators])}
        tensors.update({f"buf.{n}": v for n, v in self.buffers.items()})
        tensors.update({f"adam.{n}": v for n, v in self.adam.state().items()})
        return ({n: v.detach().cpu().clone() for n, v in tensors.items()},
                {"epoch": self.epoch, "lrs": list(self.lrs)})

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, object]) -> None:
        """Restore a :meth:`state` taken from a phase of the same members and configuration."""
        dev = self.device
        self.flat = tensors["flat"].to(dev)
        self.alive = tensors["alive"].to(dev)
        self.c = tensors["c"].to(dev)
        for g, st in zip(self.generators, tensors["rng"], strict=True):
            g.set_state(st.clone())
        self.buffers = {n: tensors[f"buf.{n}"].to(dev) for n in self.buffers}
        self.adam.load_state({n[5:]: v for n, v in tensors.items() if n.startswith("adam.")})
        self.epoch = int(meta["epoch"])  # type: ignore[call-overload]
        self.lrs = [float(v) for v in meta["lrs"]]  # type: ignore[attr-defined]
        self.adam.lr = torch.tensor(self.lrs, dtype=torch.float64, device=dev)
