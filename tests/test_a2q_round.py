"""A2Q codes rounded to nearest (accumulator_rounding="round", qatfhe.a2q): the codes equal
a NumPy reference that finds the largest fitting multiplier exactly (sorted rounding
breakpoints, not the C core's bisection), the accumulator fits P bits on every input code
(by enumeration), the compiler's proof and save/load, and load_unconstrained (A2Q+'s start
from a network trained without budgets)."""
import numpy as np
import pytest

import qatfhe
from qatfhe import a2q, nn, optim

F32 = np.float32


def mlp(P, seed=0, wq=nn.CommonWeightQuant, per_channel=False, bound="split", rounding="round"):
    kw = dict(bias=True, weight_quant=wq, weight_bit_width=4, accumulator_bound=bound,
              weight_scaling_per_output_channel=per_channel, accumulator_rounding=rounding)
    return nn.Sequential(nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
                         nn.QuantLinear(6, 6, accumulator_bit_width=P, **kw),
                         nn.QuantReLU(bit_width=3),
                         nn.QuantLinear(6, 3, accumulator_bit_width=P, **kw), seed=seed)


def every_input(lo, hi, n):
    """All code vectors (k^n, n) with codes in [lo, hi]."""
    return np.indices((hi - lo + 1,) * n).reshape(n, -1).T.astype(np.int64) + lo


def rounded_codes_exact(u, limits, qmax):
    """NumPy, from the docstring: clip(rint(k u)) for the largest k whose codes keep
    sum of q > 0 <= floor(limits[0]), sum of |q < 0| <= floor(limits[1]) (split) or, with
    one limit, sum |q| <= floor(limits[0]) (L1).  rint(k |u_i|) >= j exactly when
    k >= (j - 1/2) / |u_i|, so a sum of codes is the number of those breakpoints (j <= qmax)
    at or below k: the largest k is just below the (floor(limit) + 1)-th smallest."""
    a = np.abs(u.astype(np.float64))
    steps = np.arange(1, qmax + 1) - 0.5
    groups = [u > 0, u < 0] if len(limits) == 2 else [u != 0]
    k = np.inf
    for part, limit in zip(groups, limits):
        points = np.sort((steps[None, :] / a[part][:, None]).ravel())
        if len(points) > int(np.floor(limit)):
            k = min(k, points[int(np.floor(limit))])
    below = (steps[None, :] / np.where(a > 0, a, np.inf)[:, None]) < k     # breakpoints < k
    return (np.sign(u) * below.sum(1)).astype(np.int64)


def test_rounded_codes_equal_the_exact_largest_fit():
    rng = np.random.default_rng(7)
    P, qmax, s = 6, 7, 1 / 7                        # CommonWeightQuant at 4 bits: s = 1 / 7
    net = mlp(P, seed=1)
    X = rng.uniform(-1, 1, (8, 6)).astype(F32)
    net.train()
    net(X)                                          # the norms g are initialised here
    for i in (1, 3):
        net[i].weight[...] = rng.normal(0, 1, net[i].weight.shape).astype(F32)
        net[i].weight_norm[...] = 1e3                # every row capped by the bound
    net[3].weight_norm[0] = 0.5                      # one row within it: rint(v |g| / (s ||v||_1))
    tp, tn = a2q.split_budget(P, 3)                  # layer 3: unsigned 3-bit inputs
    t = a2q.budget(P, 3, True)                       # layer 1: signed inputs, the L1 bound
    for i, limits in ((1, (t,)), (3, (tp, tn))):
        v = net[i].weight
        codes = net[i].quant_weight()[0]
        for r in range(v.shape[0]):
            if i == 3 and r == 0:
                want = np.clip(np.rint(v[r] * 0.5 / (s * np.abs(v[r]).sum())), -qmax, qmax)
            else:
                want = rounded_codes_exact(v[r], limits, qmax)
            np.testing.assert_array_equal(codes[r], want, err_msg=f"layer {i} row {r}")
    full = net[3].quant_weight()[0][1:]              # a capped row spends one sign's budget
    pos, neg = np.where(full > 0, full, 0).sum(1), np.where(full < 0, -full, 0).sum(1)
    assert ((pos == np.floor(tp)) | (neg == np.floor(tn))).all()


@pytest.mark.parametrize("P", [5, 7])
@pytest.mark.parametrize("wq,per_channel", [(nn.CommonWeightQuant, False),
                                            (nn.Int8WeightPerTensorFloat, True)])
def test_accumulator_fits_on_every_input_code(P, wq, per_channel):
    net = mlp(P, seed=P, wq=wq, per_channel=per_channel)
    rng = np.random.default_rng(P)
    for i in (1, 3):
        nn.init.uniform_(net[i].weight, -4, 4)          # far over budget
    X = rng.uniform(-1, 1, (64, 6)).astype(F32)
    optim.AdamW(net.parameters(), lr=1e-2)
    net.fit(X, rng.integers(0, 3, 64), epochs=2, batch_size=8, progress=False)
    lo, hi = -2 ** (P - 1), 2 ** (P - 1) - 1
    inputs = {1: every_input(-4, 3, 6), 3: every_input(0, 7, 6)}   # signed, unsigned
    for i in (1, 3):
        acc = inputs[i] @ net[i].quant_weight()[0].astype(np.int64).T
        assert acc.min() >= lo and acc.max() <= hi, f"layer {i} overflows {P} bits"


