"""Training data of many bundle members, on the device once, and their padded per-step batches.

A sweep's members mostly see the same samples: every split of one data set draws its parts from the
same source rows, and with image data (``scale255`` preprocessing, no fitted parameters) the
preprocessed row depends on the source row only. :class:`SamplePool` therefore stores each distinct
preprocessed row once; a member's part is a vector of row numbers into the pool. Rows are merged
only after checking that the overlapping rows are bit-identical, so two data sets that happen to
share a name and preprocessing can never be mixed up: they just get separate row groups.

:func:`epoch_plan` turns the members' seeded permutations into one padded index tensor per step,
with the batching rule of :func:`deepsad.distributed.batches` (a too-small final batch joins the
previous one) applied to each member.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from deepsad.data.splits import Part, SemiSupervisedSplit
from deepsad.distributed import batches
from deepsad.errors import DataError


@dataclass(frozen=True, eq=False)
class PooledPart:
    """One member's split part as rows of a :class:`SamplePool`.

    Attributes:
        rows: (N,) int64 pool row of every sample, on the pool's device.
        rows_cpu: the same on the CPU (batch plans are built there).
        semi_targets: (N,) int64 on the CPU.
        labels: (N,) int64 ground truth (0 normal / 1 anomaly), numpy.
    """

    rows: torch.Tensor
    rows_cpu: torch.Tensor
    semi_targets: torch.Tensor
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.rows_cpu.numel())


class _RowGroup:
    """Rows of one (data set, source, preprocessing) identity: sorted unique source indices and their rows.

    Stored compactly (not at their source index): a part of a few thousand rows of a 60k-row source
    costs its own rows, not a 60k-row array (whose page faults dominated building a small bundle).
    """

    def __init__(self, sample_shape: tuple[int, ...]) -> None:
        self.index = np.empty(0, dtype=np.int64)
        self.data = np.empty((0, *sample_shape), dtype=np.float32)

    def positions(self, idx: np.ndarray) -> np.ndarray:
        """Rows of the (held) source indices ``idx`` in :attr:`data`."""
        return np.searchsorted(self.index, idx)

    def try_add(self, part: Part) -> bool:
        """Add the part's rows unless a row it shares with the group differs; True when added."""
        idx = np.asarray(part.indices, dtype=np.int64)
        if self.index.size == 0 and bool(np.all(idx[1:] > idx[:-1])):  # the usual first part: sorted, unique
            self.index, self.data = idx, np.asarray(part.x, dtype=np.float32)  # never written in place
            return True
        pos = self.positions(idx)
        seen = pos < self.index.size
        seen[seen] = self.index[pos[seen]] == idx[seen]
        x = np.asarray(part.x, dtype=np.float32)
        if seen.any() and not np.array_equal(self.data[pos[seen]], x[seen]):
            return False
        new, first = np.unique(idx[~seen], return_index=True)
        if new.size:
            index = np.concatenate([self.index, new])
            order = np.argsort(index, kind="stable")
            self.index = index[order]
            self.data = np.concatenate([self.data, x[~seen][first]])[order]
        return True


