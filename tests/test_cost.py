"""qatfhe.cost: lookups counted from the network (NumPy integer forward written from
REFERENCE.md sections 5, 6), the table's shape, and its ranking against Concrete's own
complexity where concrete-python is installed."""
import math

import numpy as np
import pytest

from qatfhe import compile_qat_model, cost, datasets, nn, optim


def bits_for_range(lo, hi):
    """REFERENCE.md section 6."""
    if lo >= 0:
        return max(1, math.ceil(math.log2(hi + 1)))
    return max(math.ceil(math.log2(-lo)) + 1, math.ceil(math.log2(max(hi, 0) + 1)) + 1)


def quantize(x, scale, qmin, qmax):
    return np.clip(np.rint(np.asarray(x, np.float32) / np.float32(scale)), qmin,
                   qmax).astype(np.int64)


@pytest.fixture(scope="module")
def small():
    X_train, X_test, y_train, y_test = datasets.checkerboard(seed=3)
    w3 = dict(bias=True, weight_quant=nn.CommonWeightQuant, weight_bit_width=3)
    net = nn.Sequential(nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
                        nn.QuantLinear(2, 6, **w3), nn.QuantReLU(bit_width=3),
                        nn.QuantLinear(6, 5, **w3), nn.QuantReLU(bit_width=2),
                        nn.QuantLinear(5, 2, **w3), seed=3)
    optim.AdamW(net.parameters(), lr=1e-3)
    net.fit(X_train, y_train, epochs=1, batch_size=1, progress=False)
    net.eval()
    return net, X_train


def lookup_inputs(net, X):
    """[(count, bits)] of the lookups of the net's circuit: one per hidden neuron, reading
    that layer's accumulator (the last layer's accumulator is decoded in the clear)."""
    codes = quantize(X, net[0].scale(), -3, 3)
    s_x, out = np.float32(net[0].scale()), []
    for linear, act, qmax in ((1, 2, 7), (3, 4, 3)):
        q_w = quantize(net[linear].weight, np.float32(1 / 3), -3, 3)
        acc = codes @ q_w.T
        out.append((acc.shape[1], bits_for_range(acc.min(), acc.max())))
        y = acc.astype(np.float32) * (s_x * np.float32(1 / 3)) + net[linear].bias
        s_x = np.float32(net[act].scale())
        codes = quantize(np.maximum(y, 0), s_x, 0, qmax)
    return out


def test_cost_is_the_sum_over_the_lookups_of_their_width_cost(small):
    net, X = small
    module = compile_qat_model(net, X)
    expected = lookup_inputs(net, X)
    assert module.n_lookups == 11 == sum(c for c, _ in expected)
    total = module.n_lookups
    want = sum(c * cost.lookup_cost(b, total) for c, b in expected)
    assert module.fhe_cost() == pytest.approx(want, rel=1e-12)
    assert [(d["lookups"], d["bits"]) for d in cost.cost_breakdown(module)] == expected


def test_rounded_lookups_are_priced_from_their_own_column(small):
    net, X = small
    plain = compile_qat_model(net, X)
    rounded = compile_qat_model(net, X, rounding_threshold_bits=2)
    items = cost.lookups(rounded)
    first = lookup_inputs(net, X)[0][1]      # the first layer reads the same input codes
    assert items[0][3] == (first if first > 2 else None)
    for _, count, bits, from_bits in items:
        assert bits in (1, 2, 3) and (from_bits is None or from_bits > 2)
    # a measured (m -> n) pair at the table's own lookup count is priced as measured
    table = cost.table()
    for (m, n), value in table["rounded_complexity_per_lookup"].items():
        priced = cost.lookup_cost(n, table["rounded_lookups"], from_bits=m) * cost.UNIT
        assert priced == pytest.approx(value, rel=1e-9)
    assert plain.n_lookups == rounded.n_lookups


def test_worst_case_widths_cost_at_least_the_measured():
    X_train, _, y_train, _ = datasets.checkerboard(seed=0)
    w3 = dict(bias=True, weight_quant=nn.CommonWeightQuant, weight_bit_width=3)
    net = nn.Sequential(nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
                        nn.QuantLinear(2, 4, **w3), nn.QuantReLU(bit_width=3),
                        nn.QuantLinear(4, 2, **w3), seed=0)
    module = compile_qat_model(net, X_train)
    assert module.fhe_cost("worst_case") >= module.fhe_cost()
    with pytest.raises(ValueError, match="widths"):
        module.fhe_cost("typical")


def test_table_grows_with_width_and_with_the_lookup_count():
    for n_lookups in (1, 16, 64, 300):
        costs = [cost.lookup_cost(b, n_lookups) for b in range(2, 17)]
        assert all(a <= b for a, b in zip(costs, costs[1:])) and costs[-1] > 100 * costs[0]
    for bits in (3, 6, 9):
        assert cost.lookup_cost(bits, 1) <= cost.lookup_cost(bits, 16) <= \
            cost.lookup_cost(bits, 200)
    with pytest.raises(ValueError):
        cost.lookup_cost(0)
    table = cost.table()
    assert table["how"] and table["when"] and table["command"]
    assert cost.estimated_seconds(1000.0) > 0


