"""Grouped and depthwise convolutions (Conv2d / QuantConv2d `groups`) and the fixed float
summation order of the convolution kernels.

References: a float64 NumPy grouped convolution written here from the definition (group g
of the output channels reads only input channels g C/G .. (g+1) C/G - 1, with weight
(OC, C/G, KH, KW)), its backward, and torch.nn.functional.conv2d with autograd where torch
is installed.  Every check covers the forward, the input gradient (through a conv before
the grouped one) and the weight and bias gradients."""
import numpy as np
import pytest

import qatfhe
from qatfhe import nn

F32 = np.float32


def ref_grouped_conv(x, w, b, groups, stride, padding):
    """y[n, o, i, j] = sum_{c in o's group, ky, kx} x_pad[n, c, i s + ky, j s + kx] w[o, c', ky, kx]."""
    x = np.asarray(x, np.float64)
    n, c, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, oc, oh, ow))
    per = oc // groups
    for o in range(oc):
        g = o // per
        for ky in range(kh):
            for kx in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, ky:ky + sh * (oh - 1) + 1:sh,
                           kx:kx + sw * (ow - 1) + 1:sw]
                y[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, ky, kx])
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def ref_grouped_conv_backward(dy, x, w, groups, stride, padding):
    """(dx, dw, db) of ref_grouped_conv."""
    x = np.asarray(x, np.float64)
    n, c, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape)
    oh, ow = dy.shape[2:]
    per = oc // groups
    for o in range(oc):
        g = o // per
        for ky in range(kh):
            for kx in range(kw):
                sl = (slice(None), slice(g * cg, (g + 1) * cg),
                      slice(ky, ky + sh * (oh - 1) + 1, sh), slice(kx, kx + sw * (ow - 1) + 1, sw))
                dw[o, :, ky, kx] = np.einsum("nchw,nhw->c", xp[sl], dy[:, o])
                dxp[sl] += np.einsum("nhw,c->nchw", dy[:, o], w[o, :, ky, kx])
    return dxp[:, :, ph:ph + h, pw:pw + wd], dw, dy.sum(axis=(0, 2, 3))


def test_reference_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 6))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    args = (2, (2, 1), (1, 1))
    G = rng.standard_normal(ref_grouped_conv(x, w, b, *args).shape)
    dx, dw, db = ref_grouped_conv_backward(G, x, w, *args)
    dirs = [rng.standard_normal(p.shape) for p in (x, w, b)]
    eps = 1e-6
    f = lambda t: np.sum(G * ref_grouped_conv(x + t * dirs[0], w + t * dirs[1],
                                              b + t * dirs[2], *args))
    numeric = (f(eps) - f(-eps)) / (2 * eps)
    analytic = sum(float(np.sum(g * d)) for g, d in zip((dx, dw, db), dirs))
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic))


GROUP_CASES = [
    # C, OC, groups, (H, W), kernel, stride, padding, bias
    (4, 6, 2, (6, 5), (3, 3), (1, 1), (1, 1), True),
    (4, 4, 4, (7, 6), (3, 3), (1, 1), (1, 1), True),      # depthwise
    (3, 6, 3, (6, 6), (3, 2), (2, 1), (0, 1), False),     # depthwise, channel multiplier 2
    (6, 8, 2, (5, 5), (1, 1), (1, 1), (0, 0), True),      # grouped 1x1 (pointwise)
    (16, 16, 16, (5, 5), (3, 3), (1, 1), (1, 1), True),   # wide depthwise
]


def _grouped_net(c, oc, groups, kernel, stride, padding, bias, seed=3):
    """A 1x1 conv then the grouped conv, so that the grouped conv's input gradient is
    computed (it reaches the first conv's weight gradient)."""
    return nn.Sequential(nn.Conv2d(c, c, 1, bias=False),
                         nn.Conv2d(c, oc, kernel, stride=stride, padding=padding, bias=bias,
                                   groups=groups), seed=seed)


def _engine(net, X, G):
    net.train()
    out = np.asarray(net(X), np.float64)
    net.zero_grad()
    net.backward(G.astype(F32))
    grads = {name: t["grad"].astype(np.float64).copy()
             for name, t in net._tensors.items() if t["kind"] == "param"}
    return out, grads


