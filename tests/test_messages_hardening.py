"""Issue 11, item 10: out-of-range and wrong-type arguments give a ValueError/TypeError that
says what was expected, never a bare OverflowError, AttributeError or wrapped integers."""
import numpy as np
import pytest

import qatfhe
from qatfhe import datasets, nn, optim, prune


def small_net():
    return nn.Sequential(nn.QuantIdentity(bit_width=4), nn.QuantLinear(2, 4),
                         nn.QuantReLU(bit_width=4), nn.QuantLinear(4, 2), seed=0)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (16, 2)).astype(np.float32), rng.integers(0, 2, 16)


def test_fit_batch_size_beyond_int64(data):
    net = small_net()
    with pytest.raises(ValueError, match=r"batch_size must be an integer in \[1, "):
        net.fit(*data, batch_size=2 ** 63, progress=False)
    net.fit(*data, batch_size=2 ** 63 - 1, progress=False)     # the largest is accepted


def test_fan_in_beyond_int64():
    net = small_net()
    with pytest.raises(ValueError, match=r"max_non_zero must be an int in \[1, 2\*\*63 - 1\]"):
        prune.fan_in(net[1], 2 ** 63)


def test_fit_optimizer_must_be_an_optimizer(data):
    net = small_net()
    with pytest.raises(TypeError, match="optimizer must be a qatfhe.optim optimizer"):
        net.fit(*data, optimizer="adam", progress=False)


@pytest.mark.parametrize("compile_fn", [qatfhe.compile_qat_model, qatfhe.compile_model])
def test_compile_needs_a_network(compile_fn, data):
    with pytest.raises(TypeError, match="net must be a qatfhe.nn.Sequential network, got str"):
        compile_fn("net", data[0])


def test_dequantize_output_does_not_wrap_uint64(data):
    net = small_net()
    net.fit(*data, progress=False)
    module = qatfhe.compile_qat_model(net, data[0])
    q = np.zeros((1, 2), np.uint64)
    q[0, 0] = 2 ** 64 - 1
    with pytest.raises(ValueError, match="beyond the int64 range"):
        module.dequantize_output(q)
    # values that fit decode as their int64 equivalents
    q_small = np.array([[3, 2 ** 40]], np.uint64)
    np.testing.assert_array_equal(module.dequantize_output(q_small),
                                  module.dequantize_output(q_small.astype(np.int64)))


def test_checkerboard_refuses_noise_that_overflows():
    with pytest.raises(ValueError, match="beyond the float32 range"):
        datasets.checkerboard(noise=1e308, seed=0)


def test_load_and_save_name_a_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        qatfhe.load(tmp_path)
    with pytest.raises(ValueError, match="is a directory"):
        small_net().save(tmp_path)
