"""Compiling convolutional networks to integer circuits (qatfhe.compile) against an
independent NumPy reference of the integer pipeline and against the engine's eval-mode
fake-quant forward.

The reference is written here from REFERENCE.md sections 5 and 6 and the engine's exact
rules (notes: api.md): codes q = clamp(rint(x / s)) in float32; a convolution's
accumulator is the integer sum over the patch of q_x q_w, the zero padding holding the code
of 0.0 (Z_x; 0 for QAT); its value float32(acc - Z_x sum q_w) * float32(s_x s_w[o]) + b[o];
average pooling is the integer window sum S and float32(S - k Z) * (s / float32(k)); shape
ops re-index codes; the residual add sums two code tensors of one scale; a quantizer
reading codes requantizes s q.  Bits per REFERENCE.md section 6."""
import numpy as np
import pytest

from qatfhe import nn
from qatfhe.compile import (BitWidthError, QuantizedModule, compile_model, compile_qat_model,
                            _Builder, _Codes, _Entry, _Quantizer)

F32 = np.float32


# ------------------------------------------------------------------ the reference

def ref_bits(lo, hi):
    up = int(hi).bit_length() if hi >= 0 else 0
    return max(up, 1) if lo >= 0 else max((-int(lo) - 1).bit_length() + 1, up + 1)


def ref_codes(x, s, qmin, qmax, zero_point=0):
    lo, hi = qmin - zero_point, qmax - zero_point
    return np.clip(np.rint(np.asarray(x, F32) / F32(s)), lo, hi).astype(np.int64) + zero_point


def ref_window_sum(q, w, stride, padding, pad_code):
    """Integer sums over windows of the codes q (n, C, H, W) padded with pad_code: with
    w (OC, C, KH, KW), sum q w over each patch; with w = (KH, KW) a shape, the per-channel
    window sum.  Shift and add over kernel taps, in int64."""
    kh, kw = w.shape[2:] if isinstance(w, np.ndarray) else w
    (sh, sw), (ph, pw) = stride, padding
    qp = np.pad(np.asarray(q, np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)),
                constant_values=pad_code)
    oh, ow = (qp.shape[2] - kh) // sh + 1, (qp.shape[3] - kw) // sw + 1
    out = 0
    for ky in range(kh):
        for kx in range(kw):
            patch = qp[:, :, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw]
            out = out + (np.einsum("nchw,oc->nohw", patch, w[:, :, ky, kx].astype(np.int64))
                         if isinstance(w, np.ndarray) else patch)
    return out


def ref_value(t, scale, bias=None):
    """float32(t) * scale[c] (+ bias[c]) per channel c of t (n, C, H, W)."""
    y = np.asarray(t).astype(F32) * np.asarray(scale, F32).reshape(1, -1, 1, 1)
    return y + (F32(0) if bias is None else np.asarray(bias, F32).reshape(1, -1, 1, 1))


def relu(y):
    return np.where(y < 0, F32(0), y)


def act(layer):
    """(scale, qmin, qmax) of an activation quantizer layer."""
    return F32(layer.scale()), layer.act_quant.qmin, layer.act_quant.qmax


def conv_value(q_x, s_x, conv):
    """(accumulator, float value) of a QuantConv2d on codes of scale s_x (zero point 0)."""
    q_w, s_w = conv.quant_weight()
    acc = ref_window_sum(q_x, q_w, conv.stride, conv.padding, 0)
    scale = F32(s_x) * np.broadcast_to(np.asarray(s_w, F32), (len(q_w),))
    return acc, ref_value(acc, scale, conv.bias)


# ------------------------------------------------------------------ networks and data

def images(n, seed, shape=(1, 8, 8)):
    """Three classes of noisy images: a bright row, a bright column, a bright diagonal."""
    rng = np.random.RandomState(seed)
    y = rng.randint(0, 3, n)
    X = rng.uniform(0, 0.3, size=(n,) + shape).astype(F32)
    for i in range(n):
        k = rng.randint(1, shape[1] - 1)
        if y[i] == 0:
            X[i, :, k] += 0.8
        elif y[i] == 1:
            X[i, :, :, k] += 0.8
        else:
            X[i, :, np.arange(shape[1]), np.arange(shape[2])] += 0.8
    return X, y


