"""Compile a trained network into an exact integer circuit (REFERENCE.md sections 5, 6).

`compile_model(net, X_calib, n_bits=3)` quantizes a float network after training, as
Concrete-ML's `compile_torch_model`; `compile_qat_model(net, X_calib)` imports a
quantization-aware network, as `compile_brevitas_qat_model`.  Both return a
`QuantizedModule` whose circuit lives in C (csrc/circuit.h), a list of integer ops:

    input codes q_x = clip(rint(x / s_x), qmin - Z_x, qmax - Z_x) + Z_x    (client)
    Linear / Conv2d   acc = sum q_x q_w over the inputs or the patch      (encrypted)
                      (zero padding holds the code Z_x, so it stands for 0.0)
    AvgPool2d         S = integer window sum of the codes                 (encrypted)
    MaxPool2d         m = integer window maximum of the codes             (encrypted)
                      (padding does not take part; max commutes with the monotone
                      quantizer, so the max of codes is exact)
    Flatten, Reshape, Transpose   the codes re-indexed                    (encrypted)
    residual add      q_skip + q_block, two code tensors of one scale     (encrypted)
    table lookup      one univariate function per element, holding every float
                      operation: t = acc - Z_x sum q_w (pool: S - k Z_x),
                      y = float32(t) * scale + b (Linear/Conv: scale = s_x s_w[o],
                      per output channel; pool: s_x / float32(kh kw), b = 0), ReLU,
                      and requantisation to the next quantizer's codes
    the last op's integers are returned and decoded in the clear: the accumulator of a
    final Linear (as Concrete-ML does for a final Gemm), or s (q - Z) for final codes.

The op kinds and their fields (_Op; kernel, stride, padding are (H, W) pairs):
    dense      src, weight int32 (out, in), weight_zero_point
    conv       src, weight int32 (OC, C, KH, KW), weight_zero_point, stride, padding,
               pad_code
    pool_sum   src, kernel, stride, padding, pad_code
    maxpool    src, kernel, stride, padding (padding <= kernel // 2, padded taps skipped);
               info {"pairwise_max_lookups": per sample, "max_diff_min", "max_diff_max",
               "max_diff_bits", "static_max_diff_bits"}: under FHE a window of t valid taps
               is t - 1 pairwise maxima, each max(a, b) = b + relu(a - b) one table lookup
               of a - b, whose range is bounded by [lo - hi, hi - lo] of the input codes
               (measured on the calibration set, and statically)
    round      src, lsbs
    lookup     src, lsbs, offset int64 (C,), scale float32 (C,), bias float32 (C,) or None,
               relu, quant (the output _Quantizer)
    reshape    src, shape;  transpose  src, dims (axes of (C, H, W));  add  src, src2
    decode     src, lsbs, offset, scale, bias (the last op, in the clear)

BatchNorm2d (eval mode, running statistics) adds no op: it is folded into the affine part
of the lookup (or decode) after it, in the float32 rule of csrc/batchnorm.h, which the
engine's eval forward uses too: k = gamma / sqrt(running_var + eps), then scale' = scale k
and bias' = (bias - running_mean) k + beta, each operation rounded to float32.  It is
folded exactly after a QuantLinear / QuantConv2d that reads codes (scale = s_x s_w) and
after codes (a QuantIdentity, QuantReLU, MaxPool2d...: scale = s, bias 0); after an
AvgPool2d, a ReLU or another BatchNorm2d, or with track_running_stats=False, compiling
raises ValueError naming the layer.

Modes, as in Concrete-ML: fhe="disable" runs the quantized model in the clear (NumPy, here),
fhe="simulate" runs the integer circuit (C) with the same integers and the same float32
lookups, so the two agree exactly; fhe="execute" runs it encrypted through Concrete after
module.compile_fhe() (qatfhe.fhe, the `fhe` extra), with the same integers again.
In C, a circuit whose every value and partial sum stays below 2^24 by the static bounds runs
in float32 (exact for such integers) on blocks of samples, vectorised and skipping pruned
weights; any other runs in int64 one sample at a time.  forward, predict and
quantized_forward take n_threads (default 1) to split a large batch over threads.  The
results are the same bit for bit whichever engine, thread count and batch size.

Rounding is kept identical to the engine's fake-quant forward: both quantize with the one
rule q = clamp(rint(x / s)) in float32 and turn an accumulator into a float with the one
epilogue float32(acc) * (s_x * s_w) + b (csrc/quant.h); the circuit's integers are exact,
so for a QAT network `simulate` reproduces the eval-mode network bit for bit (one exception:
a network ending with a quantizer outputs s * q, and where the engine's float code q is
-0.0 the circuit's integer code gives +0.0; the values are equal).

What a QAT network must look like (Concrete-ML's rules; each violation raises ValueError
naming the layer): a QuantIdentity first; QuantLinear / QuantConv2d, AvgPool2d, MaxPool2d,
Flatten, Reshape and Transpose read integer codes, so each needs a QuantIdentity or
QuantReLU (or another op carrying codes) before it; no float Linear or Conv2d; a float ReLU
only right after a QuantLinear, QuantConv2d or AvgPool2d, followed by a quantizer.  A quantizer that
reads codes (QuantReLU after a residual add, a Residual after a QuantReLU) is one more table
lookup, a requantisation.  The residual add needs both operands on one scale: nn.Residual
guarantees it by construction (one quantizer for both), so the add is an exact integer sum
whose result lies in the doubled code range [2 qmin, 2 qmax] with the same scale; the
compiler checks the two scales anyway.

Choices where Concrete-ML offers several (documented here, tested in tests/test_compile.py):
- An integer n_bits sets all four of model_inputs, op_inputs, op_weights and model_outputs
  (the tutorial's "3-bit weights and activations"; current Concrete-ML raises model_inputs
  and model_outputs to at least 5 bits: pass a dict to get that).  In a dict, op_inputs and
  op_weights are required; model_inputs and model_outputs default to op_inputs.
- PTQ quantizes (op_inputs bits) the float output of a Linear, Conv2d or AvgPool2d (after
  its ReLU) before the next op that reads codes; weights are per tensor.
- model_outputs only matters for a network ending in ReLU: the last Linear's accumulator is
  returned unquantized (Concrete-ML's graph-output Gemm) and needs no output bits.
- Zero points enter as q = clamp(rint(x / s), qmin - Z, qmax - Z) + Z, the engine's rule,
  where Concrete-ML writes clip(rint(x / s + Z)); they differ only on exact ties with odd Z.
- Scales are computed in float64 as Concrete-ML does and stored in float32, the precision of
  the circuit's lookups.  A constant tensor gets scale |value| (Concrete-ML: value itself),
  with a zero point that keeps it exact, so every scale stays positive.
- rounding_threshold_bits (int in [2, 16], or {"n_bits": int, "method": "exact"}): before
  each table lookup that reads an accumulator or a pool sum, lsbs = (its bits on the
  calibration set) - n_bits low bits are rounded away (round half up, Concrete's
  round_bit_pattern), so the lookup sees a narrower integer of n_bits bits, or n_bits + 1
  where rounding up reaches the next power of two (as in Concrete-ML); the returned last
  accumulator is not rounded.
- Bit widths (section 6) are measured per integer value (node): "input" codes,
  "accumulator" (Linear/Conv), "pool_sum", "rounded" (the lookup's input when rounding),
  "lookup_output" codes, "reshape" / "transpose" (re-indexed codes, same range) and "add"
  (residual sums).  max_bit_width is the largest over all of them; the max_bits check (the
  16-bit table-lookup limit) applies to every value except one rounded before its lookup
  (rounding is what relaxes that limit, as in Concrete-ML).  worst_case_bit_width bounds
  every value over all possible input codes (static analysis in C, each node's range taken
  as a box)."""
import numbers
import os
import warnings

import numpy as np

from . import _checks
from . import _core
from ._finite import check_finite_state

__all__ = ["compile_model", "compile_qat_model", "QuantizedModule", "BitWidthError"]

