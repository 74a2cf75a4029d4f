"""Inference throughput (samples/s): float, fake-quant and integer paths, batch 1 and 10,000.

    python bench/bench_inference.py            # everything (under a minute)
    python bench/bench_inference.py --only qatfhe

qatfhe paths: float = SimpleNet(100) in eval mode; fake-quant = the tutorial's QAT net
(3 bits, pruned to 20) in eval mode; integer = compile_qat_model(net, X_train)
.forward(X, fhe="simulate") (float in, quantize, exact integer circuit, float out), and
its integer-only core quantized_forward(codes).  PyTorch / Brevitas eval (torch.no_grad)
for reference.  Both networks are trained 4 epochs at batch 128 first (past the
quantizers' statistics phase).  Batch 1 = one call per sample (on the first 5,000 /
2,000 / 500 points for qatfhe / PyTorch / Brevitas)."""
import common  # noqa: F401  (first: pins threads before NumPy/torch load)

import warnings

import numpy as np

from common import fmt_rate, measure, percent_of_peak, print_footer, print_header, table, torch
from qatfhe.compile import compile_qat_model
import peak as peak_mod

TARGET_INT_RATE = 2_000_000      # integer path, batch 10,000, one core
CALLS_BATCH1 = {"qatfhe": 5000, "torch": 2000, "brevitas": 500}


def qatfhe_models(X, y):
    qat = common.qatfhe_qat_net()
    qat.fit(X, y, epochs=4, batch_size=128, progress=False)
    qat.eval()
    fp32 = common.qatfhe_fp32_net()
    fp32.fit(X, y, epochs=4, batch_size=128, progress=False)
    fp32.eval()
    return qat, fp32, compile_qat_model(qat, X)


def torch_models(X, y):
    out = []
    net = common.torch_fp32_net()
    common.TorchTrainer(net, X, y, 128).steps(300)
    out.append(("PyTorch fp32 SimpleNet(100)", "torch", net, list(net)[::2]))
    net = common.torch_fakequant_net(X[:128])
    common.TorchTrainer(net, X, y, 128).steps(300)
    out.append(("PyTorch hand-written fake-quant", "torch", net, list(net)[1::2]))
    net = common.brevitas_net()
    if net is not None:
        common.TorchTrainer(net, X, y, 128).steps(300)
        out.append(("PyTorch + Brevitas", "brevitas", net, [net.fc1, net.fc2, net.fc3]))
    for _, _, net, _ in out:
        net.eval()
    return out


def throughput(call, X, batch_size, calls):
    """(samples/s, Timing) of call(batch) over X in batches of batch_size."""
    if batch_size == 1:
        singles = [X[i:i + 1] for i in range(calls)]

        def run():
            for x in singles:
                call(x)
        n, repeats = calls, 5
    else:
        def run():
            call(X)
        n, repeats = len(X), 9
    timing = measure(run, repeats=repeats, warmup=1)
    return n / timing.median, timing


def torch_call(net):
    def call(x):
        with torch.no_grad():
            return net(x)
    return call