def small_cnn(seed=0, per_channel=True):
    """Every op kind: conv, per-channel scales, pool, a residual add with a requantizing
    quantizer on each side, transpose, flatten, dense.  Python layers 0..9."""
    return nn.Sequential(
        nn.QuantIdentity(bit_width=4),
        nn.QuantConv2d(1, 4, 3, padding=1, weight_bit_width=3,
                       weight_scaling_per_output_channel=per_channel),
        nn.QuantReLU(bit_width=3),
        nn.AvgPool2d(2),
        nn.QuantIdentity(act_quant=nn.Uint8ActPerTensorFloat, bit_width=3),
        nn.Residual(nn.QuantConv2d(4, 4, 3, padding=1, weight_bit_width=3), nn.ReLU(),
                    quant=nn.QuantIdentity(bit_width=4)),
        nn.QuantReLU(bit_width=3),
        nn.Transpose(2, 3),
        nn.Flatten(),
        nn.QuantLinear(64, 3, weight_bit_width=3), seed=seed)


@pytest.fixture(scope="module")
def trained_cnn():
    X, y = images(600, 1)
    net = small_cnn(seed=2)
    net.fit(X, y, epochs=3, batch_size=16, seed=0, progress=False)
    net.eval()
    return net, X, y


def ref_qat_cnn(net, X):
    """The integer pipeline of small_cnn: ([(kind, integers)] per circuit node, logits)."""
    s0, lo0, hi0 = act(net[0])
    q0 = ref_codes(X, s0, lo0, hi0)
    acc1, y1 = conv_value(q0, s0, net[1])
    s2, lo2, hi2 = act(net[2])
    q2 = ref_codes(relu(y1), s2, lo2, hi2)
    sum3 = ref_window_sum(q2, (2, 2), (2, 2), (0, 0), 0)
    s4, lo4, hi4 = act(net[4])
    q4 = ref_codes(ref_value(sum3, [s2 / F32(4)] * 4), s4, lo4, hi4)
    res = net[5]
    s5, lo5, hi5 = act(res.quant)
    q5 = ref_codes(ref_value(q4, [s4] * 4), s5, lo5, hi5)            # requantisation
    acc6, y6 = conv_value(q5, s5, res.block[0])
    q7 = ref_codes(relu(y6), s5, lo5, hi5)                            # the add's quantizer
    add8 = q5 + q7
    s9, lo9, hi9 = act(net[6])
    q9 = ref_codes(relu(ref_value(add8, [s5] * 4)), s9, lo9, hi9)
    t10 = np.swapaxes(q9, 2, 3)
    flat = t10.reshape(len(X), -1)
    q_w, s_w = net[9].quant_weight()
    acc12 = flat @ q_w.T.astype(np.int64)
    logits = acc12.astype(F32) * (s9 * F32(s_w)) + np.asarray(net[9].bias, F32)
    nodes = [("input", q0), ("accumulator", acc1), ("lookup_output", q2), ("pool_sum", sum3),
             ("lookup_output", q4), ("lookup_output", q5), ("accumulator", acc6),
             ("lookup_output", q7), ("add", add8), ("lookup_output", q9), ("transpose", t10),
             ("reshape", flat), ("accumulator", acc12)]
    return nodes, logits


# ------------------------------------------------------------------ QAT: exactness

def test_synthetic_cnn_matches_reference_and_engine(trained_cnn):
    net, X_train, _ = trained_cnn
    module = compile_qat_model(net, X_train)
    X, _ = images(400, 7)
    X[:50] *= 3.0                                          # beyond the trained ranges
    X[50:60] -= 1.0
    nodes, logits = ref_qat_cnn(net, X)
    engine = net(X)
    assert np.array_equal(engine.view(np.int32), logits.view(np.int32))
    for fhe in ("simulate", "disable"):
        got = module.forward(X, fhe=fhe)
        assert np.array_equal(got.view(np.int32), logits.view(np.int32)), fhe
        np.testing.assert_array_equal(module.predict(X, fhe=fhe), net.predict(X))
    # flattened images are accepted too
    np.testing.assert_array_equal(module.forward(X.reshape(len(X), -1), "simulate"), logits)
    # every node: kind and range on these images, as the reference computes them
    report = module.bit_width_report(X)
    assert [r["kind"] for r in report] == [kind for kind, _ in nodes]
    for r, (kind, values) in zip(report, nodes):
        assert (r["min"], r["max"]) == (values.min(), values.max()), (r["name"], kind)
        assert r["bits"] == ref_bits(values.min(), values.max())
        assert r["static_min"] <= r["min"] and r["max"] <= r["static_max"]
    assert report[8]["name"] == "layer 5 (Residual add)" and report[8]["max"] > 7  # 2 x range
    # the circuit returns the last accumulators; the client decodes them
    q_y = module.quantized_forward(module.quantize_input(X))
    np.testing.assert_array_equal(q_y, nodes[-1][1])
    np.testing.assert_array_equal(module.dequantize_output(q_y), logits)
    assert module.accumulator_bit_width == max(r["bits"] for r in report[:1] + report
                                               if r["kind"] == "accumulator")


