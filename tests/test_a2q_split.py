"""The split A2Q bound (accumulator_bound="split", qatfhe.a2q): the accumulator fits P bits on
every input code (by enumeration), the filled multiplier is the largest whose truncated codes
fit (NumPy bisection written from the docstring), gradients match torch autograd, the
compiler's proof, and the option's checks and save/load."""
import numpy as np
import pytest

import qatfhe
from qatfhe import a2q, nn, optim

F32 = np.float32


def mlp(P, seed=0, wq=nn.CommonWeightQuant, per_channel=False, n_in=6, hidden=6, bound="split"):
    kw = dict(bias=True, weight_quant=wq, weight_bit_width=4, accumulator_bit_width=P,
              weight_scaling_per_output_channel=per_channel, accumulator_bound=bound)
    return nn.Sequential(nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
                         nn.QuantLinear(n_in, hidden, **kw), nn.QuantReLU(bit_width=3),
                         nn.QuantLinear(hidden, 3, **kw), seed=seed)


def every_input(lo, hi, n):
    """All code vectors (k^n, n) with codes in [lo, hi]."""
    return np.indices((hi - lo + 1,) * n).reshape(n, -1).T.astype(np.int64) + lo


def test_split_budget_formula():
    assert a2q.split_budget(7, 3) == (63 / 7, 64 / 7)
    assert a2q.split_budget(16, 8) == ((2 ** 15 - 1) / 255, 2 ** 15 / 255)


@pytest.mark.parametrize("P", [5, 6, 8])
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
    inputs = {1: every_input(-3, 3, 6), 3: every_input(0, 7, 6)}   # signed narrow, unsigned
    wider = 0
    for i in (1, 3):
        codes = net[i].quant_weight()[0].astype(np.int64)
        acc = inputs[i] @ codes.T
        assert acc.min() >= lo and acc.max() <= hi, f"layer {i} overflows {P} bits"
        wider += int(np.abs(codes).sum(1).max() > np.floor(a2q.budget(P, 3, i == 1)))
    assert wider > 0                     # some row spends more than the L1 bound allows


def filled_multiplier(v, k, limit, norm, pos_b, neg_b, qmax):
    """NumPy: the largest multiplier in [k, (limit + n) / norm] whose codes
    clip(trunc(v * k (1 + 2^-20))) meet floor(pos_b), floor(neg_b), by 16 halvings of that
    interval (module docstring), the same float32 products as csrc/a2q.c."""
    def fits(m):
        q = np.clip(np.trunc(v * F32(m * (1 + 2.0 ** -20))), -qmax, qmax)
        return q[q > 0].sum() <= np.floor(pos_b) and -q[q < 0].sum() <= np.floor(neg_b)
    hi = (limit + len(v)) / norm
    if fits(hi):
        return hi
    for _ in range(16):                  # QF_A2Q_FILL_STEPS
        mid = 0.5 * (k + hi)
        k, hi = (mid, hi) if fits(mid) else (k, mid)
    return k


def test_gradients_match_torch_autograd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    P, qmax = 6, 7
    tp, tn = a2q.split_budget(P, 3)
    unsigned = nn.QuantSpec("const", 3, False, False, scaling_const=1.0)    # codes / 7 in [0, 1]
    net = nn.Sequential(nn.QuantIdentity(act_quant=unsigned),
                        nn.QuantLinear(6, 3, bias=True, weight_quant=nn.CommonWeightQuant,
                                       weight_bit_width=4, accumulator_bit_width=P,
                                       accumulator_bound="split"), seed=1)
    X = rng.uniform(0, 1, (5, 6)).astype(F32)
    y = rng.integers(0, 3, 5)
    net.train()
    net(X)
    net[1].weight[...] = np.array([[0.9, -0.1, 0.6, 0.8, -0.2, 0.5],      # capped by v+
                                   [-0.9, 0.1, -0.6, -0.8, 0.2, -0.5],    # capped by v-
                                   [0.3, -0.2, 0.1, 0.2, -0.4, 0.1]], F32)
    net[1].weight_norm[...] = np.array([50.0, 50.0, 0.2], F32)             # the last one free
    net.zero_grad()
    loss = nn.CrossEntropyLoss()(net(X), y)
    loss.backward()
    v64 = net[1].weight.astype(np.float64)
    s = 1 / 7
    rho = np.ones((3, 1))
    for r in range(2):                   # the filled multiplier over the capped one
        part = v64[r] > 0 if r == 0 else v64[r] < 0
        norm, limit = np.abs(v64[r][part]).sum(), (tp, tn)[r]
        rho[r] = filled_multiplier(net[1].weight[r], limit / norm, limit, norm, tp, tn,
                                   qmax) / (limit / norm)
    assert (rho[:2] > 1).all()
    v = torch.tensor(v64, requires_grad=True)
    g = torch.tensor(net[1].weight_norm.astype(np.float64), requires_grad=True)
    l1 = v.abs().sum(1, keepdim=True)
    pos = v.clamp_min(0).sum(1, keepdim=True)
    k = torch.minimum(g.abs().reshape(3, 1) / (s * l1),
                      torch.minimum(tp / pos, tn / (l1 - pos))) * torch.tensor(rho)
    u = v * k
    w = s * (u + (torch.trunc(u).clamp(-qmax, qmax) - u).detach())
    x = torch.tensor(np.clip(np.rint(X * 7), 0, 7) / 7, dtype=torch.float64)
    logits = x @ w.T + torch.tensor(net[1].bias.astype(np.float64))
    ref = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
    ref.backward()
    assert abs(float(loss) - ref.item()) < 1e-6
    np.testing.assert_allclose(net[1].weight_grad, v.grad.numpy(), atol=1e-6)
    np.testing.assert_allclose(net._tensors["1.weight_norm"]["grad"], g.grad.numpy(), atol=1e-6)


def test_compiler_proves_the_split_budget_and_save_load(tmp_path):
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
    assert back[3].accumulator_bound == "split"
    back.eval()
    np.testing.assert_array_equal(back(X), net(X))


def test_bad_accumulator_bound():
    with pytest.raises(ValueError, match="accumulator_bound"):
        nn.QuantLinear(4, 2, accumulator_bit_width=7, accumulator_bound="l2")
