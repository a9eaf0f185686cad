"""kernellib: the scalar functions generated kernels call, one name per dtype.

float32 kernels use fusegrad.fastmath's branch-free approximations so that LLVM vectorizes the
fused loop; float64 kernels use libm through math.*.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .fastmath import (  # noqa: F401
    erf_f32, exp_f32, gelu_f32, gelu_grad_f32, log_f32, sigmoid_f32, tanh_f32,
)

_inline = njit(inline="always", cache=True)


@_inline
def pairwise_sum(w, d, m):
    """The float64 sum of w[:m] as a tree of halvings (w: a chunk buffer whose length is a
    power of two, d: float64, half as long). Each halving is a loop LLVM vectorizes, where a
    running float sum is a serial chain it keeps scalar; the order is fixed, so the result
    does not depend on the thread count. w stays in the kernel's dtype: converting to float64
    inside the kernel's main loop stops that loop from vectorizing."""
    h = 1
    while h < m:
        h *= 2
    for j in range(m, h):  # pad to a power of two
        w[j] = 0
    if h == 1:
        return np.float64(w[0])
    h //= 2
    for j in range(h):
        d[j] = np.float64(w[j]) + np.float64(w[j + h])
    h //= 2
    while h > 0:
        for j in range(h):
            d[j] = d[j] + d[j + h]
        h //= 2
    return d[0]


@_inline
def sqrt_f32(x):
    return np.sqrt(np.float32(x))


@_inline
def sin_f32(x):
    return np.float32(math.sin(x))


@_inline
def cos_f32(x):
    return np.float32(math.cos(x))


@_inline
def sign_f32(x):
    return np.float32((x > 0) - (x < 0)) if x == x else x


@_inline
def exp_f64(x):
    return math.exp(x)


@_inline
def log_f64(x):
    return math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)


@_inline
def tanh_f64(x):
    return math.tanh(x)


@_inline
def sigmoid_f64(x):
    return 1.0 / (1.0 + math.exp(-x))


@_inline
def erf_f64(x):
    return math.erf(x)


@_inline
def gelu_f64(x):
    return 0.5 * x * (1.0 + math.erf(x * 0.7071067811865476))


@_inline
def gelu_grad_f64(x):
    return 0.5 * (1.0 + math.erf(x * 0.7071067811865476)) + x * (
        math.exp(x * x * -0.5) * 0.3989422804014327
    )


@_inline
def sqrt_f64(x):
    return np.sqrt(np.float64(x))


@_inline
def sin_f64(x):
    return math.sin(x)


@_inline
def cos_f64(x):
    return math.cos(x)


@_inline
def sign_f64(x):
    return np.float64((x > 0) - (x < 0)) if x == x else x


@_inline
def sign_i(x):
    return (x > 0) - (x < 0)


__all__ = [n for n in dir() if n.endswith(("_f32", "_f64", "_i"))] + ["pairwise_sum"]
