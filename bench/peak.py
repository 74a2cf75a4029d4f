"""This machine's single-core float32 peak, estimated two ways.

    python bench/peak.py

1. Nominal: clock x SIMD float32 lanes x 2 (an FMA is two FLOPs) x FMA units per core.
   The clock is /proc/cpuinfo's "cpu MHz" (a VM reports its nominal clock; turbo may be
   higher); lanes come from the CPU flags (AVX-512: 16, AVX2+FMA: 8); two FMA units per
   core is assumed (true of every AVX2 core from Haswell and Zen 2 on).
2. Measured: the best of several 1-thread float32 GEMMs (NumPy/OpenBLAS and torch, square
   matrices of 1024; best time, not median, since a peak is a best case), timed by process
   CPU time so that other jobs on the cores do not lower it (wall clock printed beside it).
The benchmarks divide by the measured figure: what a tuned kernel achieves here.  It can
exceed the nominal one: the VM reports the base clock and the core boosts above it."""
import common  # noqa: F401  (pins threads before NumPy/torch load)

import time

import numpy as np

from common import torch

FMA_UNITS = 2


def cpu_flags_and_mhz():
    flags, mhz = set(), None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("cpu MHz") and mhz is None:
                mhz = float(line.split(":", 1)[1])
    return flags, mhz


def nominal_peak():
    """(GFLOP/s, description) of one core from clock, lanes and FMA units."""
    flags, mhz = cpu_flags_and_mhz()
    if "avx512f" in flags:
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags and "fma" in flags:
        lanes, isa = 8, "AVX2+FMA"
    else:
        lanes, isa = 4, "SSE (no FMA: mul + add)"
    gflops = mhz / 1e3 * lanes * 2 * FMA_UNITS
    return gflops, (f"{mhz / 1e3:.2f} GHz x {lanes} float32 lanes ({isa}) x 2 FLOP/FMA x "
                    f"{FMA_UNITS} FMA units = {gflops:.1f} GFLOP/s")


def _best_gemm(matmul, n, repeats):
    """(GFLOP/s by wall clock, GFLOP/s by process CPU time) of the fastest call."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats + 1):        # the first call warms up
        start, cpu_start = time.perf_counter(), time.process_time()
        matmul()
        best_wall = min(best_wall, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu_start)
    flop = 2.0 * n ** 3
    return flop / best_wall / 1e9, flop / best_cpu / 1e9


def measured_peak(n=1024, repeats=10):
    """{library: (GFLOP/s wall, GFLOP/s CPU time)} of a 1-thread float32 n x n GEMM."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    out = {"numpy": _best_gemm(lambda: np.matmul(a, b, out=c), n, repeats)}
    if torch is not None:
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        out["torch"] = _best_gemm(lambda: torch.mm(ta, tb, out=tc), n, repeats)
    return out


def blas_description():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    parts = []
    for pool in threadpool_info():
        parts.append(f"{pool.get('internal_api')} {pool.get('version')} "
                     f"{pool.get('architecture') or ''} threads={pool.get('num_threads')}")
    return "; ".join(parts)


_CACHE = {}


def peak(verbose=True):
    """The measured 1-thread float32 GEMM peak in GFLOP/s (printed with the nominal one)."""
    if "peak" not in _CACHE:
        nominal, how = nominal_peak()
        gemm = measured_peak()
        _CACHE["peak"] = max(cpu for _, cpu in gemm.values())
        _CACHE["lines"] = [
            f"peak, nominal: {how}",
            "peak, measured: 1-thread float32 GEMM 1024^3, best of 10, GFLOP/s by wall clock / "
            "by process CPU time: " +
            ", ".join(f"{k} {w:.1f} / {c:.1f}" for k, (w, c) in gemm.items()) +
            f" -> using {_CACHE['peak']:.1f} GFLOP/s ({100 * _CACHE['peak'] / nominal:.0f}% "
            "of nominal) as 100%",
            f"BLAS: {blas_description()}"]
    if verbose:
        for line in _CACHE["lines"]:
            print(line)
    return _CACHE["peak"]


if __name__ == "__main__":
    common.print_header("peak float32 rate of one core")
    peak()
