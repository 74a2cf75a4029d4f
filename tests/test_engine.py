"""The training engine (qatfhe.nn / qatfhe.optim / the C core) against the NumPy oracle.

Every comparison copies the engine's parameters and quantizer buffers into the oracle
(tests/reference.py, written from REFERENCE.md) and checks forward outputs in train and
eval mode, the loss, every parameter gradient and the parameters after AdamW / SGD steps.
The engine treats a learned activation threshold T as a parameter from the start: during
the statistics phase its gradient is zero (the oracle's None), the optimizer still visits
it (weight decay, one global step counter, as Brevitas does) and T := B at the switch, so
the oracle is stepped with zero gradients in place of None.

Also: the straight-through rules of REFERENCE.md section 2 checked analytically on the
engine, initialisation (PyTorch bounds, nn.init.uniform_, the documented xoshiro256**
streams), reproducibility of fit, save/load, state_dict, predict, batch sizes and the
container protocol."""
import zlib

import numpy as np
import pytest

import reference as ref
import qatfhe
from qatfhe import nn, optim

F32 = np.float32
MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------- building pairs
def make_layer(spec):
    """(engine layer, oracle description) of one layer spec tuple:
    ("linear", in, out[, bias]), ("relu",), ("qlinear", in, out, bits, "const"|"absmax"),
    ("qid"|"qrelu", bits, "const"|"learned"[, collect_stats_steps])."""
    kind = spec[0]
    if kind == "linear":
        bias = spec[3] if len(spec) > 3 else True
        return nn.Linear(spec[1], spec[2], bias=bias), {"kind": "linear", "in": spec[1],
                                                        "out": spec[2], "bias": bias}
    if kind == "relu":
        return nn.ReLU(), {"kind": "relu"}
    if kind == "qlinear":
        _, n_in, n_out, bits, mode = spec
        quant = nn.CommonWeightQuant if mode == "const" else nn.Int8WeightPerTensorFloat
        return (nn.QuantLinear(n_in, n_out, bias=True, weight_quant=quant, weight_bit_width=bits,
                               bias_quant=None),
                {"kind": "quant_linear", "in": n_in, "out": n_out, "bits": bits,
                 "weight_quant": mode})
    if kind in ("qid", "qrelu"):
        bits, mode = spec[1], spec[2]
        steps = spec[3] if len(spec) > 3 else 300
        cls = nn.QuantIdentity if kind == "qid" else nn.QuantReLU
        if mode == "const":
            layer = cls(act_quant=nn.CommonActQuant, bit_width=bits)
        else:
            layer = cls(bit_width=bits, collect_stats_steps=steps)
        return layer, {"kind": "quant_identity" if kind == "qid" else "quant_relu",
                       "bits": bits, "act_quant": mode, "collect_steps": steps}
    raise ValueError(spec)


def build(specs, seed=0, uniform_const=True):
    """Engine net from specs; constant-scale QuantLinear weights re-drawn U(-1, 1) as the
    tutorial does (otherwise low-bit codes would all be 0). Returns (net, descs)."""
    layers, descs = zip(*(make_layer(s) for s in specs))
    net = nn.Sequential(*layers, seed=seed)
    if uniform_const:
        for layer, d in zip(net, descs):
            if d.get("weight_quant") == "const":
                nn.init.uniform_(layer.weight, -1.0, 1.0)
    return net, list(descs)


def oracle_of(net, descs):
    """A reference.Sequential holding the engine's current parameters and buffers."""
    o = ref.Sequential(descs)
    for name, t in net._tensors.items():
        i, suffix = name.split(".", 1)
        layer = o[int(i)]
        if suffix in ("weight", "bias"):
            o.set_param(int(i), suffix, t["data"])
        elif suffix == "act_quant.threshold":
            o.set_param(int(i), "threshold", t["data"])
        elif suffix == "act_quant.stats_buffer":
            layer.quant.buffer = F32(t["data"][0])
        elif suffix == "act_quant.stats_count":
            layer.quant.counter = int(t["data"][0])
        else:
            raise AssertionError(f"unexpected tensor {name}")
    return o


def key_of(name):
    i, suffix = name.split(".", 1)
    return int(i), {"act_quant.threshold": "threshold"}.get(suffix, suffix)


def close(got, want, rtol=1e-5, what=""):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=rtol, atol=rtol * scale,
                               err_msg=what)


def compare_params(net, o, rtol=1e-5):
    params = o.parameters()
    for name, t in net._tensors.items():
        if t["kind"] == "param":
            close(t["data"], params[key_of(name)], rtol, f"parameter {name}")


def compare_grads(net, o, rtol=1e-5):
    grads, params = o.gradients(), o.parameters()
    for name, t in net._tensors.items():
        if t["kind"] == "param":
            want = grads[key_of(name)]
            want = np.zeros_like(params[key_of(name)]) if want is None else want
            close(t["grad"], want, rtol, f"gradient {name}")


