"""Issue 11, item 11: the gradient with respect to the network input (saliency,
adversarial examples): net.backward(grad_output, input_grad=True) and
loss.backward(input_grad=True) return d loss / d X shaped as X.  Checked against central
finite differences on float networks and against torch autograd (X.grad, straight-through
fake quantization) on quantized ones."""
import numpy as np
import pytest

from qatfhe import nn

F32 = np.float32


def float_mlp():
    return nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(),
                         nn.Linear(5, 3), seed=1)


def float_cnn():
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(3 * 2 * 2, 3), seed=2)


def loss_at(net, X, y):
    net.train()
    return float(nn.CrossEntropyLoss()(net(X), y))


@pytest.mark.parametrize("make,shape", [(float_mlp, (6, 4)), (float_cnn, (5, 2, 4, 4))])
def test_float_input_gradient_matches_finite_differences(make, shape):
    rng = np.random.default_rng(0)
    net = make()
    X = rng.normal(size=shape).astype(F32)
    y = rng.integers(0, 3, shape[0])
    net.train()
    dx = nn.CrossEntropyLoss()(net(X), y).backward(input_grad=True)
    assert dx.shape == X.shape and dx.dtype == F32
    eps = 1e-3                             # small enough not to cross ReLU kinks here
    for trial in range(4):                 # random directions, then single coordinates
        d = rng.normal(size=shape) if trial < 2 else np.zeros(shape)
        if trial >= 2:
            d.flat[rng.integers(0, d.size)] = 1.0
        d = d.astype(F32)
        fd = (loss_at(net, X + eps * d, y) - loss_at(net, X - eps * d, y)) / (2 * eps)
        analytic = float(np.sum(dx.astype(np.float64) * d))
        assert abs(fd - analytic) <= 2e-2 * abs(fd) + 2e-5, (trial, fd, analytic)


def test_backward_with_grad_output_returns_the_input_gradient():
    rng = np.random.default_rng(1)
    net = float_mlp()
    X = rng.normal(size=(3, 4)).astype(F32)
    g = rng.normal(size=(3, 3)).astype(F32)
    net.train()
    net(X)
    dx = net.backward(g, input_grad=True)
    # f(X) = sum(g * net(X)): its directional derivative by finite differences
    d = rng.normal(size=X.shape).astype(F32)
    f = lambda Z: float(np.sum(g.astype(np.float64) * net(Z)))  # noqa: E731
    fd = (f(X + 1e-3 * d) - f(X - 1e-3 * d)) / 2e-3
    assert abs(fd - float(np.sum(dx * d))) <= 2e-2 * abs(fd) + 2e-5
    net(X)
    assert net.backward(g) is None                     # parameters only, as before


torch = pytest.importorskip("torch")


def torch_fake_quant(x, s, qmin, qmax):
    """Brevitas' activation fake quantization: round straight through, clamp masks."""
    v = x / s
    return torch.clamp(v + (torch.round(v) - v).detach(), qmin, qmax) * s


def quant_mlp():
    net = nn.Sequential(
        nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=4),          # const, 1/7
        nn.QuantLinear(3, 6, weight_quant=nn.CommonWeightQuant, weight_bit_width=3),
        nn.QuantReLU(bit_width=3, collect_stats_steps=1),                    # learned T
        nn.QuantLinear(6, 2, weight_bit_width=4), seed=3)                   # abs-max scale
    nn.init.uniform_(net[1].weight, -1, 1)
    return net


def torch_mlp(net, x):
    p = {n: torch.tensor(t["data"].copy()) for n, t in net._tensors.items()}
    h = torch_fake_quant(x, torch.tensor(F32(1) / F32(7)), -7, 7)
    w1 = torch_fake_quant(p["1.weight"], torch.tensor(F32(1) / F32(3)), -3, 3)
    h = torch.relu(h @ w1.T + p["1.bias"])
    T = p["2.act_quant.threshold"].abs()[0]
    h = torch_fake_quant(h, T / 7, 0, 7)
    w2 = p["3.weight"]
    s2 = w2.abs().max() / 7
    return h @ torch_fake_quant(w2, s2, -7, 7).T + p["3.bias"]


def quant_cnn():
    net = nn.Sequential(
        nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=4),
        nn.QuantConv2d(1, 3, 3, padding=1, weight_quant=nn.CommonWeightQuant,
                       weight_bit_width=3),
        nn.QuantReLU(act_quant=nn.CommonActQuant, bit_width=4),
        nn.AvgPool2d(2), nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=4),
        nn.Flatten(), nn.QuantLinear(3 * 2 * 2, 2, weight_quant=nn.CommonWeightQuant,
                                     weight_bit_width=3), seed=4)
    for i in (1, 6):
        nn.init.uniform_(net[i].weight, -1, 1)
    return net


def torch_cnn(net, x):
    p = {n: torch.tensor(t["data"].copy()) for n, t in net._tensors.items()}
    s7, s3 = torch.tensor(F32(1) / F32(7)), torch.tensor(F32(1) / F32(3))
    h = torch_fake_quant(x, s7, -7, 7)
    h = torch.nn.functional.conv2d(h, torch_fake_quant(p["1.weight"], s3, -3, 3),
                                   p["1.bias"], padding=1)
    h = torch_fake_quant(torch.relu(h), s7, -7, 7)
    # the engine pools integer codes exactly (ties stay ties); same value, same gradient
    pooled = torch.nn.functional.avg_pool2d(h, 2)
    exact = torch.nn.functional.avg_pool2d(torch.round(h / s7), 2) * s7
    h = torch_fake_quant(pooled + (exact - pooled).detach(), s7, -7, 7)
    h = h.reshape(len(h), -1)
    return h @ torch_fake_quant(p["6.weight"], s3, -3, 3).T + p["6.bias"]


@pytest.mark.parametrize("make,reference,shape", [(quant_mlp, torch_mlp, (16, 3)),
                                                  (quant_cnn, torch_cnn, (6, 1, 4, 4))])
def test_quantized_input_gradient_matches_torch_autograd(make, reference, shape):
    rng = np.random.default_rng(5)
    net = make()
    net.train()
    warm = rng.uniform(-0.5, 0.5, shape).astype(F32)
    for _ in range(2):                       # past the statistics phase: T is a parameter
        net(warm)
    X = rng.uniform(-1.2, 1.2, shape).astype(F32)     # some inputs beyond the clamp
    y = rng.integers(0, 2, shape[0])
    net.zero_grad()
    out = net(X)
    dx = nn.CrossEntropyLoss()(out, y).backward(input_grad=True)
    x = torch.tensor(X, requires_grad=True)
    logits = reference(net, x)
    np.testing.assert_allclose(out, logits.detach().numpy(), rtol=1e-5, atol=1e-5)
    torch.nn.functional.cross_entropy(logits, torch.tensor(y)).backward()
    assert np.count_nonzero(x.grad.numpy()) > 0 and np.count_nonzero(x.grad.numpy() == 0) > 0
    np.testing.assert_allclose(dx, x.grad.numpy(), rtol=1e-4, atol=1e-6)
