"""Accumulator-aware quantization (A2Q): a proven accumulator bit width per layer.

`QuantLinear(..., accumulator_bit_width=P)` and `QuantConv2d(..., accumulator_bit_width=P)`
quantize their weights as Brevitas' `Int8AccumulatorAwareWeightQuant` (Colbert, Pappalardo
and Petri-Koenig, "A2Q: Accumulator-Aware Quantization with Guaranteed Overflow Avoidance";
Brevitas `AccumulatorAwareParameterPreScaling`, `get_upper_bound_on_l1_norm`), in the C core
(csrc/a2q.c).  Per output channel, with the weight quantizer's scale s (constant or abs-max of
the float weights v) and a learned norm g (one per channel, "weight_norm"):

    T   = (2^(P-1) - 1) * 2^(signed_in - N)      N, signed_in: the input codes' bits and sign
    c   = min(|g| / s, T)
    q_i = clamp(trunc(v_i * c / ||v||_1), qmin, qmax)     (round toward zero, as Brevitas)
    w_i = s * q_i

With an abs-max weight quantizer (Int8WeightPerTensorFloat and its kind) the scale is taken
per output channel as s = |g| max|v| / (t ||v||_1) (t: the quantizer's int_threshold), so that
|g| / s is the L1 norm of the row's abs-max codes t v / max|v|: the codes are the (truncated)
abs-max codes while they fit the budget and are capped at T otherwise, never saturate, and g
is the L1 norm of the effective weights (Brevitas learns s as a separate parameter; deriving
it from g keeps magnitude and direction apart, which is what keeps training stable here).

so ||q||_1 <= c <= T (truncation never increases a magnitude; an integer check after rounding
removes any excess float error could add).  Every N-bit input code has |x| <= 2^(N - signed_in)
(unsigned [0, 2^N - 1], signed [-2^(N-1), 2^(N-1) - 1]), hence
|sum q_i x_i| <= ||q||_1 2^(N - signed_in) <= 2^(P-1) - 1: the accumulator fits P signed bits
for every input, whatever the data.  N and the sign come from the quantizer that feeds the
layer (through Flatten/Reshape/Transpose; N + 1 after a residual add); a layer without such
an input is refused.  g starts at ||v||_1 of each channel at the first training forward (as
Brevitas initialises it from the weights), so a layer inside its budget starts from its float
weights.  Gradients are straight through trunc and clamp; see csrc/a2q.h for the formulas
(checked against torch autograd in tests/test_a2q.py).

The split bound (`accumulator_bound="split"`; the library's examples use it): for unsigned
input codes x_i in [0, X], X = 2^N - 1 (after a QuantReLU, or an unsigned QuantIdentity), the
accumulator lies in [-X ||q-||_1, X ||q+||_1] (q+ and q-: the positive and negative codes),
attained when every x_i sits at 0 or X by the sign of q_i.  So

    ||q+||_1 <= Tp = (2^(P-1) - 1) / X     and     ||q-||_1 <= Tn = 2^(P-1) / X

keep it in [-2^(P-1), 2^(P-1) - 1], P signed bits, for every input: each sign may carry about
T alone (9 and 9 codes at P = 7, N = 3, against T = 7.875 for the two together).  A2Q+
(Colbert, Pappalardo, Petri-Koenig and Umuroglu, ICML 2024) bounds the same range with
zero-centred weights (sum q_i = 0, ||q||_1 <= (2^P - 2) / X); bounding the two signs apart
needs no centring.  The row's multiplier becomes k = min(|g| / (s ||v||_1), Tp / ||v+||_1,
Tn / ||v-||_1), and a capped row is filled: k grows to the largest value whose
truncated codes clamp(trunc(k v_i)) still meet floor(Tp) and floor(Tn), since truncation
drops the fractions of every k v_i and a row of many small entries would otherwise spend its
budget on codes that round to 0 (16 halvings of [k, (T + n) / ||v||], n the row's length,
csrc/a2q.c).  The growth factor is held constant in the backward
(straight through, as trunc).  For signed inputs the split form is the L1 bound T with the
same filling.  The default stays "l1", Brevitas' quantizer, so that weights trained here and
there agree; the integer checks make both bounds hold on the codes whatever float rounding does.

Rounded codes (`accumulator_rounding="round"`; the default "trunc" is Brevitas' round toward
zero): q_i = clamp(rint(k v_i)) with k the largest multiplier (not above the free one,
|g| / (s ||v||_1) or the abs-max t / m) whose rounded codes meet the floored bound, found by
the same bisection over [0, k] when rounding overshoots at the capped k.  A row within its
budget keeps its weight quantizer's own codes (truncation zeroes every |v_i| below a whole
step, twice round's dead band, and costs accuracy even where no budget binds); the backward
is the same straight-through one.  The integer checks hold the bound whatever the rounding.

Training: a tight budget from the first step can leave every code at 0 (a wide layer's
||v||_1 spreads over many inputs, and truncation zeroes them), so `fit_tightening` relaxes the
budget by a factor that decays to 1 over the first epochs and then trains at the true budget.
A2Q+'s initialisation, training the network without budgets first and starting the A2Q one
from its weights (`load_unconstrained`), then tightening, trains better again (the digits
CNN at P = 7: README).

`compile_qat_model` proves the bound: every A2Q layer's accumulator has a worst case (over all
inputs, qatfhe.worst_case) of at most P bits, or BitWidthError names the layer."""

