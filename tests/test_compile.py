"""Compilation to an integer circuit (qatfhe.compile) against an independent NumPy
implementation of REFERENCE.md sections 5 and 6, and against the engine's eval-mode
fake-quant forward for quantization-aware networks.

The reference below is written from the REFERENCE.md formulas, not from qatfhe code:
  R5 uniform quantizer  q = clip(rint(x/S + Z)), symmetric S = max|r| / (2^(n-1) - 1),
     asymmetric S = (rmax - rmin) / (2^n - 1), Z = round(-rmin / S);
  R5 Gemm  y = S_x S_w [sum q_x q_w - Z_w sum q_x - Z_x sum q_w + K Z_x Z_w] + b, whose
     encrypted part is sum q_x q_w - Z_w sum q_x;
  R6 bits  unsigned ceil(log2(hi + 1)) (>= 1), signed max(ceil(log2|lo|) + 1,
     ceil(log2(hi + 1)) + 1).
Float arithmetic follows the project's documented rule (compile.py): scales in float32,
the bracket converted to float32, times float32(S_x) * float32(S_w), plus the float32 bias;
codes clip(rint(x / S), qmin - Z, qmax - Z) + Z in float32."""
import math
import warnings

import numpy as np
import pytest

from qatfhe import _core, nn
from qatfhe.compile import BitWidthError, QuantizedModule, compile_model, compile_qat_model

F32 = np.float32


# ------------------------------------------------------------------ the reference (R5, R6)

def ref_bits(lo, hi):
    """R6, with exact integer logarithms: ceil(log2(v)) = (v - 1).bit_length() for v >= 1."""
    lo, hi = int(lo), int(hi)
    up = hi.bit_length() if hi >= 0 else 0            # ceil(log2(hi + 1))
    if lo >= 0:
        return max(up, 1)
    return max((-lo - 1).bit_length() + 1, up + 1)     # ceil(log2|lo|) + 1


def ref_asymmetric(values, n):
    """R5 asymmetric unsigned quantizer: (S, Z, qmin, qmax)."""
    rmin, rmax = float(np.min(values)), float(np.max(values))
    S = (rmax - rmin) / (2 ** n - 1)
    return S, int(round(-rmin / S)), 0, 2 ** n - 1


def ref_symmetric(w, n):
    """R5 symmetric quantizer: (codes, S)."""
    w = np.asarray(w, np.float64)
    S = max(abs(w.min()), abs(w.max())) / (2 ** (n - 1) - 1)
    return np.rint(w / S).astype(np.int64), S


def ref_codes(x, S, Z, qmin, qmax):
    return (np.clip(np.rint(np.asarray(x, F32) / F32(S)), qmin - Z, qmax - Z)
            .astype(np.int64) + Z)


def ref_gemm(qx, Sx, Zx, qw, Sw, b):
    """R5 Gemm with Z_w = 0: returns (y float32, encrypted part sum q_x q_w)."""
    K = qx.shape[1]
    enc = qx @ qw.T                                           # sum q_x q_w - 0 * sum q_x
    bracket = enc - Zx * qw.sum(axis=1) + K * Zx * 0
    y = bracket.astype(F32) * (F32(Sx) * F32(Sw))
    return (y + (b if b is not None else F32(0))).astype(F32), enc


