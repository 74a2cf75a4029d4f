"""Compile a trained network into an exact integer circuit (REFERENCE.md sections 5, 6).

`compile_model(net, X_calib, n_bits=3)` quantizes a float network after training, as
Concrete-ML's `compile_torch_model`; `compile_qat_model(net, X_calib)` imports a
quantization-aware network, as `compile_brevitas_qat_model`.  Both return a
`QuantizedModule` whose circuit lives in C (csrc/circuit.h):

    input codes q_x = clip(rint(x / s_x), qmin - Z_x, qmax - Z_x) + Z_x      (client)
    per layer, per output o:
        acc  = sum_i q_x[i] q_w[o, i]              encrypted integer (weights have Z_w = 0)
        acc' = acc rounded to a multiple of 2^l   only with rounding_threshold_bits
        one table lookup of acc': y = float32(acc' - Z_x sum_i q_w[o, i]) * (s_x s_w) + b[o],
        ReLU, and requantisation to the next layer's codes
    the last layer's acc is returned and dequantized in the clear (its y is the output),
    as Concrete-ML does for a final Gemm; a network ending in an activation quantizes it.

Modes, as in Concrete-ML: fhe="disable" runs the quantized model in the clear (NumPy, here),
fhe="simulate" runs the integer circuit (C) with the same integers and the same float32
lookups, so the two agree exactly; fhe="execute" needs an encryption backend (none yet).

Rounding is kept identical to the engine's fake-quant forward: both quantize with the one
rule q = clamp(rint(x / s)) in float32 and turn an accumulator into a float with the one
epilogue float32(acc) * (s_x * s_w) + b (csrc/quant.h); the circuit's integers are exact,
so for a QAT network `simulate` reproduces the eval-mode network bit for bit (one exception:
a network ending with a quantizer outputs s * q, and where the engine's float code q is
-0.0 the circuit's integer code gives +0.0; the values are equal).

Choices where Concrete-ML offers several (documented here, tested in tests/test_compile.py):
- An integer n_bits sets all four of model_inputs, op_inputs, op_weights and model_outputs
  (the tutorial's "3-bit weights and activations"; current Concrete-ML raises model_inputs
  and model_outputs to at least 5 bits: pass a dict to get that).  In a dict, op_inputs and
  op_weights are required; model_inputs and model_outputs default to op_inputs.
- model_outputs only matters for a network ending in ReLU: the last Linear's accumulator is
  returned unquantized (Concrete-ML's graph-output Gemm) and needs no output bits.
- Zero points enter as q = clamp(rint(x / s), qmin - Z, qmax - Z) + Z, the engine's rule,
  where Concrete-ML writes clip(rint(x / s + Z)); they differ only on exact ties with odd Z.
- Scales are computed in float64 as Concrete-ML does and stored in float32, the precision of
  the circuit's lookups.  A constant tensor gets scale |value| (Concrete-ML: value itself),
  with a zero point that keeps it exact, so every scale stays positive.
- rounding_threshold_bits (int in [2, 16], or {"n_bits": int, "method": "exact"}): per
  hidden layer, lsbs = (bits of its accumulator on the calibration set) - n_bits low bits
  are rounded away (round half up, Concrete's round_bit_pattern) before its lookup, which
  then sees a narrower integer; the last layer is not rounded (its accumulator is returned).
- Bit widths (section 6) are measured per integer value: "input" codes, "accumulator",
  "rounded" accumulator (the lookup's input when rounding) and "lookup_output" codes.
  max_bit_width is the largest over all of them; the max_bits check (the 16-bit table-lookup
  limit) applies to every value except an accumulator that is rounded before its lookup
  (rounding is what relaxes that limit, as in Concrete-ML).  worst_case_bit_width bounds
  every value over all possible input codes."""
import json
import numbers
import os
import warnings
import zipfile

import numpy as np

from . import _checks
from . import _core

__all__ = ["compile_model", "compile_qat_model", "QuantizedModule", "BitWidthError"]