import numpy as np

__all__ = ["budget", "split_budget", "a2q_layers", "check_budgets", "set_budgets",
           "fit_tightening", "load_unconstrained"]


def budget(acc_bits, in_bits, in_signed):
    """The L1 budget T of the integer weights of one output channel (module docstring)."""
    return (2.0 ** (acc_bits - 1) - 1.0) * 2.0 ** (int(bool(in_signed)) - in_bits)


def split_budget(acc_bits, in_bits):
    """(Tp, Tn): the budgets of the positive and of the negative integer weights of one
    output channel under the split bound, for unsigned N-bit inputs (module docstring)."""
    largest = 2.0 ** in_bits - 1.0
    return (2.0 ** (acc_bits - 1) - 1.0) / largest, 2.0 ** (acc_bits - 1) / largest


def a2q_layers(net):
    """(name, layer) of every QuantLinear / QuantConv2d of net created with an
    accumulator_bit_width, Residual blocks included."""
    from .compile import _flatten
    return [(e.name, e.layer) for e in _flatten(net)
            if getattr(e.layer, "accumulator_bit_width", None) is not None]


def set_budgets(net, bits=None, relax=1.0, layers=None):
    """Set every A2Q layer's budget (those named in `layers`, if given) to `bits` (None:
    keep each one's P) times relax >= 1."""
    for name, layer in a2q_layers(net):
        if layers is None or name in layers:
            layer.set_accumulator_bit_width(
                layer.accumulator_bit_width if bits is None else bits, relax)


def check_budgets(net, module, on_overflow="raise"):
    """Check that the worst case of every A2Q layer's accumulator in the compiled module is
    at most its accumulator_bit_width; record them in module.info["accumulator_budgets"].
    A layer over budget raises BitWidthError naming it (or warns, on_overflow="warn")."""
    from .compile import _report_overflow
    report = module.bit_width_report()
    checks = []
    for name, layer in a2q_layers(net):
        relax = getattr(layer, "_a2q_relax", 1.0)
        rows = [r for k, r in enumerate(report) if r["kind"] == "accumulator"
                and module.ops[k - 1].layer == layer.index]
        worst = max((r.get("worst_bits", r["static_bits"]) for r in rows), default=0)
        checks.append({"layer": name, "accumulator_bit_width": layer.accumulator_bit_width,
                       "worst_case_bits": worst, "relax": relax})
        if worst > layer.accumulator_bit_width or relax != 1.0:
            message = (f"{name} has accumulator_bit_width={layer.accumulator_bit_width} but its "
                       f"accumulator needs {worst} bits in the worst case"
                       + (f" (its budget is still relaxed by {relax:g}: call "
                          f"set_accumulator_bit_width(P) before compiling)" if relax != 1.0
                          else " (its input codes are wider than the layer was built for)"))
            _report_overflow(message, on_overflow, stacklevel=4)
    module.info["accumulator_budgets"] = checks
    return checks


