"""The convolution-family layers of the engine (Conv2d, QuantConv2d, AvgPool2d, Flatten,
Reshape, Transpose, Residual) against an independent NumPy reference written here.

The reference works in float64 from the definitions, not from im2col: a convolution is a
sum of shifted slices of the zero-padded input, one per kernel tap, and its backward
scatters the same slices back; average pooling (count_include_pad) is the same with one
weight 1/(kh kw); quantizers follow REFERENCE.md section 2 (q = clamp(rint(x / s)), the
straight-through backward, dy/ds = rint(x/s) - x/s in range, the clamped code outside,
the abs-max weight scale's gradient reaching only the largest |w| of its group).

Each reference backward is checked against central finite differences of the reference
forward in float64; the engine (float32) is compared with the reference, checked with
finite differences of its own output where the op is smooth, and cross-checked with
PyTorch where installed.  The residual add is not smooth (it quantizes); there the
straight-through rule is tested, and the reference of the smooth function it
differentiates, x + block(x), is checked with finite differences."""
import numpy as np
import pytest

from qatfhe import nn

F32 = np.float32


# ------------------------------------------------------------------ the reference

def _taps(x_shape, kernel, stride, padding):
    """(OH, OW) and, per tap (ky, kx), the slices of the padded input it reads."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh = (x_shape[2] + 2 * ph - kh) // sh + 1
    ow = (x_shape[3] + 2 * pw - kw) // sw + 1
    taps = [(ky, kx, (slice(None), slice(None), slice(ky, ky + sh * (oh - 1) + 1, sh),
                      slice(kx, kx + sw * (ow - 1) + 1, sw)))
            for ky in range(kh) for kx in range(kw)]
    return oh, ow, taps


def _pad(x, padding):
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def _crop(xp, padding, shape):
    ph, pw = padding
    return xp[:, :, ph:ph + shape[2], pw:pw + shape[3]]


def ref_conv(x, w, b, stride=(1, 1), padding=(0, 0)):
    """y[n, o] = sum_{c, ky, kx} x_pad[n, c, y s + ky, x s + kx] w[o, c, ky, kx] + b[o]."""
    xp = _pad(np.asarray(x, np.float64), padding)
    oh, ow, taps = _taps(x.shape, w.shape[2:], stride, padding)
    y = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for ky, kx, sl in taps:
        y += np.einsum("nchw,oc->nohw", xp[sl], w[:, :, ky, kx])
    return y if b is None else y + np.asarray(b, np.float64)[None, :, None, None]


def ref_conv_backward(dy, x, w, stride=(1, 1), padding=(0, 0)):
    """(dx, dw, db) of ref_conv."""
    xp = _pad(np.asarray(x, np.float64), padding)
    _, _, taps = _taps(x.shape, w.shape[2:], stride, padding)
    dxp, dw = np.zeros_like(xp), np.zeros(w.shape)
    for ky, kx, sl in taps:
        dw[:, :, ky, kx] = np.einsum("nohw,nchw->oc", dy, xp[sl])
        dxp[sl] += np.einsum("nohw,oc->nchw", dy, w[:, :, ky, kx])
    return _crop(dxp, padding, x.shape), dw, dy.sum(axis=(0, 2, 3))


def ref_avgpool(x, kernel, stride, padding):
    """Window means, the zero padding counted (count_include_pad=True)."""
    xp = _pad(np.asarray(x, np.float64), padding)
    oh, ow, taps = _taps(x.shape, kernel, stride, padding)
    y = np.zeros(x.shape[:2] + (oh, ow))
    for _, _, sl in taps:
        y += xp[sl]
    return y / (kernel[0] * kernel[1])


def ref_avgpool_backward(dy, x_shape, kernel, stride, padding):
    dxp = np.zeros(x_shape[:2] + (x_shape[2] + 2 * padding[0], x_shape[3] + 2 * padding[1]))
    _, _, taps = _taps(x_shape, kernel, stride, padding)
    for _, _, sl in taps:
        dxp[sl] += dy / (kernel[0] * kernel[1])
    return _crop(dxp, padding, x_shape)


def ref_quantize(x, s, qmin, qmax):
    """Codes in float32 arithmetic: clamp(rint(x / s)), the division in float32."""
    return np.clip(np.rint(np.asarray(x, F32) / F32(s)), qmin, qmax)


def ref_quant_backward(dy, x, s, qmin, qmax):
    """(dx, dL/ds) of y = s clamp(rint(x / s)): straight through in range; in range
    dy/ds = rint(x/s) - x/s, clamped: the clamp value."""
    r = np.rint(np.asarray(x, F32) / F32(s)).astype(np.float64)
    inside = (r >= qmin) & (r <= qmax)
    ds = np.where(inside, r - np.asarray(x, np.float64) / float(s), np.clip(r, qmin, qmax))
    return dy * inside, float(np.sum(dy * ds))


def check_fd(f, params, grads, rng, eps=1e-6, rtol=1e-7):
    """Central differences of f along a random direction against <grads, direction>."""
    dirs = [rng.standard_normal(p.shape) for p in params]
    def at(t):
        return f(*[p + t * d for p, d in zip(params, dirs)])
    numeric = (at(eps) - at(-eps)) / (2 * eps)
    analytic = sum(float(np.sum(g * d)) for g, d in zip(grads, dirs))
    assert abs(numeric - analytic) <= rtol * max(1.0, abs(analytic)), (numeric, analytic)


# ------------------------------------------------------------------ engine helpers

def engine_grads(net, X, G):
    """(output float64, {tensor name: grad copy}) of one training forward and backward
    from d loss / d output = G."""
    net.train()
    out = np.asarray(net(X), np.float64)
    net.zero_grad()
    net.backward(G.astype(F32).reshape(out.shape))
    return out, {name: t["grad"].astype(np.float64).copy()
                 for name, t in net._tensors.items() if t["kind"] == "param"}


def engine_fd(net, X, G, name, rng, eps=1e-2, rtol=2e-3):
    """Central differences of the engine's sum(G * net(X)) along a random direction of
    tensor `name`, against the engine's gradient (float32 output, float64 sums)."""
    _, grads = engine_grads(net, X, G)
    data = net._tensors[name]["data"]
    base = data.copy()
    d = rng.standard_normal(data.shape).astype(F32)
    def loss(t):
        data[...] = base + F32(t) * d
        return float(np.sum(G * np.asarray(net(X), np.float64)))
    numeric = (loss(eps) - loss(-eps)) / (2 * eps)
    data[...] = base
    analytic = float(np.sum(grads[name] * d))
    assert abs(numeric - analytic) <= rtol * max(1.0, abs(analytic)), (name, numeric, analytic)