# ------------------------------------------------------------------ against Concrete

def concrete_complexity(fhe, groups):
    """Concrete's complexity of a circuit with `count` random non-affine lookups of
    `bits`-bit inputs per (count, bits) group."""
    rng = np.random.RandomState(0)
    tables, widths = [], []
    for count, bits in groups:
        for _ in range(count):
            while True:
                t = rng.randint(0, 1 << bits, size=1 << bits)
                if len(set(np.diff(t))) > 1:
                    break
            tables.append(fhe.LookupTable(t))
            widths.append(bits)

    def f(x):
        return fhe.array([t[x[j]] for j, t in enumerate(tables)])

    high = np.array([(1 << b) - 1 for b in widths])
    inputset = [rng.randint(0, high + 1) for _ in range(20)] + [high, 0 * high]
    return fhe.compiler({"x": "encrypted"})(f).compile(inputset).complexity


def test_ranking_agrees_with_concretes_complexity():
    fhe = pytest.importorskip("concrete.fhe")
    circuits = [[(12, 2)], [(8, 3)], [(4, 5)], [(2, 7)], [(1, 8), (8, 3)], [(3, 8)], [(1, 9)]]
    ours = [cost.circuit_cost([(c, b, None) for c, b in groups]) for groups in circuits]
    theirs = [concrete_complexity(fhe, groups) for groups in circuits]
    assert np.argsort(ours).tolist() == np.argsort(theirs).tolist()
    for a, b in zip(ours, theirs):            # within a factor 2 of Concrete's own figure
        assert 0.5 < a * cost.UNIT / b < 2.0


def test_ranking_agrees_with_the_fhe_backends_statistics():
    pytest.importorskip("concrete.fhe")
    from qatfhe import QuantizedModule
    if not hasattr(QuantizedModule, "compile_fhe"):
        pytest.skip("this qatfhe has no FHE backend (QuantizedModule.compile_fhe)")
    X_train, _, y_train, _ = datasets.checkerboard(seed=1)
    w = dict(bias=True, weight_quant=nn.CommonWeightQuant)
    modules = []
    for width, bits, rounding in ((3, 3, None), (6, 3, None), (6, 4, None), (12, 4, 4)):
        net = nn.Sequential(nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
                            nn.QuantLinear(2, width, weight_bit_width=bits, **w),
                            nn.QuantReLU(bit_width=bits),
                            nn.QuantLinear(width, 2, weight_bit_width=bits, **w), seed=1)
        optim.AdamW(net.parameters(), lr=1e-3)
        net.fit(X_train[:500], y_train[:500], epochs=1, batch_size=8, progress=False)
        module = compile_qat_model(net, X_train, rounding_threshold_bits=rounding)
        module.compile_fhe()
        statistics = module.fhe_statistics()
        complexity = statistics.get("complexity") if isinstance(statistics, dict) else None
        if complexity is None:
            pytest.skip("fhe_statistics() reports no complexity")
        modules.append((module.fhe_cost(), complexity))
    ours, theirs = zip(*modules)
    assert np.argsort(ours).tolist() == np.argsort(theirs).tolist()


def test_max_pools_count_one_lookup_per_pairwise_maximum():
    if not hasattr(nn, "MaxPool2d"):
        pytest.skip("no MaxPool2d in this qatfhe")
    w3 = dict(weight_quant=nn.CommonWeightQuant, weight_bit_width=3)
    net = nn.Sequential(nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
                        nn.QuantConv2d(1, 2, 3, padding=1, **w3), nn.QuantReLU(bit_width=3),
                        nn.MaxPool2d(2), nn.Flatten(), nn.QuantLinear(18, 2, **w3), seed=0)
    X = np.random.default_rng(0).random((50, 1, 6, 6)).astype(np.float32)
    module = compile_qat_model(net, X)
    relu_codes = 2 * 6 * 6                       # one lookup per conv output
    pair_maxima = 2 * 3 * 3 * (2 * 2 - 1)        # 3 per 2x2 window, 9 windows, 2 channels
    assert module.n_lookups == relu_codes + pair_maxima
    (_, _, relu_bits, _), (_, count, diff_bits, _) = cost.lookups(module)
    assert count == pair_maxima and 2 <= diff_bits <= 4    # a - b of 3-bit codes 0..7
    assert module.fhe_cost() == pytest.approx(
        relu_codes * cost.lookup_cost(relu_bits, module.n_lookups)
        + pair_maxima * cost.lookup_cost(diff_bits, module.n_lookups))