U = nn.Uint8ActPerTensorFloat
ARCHITECTURES = {
    "residual_first": lambda: nn.Sequential(
        nn.Residual(nn.QuantConv2d(1, 1, 3, padding=1, weight_bit_width=3),
                    quant=nn.QuantIdentity(bit_width=4)),
        nn.QuantReLU(bit_width=3), nn.Flatten(), nn.QuantLinear(64, 3), seed=1),
    "ends_in_residual": lambda: nn.Sequential(
        nn.QuantIdentity(bit_width=4), nn.QuantConv2d(1, 2, 3, padding=1),
        nn.QuantReLU(bit_width=4),
        nn.Residual(nn.QuantConv2d(2, 2, 1), nn.ReLU(), quant=nn.QuantIdentity(bit_width=5)),
        seed=2),
    "ends_in_pool": lambda: nn.Sequential(
        nn.QuantIdentity(bit_width=4),
        nn.QuantConv2d(1, 3, 3, stride=2, padding=1, weight_bit_width=4),
        nn.QuantReLU(bit_width=4), nn.AvgPool2d(4), seed=3),
    "padded_pool_relu_transpose": lambda: nn.Sequential(
        nn.QuantIdentity(bit_width=5), nn.QuantConv2d(1, 3, (3, 2), stride=(1, 2), padding=(2, 1)),
        nn.QuantIdentity(bit_width=4), nn.AvgPool2d(3, stride=2, padding=1), nn.ReLU(),
        nn.QuantIdentity(act_quant=U, bit_width=3), nn.Transpose(1, 3), nn.Flatten(),
        nn.QuantLinear(45, 4, weight_scaling_per_output_channel=True),
        nn.QuantIdentity(bit_width=6), seed=4),
    "reshape_then_conv": lambda: nn.Sequential(
        nn.QuantIdentity(bit_width=4), nn.Reshape(2, 4, 8), nn.QuantConv2d(2, 2, 3, padding=1),
        nn.QuantReLU(bit_width=3), nn.Transpose(1, 2), nn.QuantConv2d(4, 2, 2),
        nn.QuantReLU(bit_width=3), nn.Flatten(), nn.QuantLinear(14, 3), seed=5),
    "two_residuals": lambda: nn.Sequential(
        nn.QuantIdentity(bit_width=4), nn.QuantConv2d(1, 2, 3, padding=1),
        nn.QuantReLU(bit_width=3),
        nn.Residual(nn.QuantConv2d(2, 2, 3, padding=1), nn.QuantReLU(bit_width=3),
                    quant=nn.QuantIdentity(bit_width=4)),
        nn.Residual(quant=nn.QuantIdentity(bit_width=5)), nn.AvgPool2d(2),
        nn.QuantIdentity(bit_width=4), nn.Flatten(),
        nn.QuantLinear(32, 3, weight_scaling_per_output_channel=True), seed=6),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architectures_simulate_equals_engine(name):
    """Residual first or last, a network ending in a pool or an output quantizer, padded
    pooling, reshape before a convolution, blocks ending in a quantizer, an empty block."""
    rng = np.random.RandomState(0)
    X = rng.uniform(-0.5, 1.5, size=(300, 1, 8, 8)).astype(F32)
    net = ARCHITECTURES[name]()
    n_out = np.asarray(net(X[:1])).size
    net.fit(X, rng.randint(0, min(n_out, 3), 300), epochs=1, batch_size=16, seed=0,
            progress=False)
    net.eval()
    module = compile_qat_model(net, X)
    Xt = rng.uniform(-1, 2, size=(400, 1, 8, 8)).astype(F32)
    want = np.asarray(net(Xt)).reshape(400, -1)
    for fhe in ("simulate", "disable"):
        np.testing.assert_array_equal(module.forward(Xt, fhe), want)
    report = module.bit_width_report(Xt)
    assert all(r["static_min"] <= r["min"] and r["max"] <= r["static_max"] for r in report)
    # the float32 block engine (every value below 2^24 here) and the int64 one agree on
    # outputs, returned integers and node ranges, for one sample and for several
    assert module._circuit.float_exact
    flat = Xt.reshape(len(Xt), -1)
    for rows in (slice(0, 1), slice(0, 400)):
        blocks = module._circuit.run(flat[rows])
        samples = module._circuit.run(flat[rows], engine="int64")
        for a, b in zip(blocks, samples):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("per_channel", [False, True])
def test_per_tensor_and_per_channel_weight_scales(per_channel):
    X, y = images(300, 3)
    net = small_cnn(seed=5, per_channel=per_channel)
    net.fit(X, y, epochs=1, batch_size=16, seed=1, progress=False)
    net.eval()
    module = compile_qat_model(net, X)
    conv_op = module.ops[0]
    q_w, s_w = net[1].quant_weight()
    assert conv_op.kind == "conv" and np.ndim(s_w) == int(per_channel)
    np.testing.assert_array_equal(conv_op.weight, q_w)
    lookup = module.ops[1]
    np.testing.assert_array_equal(lookup.scale, F32(net[0].scale()) * np.broadcast_to(
        np.asarray(s_w, F32), (4,)))
    assert len(set(lookup.scale.tolist())) == (4 if per_channel else 1)
    Xt, _ = images(200, 4)
    np.testing.assert_array_equal(module.forward(Xt, "simulate"), net(Xt))


def test_static_bounds_first_conv_exact_and_all_cover_extreme_inputs(trained_cnn):
    net, X_train, _ = trained_cnn
    module = compile_qat_model(net, X_train)
    s0, lo, hi = act(net[0])
    q_w, _ = net[1].quant_weight()
    w = q_w.reshape(4, -1).astype(np.int64)
    # an 8x8 input has fully interior 3x3 patches: the bound is the sum of term extremes
    want = (np.minimum(w * lo, w * hi).sum(axis=1).min(), np.maximum(w * lo, w * hi).sum(1).max())
    report = module.bit_width_report()
    assert (report[1]["static_min"], report[1]["static_max"]) == want
    # extreme inputs (every code at qmin or qmax) stay within every static bound
    rng = np.random.RandomState(0)
    codes = np.where(rng.rand(2000, 64) < 0.5, lo, hi)
    _, _, reached = module._circuit.run_codes(codes)
    for j, r in enumerate(report):
        assert r["static_min"] <= reached[j, 0] and reached[j, 1] <= r["static_max"]
    assert module.worst_case_bit_width >= module.max_bit_width


def test_rounding_before_conv_and_pool_lookups(trained_cnn):
    net, X_train, _ = trained_cnn
    module = compile_qat_model(net, X_train, rounding_threshold_bits=4)
    kinds = [op.kind for op in module.ops]
    assert kinds.count("round") >= 2
    for k, op in enumerate(module.ops):
        if op.kind == "round":           # reads an accumulator or a pool sum, feeds a lookup
            assert module.ops[op.src - 1].kind in ("conv", "dense", "pool_sum")
            assert module.ops[k + 1].kind == "lookup" and module.ops[k + 1].lsbs == op.lsbs
    X, _ = images(300, 9)
    np.testing.assert_array_equal(module.forward(X, "simulate"), module.forward(X, "disable"))
    # lsbs = bits - 4 (Concrete-ML's rule); rounding half up may reach the next power of two
    report = module.bit_width_report()
    assert all(r["bits"] <= 5 for r in report if r["kind"] == "rounded")
    for r in report:
        if r["kind"] == "rounded":
            acc = report[r["node"] - 1]
            lsbs = module.ops[r["node"] - 1].lsbs
            assert lsbs == ref_bits(acc["min"], acc["max"]) - 4
            assert (r["min"], r["max"]) == ((acc["min"] + 2 ** (lsbs - 1)) >> lsbs,
                                            (acc["max"] + 2 ** (lsbs - 1)) >> lsbs)
    assert np.mean(module.predict(X) == net.predict(X)) > 0.7


def test_save_load_conv_module(tmp_path, trained_cnn):
    net, X_train, _ = trained_cnn
    module = compile_qat_model(net, X_train, rounding_threshold_bits=5)
    module.save(tmp_path / "cnn.npz")
    loaded = QuantizedModule.load(tmp_path / "cnn.npz")
    X, _ = images(100, 11)
    np.testing.assert_array_equal(loaded.forward(X, "simulate"), module.forward(X, "simulate"))
    assert loaded.bit_width_report() == module.bit_width_report()
    assert loaded.in_shape == (1, 8, 8)
    # a flipped weight code is caught by the checksum
    data = dict(np.load(tmp_path / "cnn.npz"))
    data["op0/weight"] = data["op0/weight"] + 1
    np.savez(tmp_path / "bad.npz", **data)
    with pytest.raises(ValueError, match="corrupt"):
        QuantizedModule.load(tmp_path / "bad.npz")


# ------------------------------------------------------------------ PTQ

def ref_asymmetric(values, n):
    rmin, rmax = float(np.min(values)), float(np.max(values))
    S = (rmax - rmin) / (2 ** n - 1)
    return S, int(round(-rmin / S)), 0, 2 ** n - 1


def ref_symmetric(w, n):
    w = np.asarray(w, np.float64)
    S = max(abs(w.min()), abs(w.max())) / (2 ** (n - 1) - 1)
    return np.rint(w / S).astype(np.int64), S


def test_ptq_cnn_matches_reference_with_zero_points():
    """compile_model of Conv2d -> AvgPool2d(padding) -> ReLU -> Flatten -> Linear: the
    convolution pads with the input's zero point, the pool with its input's."""
    net = nn.Sequential(nn.Conv2d(2, 3, 3, stride=(1, 2), padding=1),
                        nn.AvgPool2d(2, stride=1, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 7 * 4, 4), seed=3)
    rng = np.random.RandomState(0)
    Xc = rng.uniform(-0.3, 1.2, size=(300, 2, 6, 6)).astype(F32)
    X = rng.uniform(-0.5, 1.4, size=(200, 2, 6, 6)).astype(F32)
    n = 4
    module = compile_model(net, Xc, n_bits=n)

    def pipeline(Xs, quants=None):
        calib = quants is None
        quants = [] if calib else list(quants)
        take = (lambda v: quants.append(ref_asymmetric(v, n)) or quants[-1]) if calib else \
            (lambda v: quants.pop(0))
        Sx, Zx, lo, hi = take(Xc) if calib else quants.pop(0)
        q = ref_codes(Xs, Sx, lo, hi, Zx)
        qw, Sw = ref_symmetric(net[0].weight, n)
        acc = ref_window_sum(q, qw, (1, 2), (1, 1), Zx)        # padding holds Z_x
        t = acc - Zx * qw.reshape(3, -1).sum(axis=1).reshape(1, -1, 1, 1)
        y = ref_value(t, [F32(Sx) * F32(Sw)] * 3, net[0].bias)
        S1, Z1, lo1, hi1 = take(y)
        q1 = ref_codes(y, S1, lo1, hi1, Z1)
        pooled = ref_window_sum(q1, (2, 2), (1, 1), (1, 1), Z1) - 4 * Z1
        y2 = relu(ref_value(pooled, [F32(S1) / F32(4)] * 3))
        S2, Z2, lo2, hi2 = take(y2)
        q2 = ref_codes(y2, S2, lo2, hi2, Z2).reshape(len(Xs), -1)
        qw3, Sw3 = ref_symmetric(net[4].weight, n)
        acc3 = q2 @ qw3.T - Z2 * qw3.sum(axis=1)
        out = acc3.astype(F32) * (F32(S2) * F32(Sw3)) + np.asarray(net[4].bias, F32)
        return out, (Sx, Zx, lo, hi), (S1, Z1, lo1, hi1), (S2, Z2, lo2, hi2)

    _, *quants = pipeline(Xc)
    assert quants[0][1] > 0 and quants[1][1] > 0            # nonzero zero points are padded
    want = pipeline(X, quants)[0]
    for fhe in ("simulate", "disable"):
        np.testing.assert_array_equal(module.forward(X, fhe), want)
    assert [op.kind for op in module.ops] == ["conv", "lookup", "pool_sum", "lookup", "reshape",
                                              "dense", "decode"]
    assert module.ops[0].pad_code == quants[0][1] and module.ops[2].pad_code == quants[1][1]
    assert np.mean(module.predict(X) == net.predict(X)) > 0.6


def test_ptq_and_qat_refuse_each_others_networks(trained_cnn):
    net, X, _ = trained_cnn
    with pytest.raises(ValueError, match=r"layer 0 \(QuantIdentity\) is already quantized"):
        compile_model(net, X)
    res = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Residual(nn.Conv2d(2, 2, 1)), seed=0)
    with pytest.raises(ValueError, match=r"layer 1.quant \(QuantIdentity\).*compile_qat_model"):
        compile_model(res, X)


