"""The circuit's 8-bit integer DENSE / CONV (csrc/circuit_int8.c, csrc/gemm_int8.c) against
an int64 NumPy reference written here from circuit.h's formulas: acc[o, y, x] = sum over
the patch of code q_w, the padding holding pad_code; DENSE the same over the flattened
input.  Batch sizes cover one block, block tails and several blocks; shapes cover odd
sizes, strides, padding with a nonzero pad code, one or odd channel counts (the channel
pairs' tail) and depthwise groups; ops whose bounds do not fit 8/16 bits must stay on the
float32 path with the same integers."""
import numpy as np
import pytest

from qatfhe import _core

F32 = np.float32
BATCHES = (2, 9, 64, 71, 130)


def ref_conv(q, w, stride, padding, pad_code):
    """int64 (n, OC, OH, OW): q (n, C, H, W) codes, w (OC, C, KH, KW) weight codes."""
    kh, kw = w.shape[2:]
    (sh, sw), (ph, pw) = stride, padding
    qp = np.pad(q.astype(np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)),
                constant_values=pad_code)
    oh, ow = (qp.shape[2] - kh) // sh + 1, (qp.shape[3] - kw) // sw + 1
    out = np.zeros((q.shape[0], w.shape[0], oh, ow), np.int64)
    for ky in range(kh):                      # one tap at a time, in int64
        for kx in range(kw):
            patch = qp[:, :, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, ky, kx].astype(np.int64))
    return out


def circuit_for(first, in_shape, quant, out_channels):
    decode = {"kind": "decode", "name": "out", "src": 1,
              "scale": np.ones(out_channels, F32)}
    return _core.Circuit(quant, in_shape, [dict(first, name="op", src=0), decode])


def codes_for(rng, n, in_shape, quant):
    _, _, qmin, qmax = quant
    return rng.integers(qmin, qmax + 1, size=(n, int(np.prod(in_shape))), dtype=np.int64)


def check_runs(circuit, codes, want):
    for n in BATCHES:
        out, out_int, _ = circuit.run_codes(codes[:n], ranges=False)
        np.testing.assert_array_equal(out_int, want[:n])
        np.testing.assert_array_equal(out, want[:n].astype(F32))
    int64 = circuit.run_codes(codes, ranges=True, engine="int64")
    auto = circuit.run_codes(codes, ranges=True)
    for a, b in zip(auto, int64):
        np.testing.assert_array_equal(a, b)


CONV_CASES = [   # (C, OC, H, W, kernel, stride, padding, groups)
    (1, 16, 9, 11, (3, 3), (1, 1), (1, 1), 1),
    (3, 5, 8, 7, (3, 3), (1, 1), (1, 1), 1),
    (4, 7, 7, 9, (2, 3), (2, 1), (1, 2), 1),
    (5, 2, 6, 6, (1, 1), (1, 1), (0, 0), 1),
    (6, 6, 7, 5, (3, 3), (2, 2), (1, 1), 6),
    (8, 4, 5, 5, (3, 3), (1, 1), (0, 1), 2),
]


@pytest.mark.parametrize("c, oc, h, w, kernel, stride, padding, groups", CONV_CASES)
@pytest.mark.parametrize("quant", [(0.1, 0, 0, 7), (0.1, 2, -5, 9), (0.05, -100, -128, 127)])
def test_int8_conv_against_numpy(c, oc, h, w, kernel, stride, padding, groups, quant):
    rng = np.random.default_rng(c * 100 + oc)
    weight = rng.integers(-3, 4, size=(oc, c, *kernel)).astype(np.int32)
    per_in, per_out = c // groups, oc // groups
    for o in range(oc):                       # zero outside the output's group
        g = o // per_out
        weight[o, :g * per_in] = 0
        weight[o, (g + 1) * per_in:] = 0
    pad_code = quant[1]                       # the input's zero point
    conv = {"kind": "conv", "weight": weight, "stride": stride, "padding": padding,
            "pad_code": pad_code}
    circuit = circuit_for(conv, (c, h, w), quant, oc)
    fits = (max(quant[3], pad_code) - min(quant[2], pad_code)) * \
        np.abs(weight).reshape(oc, -1).sum(axis=1).max() < 2 ** 15
    assert circuit.int8_ops == ([0] if fits else [])
    codes = codes_for(rng, max(BATCHES), (c, h, w), quant)
    want = ref_conv(codes.reshape(-1, c, h, w), weight, stride, padding, pad_code)
    check_runs(circuit, codes, want.reshape(len(codes), -1))


