"""Independent NumPy reference ("oracle") for the qatfhe training engine.

Written from /work/shared/REFERENCE.md (cited as "R2" = section 2, "R3" = section 3) and the
PyTorch optimizer definitions, never from project code. Tensors are float32 where PyTorch
uses float32; losses and scalar reductions accumulate in float64. Shapes: x (batch, in),
W (out, in), b (out,). Backward functions *add* into parameter gradients as autograd does;
a gradient that was never written stays None (PyTorch's zero_grad(set_to_none=True)), and
the optimizers skip such parameters, as torch.optim does.
"""
import math

import numpy as np

F32 = np.float32
SCALE_MIN = 1e-10        # scale = max(T, 1e-10) / int_threshold
COLLECT_STEPS = 300      # R2: "for the first 300 training steps it is the percentile"
MOMENTUM = 0.1           # R2: "B <- 0.9 B + 0.1 stat"
PERCENTILE = 99.999      # R2: "the 99.999th percentile of |x| of the current batch"


# ---------------------------------------------------------------- integer ranges, fake quant
def int_range(bits, signed, narrow):
    """(qmin, qmax, int_threshold) from the R2 table:
    signed narrow [-(2^(b-1)-1), 2^(b-1)-1], int_threshold 2^(b-1)-1;
    signed        [-2^(b-1), 2^(b-1)-1],     int_threshold 2^(b-1);
    unsigned      [0, 2^b-1],                int_threshold 2^b-1 (narrow ignored)."""
    if signed:
        half = 2 ** (bits - 1)
        return (-(half - 1), half - 1, half - 1) if narrow else (-half, half - 1, half)
    return 0, 2 ** bits - 1, 2 ** bits - 1


def quantize(x, scale, qmin, qmax):
    """R2 "Quantize": q = clamp(round_half_even(x / s), qmin, qmax); float32 division."""
    x = np.asarray(x, F32)
    return np.clip(np.rint(x / F32(scale)), qmin, qmax).astype(F32)


def fake_quant(x, scale, qmin, qmax):
    """R2: fake-quant output y = s * q."""
    return F32(scale) * quantize(x, scale, qmin, qmax)


def fake_quant_backward_act(dy, x, scale, qmin, qmax):
    """R2 activation straight-through rule. Returns (dx, ds):
    dx = dy * 1[qmin <= round(x/s) <= qmax];
    ds = sum dy * (round(x/s) - x/s) in range, dy * qmin (resp. qmax) where clamped."""
    x, dy, s = np.asarray(x, F32), np.asarray(dy, F32), F32(scale)
    v = x / s
    r = np.rint(v)
    inside = (r >= qmin) & (r <= qmax)
    dyds = np.where(inside, r.astype(np.float64) - v, np.clip(r, qmin, qmax))
    return dy * inside, float(np.sum(dy.astype(np.float64) * dyds))


def fake_quant_backward_weight(dy, w, scale, qmin, qmax):
    """R2 weight rule, "no clamp mask": dw = dy everywhere; ds = sum dy * (q - w/s), where
    q is the clamped integer (the clamp passes the gradient straight through)."""
    w, dy, s = np.asarray(w, F32), np.asarray(dy, F32), F32(scale)
    q = quantize(w, s, qmin, qmax).astype(np.float64)
    return dy.copy(), float(np.sum(dy.astype(np.float64) * (q - w / s)))


# ---------------------------------------------------------------- quantizers
class ConstQuant:
    """CommonWeightQuant / CommonActQuant (R2): constant threshold 1.0, signed, narrow,
    zero point 0: scale = threshold / int_threshold (1/3 at 3 bits, integers [-3, 3])."""

    def __init__(self, bits, threshold=1.0, signed=True, narrow=True):
        self.qmin, self.qmax, self.int_threshold = int_range(bits, signed, narrow)
        self.scale = F32(threshold) / F32(self.int_threshold)


def absmax_scale(w, int_threshold):
    """Int8WeightPerTensorFloat (R2 table): s = max|W| / int_threshold, recomputed every
    forward. Returns (s, k, sign): k = flat index of the first max-|w| element, the only one
    the scale gradient reaches (R2), with ds/dw_k = sign(w_k) / int_threshold."""
    flat = np.asarray(w, F32).ravel()
    k = int(np.argmax(np.abs(flat)))
    return F32(abs(flat[k])) / F32(int_threshold), k, float(np.sign(flat[k]))