def filled_grads(o):
    """The oracle's gradients: None (T in the statistics phase) makes its optimizer skip T
    entirely (no decay, no momentum, no step count), as torch does."""
    return dict(o.gradients())


def oracle_step(o, opt, X, y):
    o.zero_grad()
    o.forward(X, training=True)
    loss = o.backward(y)
    opt.step(o.parameters(), filled_grads(o))
    return loss


def engine_grads(net, o):
    """The engine's gradients, None where the oracle has none (T in the statistics phase)."""
    params, grads = o.parameters(), o.gradients()
    return {key_of(n): None if grads[key_of(n)] is None else
            t["grad"].reshape(params[key_of(n)].shape).copy()
            for n, t in net._tensors.items() if t["kind"] == "param"}


def checked_steps(net, o, ref_opt, batches):
    """Engine and oracle step side by side; loss and every gradient are compared, then the
    oracle's optimizer is fed the ENGINE's gradients for AdamW: Adam divides by sqrt(v), so
    a gradient of 1e-9 on one side and exactly 0 on the other (a float32 rounding residue,
    e.g. two equal 3-bit weight codes times softmax gradients that cancel) would become a
    step of lr/10 against none. SGD keeps the oracle's own gradients: it does not amplify."""
    for step, (X, y) in enumerate(batches):
        engine_loss = engine_step(net, X, y)
        o.zero_grad()
        o.forward(X, training=True)
        close(engine_loss, o.backward(y), what=f"loss at step {step}")
        compare_grads(net, o)
        grads = engine_grads(net, o) if isinstance(ref_opt, ref.AdamW) else filled_grads(o)
        ref_opt.step(o.parameters(), grads)
        compare_params(net, o)
        yield step


def engine_step(net, X, y):
    net.zero_grad()
    net(X)
    loss = net.loss_backward(y)
    net.optimizer.step()
    return loss


def data(rng, n, n_in, n_classes, scale=0.8):
    return (scale * rng.normal(size=(n, n_in))).astype(F32), rng.integers(0, n_classes, n)


# ---------------------------------------------------------------- random architectures
def random_specs(rng, learned_steps=300):
    def act(bits=None):
        kind = str(rng.choice(["qid", "qrelu"]))
        mode = str(rng.choice(["const", "learned"]))
        return (kind, int(rng.integers(2, 9)) if bits is None else bits, mode, learned_steps)

    def weight(n_in, n_out):
        choice = int(rng.integers(0, 3))
        if choice == 0:
            return ("linear", n_in, n_out, bool(rng.random() < 0.8))
        return ("qlinear", n_in, n_out, int(rng.integers(2, 9)),
                "const" if choice == 1 else "absmax")

    width = int(rng.integers(1, 6))
    specs = [act()] if rng.random() < 0.6 else []
    for _ in range(int(rng.integers(1, 3))):
        n_out = int(rng.integers(1, 7))
        specs.append(weight(width, n_out))
        width = n_out
        follow = int(rng.integers(0, 4))
        if follow == 1:
            specs.append(("relu",))
        elif follow >= 2:
            specs.append(act())
    specs.append(weight(width, int(rng.integers(2, 5))))
    return specs


ARCHITECTURES = {
    "float": [("linear", 3, 5), ("relu",), ("linear", 5, 4, False), ("relu",), ("linear", 4, 3)],
    "tutorial-3bit": [("qid", 3, "const"), ("qlinear", 2, 6, 3, "const"), ("qrelu", 3, "learned"),
                      ("qlinear", 6, 6, 3, "const"), ("qrelu", 3, "learned"),
                      ("qlinear", 6, 2, 3, "const")],
    "brevitas-defaults": [("qid", 8, "learned"), ("qlinear", 4, 5, 8, "absmax"),
                          ("qrelu", 8, "learned"), ("qlinear", 5, 3, 8, "absmax")],
    "bits-2": [("qid", 2, "const"), ("qlinear", 3, 4, 2, "absmax"), ("qrelu", 2, "const"),
               ("qlinear", 4, 2, 2, "const")],
    "mixed-4-5-6-7": [("qid", 4, "learned"), ("linear", 3, 4), ("qrelu", 5, "const"),
                      ("qlinear", 4, 5, 6, "absmax"), ("relu",), ("qid", 7, "learned"),
                      ("qlinear", 5, 3, 7, "const")],
    "act-after-act": [("linear", 2, 4), ("qrelu", 6, "learned"), ("qid", 3, "const"),
                      ("qlinear", 4, 2, 5, "absmax")],
}


