"""Eager-mode overhead: what one op costs on tiny tensors, what a DynamicNet step costs, and
whether memory stays flat over many steps.

    python -m benchmarks.eager_overhead [--quick]      (or: python benchmarks/eager_overhead.py)

On 4x4 tensors the arithmetic is free, so the time per call is pure dispatch: argument
checks, dtype/shape rules, tensor wrapping, and with ``requires_grad`` the autograd node.
Those microseconds decide the speed of small models (DynamicNet, small_mlp), so they are worth
watching as ratios to numpy (the floor: no framework at all) and to PyTorch eager (the
reference framework), measured in one process, one after the other.

Per-op timings interleave the libraries round by round (see ``op_costs``). DynamicNet runs in
the order numpy, fusegrad, PyTorch: torch's OpenMP workers keep spinning for a while after a
parallel op, so they go last.  Importing fusegrad pins BLAS to one thread for
the whole process, so numpy's DynamicNet here runs with one BLAS thread too, like the suite's
numpy contender.

The memory check runs 500 fusegrad eager DynamicNet steps and samples the resident set size
after each: a leak in the tape (saved tensors kept alive, grads accumulating references)
shows up as a steady climb.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import sys
import time
from collections.abc import Callable

import numpy as np

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import numpy_steps  # noqa: E402
from benchmarks.workloads import DYNAMIC_NET_SEED, WORKLOADS  # noqa: E402

OPS: dict[str, Callable] = {  # written so that numpy arrays run them too
    "add": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "matmul": lambda a, b: a @ b,
    "sum": lambda a, b: a.sum(),
    "sum(1)": lambda a, b: a.sum(1),
    "a[1]": lambda a, b: a[1],
    "reshape": lambda a, b: a.reshape(16),
    ".T": lambda a, b: a.T,
}


def per_call_us(fn: Callable, a, b, calls: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` microseconds per call over ``calls`` calls."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(a, b)
        best = min(best, time.perf_counter() - t0)
    return best / calls * 1e6


def rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def op_costs(libs: list[str], calls: int, rounds: int = 5) -> dict[str, dict[str, dict]]:
    """{lib: {op: {requires_grad: us per call}}} for 4x4 float32 operands.

    Each round times every (op, library) pair once, the libraries of one op back to back, and
    the best round counts: a change in machine load (other processes on a shared machine) then
    hits every library alike instead of skewing the ratios."""
    rng = np.random.default_rng(0)
    a_np, b_np = (rng.standard_normal((4, 4)).astype(np.float32) for _ in range(2))
    operands = {("numpy", False): (a_np, b_np)}
    for lib in libs[1:]:
        tl = __import__(lib)
        for grad in (False, True):
            operands[lib, grad] = tuple(
                tl.from_numpy(x.copy()).requires_grad_(grad) for x in (a_np, b_np)
            )
    best: dict = {}
    for _ in range(rounds):
        for op, fn in OPS.items():
            for (lib, grad), (a, b) in operands.items():
                t = per_call_us(fn, a, b, calls, repeats=1)
                best[lib, op, grad] = min(best.get((lib, op, grad), float("inf")), t)
    out: dict = {lib: {op: {} for op in OPS} for lib in libs}
    for (lib, op, grad), t in best.items():
        out[lib][op][grad] = t
    return out


def dynamic_net_ms(lib: str, blocks: int, inner: int, warmup: int = 10) -> float:
    """Median ms per DynamicNet training step (the suite's workload definition)."""
    w = WORKLOADS["dynamic_net"]
    init = w.make_init(w.sizes)
    if lib == "numpy":
        step, batch = numpy_steps.BUILDERS["dynamic_net"](init), init.batches[0]
    else:
        tl = __import__(lib)
        if lib == "torch":
            tl.set_num_threads(os.cpu_count() or 1)
        _, step = w.torch_like(tl, init)
        batch = tuple(tl.from_numpy(a.copy()) for a in init.batches[0])
    random.seed(DYNAMIC_NET_SEED)
    for _ in range(warmup):
        step(*batch)
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(inner):
            loss = step(*batch)
        float(loss.item() if hasattr(loss, "item") else loss)
        times.append((time.perf_counter() - t0) / inner * 1e3)
    return float(np.median(times))


def rss_over_steps(steps: int) -> list[float]:
    """RSS (MiB) after each of ``steps`` fusegrad eager DynamicNet steps."""
    import fusegrad

    w = WORKLOADS["dynamic_net"]
    init = w.make_init(w.sizes)
    _, step = w.torch_like(fusegrad, init)
    batch = tuple(fusegrad.from_numpy(a.copy()) for a in init.batches[0])
    random.seed(DYNAMIC_NET_SEED)
    samples = []
    for _ in range(steps):
        step(*batch)
        samples.append(rss_mib())
    return samples


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.eager_overhead", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls and steps")
    parser.add_argument("--steps", type=int, default=500, help="steps for the RSS check")
    args = parser.parse_args(argv)
    calls = 200 if args.quick else 2000
    blocks, inner = (3, 5) if args.quick else (10, 20)
    steps = 50 if args.quick else args.steps

    libs = ["numpy"] + [m for m in ("fusegrad", "torch") if importlib.util.find_spec(m)]
    missing = {"fusegrad", "torch"} - set(libs)
    if missing:
        print(f"not installed, left out: {', '.join(sorted(missing))}")
    ops = op_costs(libs, calls)
    nets = {lib: dynamic_net_ms(lib, blocks, inner) for lib in libs}

    print(f"per-op cost on 4x4 float32, us per call (best of 5 interleaved rounds x {calls})")
    cols = ["op", "numpy"]
    for lib in libs[1:]:
        cols += [lib, f"{lib}+grad"]
    if "fusegrad" in libs:
        cols += ["fg/numpy"] + (["fg/torch", "fg+grad/torch+grad"] if "torch" in libs else [])
    print("  ".join(f"{c:>18}" if i else f"{c:<8}" for i, c in enumerate(cols)))
    for op in OPS:
        cells = [op, _fmt(ops["numpy"][op][False])]
        for lib in libs[1:]:
            cells += [_fmt(ops[lib][op][False]), _fmt(ops[lib][op][True])]
        if "fusegrad" in libs:
            fg = ops["fusegrad"][op]
            cells.append(_fmt(fg[False] / ops["numpy"][op][False]))
            if "torch" in libs:
                t = ops["torch"][op]
                cells += [_fmt(fg[False] / t[False]), _fmt(fg[True] / t[True])]
        print("  ".join(f"{c:>18}" if i else f"{c:<8}" for i, c in enumerate(cells)))

    print(f"\nDynamicNet training step, ms (median of {blocks} x {inner} steps)")
    for lib in libs:
        ratios = [f"{nets[lib] / nets[o]:.2f}x {o}" for o in libs if o != lib]
        print(f"  {lib:<9} {nets[lib]:8.3f} ms   ({', '.join(ratios)})")

    if "fusegrad" in libs:
        samples = rss_over_steps(steps)
        print(
            f"\nRSS over {steps} fusegrad eager DynamicNet steps: first {samples[0]:.1f} MiB, "
            f"last {samples[-1]:.1f} MiB, max {max(samples):.1f} MiB "
            f"(last - first = {samples[-1] - samples[0]:+.1f} MiB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