def ref_ptq(net, X_calib, X, n):
    """PTQ of Linear/ReLU nets, R5: returns (outputs on X, [(min, max)] of every integer
    value on X_calib: input codes, then per layer accumulator and next codes)."""
    layers, groups = list(net), []
    for layer in layers:
        if isinstance(layer, nn.Linear):
            groups.append([layer, False])
        else:
            groups[-1][1] = True
    Sx, Zx, lo, hi = ref_asymmetric(X_calib, n)
    qc, qe = ref_codes(X_calib, Sx, Zx, lo, hi), ref_codes(X, Sx, Zx, lo, hi)
    ranges = [(qc.min(), qc.max())]
    for k, (layer, relu) in enumerate(groups):
        qw, Sw = ref_symmetric(layer.weight, n)
        b = None if layer.bias is None else np.asarray(layer.bias, F32)
        yc, enc = ref_gemm(qc, Sx, Zx, qw, Sw, b)
        ye, _ = ref_gemm(qe, Sx, Zx, qw, Sw, b)
        ranges.append((enc.min(), enc.max()))
        if relu:
            yc, ye = np.maximum(yc, 0), np.maximum(ye, 0)
        if k == len(groups) - 1:
            return ye, ranges
        Sx, Zx, lo, hi = ref_asymmetric(yc, n)
        qc, qe = ref_codes(yc, Sx, Zx, lo, hi), ref_codes(ye, Sx, Zx, lo, hi)
        ranges.append((qc.min(), qc.max()))


# ------------------------------------------------------------------ networks

def float_net(hidden=10, seed=0):
    return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 2), seed=seed)


def qat_net(hidden=20, bits=3, seed=0):
    """The tutorial's QAT net (REFERENCE.md section 2), QuantLinear weights U(-1, 1)."""
    net = nn.Sequential(
        nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=bits, return_quant_tensor=True),
        nn.QuantLinear(2, hidden, bias=True, weight_quant=nn.CommonWeightQuant,
                       weight_bit_width=bits, bias_quant=None),
        nn.QuantReLU(bit_width=bits, return_quant_tensor=True),
        nn.QuantLinear(hidden, hidden, bias=True, weight_quant=nn.CommonWeightQuant,
                       weight_bit_width=bits, bias_quant=None),
        nn.QuantReLU(bit_width=bits, return_quant_tensor=True),
        nn.QuantLinear(hidden, 2, bias=True, weight_quant=nn.CommonWeightQuant,
                       weight_bit_width=bits, bias_quant=None), seed=seed)
    for i in (1, 3, 5):
        nn.init.uniform_(net[i].weight, -1.0, 1.0)
    return net


def checker(n, seed):
    X = np.random.RandomState(seed).rand(n, 2).astype(F32)
    y = (np.rint(3 * X[:, 0]).astype(int) % 2) ^ (np.rint(3 * X[:, 1]).astype(int) % 2)
    return X, y


@pytest.fixture(scope="module")
def trained_qat():
    """A small QAT net trained briefly on checkerboard points, in eval mode."""
    X, y = checker(3000, 1)
    net = qat_net(hidden=20, seed=4)
    net.fit(X, y, epochs=2, batch_size=8, seed=0, progress=False)
    net.eval()
    return net, X


# ------------------------------------------------------------------ bits formula (R6)

@pytest.mark.parametrize("k", [1, 2, 3, 7, 15, 16, 31, 40, 62])
def test_bits_edge_cases(k):
    p = 2 ** k
    for v in (0, 1, -1, p - 1, p, -p, -p + 1, -p - 1, p + 1):
        assert _core.bits_for_range(v, v) == ref_bits(v, v), v
    assert _core.bits_for_range(0, p - 1) == k
    assert _core.bits_for_range(0, p) == k + 1
    assert _core.bits_for_range(-p, 0) == k + 1
    assert _core.bits_for_range(-p, p - 1) == k + 1


def test_bits_small_values_and_random_ranges():
    assert [_core.bits_for_range(v, v) for v in (0, 1, -1)] == [1, 1, 1]
    rng = np.random.RandomState(0)
    for lo, hi in np.sort(rng.randint(-10 ** 6, 10 ** 6, size=(2000, 2)), axis=1):
        assert _core.bits_for_range(int(lo), int(hi)) == ref_bits(int(lo), int(hi))
        # same answer from floating log2, the formula as written
        if lo < 0:
            want = max(math.ceil(math.log2(-lo)) + 1,
                       (math.ceil(math.log2(hi + 1)) + 1) if hi >= 0 else 0)
            assert _core.bits_for_range(int(lo), int(hi)) == want
    with pytest.raises(ValueError):
        _core.bits_for_range(2, 1)