def main():
    args = common.arguments(__doc__.splitlines()[0])
    print_header("inference throughput, tutorial nets")
    peak = peak_mod.peak()
    X_train, _, y_train, _ = common.data()
    X = common.all_points()                      # (10000, 2) float32
    qat, fp32, module = qatfhe_models(X_train, y_train)
    q_x = module.quantize_input(X)
    same = np.array_equal(module.forward(X, fhe="simulate"), qat(X))
    qat_macs = common.linear_macs(common.qatfhe_shapes(qat))
    fp32_macs = common.linear_macs(common.qatfhe_shapes(fp32))
    paths = [  # name, kind, call, input, MACs non-zero, MACs dense
        ("qatfhe float (SimpleNet(100), eval)", "qatfhe", fp32.forward, X,
         fp32_macs["forward_nonzero"], fp32_macs["forward_dense"]),
        ("qatfhe fake-quant (QAT net, eval)", "qatfhe", qat.forward, X,
         qat_macs["forward_nonzero"], qat_macs["forward_dense"]),
        ("qatfhe integer forward(fhe='simulate')", "qatfhe",
         lambda x: module.forward(x, fhe="simulate"), X,
         qat_macs["forward_nonzero"], qat_macs["forward_dense"]),
        ("qatfhe integer quantized_forward(codes)", "qatfhe",
         lambda q: module.quantized_forward(q, fhe="simulate"), q_x,
         qat_macs["forward_nonzero"], qat_macs["forward_dense"]),
    ]
    threaded = [  # the integer paths again, the circuit splitting batches over 2 threads
        (paths[2][0], lambda x: module.forward(x, fhe="simulate", n_threads=2), X),
        (paths[3][0], lambda q: module.quantized_forward(q, fhe="simulate", n_threads=2), q_x)]
    if args.only != "qatfhe" and torch is not None:
        Xt = torch.from_numpy(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, kind, net, linears in torch_models(X_train, y_train):
                m = common.linear_macs(common.torch_shapes(linears))
                paths.append((name, kind, torch_call(net), Xt, m["forward_nonzero"],
                              m["forward_dense"]))
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for batch_size in (1, len(X)):
            for name, kind, call, data, nz, dense in paths:
                rate, timing = throughput(call, data, batch_size, CALLS_BATCH1[kind])
                results[name, batch_size] = (rate, timing, nz, dense)
    float_name, int_name = paths[0][0], paths[2][0]
    for batch_size in (1, len(X)):
        print(f"\n-- batch size {batch_size:,}: samples/s (median of the timed repeats)")
        rows = []
        for name, *_ in paths:
            rate, timing, nz, dense = results[name, batch_size]
            rows.append([name, fmt_rate(rate), fmt_rate(rate * timing.median /
                                                        timing.cpu_median), timing.cpu(),
                         f"{rate / results[float_name, batch_size][0]:.2f}",
                         f"{nz:,}", f"{dense:,}", f"{percent_of_peak(nz, rate, peak):.3f}%",
                         f"{percent_of_peak(dense, rate, peak):.3f}%"])
        table(["path", "samples/s", "per CPU-s", "CPU", "vs qatfhe float", "MAC/sample non-zero",
               "MAC/sample dense", "% peak (non-zero)", "% peak (dense)"], rows)
    int_big = results[int_name, len(X)][0]
    print("\ntargets:")
    print(f"  integer path at batch 10,000 >= {TARGET_INT_RATE:,} samples/s on one core: "
          f"{fmt_rate(int_big)} -> {'met' if int_big >= TARGET_INT_RATE else 'NOT met'} "
          f"({int_big / TARGET_INT_RATE:.2f} of the target)")
    for batch_size in (1, len(X)):
        ratio = results[int_name, batch_size][0] / results[float_name, batch_size][0]
        print(f"  integer never slower than float, batch {batch_size:,}: integer/float = "
              f"{ratio:.2f} -> {'met' if ratio >= 1 else 'NOT met'}")
    brevitas = [name for name, kind, *_ in paths if kind == "brevitas"]
    if brevitas:
        print(f"  (issue anchor, Brevitas 0.10 eval: ~950 samples/s at batch 1, ~100,000 at "
              f"batch 500; here: {fmt_rate(results[brevitas[0], 1][0])} at batch 1, "
              f"{fmt_rate(results[brevitas[0], len(X)][0])} at batch {len(X):,})")
    print(f"  simulate output bit-identical to the eval-mode fake-quant net on the 10,000 "
          f"points: {same}")
    two = {(name, b): throughput(call, data, b, CALLS_BATCH1["qatfhe"])
           for name, call, data in threaded for b in (1, len(X))}
    print("\n-- qatfhe integer circuit with n_threads=2 (samples/s, speed-up over 1 thread)")
    table(["path", "batch size", "samples/s", "CPU", "speed-up"],
          [[name, f"{b:,}", fmt_rate(rate), timing.cpu(), f"{rate / results[name, b][0]:.2f}x"]
           for (name, b), (rate, timing) in two.items()])
    print("\nnotes: samples/s is wall clock; per CPU-s = samples per second of process CPU "
          "time (robust to other jobs); CPU = process CPU time / wall time; 2 FLOPs per MAC; "
          "fake-quant and integer non-zero MACs count the weights kept by pruning (PyTorch/Brevitas compute them "
          "dense); batch 1 makes %s single-sample calls per repeat (qatfhe/torch/Brevitas)."
          % "/".join(f"{v:,}" for v in CALLS_BATCH1.values()))
    print_footer()


if __name__ == "__main__":
    main()