def percentile_stat(x, q=PERCENTILE):
    """R2: T = the 99.999th percentile of |x| over the whole batch tensor: the k-th smallest
    |x| with k = floor(0.01 q N + 0.5) clamped to [1, N] (= max|x| below 50,000 values).
    Returns (T, i, sign): i = flat index of the selected element (first occurrence among
    equal values), sign = sign(x_i), so dT/dx_i = sign."""
    flat = np.asarray(x, F32).ravel()
    n = flat.size
    k = min(max(int(math.floor(0.01 * q * n + 0.5)), 1), n)
    a = np.abs(flat)
    value = np.partition(a, k - 1)[k - 1]
    i = int(np.flatnonzero(a == value)[0])
    return F32(value), i, float(np.sign(flat[i]))


class LearnedActQuant:
    """Int8ActPerTensorFloat (signed, not narrow) / Uint8ActPerTensorFloat (unsigned) (R2).
    State: counter (training forwards so far), buffer B, parameter T ("threshold").
    Training, counter < 300: T_used = percentile_stat(x); B = stat on the first step, then
    B = 0.9 B + 0.1 stat (float32); dL/dT flows into the selected element of x (times sign).
    Training, counter == 300 (the 301st forward): T = B, then T is a trained parameter.
    Training, counter > 300: T_used = T, dL/dT = dL/ds / int_threshold (R2 "ds/dT").
    Eval: T_used = B while counter <= 300, else T. scale = max(T_used, 1e-10)/int_threshold.
    T gets no gradient (None) during collection, so the optimizer leaves it untouched."""

    def __init__(self, bits, signed, narrow=False, collect_steps=COLLECT_STEPS):
        self.qmin, self.qmax, self.int_threshold = int_range(bits, signed, narrow)
        self.collect_steps = collect_steps
        self.counter, self.buffer = 0, F32(1.0)

    def scale_of(self, t):
        return F32(max(F32(t), F32(SCALE_MIN))) / F32(self.int_threshold)

    def forward(self, x, threshold, training):
        """threshold: the float32 array of shape () holding T, updated in place at the
        switch. Returns (y, cache)."""
        stat = None
        if not training:
            t = self.buffer if self.counter <= self.collect_steps else threshold[()]
        elif self.counter < self.collect_steps:
            stat = percentile_stat(x)
            t = stat[0]
            clamped = F32(max(t, F32(SCALE_MIN)))
            self.buffer = clamped if self.counter == 0 else \
                F32(self.buffer * F32(1 - MOMENTUM) + F32(MOMENTUM) * clamped)
            self.counter += 1
        else:
            if self.counter == self.collect_steps:
                threshold[()] = self.buffer
                self.counter += 1
            t = threshold[()]
        s = self.scale_of(t)
        return fake_quant(x, s, self.qmin, self.qmax), (np.asarray(x, F32), s, stat)

    def backward(self, dy, cache):
        """Returns (dx, dT): dT is None when T is not a parameter of this forward."""
        x, s, stat = cache
        dx, ds = fake_quant_backward_act(dy, x, s, self.qmin, self.qmax)
        dt = ds / self.int_threshold
        if stat is None:
            return dx, F32(dt)
        _, i, sign = stat
        dx.ravel()[i] += F32(dt * sign)
        return dx, None


# ---------------------------------------------------------------- layers
def _accumulate(grads, name, g):
    """Autograd semantics: the first backward sets the gradient, later ones add."""
    if g is None:
        return
    g = np.asarray(g, F32)
    grads[name] = g.copy() if grads.get(name) is None else grads[name] + g


def linear_forward(x, w, b):
    """y = x W^T + b; W (out, in). Keeps the input dtype (float64 for finite differences)."""
    y = x @ w.T
    return y if b is None else y + b


def linear_backward(dy, x, w):
    """Returns (dx, dW, db): dx = dy W, dW = dy^T x, db = sum_batch dy."""
    return dy @ w, dy.T @ x, dy.sum(axis=0)


