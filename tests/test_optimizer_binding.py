"""Issue 11, item 1: one optimizer is bound to a network at a time; a replaced optimizer
raises a clear error when it is used or its learning rate is read or changed, instead of
reporting its own lr while changing the live one."""
import numpy as np
import pytest

from qatfhe import nn, optim


def make():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2), seed=0)
    rng = np.random.default_rng(0)
    return net, rng.normal(size=(8, 2)).astype(np.float32), rng.integers(0, 2, 8)


@pytest.mark.parametrize("use", [
    lambda o: o.step(), lambda o: o.zero_grad(), lambda o: o.lr,
    lambda o: setattr(o, "lr", 0.5), lambda o: o.state_step])
def test_replaced_optimizer_refuses_use(use):
    net, X, y = make()
    first = optim.SGD(net.parameters(), lr=0.1)
    second = optim.AdamW(net.parameters(), lr=1e-3)
    before = {name: t["data"].copy() for name, t in net._tensors.items()}
    with pytest.raises(RuntimeError, match="was replaced by AdamW"):
        use(first)
    assert net.optimizer is second and second.lr == 1e-3
    for name, t in net._tensors.items():          # nothing moved
        np.testing.assert_array_equal(t["data"], before[name])


def test_replaced_optimizer_does_not_change_the_live_rate():
    net, X, y = make()
    first = optim.SGD(net.parameters(), lr=0.1)
    second = optim.SGD(net.parameters(), lr=0.2)
    with pytest.raises(RuntimeError):
        first.lr = 5.0
    # the live rate is still 0.2: one manual SGD step moves w by exactly -0.2 * grad
    net.train()
    second.zero_grad()
    loss = nn.CrossEntropyLoss()(net(X), y)
    loss.backward()
    w = net[0].weight.copy().astype(np.float64)
    g = net[0].weight_grad.copy().astype(np.float64)
    second.step()
    np.testing.assert_allclose(net[0].weight, w - 0.2 * g, rtol=1e-6, atol=1e-7)


def test_fit_refuses_a_replaced_optimizer():
    net, X, y = make()
    first = optim.SGD(net.parameters(), lr=0.1)
    optim.AdamW(net.parameters())
    with pytest.raises(RuntimeError, match="was replaced"):
        net.fit(X, y, optimizer=first, progress=False)
    net.fit(X, y, optimizer=net.optimizer, progress=False)
