"""qatfhe._core.matmul: the core's float32 product, bit for bit against NumPy written from
gemm.h's rule (each element one running float32 sum over p in order, products rounded)."""
import numpy as np
import pytest

from qatfhe import _core


def running_sum_reference(a, b):
    c = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for p in range(a.shape[1]):
        c = c + np.multiply.outer(a[:, p], b[p]).astype(np.float32)   # both float32 ops
    return c


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 17, 9), (13, 40, 300), (50, 8, 31), (6, 3, 0)])
def test_matmul_bits_match_running_sums(m, n, k):
    rng = np.random.default_rng(m * 1000 + n + k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    want = running_sum_reference(a, b)
    assert np.array_equal(_core.matmul(a, b).view(np.uint32), want.view(np.uint32))
    got_t = _core.matmul(np.ascontiguousarray(a.T), b, transpose_a=True)
    assert np.array_equal(got_t.view(np.uint32), want.view(np.uint32))
    np.testing.assert_allclose(_core.matmul(a, b), a.astype(np.float64) @ b, atol=1e-4, rtol=1e-4)


def test_matmul_rejects_bad_input():
    a = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="expected b to have 4 rows"):
        _core.matmul(a, np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="2-dimensional"):
        _core.matmul(np.ones(4, np.float32), a)
    bad = a.copy()
    bad[1, 2] = np.nan     # propagates as in numpy.matmul: row 1 only
    out = _core.matmul(bad, np.ones((4, 2), np.float32))
    assert np.isnan(out[1]).all() and np.array_equal(out[[0, 2]], np.full((2, 2), 4.0))
    with pytest.raises(TypeError, match="numeric"):
        _core.matmul(np.array([["x"]]), a)
