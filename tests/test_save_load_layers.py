"""save/load of a network holding every layer type: same description, same outputs, and
training resumes bit for bit (compared with the network that was saved)."""
import numpy as np

import qatfhe
from qatfhe import nn, optim


def every_layer_net():
    return nn.Sequential(
        nn.QuantIdentity(bit_width=4),
        nn.QuantConv2d(2, 3, 3, padding=1, weight_bit_width=3,
                       weight_scaling_per_output_channel=True),
        nn.QuantReLU(bit_width=3),
        nn.Residual(nn.QuantConv2d(3, 3, (3, 1), padding=(1, 0), weight_bit_width=3), nn.ReLU(),
                    quant=nn.QuantIdentity(bit_width=4)),
        nn.AvgPool2d(2),
        nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=4),
        nn.Transpose(2, 3),
        nn.Reshape(3, 12),
        nn.Flatten(),
        nn.QuantLinear(36, 5, weight_quant=nn.CommonWeightQuant, weight_bit_width=3),
        nn.ReLU(),
        nn.Linear(5, 3),
        seed=7)


def test_every_layer_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 2, 8, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=12)
    net = every_layer_net()
    optim.AdamW(net.parameters(), lr=1e-2)
    net.fit(X, y, epochs=2, batch_size=4, progress=False)
    path = tmp_path / "every.npz"
    net.save(path)
    loaded = qatfhe.load(path)
    assert loaded.config() == net.config()
    assert repr(loaded) == repr(net)
    net.eval()
    loaded.eval()
    np.testing.assert_array_equal(net(X), loaded(X))
    net.train()
    loaded.train()
    net.fit(X, y, epochs=1, batch_size=4, progress=False)
    loaded.fit(X, y, epochs=1, batch_size=4, progress=False)
    for (name, value), (_, other) in zip(net.named_parameters(), loaded.named_parameters()):
        np.testing.assert_array_equal(value, other, err_msg=name)
