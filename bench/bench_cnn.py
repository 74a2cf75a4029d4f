"""A Concrete-ML-style 3-bit QAT CNN at image sizes: s/epoch, integer inference, conv GEMMs.

    python bench/bench_cnn.py                    # 28x28x1 and 32x32x3 (a few minutes)
    python bench/bench_cnn.py --only qatfhe      # the qatfhe rows alone (for perf record)
    python bench/bench_cnn.py --sizes 28         # one input size

Net (three blocks of 16, 32 and 64 channels, then a linear layer), all at 3 bits:
    QuantIdentity -> [QuantConv2d(3x3, padding 1, per-channel scales) -> QuantReLU
    -> AvgPool2d(2) -> QuantIdentity] x 3 -> Flatten -> QuantLinear(-> 10)
--bn adds a BatchNorm2d after every conv and --pool max uses MaxPool2d, once qatfhe has
those layers (the options are offered only then).  The fp32 rows (qatfhe and PyTorch) are
the same architecture with float Conv2d / ReLU / Linear and no quantizers; the Brevitas row
is the QAT net in brevitas.nn.  Data: 1,024 generated images of a learnable rule (seeded,
nothing is downloaded), batch 64, AdamW lr 1e-3, cross-entropy, one thread.  QAT timings
are steady state: the warm-up covers the activation quantizers' 300-step statistics phase.

Also printed: integer inference (compiled circuit, fhe="simulate") in samples/s against
PyTorch fp32 eval, and the conv layers' own forward / backward rate as a share of this
machine's measured float32 peak (bench/peak.py)."""
import common  # noqa: F401  (first: pins threads before NumPy/torch load)

import argparse
import warnings

import numpy as np

from common import (fmt_rate, measure, percent_of_peak, print_footer, print_header, spread,
                    table, torch, verdict)
import peak as peak_mod
import qatfhe
from qatfhe import nn as qnn
from qatfhe import optim as qoptim

BITS = 3
CHANNELS = (16, 32, 64)
N_CLASSES = 10
N_IMAGES = 1024
BATCH = 64
LR = 1e-3
STATS_STEPS = 300            # the activation quantizers' statistics phase (REFERENCE.md)
SIZES = {28: (1, 28, 28), 32: (3, 32, 32)}
# The done-when (1 thread, batch 64)
TARGET_VS_TORCH = 1.5        # QAT s/epoch: PyTorch fp32 / qatfhe QAT
TARGET_VS_BREVITAS = 10.0    # QAT s/epoch: Brevitas QAT / qatfhe QAT
TARGET_GEMM_PEAK = 40.0      # conv GEMMs, % of the measured peak
TARGET_INFERENCE = 3.0       # integer samples/s / PyTorch fp32 eval samples/s
HAS_BN = hasattr(qnn, "BatchNorm2d")
HAS_MAXPOOL = hasattr(qnn, "MaxPool2d")


def arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("all", "qatfhe"), default="all",
                        help="'qatfhe' runs the qatfhe rows only (e.g. under perf record)")
    parser.add_argument("--sizes", type=int, nargs="+", choices=sorted(SIZES),
                        default=sorted(SIZES), help="input sizes to run (28: 28x28x1, "
                        "32: 32x32x3)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per row")
    if HAS_BN:
        parser.add_argument("--bn", action="store_true", help="BatchNorm2d after every conv")
    if HAS_MAXPOOL:
        parser.add_argument("--pool", choices=("avg", "max"), default="avg")
    args = parser.parse_args()
    args.bn = getattr(args, "bn", False)
    args.pool = getattr(args, "pool", "avg")
    return args


# ---------------------------------------------------------------- data