FORMAT = "qatfhe-quantized-module"
VERSION = 1
N_BITS_KEYS = ("model_inputs", "op_inputs", "op_weights", "model_outputs")
STABILITY_CONST = 1e-6      # Concrete-ML: a range narrower than this is one value
F32 = np.float32


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


# ------------------------------------------------------------------ one stage, in NumPy

class _Stage:
    """One fully connected layer of the circuit and the lookup after it."""

    def __init__(self, name, layer, weight, weight_scale, bias, relu, input_quant):
        self.name, self.layer = name, int(layer)
        self.weight = np.ascontiguousarray(weight, np.int32)            # (out, in) codes
        self.weight_scale = F32(weight_scale)
        self.bias = None if bias is None else np.ascontiguousarray(bias, F32)
        self.relu = bool(relu)
        self.input_quant = input_quant
        self.output_quant = None
        self.lsbs = 0

    def accumulate(self, codes):
        """acc (n, out) = codes (n, in) @ q_w^T, exact: float64 BLAS when every partial
        sum stays below 2^53, int64 otherwise."""
        w = self.weight.astype(np.int64)
        bound = float(np.abs(codes).max(initial=0)) * float(np.abs(w).sum(axis=1).max(initial=0))
        if bound < 2.0 ** 52:
            return (codes.astype(np.float64) @ w.T.astype(np.float64)).astype(np.int64)
        return codes @ w.T

    def lookup_input(self, acc):
        """(the value the lookup reads, the rounded integer or None)."""
        if self.lsbs == 0:
            return acc, None
        rounded = (acc + (1 << (self.lsbs - 1))) >> self.lsbs     # floor: round half up
        return rounded << self.lsbs, rounded

    def affine(self, a):
        """The lookup's float part: float32(a - Z_x sum q_w) * (s_x s_w) + b, then ReLU."""
        zx = self.input_quant.zero_point
        t = a - zx * self.weight.astype(np.int64).sum(axis=1)
        scale = F32(self.input_quant.scale) * self.weight_scale
        bias = np.zeros(self.weight.shape[0], F32) if self.bias is None else self.bias
        y = t.astype(F32) * scale + bias
        return np.where(y < 0, F32(0), y) if self.relu else y

    def core_spec(self):
        return {"name": self.name, "weight": self.weight, "weight_scale": float(self.weight_scale),
                "bias": self.bias, "lsbs_to_remove": self.lsbs, "relu": int(self.relu),
                "output_quant": None if self.output_quant is None else
                self.output_quant.as_tuple()}


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


def _check_limits(max_bits, on_overflow):
    max_bits = _checks.positive_int(max_bits, "max_bits", minimum=2)
    if on_overflow not in ("raise", "warn"):
        raise ValueError(f"on_overflow must be 'raise' or 'warn', got {on_overflow!r}")
    return max_bits, on_overflow


def _layer_name(net, i):
    return f"layer {i} ({type(net[i]).__name__})"


# ------------------------------------------------------------------ network structure

def _ptq_plan(net):
    """[(linear index, relu)] for Linear [ReLU] Linear [ReLU] ... ; refuses anything else."""
    from . import nn
    plan = []
    for i, layer in enumerate(net):
        if isinstance(layer, (nn.QuantLinear, nn.QuantIdentity, nn.QuantReLU)):
            raise ValueError(f"{_layer_name(net, i)} is already quantized: compile networks "
                             f"trained with quantizers with compile_qat_model")
        if isinstance(layer, nn.Linear):
            plan.append([i, False])
        elif isinstance(layer, nn.ReLU):
            if not plan:
                raise ValueError(f"{_layer_name(net, i)} comes before any Linear layer: the "
                                 f"network must start with a Linear layer")
            if plan[-1][1]:
                raise ValueError(f"{_layer_name(net, i)} follows another ReLU: remove one")
            plan[-1][1] = True
        else:
            raise ValueError(f"{_layer_name(net, i)} cannot be compiled: supported layers are "
                             f"Linear and ReLU")
    return [tuple(p) for p in plan]


