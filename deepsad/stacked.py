"""K networks of one architecture as stacked tensors: a functional forward with masked BatchNorm, and Adam.

The bundled trainer (:mod:`deepsad.bundle`) trains K members at once with ``torch.func``: all
parameters of one member are one flat vector, the K vectors are one ``(K, P)`` tensor, and
``vmap(grad(...))`` over its first dimension gives every member's gradient in one call. Two things
of ``nn.Module`` training do not survive ``vmap`` and are redone here:

* **BatchNorm.** Training-mode BatchNorm updates its running statistics in place, which ``vmap``
  forbids, and padded batches (members have different training-set sizes) must not enter the
  batch statistics. :class:`MaskedBatchNorm` normalises with the statistics of the *valid* rows of
  the batch only, and hands the batch mean and unbiased variance out of the functional call; the
  stacked running buffers are then updated outside ``vmap`` with torch's rule
  (:meth:`StackedNet.update_running_stats`). In eval mode it normalises with the running statistics.
* **The optimiser.** :class:`StackedAdam` is ``torch.optim.Adam`` (L2 weight decay added to the
  gradient, bias corrections, eps 1e-8) on ``(K, P)`` tensors with a learning rate and weight decay
  per member, and a step only for the members a mask accepts.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

#: Batch statistics of one forward pass: BatchNorm module name -> (mean (C,), unbiased variance (C,)).
BatchStats = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Tape:
    """Carries the row mask into, and the batch statistics out of, one functional forward pass.

    ``weights`` is the mask as float32 ``(B,)`` and ``rows`` its count, both made once per forward
    pass for every BatchNorm of the network.
    """

    mask: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    full: bool = False
    stats: BatchStats = field(default_factory=dict)


class MaskedBatchNorm(nn.Module):
    """``affine=False`` BatchNorm whose training statistics cover only the rows the tape's mask keeps.

    Same buffers (``running_mean``, ``running_var``, ``num_batches_tracked``) as the module it replaces,
    so state dicts are interchangeable. It never writes its buffers: training mode records
    ``(mean, unbiased var)`` on the tape instead. Statistics are computed in float32 (also under bf16
    autocast) and the output has the input's dtype, as torch's BatchNorm.

    Two paths, equal up to float rounding (tests/deepsad/test_stacked.py):

    * every row valid (``full``, known on the host from the batch plan — most steps of an epoch):
      torch's ``native_batch_norm`` on the batch statistics — one kernel each way, which ``vmap``
      runs with the members folded into the channels, the layout of its grouped convolutions; the
      unbiased variance for the running update comes from the kernel's saved 1/√(var + eps).
    * padded rows: the mask enters as row weights at the level of (row, channel) sums — ``mean =
      Σ_b w_b Σ_hw x / n`` — never as a multiplication of the whole activation, and the variance is
      two-pass, Σ w (x − mean)² / n.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, name: str, tape: _Tape) -> None:
        super().__init__()
        if bn.affine or not bn.track_running_stats or bn.momentum is None:
            raise ValueError(f"{name}: only affine=False BatchNorm with running stats and a momentum is supported")
        assert bn.running_mean is not None and bn.running_var is not None and bn.num_batches_tracked is not None
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked.detach().clone())
        self.eps = float(bn.eps)
        self.momentum = float(bn.momentum)
        self.name = name
        self.tape = tape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        if not self.training:
            running_mean, running_var = self.running_mean, self.running_var
            assert isinstance(running_mean, torch.Tensor) and isinstance(running_var, torch.Tensor)
            out = (xf - running_mean.view(shape)) * torch.rsqrt(running_var + self.eps).view(shape)
            return out.to(x.dtype)
        w, rows = self.tape.weights, self.tape.rows
        if w is None or rows is None:
            raise RuntimeError("MaskedBatchNorm in training mode needs a mask (use StackedNet.train_forward)")
        per_pixel = xf[0, 0].numel()
        if self.tape.full:
            out, mean, invstd = torch.ops.aten.native_batch_norm(xf, None, None, None, None, True, 0.0, self.eps)
            count = xf.shape[0] * per_pixel
            var = (invstd.detach().pow(-2) - self.eps).clamp(min=0) * (count / max(count - 1, 1))
            self.tape.stats[self.name] = (mean.detach(), var)
            return out.to(x.dtype)
        spatial = list(range(2, x.dim()))
        # n = valid rows x spatial positions per channel; callers guarantee n >= 2 for accepted steps,
        # the clamps only keep a member without a batch (whose step is discarded) finite.
        n = rows * per_pixel
        wb = w.view(-1, 1)  # (B, 1); products of (B, C) sums, not matmuls, which bf16 autocast would round
        mean = ((xf.sum(spatial) if spatial else xf) * wb).sum(0) / n
        xc = xf - mean.view(shape)
        sq = xc * xc
        var = ((sq.sum(spatial) if spatial else sq) * wb).sum(0) / n
        self.tape.stats[self.name] = (mean.detach(), (var * (n / (n - 1).clamp(min=1))).detach())
        return (xc * torch.rsqrt(var + self.eps).view(shape)).to(x.dtype)