# ------------------------------------------------------------------ FHE rules

def qat(*layers):
    return nn.Sequential(nn.QuantIdentity(bit_width=3), *layers, seed=0)


@pytest.mark.parametrize("make,match", [
    (lambda: qat(nn.QuantConv2d(1, 2, 3), nn.Flatten(), nn.QuantLinear(72, 2)),
     r"layer 2 \(Flatten\) receives float values from layer 1 \(QuantConv2d\).*QuantIdentity"),
    (lambda: qat(nn.QuantConv2d(1, 2, 3), nn.AvgPool2d(2), nn.QuantIdentity(),
                 nn.Flatten(), nn.QuantLinear(18, 2)),
     r"layer 2 \(AvgPool2d\) receives float values from layer 1 \(QuantConv2d\)"),
    (lambda: qat(nn.QuantConv2d(1, 2, 3), nn.ReLU(), nn.Transpose(2, 3), nn.QuantIdentity(),
                 nn.Flatten(), nn.QuantLinear(72, 2)),
     r"layer 3 \(Transpose\) receives float values from layer 2 \(ReLU\).*QuantReLU"),
    (lambda: qat(nn.QuantConv2d(1, 2, 3), nn.QuantReLU(), nn.Reshape(2, 36), nn.ReLU(),
                 nn.QuantIdentity(), nn.Flatten(), nn.QuantLinear(72, 2)),
     r"layer 4 \(ReLU\) applies a float ReLU to quantized values"),
    (lambda: qat(nn.QuantConv2d(1, 2, 3), nn.QuantReLU(), nn.AvgPool2d(2),
                 nn.QuantConv2d(2, 2, 3), nn.QuantReLU(), nn.Flatten(), nn.QuantLinear(2, 2)),
     r"layer 4 \(QuantConv2d\) receives float values from layer 3 \(AvgPool2d\)"),
    (lambda: qat(nn.Conv2d(1, 2, 3), nn.QuantReLU(), nn.Flatten(), nn.QuantLinear(72, 2)),
     r"layer 1 \(Conv2d\) is a float layer.*QuantConv2d"),
    (lambda: qat(nn.Residual(nn.Conv2d(1, 1, 3, padding=1)), nn.Flatten(),
                 nn.QuantLinear(64, 2)),
     r"layer 1.block\[0\] \(Conv2d\) is a float layer.*QuantConv2d"),
    (lambda: qat(nn.Residual(nn.QuantConv2d(1, 1, 3, padding=1), nn.Flatten(),
                             nn.Reshape(1, 8, 8)), nn.Flatten(), nn.QuantLinear(64, 2)),
     r"layer 1.block\[1\] \(Flatten\) receives float values from layer 1.block\[0\]"),
    (lambda: qat(nn.QuantConv2d(1, 2, 3), nn.QuantReLU(), nn.Flatten(), nn.QuantLinear(72, 2),
                 nn.ReLU()),
     r"layer 5 \(ReLU\) leaves the network with float values after a ReLU"),
    (lambda: nn.Sequential(nn.QuantConv2d(1, 2, 3), nn.QuantReLU(), nn.Flatten(),
                           nn.QuantLinear(72, 2), seed=0),
     r"layer 0 \(QuantConv2d\) does not quantize the input.*QuantIdentity"),
])
def test_fhe_rules_name_the_layer(make, match):
    X, _ = images(20, 0)
    with pytest.raises(ValueError, match=match):
        compile_qat_model(make(), X)


