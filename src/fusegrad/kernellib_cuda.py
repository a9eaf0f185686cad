"""kernellib_cuda: the scalar functions generated CUDA kernels call, one name per dtype.

The CUDA twin of kernellib.py, with the same names (``exp_f32``, ``log_f64``, ``sign_i``...) so
that ops' ``lower`` templates and codegen's per-dtype renaming are shared by both renderers.
On the GPU ``math.exp`` & co. of a float32 become CUDA's own single-precision functions
(``expf``...), which are already fast: fastmath.py's polynomials exist to let LLVM vectorize CPU
loops and are not needed here. The guards (log of 0, exp overflow, sqrt of a negative) give
IEEE results where Python's ``math`` raises, which matters in Numba's simulator, where these
functions run as plain Python.

Also the launch sizes and the few fixed kernels (fill) that are not generated per plan. Only
imported once ``fusegrad.cuda`` has found a usable ``numba.cuda``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import cuda as fg_cuda
from . import kernellib as _cpu

SIMULATOR = fg_cuda.is_simulator()
# Launch sizes. The simulator runs each GPU thread as a Python thread, so it gets tiny blocks
# (grid-stride loops keep any grid correct); a GPU gets the usual occupancy-friendly sizes.
THREADS = 2 if SIMULATOR else 256  # threads per block of elementwise kernels
MAX_BLOCKS = 2 if SIMULATOR else 65535  # grid-stride loops cover the rest
RED_THREADS = 4 if SIMULATOR else 256  # threads per block of reductions (a power of two)
TILE = 2 if SIMULATOR else 16  # matmul tile edge (TILE x TILE threads per block)

_dev = cuda.jit(device=True)
_INF = math.inf
_NAN = math.nan

# float64 functions whose CPU bodies are plain math.* and need no guard: the same Python
# compiled as device functions (runtime_cuda's kernel-cache key hashes kernellib.py too).
tanh_f64 = _dev(_cpu.tanh_f64.py_func)
erf_f64 = _dev(_cpu.erf_f64.py_func)
gelu_f64 = _dev(_cpu.gelu_f64.py_func)
gelu_grad_f64 = _dev(_cpu.gelu_grad_f64.py_func)
sin_f64 = _dev(_cpu.sin_f64.py_func)
cos_f64 = _dev(_cpu.cos_f64.py_func)


def launch_1d(n: int) -> tuple[int, int]:
    """(blocks, threads) for a grid-stride loop over n elements (n > 0)."""
    threads = min(THREADS, max(32 if not SIMULATOR else 1, n))
    return min(MAX_BLOCKS, -(-n // threads)), threads


@_dev
def _exp(x):
    return math.exp(x) if x < 709.0 else (_INF if x == x else x)


@_dev
def exp_f32(x):
    return np.float32(_exp(x))


@_dev
def exp_f64(x):
    return _exp(x)


@_dev
def _log(x):
    return math.log(x) if x > 0 else (-_INF if x == 0 else _NAN)


@_dev
def log_f32(x):
    return np.float32(_log(x))


@_dev
def log_f64(x):
    return _log(x)


@_dev
def tanh_f32(x):
    return np.float32(math.tanh(x))


@_dev
def sigmoid_f32(x):
    return np.float32(1.0 / (1.0 + _exp(-x)))


@_dev
def sigmoid_f64(x):
    return 1.0 / (1.0 + _exp(-x))


@_dev
def erf_f32(x):
    return np.float32(math.erf(x))


@_dev
def gelu_f32(x):
    return np.float32(0.5 * x * (1.0 + math.erf(x * 0.7071067811865476)))


@_dev
def gelu_grad_f32(x):
    return np.float32(gelu_grad_f64(x))


@_dev
def _sqrt(x):
    return math.sqrt(x) if x >= 0 else _NAN


@_dev
def sqrt_f32(x):
    return np.float32(_sqrt(x))


@_dev
def sqrt_f64(x):
    return _sqrt(x)


@_dev
def sin_f32(x):
    return np.float32(math.sin(x))


@_dev
def cos_f32(x):
    return np.float32(math.cos(x))


@_dev
def sign_f32(x):
    return np.float32(1 if x > 0 else (-1 if x < 0 else 0)) if x == x else x


@_dev
def sign_f64(x):
    return np.float64(1 if x > 0 else (-1 if x < 0 else 0)) if x == x else x


@_dev
def sign_i(x):
    return 1 if x > 0 else (-1 if x < 0 else 0)


@cuda.jit(cache=True)
def fill_flat(out, value):
    """out[:] = value over a 1-D (flattened) device array."""
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = value


@cuda.jit(cache=True)
def arange_flat(out, start, step):
    """out[i] = start + i * step: an integer arange made on the device (no upload)."""
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = start + i * step


@_dev
def arg_better_max(v, i, w, j):
    """Whether (value w, index j) replaces the best (v, i) of an argmax: a larger value, or
    the same value at a lower index (PyTorch returns the first); NaN beats everything, the
    first NaN wins. An index of -1 marks an empty slot."""
    if j < 0:
        return False
    if i < 0:
        return True
    if w != w:
        return v == v or j < i
    if v != v:
        return False
    return w > v or (w == v and j < i)


@_dev
def arg_better_min(v, i, w, j):
    """argmin's twin of arg_better_max (NaN still wins, as in PyTorch)."""
    if j < 0:
        return False
    if i < 0:
        return True
    if w != w:
        return v == v or j < i
    if v != v:
        return False
    return w < v or (w == v and j < i)


__all__ = [n for n in dir() if n.endswith(("_f32", "_f64", "_i")) or n.startswith("arg_better")]
