"""Worst-case bit widths (qatfhe.worst_case): the exhaustive ranges against a NumPy brute
force over every input code, and the interval bound's soundness and tightness."""
import itertools

import numpy as np

import qatfhe
from qatfhe import experiments, nn, optim, worst_case


def tutorial_module(seed=0, epochs=1):
    X, _, y, _ = qatfhe.datasets.checkerboard(seed=seed)
    net = experiments.qat_net(30, seed)
    experiments.prune_like_tutorial(net, 20)
    optim.AdamW(net.parameters(), lr=1e-3)
    net.fit(X[:3000], y[:3000], epochs=epochs, batch_size=1, progress=False)
    return qatfhe.compile_qat_model(net, X)


def brute_force_ranges(module):
    """(min, max) per node over all input code pairs, with the module's NumPy twin."""
    q = module.input_quant
    codes = np.array(list(itertools.product(range(q.qmin, q.qmax + 1),
                                            repeat=module.in_features)), np.int64)
    return module._numpy_run(codes)[2]


def test_exhaustive_worst_case_equals_brute_force():
    module = tutorial_module()
    assert worst_case.input_code_count(module) == 49
    assert module.worst_case_method == "exhaustive"
    ref = brute_force_ranges(module)
    report = module.bit_width_report()
    assert [(r["worst_min"], r["worst_max"]) for r in report] == ref
    assert module.worst_case_bit_width == max(
        qatfhe._core.bits_for_range(lo, hi) for lo, hi in ref)
    # never above the C core's per-node box, and at least what the data reached
    for r in report:
        assert r["static_min"] <= r["worst_min"] <= r["min"]
        assert r["max"] <= r["worst_max"] <= r["static_max"]


def test_interval_bound_is_sound_and_tighter_than_the_box():
    module = tutorial_module(seed=1)
    exact = worst_case.exhaustive_ranges(module)
    method, bound = worst_case.worst_case(module, limit=0)      # force the bound
    assert method == "bound"
    for (lo, hi), (a, b), node in zip(bound, exact, module._nodes):
        assert lo <= a and b <= hi
        assert node["static_min"] <= lo and hi <= node["static_max"]
    assert sum(hi - lo for lo, hi in bound) < sum(n["static_max"] - n["static_min"]
                                                 for n in module._nodes)


def test_interval_bound_on_a_conv_net_covers_random_inputs():
    net = nn.Sequential(
        nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
        nn.QuantConv2d(1, 3, 3, padding=1, weight_quant=nn.CommonWeightQuant, weight_bit_width=3),
        nn.QuantReLU(bit_width=3), nn.AvgPool2d(2), nn.QuantIdentity(bit_width=3),
        nn.Flatten(), nn.QuantLinear(12, 2, weight_quant=nn.CommonWeightQuant, weight_bit_width=3),
        seed=5, input_shape=(1, 4, 4))
    rng = np.random.default_rng(0)
    X = rng.uniform(-1.5, 1.5, (2000, 1, 4, 4)).astype(np.float32)
    net.train(); net(X[:100]); net.eval()
    module = qatfhe.compile_qat_model(net, X[:100])
    assert module.worst_case_method == "bound"                  # 7^16 input combinations
    for r in module.bit_width_report(X):
        assert r["worst_min"] <= r["min"] and r["max"] <= r["worst_max"]
        assert r["static_min"] <= r["worst_min"] and r["worst_max"] <= r["static_max"]


def test_saved_module_keeps_the_worst_case(tmp_path):
    module = tutorial_module(seed=2)
    module.save(tmp_path / "m.npz")
    back = qatfhe.QuantizedModule.load(tmp_path / "m.npz")
    assert back.worst_case_bit_width == module.worst_case_bit_width
    assert back.worst_case_method == "exhaustive"
