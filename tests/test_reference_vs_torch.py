"""Proves the NumPy oracle (tests/reference.py) against PyTorch autograd and torch.optim,
and its smooth parts against central finite differences in float64."""
import math

import numpy as np
import pytest

import reference as ref

torch = pytest.importorskip("torch")

RTOL = 1e-6


def close(a, b, rtol=RTOL, atol=1e-7):
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


def t(a, grad=False):
    return torch.tensor(np.asarray(a, np.float32), requires_grad=grad)


def torch_fake_quant(x, s, qmin, qmax, clamp_ste):
    """round by torch.round (half-even) with a straight-through gradient; the clamp either
    masks (activations) or passes the gradient straight through too (weights)."""
    v = x / s
    r = v + (torch.round(v) - v).detach()
    c = torch.clamp(r, qmin, qmax)
    if clamp_ste:
        c = r + (c - r).detach()
    return c * s


def torch_percentile(r):
    k = min(max(int(math.floor(0.01 * 99.999 * r.numel() + 0.5)), 1), r.numel())
    return r.abs().reshape(-1).kthvalue(k).values


def test_int_range_table():
    assert ref.int_range(3, True, True) == (-3, 3, 3)
    assert ref.int_range(3, True, False) == (-4, 3, 4)
    assert ref.int_range(3, False, False) == (0, 7, 7)
    assert ref.int_range(8, True, False) == (-128, 127, 128)
    assert ref.ConstQuant(3).scale == np.float32(1) / np.float32(3)


def test_linear_relu_forward_backward_match_torch():
    rng = np.random.default_rng(0)
    x, w, b, dy = (rng.normal(size=s).astype(np.float32) for s in [(5, 7), (4, 7), (4,), (5, 4)])
    b[0] = 0
    w[0] = 0  # pre-activations exactly 0 in column 0: d relu(0) = 0, as in torch
    net = ref.Sequential([{"kind": "linear", "in": 7, "out": 4}, {"kind": "relu"}])
    net.set_param(0, "weight", w)
    net.set_param(0, "bias", b)
    y = net.forward(x)
    dx = net[0].backward(net[1].backward(dy))
    tx, tw, tb = t(x, True), t(w, True), t(b, True)
    ty = torch.relu(tx @ tw.T + tb)
    ty.backward(t(dy))
    close(y, ty)
    close(dx, tx.grad)
    close(net[0].grads["weight"], tw.grad)
    close(net[0].grads["bias"], tb.grad)


@pytest.mark.parametrize("bits,signed,narrow", [(3, True, True), (3, True, False), (4, False, False), (8, True, True)])
@pytest.mark.parametrize("weight", [False, True])
def test_fake_quant_matches_torch(bits, signed, narrow, weight):
    rng = np.random.default_rng(bits)
    qmin, qmax, _ = ref.int_range(bits, signed, narrow)
    s = np.float32(0.25)
    ties = (rng.integers(-2 * qmax, 2 * qmax, 40) + 0.5).astype(np.float32) * s  # x/s = k + 1/2
    x = np.concatenate([ties, rng.uniform(-1.5, 1.5, 200).astype(np.float32) * s * qmax])
    dy = rng.normal(size=x.shape).astype(np.float32)
    backward = ref.fake_quant_backward_weight if weight else ref.fake_quant_backward_act
    dx, ds = backward(dy, x, s, qmin, qmax)
    tx, ts = t(x, True), t(s, True)
    ty = torch_fake_quant(tx, ts, qmin, qmax, clamp_ste=weight)
    ty.backward(t(dy))
    close(ref.fake_quant(x, s, qmin, qmax), ty, atol=0)
    close(dx, tx.grad, atol=0)
    close(ds, ts.grad, rtol=1e-5)


def test_absmax_weight_quant_scale_gradient_matches_torch():
    rng = np.random.default_rng(1)
    x, w, b, dy = (rng.normal(size=s).astype(np.float32) for s in [(6, 5), (3, 5), (3,), (6, 3)])
    net = ref.Sequential([{"kind": "quant_linear", "in": 5, "out": 3, "bits": 4, "weight_quant": "absmax"}])
    net.set_param(0, "weight", w)
    net.set_param(0, "bias", b)
    y = net.forward(x)
    dx = net[0].backward(dy)
    _, qmax, thr = ref.int_range(4, True, True)
    tx, tw, tb = t(x, True), t(w, True), t(b, True)
    ts = tw.abs().max() / thr
    ty = tx @ torch_fake_quant(tw, ts, -qmax, qmax, clamp_ste=True).T + tb
    ty.backward(t(dy))
    close(y, ty)
    close(dx, tx.grad)
    close(net[0].grads["weight"], tw.grad, rtol=1e-5, atol=1e-6)
    close(net[0].grads["bias"], tb.grad)