def load_unconstrained(net, state):
    """Start the A2Q network `net` from `state`, the state_dict() of the same architecture
    trained without accumulator budgets (A2Q+'s initialisation: train unconstrained first,
    then bring the weights under the budget and fine-tune, e.g. with fit_tightening).
    Every tensor of net but the A2Q norms must be in state, with the same shape; the norms
    g of the layers that had no budget in state are re-initialised from the loaded weights
    at the next training forward, so that a row within its budget starts from exactly the
    codes the unconstrained layer had (with accumulator_rounding="round": clamp(rint(w / s)),
    its quantizer's codes); layers that had one keep their norms."""
    own = net.state_dict()
    a2q_names = {f"{layer.index}.{t}" for _, layer in a2q_layers(net)
                 for t in ("weight_norm", "weight_norm_init")}
    missing = sorted(set(own) - set(state) - a2q_names)
    unknown = sorted(set(state) - set(own))
    if missing or unknown:
        raise ValueError(f"state does not match this network: missing {missing}, unexpected "
                         f"{unknown} (expected the state_dict of the same architecture)")
    merged = dict(own)
    merged.update(state)
    for name in a2q_names - set(state):
        if name.endswith("weight_norm_init"):
            merged[name] = np.zeros_like(own[name])
    net.load_state_dict(merged)
    return net