FORMAT = "qatfhe-quantized-module"
VERSION = 2
N_BITS_KEYS = ("model_inputs", "op_inputs", "op_weights", "model_outputs")
STABILITY_CONST = 1e-6      # Concrete-ML: a range narrower than this is one value
F32 = np.float32
EXACT_F64 = 2.0 ** 52       # integer sums below this are exact in float64 BLAS
CHUNK = 1 << 22             # elements of patch matrices per NumPy block
MAX_THREADS = 64            # QF_CIRCUIT_MAX_THREADS
_FLOAT32, _INT64 = np.dtype(np.float32), np.dtype(np.int64)


class BitWidthError(ValueError):
    """A circuit value needs more bits than a table lookup may take (max_bits)."""


# ------------------------------------------------------------------ quantizers

class _Quantizer:
    """q = clamp(rint(x / s), qmin - Z, qmax - Z) + Z in float32; value s (q - Z)."""

    def __init__(self, scale, zero_point, qmin, qmax):
        self.scale = F32(scale)
        self.zero_point, self.qmin, self.qmax = int(zero_point), int(qmin), int(qmax)

    def quantize(self, x):
        lo, hi = F32(self.qmin - self.zero_point), F32(self.qmax - self.zero_point)
        q = np.clip(np.rint(np.asarray(x, F32) / self.scale), lo, hi)
        return q.astype(np.int64) + self.zero_point

    def dequantize(self, q):
        return self.scale * (np.asarray(q, np.int64) - self.zero_point).astype(F32)

    def doubled(self):
        """What the sum of two code tensors of this quantizer means: same scale, zero
        point 2 Z, codes in [2 qmin, 2 qmax]."""
        return _Quantizer(self.scale, 2 * self.zero_point, 2 * self.qmin, 2 * self.qmax)

    def as_tuple(self):
        return (float(self.scale), self.zero_point, self.qmin, self.qmax)

    def to_dict(self):
        return {"scale": float(self.scale), "zero_point": self.zero_point,
                "qmin": self.qmin, "qmax": self.qmax}


def _asymmetric(values, n_bits):
    """Concrete-ML's unsigned asymmetric quantizer calibrated on min/max of values:
    S = (rmax - rmin) / (2^n - 1), Z = round(-rmin (2^n - 1) / (rmax - rmin))."""
    rmin, rmax = float(np.min(values)), float(np.max(values))
    levels = 2 ** n_bits - 1
    if rmax - rmin < STABILITY_CONST:
        if abs(rmax) < STABILITY_CONST:
            scale, zero_point = 1.0, int(np.rint(-rmin))
        else:   # one value v: scale |v|, and v < 0 sits at code 0 with Z = 1
            scale, zero_point = abs(rmax), 0 if rmax > 0 else 1
    else:
        scale = (rmax - rmin) / levels
        zero_point = int(np.round(-rmin * levels / (rmax - rmin)))
    return _Quantizer(scale, zero_point, 0, levels)


def _symmetric_weights(w, n_bits):
    """Concrete-ML's symmetric per-tensor weight quantizer: S = max|w| / (2^(n-1) - 1),
    codes clip(rint(w / S), -2^(n-1), 2^(n-1) - 1) in float64.  Returns (codes, S)."""
    w = np.asarray(w, np.float64)
    rmin, rmax = float(w.min()), float(w.max())
    half = 2 ** (n_bits - 1)
    if rmax - rmin < STABILITY_CONST:
        scale = 1.0 if abs(rmax) < STABILITY_CONST else abs(rmax)
    else:
        scale = max(abs(rmin), abs(rmax)) / (half - 1)
    codes = np.clip(np.rint(w / scale), -half, half - 1).astype(np.int32)
    return codes, F32(scale)


# ------------------------------------------------------------------ ops, in NumPy

_ARRAY_FIELDS = {"weight": np.int32, "offset": np.int64, "scale": F32, "bias": F32}
_INT_FIELDS = ("src", "src2", "weight_zero_point", "pad_code", "lsbs", "relu")
_TUPLE_FIELDS = ("kernel", "stride", "padding", "shape", "dims")
_OP_KINDS = ("dense", "conv", "pool_sum", "round", "lookup", "reshape", "transpose", "add",
             "decode", "maxpool")
_NODE_KIND = {"dense": "accumulator", "conv": "accumulator", "pool_sum": "pool_sum",
              "round": "rounded", "lookup": "lookup_output", "reshape": "reshape",
              "transpose": "transpose", "add": "add", "maxpool": "maxpool"}


def _exact_matmul(a, b):
    """a (m, k) @ b (k, n) of int64, exact: float64 BLAS while every partial sum stays
    below 2^52, int64 otherwise."""
    bound = float(np.abs(a).max(initial=0)) * float(np.abs(b).sum(axis=0).max(initial=0))
    if bound < EXACT_F64:
        return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    return a @ b


def _windows(x, op):
    """(n, C, OH, OW, KH, KW) view of the padded int64 codes x (n, C, H, W)."""
    (kh, kw), (sh, sw), (ph, pw) = op.window
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=op.pad_code)
    view = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    return view[:, :, ::sh, ::sw]


def _window_maxima(x, op):
    """(n, C, OH, OW) window maxima of the int64 codes x (n, C, H, W); padding never wins."""
    (kh, kw), (sh, sw), (ph, pw) = op.window
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)),
                   constant_values=np.iinfo(np.int64).min)
    view = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    return view[:, :, ::sh, ::sw].max(axis=(-2, -1))


def _pairwise_max_count(op, in_shape):
    """Pairwise maxima per sample of a maxpool op: (valid taps - 1) per output element."""
    (kh, kw), (sh, sw), (ph, pw) = op.window
    c, h, w = in_shape

    def valid(size, k, s, p):
        n_out = (size + 2 * p - k) // s + 1
        starts = np.arange(n_out) * s - p
        return np.minimum(starts + k, size) - np.maximum(starts, 0)
    taps = np.outer(valid(h, kh, sh, ph), valid(w, kw, sw, pw))
    return int(c * (taps - 1).sum())