def test_residual_add_needs_one_scale():
    """nn.Residual cannot build an add of two scales (one quantizer serves both operands);
    the compiler still checks, and says what an integer add needs."""
    codes = np.zeros((2, 1, 2, 2), np.int64)
    b = _Builder(_Quantizer(0.5, 0, -3, 3), codes, None)
    skip = _Codes(0, _Quantizer(0.5, 0, -3, 3), "input")
    other = _Codes(0, _Quantizer(0.25, 0, -3, 3), "input")
    entry = _Entry(3, "layer 1 (Residual add)", None, "add")
    with pytest.raises(ValueError, match=r"layer 1 \(Residual add\).*0.5 and 0.25.*one scale"):
        b.residual_add(entry, skip, other)
    same = b.residual_add(entry, skip, _Codes(0, _Quantizer(0.5, 0, -3, 3), "input"))
    assert (same.quant.scale, same.quant.qmin, same.quant.qmax) == (0.5, -6, 6)


def test_bad_inputs_to_compile_and_module(trained_cnn):
    net, X, _ = trained_cnn
    fresh = small_cnn(seed=1)                                # input shape not yet known
    with pytest.raises(ValueError, match=r"X_calib must have shape \(n_samples, channels, "
                                         r"height, width\)"):
        compile_qat_model(fresh, np.zeros((4, 64), F32))
    with pytest.raises(ValueError, match=r"layer 1 \(Conv2d\): expects 1 input channels"):
        compile_qat_model(fresh, np.zeros((4, 3, 8, 8), F32))
    with pytest.raises(ValueError, match="NaN"):
        compile_qat_model(net, np.full((4, 1, 8, 8), np.nan, F32))
    module = compile_qat_model(net, X)
    with pytest.raises(ValueError, match=r"samples of shape \(1, 8, 8\)"):
        module.forward(np.zeros((3, 1, 7, 7), F32), "simulate")
    with pytest.raises(ValueError, match="64 features"):
        module.forward(np.zeros((3, 60), F32))
    with pytest.raises(ValueError, match="codes in"):
        module.quantized_forward(np.full((2, 64), 99))