class Layer:
    """One described layer: params and grads are dicts name -> array (grad None = unset)."""

    def __init__(self, desc):
        self.desc, self.kind = dict(desc), desc["kind"]
        self.params, self.grads, self.cache, self.quant = {}, {}, None, None
        bits = desc.get("bits", 8)
        if self.kind in ("linear", "quant_linear"):
            self.params["weight"] = np.zeros((desc["out"], desc["in"]), F32)
            if desc.get("bias", True):
                self.params["bias"] = np.zeros(desc["out"], F32)
        if self.kind == "quant_linear":
            mode = desc.get("weight_quant", "absmax")
            self.quant = ConstQuant(bits) if mode == "const" else ("absmax", int_range(bits, True, True))
        elif self.kind in ("quant_identity", "quant_relu"):
            if desc.get("act_quant", "learned") == "const":
                self.quant = ConstQuant(bits)
            else:
                signed = self.kind == "quant_identity"
                self.quant = LearnedActQuant(bits, signed, narrow=False,
                                             collect_steps=desc.get("collect_steps", COLLECT_STEPS))
                self.params["threshold"] = np.array(1.0, F32)
        elif self.kind not in ("linear", "relu"):
            raise ValueError(f"unknown layer kind {self.kind!r}")
        self.grads = {name: None for name in self.params}

    def weight_scale(self):
        """Quantized weight Wq and what its backward needs."""
        w = self.params["weight"]
        if isinstance(self.quant, ConstQuant):
            q = self.quant
            return fake_quant(w, q.scale, q.qmin, q.qmax), (q.scale, q.qmin, q.qmax, None)
        qmin, qmax, thr = self.quant[1]
        s, k, sign = absmax_scale(w, thr)
        return fake_quant(w, s, qmin, qmax), (s, qmin, qmax, (k, sign, thr))

    def forward(self, x, training=True):
        x = np.asarray(x, F32)
        if self.kind == "linear":
            self.cache = x
            return linear_forward(x, self.params["weight"], self.params.get("bias"))
        if self.kind == "relu":
            self.cache = x
            return np.maximum(x, F32(0))
        if self.kind == "quant_linear":
            wq, wcache = self.weight_scale()
            self.cache = (x, wq, wcache)
            return linear_forward(x, wq, self.params.get("bias"))
        r = np.maximum(x, F32(0)) if self.kind == "quant_relu" else x
        if isinstance(self.quant, ConstQuant):
            q = self.quant
            self.cache = (x, r, None)
            return fake_quant(r, q.scale, q.qmin, q.qmax)
        y, qcache = self.quant.forward(r, self.params["threshold"], training)
        self.cache = (x, r, qcache)
        return y

    def backward(self, dy):
        """Returns dL/dx and adds parameter gradients into self.grads."""
        dy = np.asarray(dy, F32)
        if self.kind == "relu":
            return dy * (self.cache > 0)  # d relu at 0 is 0, as in PyTorch
        if self.kind == "linear":
            dx, dw, db = linear_backward(dy, self.cache, self.params["weight"])
            _accumulate(self.grads, "weight", dw)
            if "bias" in self.params:
                _accumulate(self.grads, "bias", db)
            return dx
        if self.kind == "quant_linear":
            x, wq, (s, qmin, qmax, absmax) = self.cache
            dx, dwq, db = linear_backward(dy, x, wq)
            dw, ds = fake_quant_backward_weight(dwq, self.params["weight"], s, qmin, qmax)
            if absmax is not None:  # ds/dw_k = sign(w_k) / int_threshold, k = argmax |w|
                k, sign, thr = absmax
                dw.ravel()[k] += F32(ds * sign / thr)
            _accumulate(self.grads, "weight", dw)
            if "bias" in self.params:
                _accumulate(self.grads, "bias", db)
            return dx
        x, r, qcache = self.cache
        if qcache is None:  # constant scale: no parameter
            q = self.quant
            dr, _ = fake_quant_backward_act(dy, r, q.scale, q.qmin, q.qmax)
        else:
            dr, dt = self.quant.backward(dy, qcache)
            _accumulate(self.grads, "threshold", dt)
        return dr * (x > 0) if self.kind == "quant_relu" else dr


# ---------------------------------------------------------------- loss
def cross_entropy(logits, labels):
    """R3 CrossEntropyLoss, mean over the batch: L = mean_i(logsumexp(z_i) - z_i[y_i]);
    dL/dz = (softmax(z) - onehot(y)) / N. Computed in float64; dlogits in the logits dtype."""
    z = np.asarray(logits, np.float64)
    n = z.shape[0]
    z = z - z.max(axis=1, keepdims=True)
    logsum = np.log(np.exp(z).sum(axis=1))
    rows = np.arange(n)
    loss = float(np.mean(logsum - z[rows, labels]))
    d = np.exp(z - logsum[:, None])
    d[rows, labels] -= 1.0
    return loss, (d / n).astype(np.asarray(logits).dtype)