@pytest.mark.parametrize("kind,shape", [("quant_relu", (4, 6)), ("quant_identity", (4, 6)),
                                        ("quant_relu", (100, 600))])
def test_learned_act_quant_statistics_phase_matches_torch(kind, shape):
    rng = np.random.default_rng(2)
    x = rng.normal(size=shape).astype(np.float32)
    x[0, :2] = 0  # d relu(0) = 0, as in torch
    dy = rng.normal(size=shape).astype(np.float32)
    layer = ref.Layer({"kind": kind, "bits": 3})
    y = layer.forward(x, training=True)
    dx = layer.backward(dy)
    tx = t(x, True)
    r = torch.relu(tx) if kind == "quant_relu" else tx
    qmin, qmax, thr = layer.quant.qmin, layer.quant.qmax, layer.quant.int_threshold
    ty = torch_fake_quant(r, torch_percentile(r).clamp_min(1e-10) / thr, qmin, qmax, clamp_ste=False)
    ty.backward(t(dy))
    close(y, ty, atol=0)
    close(dx, tx.grad, rtol=1e-5, atol=1e-6)
    assert layer.grads["threshold"] is None
    assert layer.quant.buffer == torch_percentile(r).item()


def test_learned_act_quant_schedule_and_parameter_phase():
    rng = np.random.default_rng(3)
    layer = ref.Layer({"kind": "quant_relu", "bits": 3, "collect_steps": 2})
    q = layer.quant
    xs = [rng.normal(size=(3, 5)).astype(np.float32) for _ in range(3)]
    stats = [np.float32(np.abs(np.maximum(x, 0)).max()) for x in xs]
    layer.forward(xs[0])
    assert q.buffer == stats[0]
    layer.forward(xs[1])
    assert q.buffer == np.float32(np.float32(0.9) * stats[0] + np.float32(0.1) * stats[1])
    close(layer.forward(xs[2], training=False), ref.fake_quant(np.maximum(xs[2], 0), q.buffer / np.float32(7), 0, 7), atol=0)
    assert q.counter == 2  # eval does not count
    dy = rng.normal(size=(3, 5)).astype(np.float32)
    y = layer.forward(xs[2])  # 3rd training forward: T = B, then a parameter
    assert layer.params["threshold"] == q.buffer and q.counter == 3
    dx = layer.backward(dy)
    tx, tt = t(xs[2], True), t(q.buffer, True)
    ty = torch_fake_quant(torch.relu(tx), tt.clamp_min(1e-10) / 7, 0, 7, clamp_ste=False)
    ty.backward(t(dy))
    close(y, ty, atol=0)
    close(dx, tx.grad)
    close(layer.grads["threshold"], tt.grad, rtol=1e-5)


def test_percentile_selects_first_of_equal_elements():
    """Tie rule of the oracle (torch.kthvalue leaves it unspecified): first occurrence."""
    value, i, sign = ref.percentile_stat(np.array([[1, -3, 2], [3, -3, 0]], np.float32))
    assert (value, i, sign) == (3, 1, -1)
    x = np.random.default_rng(9).normal(size=60000).astype(np.float32)
    assert ref.percentile_stat(x)[0] == np.sort(np.abs(x))[-2]  # k = 59999 of 60000


def test_cross_entropy_matches_torch():
    rng = np.random.default_rng(4)
    z = (3 * rng.normal(size=(9, 4))).astype(np.float32)
    y = rng.integers(0, 4, 9)
    loss, dz = ref.cross_entropy(z, y)
    tz = t(z, True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(y))
    tl.backward()
    close(loss, tl)
    close(dz, tz.grad)


def run_optimizer_steps(ours, theirs_cls, kwargs, steps=6):
    rng = np.random.default_rng(5)
    params = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
    tparams = {k: torch.nn.Parameter(t(v)) for k, v in params.items()}
    theirs = theirs_cls(list(tparams.values()), **kwargs)
    for step in range(steps):
        grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
        if step % 3 == 1:
            grads["b"] = None  # skipped by both: no decay, no state change
        ours.step(params, grads)
        for k, p in tparams.items():
            p.grad = None if grads[k] is None else t(grads[k])
        theirs.step()
        for k in params:
            close(params[k], tparams[k], atol=1e-7)


@pytest.mark.parametrize("kwargs", [{}, {"lr": 0.05, "weight_decay": 0.3, "betas": (0.8, 0.99), "eps": 1e-3}])
def test_adamw_matches_torch(kwargs):
    full = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, **kwargs}
    run_optimizer_steps(ref.AdamW(**full), torch.optim.AdamW, full)


@pytest.mark.parametrize("kwargs", [{"lr": 0.1}, {"lr": 0.1, "momentum": 0.9},
                                    {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.1},
                                    {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}])