def test_bit_width_limit_names_the_conv_layer():
    net = nn.Sequential(nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=8),
                        nn.QuantConv2d(1, 2, 5, padding=2, weight_quant=nn.CommonWeightQuant,
                                       weight_bit_width=8),
                        nn.QuantReLU(bit_width=3), nn.AvgPool2d(4),
                        nn.QuantIdentity(act_quant=nn.Uint8ActPerTensorFloat, bit_width=3),
                        nn.Flatten(), nn.QuantLinear(8, 2, weight_bit_width=3), seed=0)
    X = np.random.RandomState(0).uniform(-1, 1, size=(50, 1, 8, 8)).astype(F32)
    with pytest.raises(BitWidthError, match=r"accumulator of layer 1 \(QuantConv2d\) needs 1[0-9] "
                                            r"bits.*table lookup.*10-bit"):
        compile_qat_model(net, X, max_bits=10)
    module = compile_qat_model(net, X, max_bits=10, rounding_threshold_bits=6)
    assert module.lookup_bit_width <= 10 < module.max_bit_width


# ------------------------------------------------------------------ the digits data set

def test_digits_cnn_circuit_equals_fake_quant_on_every_test_image():
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    X = (data.images / 16.0).astype(F32)[:, None]
    perm = np.random.RandomState(0).permutation(len(X))
    test, train = perm[:360], perm[360:]
    unsigned = nn.Uint8ActPerTensorFloat
    net = nn.Sequential(
        nn.QuantIdentity(act_quant=unsigned, bit_width=3),
        nn.QuantConv2d(1, 8, 3, padding=1, weight_bit_width=3,
                       weight_scaling_per_output_channel=True),
        nn.QuantReLU(bit_width=3), nn.AvgPool2d(2),
        nn.QuantIdentity(act_quant=unsigned, bit_width=3),
        nn.QuantConv2d(8, 16, 3, padding=1, weight_bit_width=3,
                       weight_scaling_per_output_channel=True),
        nn.QuantReLU(bit_width=3), nn.AvgPool2d(2),
        nn.QuantIdentity(act_quant=unsigned, bit_width=3),
        nn.Flatten(), nn.QuantLinear(64, 10, weight_bit_width=3), seed=0)
    from qatfhe import optim
    optim.AdamW(net.parameters(), lr=3e-3)
    net.fit(X[train], data.target[train], epochs=8, batch_size=16, seed=0, progress=False)
    net.eval()
    module = compile_qat_model(net, X[train])
    want = net(X[test])
    got = module.forward(X[test], fhe="simulate")
    assert np.array_equal(got.view(np.int32), want.view(np.int32))
    np.testing.assert_array_equal(module.predict(X[test], "simulate"), net.predict(X[test]))
    assert np.mean(net.predict(X[test]) == data.target[test]) > 0.8
    assert 6 <= module.accumulator_bit_width <= 12


