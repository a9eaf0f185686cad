"""Speed / vectorization check for fusegrad.fastmath (not a test).

For each function, times a 1M-element float32 @njit loop calling the
fastmath version against the same loop calling the libm-backed NumPy/math
function, prints the ratio, and reports whether the compiled loop is
vectorized (``<N x float>`` in the LLVM IR, packed ``ps`` arithmetic on
ymm/zmm registers in the assembly).

    python benchmarks/fastmath_speed.py
    NUMBA_CPU_NAME=haswell python benchmarks/fastmath_speed.py   # AVX2 codegen
"""

from __future__ import annotations

import math
import os
import re
import sys
import time

import numba
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from fusegrad import fastmath as fm  # noqa: E402

N = 1_000_000
_SQRT1_2 = np.float32(0.7071067811865476)


def _loop(f):
    @numba.njit(fastmath=False)
    def run(x, out):
        for i in range(x.size):
            out[i] = f(x[i])

    return run


@numba.njit
def _libm_exp(v):
    return np.exp(v)


@numba.njit
def _libm_log(v):
    return np.log(v)


@numba.njit
def _libm_tanh(v):
    return np.tanh(v)


@numba.njit
def _libm_sigmoid(v):
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-v))


@numba.njit
def _libm_erf(v):
    return np.float32(math.erf(v))


@numba.njit
def _libm_gelu(v):
    return np.float32(0.5) * v * (np.float32(1.0) + np.float32(math.erf(v * _SQRT1_2)))


CASES = [
    ("tanh", fm.tanh_f32, _libm_tanh, (-5.0, 5.0)),
    ("exp", fm.exp_f32, _libm_exp, (-20.0, 20.0)),
    ("log", fm.log_f32, _libm_log, (1e-3, 1e3)),
    ("sigmoid", fm.sigmoid_f32, _libm_sigmoid, (-10.0, 10.0)),
    ("erf", fm.erf_f32, _libm_erf, (-3.0, 3.0)),
    ("gelu", fm.gelu_f32, _libm_gelu, (-5.0, 5.0)),
    ("gelu_grad", fm.gelu_grad_f32, None, (-5.0, 5.0)),
]


def _best(fn, x, out, reps=15):
    fn(x, out)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x, out)
        ts.append(time.perf_counter() - t0)
    return min(ts)


def _vector_info(dispatcher):
    sig = dispatcher.signatures[0]
    ir_text = dispatcher.inspect_llvm(sig)
    asm = dispatcher.inspect_asm(sig)
    widths = sorted({int(w) for w in re.findall(r"<(\d+) x float>", ir_text)})
    regs = sorted(set(re.findall(r"\bv(?:fmadd\w*|mulps|addps|divps)\s+%?([xyz]mm)", asm)))
    # external math-library functions still called from the loop (should be none)
    calls = sorted(set(re.findall(r"declare[^@]*@\"?((?:tanh|exp|log|erf)\w*)", ir_text)))
    return widths, regs, calls


def main():
    rng = np.random.default_rng(0)
    print(f"numba {numba.__version__}, N={N}, cpu={numba.config.CPU_NAME or 'host'}")
    print(f"{'op':10s} {'fastmath ms':>12s} {'libm ms':>9s} {'speedup':>8s}  vector widths / regs")
    for name, fast, slow, (lo, hi) in CASES:
        x = rng.uniform(lo, hi, N).astype(np.float32)
        out = np.empty_like(x)
        fast_loop = _loop(fast)
        t_fast = _best(fast_loop, x, out)
        widths, regs, calls = _vector_info(fast_loop)
        if slow is not None:
            slow_loop = _loop(slow)
            t_slow = _best(slow_loop, x, out)
            ratio = f"{t_slow / t_fast:7.1f}x"
            s_slow = f"{t_slow * 1e3:9.2f}"
        else:
            ratio, s_slow = "      -", "        -"
        extra = f" libm calls in fast loop: {calls}" if calls else ""
        print(
            f"{name:10s} {t_fast * 1e3:12.2f} {s_slow} {ratio}  "
            f"<{widths} x float>, packed ops on {regs}{extra}"
        )


if __name__ == "__main__":
    main()
