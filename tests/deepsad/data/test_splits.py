"""The semi-supervised protocol: counts, disjointness, preprocessing, determinism, fingerprints, errors.

Image tests use the real MNIST labels (read here from the IDX files, not through the loaders) with
tiny 1x2x2 images whose four bytes encode the row index, so every test can check that a part's ``x``
holds exactly the rows its ``indices`` name.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from deepsad.data.dataset import Dataset
from deepsad.data.preprocessing import Preprocessing, fit_preprocessing
from deepsad.data.splits import (
    Part,
    Protocol,
    SemiSupervisedSplit,
    data_digest,
    make_split,
    solve_setting_counts,
)
from deepsad.errors import CheckpointError, ConfigError, DataError

# ---------------------------------------------------------------------------------------------------
# data


def _idx_labels(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=8).astype(np.int64)


def _index_images(n: int) -> np.ndarray:
    """``(n, 1, 2, 2)`` uint8 whose four bytes are the little-endian row index."""
    return np.arange(n, dtype="<u4").view(np.uint8).reshape(n, 1, 2, 2).copy()


def _decode_rows(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_index_images` after ``scale255`` preprocessing."""
    raw = np.rint(x * 255).astype(np.uint8).reshape(x.shape[0], 4)
    return raw.copy().view("<u4").reshape(-1).astype(np.int64)


