"""The engine against the same networks written by hand in PyTorch (autograd, torch.optim).

Fake quantization in torch: round by torch.round (half to even) with a straight-through
gradient; the clamp masks the gradient for activations and passes it for weights
(REFERENCE.md section 2). Learned activation thresholds follow Brevitas's
ParameterFromRuntimeStatsScaling: during the statistics phase the scale is the batch
statistic (the k-th smallest |x|) and T is not in the graph, so T.grad is None and
torch.optim skips T entirely (no decay, no momentum, no step count); at the switch T takes
the running buffer B (REFERENCE.md: "set to B") and counts its own steps from there.
Skipped when torch is not installed."""
import math

import numpy as np
import pytest

from qatfhe import optim
from test_engine import ARCHITECTURES, build, close, data, random_specs

torch = pytest.importorskip("torch")

F32 = np.float32


def int_range(bits, signed, narrow):
    if signed:
        half = 2 ** (bits - 1)
        return (-(half - 1), half - 1, half - 1) if narrow else (-half, half - 1, half)
    return 0, 2 ** bits - 1, 2 ** bits - 1


def fake_quant(x, s, qmin, qmax, clamp_ste):
    v = x / s
    r = v + (torch.round(v) - v).detach()
    c = torch.clamp(r, qmin, qmax)
    if clamp_ste:
        c = r + (c - r).detach()
    return c * s


class TorchNet:
    """The layer specs of test_engine.make_layer as torch code over named parameters."""

    def __init__(self, specs, net):
        self.specs = specs
        self.params = {name: torch.nn.Parameter(torch.tensor(t["data"].copy()))
                       for name, t in net._tensors.items() if t["kind"] == "param"}
        self.count = {i: 0 for i, s in enumerate(specs) if s[0] in ("qid", "qrelu")}
        self.buffer = {i: torch.tensor(1.0) for i in self.count}

    def forward(self, x, training):
        x = torch.tensor(x)
        for i, spec in enumerate(self.specs):
            kind = spec[0]
            if kind == "relu":
                x = torch.relu(x)
            elif kind in ("linear", "qlinear"):
                w, b = self.params[f"{i}.weight"], self.params.get(f"{i}.bias")
                if kind == "qlinear":
                    qmin, qmax, thr = int_range(spec[3], True, True)
                    s = torch.tensor(F32(1) / F32(thr)) if spec[4] == "const" else w.abs().max() / thr
                    w = fake_quant(w, s, qmin, qmax, clamp_ste=True)
                x = x @ w.T if b is None else x @ w.T + b
            else:
                bits, mode = spec[1], spec[2]
                if kind == "qrelu":
                    x = torch.relu(x)
                if mode == "const":
                    qmin, qmax, thr = int_range(bits, True, True)
                    s = torch.tensor(F32(1) / F32(thr))
                else:
                    qmin, qmax, thr = int_range(bits, kind == "qid", False)
                    s = self.learned_scale(i, spec, x, training) / thr
                x = fake_quant(x, s, qmin, qmax, clamp_ste=False)
        return x

    def learned_scale(self, i, spec, x, training):
        steps = spec[3] if len(spec) > 3 else 300
        T = self.params[f"{i}.act_quant.threshold"][0]
        if not training:
            return (self.buffer[i] if self.count[i] <= steps else T.abs()).detach()
        if self.count[i] < steps:
            flat = x.abs().reshape(-1)
            k = min(max(int(math.floor(0.01 * 99.999 * flat.numel() + 0.5)), 1), flat.numel())
            stat = flat.kthvalue(k).values.clamp_min(1e-10)
            with torch.no_grad():
                self.buffer[i] = stat.clone() if self.count[i] == 0 else \
                    self.buffer[i] * F32(0.9) + F32(0.1) * stat
            self.count[i] += 1
            return stat
        if self.count[i] == steps:
            with torch.no_grad():
                self.params[f"{i}.act_quant.threshold"][0] = self.buffer[i]
            self.count[i] += 1
        return T.abs().clamp_min(1e-10)