def weights(layer):
    return np.asarray(layer.weight, np.float64), (None if layer.bias is None
                                                  else np.asarray(layer.bias, np.float64))


CONV_CASES = [
    # in, out, (H, W), kernel, stride, padding, bias
    (2, 3, (6, 5), (3, 2), (2, 1), (1, 2), True),
    (1, 4, (7, 7), (3, 3), (1, 1), (0, 0), False),
    (3, 2, (5, 4), (5, 4), (1, 1), (2, 0), True),     # kernel as large as the padded input
    (2, 2, (4, 6), (1, 1), (3, 2), (1, 1), True),     # strides skip, padding rows stay zero
]


# ------------------------------------------------------------------ Conv2d

@pytest.mark.parametrize("c_in,c_out,hw,kernel,stride,padding,bias", CONV_CASES)
def test_reference_conv_backward_matches_finite_differences(c_in, c_out, hw, kernel, stride,
                                                            padding, bias):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, c_in) + hw)
    w = rng.standard_normal((c_out, c_in) + kernel)
    b = rng.standard_normal(c_out)
    G = rng.standard_normal(ref_conv(x, w, b, stride, padding).shape)
    dx, dw, db = ref_conv_backward(G, x, w, stride, padding)
    check_fd(lambda x, w, b: np.sum(G * ref_conv(x, w, b, stride, padding)), [x, w, b],
             [dx, dw, db], rng)


@pytest.mark.parametrize("c_in,c_out,hw,kernel,stride,padding,bias", CONV_CASES)
def test_conv2d_forward_and_backward(c_in, c_out, hw, kernel, stride, padding, bias):
    rng = np.random.default_rng(1)
    net = nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=bias),
                        seed=3)
    X = rng.standard_normal((3, c_in) + hw).astype(F32)
    w, b = weights(net[0])
    want = ref_conv(X, w, b, stride, padding)
    G = rng.standard_normal(want.shape)
    out, grads = engine_grads(net, X, G)
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    _, dw, db = ref_conv_backward(G, X, w, stride, padding)
    np.testing.assert_allclose(grads["0.weight"], dw, rtol=1e-4, atol=1e-4)
    if bias:
        np.testing.assert_allclose(grads["0.bias"], db, rtol=1e-4, atol=1e-4)
    else:
        assert net[0].bias is None and "0.bias" not in grads
    engine_fd(net, X, G, "0.weight", rng)


