"""What CPU a figure was measured on: its ISA flags and its single-thread fp32 matmul throughput.
Speed figures are only comparable next to these (int8 kernels with VNNI run several times faster than AVX2)."""
from __future__ import annotations

import os
import platform
import time

import numpy as np

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_int8", "neon", "asimd", "asimddp", "sve")


def usable_cores() -> int:
    """CPU cores this process may use (os.sched_getaffinity, so a container's or a job scheduler's CPU limit is
    respected)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpu_isa_flags() -> list[str]:
    """The vector-ISA flags of this CPU that matter for TF/XNNPACK speed (from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return []


def int8_is_fast(flags=None) -> bool:
    """Whether XNNPACK's int8 kernels beat its float32 ones for the student on this CPU (benchmarks.bench_latency):
    not on x86 without VNNI (AVX2 only: int8 multiply-adds cost as many instructions as FMA, plus requantisation);
    yes with AVX-512 VNNI / AVX-VNNI, and on ARM, whose int8 dot products (asimddp) XNNPACK uses."""
    flags = set(cpu_isa_flags() if flags is None else flags)
    if flags & {"avx", "avx2", "sse4_2"}:  # x86
        return bool(flags & {"avx512_vnni", "avx_vnni"})
    return True


def matmul_gflops_one_thread(n: int = 512, repeats: int = 20) -> float:
    """Single-thread fp32 matmul GFLOP/s (numpy's BLAS), best of three timed batches."""
    from threadpoolctl import threadpool_limits
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    best = float("inf")
    with threadpool_limits(limits=1):
        a @ a
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(repeats):
                a @ a
            best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 * repeats / best / 1e9


ISA_LIMIT_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES")


def describe() -> dict:
    """{cpu, isa, matmul_gflops_one_thread, cores}: recorded next to every speed figure."""
    info = {"machine": platform.machine(), "isa": cpu_isa_flags(),
            "matmul_gflops_one_thread": round(matmul_gflops_one_thread(), 1)}
    # instruction-set limits set on purpose (an AVX2-only machine emulated on a newer CPU): oneDNN (TensorFlow),
    # OpenBLAS and numpy's SIMD dispatch then run the older ISA's kernels, and the figures must say so
    limits = {k: os.environ[k] for k in ISA_LIMIT_VARIABLES if os.environ.get(k)}
    if limits:
        info["isa_limits"] = limits
    try:
        info["cores"] = os.cpu_count()
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info