def run_and_compare(specs, seed, batches, make_engine_opt, make_torch_opt, eval_X):
    net, _ = build(specs, seed=seed)
    tnet = TorchNet(specs, net)
    make_engine_opt(net.parameters())
    topt = make_torch_opt(list(tnet.params.values()))
    with torch.no_grad():
        close(net.eval()(eval_X), tnet.forward(eval_X, False), what="eval forward")
    net.train()
    for step, (X, y) in enumerate(batches):
        net.zero_grad()
        out = net(X)
        loss = net.loss_backward(y)
        topt.zero_grad()
        tout = tnet.forward(X, True)
        tloss = torch.nn.functional.cross_entropy(tout, torch.tensor(y))
        tloss.backward()
        close(out, tout.detach().numpy(), what=f"train forward, step {step}")
        close(loss, tloss.item(), what=f"loss, step {step}")
        for name, p in tnet.params.items():
            if p.grad is None:             # T in the statistics phase: no gradient, no step
                assert not net._tensors[name]["grad"].any(), name
                continue
            close(net._tensors[name]["grad"], p.grad.numpy(), what=f"gradient {name}, step {step}")
            # the step itself from identical gradients: Adam divides by sqrt(v), so a float32
            # rounding residue (1e-9 against exactly 0) would otherwise become a step of lr/10
            p.grad = torch.tensor(net._tensors[name]["grad"].copy())
        net.optimizer.step()
        topt.step()
        for name, p in tnet.params.items():
            close(net._tensors[name]["data"], p.detach().numpy(), what=f"{name} after step {step}")
        with torch.no_grad():
            close(net.eval()(eval_X), tnet.forward(eval_X, False), what=f"eval after step {step}")
        net.train()
    return net, tnet


TORCH_CASES = {
    "float": (ARCHITECTURES["float"], 8),
    "tutorial-3bit": (ARCHITECTURES["tutorial-3bit"], 1),  # 3-bit inputs repeat across rows
    "brevitas-defaults": (ARCHITECTURES["brevitas-defaults"], 8),
    "bits-2": (ARCHITECTURES["bits-2"], 8),
    "mixed-4-5-6-7": (ARCHITECTURES["mixed-4-5-6-7"], 8),
    "random": (random_specs(np.random.default_rng(1003)), 6),
}


@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_forward_gradients_and_one_adamw_step_match_torch(name):
    specs, batch = TORCH_CASES[name]
    rng = np.random.default_rng(len(name))
    net, _ = build(specs, seed=1)
    n_in, n_out = net.in_features, net.out_features
    batches = [data(rng, batch, n_in, n_out)]
    run_and_compare(specs, 1, batches, lambda p: optim.AdamW(p, lr=1e-3),
                    lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01),
                    data(rng, 9, n_in, n_out)[0])


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_learned_thresholds_across_the_switch_match_torch(opt):
    """collect_stats_steps=2: two statistics steps, the switch, then T is trained."""
    specs = [("linear", 3, 6), ("qrelu", 4, "learned", 2), ("qlinear", 6, 5, 5, "absmax"),
             ("qid", 6, "learned", 2), ("linear", 5, 3)]
    rng = np.random.default_rng(11)
    batches = [data(rng, 5, 3, 3) for _ in range(5)]
    if opt == "adamw":
        engine_opt = lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.1)  # noqa: E731
        torch_opt = lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)  # noqa: E731
    else:
        engine_opt = lambda p: optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731
        torch_opt = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731
    net, tnet = run_and_compare(specs, 4, batches, engine_opt, torch_opt, data(rng, 7, 3, 3)[0])
    for i in (1, 3):
        assert net._tensors[f"{i}.act_quant.stats_count"]["data"][0] == 3 == tnet.count[i]
        close(net._tensors[f"{i}.act_quant.stats_buffer"]["data"], [tnet.buffer[i].item()])