def test_compiler_proof_and_save_load(tmp_path):
    net = mlp(6, seed=5)
    rng = np.random.default_rng(5)
    X = rng.uniform(-1, 1, (40, 6)).astype(F32)
    optim.AdamW(net.parameters(), lr=1e-2)
    net.fit(X, rng.integers(0, 3, 40), epochs=2, batch_size=4, progress=False)
    net.eval()
    module = qatfhe.compile_qat_model(net, X)
    assert all(b["worst_case_bits"] <= 6 for b in module.info["accumulator_budgets"])
    assert (module.predict(X, fhe="simulate") == net.predict(X)).all()
    net.save(tmp_path / "net.npz")
    back = qatfhe.load(tmp_path / "net.npz")
    assert back[3].accumulator_rounding == "round" and back[3].accumulator_bound == "split"
    back.eval()
    np.testing.assert_array_equal(back(X), net(X))


def test_load_unconstrained_starts_from_the_plain_codes():
    rng = np.random.default_rng(2)
    X = rng.uniform(-1, 1, (32, 6)).astype(F32)
    y = rng.integers(0, 3, 32)
    plain = mlp(None, seed=3)
    optim.AdamW(plain.parameters(), lr=1e-2)
    plain.fit(X, y, epochs=2, batch_size=4, progress=False)
    net = a2q.load_unconstrained(mlp(5, seed=9), plain.state_dict())
    a2q.set_budgets(net, relax=1e6)                  # no row capped: the plain quantizer's codes
    net.train()
    net(X[:4])                                       # g = ||w||_1 of every row
    for i in (1, 3):
        w = plain[i].weight
        np.testing.assert_array_equal(net[i].quant_weight()[0],
                                      np.clip(np.rint(w / (1 / 7)), -7, 7))
        np.testing.assert_array_equal(net[i].bias, plain[i].bias)
    a2q.set_budgets(net, relax=1.0)
    codes = net[3].quant_weight()[0]
    assert np.where(codes > 0, codes, 0).sum(1).max() <= np.floor(a2q.split_budget(5, 3)[0])
    with pytest.raises(ValueError, match="missing"):
        a2q.load_unconstrained(net, {"1.weight": plain[1].weight})


def test_bad_accumulator_rounding():
    with pytest.raises(ValueError, match="accumulator_rounding"):
        nn.QuantLinear(4, 2, accumulator_bit_width=7, accumulator_rounding="floor")


def test_digits_example_with_a2q_runs_and_proves_the_budget(capsys):
    """examples/digits_cnn.py with A2Q at P = 7, 2-bit activations, rounded codes and a
    pretraining epoch: exit status 0 (the circuit agrees with the fake-quant network on
    every test image) and every accumulator proven within 7 bits."""
    pytest.importorskip("sklearn")
    import importlib.util
    import pathlib
    import re
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "digits_cnn.py"
    spec = importlib.util.spec_from_file_location("digits_cnn", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--epochs", "1", "--accumulator-bits", "7", "--act-bits", "2",
                         "--pretrain-epochs", "1", "--channels", "8", "16"]) == 0
    out = capsys.readouterr().out
    worst = [int(w) for w in re.findall(r"budget 7 bits, worst case (\d+) bits", out)]
    assert len(worst) == 3 and max(worst) <= 7
    widest = re.search(r"\(every value\): (\d+) bits measured on the training set, (\d+) bits "
                       r"worst case", out)
    assert int(widest.group(1)) <= int(widest.group(2)) <= 7


def test_budgets_of_chosen_layers_and_norms_kept_from_a_budgeted_state():
    net = mlp(6, seed=4)
    names = [name for name, _ in a2q.a2q_layers(net)]
    a2q.set_budgets(net, relax=4.0, layers=names[1:])
    assert [getattr(net[i], "_a2q_relax", 1.0) for i in (1, 3)] == [1.0, 4.0]
    t, n, signed = net[3].accumulator_budget()
    assert (n, signed) == (3, False)
    with pytest.raises(ValueError, match="not A2Q layers"):
        a2q.fit_tightening(net, np.zeros((2, 6), F32), np.zeros(2, np.int64), 1, 1,
                           layers=["layer 2 (QuantReLU)"])
    rng = np.random.default_rng(4)
    X = rng.uniform(-1, 1, (16, 6)).astype(F32)
    a2q.set_budgets(net)
    optim.AdamW(net.parameters(), lr=1e-2)
    net.fit(X, rng.integers(0, 3, 16), epochs=1, batch_size=4, progress=False)
    state = net.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("1.weight_norm")}
    other = a2q.load_unconstrained(mlp(6, seed=8), state)   # layer 1 as if trained without
    np.testing.assert_array_equal(other[3].weight_norm, net[3].weight_norm)
    np.testing.assert_array_equal(other[3].quant_weight()[0], net[3].quant_weight()[0])
    other.train()
    other(X[:2])                                             # layer 1: g = ||w||_1 again
    np.testing.assert_allclose(other[1].weight_norm, np.abs(net[1].weight).sum(1), rtol=1e-6)


def test_tutorial_run_options_at_reduced_size():
    """relax="hidden" keeps the last layer at its budget while the hidden ones tighten;
    rounding and pretraining go through; every budget proven by the compiler."""
    run = a2q.tutorial_run(0, hidden=12, epochs=2, tighten_epochs=1, n_train=300,
                           relax="hidden", rounding="round", pretrain_epochs=1)
    assert run["agree"] and run["worst_case_method"] == "exhaustive"
    assert len(run["budgets"]) == 3 and all(b["worst_case_bits"] <= 7 for b in run["budgets"])
    assert run["worst_case_bit_width"] <= 7
    with pytest.raises(ValueError, match="relax"):
        a2q.tutorial_run(0, hidden=4, epochs=1, tighten_epochs=1, n_train=20, relax="output")
