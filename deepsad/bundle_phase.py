"""One training phase (AE pretraining or Deep SAD) of K bundle members: state, epoch loop, evaluation.

:class:`BundlePhase` holds the members' stacked parameters ``(K, P)``, BatchNorm buffers, Adam
state, shuffling generators and divergence flags, and runs whole epochs. Per step a
:mod:`strategy <deepsad.bundle_strategies>` computes every stepping member's loss and gradient —
``vmap`` (one vectorised call on padded batches) or ``loop`` (one module per member, for CPUs) — then
one :class:`~deepsad.stacked.StackedAdam` step and one running-stat update are applied to the members
that (a) have a batch at that step and (b) stayed finite. A member whose loss, gradient, batch
statistics or new parameters are not finite is marked diverged at that step and frozen at its last
finite parameters; being masked with ``torch.where`` (never multiplied by 0, which would spread NaN),
it cannot affect any other member.

Each member follows :func:`deepsad.training._run_epochs` for its own configuration: the same seeded
permutations, batches, loss normalisation (sum / batch size), Adam and MultiStepLR (γ = 0.1).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import grad, vmap

from deepsad.objective import EPS, adjust_center, deep_sad_losses, reconstruction_errors, squared_distance
from deepsad.pool import PooledPart, SamplePool, epoch_plan
from deepsad.stacked import StackedAdam, StackedNet
from deepsad.training import OptimConfig, Phase, _autocast, derive_seed


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
        flat: (K, P) initial parameters; buffers: name -> (K, *shape) BatchNorm buffers.
        pool, parts: the sample pool and each member's training part in it.
        optims: each member's optimiser settings (epochs, milestones and batch size must agree).
        seeds: each member's run seed (shuffling uses ``derive_seed(seed, f"{phase}-shuffle")``).
        alive: members that train (False: failed earlier, never stepped).
        c: (K, rep_dim) centres; eta: (K,) η — Deep SAD phase only.
    """

    def __init__(
        self, *, phase: Phase, net: StackedNet, flat: torch.Tensor, buffers: dict[str, torch.Tensor],
        pool: SamplePool, parts: Sequence[PooledPart], optims: Sequence[OptimConfig], seeds: Sequence[int],
        alive: Sequence[bool], bf16: bool, c: torch.Tensor | None = None, eta: torch.Tensor | None = None,
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
        self._grad = vmap(grad(self._member_loss, has_aux=True))

    @property
    def k(self) -> int:
        return int(self.flat.shape[0])

    def _member_loss(
        self, flat: torch.Tensor, x: torch.Tensor, semi: torch.Tensor, mask: torch.Tensor, c: torch.Tensor,
        eta: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]]:
        """One member's step loss (vmapped): flat (P,), x (B, ...), semi (B,), mask (B,), c (rep,), eta ()."""
        with _autocast(self.device, self.bf16):
            out, stats = self.net.train_forward(flat, x, mask)
        if self.phase == "ae":
            losses = reconstruction_errors(out.float(), x)
        else:
            losses = deep_sad_losses(squared_distance(out.float(), c), semi, eta, EPS)  # type: ignore[arg-type]
        total = torch.where(mask, losses, torch.zeros_like(losses)).sum()
        return total / mask.sum(), (total.detach(), stats)

    def run_epoch(self) -> EpochOutcome:
        """Train every live member for one epoch; returns its losses, lrs and the newly diverged."""
        t0 = time.perf_counter()
        alive_before = self.alive.cpu().tolist()
        plan = epoch_plan(self.parts, self.generators, self.cfg.batch_size, alive_before, self.device)
        totals = torch.zeros(self.k, dtype=torch.float64, device=self.device)
        lrs = list(self.lrs)
        for s in range(plan.steps):
            x = self.pool.x[plan.rows[s]]  # (K, Bmax, *sample_shape)
            g, (total, stats) = self._grad(self.flat, x, plan.semi_targets[s], plan.valid[s], self.c, self.eta)
            proposed = self.adam.propose(self.flat, g)
            finite = torch.isfinite(total) & torch.isfinite(g).all(1) & torch.isfinite(proposed).all(1)
            for mean, var in stats.values():
                finite &= torch.isfinite(mean).all(1) & torch.isfinite(var).all(1)
            stepping = plan.active[s] & self.alive
            accept = stepping & finite
            failed_now = stepping & ~finite
            self.alive = self.alive & ~failed_now
            self.flat = torch.where(accept.view(-1, 1), proposed, self.flat)
            self.adam.commit(accept)
            self.net.update_running_stats(self.buffers, stats, accept)
            totals += torch.where(accept, total.double(), torch.zeros_like(totals))
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

    def mark_failed(self, members: Sequence[int]) -> None:
        """Stop training ``members`` (e.g. their validation scores were not finite)."""
        if members:
            idx = torch.tensor(list(members), dtype=torch.int64, device=self.device)
            self.alive[idx] = False

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def _eval_chunks(self, parts: Sequence[PooledPart], eval_samples: int) -> Iterator[tuple[slice, torch.Tensor]]:
        """Eval-mode embeddings of every member's part, in column chunks: (cols, z (K, c, rep_dim)).

        Members whose parts are the same rows share one input chunk (no K-fold copy); otherwise each
        member's rows are padded to the longest part with its first row (padding is ignored by callers).
        """
        length = max(len(p) for p in parts)
        chunk = max(1, eval_samples // self.k)
        first = parts[0].rows
        shared = all(p.rows is first or (len(p) == len(first) and torch.equal(p.rows, first)) for p in parts)
        if not shared:
            rows = torch.stack([torch.cat([p.rows, p.rows[:1].expand(length - len(p))]) for p in parts])
        fwd = vmap(self.net.eval_forward, in_dims=(0, 0, None if shared else 0))
        for a in range(0, length, chunk):
            cols = slice(a, min(a + chunk, length))
            x = self.pool.x[first[cols]] if shared else self.pool.x[rows[:, cols]]
            yield cols, fwd(self.flat, self.buffers, x).float()

    def centers(self, eval_samples: int = 1 << 16) -> torch.Tensor:
        """c of every member: the mean eval-mode embedding of its training part (float64 sum), adjusted.

        Returns (K, rep_dim) float32, as :func:`deepsad.training.init_center` per member.
        """
        lengths = torch.tensor([len(p) for p in self.parts], device=self.device)
        total: torch.Tensor | None = None
        for cols, z in self._eval_chunks(self.parts, eval_samples):
            keep = (torch.arange(cols.start, cols.stop, device=self.device).view(1, -1) < lengths.view(-1, 1))
            part = torch.where(keep.unsqueeze(-1), z.double(), torch.zeros((), dtype=torch.float64,
                                                                           device=self.device)).sum(1)
            total = part if total is None else total + part
        assert total is not None
        return adjust_center((total / lengths.view(-1, 1).double()).float())

    def score_rows(self, parts: Sequence[PooledPart], c: torch.Tensor, eval_samples: int = 1 << 16) -> torch.Tensor:
        """Anomaly scores ||φ(x) - c_k||² (eval mode) of every member's part, on the device.

        Returns (K, L) float32, L = the longest part; row k is valid up to ``len(parts[k])``.
        """
        out = torch.empty(self.k, max(len(p) for p in parts), dtype=torch.float32, device=self.device)
        for cols, z in self._eval_chunks(parts, eval_samples):
            out[:, cols] = ((z - c.view(self.k, 1, -1)) ** 2).sum(-1)
        return out

    def scores(self, parts: Sequence[PooledPart], c: torch.Tensor, eval_samples: int = 1 << 16) -> list[np.ndarray]:
        """:meth:`score_rows` on the host, cut to each part: K arrays (N_k,) float32."""
        host = self.score_rows(parts, c, eval_samples).cpu().numpy()
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
