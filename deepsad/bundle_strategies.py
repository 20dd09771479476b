"""How a bundle runs its members' steps and evaluations: vectorised (``vmap``) or member by member (``loop``).

:class:`~deepsad.bundle_phase.BundlePhase` owns the state every strategy shares (:class:`PhaseState`:
stacked parameters ``flat: (K, P)``, stacked BatchNorm buffers, :class:`~deepsad.stacked.StackedAdam`,
divergence flags, centres) plus batch plans, learning-rate schedule and reporting. It hands a strategy
one epoch's plan (:meth:`BundleStrategy.run_steps`) and asks it for eval-mode embeddings
(:meth:`BundleStrategy.embeddings`). Both strategies apply the same rule to every member at every step
of the plan where it has a batch: loss and gradient of its batch (sum / batch size), one Adam step
(StackedAdam's arithmetic), torch's running-statistics update — all kept only if the loss, gradient,
batch statistics and new parameters are finite; otherwise the member is frozen at its last finite
state and marked diverged. The stacked tensors stay the one source of truth between epochs, so a
checkpoint written under one strategy resumes under the other.

* :class:`VmapStrategy` — per step one ``vmap(grad(...))`` call over all K members on padded batches
  (:class:`~deepsad.stacked.MaskedBatchNorm`) and one vectorised Adam step. Nothing syncs with the
  host inside an epoch; this is what fills a GPU.
* :class:`LoopStrategy` — K ordinary ``nn.Module`` copies in the layout of :func:`deepsad.training.train`
  (channels-last images), each member's exact batch (no padding), torch's own BatchNorm; each
  member's whole epoch runs as one task on CPU worker threads (:mod:`deepsad.workers`), so members
  never wait for each other within an epoch. On CPUs ``vmap`` is the slow choice: it turns the
  LeNets' convolutions into grouped convolutions, whose backward is several times slower there.

``"auto"`` picks ``loop`` on CPUs and ``vmap`` elsewhere (:func:`resolve_strategy`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Literal, Protocol

import torch
from torch import nn
from torch.func import grad, vmap

from deepsad.errors import ConfigError
from deepsad.networks import is_image_net
from deepsad.objective import Phase, phase_losses
from deepsad.pool import EpochPlan, PooledPart, SamplePool
from deepsad.stacked import BatchStats, StackedAdam, StackedNet
from deepsad.training import autocast
from deepsad.workers import MemberWorkers

#: What a caller may ask for; "auto" resolves by device.
Strategy = Literal["auto", "vmap", "loop"]

#: An embedding chunk: (members — a slice of the K axis, columns — a slice of the members' parts,
#: z: (members, columns, rep_dim) float32).
EmbeddingChunk = tuple[slice, slice, torch.Tensor]

#: Samples per eval-mode forward of one member in the loop strategy: convolutional nets in cache-sized
#: chunks — the MNIST LeNet encoder embeds ~2.5x faster in chunks of 256 than of 4096
#: (:func:`deepsad.training.embed`'s size; the embeddings are identical, measured on this project's
#: 2-core CPU); MLPs, whose activations are small, in chunks of 4096.
LOOP_EVAL_BATCH = {"image": 256, "tabular": 4096}


def resolve_strategy(strategy: str, device: torch.device) -> Literal["vmap", "loop"]:
    """``"auto"`` -> ``"loop"`` on a CPU, ``"vmap"`` on any other device; explicit choices pass through.

    Raises:
        ConfigError: ``strategy`` is none of ``"auto"``, ``"vmap"``, ``"loop"``.
    """
    if strategy == "loop" or (strategy == "auto" and device.type == "cpu"):
        return "loop"
    if strategy in ("vmap", "auto"):
        return "vmap"
    raise ConfigError(f"strategy: must be 'auto', 'vmap' or 'loop' (got {strategy!r})")


class PhaseState(Protocol):
    """The members' state a strategy reads and advances (a :class:`~deepsad.bundle_phase.BundlePhase`).

    flat: (K, P) parameters; buffers: name -> (K, *shape) BatchNorm buffers; adam: their optimiser;
    alive: (K,) bool, members still training; c: (K, rep_dim) centres (Deep SAD phase).
    """

    flat: torch.Tensor
    buffers: dict[str, torch.Tensor]
    adam: StackedAdam
    alive: torch.Tensor
    c: torch.Tensor


class BundleStrategy(Protocol):
    """The step and evaluation work of one phase of K members (see the module docstring for the rule
    every strategy applies). Results must equal separate :func:`deepsad.training.train` runs up to
    float rounding, and a member's results must never depend on the other members."""

    def run_steps(self, ph: PhaseState, plan: EpochPlan) -> torch.Tensor:
        """Every step of ``plan``; replaces ``ph.flat``, ``ph.buffers``, ``ph.alive`` and advances
        ``ph.adam``. Returns (K,) float64: each member's sum of accepted steps' loss sums."""
        ...

    def embeddings(self, flat: torch.Tensor, buffers: dict[str, torch.Tensor], parts: Sequence[PooledPart],
                   eval_samples: int, members: Sequence[int]) -> Iterator[EmbeddingChunk]:
        """Eval-mode embeddings of member k's ``parts[k]``, for at least the listed ``members``.

        Columns past a member's part length (padding) may appear and are to be ignored.
        """
        ...

    def close(self) -> None:
        """Release what the strategy holds (threads); it is not used afterwards."""
        ...