def test_conv2d_input_gradient_through_a_second_conv():
    """The input gradient of a convolution reaches the parameters of the one before it."""
    rng = np.random.default_rng(2)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, (2, 3), stride=(2, 1),
                                                                  padding=(0, 1)), seed=5)
    X = rng.standard_normal((2, 2, 6, 5)).astype(F32)
    (w1, b1), (w2, b2) = weights(net[0]), weights(net[1])
    h = ref_conv(X, w1, b1, (1, 1), (1, 1))
    y = ref_conv(h, w2, b2, (2, 1), (0, 1))
    G = rng.standard_normal(y.shape)
    out, grads = engine_grads(net, X, G)
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-5)
    dh, dw2, db2 = ref_conv_backward(G, h, w2, (2, 1), (0, 1))
    _, dw1, db1 = ref_conv_backward(dh, X, w1, (1, 1), (1, 1))
    for name, want in (("0.weight", dw1), ("0.bias", db1), ("1.weight", dw2), ("1.bias", db2)):
        np.testing.assert_allclose(grads[name], want, rtol=1e-4, atol=1e-4, err_msg=name)
    engine_fd(net, X, G, "0.weight", rng)


# ------------------------------------------------------------------ AvgPool2d

POOL_CASES = [((2, 2), (2, 2), (0, 0)), ((3, 2), (1, 2), (1, 1)), ((3, 3), (2, 2), (1, 1)),
              ((2, 3), None, (1, 0))]


@pytest.mark.parametrize("kernel,stride,padding", POOL_CASES)
def test_avgpool_forward_backward_and_finite_differences(kernel, stride, padding):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6))
    st = kernel if stride is None else stride
    G = rng.standard_normal(ref_avgpool(x, kernel, st, padding).shape)
    dx = ref_avgpool_backward(G, x.shape, kernel, st, padding)
    check_fd(lambda x: np.sum(G * ref_avgpool(x, kernel, st, padding)), [x], [dx], rng)
    # the engine: a convolution in front carries the pool's input gradient to its weights
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.AvgPool2d(kernel, stride=stride, padding=padding),
                        seed=1)
    X = rng.standard_normal((2, 2, 7, 6)).astype(F32)
    w, b = weights(net[0])
    h = ref_conv(X, w, b)
    want = ref_avgpool(h, kernel, st, padding)
    G = rng.standard_normal(want.shape)
    out, grads = engine_grads(net, X, G)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    _, dw, db = ref_conv_backward(ref_avgpool_backward(G, h.shape, kernel, st, padding), X, w)
    np.testing.assert_allclose(grads["0.weight"], dw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["0.bias"], db, rtol=1e-4, atol=1e-4)
    engine_fd(net, X, G, "0.weight", rng)


def test_avgpool_counts_padding_as_zeros():
    net = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), input_shape=(1, 2, 2), seed=0)
    y = net(np.ones((1, 1, 2, 2), F32))
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), F32(4) / F32(9)))


# ------------------------------------------------------------------ shape ops

@pytest.mark.parametrize("dims", [(1, 2), (2, 3), (1, 3), (3, 1), (2, 2)])
def test_transpose_is_numpy_swapaxes_forward_and_backward(dims):
    rng = np.random.default_rng(4)
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.Transpose(*dims), nn.Flatten(),
                        nn.Linear(3 * 4 * 5, 2), seed=2)
    X = rng.standard_normal((2, 2, 4, 5)).astype(F32)
    w, b = weights(net[0])
    wl, bl = weights(net[3])
    h = ref_conv(X, w, b)
    t = np.swapaxes(h, *dims)
    y = t.reshape(2, -1) @ wl.T + bl
    G = rng.standard_normal(y.shape)
    out, grads = engine_grads(net, X, G)
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-5)
    dh = np.swapaxes((G @ wl).reshape(t.shape), *dims)          # the adjoint of the swap
    _, dw, db = ref_conv_backward(dh, X, w)
    np.testing.assert_allclose(grads["0.weight"], dw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["3.weight"], G.T @ t.reshape(2, -1), rtol=1e-4, atol=1e-4)
    # forward alone is a pure re-indexing: exactly NumPy's
    net2 = nn.Sequential(nn.Transpose(*dims), input_shape=(2, 4, 5), seed=0)
    np.testing.assert_array_equal(net2(X), np.swapaxes(X, *dims))
    engine_fd(net, X, G, "0.weight", rng)


