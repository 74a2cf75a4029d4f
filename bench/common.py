"""Shared set-up of the benchmarks: thread pinning, timing, data, the tutorial's
networks in qatfhe, hand-written PyTorch fake-quant and Brevitas, and printing.

Import this module FIRST in a benchmark script: it pins every thread pool to one
thread before NumPy or torch is loaded (their pools read the variables at load)."""
import os
import sys

THREADS = 1
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = str(THREADS)
# Some machines here set these for old OpenBLAS builds; they slow a current NumPy, so
# the benchmark process drops both (this process only; tests and CI keep them).
UNSET_OPENBLAS = {k: os.environ.pop(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                  if k in os.environ}

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import argparse      # noqa: E402
import platform      # noqa: E402
import statistics    # noqa: E402
import subprocess    # noqa: E402
import time          # noqa: E402
import warnings      # noqa: E402

import numpy as np   # noqa: E402

import qatfhe                       # noqa: E402
from qatfhe import nn as qnn        # noqa: E402
from qatfhe import optim as qoptim  # noqa: E402
from qatfhe import datasets         # noqa: E402

try:
    import torch
    torch.set_num_threads(THREADS)
    try:
        torch.set_num_interop_threads(THREADS)
    except RuntimeError:             # already set by an earlier parallel call
        pass
except ImportError:                  # the PyTorch rows are then skipped
    torch = None

N_HIDDEN = 100
BITS = 3
MAX_NON_ZERO = 20
LR = 1e-3
DATA_SEED = 0
NET_SEED = 0


# ---------------------------------------------------------------- command line and timing

def arguments(description):
    """--only qatfhe skips PyTorch and Brevitas (for profiling the engine alone)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--only", choices=("all", "qatfhe"), default="all",
                        help="'qatfhe' runs the qatfhe rows only (e.g. under perf record)")
    return parser.parse_args()


class Timing:
    """Median wall seconds (time.perf_counter) of the timed calls, all of them, and the
    share of that wall time this process spent on a CPU (time.process_time / wall):
    well below 100% means other jobs took the core and the figure is inflated.
    cpu_median (process CPU seconds) is the contention-robust twin of median."""

    def __init__(self, times, cpu_times):
        self.median = statistics.median(times)
        self.cpu_median = statistics.median(cpu_times)
        self.times = times
        self.cpu_share = sum(cpu_times) / sum(times)

    def cpu(self):
        return f"{100 * self.cpu_share:.0f}%"


def measure(fn, repeats, warmup=1):
    """Time fn(): `warmup` untimed calls, then `repeats` timed ones; returns a Timing."""
    for _ in range(warmup):
        fn()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return Timing(times, cpu_times)


def spread(timing, scale=1.0):
    return f"{min(timing.times) * scale:.3g}-{max(timing.times) * scale:.3g}"


# ---------------------------------------------------------------- threads

def qatfhe_thread_control():
    """The engine's thread setter if it has one (qatfhe.set_num_threads or
    qatfhe._core.set_num_threads), else None."""
    for owner in (qatfhe, qatfhe._core):
        setter = getattr(owner, "set_num_threads", None)
        if callable(setter):
            return setter
    return None


def two_thread_note():
    if qatfhe_thread_control() is None:
        return ("threads: training and the eval-mode networks above run on one thread (qatfhe "
                "has no global thread setting); the integer circuit splits large batches over "
                "threads with QuantizedModule.forward(X, fhe='simulate', n_threads=n), timed at "
                "2 threads by bench_inference.py.")
    return None


def run_with_qatfhe_threads(n, fn):
    """fn() with the engine set to n threads (then back to THREADS), or None when the
    engine has no thread control."""
    setter = qatfhe_thread_control()
    if setter is None:
        return None
    setter(n)
    try:
        return fn()
    finally:
        setter(THREADS)


def two_thread_table(one_thread, run_batch, batches=(1, 128)):
    """Time run_batch(b) for each batch size with qatfhe at 2 threads and print s/epoch
    next to the speed-up over one_thread[b]; prints nothing without thread control."""
    two = run_with_qatfhe_threads(2, lambda: {b: run_batch(b) for b in batches})
    if two is None:
        return
    print("\n-- qatfhe with 2 threads (s/epoch, speed-up over 1 thread)")
    table(["batch size", "s/epoch", "CPU", "speed-up"],
          [[b, f"{r['epoch_s']:.4g}", r["timing"].cpu(),
            f"{one_thread[b]['epoch_s'] / r['epoch_s']:.2f}x"] for b, r in two.items()])


# ---------------------------------------------------------------- machine

def _git_commit():
    try:
        out = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def brevitas_version():
    try:
        import brevitas
        return brevitas.__version__
    except Exception:                # noqa: BLE001 - absent or broken install
        return None


def print_header(title):
    print(f"== {title}")
    load = os.getloadavg()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start (other jobs share the cores)")
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}",
                f"qatfhe {qatfhe.__version__} @ {_git_commit()}"]
    if torch is not None:
        versions.append(f"torch {torch.__version__}")
    versions.append(f"brevitas {brevitas_version() or 'not importable'}")
    print(", ".join(versions))
    unset = (f"; unset for this process: {', '.join(f'{k}={v}' for k, v in UNSET_OPENBLAS.items())}"
             if UNSET_OPENBLAS else "")
    print(f"threads: {THREADS} (OMP/OPENBLAS/MKL_NUM_THREADS=1, torch.set_num_threads(1))"
          f"{unset}")


def print_footer():
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    note = two_thread_note()
    if note:
        print(note)


def table(headers, rows):
    """Print rows (lists of str) under headers, columns aligned."""
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for k, r in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                        enumerate(zip(r, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def fmt_ratio(x):
    return "-" if x is None else f"{x:,.1f}x"


def verdict(ratio, target):
    """'' without a target; else 'met' or how many times short of it."""
    if target is None:
        return ""
    if ratio >= target:
        return f">= {target:g}x: met"
    return f">= {target:g}x: NOT met ({target / ratio:.2f}x short)"


def anchor_table(entries):
    """entries: (label, anchor s/epoch, target ratio or None, qatfhe row).  The anchors were
    measured on an idle core, so the ratio that decides is the one from qatfhe's process
    CPU time; the wall-clock one is printed beside it."""
    rows = []
    for label, sec, target, r in entries:
        rows.append([label, f"{sec:g}", f"{r['epoch_s']:.4g}", f"{r['epoch_cpu']:.4g}",
                     fmt_ratio(sec / r["epoch_s"]), fmt_ratio(sec / r["epoch_cpu"]),
                     verdict(sec / r["epoch_cpu"], target),
                     "" if target is None else f"<= {sec / target:.3g} s"])
    table(["anchor", "s/epoch", "qatfhe wall", "qatfhe CPU", "ratio wall", "ratio CPU",
           "target (CPU)", "qatfhe needs"], rows)


def fmt_rate(samples_per_s):
    return f"{samples_per_s:,.0f}"


# ---------------------------------------------------------------- data

def data():
    """The tutorial's checkerboard: X_train (9500, 2) float32, X_test, y_train, y_test."""
    return datasets.checkerboard(noise=0.01, seed=DATA_SEED)