class _Op:
    """One operation of the circuit (csrc/circuit.h) and its NumPy twin.

    kind: "dense", "conv", "pool_sum", "round", "lookup", "reshape", "transpose", "add" or
    "decode"; name: the layer it comes from; layer: that layer's C index (None for the
    input's); src/src2: the nodes it reads; the other fields as in qf_op_spec, with weight
    (int32), offset (int64), scale and bias (float32) arrays, quant (a _Quantizer) for a
    lookup, and weight_scale (float32, scalar or per channel) kept as a description of a
    dense or conv op's weights (their scale lives in the lookup after it)."""

    def __init__(self, kind, name, layer=None, src=0, **fields):
        self.kind, self.name, self.layer, self.src = kind, name, layer, int(src)
        self.src2 = self.weight_zero_point = self.pad_code = self.lsbs = self.relu = 0
        self.kernel = self.stride = self.padding = self.shape = self.dims = None
        self.weight = self.offset = self.scale = self.bias = None
        self.quant = self.weight_scale = self.info = None
        for key, value in fields.items():
            if key in _ARRAY_FIELDS:
                value = None if value is None else np.ascontiguousarray(value, _ARRAY_FIELDS[key])
            elif key in _TUPLE_FIELDS:
                value = tuple(int(v) for v in value)
            elif key in _INT_FIELDS:
                value = int(value)
            elif key not in ("quant", "weight_scale"):
                raise TypeError(f"unknown op field {key!r}")
            setattr(self, key, value)

    @property
    def window(self):
        """((KH, KW), stride, padding) of a conv or pool op."""
        kernel = self.weight.shape[2:] if self.kind == "conv" else self.kernel
        return tuple(kernel), self.stride, self.padding

    def __repr__(self):
        return f"_Op({self.kind!r}, {self.name!r}, src={self.src})"

    # --- the C description
    def core_spec(self):
        spec = {"kind": self.kind, "name": self.name, "src": self.src, "src2": self.src2,
                "weight_zero_point": self.weight_zero_point, "pad_code": self.pad_code,
                "lsbs": self.lsbs, "relu": self.relu}
        for key in _TUPLE_FIELDS + tuple(_ARRAY_FIELDS):
            if getattr(self, key) is not None:
                spec[key] = getattr(self, key)
        if self.quant is not None:
            spec["quant"] = self.quant.as_tuple()
        return spec

    # --- persistence
    def to_header(self, prefix, arrays):
        header = {"kind": self.kind, "name": self.name, "layer": self.layer}
        for key in _INT_FIELDS:
            header[key] = getattr(self, key)
        for key in _TUPLE_FIELDS:
            value = getattr(self, key)
            header[key] = None if value is None else list(value)
        for key in _ARRAY_FIELDS:
            if getattr(self, key) is not None:
                arrays[f"{prefix}/{key}"] = getattr(self, key)
        header["quant"] = None if self.quant is None else self.quant.to_dict()
        ws = self.weight_scale
        header["weight_scale"] = None if ws is None else np.asarray(ws, F32).tolist()
        return header

    @classmethod
    def from_header(cls, header, prefix, arrays):
        if header["kind"] not in _OP_KINDS:
            raise ValueError(f"{prefix}: unknown op kind {header['kind']!r}")
        fields = {key: header[key] for key in _INT_FIELDS}
        for key in _TUPLE_FIELDS:
            if header[key] is not None:
                fields[key] = header[key]
        for key, dtype in _ARRAY_FIELDS.items():
            if f"{prefix}/{key}" in arrays:
                value = arrays[f"{prefix}/{key}"]
                if value.dtype != dtype:
                    raise ValueError(f"{prefix}/{key} has dtype {value.dtype}, expected "
                                     f"{np.dtype(dtype)}")
                fields[key] = value
        if header["quant"] is not None:
            fields["quant"] = _Quantizer(**header["quant"])
        if header["weight_scale"] is not None:
            fields["weight_scale"] = F32(header["weight_scale"]) if np.ndim(
                header["weight_scale"]) == 0 else np.asarray(header["weight_scale"], F32)
        return cls(header["kind"], header["name"], header["layer"], **fields)

    # --- NumPy twin
    def affine(self, x):
        """The float part of a lookup or decode: float32(x 2^l + offset[c]) * scale[c] +
        bias[c], then ReLU for a lookup with relu; x (n, C, H, W) int64."""
        shape = (1, -1, 1, 1)
        v = x * (1 << self.lsbs)
        if self.offset is not None:
            v = v + self.offset.reshape(shape)
        y = v.astype(F32) * self.scale.reshape(shape)
        y = y + (self.bias.reshape(shape) if self.bias is not None else F32(0))
        return np.where(y < 0, F32(0), y) if self.relu else y

    def run(self, values):
        """This op's result from the list of node values (n, C, H, W) int64; a decode op
        returns float32 (n, size)."""
        x = values[self.src]
        n = x.shape[0]
        kind = self.kind
        if kind == "dense":
            w = self.weight.astype(np.int64) - self.weight_zero_point
            return _exact_matmul(x.reshape(n, -1), w.T).reshape(n, -1, 1, 1)
        if kind == "conv":
            return self._conv(x)
        if kind == "pool_sum":
            return _windows(x, self).sum(axis=(-2, -1))
        if kind == "maxpool":
            return _window_maxima(x, self)
        if kind == "round":
            return (x + (1 << (self.lsbs - 1))) >> self.lsbs      # floor: round half up
        if kind == "lookup":
            return self.quant.quantize(self.affine(x))
        if kind == "decode":
            return self.affine(x).reshape(n, -1)
        if kind == "reshape":
            return x.reshape((n,) + self.shape)
        if kind == "transpose":
            return np.ascontiguousarray(np.swapaxes(x, self.dims[0] + 1, self.dims[1] + 1))
        if kind == "add":
            return x + values[self.src2]
        raise ValueError(f"unknown op kind {kind!r}")

    def _conv(self, x):
        w = self.weight.astype(np.int64) - self.weight_zero_point
        oc = w.shape[0]
        w = w.reshape(oc, -1).T                                      # (K, OC)
        win = _windows(x, self)                                      # (n, C, OH, OW, KH, KW)
        n, _, oh, ow = win.shape[:4]
        per_sample = oh * ow * w.shape[0]
        out = np.empty((n, oh, ow, oc), np.int64)
        step = max(1, CHUNK // max(per_sample, 1))
        for s in range(0, n, step):
            cols = win[s:s + step].transpose(0, 2, 3, 1, 4, 5).reshape(-1, w.shape[0])
            out[s:s + step] = _exact_matmul(cols, w).reshape(-1, oh, ow, oc)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _ungroup(weight, groups):
    """A grouped conv's codes (OC, C / groups, KH, KW) as an ordinary conv's (OC, C, KH, KW):
    zero outside each output channel's group, which adds exactly 0 to its sums (the circuit
    visits nonzero weights only, so it costs nothing and leaves every bound unchanged)."""
    oc, cg, kh, kw = weight.shape
    full = np.zeros((oc, cg * groups, kh, kw), weight.dtype)
    per_group = oc // groups
    for o in range(oc):
        g = o // per_group
        full[o, g * cg:(g + 1) * cg] = weight[o]
    return full


def _run_ops(ops, codes, want_ranges=True):
    """(decoded float32 (n, out), returned integers (n, out), [(min, max)] per node) of the
    ops on input codes (n, C, H, W); node values are dropped after their last use."""
    last_use = {}
    for k, op in enumerate(ops):
        last_use[op.src] = k
        if op.kind == "add":
            last_use[op.src2] = k
    values = [codes]
    ranges = [(int(codes.min()), int(codes.max()))]
    for k, op in enumerate(ops):
        if op.kind == "decode":
            x = values[op.src]
            return op.run(values), x.reshape(x.shape[0], -1), ranges
        result = op.run(values)
        values.append(result)
        ranges.append((int(result.min()), int(result.max())) if want_ranges else None)
        for j, last in last_use.items():
            if last == k:
                values[j] = None
    raise ValueError("the ops do not end with a decode op")


# ------------------------------------------------------------------ argument checks

def _check_n_bits(n_bits):
    def one(value, key):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"n_bits[{key!r}] must be an integer in [2, 16], got {value!r}"
                            if key else f"n_bits must be an integer in [2, 16] or a dict, "
                            f"got {value!r}")
        if not 2 <= value <= 16:
            raise ValueError(f"n_bits[{key!r}] must be in [2, 16], got {value}" if key else
                             f"n_bits must be in [2, 16], got {value}")
        return int(value)

    if isinstance(n_bits, dict):
        unknown = sorted(set(n_bits) - set(N_BITS_KEYS), key=str)
        if unknown:
            raise ValueError(f"n_bits has unknown keys {unknown}; expected keys among "
                             f"{list(N_BITS_KEYS)}")
        missing = [k for k in ("op_inputs", "op_weights") if k not in n_bits]
        if missing:
            raise ValueError(f"n_bits is missing the required keys {missing}; a dict needs "
                             f"'op_inputs' and 'op_weights' ('model_inputs' and "
                             f"'model_outputs' default to op_inputs)")
        out = {k: one(v, k) for k, v in n_bits.items()}
        for key in ("model_inputs", "model_outputs"):
            out.setdefault(key, out["op_inputs"])
        return {k: out[k] for k in N_BITS_KEYS}
    value = one(n_bits, None)
    return {k: value for k in N_BITS_KEYS}


def _check_rounding(rounding_threshold_bits):
    r = rounding_threshold_bits
    if r is None:
        return None
    if isinstance(r, dict):
        unknown = sorted(set(r) - {"n_bits", "method"}, key=str)
        if unknown:
            raise ValueError(f"rounding_threshold_bits has unknown keys {unknown}; expected "
                             f"'n_bits' and optionally 'method'")
        method = str(r.get("method", "exact")).lower()
        if method == "approximate":
            raise NotImplementedError("rounding_threshold_bits method 'approximate' is not "
                                      "implemented; use 'exact'")
        if method != "exact":
            raise ValueError(f"rounding_threshold_bits method must be 'exact', got "
                             f"{r.get('method')!r}")
        if "n_bits" not in r:
            raise ValueError("rounding_threshold_bits dict needs 'n_bits'")
        r = r["n_bits"]
    if isinstance(r, (bool, np.bool_)) or not isinstance(r, numbers.Integral):
        raise TypeError(f"rounding_threshold_bits must be None, an integer in [2, 16] or "
                        f"{{'n_bits': int, 'method': 'exact'}}, got {r!r}")
    if not 2 <= r <= 16:
        raise ValueError(f"rounding_threshold_bits must be in [2, 16], got {r}")
    return int(r)