# ------------------------------------------------------------------ PTQ vs the reference

@pytest.mark.parametrize("n_bits,hidden,seed", [(3, 10, 0), (4, 30, 1), (6, 16, 2)])
def test_ptq_matches_reference(n_bits, hidden, seed):
    net = float_net(hidden, seed)
    X_calib = np.random.RandomState(seed).rand(1500, 2).astype(F32)
    X = np.random.RandomState(seed + 10).uniform(-0.2, 1.2, size=(3000, 2)).astype(F32)
    module = compile_model(net, X_calib, n_bits=n_bits)
    want, ranges = ref_ptq(net, X_calib, X, n_bits)
    for fhe in ("simulate", "disable"):
        got = module.forward(X, fhe=fhe)
        assert got.dtype == F32 and got.shape == (3000, 2)
        np.testing.assert_array_equal(got, want)
    report = module.bit_width_report()
    assert [(r["min"], r["max"]) for r in report] == ranges
    assert [r["kind"] for r in report] == ["input", "accumulator", "lookup_output",
                                           "accumulator", "lookup_output", "accumulator"]
    for r in report:
        assert r["bits"] == ref_bits(r["min"], r["max"])
    assert module.max_bit_width == max(ref_bits(lo, hi) for lo, hi in ranges)
    # the float model is approximated: outputs are close to the float network's
    assert np.mean(module.predict(X) == net.predict(X)) > 0.5


def test_ptq_quantizer_parameters_follow_r5():
    net = float_net(8, 3)
    X = np.random.RandomState(3).uniform(-1, 2, size=(500, 2)).astype(F32)
    module = compile_model(net, X, n_bits=4)
    S, Z, lo, hi = ref_asymmetric(X, 4)
    q = module.input_quant
    assert (q.scale, q.zero_point, q.qmin, q.qmax) == (F32(S), Z, lo, hi)
    codes, Sw = ref_symmetric(net[0].weight, 4)
    dense = [op for op in module.ops if op.kind == "dense"]
    np.testing.assert_array_equal(dense[0].weight, codes)
    assert dense[0].weight_scale == F32(Sw)
    # the lookup after it multiplies by float32(S_x) * float32(S_w)
    lookup = module.ops[1]
    assert lookup.kind == "lookup" and lookup.src == 1
    np.testing.assert_array_equal(lookup.scale, np.full(8, F32(S) * F32(Sw)))
    # Concrete-ML's form clip(rint(x/S + Z)) differs from the circuit's only on exact ties
    concrete = np.clip(np.rint(X.astype(np.float64) / S + Z), lo, hi)
    assert np.mean(concrete == module.quantize_input(X)) > 0.999