@pytest.mark.parametrize("shape", [(20, 3), (5, 4, 3), (60,), (3, 20)])
def test_reshape_and_flatten(shape):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((2, 3, 4, 5)).astype(F32)
    net = nn.Sequential(nn.Reshape(*shape), input_shape=(3, 4, 5), seed=0)
    got = net(X)
    assert got.reshape(2, -1).tolist() == X.reshape(2, -1).tolist()   # same order, C order
    flat = nn.Sequential(nn.Flatten(), input_shape=(3, 4, 5), seed=0)
    np.testing.assert_array_equal(flat(X), X.reshape(2, -1))
    # backward: a Reshape between a conv and a Linear passes gradients in the same order
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Reshape(*shape), nn.Flatten(),
                        nn.Linear(60, 2), seed=1)
    w, b = weights(net[0])
    wl, bl = weights(net[3])
    h = ref_conv(X, w, b)
    G = rng.standard_normal((2, 2))
    out, grads = engine_grads(net, X, G)
    np.testing.assert_allclose(out, h.reshape(2, -1) @ wl.T + bl, rtol=1e-5, atol=1e-5)
    _, dw, _ = ref_conv_backward((G @ wl).reshape(h.shape), X, w)
    np.testing.assert_allclose(grads["0.weight"], dw, rtol=1e-4, atol=1e-4)
    engine_fd(net, X, G, "0.weight", rng)


# ------------------------------------------------------------------ PyTorch

def test_conv_pool_transpose_against_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    net = nn.Sequential(nn.Conv2d(2, 4, (3, 2), stride=(1, 2), padding=(1, 1)), nn.ReLU(),
                        nn.AvgPool2d((2, 2), stride=(2, 1), padding=(1, 1)), nn.Transpose(2, 3),
                        nn.Conv2d(4, 3, 2, bias=False), nn.Flatten(), nn.Linear(3 * 4 * 2, 5),
                        seed=7)
    X = rng.standard_normal((4, 2, 5, 6)).astype(F32)
    conv1 = torch.nn.Conv2d(2, 4, (3, 2), stride=(1, 2), padding=(1, 1))
    conv2 = torch.nn.Conv2d(4, 3, 2, bias=False)
    lin = torch.nn.Linear(24, 5)
    with torch.no_grad():
        conv1.weight.copy_(torch.from_numpy(np.array(net[0].weight)))
        conv1.bias.copy_(torch.from_numpy(np.array(net[0].bias)))
        conv2.weight.copy_(torch.from_numpy(np.array(net[4].weight)))
        lin.weight.copy_(torch.from_numpy(np.array(net[6].weight)))
        lin.bias.copy_(torch.from_numpy(np.array(net[6].bias)))
    pool = torch.nn.AvgPool2d((2, 2), stride=(2, 1), padding=(1, 1), count_include_pad=True)
    x = torch.from_numpy(X).requires_grad_(True)
    h = pool(torch.relu(conv1(x))).transpose(2, 3)
    y = lin(torch.flatten(conv2(h), 1))
    G = rng.standard_normal(tuple(y.shape)).astype(F32)
    (y * torch.from_numpy(G)).sum().backward()
    out, grads = engine_grads(net, X, G)
    np.testing.assert_allclose(out, y.detach().numpy(), rtol=1e-5, atol=1e-5)
    for name, p in (("0.weight", conv1.weight), ("0.bias", conv1.bias),
                    ("4.weight", conv2.weight), ("6.weight", lin.weight), ("6.bias", lin.bias)):
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=name)


# ------------------------------------------------------------------ QuantConv2d

def _quant_conv_net(per_channel, weight_quant=nn.Int8WeightPerTensorFloat, seed=0):
    return nn.Sequential(
        nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=5),
        nn.QuantConv2d(2, 3, 3, stride=(2, 1), padding=1, weight_quant=weight_quant,
                       weight_bit_width=4, weight_scaling_per_output_channel=per_channel),
        seed=seed)


def ref_weight_scales(w, int_threshold, per_channel):
    """Abs-max scales in float32: max|w| (per output channel or of the whole tensor) /
    int_threshold."""
    w = np.asarray(w, F32)
    m = np.abs(w).reshape(len(w), -1).max(axis=1) if per_channel else np.full(
        len(w), np.abs(w).max(), F32)
    return m.astype(F32) / F32(int_threshold)


