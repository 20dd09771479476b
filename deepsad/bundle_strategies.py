"""How a bundle computes its members' gradients and embeddings: vectorised (``vmap``) or one by one (``loop``).

:class:`~deepsad.bundle_phase.BundlePhase` owns the state every strategy shares — stacked parameters
``flat: (K, P)``, stacked BatchNorm buffers, :class:`~deepsad.stacked.StackedAdam`, batch plans and
divergence flags — and asks a strategy two things per step: every stepping member's gradient, loss sum
and whether its BatchNorm statistics stayed finite (:meth:`BundleStrategy.gradients`), and, once the
phase knows which steps it accepts, the members' running statistics after the step
(:meth:`BundleStrategy.commit`). For evaluation it asks for eval-mode embeddings
(:meth:`BundleStrategy.embeddings`). The stacked tensors stay the one source of truth, so a checkpoint
written under one strategy resumes under the other.

* :class:`VmapStrategy` — one ``vmap(grad(...))`` call over all K members on padded batches, with
  :class:`~deepsad.stacked.MaskedBatchNorm`. Nothing syncs with the host inside an epoch; this is what
  fills a GPU.
* :class:`LoopStrategy` — K ordinary ``nn.Module`` copies in the layout :func:`deepsad.training.train`
  uses (channels-last images), each member's exact batch (no padding), torch's own BatchNorm. On CPUs
  this runs each member's step with the same kernels as a separate run: ``vmap`` turns the LeNets'
  convolutions into grouped convolutions whose backward is several times slower there.

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
from deepsad.objective import EPS, deep_sad_losses, reconstruction_errors, squared_distance
from deepsad.pool import EpochPlan, PooledPart, SamplePool
from deepsad.stacked import BatchStats, StackedNet
from deepsad.training import Phase, _autocast, _is_image_net

#: What a caller may ask for; "auto" resolves by device.
Strategy = Literal["auto", "vmap", "loop"]

#: An embedding chunk: (members — a slice of the K axis, columns — a slice of the members' parts,
#: z: (members, columns, rep_dim) float32).
EmbeddingChunk = tuple[slice, slice, torch.Tensor]

#: Samples per eval-mode forward of one member in the loop strategy, as :func:`deepsad.training.embed`.
LOOP_EVAL_BATCH = 4096


def resolve_strategy(strategy: str, device: torch.device) -> Literal["vmap", "loop"]:
    """``"auto"`` -> ``"loop"`` on a CPU, ``"vmap"`` on any other device; explicit choices pass through.

    Raises:
        ConfigError: ``strategy`` is none of ``"auto"``, ``"vmap"``, ``"loop"``.
    """
    if strategy == "auto":
        return "loop" if device.type == "cpu" else "vmap"
    if strategy == "vmap" or strategy == "loop":
        return strategy
    raise ConfigError(f"strategy: must be 'auto', 'vmap' or 'loop' (got {strategy!r})")


class BundleStrategy(Protocol):
    """The per-step and evaluation work of one phase of K members.

    Contract: a strategy never keeps parameters or buffers between calls that the phase could miss —
    every call reads ``flat`` and ``buffers`` as passed — and never changes a member that is not
    stepping. Results must equal a separate :func:`deepsad.training.train` run up to float rounding.
    """

    def gradients(self, flat: torch.Tensor, buffers: dict[str, torch.Tensor], plan: EpochPlan, s: int,
                  stepping: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step ``s`` of ``plan`` for the members ``stepping: (K,) bool`` selects.

        flat: (K, P); buffers: name -> (K, *shape); c: (K, rep_dim) (Deep SAD phase).
        Returns ``g: (K, P)`` (gradient of loss sum / batch size), ``total: (K,)`` float32 loss sums and
        ``finite: (K,)`` bool — loss and BatchNorm statistics finite. Rows of members that do not step
        are unspecified but finite-safe (they are never used).
        """
        ...

    def commit(self, buffers: dict[str, torch.Tensor], accept: torch.Tensor) -> dict[str, torch.Tensor]:
        """The buffers after the last :meth:`gradients` step: BatchNorm running statistics of the
        members ``accept: (K,) bool`` selects advanced by torch's rule, all others unchanged."""
        ...

    def embeddings(self, flat: torch.Tensor, buffers: dict[str, torch.Tensor], parts: Sequence[PooledPart],
                   eval_samples: int, members: Sequence[int]) -> Iterator[EmbeddingChunk]:
        """Eval-mode embeddings of member k's ``parts[k]``, for at least the listed ``members``.

        Columns past a member's part length (padding) may appear and are to be ignored.
        """
        ...


# --------------------------------------------------------------------------- vmap