# --------------------------------------------------------------------------- vmap


class VmapStrategy:
    """All members in one ``vmap(grad(...))`` call per step on padded batches (see :mod:`deepsad.stacked`)."""

    def __init__(self, *, phase: Phase, net: StackedNet, pool: SamplePool, bf16: bool, eta: torch.Tensor) -> None:
        self.phase, self.net, self.pool, self.bf16, self.eta = phase, net, pool, bf16, eta
        self.device = pool.x.device
        self._grad = vmap(grad(self._member_loss, has_aux=True))
        self._full = False  # read by _member_loss while vmap traces it
        # torch's BatchNorm for unpadded steps, except on CPUs: there its reductions are split by the
        # size of the channel axis vmap folds the members into, so a member's bits would depend on K
        # (the bundle's bit-for-bit isolation of a diverging member is tested on CPUs).
        self._native_bn = self.device.type != "cpu"

    def gradients(self, flat: torch.Tensor, x: torch.Tensor, semi: torch.Tensor, mask: torch.Tensor,
                  c: torch.Tensor, full: bool = False) -> tuple[torch.Tensor, torch.Tensor, BatchStats]:
        """Every member's gradient of its step loss (loss sum / valid rows) in one vmapped call.

        flat: (K, P), x: (K, B, ...), semi, mask: (K, B), c: (K, rep_dim) -> gradient (K, P), loss sums
        (K,), batch statistics (name -> (mean (K, C), unbiased var (K, C))). ``full``: every entry of
        ``mask`` is True (the plan knows it on the host), so BatchNorm may use torch's kernel (not on
        CPUs; see :class:`deepsad.stacked.MaskedBatchNorm`).
        """
        self._full = full and self._native_bn
        try:
            g, (total, stats) = self._grad(flat, x, semi, mask, c, self.eta)
        finally:
            self._full = False
        return g, total, stats

    def _member_loss(
        self, flat: torch.Tensor, x: torch.Tensor, semi: torch.Tensor, mask: torch.Tensor, c: torch.Tensor,
        eta: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, BatchStats]]:
        """One member's step loss (vmapped): flat (P,), x (B, ...), semi (B,), mask (B,), c (rep,), eta ()."""
        with autocast(self.device, self.bf16):
            out, stats = self.net.train_forward(flat, x, mask, self._full)
        losses = phase_losses(self.phase, out, x=x, c=c, semi_targets=semi, eta=eta)
        total = torch.where(mask, losses, torch.zeros_like(losses)).sum()
        return total / mask.sum(), (total.detach(), stats)

    def run_steps(self, ph: PhaseState, plan: EpochPlan) -> torch.Tensor:
        """Per step: one vmapped gradient, one vectorised Adam step, masked acceptance (``torch.where``,
        never a multiplication by 0, which would spread NaN). No host synchronisation.

        Finiteness is one check per member of the sum of its loss, proposed parameters and batch
        statistics: a NaN or ±inf anywhere makes the sum non-finite, and a non-finite gradient always
        gives non-finite proposed parameters (Adam's m/√v is inf/inf = NaN there). Only finite
        values summing past float32's range (~3e38) would be flagged as well — a member that far out
        has diverged in all but name.
        """
        totals = torch.zeros(ph.flat.shape[0], dtype=torch.float64, device=self.device)
        for s in range(plan.steps):
            cols = slice(0, plan.widths[s] if plan.widths else plan.rows.shape[-1])  # no all-padding columns
            x = self.pool.x[plan.rows[s, :, cols]]  # (K, width, *sample_shape)
            g, total, stats = self.gradients(ph.flat, x, plan.semi_targets[s, :, cols], plan.valid[s, :, cols], ph.c,
                                             full=bool(plan.full and plan.full[s]))
            proposed = ph.adam.propose(ph.flat, g)
            check = total + proposed.sum(1)
            for mean, var in stats.values():
                check = check + mean.sum(1) + var.sum(1)
            finite = torch.isfinite(check)
            stepping = plan.active[s] & ph.alive
            accept = stepping & finite
            ph.alive = ph.alive & ~(stepping & ~finite)
            ph.flat = torch.where(accept.view(-1, 1), proposed, ph.flat)
            ph.adam.commit(accept)
            buffers = dict(ph.buffers)
            self.net.update_running_stats(buffers, stats, accept)
            ph.buffers = buffers
            totals += torch.where(accept, total.double(), 0.0)
        return totals

    @torch.no_grad()
    def embeddings(self, flat: torch.Tensor, buffers: dict[str, torch.Tensor], parts: Sequence[PooledPart],
                   eval_samples: int, members: Sequence[int]) -> Iterator[EmbeddingChunk]:
        """Every member at once (``members`` is not consulted), in column chunks of ``eval_samples // K``.

        Members whose parts are the same rows share one input chunk (no K-fold copy); otherwise each
        member's rows are padded to the longest part with its first row.
        """
        k = flat.shape[0]
        length = max(len(p) for p in parts)
        chunk = max(1, eval_samples // k)
        first = parts[0].rows
        shared = all(p.rows is first or (len(p) == len(first) and torch.equal(p.rows, first)) for p in parts)
        if not shared:
            rows = torch.stack([torch.cat([p.rows, p.rows[:1].expand(length - len(p))]) for p in parts])
        fwd = vmap(self.net.eval_forward, in_dims=(0, 0, None if shared else 0))
        for a in range(0, length, chunk):
            cols = slice(a, min(a + chunk, length))
            x = self.pool.x[first[cols]] if shared else self.pool.x[rows[:, cols]]
            yield slice(None), cols, fwd(flat, buffers, x).float()

    def close(self) -> None:
        """Nothing to release."""


# --------------------------------------------------------------------------- loop


class LoopStrategy:
    """One ``nn.Module`` per member; each member's epoch is one task on the CPU worker threads.

    Each member module is a copy of the phase's template, moved to the device and, for image
    networks, to channels-last — the layout and kernels of :func:`deepsad.training.train`, so a
    member's forward and backward equal a separate run's (with as many intra-op threads, see
    :mod:`deepsad.workers`) for equal parameters. Its parameters are loaded from its row of ``flat``
    before every step; its BatchNorm buffers are views of row k of a ``(K, *shape)`` staging copy,
    which torch's BatchNorm updates in place and which is copied into the member's row of the
    buffers only when the step is accepted. An epoch works on private copies of the stacked tensors
    and every task touches only its own member's rows, module and batches.
    """

    def __init__(self, *, phase: Phase, template: nn.Module, net: StackedNet, pool: SamplePool, bf16: bool,
                 eta: torch.Tensor, buffers: dict[str, torch.Tensor]) -> None:
        self.phase, self.net, self.pool, self.bf16 = phase, net, pool, bf16
        self.device = pool.x.device
        self.eta = [float(v) for v in eta.tolist()]
        k = int(eta.shape[0])
        self.staging = {n: torch.empty_like(v) for n, v in buffers.items()}
        self._float_buffers = [n for n, v in self.staging.items() if v.is_floating_point()]
        self.modules: list[nn.Module] = []
        self.params: list[list[nn.Parameter]] = []
        for m in range(k):
            module = copy.deepcopy(template).to(self.device)
            if is_image_net(module):
                module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            module.requires_grad_(True)
            for name in net.buffer_names:
                owner, _, leaf = name.rpartition(".")
                setattr(module.get_submodule(owner), leaf, self.staging[name][m])
            self.modules.append(module)
            self.params.append([module.get_parameter(n) for n in net.param_names])
        self._slots = list(zip(net.offsets, net.offsets[1:], net.param_shapes, strict=False))
        self._training: bool | None = None
        image = is_image_net(template)
        self.workers = MemberWorkers(k, self.device, wanted=image)
        self.eval_batch = LOOP_EVAL_BATCH["image" if image else "tabular"]

    def close(self) -> None:
        """Stop the worker threads (the strategy is not used afterwards)."""
        self.workers.close()

    def _mode(self, training: bool) -> None:
        if self._training is not training:
            for module in self.modules:
                module.train(training)
            self._training = training

    @torch.no_grad()
    def _load(self, k: int, flat: torch.Tensor) -> None:
        """Member k's parameters from ``flat[k]`` into its module (layout converted by ``copy_``)."""
        row = flat[k]
        for p, (a, b, shape) in zip(self.params[k], self._slots, strict=True):
            p.copy_(row[a:b].view(shape))

    @torch.no_grad()
    def _stage(self, buffers: dict[str, torch.Tensor]) -> None:
        for name, staged in self.staging.items():
            staged.copy_(buffers[name])

    def _gradient(self, plan: EpochPlan, s: int, n: int, c: torch.Tensor, k: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Member k's step s on its n rows: (gradient of loss sum / n (P,), loss sum ())."""
        x = self.pool.x[plan.rows[s, k, :n]]
        with autocast(self.device, self.bf16):
            out = self.modules[k](x)
        losses = phase_losses(self.phase, out, x=x, c=c[k], semi_targets=plan.semi_targets[s, k, :n],
                              eta=self.eta[k])
        loss_sum = losses.sum()
        grads = torch.autograd.grad(loss_sum / n, self.params[k])
        return torch.cat([gr.reshape(-1) for gr in grads]), loss_sum.detach()

    def run_steps(self, ph: PhaseState, plan: EpochPlan) -> torch.Tensor:
        counts: list[list[int]] = plan.valid.sum(-1).tolist()  # valid rows are a prefix of each batch
        active: list[list[bool]] = plan.active.tolist()
        alive: list[bool] = ph.alive.tolist()
        flat = ph.flat.clone()  # private copies: tasks update their rows in place
        buffers = {n: v.clone() for n, v in ph.buffers.items()}
        ph.adam.own()
        self._mode(True)
        self._stage(buffers)

        def member_epoch(k: int) -> tuple[float, bool]:
            """Member k's steps of the epoch (on a worker): (loss sum of accepted steps, still alive)."""
            total = 0.0
            for s, row in enumerate(active):
                if not row[k]:
                    continue
                self._load(k, flat)
                g, loss_sum = self._gradient(plan, s, counts[s][k], ph.c, k)
                proposed, moments = ph.adam.propose_row(k, flat[k], g)
                staged = torch.cat([self.staging[n][k].reshape(-1) for n in self._float_buffers])
                finite = (torch.isfinite(loss_sum) & torch.isfinite(g).all() & torch.isfinite(proposed).all()
                          & torch.isfinite(staged).all())
                if not bool(finite):
                    return total, False  # frozen: flat, moments and buffers keep the last finite step
                with torch.no_grad():
                    flat[k].copy_(proposed)
                    ph.adam.commit_row(k, moments)
                    for name, staged_buffer in self.staging.items():
                        buffers[name][k].copy_(staged_buffer[k])
                total += float(loss_sum)  # float64 sum of float32 step sums, as the vectorised path
            return total, True

        members = [k for k, on in enumerate(alive) if on]
        results = self.workers.map(member_epoch, members)
        totals = [0.0] * len(alive)
        for k, (total, still) in zip(members, results, strict=True):
            totals[k], alive[k] = total, still
        ph.flat, ph.buffers = flat, buffers
        ph.alive = torch.tensor(alive, dtype=torch.bool, device=self.device)
        return torch.tensor(totals, dtype=torch.float64, device=self.device)

    def embeddings(self, flat: torch.Tensor, buffers: dict[str, torch.Tensor], parts: Sequence[PooledPart],
                   eval_samples: int, members: Sequence[int]) -> Iterator[EmbeddingChunk]:
        """Only ``members``, on the workers, each in chunks of ``min(eval_samples, LOOP_EVAL_BATCH[...])`` rows."""
        self._mode(False)
        self._stage(buffers)
        chunk = max(1, min(eval_samples, self.eval_batch))

        @torch.no_grad()  # grad mode is per thread: set it on the worker
        def embed(k: int) -> list[EmbeddingChunk]:
            self._load(k, flat)
            rows = parts[k].rows
            return [(slice(k, k + 1), cols, self.modules[k](self.pool.x[rows[cols]]).float().unsqueeze(0))
                    for cols in (slice(a, min(a + chunk, len(rows))) for a in range(0, len(rows), chunk))]

        for chunks in self.workers.map(embed, list(members)):
            yield from chunks
