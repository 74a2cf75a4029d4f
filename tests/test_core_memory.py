"""Memory held by a network (issue 11, item 8) and the private core objects (item 9).

Eval forwards of any size run in bounded chunks through a kept workspace of bounded size
(the net's reported buffer_bytes does not grow with the batch), with the results of
small batches; big training buffers shrink back after their backward.  The _core objects
refuse re-initialisation, which would free memory behind live NumPy views."""
import numpy as np
import pytest

import qatfhe
from qatfhe import _core, nn


def simple_net(seed=0):
    return nn.Sequential(nn.Linear(2, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                         nn.Linear(100, 2), seed=seed)


def test_eval_forward_memory_does_not_grow_with_the_batch():
    net = simple_net().eval()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120_000, 2)).astype(np.float32)
    small = net(X[:1000])
    net(X[:40_000])
    held_40k = net._core.buffer_bytes
    big = net(X)
    held_big = net._core.buffer_bytes
    assert held_big == held_40k                  # bounded by the chunk, not by n
    one_hidden_layer = len(X) * 100 * 4           # bytes of one layer's outputs for all of X
    assert held_big < one_hidden_layer // 10
    assert np.array_equal(big[:1000], small)
    pieces = np.concatenate([net(X[i:i + 4096]) for i in range(0, len(X), 4096)])
    assert np.array_equal(big, pieces)
    assert np.array_equal(net.predict(X), big.argmax(axis=1))


def test_training_buffers_shrink_back_after_backward():
    net = simple_net().train()
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20_000, 2)).astype(np.float32)   # ~90 MB of kept activations
    y = rng.integers(0, 2, size=len(X))
    net(X[:8])
    held_small = net._core.buffer_bytes
    net.loss_backward(y[:8])
    loss = nn.CrossEntropyLoss()(net(X), y)
    assert net._core.buffer_bytes > 50 * held_small    # kept for the backward
    loss.backward()
    assert net._core.buffer_bytes <= held_small         # released once used


@pytest.mark.parametrize("make", ["net", "circuit"])
def test_core_objects_refuse_reinitialisation(make):
    net = nn.Sequential(nn.QuantIdentity(bit_width=3), nn.QuantLinear(2, 3, weight_bit_width=3),
                        seed=0)
    X = np.random.default_rng(2).normal(size=(20, 2)).astype(np.float32)
    net.fit(X, np.arange(20) % 3, epochs=1, progress=False)
    if make == "net":
        obj, view = net._core, net[1].weight
        args = ([{"kind": _core.LAYER_LINEAR, "in_features": 1, "out_features": 1}], 1, 0)
    else:
        module = qatfhe.compile_qat_model(net.eval(), X)
        obj, view = module._circuit, None
        args = ((1.0, 0, -3, 3), (1, 1, 1), [{"kind": "decode", "src": 0}])
    before = None if view is None else view.copy()
    with pytest.raises(RuntimeError, match="re-initialised"):
        obj.__init__(*args)
    with pytest.raises(RuntimeError, match="re-initialised"):
        type(obj).__init__(obj, *args)
    if view is not None:
        view[...] = before + 1.0          # the memory behind the view is still the net's
        assert np.array_equal(net[1].weight, before + 1.0)
    else:
        assert np.array_equal(module.forward(X, fhe="simulate"), net(X))


def test_uninitialised_core_objects_raise():
    for cls in (_core.Net, _core.Circuit):
        obj = cls.__new__(cls)
        with pytest.raises(RuntimeError, match="not initialised"):
            obj.forward(np.zeros((1, 2), np.float32)) if cls is _core.Net else obj.run(
                np.zeros((1, 2), np.float32))


def test_fit_with_a_huge_batch_does_not_keep_its_buffers():
    net = simple_net()
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20_000, 2)).astype(np.float32)
    y = rng.integers(0, 2, size=len(X))
    net.fit(X[:64], y[:64], epochs=1, batch_size=8, progress=False)
    held_small = net._core.buffer_bytes
    net.fit(X, y, epochs=1, batch_size=len(X), progress=False)
    assert net._core.buffer_bytes <= held_small