def test_sgd_matches_torch(kwargs):
    run_optimizer_steps(ref.SGD(**kwargs), torch.optim.SGD, kwargs)


def torch_net_forward(descs, tp, x):
    """The same networks written directly in torch, statistics phase of learned thresholds."""
    for i, d in enumerate(descs):
        if d["kind"] == "relu":
            x = torch.relu(x)
        elif d["kind"] in ("linear", "quant_linear"):
            w = tp[(i, "weight")]
            if d["kind"] == "quant_linear":
                _, qmax, thr = ref.int_range(d["bits"], True, True)
                s = 1.0 / thr if d["weight_quant"] == "const" else w.abs().max() / thr
                w = torch_fake_quant(w, s, -qmax, qmax, clamp_ste=True)
            x = x @ w.T + tp[(i, "bias")]
        else:
            x = torch.relu(x) if d["kind"] == "quant_relu" else x
            if d.get("act_quant", "learned") == "const":
                qmin, qmax, thr = ref.int_range(d["bits"], True, True)
                s = 1.0 / thr
            else:
                qmin, qmax, thr = ref.int_range(d["bits"], d["kind"] == "quant_identity", False)
                s = torch_percentile(x).clamp_min(1e-10) / thr
            x = torch_fake_quant(x, s, qmin, qmax, clamp_ste=False)
    return x


@pytest.mark.parametrize("quant", ["const", "default"])
def test_network_adamw_steps_match_torch(quant):
    """The R2 QAT net (const quantizers, U(-1, 1) weights, batch size 1 as in R3) and the same
    net with the Brevitas defaults (batch 8): loss, every gradient and every parameter after
    each of 4 AdamW steps. Batch 1 for the const net: its 3-bit inputs repeat across rows,
    and where several elements share the max |x| torch.kthvalue picks one arbitrarily."""
    n, rng = 6, np.random.default_rng(6)
    wq = "const" if quant == "const" else "absmax"
    aq = {"act_quant": "const"} if quant == "const" else {}
    descs = [{"kind": "quant_identity", "bits": 3, **aq},
             {"kind": "quant_linear", "in": 2, "out": n, "bits": 3, "weight_quant": wq},
             {"kind": "quant_relu", "bits": 3}, {"kind": "quant_linear", "in": n, "out": n, "bits": 3, "weight_quant": wq},
             {"kind": "quant_relu", "bits": 3}, {"kind": "quant_linear", "in": n, "out": 2, "bits": 3, "weight_quant": wq}]
    net = ref.Sequential(descs)
    tp = {}
    for key, p in net.parameters().items():
        if key[1] != "threshold":
            net.set_param(*key, rng.uniform(-1, 1, p.shape))
            tp[key] = torch.nn.Parameter(t(p))
    opt, topt = ref.AdamW(), torch.optim.AdamW(list(tp.values()), lr=1e-3, weight_decay=0.01)
    batch = 1 if quant == "const" else 8
    for _ in range(4):
        x, y = rng.uniform(0, 1, (batch, 2)).astype(np.float32), rng.integers(0, 2, batch)
        loss = net.train_step(x, y, opt)
        topt.zero_grad()
        tl = torch.nn.functional.cross_entropy(torch_net_forward(descs, tp, t(x)), torch.tensor(y))
        tl.backward()
        close(loss, tl, rtol=1e-5)
        for key, g in net.gradients().items():
            if key in tp:
                close(g, tp[key].grad, rtol=1e-4, atol=1e-6)
        topt.step()
        for key, p in tp.items():
            close(net.parameters()[key], p, atol=1e-6)


def central_difference(f, x, direction, eps=1e-6):
    return (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)


def test_linear_gradients_by_finite_differences():
    rng = np.random.default_rng(7)
    x, w, b, dy = (rng.normal(size=s) for s in [(4, 3), (5, 3), (5,), (4, 5)])
    dx, dw, db = ref.linear_backward(dy, x, w)
    for arg, grad in ((0, dx), (1, dw), (2, db)):
        direction = rng.normal(size=grad.shape)

        def f(v):
            args = [x, w, b]
            args[arg] = v
            return np.sum(dy * ref.linear_forward(*args))
        numeric = central_difference(f, [x, w, b][arg], direction)
        assert abs(numeric - np.sum(grad * direction)) < 1e-7 * max(1.0, abs(numeric))


def test_cross_entropy_gradient_by_finite_differences():
    rng = np.random.default_rng(8)
    z, y = rng.normal(size=(6, 3)), rng.integers(0, 3, 6)
    _, dz = ref.cross_entropy(z, y)
    direction = rng.normal(size=z.shape)
    numeric = central_difference(lambda v: ref.cross_entropy(v, y)[0], z, direction)
    assert abs(numeric - np.sum(dz * direction)) < 1e-8