def all_points():
    """All 10,000 points (train then test), float32 (10000, 2)."""
    X_train, X_test, _, _ = data()
    return np.concatenate([X_train, X_test])


# ---------------------------------------------------------------- work counts

def linear_macs(shapes):
    """shapes: [(in, out, non_zero_weights)] of the weight layers in order.
    Returns (forward MACs, training MACs) per sample, dense-equivalent and non-zero:
    training = forward + weight gradient + input gradient (none for the first layer)."""
    dense = sum(i * o for i, o, _ in shapes)
    nonzero = sum(nz for _, _, nz in shapes)
    first_dense, first_nz = shapes[0][0] * shapes[0][1], shapes[0][2]
    return {"forward_dense": dense, "forward_nonzero": nonzero,
            "train_dense": 3 * dense - first_dense, "train_nonzero": 3 * nonzero - first_nz}


def qatfhe_shapes(net):
    return [(l.in_features, l.out_features, int(np.count_nonzero(l.weight)))
            for l in net if isinstance(l, (qnn.Linear, qnn.QuantLinear))]


def percent_of_peak(macs_per_sample, samples_per_s, peak_gflops):
    """Achieved FLOP rate (2 per MAC) as a percentage of peak_gflops."""
    return 100.0 * 2.0 * macs_per_sample * samples_per_s / (peak_gflops * 1e9)


