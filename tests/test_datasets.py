"""Checkerboard data set against REFERENCE.md section 1, scikit-learn's split and an
analytic accuracy ceiling."""
import math

import numpy as np
import pytest

from qatfhe import datasets

BOUNDARIES = (1 / 6, 1 / 2, 5 / 6)


def grid_points(n):
    """Grid point k of meshgrid(linspace, linspace).ravel(): row i = k // n, column j = k % n."""
    k = np.arange(n * n)
    return np.column_stack([(k % n) / (n - 1), (k // n) / (n - 1)])


def rule_by_counting(X):
    """Cell index = number of boundaries below the coordinate; label = parity of the sum."""
    cells = sum((X > b).astype(np.int64) for b in BOUNDARIES)  # (m, 2)
    return (cells[:, 0] + cells[:, 1]) % 2


def expected_ceiling(n, noise, indices):
    """Mean over points of P(noisy point keeps its cell parity), one boundary per axis."""
    v = np.linspace(0, 1, n)
    dist = np.abs(v[:, None] - np.array([-1 / 6, *BOUNDARIES, 7 / 6])).min(axis=1)
    flip = np.array([0.5 * math.erfc(d / noise / math.sqrt(2)) for d in dist])  # (n,)
    keep = (1 - flip[:, None]) * (1 - flip[None, :]) + flip[:, None] * flip[None, :]  # [y, x]
    return keep.ravel()[indices].mean()


def rejoin(X_train, X_test, y_train, y_test, n):
    """Undo the split: points back in grid order."""
    train, test = independent_split(n * n)
    X = np.empty((n * n, 2), X_train.dtype)
    y = np.empty(n * n, y_train.dtype)
    X[train], X[test], y[train], y[test] = X_train, X_test, y_train, y_test
    return X, y


def independent_split(N):
    perm = np.random.RandomState(42).permutation(N)
    n_test = math.ceil(0.05 * N)
    return perm[n_test:], perm[:n_test]


def test_shapes_and_dtypes():
    X_train, X_test, y_train, y_test = datasets.checkerboard(seed=0)
    assert X_train.shape == (9500, 2) and X_test.shape == (500, 2)
    assert y_train.shape == (9500,) and y_test.shape == (500,)
    assert X_train.dtype == X_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    assert set(np.unique(np.concatenate([y_train, y_test]))) == {0, 1}


@pytest.mark.parametrize("n", [2, 4, 8, 34, 100])  # even n: no grid point on a boundary
def test_noiseless_points_and_split_from_scratch(n):
    X_train, X_test, y_train, y_test = datasets.checkerboard(noise=0.0, seed=1, n=n)
    train, test = independent_split(n * n)
    assert len(test) == len(X_test) and len(train) == len(X_train)
    grid = grid_points(n)
    np.testing.assert_allclose(X_train, grid[train], rtol=0, atol=1e-7)
    np.testing.assert_allclose(X_test, grid[test], rtol=0, atol=1e-7)
    labels = rule_by_counting(grid)
    np.testing.assert_array_equal(y_train, labels[train])
    np.testing.assert_array_equal(y_test, labels[test])


def test_grid_is_a_4x4_checkerboard():
    X, y = rejoin(*datasets.checkerboard(noise=0.0, seed=0), n=100)
    image = y.reshape(100, 100)  # [row = y coordinate, column = x coordinate]
    edges = [0, 17, 50, 83, 100]  # first grid index past 1/6, 1/2, 5/6 is 17, 50, 83
    for a in range(4):
        for b in range(4):
            cell = image[edges[a]:edges[a + 1], edges[b]:edges[b + 1]]
            assert np.all(cell == (a + b) % 2)


def test_no_grid_point_on_a_boundary():
    v = np.linspace(0, 1, 100)
    distance = np.abs(v[:, None] - np.array(BOUNDARIES)).min()
    assert distance > 0.005  # 3/594 for n = 100
    j = np.arange(100)  # exactly: j/99 = (2m+1)/6 would need 6j = 99(2m+1), even = odd
    assert not np.any((6 * j)[:, None] == 99 * np.array([1, 3, 5]))


def test_odd_n_puts_the_middle_column_on_a_boundary_and_rint_rounds_it_to_even():
    X, y = rejoin(*datasets.checkerboard(noise=0.0, seed=0, n=3), n=3)
    # cell parities per axis are rint(0)=0 -> 0, rint(1.5)=2 -> 0, rint(3)=3 -> 1
    parity = np.array([0, 0, 1])
    np.testing.assert_array_equal(y.reshape(3, 3), parity[:, None] ^ parity[None, :])


def test_noise_is_one_default_rng_draw_in_row_major_order():
    noise, seed = 0.03, 123
    X, y = rejoin(*datasets.checkerboard(noise=noise, seed=seed), n=100)
    jitter = np.random.default_rng(seed).normal(0.0, noise, size=(10000, 2))
    expected = (grid_points(100) + jitter).astype(np.float32)
    np.testing.assert_allclose(X, expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(y, rule_by_counting(grid_points(100)))  # labels before noise


def test_split_matches_scikit_learn():
    model_selection = pytest.importorskip("sklearn.model_selection")
    for n in (2, 5, 21, 100):
        axis = np.linspace(0, 1, n)
        xx, yy = np.meshgrid(axis, axis)
        X = np.column_stack([xx.ravel(), yy.ravel()])
        y = np.arange(n * n)  # labels = grid index, so the order is checked too
        ref = model_selection.train_test_split(X, y, test_size=0.05, random_state=42)
        ours = datasets.checkerboard(noise=0.0, seed=0, n=n)
        np.testing.assert_allclose(ours[0], ref[0], rtol=0, atol=1e-7)
        np.testing.assert_allclose(ours[1], ref[1], rtol=0, atol=1e-7)
        train, test = datasets.split_indices(n * n)
        np.testing.assert_array_equal(train, ref[2])
        np.testing.assert_array_equal(test, ref[3])


def test_seed_reproducibility():
    a = datasets.checkerboard(seed=7)
    b = datasets.checkerboard(seed=np.int64(7))
    c = datasets.checkerboard(seed=8)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    np.testing.assert_array_equal(a[3], c[3])  # split and labels do not depend on the seed
    fresh1, fresh2 = datasets.checkerboard(), datasets.checkerboard()
    assert not np.array_equal(fresh1[0], fresh2[0])


def test_noise_level():
    X, _ = rejoin(*datasets.checkerboard(noise=0.05, seed=3), n=100)
    residual = X.astype(np.float64) - grid_points(100)
    assert abs(residual.mean()) < 0.002
    assert abs(residual.std() - 0.05) < 0.002


def test_accuracy_ceiling_matches_analytic_expectation():
    overall, held_out = [], []
    for seed in range(20):
        X_train, X_test, y_train, y_test = datasets.checkerboard(seed=seed)
        X = np.concatenate([X_train, X_test])
        y = np.concatenate([y_train, y_test])
        overall.append(np.mean(rule_by_counting(X.astype(np.float64)) == y))
        assert datasets.accuracy_ceiling(X, y) == pytest.approx(overall[-1], abs=1e-12)
        held_out.append(datasets.accuracy_ceiling(X_test, y_test))
    train, test = independent_split(10000)
    expect_all = expected_ceiling(100, 0.01, np.arange(10000))  # 0.9557
    expect_test = expected_ceiling(100, 0.01, test)             # 0.9511
    assert 0.95 < expect_all < 0.96
    # std of one draw: ~0.0018 overall, ~0.008 on 500 points; 20 draws averaged
    assert abs(np.mean(overall) - expect_all) < 0.0015
    assert abs(np.mean(held_out) - expect_test) < 0.006
    assert 0.94 < min(overall) and max(overall) < 0.97


def test_clean_labels_score_perfectly_without_noise():
    X_train, X_test, y_train, y_test = datasets.checkerboard(noise=0.0, n=100)
    assert datasets.accuracy_ceiling(X_test, y_test) == 1.0
    assert datasets.accuracy_ceiling(X_train, y_train) == 1.0


def test_checkerboard_labels_on_random_points():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, size=(5000, 2))
    X = X[np.abs(X[:, :, None] - np.array(BOUNDARIES)).min(axis=(1, 2)) > 1e-9]
    labels = datasets.checkerboard_labels(X)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, rule_by_counting(X))
    np.testing.assert_array_equal(datasets.checkerboard_labels(X.tolist()), labels)
    np.testing.assert_array_equal(datasets.checkerboard_labels(np.zeros((0, 2))), [])


@pytest.mark.parametrize("kwargs, error, word", [
    ({"noise": -0.1}, ValueError, "noise"),
    ({"noise": float("nan")}, ValueError, "noise"),
    ({"noise": float("inf")}, ValueError, "noise"),
    ({"noise": "0.1"}, TypeError, "noise"),
    ({"noise": True}, TypeError, "noise"),
    ({"seed": 1.5}, TypeError, "seed"),
    ({"seed": "1"}, TypeError, "seed"),
    ({"seed": -1}, ValueError, "seed"),
    ({"n": 1}, ValueError, "n must"),
    ({"n": 0}, ValueError, "n must"),
    ({"n": 10.0}, TypeError, "n must"),
    ({"n": True}, TypeError, "n must"),
])
def test_bad_arguments(kwargs, error, word):
    with pytest.raises(error, match=word):
        datasets.checkerboard(**kwargs)


def test_bad_points():
    with pytest.raises(ValueError, match="shape"):
        datasets.checkerboard_labels(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="shape"):
        datasets.checkerboard_labels(np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        datasets.checkerboard_labels([[0.1, np.nan]])
    with pytest.raises(TypeError, match="numeric"):
        datasets.checkerboard_labels([["a", "b"]])
    with pytest.raises(ValueError, match="y must"):
        datasets.accuracy_ceiling(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="at least one"):
        datasets.accuracy_ceiling(np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(TypeError, match="n_samples"):
        datasets.split_indices(10.0)
    with pytest.raises(ValueError, match="n_samples"):
        datasets.split_indices(1)