@pytest.mark.parametrize("features, outputs", [(1, 3), (35, 10), (64, 4)])
def test_int8_dense_against_numpy(features, outputs):
    rng = np.random.default_rng(features)
    quant = (0.1, 0, 0, 15)
    weight = (rng.integers(1, 8, size=(outputs, features)) *
              rng.choice([-1, 1], size=(outputs, features))).astype(np.int32)   # no zeros
    circuit = circuit_for({"kind": "dense", "weight": weight}, (features, 1, 1), quant, outputs)
    assert circuit.int8_ops == [0]
    codes = codes_for(rng, max(BATCHES), (features, 1, 1), quant)
    check_runs(circuit, codes, codes @ weight.T.astype(np.int64))


@pytest.mark.parametrize("kept", [20, 60])
def test_pruned_dense_takes_the_float_path_when_sparse(kept):
    """A DENSE pruned to `kept` of 100 inputs per output: at 20 (most weight pairs hold a
    zero) it stays on the float32 path, which visits only the kept weights; at 60 it takes
    the 8-bit path; the integers are NumPy's either way."""
    rng = np.random.default_rng(kept)
    quant = (0.1, 0, 0, 7)
    weight = np.zeros((100, 100), np.int32)
    for o in range(100):
        cols = rng.choice(100, size=kept, replace=False)
        weight[o, cols] = rng.integers(1, 4, size=kept) * rng.choice([-1, 1], size=kept)
    circuit = circuit_for({"kind": "dense", "weight": weight}, (100, 1, 1), quant, 100)
    assert circuit.int8_ops == ([] if kept == 20 else [0])
    codes = codes_for(rng, max(BATCHES), (100, 1, 1), quant)
    check_runs(circuit, codes, codes @ weight.T.astype(np.int64))


@pytest.mark.parametrize("case", ["wide codes", "large weight", "long sum"])
def test_ops_that_do_not_fit_stay_float32_and_agree(case):
    rng = np.random.default_rng(3)
    quant = (0.1, 0, -200, 200) if case == "wide codes" else (0.1, 0, 0, 255)
    taps = 600 if case == "long sum" else 20
    weight = rng.integers(-1, 2, size=(3, taps)).astype(np.int32)
    weight[:, 0] = 1                          # (255 - 0) * sum |w| >= 2^15 with 600 taps
    if case == "long sum":
        weight[:, :200] = 1
    if case == "large weight":
        weight[1, 3] = 300
    circuit = circuit_for({"kind": "dense", "weight": weight}, (taps, 1, 1), quant, 3)
    assert circuit.float_exact and circuit.int8_ops == []
    codes = codes_for(rng, 80, (taps, 1, 1), quant)
    check_runs(circuit, codes, codes @ weight.T.astype(np.int64))


def test_compiled_cnn_runs_int8_and_matches_its_fake_quant_net():
    from qatfhe import nn as qnn, compile_qat_model
    rng = np.random.default_rng(0)
    X = rng.random((70, 3, 10, 9), dtype=F32)
    y = rng.integers(0, 4, 70)
    net = qnn.Sequential(
        qnn.QuantIdentity(act_quant=qnn.Uint8ActPerTensorFloat, bit_width=3),
        qnn.QuantConv2d(3, 8, 3, padding=1, weight_bit_width=3,
                        weight_scaling_per_output_channel=True),
        qnn.QuantReLU(bit_width=3), qnn.AvgPool2d(2),
        qnn.QuantIdentity(act_quant=qnn.Uint8ActPerTensorFloat, bit_width=3),
        qnn.QuantConv2d(8, 8, 3, padding=1, groups=8, weight_bit_width=3),
        qnn.QuantReLU(bit_width=3), qnn.Flatten(),
        qnn.QuantLinear(8 * 5 * 4, 4, weight_bit_width=3), seed=0)
    net.fit(X, y, epochs=1, batch_size=16, progress=False)
    net.eval()
    module = compile_qat_model(net, X)
    convs = [k for k, op in enumerate(module.ops) if op.kind in ("conv", "dense")]
    assert module._circuit.int8_ops == convs
    np.testing.assert_array_equal(module.forward(X, fhe="simulate"), net(X))


# ------------------------------------------------------------------ lookups by thresholds

def ref_lookup(t, lsbs, offset, scale, bias, relu, quant):
    """circuit.h's LOOKUP in float32: y = float32(t 2^l + offset[c]) scale[c] + bias[c],
    ReLU, then clamp(rint(y / s), qmin - Z, qmax - Z) + Z; t (n, C, H, W) int64."""
    s, z, qmin, qmax = quant
    shape = (1, -1, 1, 1)
    v = (t * 2 ** lsbs + offset.reshape(shape)).astype(F32)
    y = v * scale.reshape(shape) + bias.reshape(shape)
    if relu:
        y = np.where(y < 0, F32(0), y)
    q = np.clip(np.rint(y / F32(s)), qmin - z, qmax - z)
    return q.astype(np.int64) + z


