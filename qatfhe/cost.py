"""An FHE cost model of compiled circuits: rank candidates without key generation.

Under TFHE (Concrete) every table lookup is one programmable bootstrap (PBS) whose cost
grows steeply with the bit width of its input; additions and multiplications by clear
constants are nearly free.  So the cost of a QuantizedModule is

    fhe_cost = sum over lookups of cost(bits of its input, number of lookups)   [Mops]

in millions of Concrete's complexity units (`circuit.complexity`, the optimizer's count of
the circuit's operations), from a table measured on Concrete by bench/calibrate_fhe_cost.py
(qatfhe/_fhe_cost_table.py says how, when and where):

- one lookup per element of every lookup op, and one per pairwise maximum of a MaxPool2d
  (max(a, b) = b + relu(a - b), a lookup of a - b); its width is the bit width of the
  value it reads, measured on the calibration set (Concrete sizes its parameters from the input
  set the same way), or the proven worst case with widths="worst_case";
- Concrete assigns crypto parameters per partition of the circuit (its multi-parameter
  strategy, the default): a 3-bit lookup costs a 3-bit price even next to an 8-bit one
  (measured: one 8-bit plus eight 3-bit lookups cost 1.20x one 8-bit lookup alone), so each
  lookup is priced by its own width, not the circuit's widest;
- Concrete targets one error probability for the whole circuit, so a PBS gets dearer as the
  circuit holds more of them: the table has columns for 1, 16 and 64 lookups and the cost of
  one lookup is interpolated in log2(cost) against log2(lookups), extrapolated past 64 with
  the 16 -> 64 slope, and never below the cost of a narrower lookup (extrapolation could
  otherwise price 3 bits above 4);
- a lookup after `rounding_threshold_bits` rounding (m bits rounded to n) is priced from its
  own measured column (Concrete lowers exact rounding to extra small PBS and keeps the
  lookup at a precision close to m bits: rounding saves less than the bit count suggests);
- widths past the measured ones are extrapolated with log2(cost) linear in the width from
  the last two measured widths; a 1-bit lookup is affine, which Concrete does without PBS
  most of the time (its cost is what was measured);
- what is not counted: additions and products with clear weights (under 3% of the
  complexity of a dense layer followed by its lookups, measured), decoding in the clear.

Against Concrete's complexity of whole circuits (bench/bench_search_fhe.py, default
configuration): the tutorial net 206,029 Mops modelled / 190,300 Concrete; a 2x32 net
rounded to 5 bits 19,450 / 16,550; a 2x32 net with 2-bit activations and 6-bit
accumulators 15,090 / 22,160.  What the model leaves out: Concrete encodes a lookup's
output at the precision of the sums it feeds, so narrow lookups feeding wide
accumulators cost more than their input width says.

estimated_seconds(cost) turns a cost into seconds per sample with the table's least-squares
fit of measured PBS times against complexity (one core of the calibration machine; a rough
figure, the ranking is what the cost is for)."""
import math

import numpy as np

__all__ = ["fhe_cost", "lookups", "lookup_cost", "circuit_cost", "estimated_seconds",
           "cost_breakdown", "table"]

UNIT = 1e6                      # costs are in millions of Concrete complexity units


def table():
    """The calibration table (a dict; qatfhe/_fhe_cost_table.py)."""
    from ._fhe_cost_table import TABLE
    return TABLE


def _extrapolated(column, n_bits):
    """column {bits: complexity} at n_bits: measured, or log-linear from the last two
    measured widths (first two below the smallest)."""
    if n_bits in column:
        return float(column[n_bits])
    widths = sorted(column)
    a, b = (widths[-2], widths[-1]) if n_bits > widths[-1] else (widths[0], widths[1])
    la, lb = math.log2(column[a]), math.log2(column[b])
    return 2.0 ** (lb + (lb - la) * (n_bits - b) / (b - a))