def fit_tightening(net, X, y, epochs, tighten_epochs, relax_start=64.0, batch_size=1,
                   chunks=10, final_lr=None, seed=0, layers=None):
    """Train an A2Q network with its budgets relaxed by a factor decaying geometrically from
    relax_start to 1 over tighten_epochs epochs (updated `chunks` times per epoch), then
    epochs - tighten_epochs epochs at the true budgets (learning rate final_lr if given).
    layers: the names (as a2q_layers gives them) of the A2Q layers to relax; None: all; the
    others stay at their budgets.  The network's optimizer must be set.  Returns the
    test-free training history."""
    if layers is not None:
        names = {name for name, _ in a2q_layers(net)}
        unknown = sorted(set(layers) - names)
        if unknown:
            raise ValueError(f"layers {unknown} are not A2Q layers of this network; expected "
                             f"some of {sorted(names)}")
    rng = np.random.default_rng(seed)
    n = len(X)
    steps = max(1, tighten_epochs * chunks)
    history = {"loss": [], "accuracy": []}
    for epoch in range(tighten_epochs):
        order = rng.permutation(n)
        for c in range(chunks):
            set_budgets(net, relax=relax_start ** (1.0 - (epoch * chunks + c) / steps),
                        layers=layers)
            part = order[c * n // chunks:(c + 1) * n // chunks]
            h = net.fit(X[part], y[part], epochs=1, batch_size=batch_size, progress=False)
            for key in history:
                history[key] += h[key]
    set_budgets(net, relax=1.0)
    if final_lr is not None:
        net.optimizer.lr = final_lr
    if epochs > tighten_epochs:
        h = net.fit(X, y, epochs=epochs - tighten_epochs, batch_size=batch_size, progress=False)
        for key in history:
            history[key] += h[key]
    return history


def tutorial_run(seed, accumulator_bits=7, hidden=100, epochs=8, tighten_epochs=6,
                 relax_start=64.0, lr=1e-3, final_lr=1e-4, n_train=None, output_bits="same",
                 weight_quant="const", bound="split", rounding="trunc", pretrain_epochs=0,
                 relax="all"):
    """One run of the tutorial architecture (2-hidden-hidden-2, 3 bits, experiments.qat_net's
    U(-1, 1) init) with accumulator_bit_width on the two hidden QuantLinear layers and
    output_bits on the last one ("same": accumulator_bits; None: no budget; its accumulator
    is returned, not looked up), weights quantized by the tutorial's CommonWeightQuant
    (weight_quant="const") or by abs-max scales ("absmax"), under the accumulator_bound
    `bound` ("split" or "l1") with codes rounded by `rounding` ("trunc" or "round"), trained
    by fit_tightening (AdamW lr, weight decay 0.01, batch 1); with pretrain_epochs > 0 the
    same network without budgets trains that many epochs first (AdamW lr) and the A2Q
    network starts from it (load_unconstrained); relax: the budgets fit_tightening relaxes,
    "all" or "hidden" (the two hidden layers only: the last layer keeps its budget from the
    first step, so that the hidden features grow into what its few units can read);
    n_train limits the training set (tests).
    Returns a dict: seed, accuracy (integer circuit on the test points), fake_quant_accuracy,
    agree (circuit == fake-quant on every test point), max_bit_width, worst_case_bit_width,
    worst_case_method and the per-layer budgets."""
    from . import datasets, nn, optim
    from .compile import compile_qat_model
    from .experiments import qat_net
    if relax not in ("all", "hidden"):
        raise ValueError(f'relax must be "all" or "hidden", got {relax!r}')
    X, X_test, y, y_test = datasets.checkerboard(seed=seed)
    if n_train is not None:
        X, y = X[:n_train], y[:n_train]
    template = qat_net(hidden, seed)
    quant = nn.CommonWeightQuant if weight_quant == "const" else nn.Int8WeightPerTensorFloat
    weights = dict(bias=True, weight_quant=quant, weight_bit_width=3,
                   accumulator_bound=bound, accumulator_rounding=rounding)
    last_bits = accumulator_bits if output_bits == "same" else output_bits

    def tutorial_net(budgets):                       # budgets=False: the same net without A2Q
        def linear(n_in, n_out, bits):
            return nn.QuantLinear(n_in, n_out, **dict(
                weights, accumulator_bit_width=bits if budgets else None))
        net = nn.Sequential(
            nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
            linear(2, hidden, accumulator_bits), nn.QuantReLU(bit_width=3),
            linear(hidden, hidden, accumulator_bits), nn.QuantReLU(bit_width=3),
            linear(hidden, 2, last_bits), seed=seed)
        for i in (1, 3, 5):                          # the same initial weights as the tutorial's
            net[i].weight = template[i].weight
            net[i].bias = template[i].bias
        return net

    net = tutorial_net(True)
    if pretrain_epochs > 0:                          # A2Q+: unconstrained first, then budgets
        plain = tutorial_net(False)
        optim.AdamW(plain.parameters(), lr=lr, weight_decay=0.01)
        plain.fit(X, y, epochs=pretrain_epochs, batch_size=1, seed=seed, progress=False)
        load_unconstrained(net, plain.state_dict())
    names = [name for name, _ in a2q_layers(net)]
    optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    fit_tightening(net, X, y, epochs, tighten_epochs, relax_start=relax_start, batch_size=1,
                   final_lr=final_lr, seed=seed, layers=None if relax == "all" else names[:2])
    net.eval()
    module = compile_qat_model(net, X)
    pred = module.predict(X_test, fhe="simulate")
    return {"seed": seed, "accuracy": float(np.mean(pred == y_test)),
            "fake_quant_accuracy": float(net.score(X_test, y_test)),
            "agree": bool((pred == net.predict(X_test)).all()),
            "max_bit_width": module.max_bit_width,
            "worst_case_bit_width": module.worst_case_bit_width,
            "worst_case_method": module.worst_case_method,
            "lookup_input_worst_case_bits": lookup_input_worst_case(module),
            "budgets": module.info["accumulator_budgets"]}


def lookup_input_worst_case(module):
    """Largest worst-case bit width among the values that enter a table lookup (what sets
    the cost of the programmable bootstraps; the returned accumulator is not one)."""
    report = module.bit_width_report()
    return max((report[op.src].get("worst_bits", report[op.src]["static_bits"])
                for op in module.ops if op.kind == "lookup"), default=0)


def _tutorial_run_kwargs(item):
    seed, kwargs = item
    return tutorial_run(seed, **kwargs)


def tutorial_experiment(seeds=range(10), jobs=1, **kwargs):
    """tutorial_run over seeds, spread over `jobs` spawned processes (results do not depend
    on jobs); returns {"runs": [...], "mean_accuracy", "max_worst_case_bit_width"}."""
    items = [(int(s), kwargs) for s in seeds]
    if jobs > 1 and len(items) > 1:
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(min(jobs, len(items))) as pool:
            runs = pool.map(_tutorial_run_kwargs, items)
    else:
        runs = [_tutorial_run_kwargs(item) for item in items]
    return {"runs": runs, "mean_accuracy": float(np.mean([r["accuracy"] for r in runs])),
            "max_worst_case_bit_width": max(r["worst_case_bit_width"] for r in runs)}
