"""Calibrate qatfhe's FHE cost table (qatfhe/_fhe_cost_table.py) on Concrete.

    python bench/calibrate_fhe_cost.py [--max-bits 10] [--time-bits 8] [--out PATH]

Needs concrete-python (`from concrete import fhe`).  Every circuit is k univariate table
lookups, each on its own n-bit encrypted input (random tables, distinct per lookup so that
Concrete cannot merge them), compiled with concrete-python's default configuration (the
one qatfhe's FHE backend uses unless told otherwise).  What it records:

- complexity per lookup: `circuit.complexity / k` for n = 1 .. --max-bits and k in
  LOOKUP_COUNTS (Concrete's optimizer picks parameters for a global error probability, so
  one PBS gets dearer as the circuit holds more of them); PBS and key-switch counts from
  `circuit.statistics` (one of each per lookup);
- complexity per rounded lookup: `round_bit_pattern` from m bits to n bits then the lookup
  (k = 16, m up to --max-bits), which Concrete lowers to extra small PBS;
- milliseconds per lookup: key generation, then the median of 3 timed `run` calls (inputs
  encrypted beforehand) of a k = TIMING_LOOKUPS circuit, for n = 1 .. --time-bits;
- a least-squares fit of seconds against complexity, which turns any cost into an
  estimated latency (qatfhe.cost.estimated_seconds).

Compilation alone is quick (no key generation) up to about 10 bits; wider tables are
extrapolated by qatfhe.cost (log2 of the complexity linear in n from the last two widths).
Prints the table and writes it as a Python module."""
import argparse
import datetime
import os
import platform
import pprint
import statistics
import sys
import time
import warnings

import numpy as np

LOOKUP_COUNTS = (1, 16, 64)
ROUNDING_LOOKUPS = 16
TIMING_LOOKUPS = 8
MAX_BITS_LARGE_K = 8     # 64 lookups of tables wider than this compile slowly


def _fhe():
    warnings.filterwarnings("ignore")
    try:
        from concrete import fhe
    except ImportError:
        sys.exit("this script needs concrete-python: pip install concrete-python")
    return fhe


def _tables(fhe, n, k, seed):
    """k random tables of 2^n entries in [0, 2^n), none affine (an affine table needs no
    PBS) except at n = 1, where every table is affine."""
    rng = np.random.RandomState(seed)
    tables = []
    while len(tables) < k:
        t = rng.randint(0, 1 << n, size=1 << n)
        if n == 1 or len(set(np.diff(t))) > 1:
            tables.append(fhe.LookupTable(t))
    return tables


def _compile(fhe, n, k, lsbs=0):
    """A circuit of k lookups on k (n + lsbs)-bit inputs, rounded by lsbs bits first."""
    tables = _tables(fhe, n if not lsbs else n + 1, k, seed=1000 * n + k)

    def circuit(x):
        if lsbs:
            x = fhe.round_bit_pattern(x, lsbs_to_remove=lsbs) >> lsbs
        return fhe.array([t[x[j]] for j, t in enumerate(tables)])

    m = n + lsbs
    rng = np.random.RandomState(0)
    high = (1 << m) - 1 - (((1 << lsbs) >> 1) if lsbs else 0)   # rounding stays in n bits
    inputset = [rng.randint(0, high + 1, k) for _ in range(40)]
    inputset += [np.zeros(k, np.int64), np.full(k, high)]
    return fhe.compiler({"x": "encrypted"})(circuit).compile(inputset), inputset


def _stats(circuit, k):
    s = circuit.statistics
    return {"complexity": float(circuit.complexity) / k,
            "pbs": int(s["programmable_bootstrap_count"]),
            "key_switch": int(s["key_switch_count"])}


def measure_complexity(fhe, max_bits):
    table = {}
    for k in LOOKUP_COUNTS:
        column = {}
        for n in range(1, max_bits + 1):
            if k > 16 and n > MAX_BITS_LARGE_K:
                break
            start = time.perf_counter()
            circuit, _ = _compile(fhe, n, k)
            column[n] = _stats(circuit, k)
            print(f"  {k:3d} lookups of {n:2d} bits: {column[n]['complexity']:.4g} per lookup, "
                  f"{column[n]['pbs']} PBS ({time.perf_counter() - start:.1f} s)", flush=True)
        table[k] = column
    return table