class VmapStrategy:
    """All members in one ``vmap(grad(...))`` call on padded batches (see :mod:`deepsad.stacked`)."""

    def __init__(self, *, phase: Phase, net: StackedNet, pool: SamplePool, bf16: bool, eta: torch.Tensor) -> None:
        self.phase, self.net, self.pool, self.bf16, self.eta = phase, net, pool, bf16, eta
        self.device = pool.x.device
        self._grad = vmap(grad(self._member_loss, has_aux=True))
        self._stats: BatchStats | None = None

    def _member_loss(
        self, flat: torch.Tensor, x: torch.Tensor, semi: torch.Tensor, mask: torch.Tensor, c: torch.Tensor,
        eta: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, BatchStats]]:
        """One member's step loss (vmapped): flat (P,), x (B, ...), semi (B,), mask (B,), c (rep,), eta ()."""
        with _autocast(self.device, self.bf16):
            out, stats = self.net.train_forward(flat, x, mask)
        if self.phase == "ae":
            losses = reconstruction_errors(out.float(), x)
        else:
            losses = deep_sad_losses(squared_distance(out.float(), c), semi, eta, EPS)  # type: ignore[arg-type]
        total = torch.where(mask, losses, torch.zeros_like(losses)).sum()
        return total / mask.sum(), (total.detach(), stats)

    def gradients(self, flat: torch.Tensor, buffers: dict[str, torch.Tensor], plan: EpochPlan, s: int,
                  stepping: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool.x[plan.rows[s]]  # (K, Bmax, *sample_shape)
        g, (total, stats) = self._grad(flat, x, plan.semi_targets[s], plan.valid[s], c, self.eta)
        finite = torch.isfinite(total)
        for mean, var in stats.values():
            finite &= torch.isfinite(mean).all(1) & torch.isfinite(var).all(1)
        self._stats = stats
        return g, total, finite

    def commit(self, buffers: dict[str, torch.Tensor], accept: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._stats is None:
            raise RuntimeError("commit() without gradients()")
        out = dict(buffers)
        self.net.update_running_stats(out, self._stats, accept)
        self._stats = None
        return out

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


# --------------------------------------------------------------------------- loop


class LoopStrategy:
    """One ``nn.Module`` per member, trained one after another on its exact batch.

    Each member module is a copy of the phase's template, moved to the device and, for image
    networks, to channels-last — the layout and kernels of :func:`deepsad.training.train`, so a
    member's forward and backward equal a separate run's for equal parameters. Its parameters are
    loaded from ``flat[k]`` before every use (a few small copies); its BatchNorm buffers are views of
    a ``(K, *shape)`` staging copy of the stacked buffers, which torch's BatchNorm updates in place
    and :meth:`commit` hands back only for accepted steps (a rejected step leaves no trace). Members
    that do not step at all are skipped.
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
            if _is_image_net(module):
                module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            module.requires_grad_(True)
            for name in net.buffer_names:
                owner, _, leaf = name.rpartition(".")
                setattr(module.get_submodule(owner), leaf, self.staging[name][m])
            self.modules.append(module)
            self.params.append([module.get_parameter(n) for n in net.param_names])
        self._slots = list(zip(net.offsets, net.offsets[1:], net.param_shapes, strict=False))
        self._training: bool | None = None
        self._plan: EpochPlan | None = None
        self._counts: list[list[int]] = []

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

    def _stage(self, buffers: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, staged in self.staging.items():
                staged.copy_(buffers[name])

    def gradients(self, flat: torch.Tensor, buffers: dict[str, torch.Tensor], plan: EpochPlan, s: int,
                  stepping: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if plan is not self._plan:  # once per epoch: batch sizes on the host (valid rows are a prefix)
            self._plan, self._counts = plan, plan.valid.sum(-1).tolist()
        self._mode(True)
        self._stage(buffers)
        g = torch.zeros_like(flat)
        total = torch.zeros(flat.shape[0], dtype=torch.float32, device=flat.device)
        for k, on in enumerate(stepping.tolist()):
            if not on:
                continue
            self._load(k, flat)
            n = self._counts[s][k]
            x = self.pool.x[plan.rows[s, k, :n]]
            with _autocast(self.device, self.bf16):
                out = self.modules[k](x)
            if self.phase == "ae":
                losses = reconstruction_errors(out.float(), x)
            else:
                losses = deep_sad_losses(squared_distance(out.float(), c[k]), plan.semi_targets[s, k, :n],
                                         self.eta[k], EPS)
            loss_sum = losses.sum()
            grads = torch.autograd.grad(loss_sum / n, self.params[k])
            torch.cat([gr.reshape(-1) for gr in grads], out=g[k])
            total[k] = loss_sum.detach()
        finite = torch.isfinite(total)
        for name in self._float_buffers:  # running stats finite <=> this step's batch statistics finite
            finite &= torch.isfinite(self.staging[name]).flatten(1).all(1)
        return g, total, finite

    def commit(self, buffers: dict[str, torch.Tensor], accept: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, staged in self.staging.items():
            keep = accept.view(-1, *([1] * (staged.dim() - 1)))
            out[name] = torch.where(keep, staged, buffers[name])
        return out

    @torch.no_grad()
    def embeddings(self, flat: torch.Tensor, buffers: dict[str, torch.Tensor], parts: Sequence[PooledPart],
                   eval_samples: int, members: Sequence[int]) -> Iterator[EmbeddingChunk]:
        """Only ``members``, one at a time, in chunks of ``min(eval_samples, LOOP_EVAL_BATCH)`` rows."""
        self._mode(False)
        self._stage(buffers)
        chunk = max(1, min(eval_samples, LOOP_EVAL_BATCH))
        for k in members:
            self._load(k, flat)
            rows = parts[k].rows
            for a in range(0, len(rows), chunk):
                cols = slice(a, min(a + chunk, len(rows)))
                yield slice(k, k + 1), cols, self.modules[k](self.pool.x[rows[cols]]).float().unsqueeze(0)
