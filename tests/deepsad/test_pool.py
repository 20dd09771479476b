"""The sample pool stores every distinct row once; batch plans follow the single-run batching rule."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from deepsad.data.splits import SemiSupervisedSplit
from deepsad.distributed import batches
from deepsad.pool import SamplePool, epoch_plan


def test_epoch_plan_follows_the_batching_rule_of_single_runs(digits_splits: list[SemiSupervisedSplit]) -> None:
    pool, parts = SamplePool.build([(s, s.train) for s in digits_splits], torch.device("cpu"))
    gens = [torch.Generator().manual_seed(k) for k in range(3)]
    plan = epoch_plan(parts, gens, 20, [True, True, True], torch.device("cpu"))
    for k, split in enumerate(digits_splits):
        perm = torch.randperm(len(split.train), generator=torch.Generator().manual_seed(k))
        expected = batches(perm, 20)
        assert int(plan.active[:, k].sum()) == len(expected) and not plan.active[len(expected):, k].any()
        for s, idx in enumerate(expected):
            rows = plan.rows[s, k][plan.valid[s, k]]
            assert torch.equal(pool.x[rows], torch.as_tensor(split.train.x)[idx])
            assert torch.equal(plan.semi_targets[s, k][plan.valid[s, k]], torch.as_tensor(split.train.semi_targets)[idx])


def test_pool_stores_each_distinct_row_once(digits_splits: list[SemiSupervisedSplit]) -> None:
    s0, s1 = digits_splits[0], digits_splits[1]
    parts = [(s0, s0.train), (s0, s0.train), (s1, s1.train), (s0, s0.val)]
    pool, pooled = SamplePool.build(parts, torch.device("cpu"))
    for (_, part), p in zip(parts, pooled, strict=True):
        assert torch.equal(pool.x[p.rows], torch.as_tensor(part.x))
    assert pooled[0].rows is not None and torch.equal(pooled[0].rows, pooled[1].rows)
    if s0.preprocessing.kind == "scale255":
        assert len(pool) == len(np.union1d(np.union1d(s0.train.indices, s1.train.indices), s0.val.indices))
    else:  # standard_minmax fitted per split: rows of different splits differ, so they are kept apart
        assert len(pool) == len(s0.train) + len(s1.train) + len(s0.val)


def test_pool_merges_identical_rows_of_image_parts_and_keeps_differing_ones_apart(
        mnist_splits: list[SemiSupervisedSplit]) -> None:
    s0, s1 = mnist_splits[0], mnist_splits[1]
    assert s0.preprocessing.kind == "scale255" and np.intersect1d(s0.train.indices, s1.train.indices).size > 0
    changed = replace(s1.train, x=s1.train.x.copy())
    changed.x[0] += 1.0  # same source rows, one of them different: must not be merged with the others
    parts = [(s0, s0.train), (s1, s1.train), (s1, changed), (s0, s0.test)]
    pool, pooled = SamplePool.build(parts, torch.device("cpu"))
    for (_, part), p in zip(parts, pooled, strict=True):
        assert torch.equal(pool.x[p.rows], torch.as_tensor(part.x))
    union = np.union1d(s0.train.indices, s1.train.indices).size
    assert len(pool) == union + len(changed) + len(s0.test)