def _check_threads(n_threads):
    """n_threads as an int in [1, 64] (the C core's limit)."""
    if n_threads == 1 and type(n_threads) is int:
        return 1
    n_threads = _checks.positive_int(n_threads, "n_threads")
    if n_threads > MAX_THREADS:
        raise ValueError(f"n_threads must be an integer in [1, {MAX_THREADS}], got {n_threads}")
    return n_threads


def _check_limits(max_bits, on_overflow):
    max_bits = _checks.positive_int(max_bits, "max_bits", minimum=2)
    if on_overflow not in ("raise", "warn"):
        raise ValueError(f"on_overflow must be 'raise' or 'warn', got {on_overflow!r}")
    return max_bits, on_overflow


def _report_overflow(message, on_overflow, stacklevel=3):
    """Raise BitWidthError(message), or warn it when on_overflow is "warn"."""
    if on_overflow == "raise":
        raise BitWidthError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)


def _net_samples(net, X, name):
    """X as float32 (n, C, H, W) for net, whose input shape it sets: X is (n, C, H, W) as the
    network trains on, or (n, features): a flattened sample of the network's current input
    shape, or of its first Linear's input for a fully connected network."""
    from . import nn
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"net must be a qatfhe.nn.Sequential network, got {type(net).__name__}")
    arr = _checks.samples(X, name)
    if arr.ndim == 2:
        c, h, w = net._core.in_shape
        if h * w > 1 and arr.shape[1] == c * h * w:
            arr = arr.reshape(len(arr), c, h, w)
        elif h * w == 0:
            raise ValueError(f"{name} must have shape (n_samples, channels, height, width) for "
                             f"a convolutional network, got {arr.shape}")
        else:
            if net._features is not None:
                arr = _checks.features(arr, net._features, name)
            arr = arr.reshape(len(arr), -1, 1, 1)
    net._core.set_input_shape(tuple(int(d) for d in arr.shape[1:]))
    return arr


# ------------------------------------------------------------------ network structure

class _Entry:
    """One C layer of a network: its index, a name for messages, the Python layer and its
    role ("layer", "begin" for a Residual's quantizer, "add" for a Residual's add)."""

    def __init__(self, index, name, layer, role="layer"):
        self.index, self.name, self.layer, self.role = index, name, layer, role


def _flatten(net):
    """The network's C layers in order, Residual blocks expanded."""
    from . import nn
    entries = []
    for i, layer in enumerate(net):
        if isinstance(layer, nn.Residual):
            quant = layer.quant
            entries.append(_Entry(quant.index, f"layer {i}.quant ({type(quant).__name__})",
                                  quant, "begin"))
            for j, inner in enumerate(layer.block):
                entries.append(_Entry(inner.index, f"layer {i}.block[{j}] "
                                      f"({type(inner).__name__})", inner))
            entries.append(_Entry(layer.index, f"layer {i} (Residual add)", layer, "add"))
        else:
            entries.append(_Entry(layer.index, f"layer {i} ({type(layer).__name__})", layer))
    return entries


class _Codes:
    """A node holding integer codes and what they mean (a _Quantizer)."""

    def __init__(self, node, quant, producer):
        self.node, self.quant, self.producer = node, quant, producer


class _Chain:
    """A float value waiting for its table lookup: relu?(float32(node + offset[c]) *
    scale[c] + bias[c]) of an integer node; producer names the last layer that shaped it;
    roundable: the node is a sum (accumulator or pool sum) that rounding may shorten;
    foldable: the epilogue of a QuantLinear / QuantConv2d, where the engine folds an eval
    BatchNorm2d the same way (a BatchNorm2d may join it)."""

    def __init__(self, node, offset, scale, bias, producer, roundable, relu=False,
                 foldable=False):
        self.node, self.offset, self.scale, self.bias = node, offset, scale, bias
        self.producer, self.roundable, self.relu = producer, roundable, relu
        self.foldable = foldable


def _float_advice(entry, chain):
    what = type(entry.layer).__name__
    return (f"{entry.name} receives float values from {chain.producer}: a {what} in the "
            f"integer circuit reads integer codes, so add a QuantIdentity (or QuantReLU) "
            f"between them" + (" or replace the ReLU with QuantReLU"
                               if chain.producer.endswith("(ReLU)") else ""))