def all_cases():
    cases = [(name, specs) for name, specs in ARCHITECTURES.items()]
    for seed in range(24):
        cases.append((f"random-{seed}", random_specs(np.random.default_rng(1000 + seed))))
    return cases


CASES = all_cases()


def test_cases_cover_every_layer_type_and_bit_width():
    seen, bits = set(), set()
    for _, specs in CASES:
        for s in specs:
            seen.add(s[0] if s[0] in ("linear", "relu") else (s[0], s[-1] if s[0] == "qlinear"
                                                               else s[2]))
            if s[0] in ("qid", "qrelu"):
                bits.add(s[1])
            if s[0] == "qlinear":
                bits.add(s[3])
    assert {"linear", "relu", ("qlinear", "const"), ("qlinear", "absmax"), ("qid", "const"),
            ("qid", "learned"), ("qrelu", "const"), ("qrelu", "learned")} <= seen
    assert set(range(2, 9)) <= bits


# ---------------------------------------------------------------- forward, loss, gradients
@pytest.mark.parametrize("name,specs", CASES, ids=[c[0] for c in CASES])
def test_forward_loss_gradients_match_oracle(name, specs):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    net, descs = build(specs, seed=len(name))
    o = oracle_of(net, descs)
    X, y = data(rng, 7, net.in_features, net.out_features)
    close(net.eval()(X), o.forward(X, training=False), what="eval forward before training")
    net.train()
    for use_loss_object in (False, True):
        net.zero_grad()
        o.zero_grad()
        out = net(X)
        close(out, o.forward(X, training=True), what="train forward")
        if use_loss_object:
            loss = nn.CrossEntropyLoss()(out, y)
            loss.backward()
        else:
            loss = net.loss_backward(y)
        close(loss, o.backward(y), what="loss")
        compare_grads(net, o)
    close(net.eval()(X), o.forward(X, training=False), what="eval forward after training forwards")


def test_gradients_accumulate_until_zero_grad():
    net, descs = build(ARCHITECTURES["mixed-4-5-6-7"], seed=3)
    X, y = data(np.random.default_rng(3), 5, 3, 3)
    net.zero_grad()
    net(X)
    net.loss_backward(y)
    first = {n: t["grad"].copy() for n, t in net._tensors.items() if t["kind"] == "param"}
    o = oracle_of(net, descs)  # state after one training forward: the second one's oracle
    net(X)
    net.loss_backward(y)
    o.forward(X)
    o.backward(y)
    for name, g in first.items():
        want = o.gradients()[key_of(name)]
        want = 0 if want is None else want
        close(net._tensors[name]["grad"], g + want, what=f"accumulated {name}")
    net.zero_grad()
    assert all(not t["grad"].any() for t in net._tensors.values() if t["kind"] == "param")


