"""Physical limits of this machine, measured with numpy at the start of a run.

The table reports each contender's time as a multiple of a lower bound computed from the
workload's cost model (``workloads.Cost``): ``max(bytes / bandwidth, flops / gemm_rate)``.
Both rates are the best this machine showed in this run:

* memory bandwidth: copy (``np.copyto``: reads and writes each array once, 2 x 64 MiB moved)
  and triad (``a = b + s*c``; numpy does it in two passes, ``a = s*c`` then ``a += b``, so it
  moves 5 x 64 MiB), each single-threaded and split over all cores with threads (numpy
  releases the GIL), best of N.  Write-allocate traffic is not counted, as in STREAM.
* float32 GEMM rate: ``numpy.matmul`` of two 1024 x 1024 float32 matrices (2 n^3 flops),
  best of N, with one BLAS thread and with one per core (threadpoolctl); the better counts
  (on a loaded machine the single thread often wins).

These are optimistic for the small matrices of the workloads; that is the point of a bound.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from os import cpu_count

import numpy as np

MIB = 2**20


def _best(fn, repeats: int) -> float:
    fn()  # touch the pages once
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@contextmanager
def _blas_threads(n: int):
    """Limit numpy's BLAS to ``n`` threads if threadpoolctl is installed (else: as is)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(n, user_api="blas"):
        yield


def measure_limits(quick: bool = False, array_mib: int = 64) -> dict:
    repeats = 3 if quick else 10
    n = array_mib * MIB // 4
    a = np.full(n, 1.0, np.float32)
    b = np.full(n, 2.0, np.float32)
    c = np.full(n, 3.0, np.float32)
    cores = cpu_count() or 1
    chunks = [slice(i * n // cores, (i + 1) * n // cores) for i in range(cores)]
    pool = ThreadPoolExecutor(cores)

    def copy(sl=slice(None)):
        np.copyto(b[sl], a[sl])

    def triad(sl=slice(None)):
        np.multiply(c[sl], 3.0, out=a[sl])
        np.add(a[sl], b[sl], out=a[sl])

    def threaded(fn):
        return lambda: list(pool.map(fn, chunks))

    nbytes = a.nbytes
    bw = {
        "copy_1thread_GBps": 2 * nbytes / _best(copy, repeats) / 1e9,
        "triad_1thread_GBps": 5 * nbytes / _best(triad, repeats) / 1e9,
        f"copy_{cores}threads_GBps": 2 * nbytes / _best(threaded(copy), repeats) / 1e9,
        f"triad_{cores}threads_GBps": 5 * nbytes / _best(threaded(triad), repeats) / 1e9,
    }
    pool.shutdown()

    m = 1024
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, m)).astype(np.float32)
    y = rng.standard_normal((m, m)).astype(np.float32)
    out = np.empty((m, m), np.float32)
    gemm = {}
    for threads in sorted({1, cores}):
        with _blas_threads(threads):
            seconds = _best(lambda: np.matmul(x, y, out=out), repeats)
        gemm[f"gemm_{threads}threads_GFLOPs"] = 2 * m**3 / seconds / 1e9

    return {
        "bandwidth": bw,
        "bandwidth_GBps": max(bw.values()),
        "gemm": gemm,
        "gemm_f32_GFLOPs": max(gemm.values()),
        "array_mib": array_mib,
        "repeats": repeats,
        "model": "bound = max(bytes / best bandwidth, flops / GEMM rate)",
    }


def best_limits(a: dict, b: dict) -> dict:
    """The better of two measurements, figure by figure (the rates are lower bounds of what
    the machine can do, so the larger one is the truer one)."""
    out = dict(a)
    for group in ("bandwidth", "gemm"):
        out[group] = {k: max(a[group][k], b[group][k]) for k in a[group]}
    out["bandwidth_GBps"] = max(out["bandwidth"].values())
    out["gemm_f32_GFLOPs"] = max(out["gemm"].values())
    out["measured"] = "at the start and at the end of the run; best of both"
    return out


def lower_bound_s(cost, limits: dict) -> float:
    """Roofline-style lower bound for one step of a workload with this cost."""
    return max(
        cost.bytes / (limits["bandwidth_GBps"] * 1e9),
        cost.flops / (limits["gemm_f32_GFLOPs"] * 1e9),
    )