def _qat_plan(net):
    """[(linear index, relu, quantizer index or None)] for QuantIdentity, then QuantLinear
    [ReLU] (QuantIdentity | QuantReLU) ... QuantLinear [quantizer]; refuses anything else,
    naming the layer and what to add."""
    from . import nn
    act = (nn.QuantIdentity, nn.QuantReLU)
    layers = list(net)
    if not isinstance(layers[0], nn.QuantIdentity):
        raise ValueError(f"{_layer_name(net, 0)} does not quantize the input: a network is "
                         f"compiled only if it is quantized end to end; add "
                         f"nn.QuantIdentity(...) as its first layer")
    plan, i, quantized_input = [], 1, True
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, nn.QuantLinear):
            if not quantized_input:
                raise ValueError(f"{_layer_name(net, i)} receives float values: add a "
                                 f"QuantIdentity (or QuantReLU) before it")
            linear, relu, quant = i, False, None
            i += 1
            if i < len(layers) and isinstance(layers[i], nn.ReLU):
                relu, relu_at = True, i
                i += 1
            if i < len(layers) and isinstance(layers[i], act):
                quant = i
                relu = relu or isinstance(layers[i], nn.QuantReLU)
                i += 1
            elif relu:
                raise ValueError(f"{_layer_name(net, relu_at)} outputs float values: replace "
                                 f"it with QuantReLU or add a QuantIdentity after it")
            quantized_input = quant is not None
            plan.append((linear, relu, quant))
        elif isinstance(layer, nn.Linear):
            raise ValueError(f"{_layer_name(net, i)} is a float layer: the network must be "
                             f"quantized end to end; replace it with QuantLinear")
        elif isinstance(layer, act):
            raise ValueError(f"{_layer_name(net, i)} follows another quantizer "
                             f"({_layer_name(net, i - 1)}): keep one quantizer between "
                             f"QuantLinear layers")
        elif isinstance(layer, nn.ReLU):
            raise ValueError(f"{_layer_name(net, i)} applies a float ReLU to quantized values: "
                             f"put it right after a QuantLinear (followed by a QuantIdentity), "
                             f"or use QuantReLU")
        else:
            raise ValueError(f"{_layer_name(net, i)} cannot be compiled")
    if not plan:
        raise ValueError("the network has no QuantLinear layer to compile")
    return plan


def _act_quantizer(layer):
    q = layer.act_quant
    return _Quantizer(layer.scale(), 0, q.qmin, q.qmax)


# ------------------------------------------------------------------ compilation

def _calibrate_stage(stage, codes, rounding_bits, last):
    """Run one stage on the calibration codes; set its rounding; return its float y."""
    acc = stage.accumulate(codes)
    if rounding_bits is not None and not last:
        bits = _core.bits_for_range(int(acc.min()), int(acc.max()))
        stage.lsbs = max(0, bits - rounding_bits)
    a, _ = stage.lookup_input(acc)
    return stage.affine(a)


def compile_model(net, X_calib, n_bits=3, rounding_threshold_bits=None, max_bits=16,
                  on_overflow="raise"):
    """Post-training quantization of a float network (Linear and ReLU layers), as
    Concrete-ML's compile_torch_model: symmetric per-tensor weights (op_weights bits),
    the input and every activation asymmetric, calibrated by min/max over X_calib layer by
    layer on the quantized outputs of the previous layer (model_inputs / op_inputs /
    model_outputs bits).  Returns a QuantizedModule; raises BitWidthError (or warns, with
    on_overflow="warn") when a value exceeds max_bits on the calibration set."""
    bits = _check_n_bits(n_bits)
    rounding = _check_rounding(rounding_threshold_bits)
    max_bits, on_overflow = _check_limits(max_bits, on_overflow)
    plan = _ptq_plan(net)
    X = _checks.features(X_calib, net.in_features, "X_calib")
    input_quant = _asymmetric(X, bits["model_inputs"])
    codes, x_quant, stages = input_quant.quantize(X), input_quant, []
    for k, (index, relu) in enumerate(plan):
        layer, last = net[index], k == len(plan) - 1
        weight, scale = _symmetric_weights(layer.weight, bits["op_weights"])
        stage = _Stage(_layer_name(net, index), index, weight, scale, layer.bias, relu, x_quant)
        y = _calibrate_stage(stage, codes, rounding, last)
        if not last or relu:
            stage.output_quant = _asymmetric(y, bits["model_outputs" if last else "op_inputs"])
            codes, x_quant = stage.output_quant.quantize(y), stage.output_quant
        stages.append(stage)
    info = {"mode": "ptq", "n_bits": bits, "rounding_threshold_bits": rounding,
            "max_bits": max_bits}
    module = QuantizedModule(input_quant, stages, info)
    module._calibrate(X)
    module.check_bit_widths(on_overflow=on_overflow)
    return module


