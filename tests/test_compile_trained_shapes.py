"""Networks compile on the data they train on (issue 11, item 5): random small
architectures are trained on 4-D images, then compiled from the same images and from
their flattened form; the circuit equals the eval-mode fake-quant network bit for bit."""
import numpy as np
import pytest

import qatfhe
from qatfhe import nn


def out_dim(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def check_trains_then_compiles(layers, shape, seed):
    rng = np.random.default_rng(seed)
    try:   # as users build it: the input shape comes from the first Linear/Conv2d
        net = nn.Sequential(*layers, seed=seed)
    except ValueError:   # that shape does not fit the pooling: the user gives it
        net = nn.Sequential(*layers, seed=seed, input_shape=shape)
    X = rng.normal(size=(48,) + shape).astype(np.float32)
    y = (X.reshape(len(X), -1).sum(axis=1) > 0).astype(np.int64)
    net.fit(X, y, epochs=1, batch_size=8, progress=False)
    net.eval()
    expected = net(X)
    for data in (X, X.reshape(len(X), -1)):
        module = qatfhe.compile_qat_model(net, data)
        assert np.array_equal(module.forward(data, fhe="simulate"), expected)
        assert np.array_equal(module.predict(data, fhe="simulate"), expected.argmax(axis=1))


def test_issue_example_pool_before_linear():
    layers = [nn.QuantIdentity(bit_width=4), nn.AvgPool2d(2, padding=1),
              nn.QuantIdentity(bit_width=4), nn.Flatten(), nn.QuantLinear(4, 2)]
    check_trains_then_compiles(layers, (1, 3, 3), seed=0)


@pytest.mark.parametrize("seed", range(8))
def test_random_architectures_train_then_compile(seed):
    rng = np.random.default_rng(1000 + seed)
    c, h, w = int(rng.integers(1, 3)), int(rng.integers(3, 7)), int(rng.integers(3, 7))
    layers = [nn.QuantIdentity(bit_width=int(rng.integers(3, 6)))]
    channels, hh, ww = c, h, w
    if rng.random() < 0.5:
        k = int(rng.integers(1, min(h, w) + 1))
        p = int(rng.integers(0, 2))
        channels = int(rng.integers(1, 4))
        layers += [nn.QuantConv2d(c, channels, k, padding=p, weight_bit_width=3),
                   nn.QuantReLU(bit_width=3)]
        hh, ww = out_dim(hh, k, 1, p), out_dim(ww, k, 1, p)
    k = int(rng.integers(1, 3))
    p = int(rng.integers(0, 2)) if k == 2 else 0
    layers += [nn.AvgPool2d(k, padding=p), nn.QuantIdentity(bit_width=4)]
    hh, ww = out_dim(hh, k, k, p), out_dim(ww, k, k, p)
    layers += [nn.Flatten(), nn.QuantLinear(channels * hh * ww, 2, weight_bit_width=3)]
    check_trains_then_compiles(layers, (c, h, w), seed)


def test_flat_data_of_the_wrong_size_is_refused():
    layers = [nn.QuantIdentity(bit_width=4), nn.AvgPool2d(2, padding=1),
              nn.QuantIdentity(bit_width=4), nn.Flatten(), nn.QuantLinear(4, 2)]
    net = nn.Sequential(*layers)
    X = np.zeros((4, 1, 3, 3), np.float32)
    net.fit(X, np.zeros(4, int), epochs=1, progress=False)
    with pytest.raises(ValueError, match="X_calib"):
        qatfhe.compile_qat_model(net, np.zeros((4, 7), np.float32))
