"""Accumulator-aware quantization (qatfhe.a2q, csrc/a2q.c) against references written from
its formula: NumPy codes, the worst accumulator over every input code, torch autograd of the
same parametrisation, and the compiler's proof."""
import numpy as np
import pytest

import qatfhe
from qatfhe import a2q, nn, optim
from qatfhe.compile import BitWidthError


def reference_codes(v, g, s, budget, qmax):
    """NumPy twin of the A2Q quantizer (qatfhe.a2q docstring), one row per output channel;
    u is nudged up by 2^-20 as csrc/a2q.c does, so that values meant to be integers stay."""
    v = v.reshape(len(v), -1).astype(np.float64)
    l1 = np.abs(v).sum(axis=1, keepdims=True)
    c = np.minimum(np.abs(g).reshape(-1, 1) / np.reshape(s, (-1, 1)), budget)
    return np.clip(np.trunc(v * c / l1 * (1 + 2.0 ** -20)), -qmax, qmax)


def mlp(P, seed=0, in_bits=3, hidden_bits=3, w_bits=4, wq=nn.CommonWeightQuant, per_channel=False,
        n_in=6, hidden=20):
    kw = dict(bias=True, weight_quant=wq, weight_bit_width=w_bits, accumulator_bit_width=P,
              weight_scaling_per_output_channel=per_channel)
    return nn.Sequential(nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=in_bits),
                         nn.QuantLinear(n_in, hidden, **kw), nn.QuantReLU(bit_width=hidden_bits),
                         nn.QuantLinear(hidden, 3, **kw), seed=seed)


def worst_accumulator(codes, lo, hi):
    """Largest |sum q x| over every input vector with codes in [lo, hi]."""
    q = codes.reshape(len(codes), -1).astype(np.int64)
    top = np.where(q > 0, q * hi, q * lo).sum(axis=1)
    bottom = np.where(q > 0, q * lo, q * hi).sum(axis=1)
    return max(int(np.abs(top).max()), int(np.abs(bottom).max()))


def test_budget_formula_matches_brevitas():
    # get_upper_bound_on_l1_norm: (2^(P-1) - 1) * 2^(signed - N)
    assert a2q.budget(7, 3, True) == 63 / 4
    assert a2q.budget(7, 3, False) == 63 / 8
    assert a2q.budget(16, 8, False) == (2 ** 15 - 1) / 256


@pytest.mark.parametrize("P", [5, 6, 8, 10])
@pytest.mark.parametrize("wq,per_channel", [(nn.CommonWeightQuant, False),
                                            (nn.Int8WeightPerTensorFloat, False),
                                            (nn.Int8WeightPerTensorFloat, True)])