class _Builder:
    """Appends ops to a circuit while evaluating them on the calibration codes (NumPy);
    node values no longer needed are dropped (a residual's skip operand is pinned)."""

    def __init__(self, input_quant, codes, rounding):
        self.input_quant = input_quant
        self.ops, self.values = [], [codes]
        self.shapes, self.kinds = [codes.shape[1:]], ["input"]
        self.rounding, self.pinned = rounding, set()

    def add(self, op):
        result = op.run(self.values)
        self.values.append(result)
        self.shapes.append(result.shape[1:])
        self.kinds.append(_NODE_KIND[op.kind])
        self.ops.append(op)
        for j in (op.src, op.src2 if op.kind == "add" else None):
            if j is not None and j not in self.pinned:
                self.values[j] = None
        return len(self.values) - 1

    def channels(self, node):
        return self.shapes[node][0]

    def lookup(self, chain, quant, name, layer, relu=False):
        """Codes of chain through one table lookup (rounding its input first when set);
        quant is a _Quantizer or a function of the float values that calibrates one."""
        src, lsbs = chain.node, 0
        if self.rounding is not None and chain.roundable:
            acc = self.values[src]
            lsbs = max(0, _core.bits_for_range(int(acc.min()), int(acc.max())) - self.rounding)
            if lsbs:
                src = self.add(_Op("round", self.ops[chain.node - 1].name,
                                   self.ops[chain.node - 1].layer, src=src, lsbs=lsbs))
        op = _Op("lookup", name, layer, src=src, lsbs=lsbs, offset=chain.offset,
                 scale=chain.scale, bias=chain.bias, relu=chain.relu or relu)
        if not isinstance(quant, _Quantizer):
            quant = quant(op.affine(self.values[src]))
        op.quant = quant
        return _Codes(self.add(op), quant, name)

    def as_chain(self, codes):
        """Codes read back as the float values they stand for: s (q - Z)."""
        c, q = self.channels(codes.node), codes.quant
        return _Chain(codes.node, np.full(c, -q.zero_point), np.full(c, q.scale, F32),
                      None, codes.producer, False)

    def quantize(self, value, quant, name, layer, relu=False):
        """value (_Codes or _Chain) through quantizer quant: a lookup (a requantisation
        when value already holds codes)."""
        chain = self.as_chain(value) if isinstance(value, _Codes) else value
        return self.lookup(chain, quant, name, layer, relu)

    def weighted(self, entry, codes, weight, weight_scale, bias):
        """A dense or conv op on codes; returns the chain of its float output."""
        layer, q = entry.layer, codes.quant
        conv = weight.ndim == 4
        if conv and layer.groups > 1:
            weight = _ungroup(weight, layer.groups)
        fields = {"stride": layer.stride, "padding": layer.padding,
                  "pad_code": q.zero_point} if conv else {}
        node = self.add(_Op("conv" if conv else "dense", entry.name, entry.index,
                            src=codes.node, weight=weight, weight_scale=weight_scale, **fields))
        w = np.asarray(weight, np.int64).reshape(len(weight), -1)
        offset = np.array([-q.zero_point * int(s) for s in w.sum(axis=1)], np.int64)
        scale = q.scale * np.broadcast_to(np.asarray(weight_scale, F32), (len(weight),))
        bias = np.zeros(len(weight), F32) if bias is None else np.asarray(bias, F32)
        return _Chain(node, offset, scale.astype(F32), bias, entry.name, True, foldable=True)

    def batchnorm(self, entry, value):
        """An eval-mode BatchNorm2d folded into the chain of value (module docstring): the
        lookup after it computes float32(t) scale' + bias' as the engine's eval forward."""
        layer = entry.layer
        if not layer.track_running_stats:
            raise ValueError(f"{entry.name} normalises with batch statistics in eval mode "
                             f"(track_running_stats=False); only running statistics can be "
                             f"folded into the integer circuit")
        if isinstance(value, _Codes):
            chain = self.as_chain(value)
        elif value.foldable and not value.relu:
            chain = value
        else:
            raise ValueError(f"{entry.name} follows {value.producer}: a BatchNorm2d is folded "
                             f"into the table lookup of the QuantLinear / QuantConv2d right "
                             f"before it, or applied to integer codes; put a QuantIdentity "
                             f"before it (or move it before the ReLU)")
        c = len(chain.scale)
        gamma = layer.weight if layer.affine else np.ones(c, F32)
        beta = layer.bias if layer.affine else np.zeros(c, F32)
        root = np.sqrt(np.asarray(layer.running_var, F32) + F32(layer.eps))   # float32 ops
        k = np.asarray(gamma, F32) / root
        bias = np.zeros(c, F32) if chain.bias is None else chain.bias
        bias = (bias - np.asarray(layer.running_mean, F32)) * k + np.asarray(beta, F32)
        return _Chain(chain.node, chain.offset, (chain.scale * k).astype(F32),
                      bias.astype(F32), entry.name, chain.roundable)

    def maxpool(self, entry, codes):
        """Window maxima of codes: codes of the same quantizer."""
        layer = entry.layer
        node = self.add(_Op("maxpool", entry.name, entry.index, src=codes.node,
                            kernel=layer.kernel_size, stride=layer.stride,
                            padding=layer.padding))
        return _Codes(node, codes.quant, entry.name)

    def pool(self, entry, codes):
        """A window sum of codes; returns the chain of the average (float32 division of
        the scale by the window size, done once, as the engine does)."""
        layer, q = entry.layer, codes.quant
        kh, kw = layer.kernel_size
        node = self.add(_Op("pool_sum", entry.name, entry.index, src=codes.node,
                            kernel=layer.kernel_size, stride=layer.stride,
                            padding=layer.padding, pad_code=q.zero_point))
        c = self.channels(node)
        return _Chain(node, np.full(c, -kh * kw * q.zero_point),
                      np.full(c, q.scale / F32(kh * kw), F32), None, entry.name, True)

    def reindex(self, entry, codes):
        """Flatten, Reshape or Transpose of codes."""
        from . import nn
        layer, shape = entry.layer, self.shapes[codes.node]
        if isinstance(layer, nn.Transpose):
            op = _Op("transpose", entry.name, entry.index, src=codes.node,
                     dims=(layer.dim0 - 1, layer.dim1 - 1))
        else:
            target = layer._core_spec()["shape"]
            if target == (0, 0, 0):
                target = (int(np.prod(shape)), 1, 1)
            op = _Op("reshape", entry.name, entry.index, src=codes.node, shape=target)
        return _Codes(self.add(op), codes.quant, entry.name)

    def residual_add(self, entry, skip, block):
        """skip + block, two code tensors that must share one quantizer."""
        if (skip.quant.scale, skip.quant.zero_point) != (block.quant.scale,
                                                         block.quant.zero_point):
            raise ValueError(f"{entry.name}: the operands have scales {skip.quant.scale} and "
                             f"{block.quant.scale}; an integer add needs one scale (one shared "
                             f"quantizer, as nn.Residual provides)")
        node = self.add(_Op("add", entry.name, entry.index, src=skip.node, src2=block.node))
        self.pinned.discard(skip.node)
        return _Codes(node, skip.quant.doubled(), entry.name)

    def finish(self, value, name):
        """Append the decode op; returns the ops."""
        if isinstance(value, _Codes):
            value = self.as_chain(value)
        self.ops.append(_Op("decode", name, None, src=value.node, offset=value.offset,
                            scale=value.scale, bias=value.bias))
        return self.ops


def _act_quantizer(layer):
    q = layer.act_quant
    return _Quantizer(layer.scale(), 0, q.qmin, q.qmax)


def _qat_ops(net, X, rounding):
    """The ops of a quantization-aware network, walking its layers (module docstring)."""
    from . import nn
    entries = _flatten(net)
    first = entries[0]
    if not isinstance(first.layer, nn.QuantIdentity):
        raise ValueError(f"{first.name} does not quantize the input: a network is compiled "
                         f"only if it is quantized end to end; add nn.QuantIdentity(...) as "
                         f"its first layer")
    input_quant = _act_quantizer(first.layer)
    b = _Builder(input_quant, input_quant.quantize(X), rounding)
    value = _Codes(0, input_quant, first.name)
    skips = {}
    if first.role == "begin":
        skips[first.index] = value
        b.pinned.add(0)
    for entry in entries[1:]:
        value = _qat_step(b, entry, value, skips)
    if isinstance(value, _Chain) and value.relu:
        raise ValueError(f"{value.producer} leaves the network with float values after a ReLU: "
                         f"replace it with QuantReLU or add a QuantIdentity after it")
    return input_quant, b.finish(value, "output")


def _qat_step(b, entry, value, skips):
    """The value after one more layer of a QAT network."""
    from . import nn
    layer, name = entry.layer, entry.name
    if entry.role == "add":
        skip = skips.pop(layer.quant.index)
        block = b.quantize(value, skip.quant, name, entry.index,
                           relu=isinstance(layer.quant, nn.QuantReLU))
        return b.residual_add(entry, skip, block)
    if isinstance(layer, (nn.QuantIdentity, nn.QuantReLU)):
        codes = b.quantize(value, _act_quantizer(layer), name, entry.index,
                           relu=isinstance(layer, nn.QuantReLU))
        if entry.role == "begin":
            skips[layer.index] = codes
            b.pinned.add(codes.node)
        return codes
    if isinstance(layer, nn.ReLU):
        if isinstance(value, _Codes):
            raise ValueError(f"{name} applies a float ReLU to quantized values: put it right "
                             f"after a QuantLinear, QuantConv2d or AvgPool2d (followed by a "
                             f"QuantIdentity), or use QuantReLU")
        if value.relu:
            raise ValueError(f"{name} follows another ReLU: remove one")
        value.relu, value.producer = True, name
        return value
    if isinstance(layer, (nn.Linear, nn.Conv2d)) and not isinstance(
            layer, (nn.QuantLinear, nn.QuantConv2d)):
        quant_name = "QuantConv2d" if isinstance(layer, nn.Conv2d) else "QuantLinear"
        raise ValueError(f"{name} is a float layer: the network must be quantized end to "
                         f"end; replace it with {quant_name} (or compile a float network with "
                         f"compile_model)")
    if isinstance(layer, nn.BatchNorm2d):
        return b.batchnorm(entry, value)
    supported = (nn.QuantLinear, nn.QuantConv2d, nn.AvgPool2d, nn.Flatten, nn.Reshape,
                 nn.Transpose, nn.MaxPool2d)
    if not isinstance(layer, supported):
        raise ValueError(f"{name} cannot be compiled")
    if isinstance(value, _Chain):
        raise ValueError(_float_advice(entry, value))
    if isinstance(layer, (nn.QuantLinear, nn.QuantConv2d)):
        weight, scale = layer.quant_weight()
        return b.weighted(entry, value, weight, scale, layer.bias)
    if isinstance(layer, nn.AvgPool2d):
        return b.pool(entry, value)
    if isinstance(layer, nn.MaxPool2d):
        return b.maxpool(entry, value)
    return b.reindex(entry, value)