def test_wide_pool_sums_stay_exact_in_the_engine():
    class Unsigned16(nn.Uint8ActPerTensorFloat):
        scaling_impl_type = "const"
        scaling_const = 1.0

    net = nn.Sequential(nn.QuantIdentity(act_quant=Unsigned16, bit_width=16), nn.AvgPool2d(17),
                        seed=0, input_shape=(1, 17, 17)).eval()
    X = np.random.RandomState(0).uniform(0.9, 1.0, size=(20, 1, 17, 17)).astype(F32)
    s = F32(net[0].scale())
    S = ref_codes(X, s, 0, 65535).reshape(20, -1).sum(axis=1)
    assert S.max() > 2 ** 24
    want = S.astype(F32) * (s / F32(289))
    module = compile_qat_model(net, X, max_bits=32)
    np.testing.assert_array_equal(module.forward(X, "simulate").ravel(), want)   # exact
    np.testing.assert_array_equal(np.asarray(net(X)).ravel(), want)             # the engine


def test_digits_example_runs_and_agrees(capsys):
    """examples/digits_cnn.py, one epoch: its exit status is 0 only when the circuit agrees
    with the fake-quant network on every test image."""
    pytest.importorskip("sklearn")
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "digits_cnn.py"
    spec = importlib.util.spec_from_file_location("digits_cnn", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "360/360 predictions, 360/360 logit vectors bit for bit" in out
    assert "max accumulator:" in out


def test_circuit_binding_refuses_bad_specs():
    from qatfhe import _core
    q = (0.5, 0, -3, 3)
    decode = {"kind": "decode", "name": "out", "src": 0, "scale": np.full(1, 0.5, F32)}
    ok = _core.Circuit(q, (1, 2, 2), [decode])
    out, out_int, ranges = ok.run_codes(np.array([[1, -3, 3, 0]]))
    np.testing.assert_array_equal(out, [[0.5, -1.5, 1.5, 0.0]])
    np.testing.assert_array_equal(out_int, [[1, -3, 3, 0]])
    assert ranges.tolist() == [[-3, 3]]
    cases = [
        ((q, (1, 2, 2), [dict(decode, kind="gemm")]), ValueError, "kind must be one of"),
        ((q, (1, 2, 2), [dict(decode, src=1)]), ValueError, "reads node 1"),
        ((q, (1, 2, 2), [dict(decode, scale=None)]), ValueError,
         r"per channel of its input \(1\), got 0"),
        ((q, (1, 2, 2), [dict(decode, offset=np.zeros(2, np.int64))]), ValueError,
         "one entry per channel"),
        ((q, (1, 2, 2), [dict(decode, scale=np.ones(2, F32))]), ValueError, "per channel"),
        ((q, (1, 2), [decode]), TypeError, r"in_shape must be a tuple \(C, H, W\)"),
        ((q, (1, 0, 2), [decode]), ValueError, "input shape"),
        (((0.5, 0, -3), (1, 2, 2), [decode]), TypeError, "input_quant"),
        ((q, (1, 2, 2), []), ValueError, "1 to 100000"),
        ((q, (1, 2, 2), ["decode"]), TypeError, "op 0 must be a dict"),
        ((q, (1, 2, 2), [{"kind": "dense", "src": 0, "weight": np.ones((2, 4), np.int32)},
                         dict(decode, src=1)]), ValueError, "per channel"),
        ((q, (1, 2, 2), [{"kind": "dense", "src": 0, "weight": np.ones((2, 4), F32)},
                         decode]), TypeError, "integer dtype"),
        ((q, (1, 2, 2), [{"kind": "conv", "src": 0, "weight": np.ones((2, 4), np.int32)},
                         decode]), ValueError, "4-dimensional|ndim|dimensions"),
        ((q, (1, 2, 2), [{"kind": "pool_sum", "src": 0, "kernel": (2, "x")}, decode]),
         TypeError, "kernel"),
        ((q, (1, 2, 2), [{"kind": "pool_sum", "src": 0, "kernel": (3, 3), "stride": (1, 1)},
                         decode]), ValueError, r"larger than the padded input \(2, 2\)"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            _core.Circuit(*args)
    with pytest.raises(ValueError, match="4 values per sample"):
        ok.run(np.zeros((2, 3), F32))