def test_codes_stay_within_budget_for_every_input(P, wq, per_channel):
    net = mlp(P, seed=P, wq=wq, per_channel=per_channel)
    rng = np.random.default_rng(P)
    for i in (1, 3):
        nn.init.uniform_(net[i].weight, -4, 4)          # far over budget
    X = rng.uniform(-1, 1, (64, 6)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    optim.AdamW(net.parameters(), lr=1e-2)
    net.fit(X, y, epochs=2, batch_size=8, progress=False)
    ranges = {1: (-3, 3), 3: (0, 7)}                    # signed narrow 3-bit, unsigned 3-bit
    for i in (1, 3):
        layer = net[i]
        T, N, signed = layer.accumulator_budget()
        assert T == a2q.budget(P, N, signed)
        codes, s = layer.quant_weight()
        assert np.abs(codes.reshape(len(codes), -1)).sum(axis=1).max() <= np.floor(T)
        assert worst_accumulator(codes, *ranges[i]) <= 2 ** (P - 1) - 1
        g = layer.weight_norm
        v = layer.weight.reshape(len(codes), -1).astype(np.float64)
        if wq is not nn.CommonWeightQuant:   # abs-max form: |g| / s = t ||v||_1 / max |v|
            t = layer.weight_quant.qmax
            s = np.abs(g) * np.abs(v).max(1) / (t * np.abs(v).sum(1))
            np.testing.assert_allclose(layer.quant_weight()[1], s, rtol=1e-5)
        ref = reference_codes(layer.weight, g, np.broadcast_to(s, len(codes)), T,
                              layer.weight_quant.qmax)
        # the reference may differ by float rounding at exact integers only
        assert np.mean(ref == codes.reshape(ref.shape)) > 0.99


def test_gradients_match_torch_autograd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    for wq, per_channel, norms in ((nn.CommonWeightQuant, False, [0.5, 50.0, 0.3]),
                                   (nn.Int8WeightPerTensorFloat, False, [0.1, 10.0, 0.06]),
                                   (nn.Int8WeightPerTensorFloat, True, [0.1, 10.0, 0.06])):
        net = nn.Sequential(nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
                            nn.QuantLinear(6, 3, bias=True, weight_quant=wq, weight_bit_width=4,
                                           accumulator_bit_width=6,
                                           weight_scaling_per_output_channel=per_channel), seed=1)
        X = rng.uniform(-1, 1, (5, 6)).astype(np.float32)
        y = rng.integers(0, 3, 5)
        net.train()
        net(X)                                           # the first forward initialises g
        net[1].weight_norm[...] = np.array(norms, np.float32)   # free, clamped, free rows
        net[1].weight[0] = [0.9, 0.05, -0.02, 0.01, 0.0, 0.03]  # abs-max codes within budget
        net.zero_grad()
        loss = nn.CrossEntropyLoss()(net(X), y)
        loss.backward()
        T = net[1].accumulator_budget()[0]
        v = torch.tensor(net[1].weight.copy(), dtype=torch.float64, requires_grad=True)
        g = torch.tensor(net[1].weight_norm.copy(), dtype=torch.float64, requires_grad=True)
        m, n = v.abs().max(dim=1, keepdim=True).values, v.abs().sum(1, keepdim=True)
        if wq is nn.CommonWeightQuant:
            s = torch.full((3, 1), 1 / 7, dtype=torch.float64)
        else:                       # abs-max form: s = |g| m / (t n), one scale per row
            s = g.abs().reshape(3, 1) * m / (7 * n)
        c = torch.clamp_max(g.abs().reshape(3, 1) / s, T)
        u = v * c / n
        w = s * (u + (torch.trunc(u).clamp(-7, 7) - u).detach())      # straight through
        x = torch.tensor(np.clip(np.rint(X * 3), -3, 3) / 3, dtype=torch.float64)
        b = torch.tensor(net[1].bias.copy(), dtype=torch.float64)
        ref = torch.nn.functional.cross_entropy(x @ w.T + b, torch.tensor(y))
        ref.backward()
        assert abs(float(loss) - ref.item()) < 1e-6
        np.testing.assert_allclose(net[1].weight_grad, v.grad.numpy(), atol=1e-6)
        np.testing.assert_allclose(net._tensors["1.weight_norm"]["grad"], g.grad.numpy(),
                                   atol=1e-6)
        assert np.abs(g.grad.numpy()).max() > 0                # g learns


def test_conv_budget_and_compile_proof():
    net = nn.Sequential(
        nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
        nn.QuantConv2d(1, 4, 3, padding=1, weight_quant=nn.CommonWeightQuant, weight_bit_width=3,
                       accumulator_bit_width=6),
        nn.QuantReLU(bit_width=3), nn.Flatten(),
        nn.QuantLinear(64, 2, weight_quant=nn.CommonWeightQuant, weight_bit_width=3,
                       accumulator_bit_width=7), seed=3, input_shape=(1, 4, 4))
    nn.init.uniform_(net[1].weight, -1, 1)
    nn.init.uniform_(net[4].weight, -1, 1)
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (40, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 2, 40)
    optim.AdamW(net.parameters(), lr=1e-2)
    net.fit(X, y, epochs=1, batch_size=4, progress=False)
    codes, _ = net[1].quant_weight()
    assert worst_accumulator(codes, -3, 3) <= 2 ** 5 - 1
    module = qatfhe.compile_qat_model(net, X)
    budgets = module.info["accumulator_budgets"]
    assert [b["accumulator_bit_width"] for b in budgets] == [6, 7]
    assert all(b["worst_case_bits"] <= b["accumulator_bit_width"] for b in budgets)
    assert (module.predict(X, fhe="simulate") == net.predict(X)).all()


def test_compile_names_a_layer_over_budget():
    net = mlp(6, seed=2)
    X = np.random.default_rng(0).uniform(-1, 1, (20, 6)).astype(np.float32)
    net.eval()
    net[3].set_accumulator_bit_width(6, relax=50.0)      # a schedule left unfinished
    nn.init.uniform_(net[3].weight, -2, 2)
    with pytest.raises(BitWidthError, match=r"layer 3 \(QuantLinear\)"):
        qatfhe.compile_qat_model(net, X)
    with pytest.warns(RuntimeWarning, match="layer 3"):
        qatfhe.compile_qat_model(net, X, on_overflow="warn")
    net[3].set_accumulator_bit_width(6)
    assert qatfhe.compile_qat_model(net, X).info["accumulator_budgets"][1]["worst_case_bits"] <= 6


def test_save_load_keeps_the_budget_and_the_norms(tmp_path):
    net = mlp(7, seed=4)
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (30, 6)).astype(np.float32)
    optim.AdamW(net.parameters(), lr=1e-2)
    net.fit(X, rng.integers(0, 3, 30), epochs=1, batch_size=5, progress=False)
    net.save(tmp_path / "net.npz")
    back = qatfhe.load(tmp_path / "net.npz")
    assert back[1].accumulator_bit_width == 7 and back[3].accumulator_bit_width == 7
    np.testing.assert_array_equal(back[3].weight_norm, net[3].weight_norm)
    net.eval(); back.eval()
    np.testing.assert_array_equal(back(X), net(X))