# ---------------------------------------------------------------- qatfhe networks

def qatfhe_qat_net(seed=NET_SEED, prune=True):
    """The tutorial's QuantSimpleNet(100) at 3 bits, weights U(-1, 1), pruned to 20."""
    linear = dict(bias=True, weight_quant=qnn.CommonWeightQuant, weight_bit_width=BITS,
                  bias_quant=None)
    net = qnn.Sequential(
        qnn.QuantIdentity(act_quant=qnn.CommonActQuant, bit_width=BITS),
        qnn.QuantLinear(2, N_HIDDEN, **linear),
        qnn.QuantReLU(bit_width=BITS),
        qnn.QuantLinear(N_HIDDEN, N_HIDDEN, **linear),
        qnn.QuantReLU(bit_width=BITS),
        qnn.QuantLinear(N_HIDDEN, 2, **linear),
        seed=seed)
    for layer in net:
        if isinstance(layer, qnn.QuantLinear):
            qnn.init.uniform_(layer.weight, -1, 1)
    if prune:
        net.prune(MAX_NON_ZERO)
    qoptim.AdamW(net.parameters(), lr=LR)
    return net


def qatfhe_fp32_net(seed=NET_SEED):
    """The tutorial's fp32 SimpleNet(100): PyTorch's default Linear init."""
    net = qnn.Sequential(qnn.Linear(2, N_HIDDEN), qnn.ReLU(),
                         qnn.Linear(N_HIDDEN, N_HIDDEN), qnn.ReLU(),
                         qnn.Linear(N_HIDDEN, 2), seed=seed)
    qoptim.AdamW(net.parameters(), lr=LR)
    return net


def qatfhe_epoch(net, X, y, batch_size):
    return lambda: net.fit(X, y, epochs=1, batch_size=batch_size, progress=False)


# ---------------------------------------------------------------- PyTorch networks

def torch_fp32_net(seed=NET_SEED):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(2, N_HIDDEN), torch.nn.ReLU(),
                               torch.nn.Linear(N_HIDDEN, N_HIDDEN), torch.nn.ReLU(),
                               torch.nn.Linear(N_HIDDEN, 2))


if torch is not None:
    class _RoundSTE(torch.autograd.Function):
        """round half to even forward, identity backward."""

        @staticmethod
        def forward(ctx, x):
            return torch.round(x)

        @staticmethod
        def backward(ctx, grad):
            return grad

    class _WeightFakeQuantSTE(torch.autograd.Function):
        """s * clamp(round(w / s), qmin, qmax) forward; identity backward (no clamp mask,
        as Brevitas' weight quantizer)."""

        @staticmethod
        def forward(ctx, w, scale, qmin, qmax):
            return torch.clamp(torch.round(w / scale), qmin, qmax) * scale

        @staticmethod
        def backward(ctx, grad):
            return grad, None, None, None

    class FakeQuantAct(torch.nn.Module):
        """QuantIdentity / QuantReLU by hand: y = s * clamp(round_ste(x / s), qmin, qmax).
        Constant s (CommonActQuant: 1/3 on [-3, 3]) or s = T / int_threshold with T a
        learned parameter (Uint8ActPerTensorFloat: [0, 7], s = T / 7); autograd then gives
        Brevitas' straight-through gradients for x and T."""

        def __init__(self, qmin, qmax, scale=None, relu=False):
            super().__init__()
            self.qmin, self.qmax, self.relu = qmin, qmax, relu
            self.int_threshold = max(-qmin, qmax)
            self.const_scale = scale
            self.threshold = (None if scale is not None
                              else torch.nn.Parameter(torch.ones(())))

        def scale(self):
            if self.const_scale is not None:
                return self.const_scale
            return self.threshold / self.int_threshold

        def forward(self, x):
            if self.relu:
                x = torch.relu(x)
            s = self.scale()
            return torch.clamp(_RoundSTE.apply(x / s), self.qmin, self.qmax) * s

    class FakeQuantLinear(torch.nn.Module):
        """QuantLinear(CommonWeightQuant, 3 bits) by hand: weights fake-quantized with the
        constant scale 1/3 to [-3, 3], float bias; weight initialised U(-1, 1)."""

        def __init__(self, in_features, out_features, scale, qmin, qmax):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(out_features, in_features)
                                             .uniform_(-1, 1))
            bound = 1.0 / in_features ** 0.5
            self.bias = torch.nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
            self.wscale, self.qmin, self.qmax = scale, qmin, qmax

        def forward(self, x):
            w = _WeightFakeQuantSTE.apply(self.weight, self.wscale, self.qmin, self.qmax)
            return torch.nn.functional.linear(x, w, self.bias)