def _ptq_ops(net, X, bits, rounding):
    """The ops of a float network quantized after training (module docstring)."""
    from . import nn
    input_quant = _asymmetric(X, bits["model_inputs"])
    b = _Builder(input_quant, input_quant.quantize(X), rounding)
    value = _Codes(0, input_quant, "input")

    def codes_of(value):
        if isinstance(value, _Codes):
            return value
        return b.lookup(value, lambda y: _asymmetric(y, bits["op_inputs"]), value.producer,
                        b.ops[value.node - 1].layer)

    for entry in _flatten(net):
        layer, name = entry.layer, entry.name
        if isinstance(layer, (nn.QuantLinear, nn.QuantConv2d, nn.QuantIdentity, nn.QuantReLU,
                              nn.Residual)) or entry.role != "layer":
            raise ValueError(f"{name} is already quantized: compile networks trained with "
                             f"quantizers with compile_qat_model")
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            weight, scale = _symmetric_weights(layer.weight, bits["op_weights"])
            value = b.weighted(entry, codes_of(value), weight, scale, layer.bias)
        elif isinstance(layer, nn.ReLU):
            if isinstance(value, _Codes):
                raise ValueError(f"{name} does not follow a Linear, Conv2d or AvgPool2d layer: "
                                 f"the network must start with a Linear or Conv2d layer, and a "
                                 f"ReLU joins the table lookup after one of them")
            if value.relu:
                raise ValueError(f"{name} follows another ReLU: remove one")
            value.relu, value.producer = True, name
        elif isinstance(layer, nn.AvgPool2d):
            value = b.pool(entry, codes_of(value))
        elif isinstance(layer, nn.MaxPool2d):
            value = b.maxpool(entry, codes_of(value))
        elif isinstance(layer, nn.BatchNorm2d):
            value = b.batchnorm(entry, value)
        elif isinstance(layer, (nn.Flatten, nn.Reshape, nn.Transpose)):
            value = b.reindex(entry, codes_of(value))
        else:
            raise ValueError(f"{name} cannot be compiled: supported layers are Linear, Conv2d, "
                             f"ReLU, AvgPool2d, MaxPool2d, BatchNorm2d, Flatten, Reshape and "
                             f"Transpose")
    if isinstance(value, _Chain) and value.relu:
        value = b.lookup(value, lambda y: _asymmetric(y, bits["model_outputs"]),
                         value.producer, b.ops[value.node - 1].layer)
    return input_quant, b.finish(value, "output")


# ------------------------------------------------------------------ compilation

def compile_model(net, X_calib, n_bits=3, rounding_threshold_bits=None, max_bits=16,
                  on_overflow="raise"):
    """Post-training quantization of a float network (Linear, Conv2d, ReLU, AvgPool2d,
    MaxPool2d, BatchNorm2d (folded), Flatten, Reshape, Transpose), as Concrete-ML's
    compile_torch_model: symmetric per-tensor weights (op_weights bits), the input and every
    activation asymmetric, calibrated by min/max over X_calib layer by layer on the
    quantized outputs of the previous layer
    (model_inputs / op_inputs / model_outputs bits).  X_calib is (n, features) or
    (n, C, H, W).  Returns a QuantizedModule; raises BitWidthError (or warns, with
    on_overflow="warn") when a value exceeds max_bits on the calibration set."""
    bits = _check_n_bits(n_bits)
    rounding = _check_rounding(rounding_threshold_bits)
    max_bits, on_overflow = _check_limits(max_bits, on_overflow)
    X = _net_samples(net, X_calib, "X_calib")
    check_finite_state(net, "cannot compile")
    input_quant, ops = _ptq_ops(net, X, bits, rounding)
    info = {"mode": "ptq", "n_bits": bits, "rounding_threshold_bits": rounding,
            "max_bits": max_bits}
    module = QuantizedModule(input_quant, X.shape[1:], ops, info)
    module._calibrate(X)
    module._find_worst_case()
    module.check_bit_widths(on_overflow=on_overflow)
    return module


def compile_qat_model(net, X_calib, rounding_threshold_bits=None, max_bits=16,
                      on_overflow="raise"):
    """Import a quantization-aware network, as Concrete-ML's compile_brevitas_qat_model:
    scales, zero points (0) and bit widths come from its quantizers in eval mode (no new
    calibration); X_calib ((n, features) or (n, C, H, W)) only measures bit widths and,
    with rounding_threshold_bits, calibrates the rounding.  The network must be quantized
    end to end (module docstring); a layer breaking the rules raises ValueError naming it.
    Returns a QuantizedModule whose fhe="simulate" output equals the eval-mode network's."""
    rounding = _check_rounding(rounding_threshold_bits)
    max_bits, on_overflow = _check_limits(max_bits, on_overflow)
    X = _net_samples(net, X_calib, "X_calib")
    check_finite_state(net, "cannot compile")
    input_quant, ops = _qat_ops(net, X, rounding)
    info = {"mode": "qat", "n_bits": None, "rounding_threshold_bits": rounding,
            "max_bits": max_bits}
    module = QuantizedModule(input_quant, X.shape[1:], ops, info)
    module._calibrate(X)
    module._find_worst_case()
    module.check_bit_widths(on_overflow=on_overflow)
    from .a2q import check_budgets
    check_budgets(net, module, on_overflow)
    return module


# ------------------------------------------------------------------ the compiled module