@pytest.mark.parametrize("bits,error", [(1, ValueError), (33, ValueError), ("7", TypeError),
                                        (7.0, TypeError)])
def test_bad_accumulator_bit_width(bits, error):
    with pytest.raises(error, match="accumulator_bit_width"):
        nn.QuantLinear(4, 2, accumulator_bit_width=bits)


def test_a2q_needs_integer_input_codes():
    with pytest.raises(ValueError, match="QuantIdentity or QuantReLU"):
        nn.Sequential(nn.QuantLinear(4, 2, accumulator_bit_width=8), seed=0)
    with pytest.raises(ValueError, match="created without accumulator_bit_width"):
        mlp(None)[1].set_accumulator_bit_width(8)


def test_tutorial_experiment_at_reduced_size():
    result = a2q.tutorial_experiment(seeds=[0], hidden=12, epochs=2, tighten_epochs=1,
                                     n_train=400, accumulator_bits=7)
    run = result["runs"][0]
    assert run["agree"] and run["worst_case_method"] == "exhaustive"
    assert run["worst_case_bit_width"] >= run["max_bit_width"]
    assert all(b["worst_case_bits"] <= 7 for b in run["budgets"])
    assert 0.0 <= result["mean_accuracy"] <= 1.0


def test_torch_and_onnx_export_use_the_a2q_weights(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    net = mlp(7, seed=6, wq=nn.Int8WeightPerTensorFloat)
    X = np.random.default_rng(1).uniform(-1, 1, (40, 6)).astype(np.float32)
    net.train(); net(X); net.eval()
    t = qatfhe.to_torch(net)
    np.testing.assert_allclose(t(torch.tensor(X)).detach().numpy(), net(X), atol=1e-5)
    qatfhe.export_onnx(net, tmp_path / "net.onnx")
    assert (tmp_path / "net.onnx").stat().st_size > 0