def compile_qat_model(net, X_calib, rounding_threshold_bits=None, max_bits=16,
                      on_overflow="raise"):
    """Import a quantization-aware network, as Concrete-ML's compile_brevitas_qat_model:
    scales, zero points (0) and bit widths come from its quantizers in eval mode (no new
    calibration); X_calib only measures bit widths and, with rounding_threshold_bits,
    calibrates the rounding.  The network must be quantized end to end: a QuantIdentity
    first, a quantizer between QuantLinear layers, no float Linear.  Returns a
    QuantizedModule whose fhe="simulate" output equals the eval-mode network's."""
    rounding = _check_rounding(rounding_threshold_bits)
    max_bits, on_overflow = _check_limits(max_bits, on_overflow)
    plan = _qat_plan(net)
    X = _checks.features(X_calib, net.in_features, "X_calib")
    input_quant = _act_quantizer(net[0])
    codes, x_quant, stages = input_quant.quantize(X), input_quant, []
    for k, (index, relu, quant_index) in enumerate(plan):
        layer, last = net[index], k == len(plan) - 1
        weight, scale = layer.quant_weight()
        stage = _Stage(_layer_name(net, index), index, weight, scale, layer.bias, relu, x_quant)
        y = _calibrate_stage(stage, codes, rounding, last)
        if quant_index is not None:
            stage.output_quant = _act_quantizer(net[quant_index])
            codes, x_quant = stage.output_quant.quantize(y), stage.output_quant
        stages.append(stage)
    info = {"mode": "qat", "n_bits": None, "rounding_threshold_bits": rounding,
            "max_bits": max_bits}
    module = QuantizedModule(input_quant, stages, info)
    module._calibrate(X)
    module.check_bit_widths(on_overflow=on_overflow)
    return module


# ------------------------------------------------------------------ the compiled module