class QuantizedModule:
    """A compiled network: an exact integer circuit in C plus its NumPy twin."""

    def __init__(self, input_quant, in_shape, ops, info, report=None):
        self.input_quant = input_quant
        self.in_shape = tuple(int(d) for d in in_shape)
        self.ops = list(ops)
        self.info = dict(info)
        self._circuit = _core.Circuit(input_quant.as_tuple(), self.in_shape,
                                      [op.core_spec() for op in self.ops])
        self._nodes = self._circuit.nodes()
        self._in_features = self._circuit.in_features
        self._consumers = [[] for _ in self._nodes]
        for op in self.ops:
            self._consumers[op.src].append(op.kind)
            if op.kind == "add":
                self._consumers[op.src2].append(op.kind)
        self._report = report
        self._calibration = None    # the calibration samples (compile_fhe's default inputset)
        self._fhe = None            # the Concrete circuit after compile_fhe (qatfhe.fhe)
        if report is not None:
            self._set_maxpool_info()

    # --- description
    @property
    def in_features(self):
        """Input values per sample (C * H * W)."""
        return self._circuit.in_features

    @property
    def out_features(self):
        return self._circuit.out_features

    @property
    def n_bits(self):
        return self.info["n_bits"]

    @property
    def rounding_threshold_bits(self):
        return self.info["rounding_threshold_bits"]

    @property
    def max_bits(self):
        return self.info["max_bits"]

    def __repr__(self):
        return (f"QuantizedModule({self.info['mode']}, {self.in_shape} -> "
                f"{self.out_features}, {len(self.ops)} ops, max_bit_width="
                f"{self.max_bit_width})")

    # --- inference
    def _check_fhe(self, fhe):
        if fhe not in ("disable", "simulate", "execute"):
            raise ValueError(f"fhe must be 'disable', 'simulate' or 'execute', got {fhe!r}")

    def _samples(self, X, name):
        """X (n, C, H, W) of the compiled shape or (n, in_features) as float32
        (n, in_features)."""
        if np.ndim(X) == 4 and self.in_shape[1:] != (1, 1):
            arr = _checks.samples(X, name)
            if arr.shape[1:] != self.in_shape:
                raise ValueError(f"{name} must have samples of shape {self.in_shape}, got "
                                 f"{arr.shape[1:]}")
            return arr.reshape(len(arr), -1)
        return _checks.features(X, self.in_features, name)

    def quantize_input(self, X):
        """int64 input codes (n, in_features) of float X ((n, C, H, W) or flat)."""
        return self.input_quant.quantize(self._samples(X, "X"))

    def _check_codes(self, q_x):
        q = np.asarray(q_x)
        if q.dtype == object or not np.issubdtype(q.dtype, np.integer):
            raise TypeError(f"q_x must hold integer input codes, got dtype {q.dtype}")
        if q.ndim == 4 and q.shape[1:] == self.in_shape:
            q = q.reshape(len(q), -1)
        if q.ndim != 2 or q.shape[1] != self.in_features or q.shape[0] == 0:
            raise ValueError(f"q_x must have shape (n_samples >= 1, {self.in_features}) or "
                             f"(n_samples, {', '.join(map(str, self.in_shape))}), got {q.shape}")
        lo, hi = self.input_quant.qmin, self.input_quant.qmax
        if q.min() < lo or q.max() > hi:
            raise ValueError(f"q_x must hold codes in [{lo}, {hi}], got values in "
                             f"[{q.min()}, {q.max()}]")
        return np.ascontiguousarray(q, np.int64)

    def quantized_forward(self, q_x, fhe="simulate", n_threads=1):
        """The integers the encrypted circuit returns for input codes q_x: the last layer's
        accumulators (or its output codes when it ends with a quantizer), (n, out).
        n_threads: threads sharing a large batch in fhe="simulate" (see forward)."""
        self._check_fhe(fhe)
        n_threads = _check_threads(n_threads)
        if fhe == "execute":
            from . import fhe as fhe_module
            return fhe_module.execute_codes(self, q_x)
        if fhe == "simulate":
            plain = self._plain(q_x, _INT64)     # the C core checks the code range itself
            if plain is not None:
                try:
                    return self._circuit.run_codes(plain, False, "auto", n_threads)[1]
                except ValueError:
                    pass                         # re-raised below with the Python message
            return self._circuit.run_codes(self._check_codes(q_x), ranges=False,
                                           n_threads=n_threads)[1]
        return self._numpy_run(self._check_codes(q_x))[1]

    def dequantize_output(self, q_y):
        """Float outputs (n, out) from quantized_forward's integers, in the clear."""
        q = np.asarray(q_y)
        if q.dtype == object or not np.issubdtype(q.dtype, np.integer):
            raise TypeError(f"q_y must hold integers, got dtype {q.dtype}")
        if q.size and np.issubdtype(q.dtype, np.unsignedinteger) and q.max() > 2 ** 63 - 1:
            raise ValueError(f"q_y holds {q.max()}, beyond the int64 range of the circuit's "
                             f"integers (quantized_forward returns int64)")
        if q.ndim != 2 or q.shape[1] != self.out_features:
            raise ValueError(f"q_y must have shape (n_samples, {self.out_features}), got "
                             f"{q.shape}")
        decode = self.ops[-1]
        shape = tuple(self._nodes[decode.src]["shape"])
        return decode.affine(q.astype(np.int64).reshape((len(q),) + shape)).reshape(len(q), -1)

    def forward(self, X, fhe="disable", n_threads=1, progress=True):
        """Float outputs (n, out_features): quantize X ((n, C, H, W) or flat), run the
        circuit (fhe="simulate", C), its clear NumPy twin (fhe="disable") or the circuit
        under encryption (fhe="execute", after compile_fhe: encrypt, run, decrypt each
        sample, with a progress bar unless progress=False; equal to "simulate"), decode.

        n_threads (fhe="simulate"; 1 to 64, default 1): threads of the C core sharing the
        batch, each taking a contiguous run of at least 1024 samples (smaller batches run
        on fewer threads).  Results are identical bit for bit for any thread count and
        batch size."""
        self._check_fhe(fhe)
        n_threads = _check_threads(n_threads)
        if fhe == "execute":
            from . import fhe as fhe_module
            return self.dequantize_output(fhe_module.execute(self, X, progress))
        if fhe == "simulate":
            plain = self._plain(X, _FLOAT32)     # the C core checks finiteness itself
            if plain is not None:
                try:
                    return self._circuit.run(plain, False, "auto", n_threads)[0]
                except ValueError:
                    pass                         # re-raised below with the Python message
            return self._circuit.run(self._samples(X, "X"), ranges=False,
                                     n_threads=n_threads)[0]
        return self._numpy_run(self.input_quant.quantize(self._samples(X, "X")))[0]

    __call__ = forward

    def predict(self, X, fhe="disable", n_threads=1, progress=True):
        """Class indices (int64): argmax of forward (first maximum)."""
        return np.asarray(self.forward(X, fhe=fhe, n_threads=n_threads,
                                       progress=progress)).argmax(axis=1)

    def _plain(self, X, dtype):
        """X as (n, in_features) when it is already an array of dtype (native byte order)
        of that shape, or C-contiguous of shape (n, C, H, W) the compiled one, which the C
        core takes as it is (the fast path); else None."""
        if type(X) is not np.ndarray or X.dtype is not dtype or X.shape[:1] == (0,):
            return None
        if X.ndim == 2 and X.shape[1] == self._in_features:
            return X
        if X.ndim == 4 and X.shape[1:] == self.in_shape and X.flags.c_contiguous:
            return X.reshape(len(X), self._in_features)
        return None

    def _numpy_run(self, codes):
        """(out float32, returned integers int64, node ranges [(min, max)]) in NumPy."""
        return _run_ops(self.ops, codes.reshape((len(codes),) + self.in_shape))

    # --- bit widths
    def bit_width_report(self, X=None):
        """One dict per integer value (node) of the circuit: node, name (layer), kind
        ("input", "accumulator", "pool_sum", "rounded", "lookup_output", "reshape",
        "transpose", "add", "maxpool"), min, max, bits (measured on X, default the
        calibration set), static_min, static_max, static_bits (the C core's per-node bound
        over all possible inputs), worst_min, worst_max, worst_bits, worst_method (the
        tightest worst case, qatfhe.worst_case), checked (whether max_bits applies to it).
        A maxpool node also has
        pairwise_max_lookups (per sample), max_diff_min, max_diff_max, max_diff_bits (the
        range of a - b its max(a, b) = b + relu(a - b) lookups read, from its input's range
        on X) and static_max_diff_bits.  After compile_fhe every node also has pbs_bits,
        the bit width of the programmable bootstrap computing it (lookups and rounds;
        None otherwise)."""
        if X is None:
            report = [dict(r) for r in self._report]
            return report if self._fhe is None else self._fhe.annotate(report)
        ranges = self._circuit.run(self._samples(X, "X"))[2]
        report = []
        for j, node in enumerate(self._nodes):
            lo, hi = int(ranges[j, 0]), int(ranges[j, 1])
            report.append({"node": j, "name": node["name"], "kind": node["kind"],
                           "min": lo, "max": hi, "bits": _core.bits_for_range(lo, hi),
                           "static_min": node["static_min"], "static_max": node["static_max"],
                           "static_bits": node["static_bits"],
                           "checked": self._is_checked(j)})
            if self._report is not None and "worst_bits" in self._report[j]:
                report[-1].update({k: v for k, v in self._report[j].items()
                                   if k.startswith("worst_")})
        for k, op in enumerate(self.ops):
            if op.kind == "maxpool":
                report[k + 1].update(self._maxpool_fields(op, report[op.src]))
        return report if self._fhe is None else self._fhe.annotate(report)

    def _maxpool_fields(self, op, src):
        """The pairwise-max lookups of a maxpool op reading the node of report entry src."""
        lo, hi, s_lo, s_hi = src["min"], src["max"], src["static_min"], src["static_max"]
        return {"pairwise_max_lookups": _pairwise_max_count(op, self._nodes[op.src]["shape"]),
                "max_diff_min": lo - hi, "max_diff_max": hi - lo,
                "max_diff_bits": _core.bits_for_range(lo - hi, hi - lo),
                "static_max_diff_bits": _core.bits_for_range(s_lo - s_hi, s_hi - s_lo)}

    def _set_maxpool_info(self):
        """op.info of each maxpool op from the calibration report (a cost model's input)."""
        keys = ("pairwise_max_lookups", "max_diff_min", "max_diff_max", "max_diff_bits",
                "static_max_diff_bits")
        for k, op in enumerate(self.ops):
            if op.kind == "maxpool":
                op.info = {key: self._report[k + 1][key] for key in keys}

    def _is_checked(self, j):
        """Every value counts against max_bits except one rounded before its lookup (all
        its readers are round ops: the rounded node is the lookup's input)."""
        readers = self._consumers[j]
        return not readers or any(kind != "round" for kind in readers)

    def _role(self, j):
        """What a value is used for, in the words of the max_bits error."""
        readers = self._consumers[j]
        if "lookup" in readers:
            return "is used as an input to a table lookup"
        if "decode" in readers:
            return "is returned by the circuit"
        if self._nodes[j]["kind"] == "input":
            return "is an encrypted input of the circuit"
        if self._nodes[j]["kind"] == "lookup_output":
            return "is the output of a table lookup"
        return "is an encrypted integer of the circuit"

    def _calibrate(self, X):
        self._calibration = np.reshape(X, (len(X), -1))
        self._report = self.bit_width_report(self._calibration)
        self._set_maxpool_info()

    def _find_worst_case(self):
        from .worst_case import annotate, worst_case
        annotate(self._report, *worst_case(self))

    @property
    def max_bit_width(self):
        """Largest bit width of any integer value, measured on the calibration set."""
        return max(r["bits"] for r in self._report)

    @property
    def accumulator_bit_width(self):
        """Largest measured bit width of a Linear / Conv2d accumulator."""
        return max((r["bits"] for r in self._report if r["kind"] == "accumulator"), default=0)

    @property
    def worst_case_bit_width(self):
        """Largest bit width of any integer value over all possible input codes: exact when
        the input code space was enumerated, else a proven bound (qatfhe.worst_case;
        worst_case_method says which)."""
        return max(r.get("worst_bits", r["static_bits"]) for r in self._report)

    @property
    def worst_case_method(self):
        """"exhaustive" (every input code combination was run), "bound" (per-element
        interval propagation) or "static" (the C core's per-node box, older files)."""
        return self._report[0].get("worst_method", "static")

    @property
    def lookup_bit_width(self):
        """Largest measured bit width among the values max_bits applies to."""
        return max(r["bits"] for r in self._report if r["checked"])

    def fhe_cost(self, widths="measured"):
        """FHE cost estimate in Mops: the sum over table lookups of a per-width cost
        calibrated on Concrete (qatfhe.cost); widths "measured" or "worst_case"."""
        from .cost import fhe_cost
        return fhe_cost(self, widths)

    @property
    def n_lookups(self):
        """Number of table lookups (programmable bootstraps) per sample."""
        from .cost import lookups
        return sum(count for _, count, _, _ in lookups(self))

    def check_bit_widths(self, max_bits=None, on_overflow="raise"):
        """Raise BitWidthError naming the first value wider than max_bits (default: the
        compile-time max_bits) on the calibration set, or warn with on_overflow="warn"."""
        max_bits, on_overflow = _check_limits(self.max_bits if max_bits is None else max_bits,
                                              on_overflow)
        for r in self._report:
            if r["checked"] and r["bits"] > max_bits:
                message = (f"the {r['kind'].replace('_', ' ')} of {r['name']} needs {r['bits']} "
                           f"bits (range [{r['min']}, {r['max']}] on the calibration set): this "
                           f"{r['bits']}-bit value {self._role(r['node'])}, over the "
                           f"{max_bits}-bit limit; lower n_bits, narrow or prune the layer, or "
                           f"set rounding_threshold_bits")
                _report_overflow(message, on_overflow)
                return False
            if r.get("max_diff_bits", 0) > max_bits:
                message = (f"the pairwise max lookups of {r['name']} read a - b in "
                           f"[{r['max_diff_min']}, {r['max_diff_max']}] on the calibration set: "
                           f"{r['max_diff_bits']} bits, over the {max_bits}-bit table-lookup "
                           f"limit; lower the bit width of the quantizer before it")
                _report_overflow(message, on_overflow)
                return False
        return True

    # --- encrypted execution (qatfhe.fhe; needs the `fhe` extra, concrete-python)
    def compile_fhe(self, X=None, p_error=None, global_p_error=None, show_progress=False,
                    **configuration):
        """Compile the integer circuit to FHE with Concrete: encrypted input codes, clear
        integer weights, one table lookup (PBS) per element for each epilogue; the last
        integers are decrypted and dequantised in the clear.  X (default: the calibration
        set, which a loaded module no longer has) sets the ranges Concrete sizes every
        value for.  p_error bounds the failure probability of each PBS, global_p_error
        that of a whole sample's run (give at most one; default: Concrete's
        global_p_error = 1e-5, so at most one sample in 100,000 may come back wrong).
        Other keyword arguments go to concrete.fhe.Configuration.  Returns self."""
        from . import fhe as fhe_module
        fhe_module.compile_fhe(self, X, p_error, global_p_error, show_progress,
                               **configuration)
        return self

    def fhe_keygen(self, force=False, seed=None):
        """Generate the FHE keys now (they are otherwise generated by the first
        fhe="execute" call and cached); returns the seconds taken (0.0 when cached)."""
        from . import fhe as fhe_module
        return fhe_module.compiled(self).keygen(force=force, seed=seed)

    def fhe_statistics(self):
        """What one encrypted sample costs, from Concrete's compiled circuit: pbs_count,
        pbs_count_per_bit_width, pbs_count_per_parameter, complexity, max_bit_width,
        p_error (per PBS), global_p_error (per sample), key and ciphertext sizes in bytes,
        key_switch_count, and lookups (op, name, pbs count and PBS bit width per lookup)."""
        from . import fhe as fhe_module
        return fhe_module.compiled(self).statistics()

    def save_fhe(self, directory):
        """Write the deployment files for qatfhe.fhe.Server and qatfhe.fhe.Client into
        directory: server.zip, client.specs.json, qatfhe.json (plain JSON, no pickle).
        Returns the circuit id."""
        from . import fhe as fhe_module
        return fhe_module.save(self, directory)

    # --- persistence
    def save(self, path):
        """Write the module to one .npz file (no pickle): a JSON header with a format
        version and the ops, their weight codes, offsets, scales and biases as arrays."""
        from .io import write_npz
        arrays = {}
        ops = [op.to_header(f"op{k}", arrays) for k, op in enumerate(self.ops)]
        header = {"format": FORMAT, "version": VERSION, "info": self.info,
                  "input_quant": self.input_quant.to_dict(), "in_shape": list(self.in_shape),
                  "ops": ops, "report": self._report}
        write_npz(path, header, arrays)

    @classmethod
    def load(cls, path):
        """A module written by save(path); FileFormatError (a ValueError) for a truncated,
        corrupt, foreign or inconsistent file.  Once built, one probe batch must give the
        same integers through the C circuit and its NumPy twin."""
        from .io import FileFormatError, read_npz, verify_checksum
        header, arrays = read_npz(path, FORMAT, VERSION)
        try:
            input_quant = _Quantizer(**header["input_quant"])
            ops = [_Op.from_header(d, f"op{k}", arrays) for k, d in enumerate(header["ops"])]
            verify_checksum(path, header, arrays)
            module = cls(input_quant, header["in_shape"], ops, header["info"],
                         report=header["report"])
            if len(module._report) != len(module._nodes):
                raise ValueError("the bit-width report does not match the circuit")
            module._probe()
        except FileFormatError:
            raise
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError, IndexError,
                RecursionError, NotImplementedError) as exc:
            raise FileFormatError(f"{os.fspath(path)!r} describes an invalid quantized module: "
                                  f"{type(exc).__name__}: {exc}") from None
        return module

    def _probe(self):
        """ValueError unless the circuit and its NumPy twin agree on a few inputs (the
        input quantizer's extremes and zero), when the circuit is small enough to try."""
        if sum(int(np.prod(node["shape"])) for node in self._nodes) > 1 << 22:
            return
        q = self.input_quant
        codes = np.array([[q.qmin], [q.qmax], [min(max(0, q.qmin), q.qmax)]], np.int64)
        codes = np.repeat(codes, self.in_features, axis=1)
        c_out, c_int, _ = self._circuit.run_codes(codes, ranges=False)
        np_out, np_int, _ = _run_ops(self.ops, codes.reshape((-1,) + self.in_shape), False)
        if not (np.array_equal(c_int, np_int) and np.array_equal(c_out, np_out)):
            raise ValueError("its ops give different results in the circuit and in NumPy")