@pytest.mark.parametrize("per_channel", [False, True])
def test_quant_conv_scales_codes_and_exact_forward(per_channel):
    rng = np.random.default_rng(7)
    net = _quant_conv_net(per_channel, seed=2)
    conv = net[1]
    conv.weight = conv.weight * np.array([1.0, 0.25, 3.0], F32)[:, None, None, None]
    net.eval()
    s_w = ref_weight_scales(conv.weight, 7, per_channel)
    assert len(set(s_w.tolist())) == (3 if per_channel else 1)
    np.testing.assert_array_equal(net._core.weight_scale(conv.index), s_w)
    q_w = np.clip(np.rint(np.asarray(conv.weight, F32) / s_w[:, None, None, None]), -7, 7)
    codes, scale = conv.quant_weight()
    np.testing.assert_array_equal(codes, q_w)
    np.testing.assert_array_equal(np.broadcast_to(scale, (3,)), s_w)
    assert np.ndim(scale) == (1 if per_channel else 0)
    # forward from codes: float32(acc) * (s_x * s_w[o]) + b, bit for bit
    X = rng.uniform(-1.3, 1.3, size=(5, 2, 6, 5)).astype(F32)
    s_x = F32(1) / F32(15)
    q_x = ref_quantize(X, s_x, -15, 15)
    acc = ref_conv(q_x, q_w, None, (2, 1), (1, 1))
    assert np.array_equal(acc, np.rint(acc))                    # exact integers
    epi = (s_x * s_w).astype(F32)[None, :, None, None]
    want = acc.astype(F32) * epi + np.asarray(conv.bias, F32)[None, :, None, None]
    got = net(X)
    assert np.array_equal(got.view(np.int32), want.astype(F32).view(np.int32))


@pytest.mark.parametrize("per_channel", [False, True])
def test_quant_conv_straight_through_and_absmax_scale_gradient(per_channel):
    """dL/dw = dL/dw_fq (straight through, no clamp mask) plus, at the largest |w| of each
    scale group, sign(w) / int_threshold * sum dL/dw_fq (q - w / s)."""
    rng = np.random.default_rng(8)
    net = _quant_conv_net(per_channel, seed=4)
    conv = net[1]
    X = rng.uniform(-1, 1, size=(3, 2, 6, 5)).astype(F32)
    w = np.asarray(conv.weight, F32)
    s_w = ref_weight_scales(w, 7, per_channel)
    q_w = np.clip(np.rint(w / s_w[:, None, None, None]), -7, 7)
    w_fq = (s_w[:, None, None, None] * q_w).astype(np.float64)
    x_fq = F32(1) / F32(15) * ref_quantize(X, F32(1) / F32(15), -15, 15)
    y = ref_conv(x_fq, w_fq, np.asarray(conv.bias, np.float64), (2, 1), (1, 1))
    G = rng.standard_normal(y.shape)
    out, grads = engine_grads(net, X, G)
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-6)
    _, dw_fq, db = ref_conv_backward(G, x_fq, w_fq, (2, 1), (1, 1))
    want = dw_fq.copy()
    groups = [np.s_[o] for o in range(3)] if per_channel else [np.s_[:]]
    for g in groups:
        wg, dg = w[g].astype(np.float64), dw_fq[g]
        sg = float(s_w[g].ravel()[0]) if not per_channel else float(s_w[g])
        k = np.unravel_index(np.argmax(np.abs(wg)), wg.shape)
        dscale = np.sum(dg * (np.rint(wg / sg) - wg / sg))
        want[g][k] += np.sign(wg[k]) * dscale / 7
    np.testing.assert_allclose(grads["1.weight"], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["1.bias"], db, rtol=1e-4, atol=1e-5)
    # without the scale term the gradient would differ: the test sees it
    assert np.abs(want - dw_fq).max() > 1e-3


def test_quant_conv_constant_scale_is_pure_straight_through():
    rng = np.random.default_rng(9)
    net = _quant_conv_net(False, weight_quant=nn.CommonWeightQuant, seed=6)
    X = rng.uniform(-1, 1, size=(3, 2, 6, 5)).astype(F32)
    w = np.asarray(net[1].weight, F32)
    w_fq = F32(1) / F32(7) * np.clip(np.rint(w / (F32(1) / F32(7))), -7, 7)
    x_fq = F32(1) / F32(15) * ref_quantize(X, F32(1) / F32(15), -15, 15)
    y = ref_conv(x_fq, w_fq, np.asarray(net[1].bias, np.float64), (2, 1), (1, 1))
    G = rng.standard_normal(y.shape)
    _, grads = engine_grads(net, X, G)
    _, dw_fq, _ = ref_conv_backward(G, x_fq, w_fq, (2, 1), (1, 1))
    np.testing.assert_allclose(grads["1.weight"], dw_fq, rtol=1e-4, atol=1e-5)