def test_ptq_simulate_equals_disable_with_rounding_and_final_relu():
    net = nn.Sequential(nn.Linear(2, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                        nn.Linear(24, 3), nn.ReLU(), seed=5)
    X = np.random.RandomState(5).rand(2000, 2).astype(F32)
    module = compile_model(net, X, n_bits={"op_inputs": 5, "op_weights": 5, "model_inputs": 7,
                                           "model_outputs": 6}, rounding_threshold_bits=5)
    Xt = np.random.RandomState(6).uniform(-0.5, 1.5, size=(5000, 2)).astype(F32)
    np.testing.assert_array_equal(module.forward(Xt, "simulate"), module.forward(Xt, "disable"))
    np.testing.assert_array_equal(module.predict(Xt, "simulate"), module.predict(Xt, "disable"))
    report = module.bit_width_report()
    rounded = [r for r in report if r["kind"] == "rounded"]
    # every lookup reading an accumulator is rounded, the final ReLU's too
    assert len(rounded) == 3 and all(r["bits"] <= 5 for r in rounded)
    accs = [r for r in report if r["kind"] == "accumulator"]
    assert [r["checked"] for r in accs] == [False, False, False]
    assert report[-1]["kind"] == "lookup_output" and report[-1]["max"] <= 63   # model_outputs 6


def test_rounding_rule_is_round_half_up():
    """lsbs = bits(acc on the calibration set) - rounding_threshold_bits; the lookup reads
    floor((acc + 2^(l-1)) / 2^l) (Concrete's round_bit_pattern)."""
    net = float_net(12, 7)
    X = np.random.RandomState(7).rand(800, 2).astype(F32)
    plain = compile_model(net, X, n_bits=6)
    module = compile_model(net, X, n_bits=6, rounding_threshold_bits=4)
    acc0 = plain.bit_width_report()[1]
    lsbs = ref_bits(acc0["min"], acc0["max"]) - 4
    assert [op.kind for op in module.ops[:3]] == ["dense", "round", "lookup"]
    assert module.ops[1].lsbs == module.ops[2].lsbs == lsbs > 0
    rounded = module.bit_width_report()[2]
    assert (rounded["min"], rounded["max"]) == (
        math.floor((acc0["min"] + 2 ** (lsbs - 1)) / 2 ** lsbs),
        math.floor((acc0["max"] + 2 ** (lsbs - 1)) / 2 ** lsbs))


# ------------------------------------------------------------------ QAT vs the engine

def test_qat_simulate_equals_engine_bit_for_bit(trained_qat):
    net, X_calib = trained_qat
    module = compile_qat_model(net, X_calib)
    X = np.random.RandomState(2).uniform(-0.3, 1.3, size=(5000, 2)).astype(F32)
    want = net(X)
    for fhe in ("simulate", "disable"):
        got = module.forward(X, fhe=fhe)
        assert np.array_equal(got.view(np.int32), want.view(np.int32)), fhe
    # the input quantizer is CommonActQuant at 3 bits: round(3 x), the cell index (R2)
    np.testing.assert_array_equal(module.quantize_input(X),
                                  np.clip(np.rint(X / F32(1 / 3)), -3, 3))


def test_qat_predictions_on_100k_points(trained_qat):
    net, X_calib = trained_qat
    module = compile_qat_model(net, X_calib)
    X = np.random.RandomState(9).rand(100_000, 2).astype(F32)
    np.testing.assert_array_equal(module.predict(X, fhe="simulate"), net.predict(X))


def test_qat_untrained_statistics_and_signed_relu_quantizers():
    """Other quantizers: learned-threshold Int8 input, ReLU + QuantIdentity, an output
    quantizer on the last layer, Int8WeightPerTensorFloat weights."""
    net = nn.Sequential(nn.QuantIdentity(bit_width=5),
                        nn.QuantLinear(2, 16, weight_bit_width=4), nn.ReLU(),
                        nn.QuantIdentity(bit_width=4),
                        nn.QuantLinear(16, 3, weight_bit_width=4),
                        nn.QuantIdentity(bit_width=6), seed=11)
    X, y = checker(600, 3)
    y = y + (X[:, 0] > 0.8)
    net.fit(X, y, epochs=1, batch_size=4, seed=1, progress=False)
    net.eval()
    module = compile_qat_model(net, X)
    Xt = np.random.RandomState(4).uniform(-1, 2, size=(4000, 2)).astype(F32)
    # equal as numbers; a quantized zero output may be -0.0 in the engine (s * rint(-0.1))
    # and +0.0 in the circuit, whose codes are integers
    np.testing.assert_array_equal(module.forward(Xt, "simulate"), net(Xt))
    kinds = [op.kind for op in module.ops]
    assert kinds == ["dense", "lookup", "dense", "lookup", "decode"]
    assert module.ops[1].relu and not module.ops[3].relu
    # the output quantizer's codes are returned and decoded as s q
    assert module.ops[3].quant.scale == F32(net[5].scale())


def test_integer_api_composes_to_forward(trained_qat):
    net, X_calib = trained_qat
    for module in (compile_qat_model(net, X_calib),
                   compile_model(float_net(10, 1), X_calib, n_bits=4)):
        X = np.random.RandomState(3).rand(700, 2).astype(F32)
        q_x = module.quantize_input(X)
        assert q_x.dtype == np.int64
        for fhe in ("simulate", "disable"):
            q_y = module.quantized_forward(q_x, fhe=fhe)
            assert q_y.dtype == np.int64
            np.testing.assert_array_equal(module.dequantize_output(q_y), module.forward(X, fhe))
        with pytest.raises(ValueError, match="codes in"):
            module.quantized_forward(q_x + 1000)


# ------------------------------------------------------------------ worst case and limits

def test_worst_case_bounds_measured_and_is_exact_for_first_layer():
    for module in (compile_model(float_net(10, 2), np.random.RandomState(0).rand(300, 2), 3),
                   compile_model(float_net(10, 3), np.random.RandomState(1).rand(300, 2), 5,
                                 rounding_threshold_bits=4)):
        q = module.input_quant
        # every input code pair: the reachable values of the whole circuit
        grid = np.stack(np.meshgrid(np.arange(q.qmin, q.qmax + 1),
                                    np.arange(q.qmin, q.qmax + 1)), -1).reshape(-1, 2)
        _, _, reached = module._circuit.run_codes(grid)
        for j, r in enumerate(module.bit_width_report()):
            # calibration inputs are among all inputs, which the static bounds cover
            assert r["static_min"] <= reached[j, 0] <= r["min"]
            assert r["max"] <= reached[j, 1] <= r["static_max"]
            assert r["static_bits"] >= r["bits"]
        # first accumulator: sum of per-term extremes, reached by some input codes
        w = module.ops[0].weight.astype(np.int64)
        lo = np.where(w < 0, w * q.qmax, w * q.qmin).sum(axis=1).min()
        hi = np.where(w < 0, w * q.qmin, w * q.qmax).sum(axis=1).max()
        first = module.bit_width_report()[1]
        assert (first["static_min"], first["static_max"]) == (lo, hi) == tuple(reached[1])
        assert module.worst_case_bit_width >= module.max_bit_width


def test_16_bit_check_names_the_node():
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2), seed=0)
    X = np.random.RandomState(0).rand(200, 2).astype(F32)
    wide = {"model_inputs": 16, "op_weights": 8, "op_inputs": 2, "model_outputs": 2}
    with pytest.raises(BitWidthError, match=r"accumulator of layer 0 \(Linear\) needs 2[0-9] bits"
                                            r".*table lookup.*16-bit"):
        compile_model(net, X, n_bits=wide)
    with pytest.warns(RuntimeWarning, match=r"layer 0 \(Linear\)"):
        module = compile_model(net, X, n_bits=wide, on_overflow="warn")
    assert module.max_bit_width > 16
    assert compile_model(net, X, n_bits=wide, max_bits=32).max_bit_width > 16
    # rounding the accumulator before its lookup relaxes the limit
    rounded = compile_model(net, X, n_bits=wide, rounding_threshold_bits=8)
    assert rounded.lookup_bit_width <= 16 < rounded.max_bit_width
    with pytest.raises(BitWidthError, match="input of input needs 16 bits"):
        rounded.check_bit_widths(max_bits=6)