def lookup_cost(n_bits, n_lookups=16, from_bits=None):
    """Cost (Mops) of one lookup on an n_bits-bit input in a circuit of n_lookups lookups;
    from_bits: the width it was rounded from (rounding_threshold_bits), if any."""
    n_bits = int(n_bits)
    if n_bits < 1:
        raise ValueError(f"n_bits must be >= 1, got {n_bits}")
    if n_bits > 2 and from_bits is None:   # never cheaper than a narrower lookup
        return max(_raw_cost(n_bits, n_lookups), lookup_cost(n_bits - 1, n_lookups))
    return _raw_cost(n_bits, n_lookups, from_bits)


def _raw_cost(n_bits, n_lookups, from_bits=None):
    tab = table()
    columns = tab["complexity_per_lookup"]
    counts = sorted(columns)
    x = math.log2(max(1, int(n_lookups)))
    lo = max([k for k in counts if k <= 2 ** x] or [counts[0]])
    hi = min([k for k in counts if k > lo] or [counts[-1]])
    if lo == hi:                  # past the last column: the last two columns' slope
        lo, hi = counts[-2], counts[-1]
    ya = math.log2(_extrapolated(columns[lo], n_bits))
    yb = math.log2(_extrapolated(columns[hi], n_bits))
    t = (x - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
    cost = 2.0 ** (ya + (yb - ya) * t)
    if from_bits is not None and int(from_bits) > n_bits:
        rounded = tab["rounded_complexity_per_lookup"]
        key = (int(from_bits), n_bits)
        reference = _extrapolated(columns[tab["rounded_lookups"]], n_bits)
        if key in rounded:
            cost *= rounded[key] / reference
        else:   # not measured: priced as an unrounded lookup of from_bits bits
            cost = lookup_cost(from_bits, n_lookups)
            return cost
    return cost / UNIT


def lookups(module, widths="measured"):
    """[(name, count, n_bits, from_bits or None)] for every lookup op of a compiled module:
    count lookups (elements) reading an n_bits-bit value, rounded from from_bits bits."""
    if widths not in ("measured", "worst_case"):
        raise ValueError(f"widths must be 'measured' or 'worst_case', got {widths!r}")
    key = "bits" if widths == "measured" else "static_bits"
    report = module.bit_width_report()
    out = []
    for k, op in enumerate(module.ops):
        if op.kind == "maxpool":         # max(a, b) = b + relu(a - b): a lookup of a - b
            r = report[k + 1]
            bits = r["max_diff_bits" if widths == "measured" else "static_max_diff_bits"]
            out.append((op.name, int(r["pairwise_max_lookups"]), int(bits), None))
            continue
        if op.kind != "lookup":
            continue
        count = int(np.prod(module._nodes[k + 1]["shape"]))
        n_bits = int(report[op.src][key])
        src_op = module.ops[op.src - 1] if op.src > 0 else None
        from_bits = None
        if src_op is not None and src_op.kind == "round":
            from_bits = int(report[src_op.src][key])
        out.append((op.name, count, n_bits, from_bits))
    return out


def circuit_cost(items):
    """Cost (Mops) of a circuit given [(count, n_bits, from_bits or None)]."""
    total = sum(int(c) for c, _, _ in items)
    return float(sum(c * lookup_cost(b, total, f) for c, b, f in items if c))


def fhe_cost(module, widths="measured"):
    """The module's FHE cost in Mops (module docstring)."""
    return circuit_cost([(c, b, f) for _, c, b, f in lookups(module, widths)])


def cost_breakdown(module, widths="measured"):
    """One dict per lookup op: name, lookups, bits, rounded_from, cost (Mops)."""
    items = lookups(module, widths)
    total = sum(c for _, c, _, _ in items)
    return [{"name": name, "lookups": c, "bits": b, "rounded_from": f,
             "cost": c * lookup_cost(b, total, f)} for name, c, b, f in items]


def estimated_seconds(cost):
    """Rough seconds per sample of a circuit of cost Mops on one core of the calibration
    machine (the table's least-squares fit of PBS time against complexity)."""
    slope = table().get("seconds_per_complexity")
    if slope is None:
        raise ValueError("the cost table has no timings (calibrated with --time-bits 0)")
    return float(cost) * UNIT * slope