def test_quant_conv_input_gradient_reaches_the_conv_before():
    """QuantConv2d B after QuantConv2d A (no quantizer between): B works in float with its
    fake-quant weights and passes dL/dx = conv^T(dy, w_fq) to A."""
    rng = np.random.default_rng(10)
    net = nn.Sequential(nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=6),
                        nn.QuantConv2d(1, 2, 3, padding=1, weight_quant=nn.CommonWeightQuant,
                                       weight_bit_width=4),
                        nn.QuantConv2d(2, 2, 2, weight_quant=nn.CommonWeightQuant,
                                       weight_bit_width=4), seed=8)
    X = rng.uniform(-1, 1, size=(2, 1, 5, 5)).astype(F32)
    fq = [F32(1) / F32(7) * np.clip(np.rint(np.asarray(net[i].weight, F32) / (F32(1) / F32(7))),
                                    -7, 7) for i in (1, 2)]
    x_fq = F32(1) / F32(31) * ref_quantize(X, F32(1) / F32(31), -31, 31)
    h = ref_conv(x_fq, fq[0], np.asarray(net[1].bias, np.float64), (1, 1), (1, 1))
    y = ref_conv(h, fq[1], np.asarray(net[2].bias, np.float64))
    G = rng.standard_normal(y.shape)
    out, grads = engine_grads(net, X, G)
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-6)
    dh, dw2, _ = ref_conv_backward(G, h, fq[1])
    _, dw1, db1 = ref_conv_backward(dh, x_fq, fq[0], (1, 1), (1, 1))
    np.testing.assert_allclose(grads["2.weight"], dw2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["1.weight"], dw1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["1.bias"], db1, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ Residual

def _dyadic(rng, shape, step, lo, hi):
    """Random multiples of step in [lo, hi]: exact float32 sums in small networks."""
    return (rng.integers(round(lo / step), round(hi / step) + 1, size=shape) * step).astype(F32)


def _residual_net(rng, quant, head=True):
    """probe Conv2d(1, 2, 1) -> Residual(Conv2d(2, 2, 3, padding=1), ReLU, quant) [-> Flatten
    -> Linear(32, 3)], with dyadic weights so that every value before a quantizer is exact
    in float32 and the reference quantizes the very same numbers.  C layers: 0 probe,
    1 quant, 2 block conv, 3 ReLU, 4 add, 5 Flatten, 6 Linear."""
    tail = [nn.Flatten(), nn.Linear(32, 3)] if head else []
    net = nn.Sequential(nn.Conv2d(1, 2, 1),
                        nn.Residual(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), quant=quant),
                        *tail, seed=9)
    probe, block = net[0], net[1].block[0]
    probe.weight = np.array([0.5, -1.0], F32).reshape(2, 1, 1, 1)
    probe.bias = np.array([0.125, 0.0], F32)
    block.weight = _dyadic(rng, (2, 2, 3, 3), 0.25, -1, 1)
    block.bias = _dyadic(rng, 2, 0.125, -0.5, 0.5)
    return net


def ref_residual_net(net, X, s, qmin, qmax, quantize=True):
    """Forward and a backward closure of _residual_net in float64; quantize=False gives the
    smooth function x + block(x) the straight-through rule differentiates."""
    (wp, bp), (wb, bb), (wl, bl) = weights(net[0]), weights(net[1].block[0]), weights(net[3])
    if quantize:
        q = lambda v: float(s) * ref_quantize(v, s, qmin, qmax)     # noqa: E731
    else:
        q = lambda v: np.asarray(v, np.float64)                      # noqa: E731
    x1 = ref_conv(X, wp, bp)
    xq = q(x1)
    pre = ref_conv(xq, wb, bb, (1, 1), (1, 1))
    blk = np.maximum(pre, 0)
    bq = q(blk)
    add = xq + bq
    y = add.reshape(len(X), -1) @ wl.T + bl

    def backward(G, skip=True, through_block=True):
        g = (G @ wl).reshape(add.shape)
        d_blk, ds_add = ref_quant_backward(g, blk, s, qmin, qmax) if quantize else (g, 0.0)
        d_xq = (g if skip else 0) + (ref_conv_backward(d_blk * (pre > 0), xq, wb, (1, 1),
                                                       (1, 1))[0] if through_block else 0)
        d_x1, ds_begin = ref_quant_backward(d_xq, x1, s, qmin, qmax) if quantize else (d_xq, 0.0)
        _, dwp, dbp = ref_conv_backward(d_x1, X, wp)
        _, dwb, dbb = ref_conv_backward(d_blk * (pre > 0), xq, wb, (1, 1), (1, 1))
        return {"0.weight": dwp, "0.bias": dbp, "2.weight": dwb, "2.bias": dbb,
                "6.weight": G.T @ add.reshape(len(X), -1), "6.bias": G.sum(axis=0),
                "dscale": ds_add + ds_begin, "dscale_parts": (ds_begin, ds_add)}
    return y, add, backward


