"""Real FHE latency of a search front point against the tutorial's QAT net, in one run.

    python bench/bench_search_fhe.py [--frontier search_out/frontier.json] [--point K]
                                     [--samples 3] [--tutorial-samples 1] [--seed 0]

Trains the tutorial's pruned 3-bit QAT net (seed --seed, the tutorial's recipe) and loads
front point K (default: the cheapest whose mean accuracy is within 0.5 points of the data's
ceiling, else the most accurate), compiles both to Concrete circuits, generates keys and
times encrypted inference per sample (encrypt + run + decrypt), checking execute ==
simulate.  Prints figures and the ratio side by side, with the model cost (qatfhe.cost)
and Concrete's complexity.

Uses QuantizedModule.compile_fhe / forward(X, fhe="execute") when this qatfhe has them;
otherwise a minimal lowering of dense MLP circuits written here (dense products with clear
weights, the lookups as fused float subgraphs that Concrete turns into table lookups,
round_bit_pattern for rounding; the last accumulator decrypted and decoded in the clear)."""
import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qatfhe import QuantizedModule, compile_qat_model, datasets, experiments  # noqa: E402


def lower(module, fhe):
    """A concrete-python function computing module.quantized_forward on input codes."""
    ops = module.ops

    def circuit(x):
        values = [x]
        for op in ops:
            v = values[op.src]
            if op.kind == "dense":
                w = op.weight.astype(np.int64) - op.weight_zero_point
                values.append(v @ w.T)
            elif op.kind == "round":
                values.append(fhe.round_bit_pattern(v, lsbs_to_remove=op.lsbs))
            elif op.kind == "lookup":
                t = v + (0 if op.offset is None else op.offset)       # v already x 2^lsbs
                y = t.astype(np.float64) * op.scale.astype(np.float64)
                y = y + (0.0 if op.bias is None else op.bias.astype(np.float64))
                if op.relu:
                    y = np.maximum(y, 0.0)
                q = op.quant
                codes = np.clip(np.rint(y / float(q.scale)), q.qmin - q.zero_point,
                                q.qmax - q.zero_point) + q.zero_point
                values.append(codes.astype(np.int64))
            elif op.kind == "decode":
                return v
            else:
                raise NotImplementedError(f"this bench lowers dense MLPs only, not {op.kind}")
        raise ValueError("no decode op")

    return circuit


def concrete_circuit(module, X_calib):
    warnings.filterwarnings("ignore")
    from concrete import fhe
    codes = module.quantize_input(X_calib)
    inputset = [c for c in np.unique(codes, axis=0)]
    start = time.perf_counter()
    compiled = fhe.compiler({"x": "encrypted"})(lower(module, fhe)).compile(inputset)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled.keygen()
    return compiled, compile_s, time.perf_counter() - start


def time_samples(module, compiled, X, n):
    codes = module.quantize_input(X[:n])
    times, agree = [], 0
    for row in codes:
        start = time.perf_counter()
        out = compiled.encrypt_run_decrypt(row)
        times.append(time.perf_counter() - start)
        agree += int(np.array_equal(np.asarray(out).ravel(),
                                    module.quantized_forward(row[None])[0]))
    return float(np.median(times)), agree


def measure(module, X_cal, X, n):
    """(complexity, PBS count, compile s, keygen s, median s per sample, samples where
    execute == simulate): through the FHE backend when present, else the lowering above."""
    if not hasattr(module, "compile_fhe"):
        compiled, compile_s, keygen_s = concrete_circuit(module, X_cal)
        per_sample, agree = time_samples(module, compiled, X, n)
        return (compiled.complexity, compiled.statistics["programmable_bootstrap_count"],
                compile_s, keygen_s, per_sample, agree)
    start = time.perf_counter()
    module.compile_fhe(X_cal)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    module.forward(X[:1], fhe="execute", progress=False)       # key generation + 1 sample
    keygen_s = time.perf_counter() - start
    times, agree = [], 0
    for k in range(n):
        start = time.perf_counter()
        out = module.forward(X[k:k + 1], fhe="execute", progress=False)
        times.append(time.perf_counter() - start)
        agree += int(np.array_equal(out, module.forward(X[k:k + 1], fhe="simulate")))
    stats = module.fhe_statistics()
    return (stats["complexity"], stats["pbs_count"], compile_s, keygen_s,
            float(np.median(times)), agree)


def pick(points, ceiling):
    close = [p for p in points if p["accuracy"] >= ceiling - 0.005]
    return min(close, key=lambda p: p["cost"]) if close else max(points,
                                                                   key=lambda p: p["accuracy"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frontier", default="search_out/frontier.json")
    parser.add_argument("--point", type=int, default=None)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--tutorial-samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    X_train, X_test, y_train, y_test = datasets.checkerboard(seed=args.seed)
    ceiling = float(np.mean([datasets.accuracy_ceiling(*datasets.checkerboard(seed=s)[1::2])
                             for s in range(10)]))
    with open(args.frontier) as handle:
        points = json.load(handle)
    point = points[args.point] if args.point is not None else pick(points, ceiling)
    small = QuantizedModule.load(os.path.join(os.path.dirname(args.frontier), point["module"]))
    net = experiments.prune_like_tutorial(experiments.qat_net(100, args.seed), 20)
    experiments.train(net, X_train, y_train, experiments.TrainSettings())
    net.unprune()
    tutorial = compile_qat_model(net, X_train)
    rows = []
    for name, module, n, X_cal in (("front point", small, args.samples, None),
                                   ("tutorial QAT net", tutorial, args.tutorial_samples,
                                    X_train)):
        if X_cal is None:
            seed = point["module_seed"]
            X_cal = datasets.checkerboard(seed=seed)[0]
        complexity, pbs, compile_s, keygen_s, per_sample, agree = measure(
            module, X_cal, X_test, n)
        rows.append((name, module, None, compile_s, keygen_s, per_sample, agree, n))
        print(f"{name}: {module.n_lookups} lookups, max bit width {module.max_bit_width}, "
              f"cost {module.fhe_cost():.4g} Mops, Concrete complexity {complexity:.4g}, "
              f"PBS {pbs}"
              f"; compile {compile_s:.1f} s, keygen {keygen_s:.1f} s, {per_sample:.3f} s/sample "
              f"(median of {n}), execute == simulate on {agree}/{n}", flush=True)
    ratio = rows[1][5] / rows[0][5]
    print(f"\nfront point {point['config']}: accuracy {100 * point['accuracy']:.2f}% (ceiling "
          f"{100 * ceiling:.2f}%)")
    print(f"FHE latency per sample: front point {rows[0][5]:.3f} s, tutorial net "
          f"{rows[1][5]:.2f} s: {ratio:.1f}x lower (target >= 30x); model cost ratio "
          f"{rows[1][1].fhe_cost() / rows[0][1].fhe_cost():.1f}x")


if __name__ == "__main__":
    main()