def _tutorial_prune(linears):
    """PrunedQuantNet.prune: l1_unstructured of (in - 20) * out weights per layer."""
    from torch.nn.utils import prune
    for layer in linears:
        out_features, in_features = layer.weight.shape
        zeros = (in_features - MAX_NON_ZERO) * out_features
        if zeros > 0:
            prune.l1_unstructured(layer, "weight", amount=zeros)


def torch_fakequant_net(X_calib, seed=NET_SEED):
    """The tutorial net with hand-written fake-quant modules, pruned as the tutorial does.
    The QuantReLU thresholds start at the max of one training-mode forward of X_calib
    (Brevitas' 300-step running-statistics phase is left out) and are then learned."""
    torch.manual_seed(seed)
    w = dict(scale=1.0 / 3.0, qmin=-3, qmax=3)
    net = torch.nn.Sequential(
        FakeQuantAct(-3, 3, scale=1.0 / 3.0),
        FakeQuantLinear(2, N_HIDDEN, **w), FakeQuantAct(0, 7, relu=True),
        FakeQuantLinear(N_HIDDEN, N_HIDDEN, **w), FakeQuantAct(0, 7, relu=True),
        FakeQuantLinear(N_HIDDEN, 2, **w))
    _tutorial_prune([m for m in net if isinstance(m, FakeQuantLinear)])
    with torch.no_grad():                 # one-shot statistics for the learned thresholds
        h = torch.as_tensor(X_calib)
        for m in net:
            if isinstance(m, FakeQuantAct) and m.threshold is not None:
                m.threshold.fill_(float(torch.relu(h).max().clamp_min(1e-3)))
            h = m(h)
    return net