class SamplePool:
    """Distinct preprocessed sample rows of many parts: ``x: (R, *sample_shape)`` float32 on the device.

    Build with :meth:`build`; gather batches with ``pool.x[rows]``.
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    @classmethod
    def build(
        cls, parts: Sequence[tuple[SemiSupervisedSplit, Part]], device: torch.device
    ) -> tuple[SamplePool, list[PooledPart]]:
        """Pool the rows of ``parts`` (each with the split it belongs to) and map every part onto them.

        Raises:
            DataError: the parts' samples have different shapes.
        """
        shapes = {tuple(p.x.shape[1:]) for _, p in parts}
        if len(shapes) > 1:
            raise DataError(f"bundle: members' samples have different shapes {sorted(shapes)}")
        shape = shapes.pop() if shapes else ()
        groups: dict[tuple[str, str, str], list[_RowGroup]] = {}
        placed: list[tuple[_RowGroup, np.ndarray]] = []
        by_array: dict[int, tuple[Part, _RowGroup]] = {}  # the same Part object twice: no re-check
        for split, part in parts:
            known = by_array.get(id(part))
            if known is not None and known[0] is part:
                placed.append((known[1], part.indices))
                continue
            key = (split.dataset, part.source, _preprocessing_digest(split))
            candidates = groups.setdefault(key, [])
            group = next((g for g in candidates if g.try_add(part)), None)
            if group is None:
                group = _RowGroup(shape)
                group.try_add(part)
                candidates.append(group)
            by_array[id(part)] = (part, group)
            placed.append((group, part.indices))
        # Groups one after another; a row's pool number = group offset + its position in the group.
        chunks, offsets, offset = [], {}, 0
        for group in (g for gs in groups.values() for g in gs):
            offsets[id(group)] = offset
            chunks.append(group.data)
            offset += group.index.size
        x = torch.from_numpy(np.concatenate(chunks) if chunks else np.empty((0, *shape), np.float32))
        pool = cls(x.to(device))
        pooled = []
        for (group, idx), (_, part) in zip(placed, parts, strict=True):
            rows = torch.from_numpy(group.positions(np.asarray(idx, dtype=np.int64)) + offsets[id(group)])
            pooled.append(PooledPart(rows.to(device), rows, torch.as_tensor(part.semi_targets, dtype=torch.int64),
                                     np.asarray(part.labels)))
        return pool, pooled

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _preprocessing_digest(split: SemiSupervisedSplit) -> str:
    prep = split.preprocessing
    h = hashlib.sha256(prep.kind.encode())
    for name in sorted(prep.params):
        h.update(name.encode())
        h.update(np.ascontiguousarray(prep.params[name], dtype=np.float64).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- batch plans


@cache
def _layout(n: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (S, Bmax) into a permutation of length n, and their validity, per the batching rule."""
    sizes = [len(b) for b in batches(torch.arange(n), batch_size, 1)]
    width = max(sizes)
    starts = torch.tensor([0, *np.cumsum(sizes)[:-1].tolist()], dtype=torch.int64)
    cols = torch.arange(width)
    valid = cols.view(1, -1) < torch.tensor(sizes).view(-1, 1)
    pos = (starts.view(-1, 1) + cols.view(1, -1)).clamp(max=n - 1)
    return pos, valid


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """Every member's batches of one epoch, padded to a common shape.

    Attributes:
        rows: (S, K, Bmax) int64 pool rows (padding repeats real rows of the member).
        semi_targets: (S, K, Bmax) int64.
        valid: (S, K, Bmax) bool, the rows that belong to the member's batch. A member with no batch
            at step s has every row valid (so its discarded forward pass stays finite) and
            ``active[s, k]`` False.
        active: (S, K) bool, whether member k takes an optimiser step at step s.
        widths: per step, the widest batch of an included member at that step (host ints): columns
            past it are padding in every member, so ``rows[s, :, :widths[s]]`` is step s's batch.
        full: per step, whether every row of ``rows[s, :, :widths[s]]`` is valid (host bools): no
            member is padded at that step (BatchNorm may then use torch's own kernel, see
            :class:`deepsad.stacked.MaskedBatchNorm`).
    """

    rows: torch.Tensor
    semi_targets: torch.Tensor
    valid: torch.Tensor
    active: torch.Tensor
    widths: tuple[int, ...] = ()
    full: tuple[bool, ...] = ()

    @property
    def steps(self) -> int:
        return int(self.rows.shape[0])


def epoch_plan(
    parts: Sequence[PooledPart], generators: Sequence[torch.Generator], batch_size: int,
    include: Sequence[bool], device: torch.device,
) -> EpochPlan:
    """Draw one permutation per member (``torch.randperm(n, generator=g)``, as the single-run trainer)
    and lay out its batches. Members with ``include[k]`` False draw nothing and are never active.

    Raises:
        DataError: a member has fewer than 2 training samples (BatchNorm needs 2).
    """
    k = len(parts)
    layouts = []
    for part in parts:
        if len(part) < 2:
            raise DataError(f"bundle: a member has {len(part)} training samples; BatchNorm needs at least 2")
        layouts.append(_layout(len(part), batch_size))
    steps = max((pos.shape[0] for (pos, _), inc in zip(layouts, include, strict=True) if inc), default=0)
    width = max(pos.shape[1] for pos, _ in layouts)
    rows = torch.empty(steps, k, width, dtype=torch.int64)
    semi = torch.zeros(steps, k, width, dtype=torch.int64)
    valid = torch.ones(steps, k, width, dtype=torch.bool)
    active = torch.zeros(steps, k, dtype=torch.bool)
    for m, (part, gen, (pos, ok), inc) in enumerate(zip(parts, generators, layouts, include, strict=True)):
        s, w = pos.shape
        if not inc:
            rows[:, m] = part.rows_cpu[: min(width, len(part))].repeat(width)[:width]
            continue
        local = torch.randperm(len(part), generator=gen)[pos]  # (s, w)
        rows[:s, m, :w] = part.rows_cpu[local]
        rows[:s, m, w:] = part.rows_cpu[local[:, :1]]
        semi[:s, m, :w] = part.semi_targets[local]
        valid[:s, m, :w] = ok
        valid[:s, m, w:] = False
        active[:s, m] = True
        rows[s:, m] = rows[0, m]  # no batch left: repeat the first one, discarded
    sizes = [ok.sum(1).tolist() for (_, ok), inc in zip(layouts, include, strict=True) if inc]  # batch sizes
    widths = [max(b[s] if s < len(b) else 0 for b in sizes) for s in range(steps)]
    full = [bool(valid[s, :, :w].all()) for s, w in enumerate(widths)]
    return EpochPlan(rows.to(device), semi.to(device), valid.to(device), active.to(device), tuple(widths),
                     tuple(full))
