"""fusegrad: PyTorch-style define-by-run autograd on numpy, whose training steps compile to
fused Numba kernels with ``@fusegrad.compile``.

``import fusegrad as torch`` runs PyTorch programs in eager mode (the debugging mode);
decorating a training step with ``fusegrad.compile`` re-runs it each call as a cheap trace and
executes the recorded forward + backward + update as cached fused kernels.
"""

from __future__ import annotations

import os as _os


def _pin_blas_threads() -> None:
    """One BLAS thread by default: on small machines OpenBLAS's spinning pool loses ~100x on
    the small matmuls of training steps when anything else runs (ARCHITECTURE.md, pitfalls).
    FUSEGRAD_BLAS_THREADS=N sets another count; 0 leaves BLAS alone."""
    n = int(_os.environ.get("FUSEGRAD_BLAS_THREADS") or "1")
    if n > 0:
        import numpy  # noqa: F401  (its BLAS must be loaded to be limited)
        from threadpoolctl import threadpool_limits

        threadpool_limits(n, user_api="blas")


_pin_blas_threads()


def _quiet_kernel_threads() -> None:
    """Parallel kernels use Numba's workqueue threads unless NUMBA_THREADING_LAYER says
    otherwise: the default OpenMP pool spins after each kernel, and on a 2-core machine with
    anything else running a 1M-element step measured 17-19 ms instead of 3-6 ms."""
    if not _os.environ.get("NUMBA_THREADING_LAYER"):
        import numba

        numba.config.THREADING_LAYER = "workqueue"


_quiet_kernel_threads()

from . import autograd, cuda, dtypes, ops
from .autograd import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .dtypes import bool_ as bool  # noqa: A001
from .dtypes import double, float32, float64, int32, int64, long
from .dtypes import dtype
from .dtypes import float as float  # noqa: A001,PLC0414
from .dtypes import int as int  # noqa: A001,PLC0414
from .compiled import compile
from .errors import CompileError, FusegradError, RecompileWarning, VerifyError
from .tensor import (
    Generator, Parameter, Size, Tensor, arange, as_tensor, cat, concat, default_generator,
    device, empty, empty_like, eye, from_numpy, full, full_like, initial_seed, is_tensor,
    linspace, manual_seed, ones, ones_like, rand, rand_like, randint, randn, randn_like, seed,
    stack, tensor, where, zeros, zeros_like,
)

__version__ = "0.1.0"


def _function(name: str):
    """Module-level twin of a Tensor method (fusegrad.exp(x) == x.exp())."""

    def fn(input, *args, **kwargs):
        if not isinstance(input, Tensor):
            input = tensor(input)
        return getattr(Tensor, name)(input, *args, **kwargs)

    fn.__name__ = name
    fn.__doc__ = f"fusegrad.{name}(input, ...) is input.{name}(...)."
    return fn


for _name in (
    "add sub mul div pow neg abs exp log sqrt rsqrt sin cos tanh sigmoid relu clamp clip "
    "maximum minimum matmul mm t transpose permute reshape flatten unsqueeze squeeze sum mean "
    "amax amin max min argmax argmin softmax log_softmax norm square eq ne lt le gt ge all any "
    "clone erf sign logical_not detach numel"
).split():
    globals()[_name] = _function(_name)
del _name


def get_default_dtype() -> dtype:
    return float32


from . import nn, optim  # noqa: E402  (nn and optim are written in Tensor ops)
