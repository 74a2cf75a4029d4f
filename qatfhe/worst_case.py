"""The worst case of every integer value of a compiled circuit, over all possible inputs.

Two methods, the better one that applies:
- "exhaustive": when the input code space is small (every input value takes qmax - qmin + 1
  codes; their product at most EXHAUSTIVE_LIMIT = 2^20 combinations, e.g. the tutorial's
  2 inputs with 7 codes each = 49), the circuit runs on every combination of input codes and
  each value's range is the true worst case.
- "bound": otherwise a proven interval bound, propagated element by element: a Linear or
  Conv2d output takes sum max(w lo, w hi) over its own inputs' intervals, a table lookup
  (non-decreasing, csrc/circuit.c) maps each element's interval through its own function, so
  the next layer sees the lookup outputs' actual ranges rather than the whole code range.  It
  is never looser than the C core's static bounds (one box per node), and is taken as their
  intersection.

Used by compile_model / compile_qat_model (the report's worst_min, worst_max, worst_bits and
worst_method; QuantizedModule.worst_case_bit_width) and by the A2Q budget check."""
import copy

import numpy as np

from . import _core

__all__ = ["EXHAUSTIVE_LIMIT", "input_code_count", "exhaustive_ranges", "interval_ranges",
           "worst_case"]

EXHAUSTIVE_LIMIT = 1 << 20
BLOCK = 1 << 16            # input combinations per run of the circuit


def input_code_count(module):
    """Number of input code combinations of the module (a Python int, may be huge)."""
    q = module.input_quant
    return (q.qmax - q.qmin + 1) ** module.in_features


def _combinations(lo, hi, n_inputs, start, stop):
    """Input codes (stop - start, n_inputs) int64: combinations start..stop-1 of codes in
    [lo, hi] per input, the last input varying fastest."""
    k = hi - lo + 1
    index = np.arange(start, stop, dtype=np.int64)
    codes = np.empty((len(index), n_inputs), np.int64)
    for j in range(n_inputs - 1, -1, -1):
        codes[:, j] = index % k + lo
        index //= k
    return codes


def exhaustive_ranges(module, limit=EXHAUSTIVE_LIMIT):
    """[(min, max)] of every node over every input code combination (the circuit run on
    all of them, in blocks), or None when there are more than `limit` combinations."""
    count = input_code_count(module)
    if count > limit:
        return None
    q = module.input_quant
    lo = hi = None
    for start in range(0, count, BLOCK):
        codes = _combinations(q.qmin, q.qmax, module.in_features, start, min(count, start + BLOCK))
        ranges = np.asarray(module._circuit.run_codes(codes, True)[2], np.int64)
        lo = ranges[:, 0] if lo is None else np.minimum(lo, ranges[:, 0])
        hi = ranges[:, 1] if hi is None else np.maximum(hi, ranges[:, 1])
    return [(int(a), int(b)) for a, b in zip(lo, hi)]


def _split_weights(op):
    """Two copies of a dense or conv op holding the positive and the negative parts of its
    weights (zero point folded in)."""
    w = op.weight.astype(np.int64) - op.weight_zero_point
    parts = []
    for part in (np.maximum(w, 0), np.minimum(w, 0)):
        twin = copy.copy(op)
        twin.weight, twin.weight_zero_point = part.astype(np.int32), 0
        parts.append(twin)
    return parts


def interval_ranges(module):
    """[(min, max)] of every node by per-element interval propagation (module docstring).
    Each node's value is held as a pair of samples (lower bounds, upper bounds)."""
    q = module.input_quant
    shape = (1,) + module.in_shape
    values = [np.concatenate([np.full(shape, q.qmin, np.int64), np.full(shape, q.qmax, np.int64)])]
    for op in module.ops[:-1]:                       # the last op decodes in the clear
        x = values[op.src]
        if op.kind in ("dense", "conv"):
            pos, neg = _split_weights(op)
            lo_x, hi_x = x[:1], x[1:]
            lo = pos.run({op.src: lo_x}) + neg.run({op.src: hi_x})
            hi = pos.run({op.src: hi_x}) + neg.run({op.src: lo_x})
            values.append(np.concatenate([lo, hi]))
        else:                                        # monotone element-wise (or re-indexing)
            values.append(op.run(values))
    return [(int(v[0].min()), int(v[1].max())) for v in values]


def worst_case(module, limit=EXHAUSTIVE_LIMIT):
    """(method, [(min, max)] per node): "exhaustive" when the input code space has at most
    `limit` combinations, else "bound" (interval propagation intersected with the C core's
    static bounds)."""
    exact = exhaustive_ranges(module, limit)
    if exact is not None:
        return "exhaustive", exact
    ranges = []
    for (lo, hi), node in zip(interval_ranges(module), module._nodes):
        ranges.append((max(lo, node["static_min"]), min(hi, node["static_max"])))
    return "bound", ranges


def annotate(report, method, ranges):
    """Add worst_min, worst_max, worst_bits and worst_method to a bit-width report."""
    for r, (lo, hi) in zip(report, ranges):
        r.update(worst_min=lo, worst_max=hi, worst_bits=_core.bits_for_range(lo, hi),
                 worst_method=method)
    return report