# ---------------------------------------------------------------- optimizer steps
OPTIMIZERS = [
    ("adamw-default", lambda p: optim.AdamW(p), lambda: ref.AdamW()),
    ("adamw-custom", lambda p: optim.AdamW(p, lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
     lambda: ref.AdamW(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("sgd", lambda p: optim.SGD(p, lr=0.05), lambda: ref.SGD(lr=0.05)),
    ("sgd-momentum", lambda p: optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01),
     lambda: ref.SGD(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("sgd-nesterov", lambda p: optim.SGD(p, lr=0.03, momentum=0.8, nesterov=True),
     lambda: ref.SGD(lr=0.03, momentum=0.8, nesterov=True)),
]
STEP_CASES = [c for c in CASES if not c[0].startswith("random")] + CASES[-6:]


@pytest.mark.parametrize("opt_name,make_opt,make_ref", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
@pytest.mark.parametrize("name,specs", STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_optimizer_steps_match_oracle(name, specs, opt_name, make_opt, make_ref):
    rng = np.random.default_rng(7)
    net, descs = build(specs, seed=11)
    make_opt(net.parameters())
    o, ref_opt = oracle_of(net, descs), make_ref()
    batches = [data(rng, n, net.in_features, net.out_features) for n in (1, 4, 3, 6, 2)]
    for _ in checked_steps(net, o, ref_opt, batches):
        pass
    assert net.optimizer.state_step == 5


@pytest.mark.parametrize("opt_name,make_opt,make_ref", OPTIMIZERS[:2] + OPTIMIZERS[3:4],
                         ids=[o[0] for o in OPTIMIZERS[:2] + OPTIMIZERS[3:4]])
def test_learned_threshold_across_the_switch(opt_name, make_opt, make_ref):
    """collect_stats_steps=5: steps 1-5 use batch statistics, the 6th training forward sets
    T := B, from then on T is trained. Before the switch T has no gradient and the optimizer
    skips it (no decay, no momentum, no step count), as torch skips a parameter whose grad
    is None; its bias correction counts its own steps from the switch."""
    specs = [("linear", 3, 6), ("qrelu", 3, "learned", 5), ("qlinear", 6, 5, 4, "absmax"),
             ("qid", 4, "learned", 5), ("linear", 5, 3)]
    net, descs = build(specs, seed=5)
    make_opt(net.parameters())
    o, ref_opt = oracle_of(net, descs), make_ref()
    rng = np.random.default_rng(5)
    X_eval, _ = data(rng, 9, 3, 3)
    batches = [data(rng, 4, 3, 3) for _ in range(10)]
    for step in checked_steps(net, o, ref_opt, batches):
        count = net._tensors["1.act_quant.stats_count"]["data"][0]
        assert count == min(step + 1, 5) + (step >= 5)
        if step < 5:
            assert net._tensors["1.act_quant.threshold"]["grad"][0] == 0.0
        else:
            assert net._tensors["1.act_quant.threshold"]["grad"][0] != 0.0
        if step == 5:  # the switch just happened: T was B, then one optimizer step
            assert net._tensors["1.act_quant.stats_buffer"]["data"][0] == o[1].quant.buffer
        close(net.eval()(X_eval), o.forward(X_eval, training=False), what="eval forward")
        close(net[1].scale(), o[1].quant.scale_of(
            o[1].quant.buffer if o[1].quant.counter <= 5 else o[1].params["threshold"]))
        net.train()


# ---------------------------------------------------------------- straight-through rules
def identity_feed(layer, k, seed=0):
    """Linear(k, k) with W = I, b = 0 feeding `layer`, then Linear(k, k) = I: the bias
    gradient of layer 0 is d loss / d (input of `layer`), batch size 1."""
    net = nn.Sequential(nn.Linear(k, k), layer, nn.Linear(k, k, bias=False), seed=seed)
    net[0].weight = np.eye(k, dtype=F32)
    net[0].bias = np.zeros(k, F32)
    net[2].weight = np.eye(k, dtype=F32)
    return net


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 5, 8])
def test_const_activation_ste_is_the_clamp_mask(relu, bits):
    cls = nn.QuantReLU if relu else nn.QuantIdentity
    net = identity_feed(cls(act_quant=nn.CommonActQuant, bit_width=bits), 64)
    q = net[1].act_quant
    s = F32(1.0) / F32(q.int_threshold)
    rng = np.random.default_rng(bits)
    x = rng.uniform(-1.6, 1.6, (1, 64)).astype(F32)
    x[0, :4] = [0.0, -0.0, 2.0, -2.0]
    dy = rng.normal(size=(1, 64)).astype(F32)
    y = net(x)
    codes = np.clip(np.rint((np.maximum(x, 0) if relu else x) / s), q.qmin, q.qmax)
    np.testing.assert_array_equal(y, s * codes.astype(F32))
    net.zero_grad()
    net.backward(dy)
    v = (np.maximum(x, 0) if relu else x) / s
    mask = (np.rint(v) >= q.qmin) & (np.rint(v) <= q.qmax)
    if relu:
        mask &= x > 0
    np.testing.assert_array_equal(net[0].bias_grad, (dy * mask)[0])
    assert 0 < mask.sum() < 64  # both in range and clamped entries were exercised
    np.testing.assert_array_equal(net[2].weight_grad, dy.T @ y)


@pytest.mark.parametrize("kind", ["qid", "qrelu"])
def test_learned_threshold_ste_analytic(kind):
    """Statistics phase: s = max|x| / int_threshold, dL/dx = dy * mask plus dL/dT routed to
    the (first) max-|x| element times its sign. Parameter phase: dL/dT =
    sum dy * (round(x/s) - x/s | qmin | qmax) / int_threshold, and dL/dx = dy * mask."""
    cls = nn.QuantIdentity if kind == "qid" else nn.QuantReLU
    net = identity_feed(cls(bit_width=3, collect_stats_steps=1), 32)
    q = net[1].act_quant
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 32)).astype(F32)
    i_max = int(np.argmax(np.abs(x) if kind == "qid" else np.maximum(x, 0)))
    dy = rng.normal(size=(1, 32)).astype(F32)
    relu = kind == "qrelu"
    xr = np.maximum(x, 0) if relu else x
    active = (x > 0) if relu else np.ones_like(x, bool)

    def analytic(s):
        v = xr / s
        r = np.rint(v)
        inside = (r >= q.qmin) & (r <= q.qmax)
        dyds = np.where(inside, r - v.astype(np.float64), np.clip(r, q.qmin, q.qmax))
        return dy * (inside & active), float(np.sum(dy * dyds)) / q.int_threshold

    stat = F32(np.abs(xr).max())
    s = stat / F32(q.int_threshold)
    net.zero_grad()
    np.testing.assert_array_equal(net(x), s * np.clip(np.rint(xr / s), q.qmin, q.qmax).astype(F32))
    net.backward(dy)
    dx, dT = analytic(s)
    dx[0, i_max] += F32(dT) * np.sign(x[0, i_max])
    close(net[0].bias_grad, dx[0], rtol=1e-6)
    assert net[1].threshold.tolist() == [1.0] and net[1].threshold is not None
    assert net._tensors["1.act_quant.threshold"]["grad"][0] == 0.0
    # second training forward: T := B = stat, a parameter now
    x2 = (1.3 * rng.normal(size=(1, 32))).astype(F32)
    xr = np.maximum(x2, 0) if relu else x2
    active = (x2 > 0) if relu else np.ones_like(x2, bool)
    net.zero_grad()
    net(x2)
    net.backward(dy)
    assert net[1].threshold[0] == stat
    dx, dT = analytic(s)
    close(net[0].bias_grad, dx[0], rtol=1e-6)
    close(net._tensors["1.act_quant.threshold"]["grad"], [dT], rtol=1e-5)


@pytest.mark.parametrize("mode", ["const", "absmax"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weight_ste_has_no_clamp_mask(mode, bits):
    """dW = dy^T x everywhere (even where w is clamped); abs-max adds dL/ds / int_threshold
    * sign to the max-|w| element, dL/ds = sum dW_q * (q - w/s)."""
    quant = nn.CommonWeightQuant if mode == "const" else nn.Int8WeightPerTensorFloat
    net = nn.Sequential(nn.QuantLinear(6, 4, weight_quant=quant, weight_bit_width=bits), seed=1)
    rng = np.random.default_rng(bits)
    w = rng.uniform(-1.5, 1.5, (4, 6)).astype(F32)  # const threshold 1: some entries clamp
    net[0].weight = w
    x = rng.normal(size=(3, 6)).astype(F32)
    dy = rng.normal(size=(3, 4)).astype(F32)
    qw = net[0].weight_quant
    s = F32(1.0) / F32(qw.int_threshold) if mode == "const" else \
        F32(np.abs(w).max()) / F32(qw.int_threshold)
    codes = np.clip(np.rint(w / s), qw.qmin, qw.qmax)
    got_codes, got_s = net[0].quant_weight()
    np.testing.assert_array_equal(got_codes, codes)
    assert got_s == s
    close(net(x), x @ (s * codes.astype(F32)).T + net[0].bias, rtol=1e-6)
    net.zero_grad()
    net.backward(dy)
    want = (dy.T @ x).astype(np.float64)
    if mode == "absmax":
        k = np.unravel_index(np.argmax(np.abs(w)), w.shape)
        ds = float(np.sum(want * (codes - w.astype(np.float64) / s)))
        want[k] += ds / qw.int_threshold * np.sign(w[k])
    else:
        assert (np.abs(w) > 1).any()
    close(net[0].weight_grad, want, rtol=1e-5)
    close(net[0].bias_grad, dy.sum(axis=0), rtol=1e-6)


def test_relu_gradient_at_zero_is_zero():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), seed=0)
    net[0].weight = np.eye(3, dtype=F32)
    net[0].bias = np.zeros(3, F32)
    net(np.array([[0.0, -1.0, 2.0]], F32))
    net.zero_grad()
    net.backward(np.ones((1, 3), F32))
    np.testing.assert_array_equal(net[0].bias_grad, [0.0, 0.0, 1.0])


# ---------------------------------------------------------------- the documented RNG
class Xoshiro:
    """xoshiro256** seeded from (seed, stream) through splitmix64, as rng.h documents:
    uniform = top 24 bits * 2^-24, U[a, b) = a + (b - a) u in float32, Lemire's bounded
    integers, Fisher-Yates from the last element down."""

    def __init__(self, seed, stream):
        x = (seed ^ (stream * 0xD1B54A32D192ED03)) & MASK64
        self.s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & MASK64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
            self.s.append(z ^ (z >> 31))

    def next(self):
        s = self.s
        rotl = lambda v, k: ((v << k) | (v >> (64 - k))) & MASK64  # noqa: E731
        result = (rotl((s[1] * 5) & MASK64, 7) * 9) & MASK64
        t = (s[1] << 17) & MASK64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def uniform(self, n, a, b):
        a, b = F32(a), F32(b)
        u = np.array([self.next() >> 40 for _ in range(n)], np.float64).astype(F32) * F32(2.0 ** -24)
        return a + (b - a) * u

    def below(self, n):
        m = self.next() * n
        if (m & MASK64) < n:
            threshold = ((1 << 64) - n) % n
            while (m & MASK64) < threshold:
                m = self.next() * n
        return m >> 64

    def permutation(self, n):
        perm = list(range(n))
        for i in range(n - 1, 0, -1):
            j = self.below(i + 1)
            perm[i], perm[j] = perm[j], perm[i]
        return np.array(perm)


def test_default_init_is_pytorch_bounds_from_the_seeded_stream():
    net = nn.Sequential(nn.Linear(2, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                        nn.QuantLinear(100, 3), seed=42)
    stream = Xoshiro(42, 0)
    for layer in (net[0], net[2], net[4]):
        bound = F32(1.0) / np.sqrt(F32(layer.in_features))
        for param in (layer.weight, layer.bias):
            assert param.dtype == F32 and np.all(np.abs(param) <= bound)
            np.testing.assert_array_equal(param.ravel(), stream.uniform(param.size, -bound, bound))
    w = net[2].weight
    assert w.min() < -0.09 and w.max() > 0.09 and abs(w.mean()) < 0.003
    assert abs(w.var() - 0.01 / 3) < 0.0002  # U(-b, b) variance b^2 / 3


def test_uniform_init_bounds_and_determinism():
    def make(seed):
        net = nn.Sequential(nn.QuantLinear(2, 100, weight_quant=nn.CommonWeightQuant),
                            nn.QuantReLU(), nn.QuantLinear(100, 2), seed=seed)
        for i in (0, 2):
            assert nn.init.uniform_(net[i].weight, -1, 1) is net[i].weight
        return net

    a, b, c = make(7), make(7), make(8)
    for i in (0, 2):
        w = a[i].weight
        assert w.min() >= -1 and w.max() < 1 and w.min() < -0.95 and w.max() > 0.95
        np.testing.assert_array_equal(w, b[i].weight)
        assert not np.array_equal(w, c[i].weight)
    assert abs(a[2].weight.mean()) < 0.1 and abs(a[0].weight.var() - 1 / 3) < 0.05
    # the draws continue the initialisation stream after the default init
    stream = Xoshiro(7, 0)
    for layer in (a[0], a[2]):
        bound = F32(1.0) / np.sqrt(F32(layer.in_features))
        stream.uniform(layer.weight.size + layer.bias.size, -bound, bound)
    np.testing.assert_array_equal(a[0].weight.ravel(), stream.uniform(200, -1, 1))
    np.testing.assert_array_equal(a[2].weight.ravel(), stream.uniform(200, -1, 1))
    with pytest.raises(ValueError, match="uniform_"):
        nn.init.uniform_(np.zeros(3, F32), -1, 1)


# ---------------------------------------------------------------- fit
def tutorial_like(seed=0, hidden=8, steps=300):
    return build([("qid", 3, "const"), ("qlinear", 2, hidden, 3, "const"),
                  ("qrelu", 3, "learned", steps), ("qlinear", hidden, hidden, 3, "const"),
                  ("qrelu", 3, "learned", steps), ("qlinear", hidden, 2, 3, "const")], seed=seed)


@pytest.mark.parametrize("batch_size", [1, 3, 4, 7, 11, 50])
def test_fit_equals_shuffled_step_loop_of_the_oracle(batch_size):
    """fit(seed=s): epoch e shuffles with stream (s + e, 2), batches in order (the last may
    be smaller), each one zero_grad, forward, cross-entropy, backward, step."""
    net, descs = tutorial_like(seed=2, steps=4)
    # eps 1e-4: Adam must not amplify float32 rounding residues (see checked_steps)
    opt = optim.AdamW(net.parameters(), lr=0.01, eps=1e-4)
    o, ref_opt = oracle_of(net, descs), ref.AdamW(lr=0.01, eps=1e-4)
    rng = np.random.default_rng(batch_size)
    X = rng.uniform(0, 1, (10, 2)).astype(F32)
    y = rng.integers(0, 2, 10)
    history = net.fit(X, y, epochs=2, batch_size=batch_size, seed=123, progress=False)
    losses, hits = [], []
    for epoch in range(2):
        perm = Xoshiro(123 + epoch, 2).permutation(10)
        total, correct = 0.0, 0
        for start in range(0, 10, batch_size):
            rows = perm[start:start + batch_size]
            o.zero_grad()
            logits = o.forward(X[rows])
            correct += int(np.sum(logits.argmax(axis=1) == y[rows]))
            total += o.backward(y[rows]) * len(rows)
            ref_opt.step(o.parameters(), filled_grads(o))
        losses.append(total / 10)
        hits.append(correct / 10)
    close(history["loss"], losses)
    assert history["accuracy"] == hits
    compare_params(net, o)
    assert opt.state_step == 2 * -(-10 // batch_size)
    assert all(not t["grad"].any() for t in net._tensors.values() if t["kind"] == "param")


def checker(n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, 2)).astype(F32)
    return X, ((np.rint(3 * X[:, 0]) + np.rint(3 * X[:, 1])) % 2).astype(np.int64)


def params_of(net):
    return {n: t["data"].copy() for n, t in net._tensors.items()}


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights_different_seeds_differ():
    X, y = checker()
    runs = {}
    for seed in (3, 3, 4):
        net, _ = tutorial_like(seed=seed)
        net.fit(X, y, epochs=2, batch_size=1, progress=False)
        runs.setdefault(seed, []).append(params_of(net))
    assert same(*runs[3])
    assert not same(runs[3][0], runs[4][0])


def test_fit_seed_is_independent_of_the_network_stream():
    X, y = checker()
    a, _ = tutorial_like(seed=1)
    b, _ = tutorial_like(seed=9)          # other init and other shuffle stream
    b.load_state_dict(a.state_dict())
    stream_before = b._core.rng_state()
    for net in (a, b):
        net.fit(X, y, epochs=2, batch_size=5, seed=77, progress=False)
    assert same(params_of(a), params_of(b))
    assert b._core.rng_state() == stream_before      # fit(seed=) leaves the net's stream alone
    c, _ = tutorial_like(seed=1)
    c.fit(X, y, epochs=2, batch_size=5, seed=78, progress=False)
    assert not same(params_of(a), params_of(c))
    d, _ = tutorial_like(seed=1)                     # no seed: the net's own stream (seed, 1)
    d.fit(X, y, epochs=1, batch_size=5, progress=False)
    assert not same(params_of(a), params_of(d))


def test_fit_without_seed_uses_the_network_stream():
    """Epochs draw consecutive permutations from stream (net seed, 1)."""
    X, y = checker(n=12)
    net, descs = tutorial_like(seed=6, steps=3)
    optim.SGD(net.parameters(), lr=0.1, momentum=0.5)
    o, ref_opt = oracle_of(net, descs), ref.SGD(lr=0.1, momentum=0.5)
    net.fit(X, y, epochs=2, batch_size=5, progress=False)
    stream = Xoshiro(6, 1)
    for _ in range(2):
        perm = stream.permutation(12)
        for start in range(0, 12, 5):
            rows = perm[start:start + 5]
            oracle_step(o, ref_opt, X[rows], y[rows])
    compare_params(net, o)


# ---------------------------------------------------------------- save / load, state_dict
def test_save_load_round_trip_is_exact(tmp_path):
    X, y = checker(n=60)
    net, _ = tutorial_like(seed=4, steps=20)
    optim.AdamW(net.parameters(), lr=3e-3)
    net.fit(X, y, epochs=1, batch_size=4, progress=False)     # 15 steps: statistics phase
    path = tmp_path / "net.npz"
    net.save(path)
    loaded = qatfhe.load(path)
    assert loaded.config() == net.config()
    assert loaded.training == net.training
    assert loaded._core.optimizer_step == net._core.optimizer_step == 15
    assert loaded._core.rng_state() == net._core.rng_state()
    for name, t in net._tensors.items():
        for field in ("data", "opt_m", "opt_v"):
            if t[field] is not None:
                np.testing.assert_array_equal(loaded._tensors[name][field], t[field])
    np.testing.assert_array_equal(loaded.eval()(X), net.eval()(X))
    for other in (net, loaded):                                  # crosses the switch
        other.fit(X, y, epochs=2, batch_size=3, progress=False)
    assert same(params_of(net), params_of(loaded))
    for name, t in net._tensors.items():
        if t["kind"] == "param":
            np.testing.assert_array_equal(loaded._tensors[name]["opt_v"], t["opt_v"])


def test_save_load_keeps_sgd_eval_mode_and_masks(tmp_path):
    net = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 2), seed=3)
    optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    mask = (np.arange(12).reshape(6, 2) % 3 != 0).astype(np.uint8)
    net._core.set_mask("0.weight", mask)
    X, y = checker(n=30)
    net.fit(X, y, epochs=1, batch_size=4, progress=False)
    net.eval()
    net.save(tmp_path / "sgd.npz")
    loaded = qatfhe.load(tmp_path / "sgd.npz")
    assert not loaded.training and isinstance(loaded.optimizer, optim.SGD)
    np.testing.assert_array_equal(loaded[0].weight_mask, mask)
    for other in (net, loaded):
        other.fit(X, y, epochs=1, batch_size=4, progress=False)
    assert same(params_of(net), params_of(loaded))
    assert not net[0].weight[mask == 0].any()


def test_state_dict_round_trip():
    a, _ = tutorial_like(seed=1, steps=2)
    X, y = checker(n=40)
    a.fit(X, y, epochs=1, batch_size=8, progress=False)          # past the switch
    state = a.state_dict()
    b, _ = tutorial_like(seed=2, steps=2)
    assert not same(params_of(a), params_of(b))
    b.load_state_dict(state)
    assert same(params_of(a), params_of(b))
    np.testing.assert_array_equal(a.eval()(X), b.eval()(X))
    state["1.weight"][:] = 0                                     # copies, not views
    assert a[1].weight.any()
    with pytest.raises(ValueError, match="missing"):
        b.load_state_dict({k: v for k, v in state.items() if k != "1.bias"})
    with pytest.raises(ValueError, match="1.weight"):
        b.load_state_dict({**state, "1.weight": np.zeros((3, 3), F32)})


# ---------------------------------------------------------------- predict, batches, container
def test_predict_is_argmax_of_eval_forward_and_restores_mode():
    net, descs = build(ARCHITECTURES["brevitas-defaults"], seed=2)
    X, y = data(np.random.default_rng(0), 40, 4, 3)
    net.fit(X, y, epochs=1, batch_size=8, progress=False)
    net.train()
    pred = net.predict(X)
    assert net.training and pred.dtype == np.int64 and pred.shape == (40,)
    logits = net.eval()(X)
    np.testing.assert_array_equal(pred, np.argmax(logits, axis=1))
    np.testing.assert_array_equal(pred, oracle_of(net, descs).forward(X, training=False).argmax(1))
    assert net.score(X, y) == np.mean(pred == y)
    ties = nn.Sequential(nn.Linear(2, 3), seed=0)
    ties[0].weight = np.zeros((3, 2), F32)
    ties[0].bias = np.array([1.0, 2.0, 2.0], F32)
    assert ties.predict(np.ones((2, 2), F32)).tolist() == [1, 1]   # first maximum


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17])
def test_rows_are_independent_in_eval_and_any_batch_size_works(n):
    net, descs = build(ARCHITECTURES["mixed-4-5-6-7"], seed=n)
    X, y = data(np.random.default_rng(n), n, 3, 3)
    out = net.eval()(X)
    assert out.shape == (n, 3) and out.dtype == F32
    for i in range(n):
        np.testing.assert_array_equal(net(X[i:i + 1]), out[i:i + 1])
    net.train()
    o = oracle_of(net, descs)
    close(net(X), o.forward(X))
    close(net.loss_backward(y), o.backward(y))
    compare_grads(net, o)