def test_residual_add_sums_codes_on_one_scale():
    rng = np.random.default_rng(11)
    quant = nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=4, scaling_const=0.875)
    net = _residual_net(rng, quant, head=False)
    assert net[1].quant is quant and net[1].index == 4
    s = F32(0.875) / F32(7)
    assert s == 0.125 and quant.scale() == s
    X = _dyadic(rng, (4, 1, 4, 4), 0.125, -2, 2)
    _, add, _ = ref_residual_net(_residual_net(np.random.default_rng(11), nn.QuantIdentity(
        act_quant=nn.CommonActQuant, bit_width=4, scaling_const=0.875)), X, s, -7, 7)
    y = np.asarray(net.eval()(X))
    codes = y / s
    assert np.array_equal(codes, np.rint(codes))                  # s * integer codes
    assert np.abs(codes).max() > 7                                # the doubled range is used
    assert codes.min() >= -14 and codes.max() <= 14
    np.testing.assert_array_equal(y, add.astype(F32))


def test_residual_skip_operand_is_the_quantized_input():
    """With a block that outputs 0, y = Q(x) + Q(0) = Q(x), clamping included."""
    quant = nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3)
    net = nn.Sequential(nn.Residual(nn.Conv2d(1, 1, 1), quant=quant), seed=0,
                        input_shape=(1, 3, 3))
    net[0].block[0].weight = np.zeros((1, 1, 1, 1), F32)
    net[0].block[0].bias = np.zeros(1, F32)
    X = np.linspace(-2, 2, 9, dtype=F32).reshape(1, 1, 3, 3)
    s = F32(1) / F32(3)
    np.testing.assert_array_equal(net.eval()(X), s * ref_quantize(X, s, -3, 3))


def test_residual_gradient_reaches_both_operands():
    rng = np.random.default_rng(12)
    quant = nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=4, scaling_const=0.875)
    net = _residual_net(rng, quant)
    X = _dyadic(rng, (4, 1, 4, 4), 0.125, -2, 2)
    s = F32(0.125)
    y, _, backward = ref_residual_net(net, X, s, -7, 7)
    G = rng.standard_normal(y.shape)
    out, grads = engine_grads(net, X, G)
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-6)
    want = backward(G)
    for name in ("0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"):
        np.testing.assert_allclose(grads[name], want[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    # the probe's gradient holds both operands' parts: either one alone differs
    for partial in (backward(G, skip=False), backward(G, through_block=False)):
        assert np.abs(partial["0.weight"] - want["0.weight"]).max() > 1e-2


def test_residual_reference_is_the_derivative_of_x_plus_block():
    """Without quantization the reference backward is the gradient of the smooth
    network with x + block(x), checked by finite differences in float64."""
    rng = np.random.default_rng(13)
    net = _residual_net(rng, nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=4))
    X = rng.standard_normal((3, 1, 4, 4))
    y, _, backward = ref_residual_net(net, X, 1.0, 0, 0, quantize=False)
    G = rng.standard_normal(y.shape)
    grads = backward(G)
    names = ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]
    base = [np.asarray(net._tensors[n]["data"], np.float64) for n in names]
    check_fd(lambda *v: np.sum(G * ref_residual_net_params(X, v)), base,
             [grads[n] for n in names], rng)


def ref_residual_net_params(X, values):
    """The smooth residual network's output from float64 parameter values."""
    wp, bp, wb, bb, wl, bl = values
    x1 = ref_conv(X, wp, bp)
    add = x1 + np.maximum(ref_conv(x1, wb, bb, (1, 1), (1, 1)), 0)
    return add.reshape(len(X), -1) @ wl.T + bl