def images(shape, n=N_IMAGES, seed=0):
    """(X (n, C, H, W) float32 in [0, 1), y (n,) int64): smooth random images whose label is
    the argmax of ten fixed random projections, a rule a CNN learns."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    coarse = rng.random((n, c, h // 4 + 1, w // 4 + 1), dtype=np.float32)
    X = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)[:, :, :h, :w]
    X = np.ascontiguousarray(0.7 * X + 0.3 * rng.random((n, c, h, w), dtype=np.float32))
    proj = rng.standard_normal((c * h * w, N_CLASSES)).astype(np.float32)
    y = np.argmax((X.reshape(n, -1) - 0.5) @ proj, axis=1).astype(np.int64)
    return X, y


def spatial_sizes(shape):
    """[(C_in, C_out, H, W)] of the three convs (H, W at their input = output: padding 1)."""
    c, h, w = shape
    out = []
    for oc in CHANNELS:
        out.append((c, oc, h, w))
        c, h, w = oc, h // 2, w // 2
    return out, c * h * w


# ---------------------------------------------------------------- qatfhe nets

def _pool(args):
    return qnn.MaxPool2d(2) if args.pool == "max" else qnn.AvgPool2d(2)


def qatfhe_qat(shape, args, seed=0):
    unsigned = qnn.Uint8ActPerTensorFloat
    convs, flat = spatial_sizes(shape)
    layers = [qnn.QuantIdentity(act_quant=unsigned, bit_width=BITS)]
    for c, oc, _, _ in convs:
        layers.append(qnn.QuantConv2d(c, oc, 3, padding=1, weight_bit_width=BITS,
                                      weight_scaling_per_output_channel=True))
        if args.bn:
            layers.append(qnn.BatchNorm2d(oc))
        layers += [qnn.QuantReLU(bit_width=BITS), _pool(args),
                   qnn.QuantIdentity(act_quant=unsigned, bit_width=BITS)]
    layers += [qnn.Flatten(), qnn.QuantLinear(flat, N_CLASSES, weight_bit_width=BITS)]
    net = qnn.Sequential(*layers, seed=seed)
    qoptim.AdamW(net.parameters(), lr=LR)
    return net


def qatfhe_fp32(shape, args, seed=0):
    convs, flat = spatial_sizes(shape)
    layers = []
    for c, oc, _, _ in convs:
        layers.append(qnn.Conv2d(c, oc, 3, padding=1))
        if args.bn:
            layers.append(qnn.BatchNorm2d(oc))
        layers += [qnn.ReLU(), _pool(args)]
    layers += [qnn.Flatten(), qnn.Linear(flat, N_CLASSES)]
    net = qnn.Sequential(*layers, seed=seed)
    qoptim.AdamW(net.parameters(), lr=LR)
    return net


# ---------------------------------------------------------------- PyTorch nets

def torch_fp32(shape, args, seed=0):
    tnn = torch.nn
    convs, flat = spatial_sizes(shape)
    torch.manual_seed(seed)
    layers = []
    for c, oc, _, _ in convs:
        layers.append(tnn.Conv2d(c, oc, 3, padding=1))
        if args.bn:
            layers.append(tnn.BatchNorm2d(oc))
        layers += [tnn.ReLU(), tnn.MaxPool2d(2) if args.pool == "max" else tnn.AvgPool2d(2)]
    layers += [tnn.Flatten(), tnn.Linear(flat, N_CLASSES)]
    return tnn.Sequential(*layers)


def brevitas_qat(shape, args, seed=0):
    """The QAT net in brevitas.nn, or None when Brevitas is not importable."""
    try:
        import brevitas.nn as bnn
        from brevitas.quant import Int8WeightPerTensorFloat, Uint8ActPerTensorFloat
    except Exception:                # noqa: BLE001 - absent or broken install
        return None
    tnn = torch.nn
    convs, flat = spatial_sizes(shape)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = [bnn.QuantIdentity(act_quant=Uint8ActPerTensorFloat, bit_width=BITS)]
        for c, oc, _, _ in convs:
            layers.append(bnn.QuantConv2d(c, oc, 3, padding=1, weight_bit_width=BITS,
                                          weight_quant=Int8WeightPerTensorFloat,
                                          weight_scaling_per_output_channel=True))
            if args.bn:
                layers.append(tnn.BatchNorm2d(oc))
            layers += [bnn.QuantReLU(bit_width=BITS),
                       tnn.MaxPool2d(2) if args.pool == "max" else tnn.AvgPool2d(2),
                       bnn.QuantIdentity(act_quant=Uint8ActPerTensorFloat, bit_width=BITS)]
        layers += [tnn.Flatten(), bnn.QuantLinear(flat, N_CLASSES, bias=True,
                                                  weight_bit_width=BITS)]
        return tnn.Sequential(*layers)


# ---------------------------------------------------------------- work counts

def conv_macs(shape):
    """(forward MACs, training MACs) per sample of the three convs: training = forward +
    weight gradient + input gradient (none for the first conv, which reads the input)."""
    convs, _ = spatial_sizes(shape)
    per = [c * oc * 9 * h * w for c, oc, h, w in convs]
    return sum(per), 3 * sum(per) - per[0]


# ---------------------------------------------------------------- timing

def time_qatfhe(net, X, y, repeats, warm_steps):
    steps_per_epoch = -(-len(X) // BATCH)
    warm_epochs = max(1, -(-warm_steps // steps_per_epoch))
    timing = measure(lambda: net.fit(X, y, epochs=1, batch_size=BATCH, progress=False),
                     repeats=repeats, warmup=warm_epochs)
    return timing


def time_torch(net, X, y, repeats, warm_steps):
    trainer = common.TorchTrainer(net, X, y, BATCH)
    trainer.steps(max(warm_steps, 2))
    return measure(trainer.epoch, repeats=repeats, warmup=0)


def inference_rate(call, X, repeats=5):
    timing = measure(lambda: call(X), repeats=repeats, warmup=1)
    return len(X) / timing.median, timing


def torch_eval(net):
    net.eval()

    def call(X):
        with torch.no_grad():
            return net(X)
    return call


def conv_layer_rates(shape, peak, repeats):
    """Per conv of the net: forward and backward (weight + input gradient) of that conv
    alone, float32, batch 64, as GFLOP/s and % of peak.  The backward net puts a 1x1 conv
    in front so that the input gradient is computed; its MACs are counted too."""
    convs, _ = spatial_sizes(shape)
    rng = np.random.default_rng(1)
    rows = []
    for c, oc, h, w in convs:
        X = rng.standard_normal((BATCH, c, h, w)).astype(np.float32)
        fwd = qnn.Sequential(qnn.Conv2d(c, oc, 3, padding=1), seed=0).train()
        t_f = measure(lambda: fwd(X), repeats=repeats * 3, warmup=2)
        bwd = qnn.Sequential(qnn.Conv2d(c, c, 1, bias=False), qnn.Conv2d(c, oc, 3, padding=1),
                             seed=0).train()
        grad = rng.standard_normal((BATCH, oc, h, w)).astype(np.float32)

        def step():
            bwd(X)
            bwd.backward(grad)
        t_fb = measure(step, repeats=repeats * 3, warmup=2)
        t_pre = measure(lambda: bwd(X), repeats=repeats * 3, warmup=2)
        macs = c * oc * 9 * h * w * BATCH
        back_s = max(t_fb.cpu_median - t_pre.cpu_median, 1e-9)
        back_macs = 2 * macs + c * c * h * w * BATCH       # dW + dX of the 3x3, dW of the 1x1
        f_rate = 2 * macs / t_f.cpu_median / 1e9
        b_rate = 2 * back_macs / back_s / 1e9
        row = {"name": f"conv {c}->{oc} at {h}x{w}", "fwd": f_rate, "bwd": b_rate,
               "fwd_pct": 100 * f_rate / peak, "bwd_pct": 100 * b_rate / peak}
        row.update(conv_gemm_rates(c, oc, h, w, peak, repeats))
        rows.append(row)
    return rows


def conv_gemm_rates(c, oc, h, w, peak, repeats):
    """The three matrix products of one conv alone (qatfhe._core.matmul: the core's float32
    kernel, products rounded before each sum, no FMA), % of peak: forward patches (nP, 9C) x
    weights (9C, OC), input gradient (nP, OC) x (OC, 9C), weight gradient patches^T x dout."""
    if not hasattr(qatfhe._core, "matmul"):
        return {}
    rng = np.random.default_rng(2)
    rows, taps = BATCH * h * w, c * 9
    cols = rng.standard_normal((rows, taps)).astype(np.float32)
    weight_t = rng.standard_normal((taps, oc)).astype(np.float32)
    weight = np.ascontiguousarray(weight_t.T)
    dout = rng.standard_normal((rows, oc)).astype(np.float32)
    out = {}
    for key, call in (("gemm_fwd", lambda: qatfhe._core.matmul(cols, weight_t)),
                      ("gemm_dx", lambda: qatfhe._core.matmul(dout, weight)),
                      ("gemm_dw", lambda: qatfhe._core.matmul(cols, dout, transpose_a=True))):
        t = measure(call, repeats=repeats * 3, warmup=1)
        out[key] = 100 * 2 * rows * taps * oc / t.cpu_median / 1e9 / peak
    return out


# ---------------------------------------------------------------- one input size

def run_size(size, args, peak):
    shape = SIZES[size]
    X, y = images(shape)
    X_test, _ = images(shape, n=1024, seed=1)
    label = "x".join(map(str, shape[1:] + shape[:1]))
    fwd_macs, train_macs = conv_macs(shape)
    print(f"\n== {label}: {N_IMAGES} images, batch {BATCH}, conv MACs/sample: forward "
          f"{fwd_macs:,}, training {train_macs:,}")
    rows = {}
    steps = -(-N_IMAGES // BATCH)
    warm = STATS_STEPS + steps
    rows["qatfhe QAT"] = time_qatfhe(qatfhe_qat(shape, args), X, y, args.repeats, warm)
    rows["qatfhe fp32"] = time_qatfhe(qatfhe_fp32(shape, args), X, y, args.repeats, steps)
    if args.only != "qatfhe" and torch is not None:
        rows["PyTorch fp32"] = time_torch(torch_fp32(shape, args), X, y, args.repeats, steps)
        bnet = brevitas_qat(shape, args)
        if bnet is not None:
            rows["Brevitas QAT"] = time_torch(bnet, X, y, max(2, args.repeats // 2), warm)
    qat = rows["qatfhe QAT"].median
    print("\n-- training, seconds per epoch (median; CPU = process CPU / wall)")
    trows = []
    for name, t in rows.items():
        rate = N_IMAGES / t.median
        trows.append([name, f"{t.median:.4g}", spread(t), f"{t.cpu_median:.4g}", t.cpu(),
                      f"{t.median / qat:.2f}x",
                      f"{percent_of_peak(train_macs, rate, peak):.1f}%"])
    table(["net", "s/epoch", "range", "CPU s", "CPU", "vs qatfhe QAT",
           "epoch conv FLOP/s, % peak"], trows)
    out = {"training": rows}
    for key, target in (("PyTorch fp32", TARGET_VS_TORCH), ("Brevitas QAT", TARGET_VS_BREVITAS)):
        if key in rows:
            ratio = rows[key].cpu_median / rows["qatfhe QAT"].cpu_median
            print(f"  target: qatfhe QAT >= {target:g}x faster than {key} (CPU time): "
                  f"{ratio:.2f}x {verdict(ratio, target)}")
        else:
            why = "--only qatfhe" if args.only == "qatfhe" else "not importable"
            print(f"  target vs {key}: not measured ({why})")
    # what a target asks of the arithmetic: the epoch's conv FLOPs alone, at the measured peak
    floor = 2 * train_macs * N_IMAGES / (peak * 1e9)
    for key, target in (("PyTorch fp32", TARGET_VS_TORCH), ("Brevitas QAT", TARGET_VS_BREVITAS)):
        if key in rows:
            goal = rows[key].cpu_median / target
            print(f"  floor: {target:g}x faster than {key} is {goal:.3g} s/epoch; the epoch's "
                  f"conv FLOPs alone take {floor:.3g} s at 100% of peak, so that target needs "
                  f"{100 * floor / goal:.0f}% of peak on the convs with nothing else timed")

    # integer inference
    net = qatfhe_qat(shape, args)
    net.fit(X, y, epochs=1, batch_size=BATCH, progress=False)
    net.eval()
    module = qatfhe.compile_qat_model(net, X[:256])
    same = np.array_equal(module.forward(X_test[:256], fhe="simulate"), net(X_test[:256]))
    irows = [("qatfhe integer circuit (simulate)",
              *inference_rate(lambda x: module.forward(x, fhe="simulate"), X_test)),
             ("qatfhe fake-quant QAT net, eval", *inference_rate(net.forward, X_test))]
    fp = qatfhe_fp32(shape, args).eval()
    irows.append(("qatfhe fp32 net, eval", *inference_rate(fp.forward, X_test)))
    t_rate = None
    if args.only != "qatfhe" and torch is not None:
        t_rate = inference_rate(torch_eval(torch_fp32(shape, args)),
                                torch.from_numpy(X_test))
        irows.append(("PyTorch fp32 eval", *t_rate))
    print(f"\n-- inference, {len(X_test)} images in one call, samples/s (median); circuit == "
          f"fake-quant on 256 images: {same}; widest accumulator {module.max_bit_width} bits")
    table(["path", "samples/s", "CPU", "conv FLOP/s, % peak"],
          [[n, fmt_rate(r), t.cpu(), f"{percent_of_peak(fwd_macs, r, peak):.1f}%"]
           for n, r, t in irows])
    if t_rate is not None:
        ratio = irows[0][1] / t_rate[0]
        print(f"  target: integer >= {TARGET_INFERENCE:g}x PyTorch fp32 eval: {ratio:.2f}x "
              f"{verdict(ratio, TARGET_INFERENCE)}")

    # conv layers alone
    crows = conv_layer_rates(shape, peak, args.repeats)
    print("\n-- qatfhe conv layers alone (float32, batch 64, CPU time): GFLOP/s and % of peak")
    table(["layer", "forward", "% peak", "backward (dX + dW)", "% peak"],
          [[r["name"], f"{r['fwd']:.1f}", f"{r['fwd_pct']:.0f}%", f"{r['bwd']:.1f}",
            f"{r['bwd_pct']:.0f}%"] for r in crows])
    worst = min(min(r["fwd_pct"], r["bwd_pct"]) for r in crows[1:])
    print(f"  whole conv layers (patches, products, scatter, epilogue) after the first: lowest "
          f"{worst:.0f}% of peak")
    if "gemm_fwd" in crows[0]:
        print("\n-- the conv GEMMs alone (qatfhe._core.matmul, float32, no FMA, CPU time): % of "
              "peak")
        table(["layer", "forward", "input gradient", "weight gradient"],
              [[r["name"], f"{r['gemm_fwd']:.0f}%", f"{r['gemm_dx']:.0f}%",
                f"{r['gemm_dw']:.0f}%"] for r in crows])
        worst = min(min(r["gemm_fwd"], r["gemm_dx"], r["gemm_dw"]) for r in crows[1:])
    print(f"  target: conv GEMMs >= {TARGET_GEMM_PEAK:g}% of peak (convs after the first, "
          f"whose 9-tap input is too thin for a GEMM): lowest {worst:.0f}% -> "
          f"{'met' if worst >= TARGET_GEMM_PEAK else 'NOT met'}")
    return out


def main():
    args = arguments()
    print_header("3-bit QAT CNN at image sizes: training, integer inference, conv GEMMs")
    options = [f"BatchNorm2d {'on' if args.bn else 'off'}" + ("" if HAS_BN else
                                                              " (not in this qatfhe)"),
               f"pool {args.pool}" + ("" if HAS_MAXPOOL else " (not in this qatfhe)")]
    print("net options: " + ", ".join(options))
    peak = peak_mod.peak()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for size in args.sizes:
            run_size(size, args, peak)
    print_footer()


if __name__ == "__main__":
    main()
