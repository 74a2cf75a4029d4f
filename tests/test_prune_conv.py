"""fan_in and the tutorial rule on convolutions: per output channel, over in_channels x
kh x kw weights, checked against a NumPy argsort reference; masks hold through training."""
import numpy as np

from qatfhe import nn, optim, prune


def conv_net():
    return nn.Sequential(nn.QuantIdentity(bit_width=4),
                         nn.QuantConv2d(3, 5, 3, padding=1, weight_bit_width=3),
                         nn.QuantReLU(bit_width=3), nn.Flatten(),
                         nn.QuantLinear(5 * 6 * 6, 2, weight_bit_width=3), seed=4)


def test_fan_in_per_output_channel():
    net = conv_net()
    w = net[1].weight.copy()
    prune.fan_in(net[1], 7)
    mask = net[1].weight_mask.reshape(5, -1)
    rows = np.abs(w).reshape(5, -1)
    for o in range(5):
        keep = np.argsort(-rows[o], kind="stable")[:7]
        expected = np.zeros(rows.shape[1], np.uint8)
        expected[keep] = 1
        np.testing.assert_array_equal(mask[o], expected)
    assert (np.count_nonzero(net[1].weight.reshape(5, -1), axis=1) <= 7).all()
    X = np.random.default_rng(0).normal(size=(16, 3, 6, 6)).astype(np.float32)
    y = np.arange(16) % 2
    optim.AdamW(net.parameters(), lr=1e-2)
    net.fit(X, y, epochs=3, batch_size=4, progress=False)
    assert (net[1].weight.reshape(5, -1)[mask == 0] == 0).all()


def test_tutorial_rule_on_conv_and_linear():
    net = conv_net()
    counts = net.prune(10)
    assert counts == {"1.weight": (27 - 10) * 5, "4.weight": (180 - 10) * 2}
    assert int((net[1].weight == 0).sum()) == (27 - 10) * 5
