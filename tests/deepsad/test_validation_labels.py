"""Validation ranks on the labels a user has: the labelled anomalies of the validation part against the rest
(labelled normals and every unlabelled sample, treated as normal). The true label of an unlabelled
validation sample never reaches ``val_auroc`` / ``val_ap``; it reaches only the ``_oracle`` metrics.

The proof: the same training on the same split, once as drawn and once with the true labels of the unlabelled
validation samples scrambled (their anomalies moved to other samples). Training never reads validation
labels, so the models are identical; the default metrics must be equal to the last bit, while the oracle
metrics move — in a single run, in a bundle and in a baseline's choice."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from deepsad import metrics
from deepsad.baselines import BaselineData, fit_baseline
from deepsad.bundle import train_bundle
from deepsad.data.splits import SemiSupervisedSplit
from deepsad.networks import default_net_config
from deepsad.training import OptimConfig, TrainConfig, train


def _scrambled(split: SemiSupervisedSplit) -> SemiSupervisedSplit:
    """``split`` with the true labels of its unlabelled validation samples permuted (anomalies moved to other
    unlabelled samples, as many as before); features, semi-targets and the labelled samples unchanged."""
    val = split.val
    unlabeled = np.flatnonzero(val.semi_targets == 0)
    labels = val.labels.copy()
    rng = np.random.default_rng(7)
    labels[unlabeled] = rng.permutation(labels[unlabeled])
    assert (labels != val.labels).any() and labels.sum() == val.labels.sum()
    return replace(split, val=replace(val, labels=labels))


def _config(split: SemiSupervisedSplit) -> TrainConfig:
    return TrainConfig(
        net=default_net_config(split.dataset, split.train.x.shape[1:]),
        sad=OptimConfig(lr=1e-3, epochs=3, milestones=(2,), batch_size=20),
        ae=OptimConfig(lr=1e-3, epochs=2, milestones=(1,), batch_size=20, weight_decay=0.5e-3),
        seed=3,
    )


@pytest.fixture(scope="module")
def split(digits_splits: list[SemiSupervisedSplit]) -> SemiSupervisedSplit:
    s = digits_splits[1]  # 20 % pollution: unlabelled anomalies in validation
    unlabeled = s.val.semi_targets == 0
    assert (s.val.labels[unlabeled] == 1).any() and (s.val.semi_targets == -1).any()
    return s


def test_known_labels_are_the_labelled_anomalies_alone(split: SemiSupervisedSplit) -> None:
    known = metrics.known_labels(split.val.semi_targets)
    assert known.tolist() == (split.val.semi_targets == -1).astype(int).tolist()
    assert known.sum() < split.val.labels.sum()  # the polluting anomalies count as normal
    assert metrics.validation_labels("val_ap", semi_targets=split.val.semi_targets, labels=None).tolist() == known.tolist()
    oracle = metrics.validation_labels("val_auroc_oracle", semi_targets=split.val.semi_targets, labels=split.val.labels)
    assert oracle.tolist() == split.val.labels.tolist()


def test_a_run_ranks_on_known_labels_only(split: SemiSupervisedSplit) -> None:
    a, b = train(split, _config(split)), train(_scrambled(split), _config(split))
    assert a.val_auroc is not None and a.val_ap is not None
    assert (a.val_auroc, a.val_ap) == (b.val_auroc, b.val_ap)
    assert [(h.val_auroc, h.val_ap) for h in a.history] == [(h.val_auroc, h.val_ap) for h in b.history]
    assert a.val_auroc_oracle != b.val_auroc_oracle  # the true labels reach the oracle metric only
    assert a.test_auroc == b.test_auroc
    # and they are what their names say, computed independently
    scores = a.model.score(split.val.x)
    assert a.val_auroc == pytest.approx(metrics.auroc(split.val.semi_targets == -1, scores), abs=1e-12)
    assert a.val_auroc_oracle == pytest.approx(metrics.auroc(split.val.labels, scores), abs=1e-12)


def test_a_bundle_ranks_on_known_labels_only(split: SemiSupervisedSplit) -> None:
    cfg = _config(split)
    a, b = train_bundle([split, _scrambled(split)], [cfg, cfg], strategy="loop")
    assert a.fit is not None and b.fit is not None
    assert (a.fit.val_auroc, a.fit.val_ap) == (b.fit.val_auroc, b.fit.val_ap)
    assert [h.val_auroc for h in a.history] == [h.val_auroc for h in b.history]
    assert a.fit.val_auroc_oracle != b.fit.val_auroc_oracle
    single = train(split, cfg)  # the bundle's metrics are the single run's
    assert a.fit.val_auroc == pytest.approx(single.val_auroc, abs=1e-6)
    assert a.fit.val_auroc_oracle == pytest.approx(single.val_auroc_oracle, abs=1e-6)


def test_a_baseline_chooses_on_the_labels_it_is_given(split: SemiSupervisedSplit) -> None:
    scrambled = _scrambled(split)
    known = metrics.known_labels(split.val.semi_targets)
    grid = [{"nu": 0.05, "gamma": g} for g in (0.001, 0.01, 0.1, 1.0)]
    chosen = [fit_baseline("ocsvm", BaselineData(s.train.x, s.val.x, known, s.test.x, s.test.labels,
                                                 y_val_oracle=s.val.labels), seed=0, grid=grid)
              for s in (split, scrambled)]
    assert chosen[0].hyperparameters == chosen[1].hyperparameters
    assert chosen[0].val_auroc == chosen[1].val_auroc
    assert chosen[0].val_auroc_oracle != chosen[1].val_auroc_oracle