def _swap_batchnorm(module: nn.Module, tape: _Tape, prefix: str = "") -> list[str]:
    """Replace every BatchNorm of ``module`` in place by :class:`MaskedBatchNorm`; returns their names."""
    names = []
    for child_name, child in module.named_children():
        full = f"{prefix}{child_name}"
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, child_name, MaskedBatchNorm(child, full, tape))
            names.append(full)
        else:
            names += _swap_batchnorm(child, tape, f"{full}.")
    return names


class StackedNet:
    """A functional view of one architecture: flat parameter vectors, masked BatchNorm, stacking.

    Members' parameters are ``flat: (K, P)`` float32 (``(P,)`` inside ``vmap``), in the order of
    ``named_parameters()``; buffers are a dict ``name -> (K, *shape)``, in the order of
    ``named_buffers()``. The template's own tensors are never used for computing.
    """

    def __init__(self, template: nn.Module) -> None:
        self.tape = _Tape()
        self.module = copy.deepcopy(template).cpu()
        self.bn_names = _swap_batchnorm(self.module, self.tape)
        params = list(self.module.named_parameters())
        self.param_names = [n for n, _ in params]
        self.param_shapes = [tuple(p.shape) for _, p in params]
        sizes = [p.numel() for _, p in params]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self.buffer_names = [n for n, _ in self.module.named_buffers()]
        self.module.requires_grad_(False)

    @property
    def n_params(self) -> int:
        """P, the length of one member's flat parameter vector."""
        return self.offsets[-1]

    def params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of one flat vector ``(..., P)`` as named parameters ``(..., *shape)``.

        One ``split`` (its backward is one concatenation, where slices would each zero-fill a
        ``(P,)`` gradient and add it up).
        """
        lead = flat.shape[:-1]
        sizes = [b - a for a, b in zip(self.offsets, self.offsets[1:], strict=False)]
        return {name: piece.reshape(*lead, *shape)
                for name, shape, piece in zip(self.param_names, self.param_shapes, flat.split(sizes, dim=-1),
                                              strict=True)}

    def stack(self, nets: Sequence[nn.Module], device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stack K modules of this architecture -> ``flat: (K, P)``, ``buffers: name -> (K, *shape)``."""
        flats, bufs = [], []
        for net in nets:
            ps = dict(net.named_parameters())
            flats.append(torch.cat([ps[n].detach().float().reshape(-1).cpu() for n in self.param_names]))
            bs = dict(net.named_buffers())
            bufs.append(bs)
        flat = torch.stack(flats).to(device)
        buffers = {n: torch.stack([b[n].detach().cpu() for b in bufs]).to(device) for n in self.buffer_names}
        return flat, buffers

    def state_dict(self, flat: torch.Tensor, buffers: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
        """Member ``k``'s state dict (CPU copies), loadable into a module of the template's architecture."""
        out = {n: v.detach().cpu().clone() for n, v in self.params(flat[k]).items()}
        out.update({n: buffers[n][k].detach().cpu().clone() for n in self.buffer_names})
        return out

    def train_forward(self, flat: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, full: bool = False
                      ) -> tuple[torch.Tensor, BatchStats]:
        """One member's training-mode forward (to be vmapped). flat: (P,), x: (B, ...), mask: (B,) bool.

        ``full``: the caller knows every row of every member is valid (``mask`` all True), so
        BatchNorm may use torch's kernel (see :class:`MaskedBatchNorm`). Returns the output
        (B, ...) and the batch statistics of every BatchNorm (over the masked rows).
        """
        self.module.train()
        weights = mask.to(torch.float32)
        tape = self.tape
        tape.mask, tape.weights, tape.rows, tape.full, tape.stats = mask, weights, weights.sum().clamp(min=1), full, {}
        try:
            out = functional_call(self.module, self.params(flat), (x,), strict=False)
            return out, dict(tape.stats)
        finally:
            tape.mask, tape.weights, tape.rows, tape.full, tape.stats = None, None, None, False, {}

    def eval_forward(self, flat: torch.Tensor, buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """One member's eval-mode forward (to be vmapped): BatchNorm uses the running statistics.

        flat: (P,), buffers: name -> (*shape), x: (B, ...) -> (B, ...).
        """
        self.module.eval()
        return functional_call(self.module, ({**self.params(flat), **buffers},), (x,), strict=False)

    @torch.no_grad()
    def update_running_stats(self, buffers: dict[str, torch.Tensor], stats: BatchStats, accept: torch.Tensor) -> None:
        """torch's running-stat update, in place, for the members ``accept: (K,) bool`` selects.

        ``stats``: name -> (mean (K, C), unbiased var (K, C)) as returned by a vmapped
        :meth:`train_forward`. ``running = (1 - momentum) * running + momentum * batch``; the batch
        counter advances by one.
        """
        for name in self.bn_names:
            bn = self.module.get_submodule(name)
            assert isinstance(bn, MaskedBatchNorm)
            mean, var = stats[name]
            keep = accept.view(-1, 1)
            for buf, new in ((f"{name}.running_mean", mean), (f"{name}.running_var", var)):
                old = buffers[buf]
                updated = old * (1 - bn.momentum) + new.to(old.dtype) * bn.momentum
                buffers[buf] = torch.where(keep, updated, old)
            count = buffers[f"{name}.num_batches_tracked"]
            buffers[f"{name}.num_batches_tracked"] = count + accept.to(count.dtype)


class StackedAdam:
    """``torch.optim.Adam`` (betas 0.9/0.999, eps 1e-8, L2 weight decay) over ``flat: (K, P)``.

    ``lr: (K,)`` float64 is set by the caller (MultiStepLR lives there); ``weight_decay: (K,)``. A
    member's moments and step count change only when :meth:`commit` accepts its step, so a member
    without a batch in a step (or a diverged one) is exactly as if the step had not happened.
    """

    BETA1, BETA2, EPS = 0.9, 0.999, 1e-8

    def __init__(self, flat: torch.Tensor, lr: Sequence[float], weight_decay: Sequence[float]) -> None:
        k, device = flat.shape[0], flat.device
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.step_count = torch.zeros(k, dtype=torch.float64, device=device)
        self.lr = torch.tensor(list(lr), dtype=torch.float64, device=device)
        self.weight_decay = torch.tensor(list(weight_decay), dtype=flat.dtype, device=device).view(-1, 1)
        self._proposal: tuple[torch.Tensor, torch.Tensor] | None = None

    def _update(self, rows: slice, flat: torch.Tensor, grad: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Adam for the members ``rows``: flat, grad (R, P) -> (new parameters, exp_avg, exp_avg_sq)."""
        g = grad + self.weight_decay[rows] * flat
        m = torch.lerp(self.exp_avg[rows], g, 1 - self.BETA1)
        v = torch.addcmul(self.exp_avg_sq[rows] * self.BETA2, g, g, value=1 - self.BETA2)
        step = self.step_count[rows] + 1
        # Bias corrections in float64 as torch computes them in Python, then one cast per member.
        step_size = (self.lr[rows] / (1 - self.BETA1**step)).to(flat.dtype).view(-1, 1)
        bc2_sqrt = torch.sqrt(1 - self.BETA2**step).to(flat.dtype).view(-1, 1)
        denom = v.sqrt() / bc2_sqrt + self.EPS
        return flat + (-step_size * m) / denom, m, v

    @torch.no_grad()
    def propose(self, flat: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The parameters after one Adam step of every member, ``(K, P)``; nothing is stored yet."""
        new, m, v = self._update(slice(None), flat, grad)
        self._proposal = (m, v)
        return new

    @torch.no_grad()
    def propose_row(self, k: int, flat: torch.Tensor, grad: torch.Tensor
                    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`propose` for member k alone (the same arithmetic, elementwise): flat, grad (P,) ->
        (new parameters (P,), moments for :meth:`commit_row`). Touches no other member: members may
        step concurrently from different threads, after :meth:`own`."""
        new, m, v = self._update(slice(k, k + 1), flat.view(1, -1), grad.view(1, -1))
        return new[0], (m[0], v[0])

    @torch.no_grad()
    def commit_row(self, k: int, moments: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Member k's accepted step, in place: its moments and step count."""
        self.exp_avg[k].copy_(moments[0])
        self.exp_avg_sq[k].copy_(moments[1])
        self.step_count[k] += 1

    def own(self) -> None:
        """Replace the moments and step counts by private copies (they may alias a loaded checkpoint's
        tensors), before :meth:`commit_row` updates them in place."""
        self.exp_avg, self.exp_avg_sq = self.exp_avg.clone(), self.exp_avg_sq.clone()
        self.step_count = self.step_count.clone()

    @torch.no_grad()
    def commit(self, accept: torch.Tensor) -> None:
        """Keep the proposed moments and advance the step count of the members ``accept: (K,)`` selects."""
        if self._proposal is None:
            raise RuntimeError("commit() without propose()")
        m, v = self._proposal
        keep = accept.view(-1, 1)
        self.exp_avg = torch.where(keep, m, self.exp_avg)
        self.exp_avg_sq = torch.where(keep, v, self.exp_avg_sq)
        self.step_count = self.step_count + accept.to(self.step_count.dtype)
        self._proposal = None

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors for a checkpoint."""
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "step": self.step_count, "lr": self.lr}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state` (tensors are moved to this optimiser's device)."""
        device = self.exp_avg.device
        self.exp_avg = tensors["exp_avg"].to(device, self.exp_avg.dtype)
        self.exp_avg_sq = tensors["exp_avg_sq"].to(device, self.exp_avg_sq.dtype)
        self.step_count = tensors["step"].to(device, torch.float64)
        self.lr = tensors["lr"].to(device, torch.float64)