def brevitas_net(seed=NET_SEED):
    """The tutorial's QuantSimpleNet(100) built with brevitas.nn and pruned with
    torch.nn.utils.prune, or None when Brevitas is not importable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import brevitas.nn as bnn
            from brevitas.core.bit_width import BitWidthImplType
            from brevitas.core.quant import QuantType
            from brevitas.core.restrict_val import FloatToIntImplType, RestrictValueType
            from brevitas.core.scaling import ScalingImplType
            from brevitas.core.zero_point import ZeroZeroPoint
            from brevitas.inject import ExtendedInjector
            from brevitas.quant.solver import ActQuantSolver, WeightQuantSolver
            from dependencies import value
    except Exception:                       # noqa: BLE001 - absent or incompatible
        return None

    class CommonQuant(ExtendedInjector):
        bit_width_impl_type = BitWidthImplType.CONST
        scaling_impl_type = ScalingImplType.CONST
        restrict_scaling_type = RestrictValueType.FP
        zero_point_impl = ZeroZeroPoint
        float_to_int_impl_type = FloatToIntImplType.ROUND
        scaling_per_output_channel = False
        narrow_range = True
        signed = True

        @value
        def quant_type(bit_width):
            if bit_width is None:
                return QuantType.FP
            if bit_width == 1:
                return QuantType.BINARY
            return QuantType.INT

    class CommonWeightQuant(CommonQuant, WeightQuantSolver):
        scaling_const = 1.0
        signed = True

    class CommonActQuant(CommonQuant, ActQuantSolver):
        min_val = -1.0
        max_val = 1.0

    class QuantSimpleNet(torch.nn.Module):
        def __init__(self, n_hidden):
            super().__init__()
            linear = dict(weight_bit_width=BITS, weight_quant=CommonWeightQuant, bias=True,
                          bias_quant=None, narrow_range=True)
            self.quant_inp = bnn.QuantIdentity(bit_width=BITS, act_quant=CommonActQuant)
            self.fc1 = bnn.QuantLinear(2, n_hidden, **linear)
            self.relu1 = bnn.QuantReLU(bit_width=BITS)
            self.fc2 = bnn.QuantLinear(n_hidden, n_hidden, **linear)
            self.relu2 = bnn.QuantReLU(bit_width=BITS)
            self.fc3 = bnn.QuantLinear(n_hidden, 2, **linear)
            for m in self.modules():
                if isinstance(m, bnn.QuantLinear):
                    torch.nn.init.uniform_(m.weight.data, -1, 1)

        def forward(self, x):
            x = self.quant_inp(x)
            x = self.relu1(self.fc1(x))
            x = self.relu2(self.fc2(x))
            return self.fc3(x)

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = QuantSimpleNet(N_HIDDEN)
        _tutorial_prune([net.fc1, net.fc2, net.fc3])
    return net


def torch_shapes(linears):
    """[(in, out, non-zero weights)] of torch Linear-like layers (pruned ones included)."""
    return [(l.weight.shape[1], l.weight.shape[0], int(torch.count_nonzero(l.weight)))
            for l in linears]


class TorchTrainer:
    """A plain PyTorch training loop (AdamW lr 1e-3, CrossEntropyLoss) over shuffled
    mini-batches; step(n) goes on where the last call stopped, across epochs."""

    def __init__(self, net, X, y, batch_size, seed=0):
        self.net, self.batch_size = net, batch_size
        self.X, self.y = torch.as_tensor(X), torch.as_tensor(y)
        self.opt = torch.optim.AdamW(net.parameters(), lr=LR)
        self.loss = torch.nn.CrossEntropyLoss()
        self.gen = torch.Generator().manual_seed(seed)
        self.batches, self.next = [], 0

    def _new_epoch(self):
        perm = torch.randperm(len(self.X), generator=self.gen)
        self.batches = list(torch.split(perm, self.batch_size))
        self.next = 0

    def steps(self, n):
        net, opt, loss_fn, X, y = self.net, self.opt, self.loss, self.X, self.y
        net.train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(n):
                if self.next == len(self.batches):
                    self._new_epoch()
                idx = self.batches[self.next]
                self.next += 1
                opt.zero_grad()
                loss = loss_fn(net(X[idx]), y[idx])
                loss.backward()
                opt.step()

    def steps_per_epoch(self):
        return -(-len(self.X) // self.batch_size)

    def epoch(self):
        self._new_epoch()
        self.steps(self.steps_per_epoch())

    def dataloader_steps(self, n):
        """n steps of the tutorial's own loop: DataLoader(TensorDataset, shuffle=True)."""
        from torch.utils.data import DataLoader, TensorDataset
        loader = DataLoader(TensorDataset(self.X, self.y), batch_size=self.batch_size,
                            shuffle=True)
        net, opt, loss_fn = self.net, self.opt, self.loss
        net.train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for k, (data, target) in enumerate(loader):
                if k == n:
                    break
                opt.zero_grad()
                loss_net = loss_fn(net(data), target.long())
                loss_net.backward()
                opt.step()
                loss_net.item()


def torch_accuracy(net, X, y):
    net.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = net(torch.as_tensor(X)).argmax(dim=1).numpy()
    net.train()
    return float(np.mean(pred == np.asarray(y)))