def test_16_bit_check_on_a_qat_net():
    net = nn.Sequential(nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=16),
                        nn.QuantLinear(2, 64, weight_quant=nn.CommonWeightQuant,
                                       weight_bit_width=16),
                        nn.QuantReLU(bit_width=16),
                        nn.QuantLinear(64, 2, weight_quant=nn.CommonWeightQuant,
                                       weight_bit_width=16), seed=0)
    X = np.random.RandomState(0).rand(100, 2).astype(F32)
    with pytest.raises(BitWidthError, match=r"layer 1 \(QuantLinear\)"):
        compile_qat_model(net, X)


# ------------------------------------------------------------------ engines and threads

def pruned_tutorial_net(seed=0):
    """The tutorial's pruned QAT net (100 hidden, 3 bits, 20 weights kept per neuron),
    trained briefly, in eval mode."""
    X, y = checker(2000, 8)
    net = qat_net(hidden=100, seed=seed)
    net.prune(20)
    net.fit(X, y, epochs=1, batch_size=32, seed=0, progress=False)
    net.eval()
    return net, X


def test_simulate_identical_for_any_engine_thread_count_and_batch_size():
    """The C core's two engines (float32 blocks of samples, skipping pruned weights; int64
    one sample at a time), 1 to 3 threads and any split of the batch give the eval-mode
    engine's outputs bit for bit, and the NumPy twin's returned integers and node ranges."""
    net, X_calib = pruned_tutorial_net()
    module = compile_qat_model(net, X_calib)
    assert module._circuit.float_exact          # every value below 2^24: float32 blocks
    assert np.count_nonzero(module.ops[2].weight) <= 100 * 20
    rng = np.random.RandomState(5)
    # zeros first: ranges taken from the first thread's share alone would be too narrow
    X = np.concatenate([np.zeros((2500, 2), F32),
                        rng.uniform(-0.3, 1.3, size=(2500, 2)).astype(F32)])
    want = net(X)
    want_out, want_int, want_ranges = module._numpy_run(module.quantize_input(X))
    np.testing.assert_array_equal(want_out.view(np.int32), want.view(np.int32))
    for engine in ("auto", "int64"):
        for n_threads in (1, 2, 3):
            out, q_y, ranges = module._circuit.run(X, engine=engine, n_threads=n_threads)
            assert np.array_equal(out.view(np.int32), want.view(np.int32)), (engine, n_threads)
            np.testing.assert_array_equal(q_y, want_int)
            np.testing.assert_array_equal(ranges, np.asarray(want_ranges))
    for size in (1, 7, 64, 65, 1000):
        pieces = [module.forward(X[i:i + size], "simulate") for i in range(0, 1300, size)]
        assert np.array_equal(np.concatenate(pieces)[:1300].view(np.int32),
                              want[:1300].view(np.int32)), size
    assert np.array_equal(module.forward(X, "simulate", n_threads=2).view(np.int32),
                          want.view(np.int32))
    np.testing.assert_array_equal(module.predict(X, "simulate", n_threads=3), net.predict(X))
    np.testing.assert_array_equal(
        module.quantized_forward(module.quantize_input(X), n_threads=2), want_int)


