"""Issue 11, item 2: a loss remembers the forward it came from.  A backward after another
training forward replaced that forward's activations, after a mode switch dropped them, or
a second time raises RuntimeError saying which, instead of silently using another batch's
activations.  Eval-mode forwards (predict, score) run in their own workspace and keep
them: the loss still gives the gradient of its own batch."""
import numpy as np
import pytest

from qatfhe import nn, optim


def make():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), seed=0)
    optim.SGD(net.parameters(), lr=0.1)
    rng = np.random.default_rng(0)
    X1, X2 = rng.normal(size=(2, 6, 3)).astype(np.float32)
    return net, X1, X2, rng.integers(0, 2, 6), rng.integers(0, 2, 6)


def numpy_grad(net, X, y):
    """d mean CE / d W of the last Linear, from NumPy (softmax - onehot) * hidden."""
    W1, b1 = net[0].weight.astype(np.float64), net[0].bias.astype(np.float64)
    W2, b2 = net[2].weight.astype(np.float64), net[2].bias.astype(np.float64)
    h = np.maximum(X @ W1.T + b1, 0)
    z = h @ W2.T + b2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return (p / len(y)).T @ h


def test_stale_loss_after_another_training_forward():
    net, X1, X2, y1, y2 = make()
    ce = nn.CrossEntropyLoss()
    net.train()
    loss = ce(net(X1), y1)
    net(X2)                                    # same batch size: the old bug used X2's
    with pytest.raises(RuntimeError, match="another training forward"):
        loss.backward()
    np.testing.assert_array_equal(net[2].weight_grad, 0)       # nothing was accumulated


def test_eval_forwards_in_between_keep_the_loss():
    """predict() and eval-mode forwards run in their own workspace: the loss still gives
    the gradient of its own batch (X1), not of the predicted one."""
    net, X1, X2, y1, y2 = make()
    ce = nn.CrossEntropyLoss()
    net.train()
    loss = ce(net(X1), y1)
    net.predict(X2)
    net.score(X2, y2)
    assert net.training
    loss.backward()
    np.testing.assert_allclose(net[2].weight_grad, numpy_grad(net, X1, y1), rtol=1e-5,
                               atol=1e-6)


def test_stale_loss_after_a_mode_switch_says_so():
    """net.eval(); net(X2); net.train() drops the kept forward: the message says why."""
    net, X1, X2, y1, y2 = make()
    ce = nn.CrossEntropyLoss()
    net.train()
    loss = ce(net(X1), y1)
    net.eval()
    net(X2)
    net.train()
    with pytest.raises(RuntimeError, match=r"net.train\(\) or net.eval\(\) was called after "
                       r"the training forward this loss came from"):
        loss.backward()
    np.testing.assert_array_equal(net[2].weight_grad, 0)


def test_stale_loss_after_fit():
    net, X1, X2, y1, y2 = make()
    net.train()
    loss = nn.CrossEntropyLoss()(net(X1), y1)
    net.fit(X2, y2, progress=False)
    with pytest.raises(RuntimeError, match="another training forward"):
        loss.backward()


def test_second_backward_of_one_loss_is_refused():
    net, X1, X2, y1, y2 = make()
    net.train()
    loss = nn.CrossEntropyLoss()(net(X1), y1)
    loss.backward()
    with pytest.raises(RuntimeError, match="backward already ran for this loss"):
        loss.backward()


def test_fresh_loss_gives_its_own_batch_gradient():
    net, X1, X2, y1, y2 = make()
    ce = nn.CrossEntropyLoss()
    net.train()
    stale = ce(net(X1), y1)
    loss = ce(net(X2), y2)
    loss.backward()
    np.testing.assert_allclose(net[2].weight_grad, numpy_grad(net, X2, y2), rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(RuntimeError):
        stale.backward()