def measure_rounding(fhe, max_bits):
    table = {}
    for m in range(3, max_bits + 1):
        for n in range(2, m):
            circuit, _ = _compile(fhe, n, ROUNDING_LOOKUPS, lsbs=m - n)
            table[(m, n)] = _stats(circuit, ROUNDING_LOOKUPS)
            print(f"  round {m:2d} -> {n:2d} bits, then lookup: "
                  f"{table[(m, n)]['complexity']:.4g} per lookup, {table[(m, n)]['pbs']} PBS "
                  f"for {ROUNDING_LOOKUPS}", flush=True)
    return table


def measure_times(fhe, time_bits, repeats=3):
    table = {}
    for n in range(1, time_bits + 1):
        circuit, inputset = _compile(fhe, n, TIMING_LOOKUPS)
        start = time.perf_counter()
        circuit.keygen()
        keygen = time.perf_counter() - start
        encrypted = circuit.encrypt(inputset[-1])
        circuit.run(encrypted)                     # warm-up
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            circuit.run(encrypted)
            runs.append(time.perf_counter() - start)
        table[n] = {"keygen_s": keygen, "ms_per_lookup": 1000 * statistics.median(runs)
                    / TIMING_LOOKUPS, "complexity": float(circuit.complexity) / TIMING_LOOKUPS}
        print(f"  {n:2d} bits: keygen {keygen:.1f} s, {table[n]['ms_per_lookup']:.2f} ms per "
              f"lookup ({TIMING_LOOKUPS} lookups, median of {repeats})", flush=True)
    return table


def fit_seconds_per_complexity(times):
    """Least squares through the origin of seconds per lookup against complexity."""
    c = np.array([t["complexity"] for t in times.values()])
    s = np.array([t["ms_per_lookup"] / 1000 for t in times.values()])
    return float(c @ s / (c @ c))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-bits", type=int, default=10)
    parser.add_argument("--time-bits", type=int, default=8)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..",
                                                      "qatfhe", "_fhe_cost_table.py"))
    args = parser.parse_args(argv)
    fhe = _fhe()
    import concrete.fhe.version as version
    start = time.perf_counter()
    print("complexity per lookup", flush=True)
    complexity = measure_complexity(fhe, args.max_bits)
    print("rounded lookups", flush=True)
    rounding = measure_rounding(fhe, args.max_bits)
    print("timings", flush=True)
    times = measure_times(fhe, args.time_bits) if args.time_bits > 0 else {}
    slope = fit_seconds_per_complexity(times) if times else None
    table = {
        "how": ("bench/calibrate_fhe_cost.py: k random univariate lookups on k n-bit "
                "encrypted inputs, concrete-python default configuration; complexity = "
                "circuit.complexity / k; ms = median of 3 circuit.run calls / k"),
        "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "where": f"{platform.machine()}, {os.cpu_count()} cores ({platform.processor() or '?'})"
                 f", concrete-python {getattr(version, '__version__', '?')}",
        "command": "python bench/calibrate_fhe_cost.py " + " ".join(argv or sys.argv[1:]),
        "complexity_per_lookup": {k: {n: v["complexity"] for n, v in col.items()}
                                  for k, col in complexity.items()},
        "pbs_per_lookup": {n: v["pbs"] / k for k, col in complexity.items() if k == 16
                           for n, v in col.items()},
        "key_switch_per_lookup": {n: v["key_switch"] / k for k, col in complexity.items()
                                  if k == 16 for n, v in col.items()},
        "rounded_lookups": ROUNDING_LOOKUPS,
        "rounded_complexity_per_lookup": {mn: v["complexity"] for mn, v in rounding.items()},
        "rounded_pbs_per_lookup": {mn: v["pbs"] / ROUNDING_LOOKUPS
                                   for mn, v in rounding.items()},
        "timing_lookups": TIMING_LOOKUPS,
        "ms_per_lookup": {n: t["ms_per_lookup"] for n, t in times.items()},
        "keygen_s": {n: t["keygen_s"] for n, t in times.items()},
        "seconds_per_complexity": slope,
    }
    text = ('"""FHE cost table, written by bench/calibrate_fhe_cost.py (do not edit by hand).\n\n'
            'Read by qatfhe.cost; see that module for the model."""\n\nTABLE = '
            + pprint.pformat(table, width=96, sort_dicts=True) + "\n")
    with open(args.out, "w") as handle:
        handle.write(text)
    print(f"wrote {os.path.normpath(args.out)} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