@pytest.mark.parametrize("out_bits, relu, lsbs, requant_bits",
                         [(3, 1, 0, 3), (2, 0, 1, 3), (4, 1, 0, 3), (8, 1, 0, 3), (3, 1, 0, 8),
                          (2, 1, 0, 4)])
def test_conv_lookup_pool_chain_against_numpy(out_bits, relu, lsbs, requant_bits):
    """conv -> lookup -> pool_sum -> lookup -> dense: the 8-bit product fused with the
    lookup by thresholds, the pool and the requantizing lookup by thresholds on the
    window's sum (few output codes), or without the latter (an 8-bit requant: its formula),
    or the first lookup's formula (8 bits); every batch size gives the NumPy integers, and
    the node ranges those of the int64 engine (which turn the fusion off)."""
    rng = np.random.default_rng(out_bits + lsbs)
    c, oc, h, w = 3, 5, 8, 6
    quant_in = (0.1, 0, 0, 7)
    weight = rng.integers(-3, 4, size=(oc, c, 3, 3)).astype(np.int32)
    scale = rng.uniform(0.01, 0.2, oc).astype(F32)
    bias = rng.uniform(-1, 1, oc).astype(F32)
    offset = rng.integers(-20, 20, oc)
    q_mid = (F32(0.3), 0 if relu else 2 ** (out_bits - 1),
             0, 2 ** out_bits - 1)
    q_out = (F32(0.5), 0, 0, 2 ** requant_bits - 1)
    requant_scale = np.full(oc, {3: 0.25, 4: 1.0, 8: 0.02}[requant_bits], F32)
    dense_w = rng.integers(-3, 4, size=(4, oc * (h // 2) * (w // 2))).astype(np.int32)
    ops = [
        {"kind": "conv", "name": "conv", "src": 0, "weight": weight, "stride": (1, 1),
         "padding": (1, 1)},
        {"kind": "lookup", "name": "act", "src": 1, "lsbs": lsbs, "offset": offset,
         "scale": scale, "bias": bias, "relu": relu, "quant": q_mid},
        {"kind": "pool_sum", "name": "pool", "src": 2, "kernel": (2, 2), "stride": (2, 2)},
        {"kind": "lookup", "name": "requant", "src": 3, "scale": requant_scale,
         "quant": q_out},
        {"kind": "reshape", "name": "flat", "src": 4, "shape": (oc * (h // 2) * (w // 2), 1, 1)},
        {"kind": "dense", "name": "fc", "src": 5, "weight": dense_w},
        {"kind": "decode", "name": "out", "src": 6, "scale": np.ones(4, F32)},
    ]
    if lsbs:
        ops[0:1] = [ops[0], {"kind": "round", "name": "round", "src": 1, "lsbs": lsbs}]
        for k, op in enumerate(ops[2:], start=2):
            op["src"] = k
    circuit = _core.Circuit(quant_in, (c, h, w), ops)
    codes = codes_for(rng, max(BATCHES), (c, h, w), quant_in)
    acc = ref_conv(codes.reshape(-1, c, h, w), weight, (1, 1), (1, 1), 0)
    if lsbs:
        acc = np.floor((acc + 2 ** (lsbs - 1)) / 2 ** lsbs).astype(np.int64)
    act = ref_lookup(acc, lsbs, offset, scale, bias, relu, q_mid)
    pooled = act.reshape(-1, oc, h // 2, 2, w // 2, 2).sum(axis=(3, 5))
    requant = ref_lookup(pooled, 0, np.zeros(oc, np.int64), requant_scale,
                         np.zeros(oc, F32), 0, q_out)
    want = requant.reshape(len(codes), -1) @ dense_w.T.astype(np.int64)
    assert circuit.int8_ops == [0, len(ops) - 2]
    check_runs(circuit, codes, want)


@pytest.mark.parametrize("rows, bad", [((17, 30), np.nan), ((0,), -np.inf), ((39,), np.inf),
                                       ((), None)])
def test_run_names_the_first_non_finite_row(rows, bad):
    """The C core's finiteness scan (chunked) names the first row holding NaN or infinity,
    wherever it falls among the chunks; a finite batch runs."""
    in_shape, quant = (3, 8, 8), (0.1, 0, 0, 7)
    weight = np.ones((2, 3, 3, 3), np.int32)
    circuit = circuit_for({"kind": "conv", "weight": weight, "stride": (1, 1),
                           "padding": (1, 1)}, in_shape, quant, 2)
    X = np.random.default_rng(0).random((40, int(np.prod(in_shape))), dtype=F32)
    for r in rows:
        X[r, (7 * r) % X.shape[1]] = bad
    if not rows:
        out = circuit.run(X, ranges=False)[0]
        assert np.isfinite(out).all()
        return
    with pytest.raises(ValueError, match=rf"NaN or infinity \(first at row {rows[0]}\)"):
        circuit.run(X, ranges=False)