@pytest.mark.parametrize("c,oc,groups,hw,kernel,stride,padding,bias", GROUP_CASES)
def test_grouped_conv_against_numpy_reference(c, oc, groups, hw, kernel, stride, padding, bias):
    rng = np.random.default_rng(1)
    net = _grouped_net(c, oc, groups, kernel, stride, padding, bias)
    assert net[1].weight.shape == (oc, c // groups) + kernel
    X = rng.standard_normal((3, c) + hw).astype(F32)
    w0 = np.asarray(net[0].weight, np.float64)
    w1 = np.asarray(net[1].weight, np.float64)
    b1 = None if not bias else np.asarray(net[1].bias, np.float64)
    h = ref_grouped_conv(X, w0, None, 1, (1, 1), (0, 0))
    y = ref_grouped_conv(h, w1, b1, groups, stride, padding)
    G = rng.standard_normal(y.shape)
    out, grads = _engine(net, X, G)
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-5)
    dh, dw1, db1 = ref_grouped_conv_backward(G, h, w1, groups, stride, padding)
    _, dw0, _ = ref_grouped_conv_backward(dh, X, w0, 1, (1, 1), (0, 0))
    np.testing.assert_allclose(grads["1.weight"], dw1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["0.weight"], dw0, rtol=1e-4, atol=1e-4)   # through dX
    if bias:
        np.testing.assert_allclose(grads["1.bias"], db1, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c,oc,groups,hw,kernel,stride,padding,bias", GROUP_CASES)
def test_grouped_conv_against_torch(c, oc, groups, hw, kernel, stride, padding, bias):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(2)
    net = _grouped_net(c, oc, groups, kernel, stride, padding, bias)
    X = rng.standard_normal((4, c) + hw).astype(F32)
    w0 = torch.tensor(np.array(net[0].weight), requires_grad=True)
    w1 = torch.tensor(np.array(net[1].weight), requires_grad=True)
    b1 = torch.tensor(np.array(net[1].bias), requires_grad=True) if bias else None
    x = torch.from_numpy(X).requires_grad_(True)
    y = F.conv2d(F.conv2d(x, w0), w1, b1, stride=stride, padding=padding, groups=groups)
    G = rng.standard_normal(tuple(y.shape)).astype(F32)
    (y * torch.from_numpy(G)).sum().backward()
    out, grads = _engine(net, X, G)
    np.testing.assert_allclose(out, y.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads["1.weight"], w1.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["0.weight"], w0.grad.numpy(), rtol=1e-4, atol=1e-4)
    if bias:
        np.testing.assert_allclose(grads["1.bias"], b1.grad.numpy(), rtol=1e-4, atol=1e-4)


def _qat_grouped(groups, seed=0):
    unsigned = nn.Uint8ActPerTensorFloat
    return nn.Sequential(
        nn.QuantIdentity(act_quant=unsigned, bit_width=4),
        nn.QuantConv2d(2, 8, 3, padding=1, weight_bit_width=4),
        nn.QuantReLU(bit_width=4),
        nn.QuantConv2d(8, 8, 3, padding=1, groups=groups, weight_bit_width=4,
                       weight_scaling_per_output_channel=True),
        nn.QuantReLU(bit_width=4), nn.AvgPool2d(2),
        nn.QuantIdentity(act_quant=unsigned, bit_width=4),
        nn.Flatten(), nn.QuantLinear(8 * 3 * 3, 3, weight_bit_width=4), seed=seed)


@pytest.mark.parametrize("groups", [2, 8])
def test_quant_grouped_conv_trains_and_compiles_bit_exact(groups, tmp_path):
    rng = np.random.default_rng(3)
    X = rng.random((96, 2, 6, 6), dtype=F32)
    y = (X[:, 0].mean(axis=(1, 2)) > X[:, 1].mean(axis=(1, 2))).astype(np.int64)
    net = _qat_grouped(groups)
    qatfhe.optim.AdamW(net.parameters(), lr=3e-3)
    net.fit(X, y, epochs=2, batch_size=16, progress=False)
    net.eval()
    codes, scale = net[3].quant_weight()
    assert codes.shape == (8, 8 // groups, 3, 3)
    module = qatfhe.compile_qat_model(net, X)
    assert np.array_equal(module.forward(X, fhe="simulate"), np.asarray(net(X)))
    assert np.array_equal(module.forward(X, fhe="disable"), np.asarray(net(X)))
    path = tmp_path / "net.npz"
    net.save(path)
    again = qatfhe.load(path)
    assert again[3].groups == groups
    assert np.array_equal(np.asarray(again.eval()(X)), np.asarray(net(X)))


def test_groups_must_divide_the_channels():
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="groups"):
        nn.QuantConv2d(4, 4, 3, groups=0)


def test_conv_outputs_do_not_depend_on_the_batch():
    """The fixed summation order: a sample's outputs are the same bits whatever batch it
    comes in, for float convs and for fake-quant ones (float inputs and integer codes)."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((13, 3, 9, 8)).astype(F32)
    nets = [
        nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(16, 24, 3, stride=2, groups=8), seed=1),
        nn.Sequential(nn.QuantConv2d(3, 16, 3, padding=1, weight_bit_width=4),
                      nn.QuantReLU(bit_width=4), nn.QuantConv2d(16, 8, 3), seed=2),
    ]
    for net in nets:
        net.eval()
        whole = np.asarray(net(X))
        parts = np.concatenate([np.asarray(net(X[i:i + 5])) for i in range(0, 13, 5)])
        single = np.concatenate([np.asarray(net(X[i:i + 1])) for i in range(13)])
        assert np.array_equal(whole, parts) and np.array_equal(whole, single)


def test_conv_training_is_reproducible_bit_for_bit():
    rng = np.random.default_rng(5)
    X = rng.random((40, 1, 8, 8), dtype=F32)
    y = (X.mean(axis=(1, 2, 3)) > 0.5).astype(np.int64)

    def train():
        net = nn.Sequential(nn.QuantIdentity(act_quant=nn.Uint8ActPerTensorFloat, bit_width=3),
                            nn.QuantConv2d(1, 8, 3, padding=1, weight_bit_width=3),
                            nn.QuantReLU(bit_width=3), nn.AvgPool2d(2),
                            nn.QuantIdentity(act_quant=nn.Uint8ActPerTensorFloat, bit_width=3),
                            nn.QuantConv2d(8, 8, 3, groups=4, weight_bit_width=3),
                            nn.QuantReLU(bit_width=3), nn.Flatten(),
                            nn.QuantLinear(8 * 2 * 2, 2, weight_bit_width=3), seed=7)
        qatfhe.optim.AdamW(net.parameters(), lr=1e-2)
        net.fit(X, y, epochs=3, batch_size=8, progress=False)
        return net
    a, b = train(), train()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert np.array_equal(np.asarray(pa), np.asarray(pb)), name