# ---------------------------------------------------------------- optimizers
class AdamW:
    """torch.optim.AdamW (R3: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01).
    Per parameter with a gradient, step t += 1:
      p *= 1 - lr wd;  m = m + (1 - b1)(g - m);  v = b2 v + (1 - b2) g^2;
      denom = sqrt(v) / sqrt(1 - b2^t) + eps;  p -= lr / (1 - b1^t) * m / denom.
    Parameters whose gradient is None are skipped entirely (no decay, no step count)."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.state = {}  # key -> (t, m, v)

    def step(self, params, grads):
        for key, p in params.items():
            g = grads.get(key)
            if g is None:
                continue
            g = np.asarray(g, F32)
            t, m, v = self.state.get(key, (0, np.zeros_like(p), np.zeros_like(p)))
            t += 1
            p *= F32(1 - self.lr * self.wd)
            m = m + F32(1 - self.b1) * (g - m)
            v = v * F32(self.b2) + F32(1 - self.b2) * g * g
            denom = np.sqrt(v) / F32(math.sqrt(1 - self.b2 ** t)) + F32(self.eps)
            p -= F32(self.lr / (1 - self.b1 ** t)) * m / denom
            self.state[key] = (t, m, v)


class SGD:
    """torch.optim.SGD: g = g + wd p; with momentum mu: buf = g on the first step, else
    buf = mu buf + (1 - dampening) g; g = g + mu buf if nesterov else buf; p -= lr g."""

    def __init__(self, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        self.lr, self.mu, self.damp, self.wd, self.nesterov = lr, momentum, dampening, weight_decay, nesterov
        self.state = {}  # key -> momentum buffer

    def step(self, params, grads):
        for key, p in params.items():
            g = grads.get(key)
            if g is None:
                continue
            g = np.asarray(g, F32)
            if self.wd:
                g = g + F32(self.wd) * p
            if self.mu:
                buf = self.state.get(key)
                buf = g.copy() if buf is None else buf * F32(self.mu) + F32(1 - self.damp) * g
                self.state[key] = buf
                g = g + F32(self.mu) * buf if self.nesterov else buf
            p -= F32(self.lr) * g


# ---------------------------------------------------------------- network
class Sequential:
    """A list of Layer built from plain dicts, e.g. the R2 QAT net:
      [{"kind": "quant_identity", "bits": 3, "act_quant": "const"},
       {"kind": "quant_linear", "in": 2, "out": n, "bits": 3, "weight_quant": "const"},
       {"kind": "quant_relu", "bits": 3}, ...]
    kinds: linear, relu (in, out, bias=True); quant_linear (+ bits, weight_quant
    "const" | "absmax"); quant_identity / quant_relu (bits, act_quant "learned" | "const",
    collect_steps=300). Parameters start at zero (threshold 1.0);
    copy them in with set_param. Keys of parameters()/gradients() are (layer index, name)."""

    def __init__(self, descs):
        self.layers = [Layer(d) for d in descs]
        self.logits = None

    def __getitem__(self, i):
        return self.layers[i]

    def set_param(self, i, name, value):
        p = self.layers[i].params[name]
        p[...] = np.asarray(value, F32).reshape(p.shape)

    def parameters(self):
        return {(i, n): p for i, l in enumerate(self.layers) for n, p in l.params.items()}

    def gradients(self):
        return {(i, n): g for i, l in enumerate(self.layers) for n, g in l.grads.items()}

    def zero_grad(self):
        for layer in self.layers:
            layer.grads = {name: None for name in layer.params}

    def forward(self, x, training=True):
        x = np.asarray(x, F32)
        for layer in self.layers:
            x = layer.forward(x, training)
        self.logits = x
        return x

    def backward(self, labels):
        """Cross-entropy of the last forward's logits; backpropagates; returns the loss."""
        loss, d = cross_entropy(self.logits, labels)
        for layer in reversed(self.layers):
            d = layer.backward(d)
        return loss

    def train_step(self, x, labels, optimizer):
        """zero_grad, training forward, loss + backward, one optimizer step; returns loss."""
        self.zero_grad()
        self.forward(x, training=True)
        loss = self.backward(np.asarray(labels))
        optimizer.step(self.parameters(), self.gradients())
        return loss