def test_concurrent_runs_from_python_threads(trained_qat):
    """Runs release the GIL and may overlap: each borrows the circuit's kept workspace
    or, while another run holds it, allocates its own."""
    import threading
    net, X_calib = trained_qat
    module = compile_qat_model(net, X_calib)
    X = np.random.RandomState(6).uniform(-0.3, 1.3, size=(20000, 2)).astype(F32)
    want = net(X)
    results = [None] * 4

    def work(i):
        results[i] = [module.forward(X, "simulate", n_threads=1 + i % 2) for _ in range(3)]
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for outs in results:
        for got in outs:
            assert np.array_equal(got.view(np.int32), want.view(np.int32))


def test_wide_circuit_runs_in_int64():
    """A circuit whose values can pass 2^24 (16-bit codes) is not float-exact; it runs on
    the int64 engine, still equal to the eval-mode engine and the NumPy twin."""
    net = nn.Sequential(nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=16),
                        nn.QuantLinear(2, 16, weight_quant=nn.CommonWeightQuant,
                                       weight_bit_width=12),
                        nn.QuantReLU(bit_width=8),
                        nn.QuantLinear(16, 2, weight_quant=nn.CommonWeightQuant,
                                       weight_bit_width=8), seed=2)
    net.eval()
    X = np.random.RandomState(0).uniform(-1, 1, size=(3000, 2)).astype(F32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        module = compile_qat_model(net, X, on_overflow="warn")
    assert not module._circuit.float_exact
    assert module.worst_case_bit_width > 24
    np.testing.assert_array_equal(module.forward(X, "simulate", n_threads=2), net(X))
    np.testing.assert_array_equal(module.forward(X, "simulate"), module.forward(X, "disable"))


@pytest.mark.parametrize("n_threads,error", [(0, ValueError), (65, ValueError),
                                             (1.5, TypeError), (True, TypeError)])
def test_bad_thread_counts(trained_qat, n_threads, error):
    net, X = trained_qat
    module = compile_qat_model(net, X)
    with pytest.raises(error, match="n_threads"):
        module.forward(X, "simulate", n_threads=n_threads)
    with pytest.raises(error, match="n_threads"):
        module.quantized_forward(module.quantize_input(X), n_threads=n_threads)
    with pytest.raises(ValueError, match="engine"):
        module._circuit.run(X, engine="fast")


def test_simulate_refuses_bad_input_like_disable(trained_qat):
    """Plain float32 / int64 arrays go straight to C; its refusals come back with the
    Python messages."""
    net, X = trained_qat
    module = compile_qat_model(net, X)
    bad = X[:5].copy()
    bad[3, 1] = np.inf
    for fhe in ("simulate", "disable"):
        with pytest.raises(ValueError, match=r"X contains NaN or infinity \(first in sample 3\)"):
            module.forward(bad, fhe)
    q_x = module.quantize_input(X[:5])
    q_x[2, 0] = module.input_quant.qmax + 1
    for fhe in ("simulate", "disable"):
        with pytest.raises(ValueError, match="q_x must hold codes in"):
            module.quantized_forward(q_x, fhe)


# ------------------------------------------------------------------ modes, save, load

def test_fhe_modes(trained_qat):
    net, X = trained_qat
    module = compile_qat_model(net, X)
    try:                 # execute needs compile_fhe first (tests/test_fhe.py runs it)
        from qatfhe.fhe_lowering import concrete
        concrete()
        error, match = ValueError, "compile_fhe"
    except ImportError:
        error, match = ImportError, r"qatfhe\[fhe\]"
    with pytest.raises(error, match=match):
        module.forward(X, fhe="execute")
    with pytest.raises(ValueError, match="fhe must be"):
        module.forward(X, fhe="fast")


def test_save_load_roundtrip_and_bad_files(tmp_path, trained_qat):
    net, X = trained_qat
    for module in (compile_qat_model(net, X),
                   compile_model(float_net(8, 2), X, n_bits=5, rounding_threshold_bits=4)):
        path = tmp_path / "m.npz"
        module.save(path)
        loaded = QuantizedModule.load(path)
        np.testing.assert_array_equal(loaded.forward(X, "simulate"), module.forward(X, "simulate"))
        assert loaded.bit_width_report() == module.bit_width_report()
        assert loaded.max_bit_width == module.max_bit_width
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or foreign"):
        QuantizedModule.load(tmp_path / "cut.npz")
    net.save(tmp_path / "net.npz")
    with pytest.raises(ValueError, match="not a qatfhe-quantized-module file"):
        QuantizedModule.load(tmp_path / "net.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="no header"):
        QuantizedModule.load(tmp_path / "plain.npz")
    with pytest.raises(FileNotFoundError):
        QuantizedModule.load(tmp_path / "missing.npz")


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("X,match", [
    (np.zeros((0, 2), F32), "empty"),
    (np.array([[0.1, np.nan]], F32), "NaN"),
    (np.zeros((5, 3), F32), "2 features"),
    (np.zeros(4, F32), "2-dimensional"),
])
def test_bad_calibration_sets(X, match):
    with pytest.raises(ValueError, match=match):
        compile_model(float_net(), X)
    with pytest.raises(ValueError, match=match):
        compile_qat_model(qat_net(), X)


@pytest.mark.parametrize("n_bits,error,match", [
    ({"op_inputs": 3}, ValueError, "missing.*op_weights"),
    ({"op_inputs": 3, "op_weights": 3, "weights": 3}, ValueError, "unknown keys.*weights"),
    (1, ValueError, r"\[2, 16\]"),
    (17, ValueError, r"\[2, 16\]"),
    ({"op_inputs": 3, "op_weights": 20}, ValueError, "op_weights"),
    (3.0, TypeError, "integer"),
    (True, TypeError, "integer"),
])
def test_bad_n_bits(n_bits, error, match):
    with pytest.raises(error, match=match):
        compile_model(float_net(), np.random.rand(10, 2), n_bits=n_bits)


def test_bad_options():
    X = np.random.rand(10, 2)
    with pytest.raises(ValueError, match="rounding_threshold_bits"):
        compile_model(float_net(), X, rounding_threshold_bits=1)
    with pytest.raises(NotImplementedError, match="approximate"):
        compile_model(float_net(), X, rounding_threshold_bits={"n_bits": 4,
                                                               "method": "approximate"})
    with pytest.raises(ValueError, match="on_overflow"):
        compile_model(float_net(), X, on_overflow="ignore")
    with pytest.raises(ValueError, match="max_bits"):
        compile_model(float_net(), X, max_bits=1)


def test_uncompilable_networks():
    X = np.random.rand(10, 2)
    float_middle = nn.Sequential(nn.QuantIdentity(bit_width=3), nn.QuantLinear(2, 4),
                                 nn.QuantReLU(bit_width=3), nn.Linear(4, 2), seed=0)
    with pytest.raises(ValueError, match=r"layer 3 \(Linear\).*QuantLinear"):
        compile_qat_model(float_middle, X)
    no_input_quant = nn.Sequential(nn.QuantLinear(2, 4), nn.QuantReLU(), nn.QuantLinear(4, 2),
                                   seed=0)
    with pytest.raises(ValueError, match=r"layer 0 \(QuantLinear\).*QuantIdentity"):
        compile_qat_model(no_input_quant, X)
    float_relu = nn.Sequential(nn.QuantIdentity(), nn.QuantLinear(2, 4), nn.ReLU(),
                               nn.QuantLinear(4, 2), seed=0)
    with pytest.raises(ValueError, match=r"layer 2 \(ReLU\).*QuantReLU"):
        compile_qat_model(float_relu, X)
    double_relu = nn.Sequential(nn.QuantIdentity(), nn.QuantLinear(2, 4), nn.ReLU(), nn.ReLU(),
                                nn.QuantIdentity(), nn.QuantLinear(4, 2), seed=0)
    with pytest.raises(ValueError, match=r"layer 3 \(ReLU\) follows another ReLU"):
        compile_qat_model(double_relu, X)
    with pytest.raises(ValueError, match="compile_qat_model"):
        compile_model(qat_net(), X)
    with pytest.raises(ValueError, match=r"layer 0 \(ReLU\)"):
        compile_model(nn.Sequential(nn.ReLU(), nn.Linear(2, 2), seed=0), X)


def test_quantizer_on_codes_is_a_requantization():
    """A quantizer reading codes (QuantIdentity -> QuantReLU) is one more table lookup from
    codes to codes: s_1 q_1 through relu and the second quantizer, as the engine computes."""
    net = nn.Sequential(nn.QuantIdentity(bit_width=5), nn.QuantReLU(bit_width=3),
                        nn.QuantLinear(2, 6, weight_bit_width=4), nn.QuantReLU(bit_width=4),
                        nn.QuantIdentity(bit_width=3), nn.QuantLinear(6, 2), seed=3)
    X, y = checker(400, 5)
    net.fit(X - 0.5, y, epochs=1, batch_size=8, seed=0, progress=False)
    net.eval()
    module = compile_qat_model(net, X - 0.5)
    assert [op.kind for op in module.ops] == ["lookup", "dense", "lookup", "lookup", "dense",
                                              "decode"]
    requant = module.ops[0]
    assert requant.relu and requant.src == 0 and requant.quant.qmin == 0
    np.testing.assert_array_equal(requant.scale, [F32(net[0].scale())] * 2)
    Xt = np.random.RandomState(8).uniform(-1.5, 1.5, size=(3000, 2)).astype(F32)
    want = net(Xt)
    for fhe in ("simulate", "disable"):
        assert np.array_equal(module.forward(Xt, fhe).view(np.int32), want.view(np.int32))