def test_residual_learned_scale_gradient_sums_both_quantizations():
    """One learned quantizer serves both operands: the threshold's gradient is the sum of
    dL/ds of the input's quantization and of the block output's, over int_threshold."""
    rng = np.random.default_rng(14)
    quant = nn.QuantIdentity(bit_width=4, collect_stats_steps=1)    # signed, [-8, 7], /8
    net = _residual_net(rng, quant)
    X = _dyadic(rng, (4, 1, 4, 4), 0.125, -2, 2)
    net.train()
    net(X)
    net(X)                                  # the statistics phase ends: T is a parameter
    quant.threshold[...] = 1.0              # s = 1/8, a power of two: exact reference
    assert quant.scale() == F32(0.125)
    s = F32(0.125)
    y, _, backward = ref_residual_net(net, X, s, -8, 7)
    G = rng.standard_normal(y.shape)
    out, grads = engine_grads(net, X, G)
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-6)
    want = backward(G)
    np.testing.assert_allclose(grads["1.act_quant.threshold"][0], want["dscale"] / 8,
                               rtol=1e-4, atol=1e-5)
    assert min(abs(part) for part in want["dscale_parts"]) / 8 > 1e-2   # both parts count
    np.testing.assert_allclose(grads["0.weight"], want["0.weight"], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ bad input

def conv_net(*extra, **kw):
    return nn.Sequential(nn.Conv2d(1, 2, 3), *extra, seed=0, **kw)


@pytest.mark.parametrize("make,X,error,match", [
    (lambda: conv_net(), np.zeros((2, 3, 8, 8)), ValueError,
     r"layer 0 \(Conv2d\): expects 1 input channels but receives 3"),
    (lambda: conv_net(), np.zeros((2, 1, 8)), ValueError, r"4-dimensional \(n_samples, channels"),
    (lambda: conv_net(), np.zeros((2, 1, 2, 8)), ValueError,
     r"layer 0 \(Conv2d\): kernel \(3, 3\) is larger than the padded input \(2, 8\)"),
    (lambda: conv_net(nn.AvgPool2d(4)), np.zeros((2, 1, 5, 5)), ValueError,
     r"layer 1 \(AvgPool2d\): kernel \(4, 4\) is larger than the padded input \(3, 3\)"),
    (lambda: conv_net(nn.Linear(18, 2)), np.zeros((2, 1, 5, 5)), ValueError,
     r"layer 1 \(Linear\): receives samples of shape \(2, 3, 3\); add nn.Flatten\(\)"),
    (lambda: conv_net(nn.Flatten(), nn.Linear(10, 2)), np.zeros((2, 1, 5, 5)), ValueError,
     r"layer 2 \(Linear\): expects 10 input features but receives 18"),
    (lambda: conv_net(nn.Reshape(4, 4)), np.zeros((2, 1, 5, 5)), ValueError,
     r"layer 1 \(Reshape\): cannot reshape 18 values"),
    (lambda: conv_net(nn.Residual(nn.Conv2d(2, 3, 1))), np.zeros((2, 1, 5, 5)), ValueError,
     r"both operands of the add need one shape"),
    (lambda: conv_net(), np.full((2, 1, 5, 5), np.nan), ValueError, "NaN"),
    (lambda: conv_net(), np.zeros((0, 1, 5, 5)), ValueError, "empty"),
    (lambda: conv_net(), np.zeros((2, 1, 5, 5), complex), TypeError, "real numbers"),
])
def test_bad_images(make, X, error, match):
    net = make()
    with pytest.raises(error, match=match):
        net(X)


@pytest.mark.parametrize("make,error,match", [
    (lambda: nn.Conv2d(1, 2, 3, stride=0), ValueError, r"stride must be an integer >= 1, got 0"),
    (lambda: nn.Conv2d(1, 2, 3, stride=(1, 0)), ValueError, "stride"),
    (lambda: nn.Conv2d(1, 2, 3, padding=-1), ValueError, r"padding must be an integer >= 0"),
    (lambda: nn.Conv2d(1, 2, 0), ValueError, "kernel_size"),
    (lambda: nn.Conv2d(1, 2, 2.5), TypeError, "kernel_size"),
    (lambda: nn.Conv2d(1, 2, (2, 2, 2)), ValueError, "kernel_size"),
    (lambda: nn.Conv2d(0, 2, 2), ValueError, "in_channels"),
    (lambda: nn.QuantConv2d(1, 2, 3, stride=0), ValueError, "stride"),
    (lambda: nn.AvgPool2d(2, stride=0), ValueError, "stride"),
    (lambda: nn.AvgPool2d(2, padding=-1), ValueError, "padding"),
    (lambda: nn.Transpose(0, 1), ValueError, "dim0"),
    (lambda: nn.Transpose(1, 4), ValueError, r"1\.\.3"),
    (lambda: nn.Reshape(2, 0), ValueError, "shape"),
    (lambda: nn.Residual(nn.Conv2d(2, 2, 1), quant=nn.QuantReLU()), TypeError,
     "QuantIdentity shared by both operands"),
    (lambda: nn.Residual(nn.Residual(nn.Conv2d(2, 2, 1))), TypeError, "block layer 0"),
])
def test_bad_layer_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_constructor_errors_name_the_layer():
    with pytest.raises(ValueError, match="Conv2d"):
        nn.Conv2d(1, 2, 3, stride=0)


def test_shape_errors_after_a_residual_use_the_python_index():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Residual(nn.Conv2d(2, 2, 1)), nn.Linear(32, 2),
                        seed=0)
    with pytest.raises(ValueError, match=r"layer 2 \(Linear\)"):
        net(np.zeros((2, 1, 4, 4), F32))
