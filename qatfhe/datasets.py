"""The checkerboard data set of the tutorial (REFERENCE.md section 1), NumPy only.

A regular n x n grid on [0, 1]^2, labelled by a 4 x 4 checkerboard (cell boundaries at
1/6, 1/2, 5/6 on each axis), then jittered by Gaussian noise *after* labelling, so points
near a boundary can carry the label of the neighbouring cell. The train/test split is the
one scikit-learn's `train_test_split(X, y, test_size=0.05, random_state=42)` makes,
reproduced here without scikit-learn.

Exact recipe of `checkerboard(noise, seed, n)`:
    xx, yy = meshgrid(linspace(0, 1, n), linspace(0, 1, n))         # float64, (n, n)
    X = column_stack([xx.ravel(), yy.ravel()])                       # (n*n, 2)
    y = (rint(3 xx) mod 2) XOR (rint(3 yy) mod 2), raveled           # int64, (n*n,)
    rng = numpy.random.default_rng(seed)                             # PCG64
    X = X + rng.normal(0.0, noise, size=(n*n, 2))                    # one call, float64
    perm = numpy.random.RandomState(42).permutation(n*n)             # MT19937, legacy
    n_test = ceil(0.05 * n*n); test = perm[:n_test]; train = perm[n_test:]
    return X[train].astype(float32), X[test].astype(float32), y[train], y[test]
The noise is one draw of shape (n*n, 2) filled in row-major order (row i gets the x noise
then the y noise), drawn even when noise == 0. `seed=None` draws fresh OS entropy, so the
noise differs every call; the split never changes (it has its own fixed seed).
For even n no grid point lies on a cell boundary (j/(n-1) = (2m+1)/6 would need an odd
number to equal an even one); for odd n the middle row and column sit on 1/2 and rint's
round-half-to-even puts them in cell 2 (label parity 0).
"""
import math
import numbers

import numpy as np

TEST_SIZE = 0.05  # fraction of the points held out, as in the tutorial
SPLIT_SEED = 42   # random_state of the tutorial's train_test_split


def checkerboard(noise=0.01, seed=None, n=100):
    """The tutorial's data set: X_train, X_test, y_train, y_test.

    noise: standard deviation of the Gaussian jitter added to each coordinate (>= 0).
    seed:  int >= 0 for numpy.random.default_rng, or None for fresh entropy.
    n:     grid points per axis (>= 2); n = 100 gives 9500 train / 500 test points.
    X arrays are float32 (the engine's dtype), shape (m, 2); y arrays are int64 in {0, 1},
    shape (m,), the label of the point's grid position before the noise.
    """
    noise = _check_noise(noise)
    seed = _check_seed(seed)
    n = _check_n(n)

    axis = np.linspace(0.0, 1.0, n)
    xx, yy = np.meshgrid(axis, axis)
    X = np.column_stack([xx.ravel(), yy.ravel()])  # (n*n, 2) float64
    y = checkerboard_labels(X)                     # labelled before the noise

    rng = np.random.default_rng(seed)
    X = X + rng.normal(0.0, noise, size=X.shape)

    train, test = split_indices(len(X))
    with np.errstate(over="ignore", invalid="ignore"):
        X = X.astype(np.float32)
    if not np.isfinite(X).all():
        raise ValueError(f"noise={noise} puts points beyond the float32 range (|x| > 3.4e38): "
                         f"the data would hold infinity; expected a much smaller noise")
    return X[train], X[test], y[train], y[test]


def checkerboard_labels(X):
    """The clean checkerboard rule for any points: (rint(3x) mod 2) XOR (rint(3y) mod 2).

    X: array-like (m, 2) of finite numbers; computed in float64. Returns int64 (m,).
    Points outside [0, 1]^2 continue the pattern (cells of width 1/3 centred on k/3).
    """
    X = np.asarray(X)
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise TypeError(f"X must be a numeric array, got dtype {X.dtype}")
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"X must have shape (m, 2), got {X.shape}")
    X = X.astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise ValueError("X must contain only finite values")
    cells = np.rint(3.0 * X).astype(np.int64) % 2  # (m, 2) parity of the cell index per axis
    return cells[:, 0] ^ cells[:, 1]


def accuracy_ceiling(X, y):
    """Fraction of points whose label y agrees with the clean rule at their (noisy) position.

    This is what a perfect learner of the checkerboard scores: on the tutorial's data about
    0.956 over all points (REFERENCE.md section 1).
    """
    y = np.asarray(y)
    labels = checkerboard_labels(X)
    if y.shape != labels.shape:
        raise ValueError(f"y must have shape {labels.shape} to match X, got {y.shape}")
    if len(y) == 0:
        raise ValueError("X and y must hold at least one point")
    return float(np.mean(labels == y))


def split_indices(n_samples):
    """(train, test) indices of train_test_split(test_size=0.05, random_state=42).

    perm = RandomState(42).permutation(n_samples); n_test = ceil(0.05 * n_samples);
    test = perm[:n_test], train = perm[n_test:], both in permutation order (int64).
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral):
        raise TypeError(f"n_samples must be an int, got {type(n_samples).__name__}")
    n_test = math.ceil(TEST_SIZE * n_samples)
    if n_samples - n_test < 1:
        raise ValueError(f"n_samples must leave a non-empty train set, got {n_samples}")
    perm = np.random.RandomState(SPLIT_SEED).permutation(n_samples).astype(np.int64)
    return perm[n_test:], perm[:n_test]


def _check_noise(noise):
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real):
        raise TypeError(f"noise must be a real number, got {type(noise).__name__}")
    noise = float(noise)
    if not (math.isfinite(noise) and noise >= 0.0):
        raise ValueError(f"noise must be finite and >= 0, got {noise}")
    return noise


def _check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(seed)


def _check_n(n):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 2:
        raise ValueError(f"n must be >= 2 grid points per axis, got {n}")
    return int(n)
