"""Encrypted execution (issue 12): Concrete's cost figures, key generation time and
latency per encrypted sample for the tutorial's pruned 3-bit QAT net and the digits CNN,
compiled by qatfhe.compile_fhe; Concrete-ML side by side on qatfhe's ONNX export of the
same trained net when concrete-ml is importable (otherwise its figures recorded in
REFERENCE.md section 8 are printed as the anchor, labelled as recorded).

    python bench/bench_fhe.py                      # tutorial net, 3 samples
    python bench/bench_fhe.py --samples 10 --nets tutorial digits
    python bench/bench_fhe.py --nets digits --samples 0   # compile + statistics only

The tutorial net's circuit is 8 bits wide: key generation takes minutes and each sample
about a minute on a 2-core machine; the digits CNN's (10 bits, thousands of PBS) far
more.  Needs the fhe extra (`pip install torch==2.13.0 && pip install "qatfhe[fhe]"`).
Threads: Concrete's own defaults (all cores; unlike the other benchmarks, which pin one
thread), as Concrete-ML ran when its figures were recorded."""
import argparse
import os
import platform
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np

import qatfhe
from qatfhe import fhe_demo

RECORDED = {"tutorial": {"pbs": 200, "complexity": 4.17e11, "keygen_s": 177.0,
                         "latency_s": "46-81", "keys_gb": "2.47 + 0.98"}}


def tutorial():
    net, (X_train, X_test, _, _) = fhe_demo.tutorial_net(seed=0)
    return net, X_train, X_test


def digits():
    sys.path.insert(0, os.path.join(REPO, "examples"))
    import digits_cnn
    X_train, X_test, y_train, _ = digits_cnn.digits(0)
    net = digits_cnn.train(digits_cnn.qat_cnn(3, 0), X_train, y_train, 60, 0)
    return net, X_train, X_test


def concrete_ml(net, X_train, X_test, samples):
    """The same figures from Concrete-ML compiling qatfhe's ONNX export, or None when
    concrete-ml is not importable."""
    try:
        import onnx
        from concrete.ml.torch.compile import compile_onnx_model
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.onnx")
        qatfhe.export_onnx(net, path)
        start = time.perf_counter()
        model = compile_onnx_model(onnx.load(path), X_train, import_qat=True)
        compile_s = time.perf_counter() - start
    circuit = model.fhe_circuit
    start = time.perf_counter()
    circuit.keygen()
    keygen_s = time.perf_counter() - start
    latency = []
    for x in X_test[:samples]:
        start = time.perf_counter()
        model.forward(x[None], fhe="execute")
        latency.append(time.perf_counter() - start)
    return {"pbs": circuit.statistics["programmable_bootstrap_count"],
            "complexity": circuit.statistics["complexity"], "compile_s": compile_s,
            "keygen_s": keygen_s, "latency": latency}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3,
                        help="encrypted samples per net (0: compile and statistics only)")
    parser.add_argument("--nets", nargs="+", choices=("tutorial", "digits"),
                        default=["tutorial"])
    args = parser.parse_args(argv)
    from importlib.metadata import version
    print(f"== FHE: qatfhe {qatfhe.__version__}, concrete-python {version('concrete-python')}, "
          f"python {platform.python_version()}, numpy {np.__version__}")
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          f"(other jobs share them: figures are noisy)")
    for name in args.nets:
        net, X_train, X_test = tutorial() if name == "tutorial" else digits()
        module = qatfhe.compile_qat_model(net, X_train)
        print(f"\n== {name}: {module.max_bit_width}-bit integer circuit")
        result = fhe_demo.measure(module, X_test, args.samples,
                                  progress=lambda s: print(s, flush=True))
        stats = result["statistics"]
        for line in fhe_demo.describe(stats):
            print(line)
        print(f"  compile            {result['compile_seconds']:.1f} s")
        lat = result["latency"]
        if lat:
            print(f"  keygen             {result['keygen_seconds']:.1f} s")
            print(f"  latency            median {np.median(lat):.2f} s per sample (min "
                  f"{min(lat):.2f}, max {max(lat):.2f}, {len(lat)} samples)")
            print(f"  execute == simulate: {result['agree_integers']}/{len(lat)} samples")
        other = concrete_ml(net, X_train, X_test, args.samples)
        if other is not None:
            median = np.median(other["latency"]) if other["latency"] else float("nan")
            print(f"  Concrete-ML (measured in this run): {other['pbs']} PBS, complexity "
                  f"{other['complexity']:.3g}, keygen {other['keygen_s']:.1f} s, latency "
                  f"median {median:.2f} s")
            if lat and other["latency"]:
                print(f"  latency ratio qatfhe / Concrete-ML: {np.median(lat) / median:.2f}")
            print(f"  ratios qatfhe / Concrete-ML: PBS {stats['pbs_count'] / other['pbs']:.2f}, "
                  f"complexity {stats['complexity'] / other['complexity']:.2f}")
        elif name in RECORDED:
            rec = RECORDED[name]
            print(f"  Concrete-ML 1.9.0, RECORDED in REFERENCE.md section 8 (not measured "
                  f"here; concrete-ml is not installed): {rec['pbs']} PBS, complexity "
                  f"{rec['complexity']:.3g}, keys {rec['keys_gb']} GB, keygen "
                  f"{rec['keygen_s']:.0f} s, {rec['latency_s']} s per sample")
            print(f"  ratios qatfhe / recorded Concrete-ML: PBS "
                  f"{stats['pbs_count'] / rec['pbs']:.2f}, complexity "
                  f"{stats['complexity'] / rec['complexity']:.2f}"
                  + (f", keygen {result['keygen_seconds'] / rec['keygen_s']:.2f}"
                     if lat else ""))
        else:
            print("  Concrete-ML: not installed, and no recorded figures for this net "
                  "(1.9 cannot import its per-channel weight scales, REFERENCE.md section 8)")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