def test_indexing_and_iteration_like_pytorch():
    layers = [nn.QuantIdentity(bit_width=4), nn.QuantLinear(3, 4), nn.QuantReLU(), nn.Linear(4, 2)]
    net = nn.Sequential(*layers, seed=0)
    assert len(net) == 4 and list(net) == layers
    assert net[1] is layers[1] and net[-1] is layers[3]
    assert [l.index for l in net] == [0, 1, 2, 3] and all(l.net is net for l in net)
    assert isinstance(net[3], nn.Linear) and not isinstance(net[1], nn.Linear)
    assert isinstance(net[1], nn.QuantLinear) and isinstance(net[1], nn.Module)
    assert isinstance(net[0], nn.QuantIdentity) and isinstance(net[2], nn.QuantReLU)
    assert net[1].weight.shape == (4, 3) and net[1].bias.shape == (4,)
    assert net[3].weight.flags.writeable
    net[3].weight[0, 0] = 0.25                                 # a view into the C memory
    assert net._tensors["3.weight"]["data"][0, 0] == 0.25
    net[3].bias = [1.0, 2.0]
    assert net[3].bias.tolist() == [1.0, 2.0]
    assert nn.Linear(2, 2, bias=False).has_bias is False
    assert nn.Sequential(nn.Linear(2, 2, bias=False))[0].bias is None
    with pytest.raises(IndexError):
        net[4]
    with pytest.raises(ValueError, match="already belongs"):
        nn.Sequential(layers[3])
    names = [n for n, _ in net.named_parameters()]
    assert names == ["0.act_quant.threshold", "1.weight", "1.bias", "2.act_quant.threshold",
                     "3.weight", "3.bias"]
    assert repr(net).startswith("Sequential(")


def test_quantizer_fields():
    net = nn.Sequential(nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
                        nn.QuantLinear(2, 3, weight_quant=nn.CommonWeightQuant, weight_bit_width=3),
                        nn.QuantReLU(bit_width=4), nn.QuantIdentity(bit_width=5),
                        nn.QuantLinear(3, 2, weight_bit_width=6))
    table = [(net[0].act_quant, "const", -3, 3, 3), (net[1].weight_quant, "const", -3, 3, 3),
             (net[2].act_quant, "learned", 0, 15, 15), (net[3].act_quant, "learned", -16, 15, 16),
             (net[4].weight_quant, "absmax", -31, 31, 31)]
    for q, kind, qmin, qmax, thr in table:
        assert (q.kind, q.qmin, q.qmax, q.int_threshold) == (kind, qmin, qmax, thr)
    assert net[0].scale() == F32(1) / F32(3)
    assert net[2].scale() == F32(1) / F32(15)        # eval before training: B = 1