class QuantizedModule:
    """A compiled network: an exact integer circuit in C plus its NumPy twin."""

    def __init__(self, input_quant, stages, info, report=None):
        self.input_quant = input_quant
        self.stages = stages
        self.info = dict(info)
        self._circuit = _core.Circuit(input_quant.as_tuple(), [s.core_spec() for s in stages])
        self._nodes = self._circuit.nodes()
        self._report = report

    # --- description
    @property
    def in_features(self):
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
        return (f"QuantizedModule({self.info['mode']}, {self.in_features} -> "
                f"{self.out_features}, {len(self.stages)} layers, max_bit_width="
                f"{self.max_bit_width})")

    # --- inference
    def _check_fhe(self, fhe):
        if fhe == "execute":
            raise NotImplementedError("fhe='execute' needs an FHE encryption backend, which "
                                      "qatfhe does not have yet; fhe='simulate' runs the same "
                                      "integer circuit without encryption")
        if fhe not in ("disable", "simulate"):
            raise ValueError(f"fhe must be 'disable', 'simulate' or 'execute', got {fhe!r}")

    def quantize_input(self, X):
        """int64 input codes (n, in_features) of float X."""
        X = _checks.features(X, self.in_features, "X")
        return self.input_quant.quantize(X)

    def _check_codes(self, q_x):
        q = np.asarray(q_x)
        if q.dtype == object or not np.issubdtype(q.dtype, np.integer):
            raise TypeError(f"q_x must hold integer input codes, got dtype {q.dtype}")
        if q.ndim != 2 or q.shape[1] != self.in_features or q.shape[0] == 0:
            raise ValueError(f"q_x must have shape (n_samples >= 1, {self.in_features}), got "
                             f"{q.shape}")
        lo, hi = self.input_quant.qmin, self.input_quant.qmax
        if q.min() < lo or q.max() > hi:
            raise ValueError(f"q_x must hold codes in [{lo}, {hi}], got values in "
                             f"[{q.min()}, {q.max()}]")
        return np.ascontiguousarray(q, np.int64)

    def quantized_forward(self, q_x, fhe="simulate"):
        """The integers the encrypted circuit returns for input codes q_x: the last layer's
        accumulators (or its output codes when it ends with a quantizer), (n, out)."""
        self._check_fhe(fhe)
        q_x = self._check_codes(q_x)
        if fhe == "simulate":
            return self._circuit.run_codes(q_x)[1]
        return self._numpy_run(q_x)[1]

    def dequantize_output(self, q_y):
        """Float outputs (n, out) from quantized_forward's integers, in the clear."""
        q = np.asarray(q_y)
        if q.dtype == object or not np.issubdtype(q.dtype, np.integer):
            raise TypeError(f"q_y must hold integers, got dtype {q.dtype}")
        if q.ndim != 2 or q.shape[1] != self.out_features:
            raise ValueError(f"q_y must have shape (n_samples, {self.out_features}), got "
                             f"{q.shape}")
        last = self.stages[-1]
        if last.output_quant is not None:
            return last.output_quant.dequantize(q)
        return last.affine(q.astype(np.int64))

    def forward(self, X, fhe="disable"):
        """Float outputs (n, out_features): quantize X, run the circuit (fhe="simulate", C)
        or its clear NumPy twin (fhe="disable"), dequantize."""
        self._check_fhe(fhe)
        X = _checks.features(X, self.in_features, "X")
        if fhe == "simulate":
            return self._circuit.run(X)[0]
        return self._numpy_run(self.input_quant.quantize(X))[0]

    __call__ = forward

    def predict(self, X, fhe="disable"):
        """Class indices (int64): argmax of forward (first maximum)."""
        return np.asarray(self.forward(X, fhe=fhe)).argmax(axis=1)

    def _numpy_run(self, codes):
        """(out float32, returned integers int64, node ranges [(min, max)]) in NumPy."""
        ranges = [(codes.min(), codes.max())]
        out = returned = None
        for k, stage in enumerate(self.stages):
            acc = stage.accumulate(codes)
            ranges.append((acc.min(), acc.max()))
            a, rounded = stage.lookup_input(acc)
            if rounded is not None:
                ranges.append((rounded.min(), rounded.max()))
            y = stage.affine(a)
            if stage.output_quant is None:
                out, returned = y, a
                continue
            codes = stage.output_quant.quantize(y)
            ranges.append((codes.min(), codes.max()))
            if k == len(self.stages) - 1:
                out, returned = stage.output_quant.dequantize(codes), codes
        return out, returned, [(int(lo), int(hi)) for lo, hi in ranges]

    # --- bit widths
    def bit_width_report(self, X=None):
        """One dict per integer value of the circuit: node, name (layer), kind ("input",
        "accumulator", "rounded", "lookup_output"), min, max, bits (measured on X, default
        the calibration set), static_min, static_max, static_bits (over all possible
        inputs), checked (whether max_bits applies to it)."""
        if X is None:
            return [dict(r) for r in self._report]
        X = _checks.features(X, self.in_features, "X")
        ranges = self._circuit.run(X)[2]
        report = []
        for j, node in enumerate(self._nodes):
            lo, hi = int(ranges[j, 0]), int(ranges[j, 1])
            report.append({"node": j, "name": node["name"], "kind": node["kind"],
                           "min": lo, "max": hi, "bits": _core.bits_for_range(lo, hi),
                           "static_min": node["static_min"], "static_max": node["static_max"],
                           "static_bits": node["static_bits"],
                           "checked": self._is_checked(j)})
        return report

    def _is_checked(self, j):
        """Every value counts against max_bits except an accumulator rounded before its
        lookup (the rounded node that follows it is the lookup's input)."""
        node = self._nodes[j]
        return not (node["kind"] == "accumulator" and self.stages[node["stage"]].lsbs > 0)

    def _role(self, j):
        """What a value is used for, in the words of the max_bits error."""
        node = self._nodes[j]
        if node["kind"] == "input":
            return "is an encrypted input of the circuit"
        if node["kind"] == "lookup_output":
            return "is the output of a table lookup"
        if self.stages[node["stage"]].output_quant is None:
            return "is returned by the circuit"
        return "is used as an input to a table lookup"

    def _calibrate(self, X):
        self._report = self.bit_width_report(X)

    @property
    def max_bit_width(self):
        """Largest bit width of any integer value, measured on the calibration set."""
        return max(r["bits"] for r in self._report)

    @property
    def worst_case_bit_width(self):
        """Largest bit width of any integer value over all possible input codes."""
        return max(r["static_bits"] for r in self._report)

    @property
    def lookup_bit_width(self):
        """Largest measured bit width among the values max_bits applies to."""
        return max(r["bits"] for r in self._report if r["checked"])

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
                if on_overflow == "raise":
                    raise BitWidthError(message)
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                return False
        return True

    # --- persistence
    def save(self, path):
        """Write the module to one .npz file (no pickle): a JSON header with a format
        version, the weight codes and biases."""
        from .io import write_npz
        arrays, stages = {}, []
        for k, s in enumerate(self.stages):
            arrays[f"stage{k}/weight"] = s.weight
            if s.bias is not None:
                arrays[f"stage{k}/bias"] = s.bias
            stages.append({"name": s.name, "layer": s.layer, "weight_scale": float(s.weight_scale),
                           "relu": s.relu, "lsbs_to_remove": s.lsbs, "has_bias": s.bias is not None,
                           "output_quant": None if s.output_quant is None
                           else s.output_quant.to_dict()})
        header = {"format": FORMAT, "version": VERSION, "info": self.info,
                  "input_quant": self.input_quant.to_dict(), "stages": stages,
                  "report": self._report}
        write_npz(path, header, arrays)

    @classmethod
    def load(cls, path):
        """A module written by save(path); ValueError for a truncated or foreign file."""
        header, arrays = _read(path)
        try:
            input_quant = _Quantizer(**header["input_quant"])
            stages, x_quant = [], input_quant
            for k, d in enumerate(header["stages"]):
                weight = arrays[f"stage{k}/weight"]
                bias = arrays[f"stage{k}/bias"] if d["has_bias"] else None
                if weight.dtype != np.int32 or weight.ndim != 2 or (
                        bias is not None and (bias.dtype != F32 or bias.shape != weight.shape[:1])):
                    raise ValueError(f"stage {k} arrays have the wrong dtype or shape")
                stage = _Stage(d["name"], d["layer"], weight, d["weight_scale"], bias, d["relu"],
                               x_quant)
                stage.lsbs = int(d["lsbs_to_remove"])
                if d["output_quant"] is not None:
                    stage.output_quant = x_quant = _Quantizer(**d["output_quant"])
                stages.append(stage)
            module = cls(input_quant, stages, header["info"], report=header["report"])
            if len(module._report) != len(module._nodes):
                raise ValueError("the bit-width report does not match the circuit")
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{os.fspath(path)!r} describes an invalid quantized module: "
                             f"{exc}") from None
        return module


def _read(path):
    """(header, arrays) of a QuantizedModule file, or a ValueError saying what is wrong."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ValueError(f"{path!r} is not a readable qatfhe file (truncated or foreign?): "
                         f"{exc}") from None
    if "__header__" not in arrays:
        raise ValueError(f"{path!r} is not a qatfhe file: it has no header")
    try:
        header = json.loads(arrays.pop("__header__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path!r} has a corrupt header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise ValueError(f"{path!r} is not a {FORMAT} file (format {found!r})")
    if header.get("version") != VERSION:
        raise ValueError(f"{path!r} has format version {header.get('version')!r}; this qatfhe "
                         f"reads version {VERSION}")
    return header, arrays