@pytest.fixture(scope="session")
def mnist_labels(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    d = shared_data / "mnist"
    return _idx_labels(d / "train-labels-idx1-ubyte.gz"), _idx_labels(d / "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="session")
def mnist(mnist_labels: tuple[np.ndarray, np.ndarray]) -> Dataset:
    y_train, y_test = mnist_labels
    x_train, x_test = _index_images(y_train.size), _index_images(y_test.size)
    return Dataset("mnist", "image", x_train, y_train, x_test, y_test, "test")


def _tabular(n: int = 2000, n_anomalies: int = 100, seed: int = 0) -> Dataset:
    """ODDS-like binary set: class 0 normal, class 1 outliers; feature 2 is constant; feature 0 is the
    row index so that rows can be traced."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)) * [1.0, 3.0, 0.0, 0.01, 100.0] + [0.0, -2.0, 0.1, 5.0, 1e3]
    x[:, 0] = np.arange(n)
    y = np.zeros(n, dtype=np.int64)
    y[rng.choice(n, n_anomalies, replace=False)] = 1
    return Dataset("odds_like", "tabular", x, y, None, None, "test")


@pytest.fixture(scope="session")
def tabular() -> Dataset:
    return _tabular()


# ---------------------------------------------------------------------------------------------------
# the linear system


def _closed_form(n: int, gl: float, gp: float, gn: float) -> tuple[int, int, int, int]:
    """Hand-derived solution: with T the part size and U the unlabelled data, n_kn = γn T,
    n_ko = γl T, U = (1-γn-γl) T, n_uo = γp U, n_un = (1-γp) U and n_kn + n_un = n."""
    t = n / (gn + (1 - gp) * (1 - gn - gl))
    u = (1 - gn - gl) * t
    return tuple(math.floor(v + 1e-6) for v in (gn * t, (1 - gp) * u, gp * u, gl * t))  # type: ignore[return-value]


GAMMAS = [
    (0.0, 0.0, 0.0),
    (0.01, 0.1, 0.0),
    (0.05, 0.2, 0.1),
    (0.2, 0.0, 0.05),
    (0.1, 0.3, 0.3),
    (0.001, 0.0, 0.0),
]


@pytest.mark.parametrize("n_normal", [17, 888, 5035, 5923])
@pytest.mark.parametrize(("gl", "gp", "gn"), GAMMAS)
def test_counts_solve_the_reference_system(n_normal: int, gl: float, gp: float, gn: float) -> None:
    c = solve_setting_counts(n_normal, gn, gl, gp)
    assert (c.n_known_normal, c.n_unlabeled_normal, c.n_unlabeled_outlier, c.n_known_outlier) == _closed_form(
        n_normal, gl, gp, gn
    )
    assert c.n_known_normal + c.n_unlabeled_normal <= n_normal


def test_counts_in_count_mode() -> None:
    # n_ko fixed at 50; n_un = ((1-γn) n - γn c) / (1 + γn r) with r = γp/(1-γp) = 1/19.
    c = solve_setting_counts(1000, 0.1, 0.0, 0.05, n_known_outlier=50)
    n_un = (0.9 * 1000 - 0.1 * 50) / (1 + 0.1 / 19)
    assert c.n_known_outlier == 50
    assert c.n_unlabeled_normal == math.floor(n_un)
    assert c.n_known_normal == math.floor(1000 - n_un)
    assert c.n_unlabeled_outlier == math.floor(n_un / 19)


def test_mnist_counts_by_hand(mnist: Dataset) -> None:
    # Class 0 has 5923 training samples; 15% -> round(888.45) = 888 go to validation, 5035 stay.
    # Train: n_un = 5035, n_uo = 5035 * .1/.9 = 559.4 -> 559, n_ko = .01 * (5035 + 559.4) / .99 = 56.5 -> 56.
    # Val:   n_un = 888,  n_uo = 888 * .1/.9 = 98.7 -> 98,    n_ko = .01 * (888 + 98.7) / .99 = 9.97 -> 9.
    s = make_split(mnist, Protocol(ratio_known_outlier=0.01, ratio_pollution=0.1))
    assert s.counts() == {
        "n_train": 5035 + 559 + 56,
        "n_labeled_normal": 0,
        "n_labeled_anomaly": 56,
        "n_unlabeled_normal": 5035,
        "n_unlabeled_anomaly": 559,
        "n_val": 888 + 98 + 9,
        "n_val_anomaly": 98 + 9,
        "n_val_labeled_anomaly": 9,
        "n_test": 10000,
        "n_test_anomaly": 10000 - 980,  # 980 zeros in the MNIST test set
    }
    assert len(s.known_anomaly_classes) == 1 and s.known_anomaly_classes[0] != 0


@pytest.mark.parametrize(("gl", "gp", "gn"), GAMMAS)
def test_mnist_counts_follow_the_system(mnist: Dataset, gl: float, gp: float, gn: float) -> None:
    s = make_split(
        mnist,
        Protocol(normal_classes=(3, 5), ratio_known_outlier=gl, ratio_pollution=gp, ratio_known_normal=gn),
    )
    c = s.counts()
    n_train_normal = round(0.85 * np.sum(mnist.y_train == 3)) + round(0.85 * np.sum(mnist.y_train == 5))
    kn, un, uo, ko = _closed_form(n_train_normal, gl, gp, gn)
    assert (
        c["n_labeled_normal"],
        c["n_unlabeled_normal"],
        c["n_unlabeled_anomaly"],
        c["n_labeled_anomaly"],
    ) == (
        kn,
        un,
        uo,
        ko,
    )
    if ko > 0:
        assert c["n_val_labeled_anomaly"] >= 1


def test_count_mode(mnist: Dataset) -> None:
    s = make_split(mnist, Protocol(n_labeled_anomalies=50, ratio_pollution=0.05, ratio_known_normal=0.1))
    c = s.counts()
    n = 5035
    n_un = (0.9 * n - 0.1 * 50) / (1 + 0.1 / 0.95 * 0.05)
    assert c["n_labeled_anomaly"] == 50
    assert c["n_unlabeled_normal"] == math.floor(n_un)
    assert c["n_labeled_normal"] == math.floor(n - n_un)
    assert c["n_unlabeled_anomaly"] == math.floor(n_un * 0.05 / 0.95)
    assert c["n_val_labeled_anomaly"] == round(50 * 0.15 / 0.85)  # 8.8 -> 9


@pytest.mark.parametrize(("count", "val"), [(0, 0), (1, 1), (3, 1), (50, 9)])
def test_count_mode_validation_count(mnist: Dataset, count: int, val: int) -> None:
    c = make_split(mnist, Protocol(n_labeled_anomalies=count)).counts()
    assert (c["n_labeled_anomaly"], c["n_val_labeled_anomaly"]) == (count, val)


def test_val_gets_a_labeled_anomaly_when_its_ratio_rounds_to_zero(mnist: Dataset) -> None:
    # γl = .001: train n_ko = floor(.001 * 5035 / .999) = 5; val floor(.001 * 888 / .999) = 0 -> 1.
    c = make_split(mnist, Protocol(ratio_known_outlier=0.001)).counts()
    assert (c["n_labeled_anomaly"], c["n_val_labeled_anomaly"]) == (5, 1)
    assert make_split(mnist, Protocol()).counts()["n_val_labeled_anomaly"] == 0


def test_val_carve_is_stratified_per_class(mnist: Dataset) -> None:
    normal = (1, 2, 3, 4, 5)
    s = make_split(mnist, Protocol(normal_classes=normal, val_fraction=0.2))
    for c in normal:
        n_c = int(np.sum(mnist.y_train == c))
        assert np.sum(s.val.classes == c) == math.floor(0.2 * n_c + 0.5)
        assert np.sum(s.train.classes == c) == n_c - math.floor(0.2 * n_c + 0.5)


# ---------------------------------------------------------------------------------------------------
# structure of the parts

PROTOCOLS = [
    Protocol(),
    Protocol(ratio_known_outlier=0.02, ratio_pollution=0.01, ratio_known_normal=0.05, seed=3),
    Protocol(n_labeled_anomalies=10, ratio_pollution=0.02, seed=1),
    Protocol(ratio_known_outlier=0.01, ratio_pollution=0.04, val_fraction=0.5, seed=2),
]


def _check_part_rows(data: Dataset, part: Part, normal: tuple[int, ...]) -> None:
    n = len(part)
    for arr in (part.labels, part.semi_targets, part.classes, part.indices):
        assert arr.dtype == np.int64 and arr.shape == (n,)
    assert part.x.dtype == np.float32 and part.x.shape[0] == n
    assert np.all(np.diff(part.indices) > 0), "indices must be unique (and sorted)"
    y = data.y_train if part.source == "train" else data.y_test
    assert y is not None
    np.testing.assert_array_equal(part.classes, y[part.indices])
    np.testing.assert_array_equal(part.labels, (~np.isin(part.classes, normal)).astype(np.int64))
    assert set(np.unique(part.semi_targets)) <= {-1, 0, 1}
    assert np.all(part.labels[part.semi_targets == 1] == 0)
    assert np.all(part.labels[part.semi_targets == -1] == 1)
    if data.kind == "image":
        np.testing.assert_array_equal(_decode_rows(part.x), part.indices)


def _check_split(data: Dataset, s: SemiSupervisedSplit) -> None:
    normal = s.protocol.normal_classes
    for p in (s.train, s.val, s.test):
        _check_part_rows(data, p, normal)
    assert s.train.source == s.val.source == "train"
    assert not np.intersect1d(s.train.indices, s.val.indices).size
    if s.test.source == "train":
        assert not np.intersect1d(s.test.indices, s.train.indices).size
        assert not np.intersect1d(s.test.indices, s.val.indices).size
    else:
        np.testing.assert_array_equal(s.test.indices, np.arange(len(data.y_test)))  # type: ignore[arg-type]
    assert not s.test.semi_targets.any()
    known = s.known_anomaly_classes
    for p in (s.train, s.val):
        assert np.isin(p.classes[p.semi_targets == -1], known).all()
    assert len(s.fingerprint) == 64 and int(s.fingerprint, 16) >= 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_parts_are_disjoint_and_consistent_mnist(mnist: Dataset, protocol: Protocol) -> None:
    _check_split(mnist, make_split(mnist, protocol))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_parts_are_disjoint_and_consistent_tabular(tabular: Dataset, protocol: Protocol) -> None:
    s = make_split(tabular, protocol)
    _check_split(tabular, s)
    assert s.test.source == "train"
    # Feature 0 is the row index: undo the preprocessing to trace the rows.
    p = s.preprocessing.params
    for part in (s.train, s.val, s.test):
        z = part.x[:, 0].astype(np.float64) * p["range"][0] + p["min"][0]
        np.testing.assert_allclose(z * p["scale"][0] + p["mean"][0], part.indices, atol=1e-2)


def test_labeled_and_pollution_anomalies_never_share_a_sample(tabular: Dataset) -> None:
    # 51 training-pool anomalies; 10 labelled + pollution 0.02 of ~1600 unlabelled (32) must be 42
    # distinct samples (the reference would draw both from the same 51 independently).
    s = make_split(tabular, Protocol(n_labeled_anomalies=10, ratio_pollution=0.02))
    anomalies = s.train.indices[s.train.labels == 1]
    assert anomalies.size == np.unique(anomalies).size == 10 + s.counts()["n_unlabeled_anomaly"]


def test_pollution_comes_from_all_anomaly_classes(mnist: Dataset) -> None:
    s = make_split(mnist, Protocol(ratio_known_outlier=0.05, ratio_pollution=0.1))
    t = s.train
    assert set(np.unique(t.classes[t.semi_targets == -1])) == set(s.known_anomaly_classes)
    assert set(np.unique(t.classes[(t.semi_targets == 0) & (t.labels == 1)])) == set(range(1, 10))


def test_pollution_is_not_depleted_in_the_known_classes(mnist: Dataset) -> None:
    # Pollution is a uniform draw from the anomalies left after labelling, so the known class has
    # its share of the rest there (a draw that reads the labelled anomalies' order has none).
    s = make_split(mnist, Protocol(known_anomaly_classes=(9,), ratio_known_outlier=0.05, ratio_pollution=0.2))
    t, c = s.train, s.counts()
    pool_9 = round(0.85 * np.sum(mnist.y_train == 9))
    pool_anomalies = sum(round(0.85 * np.sum(mnist.y_train == k)) for k in range(1, 10))
    share = (pool_9 - c["n_labeled_anomaly"]) / (pool_anomalies - c["n_labeled_anomaly"])
    expected = share * c["n_unlabeled_anomaly"]  # about 81 of 755
    n_9 = np.sum((t.semi_targets == 0) & (t.classes == 9))
    assert 0.6 * expected < n_9 < 1.4 * expected


def test_carved_test_split_is_stratified(tabular: Dataset) -> None:
    s = make_split(tabular, Protocol(test_fraction=0.4))
    assert s.counts()["n_test"] == 800 and s.counts()["n_test_anomaly"] == 40


def test_known_classes_drawn_with_the_seed(mnist: Dataset) -> None:
    draws = {
        make_split(mnist, Protocol(n_known_outlier_classes=3, seed=k)).known_anomaly_classes for k in range(6)
    }
    assert all(len(d) == 3 and 0 not in d and list(d) == sorted(d) for d in draws)
    assert len(draws) > 1
    again = make_split(mnist, Protocol(n_known_outlier_classes=3, seed=4)).known_anomaly_classes
    assert again == make_split(mnist, Protocol(n_known_outlier_classes=3, seed=4)).known_anomaly_classes
    given = make_split(mnist, Protocol(known_anomaly_classes=(7, 2), ratio_known_outlier=0.05))
    assert given.known_anomaly_classes == (7, 2)
    assert set(np.unique(given.train.classes[given.train.semi_targets == -1])) == {2, 7}


# ---------------------------------------------------------------------------------------------------
# random streams, determinism, fingerprints


def test_changing_one_setting_does_not_reshuffle_the_others(mnist: Dataset) -> None:
    a = make_split(mnist, Protocol(ratio_known_outlier=0.01, ratio_pollution=0.1))
    b = make_split(mnist, Protocol(ratio_known_outlier=0.05, ratio_pollution=0.1))
    c = make_split(mnist, Protocol(ratio_known_outlier=0.01, ratio_pollution=0.2))
    # The validation carve (its normals) and the training normals do not depend on γ_l or γ_p.
    for x in (b, c):
        np.testing.assert_array_equal(x.val.indices[x.val.labels == 0], a.val.indices[a.val.labels == 0])
        np.testing.assert_array_equal(
            x.train.indices[x.train.labels == 0], a.train.indices[a.train.labels == 0]
        )
    # The labelled anomalies are a prefix of one fixed random order: asking more (through γ_l, or
    # through γ_p, which grows the part that γ_l is a fraction of) only adds to the set.
    la, lb, lc = (x.train.indices[x.train.semi_targets == -1] for x in (a, b, c))
    assert la.size < lc.size < lb.size
    assert np.isin(la, lc).all() and np.isin(lc, lb).all()


def test_same_inputs_same_split(mnist: Dataset) -> None:
    p = Protocol(ratio_known_outlier=0.05, ratio_pollution=0.1, ratio_known_normal=0.05, seed=7)
    a = make_split(mnist, p)
    # A separate Dataset object with equal arrays: no reliance on the digest cache.
    twin = Dataset(
        "mnist", "image", mnist.x_train.copy(), mnist.y_train.copy(), mnist.x_test, mnist.y_test, "x"
    )
    b = make_split(twin, replace(p))
    assert a.fingerprint == b.fingerprint
    for pa, pb in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        for name in ("x", "labels", "semi_targets", "classes", "indices"):
            np.testing.assert_array_equal(getattr(pa, name), getattr(pb, name))


def test_different_seed_different_split(mnist: Dataset) -> None:
    a = make_split(mnist, Protocol(ratio_known_outlier=0.05, seed=0))
    b = make_split(mnist, Protocol(ratio_known_outlier=0.05, seed=1))
    assert a.fingerprint != b.fingerprint
    assert not np.array_equal(a.val.indices, b.val.indices)


def test_fingerprint_sensitivity(tabular: Dataset) -> None:
    base = Protocol(ratio_known_outlier=0.02, ratio_pollution=0.01)
    ref = make_split(tabular, base).fingerprint
    variants = [
        replace(base, seed=1),
        replace(base, ratio_known_outlier=0.03),
        replace(base, ratio_pollution=0.02),
        replace(base, ratio_known_normal=0.01),
        replace(base, val_fraction=0.2),
        replace(base, test_fraction=0.3),
    ]
    prints = {make_split(tabular, v).fingerprint for v in variants}
    assert ref not in prints and len(prints) == len(variants)
    x = tabular.x_train.copy()
    x[5, 3] += 1e-9  # one feature of one sample, possibly not even in any part's selection
    for other in (
        Dataset(tabular.name, "tabular", x, tabular.y_train, None, None, "x"),
        Dataset("renamed", "tabular", tabular.x_train, tabular.y_train, None, None, "x"),
    ):
        assert make_split(other, base).fingerprint != ref


def test_data_digest_covers_test_arrays(mnist: Dataset) -> None:
    x_test = mnist.x_test.copy()  # type: ignore[union-attr]
    x_test[0, 0, 0, 0] ^= 1
    other = Dataset("mnist", "image", mnist.x_train, mnist.y_train, x_test, mnist.y_test, "x")
    assert data_digest(other) != data_digest(mnist)
    assert data_digest(mnist) == data_digest(mnist)


# ---------------------------------------------------------------------------------------------------
# preprocessing


def test_image_preprocessing_is_x_over_255(mnist: Dataset) -> None:
    s = make_split(mnist, Protocol())
    assert s.preprocessing.kind == "scale255" and s.preprocessing.params == {}
    for part, x in ((s.train, mnist.x_train), (s.test, mnist.x_test)):
        assert x is not None
        np.testing.assert_array_equal(part.x, x[part.indices].astype(np.float32) / np.float32(255))
        assert part.x.min() >= 0 and part.x.max() <= 1


def test_tabular_preprocessing_matches_sklearn_on_train(tabular: Dataset) -> None:
    s = make_split(tabular, Protocol(ratio_known_outlier=0.02, ratio_pollution=0.01))
    raw = tabular.x_train[s.train.indices]
    expected = MinMaxScaler().fit_transform(StandardScaler().fit_transform(raw))
    np.testing.assert_allclose(s.train.x, expected, atol=1e-6)
    assert np.isfinite(s.train.x).all() and np.isfinite(s.test.x).all()
    assert s.preprocessing.params["scale"][2] == 1.0  # the constant feature
    np.testing.assert_array_equal(s.test.x, s.preprocessing.apply(tabular.x_train[s.test.indices]))
    for v in s.preprocessing.params.values():
        assert v.dtype == np.float64 and v.shape == (5,)


def test_preprocessing_is_fitted_on_train_only(tabular: Dataset) -> None:
    p = Protocol(ratio_known_outlier=0.02, ratio_pollution=0.01)
    s = make_split(tabular, p)
    x = tabular.x_train.copy()
    outside = np.setdiff1d(np.arange(x.shape[0]), s.train.indices)
    x[outside, 1:] = 1e6  # every validation, test and unused row (keep feature 0, the row index)
    t = make_split(Dataset(tabular.name, "tabular", x, tabular.y_train, None, None, "x"), p)
    np.testing.assert_array_equal(t.train.indices, s.train.indices)
    for k, v in s.preprocessing.params.items():
        np.testing.assert_array_equal(t.preprocessing.params[k], v)
    assert not np.array_equal(t.test.x, s.test.x)


def test_preprocessing_round_trip() -> None:
    x = np.random.default_rng(0).normal(size=(50, 4))
    x[:, 1] = 0.1  # constant, with a mean that is not exactly 0.1 in floating point
    pre = fit_preprocessing("standard_minmax", x)
    assert np.isfinite(pre.apply(x)).all() and (pre.apply(x)[:, 1] == 0).all()
    back = Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict())))
    np.testing.assert_array_equal(back.apply(x), pre.apply(x))
    arrays = Preprocessing.from_dict({"kind": "standard_minmax", "params": pre.params})
    np.testing.assert_array_equal(arrays.apply(x), pre.apply(x))
    assert Preprocessing.from_dict(Preprocessing("scale255").to_dict()).kind == "scale255"
    with pytest.raises(DataError, match=r"expected inputs of shape \(N, 4\)"):
        pre.apply(x[:, :3])


@pytest.mark.parametrize(
    "stored",
    [
        {"params": {}},
        {"kind": "zscore", "params": {}},
        {"kind": "standard_minmax", "params": {"mean": [0.0]}},
        {"kind": "standard_minmax", "params": {"mean": [0.0], "scale": [0.0], "min": [0.0], "range": [1.0]}},
        {
            "kind": "standard_minmax",
            "params": {"mean": [0.0], "scale": [1.0, 1.0], "min": [0.0], "range": [1.0]},
        },
        {"kind": "standard_minmax", "params": {"mean": ["a"], "scale": [1.0], "min": [0.0], "range": [1.0]}},
    ],
)
def test_malformed_stored_preprocessing(stored: dict[str, object]) -> None:
    with pytest.raises(CheckpointError, match=r"preprocessing"):
        Preprocessing.from_dict(stored)


# ---------------------------------------------------------------------------------------------------
# errors


def test_too_many_labeled_anomalies(tabular: Dataset) -> None:
    # 100 anomalies; the stratified 40% test split takes 40, validation round(.15 * 60) = 9: 51 left.
    with pytest.raises(DataError) as e:
        make_split(tabular, Protocol(n_labeled_anomalies=52))
    assert str(e.value) == (
        "odds_like: asked for 52 labeled anomalies of class 1 (n_labeled_anomalies=52) but the training "
        "pool has only 51 (after the validation split)"
    )
    make_split(tabular, Protocol(n_labeled_anomalies=51))


def test_too_many_labeled_anomalies_by_ratio(mnist: Dataset) -> None:
    with pytest.raises(
        DataError, match=r"^mnist: asked for \d+ labeled anomalies of class 4 \(ratio_known_outlier=0.6\)"
    ):
        make_split(
            mnist,
            Protocol(
                normal_classes=(0, 1, 2, 3, 5, 6, 7, 8), known_anomaly_classes=(4,), ratio_known_outlier=0.6
            ),
        )


def test_too_much_pollution(tabular: Dataset) -> None:
    with pytest.raises(
        DataError, match=r"^odds_like: asked for \d+ unlabeled anomalies \(ratio_pollution=0.5\)"
    ):
        make_split(tabular, Protocol(ratio_pollution=0.5))


def test_count_mode_cannot_reach_known_normal_ratio(tabular: Dataset) -> None:
    with pytest.raises(DataError, match=r"ratio_known_normal=0\.9"):
        make_split(_tabular(n=60, n_anomalies=30), Protocol(n_labeled_anomalies=15, ratio_known_normal=0.9))
    del tabular


@pytest.mark.parametrize(
    ("protocol", "message"),
    [
        (Protocol(normal_classes=(12,)), "normal class 12 is not a class of mnist (classes 0..9)"),
        (
            Protocol(known_anomaly_classes=(10,)),
            "known anomaly class 10 is not a class of mnist (classes 0..9)",
        ),
        (
            Protocol(n_known_outlier_classes=10),
            "protocol.n_known_outlier_classes: 10 asked but mnist has only 9",
        ),
    ],
)
def test_class_errors(mnist: Dataset, protocol: Protocol, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        make_split(mnist, protocol)
    assert str(e.value).startswith(message)


def test_data_errors(mnist: Dataset) -> None:
    with pytest.raises(DataError, match=r"every class is normal"):
        make_split(mnist, Protocol(normal_classes=tuple(range(10))))
    floats = Dataset("mnist", "image", mnist.x_train.astype(np.float32), mnist.y_train, None, None, "x")
    with pytest.raises(DataError, match=r"uint8"):
        make_split(floats, Protocol())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ratio_pollution": 1.0}, "ratio_pollution"),
        ({"ratio_known_outlier": -0.1}, "ratio_known_outlier"),
        ({"ratio_known_normal": 1.5}, "ratio_known_normal"),
        ({"ratio_known_outlier": float("nan")}, "ratio_known_outlier"),
        ({"ratio_known_outlier": 0.6, "ratio_known_normal": 0.4}, "ratio_known_outlier + ratio_known_normal"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 0.6}, "val_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"n_labeled_anomalies": -3}, "n_labeled_anomalies"),
        (
            {"n_labeled_anomalies": 5, "ratio_known_outlier": 0.1},
            "n_labeled_anomalies=5 and ratio_known_outlier",
        ),
        ({"n_known_outlier_classes": -1}, "n_known_outlier_classes"),
        ({"normal_classes": ()}, "normal_classes"),
        ({"normal_classes": (1, 1)}, "normal_classes"),
        ({"normal_classes": ("a",)}, "normal_classes"),
        ({"normal_classes": (0, 1), "known_anomaly_classes": (1, 2)}, "class 1 is also a normal class"),
        ({"known_anomaly_classes": (), "ratio_known_outlier": 0.1}, "known_anomaly_classes"),
        ({"n_known_outlier_classes": 0, "n_labeled_anomalies": 4}, "known_anomaly_classes"),
    ],
)
def test_bad_protocol(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        Protocol(**kwargs)  # type: ignore[arg-type]
    msg = str(e.value)
    assert field in msg and "\n" not in msg


def test_bad_protocol_reports_every_problem_on_one_line() -> None:
    with pytest.raises(ConfigError) as e:
        Protocol(ratio_pollution=2.0, val_fraction=0.9, seed=-2)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("ratio_pollution: must be in [0, 1) (got 2.0)", "val_fraction", "seed"):
        assert part in msg


def test_protocol_normalises_classes() -> None:
    p = Protocol(normal_classes=[np.int64(3), 4], known_anomaly_classes=[1])  # type: ignore[arg-type]
    assert p.normal_classes == (3, 4) and p.known_anomaly_classes == (1,)
    assert p == Protocol(normal_classes=(3, 4), known_anomaly_classes=(1,))
    assert hash(p) == hash(Protocol(normal_classes=(3, 4), known_anomaly_classes=(1,)))
