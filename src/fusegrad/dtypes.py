"""dtypes: fusegrad's dtype objects and PyTorch's type-promotion rule.

A dtype wraps a numpy dtype and prints as ``fusegrad.float32``. Promotion follows PyTorch:
categories bool < integer < float; within the winning category, dimensioned tensors beat
zero-dim tensors, which beat Python scalars; a Python float lifting an integer tensor gives the
default float dtype (float32), not float64 as numpy would.
"""

from __future__ import annotations

import builtins
from functools import lru_cache

import numpy as np


class dtype:
    __slots__ = ("name", "np", "category", "itemsize", "is_floating_point")

    def __init__(self, name: str, np_dtype: type, category: int) -> None:
        self.name = name
        self.np = np.dtype(np_dtype)
        self.category = category  # 0 bool, 1 integer, 2 float
        self.itemsize = self.np.itemsize
        self.is_floating_point = category == 2

    def __repr__(self) -> str:
        return f"fusegrad.{self.name}"

    def __reduce__(self):
        return (from_numpy_dtype, (self.np,))


float32 = dtype("float32", np.float32, 2)
float64 = dtype("float64", np.float64, 2)
int64 = dtype("int64", np.int64, 1)
int32 = dtype("int32", np.int32, 1)
bool_ = dtype("bool", np.bool_, 0)
float = float32  # noqa: A001  (torch.float)
double = float64
long = int64
int = int32  # noqa: A001

ALL = (float32, float64, int64, int32, bool_)
_BY_NP = {d.np: d for d in ALL}
DEFAULT_FLOAT = float32


def from_numpy_dtype(np_dtype) -> dtype:
    """The fusegrad dtype of a numpy dtype; float16/complex/uint are refused clearly."""
    d = _BY_NP.get(np.dtype(np_dtype))
    if d is None:
        raise TypeError(
            f"fusegrad supports float32, float64, int64, int32 and bool; got numpy dtype {np_dtype}"
        )
    return d


def as_dtype(d) -> dtype | None:
    """Accept a fusegrad dtype, a numpy dtype, or Python's bool/int/float types."""
    if d is None or isinstance(d, dtype):
        return d
    return {builtins.bool: bool_, builtins.int: int64, builtins.float: float64}.get(d) or (
        from_numpy_dtype(d)
    )


def scalar_dtype(x) -> dtype:
    """dtype a Python scalar takes on its own (torch.tensor(1.5) is float32)."""
    if isinstance(x, (bool, np.bool_)):
        return bool_
    if isinstance(x, (builtins.int, np.integer)):
        return int64
    return DEFAULT_FLOAT


# Participants are (dtype, priority): 2 = tensor with dims, 1 = zero-dim tensor, 0 = Python scalar.
@lru_cache(maxsize=4096)
def promote(parts: tuple) -> dtype:
    """PyTorch's result_type over ((dtype, priority), ...)."""
    cat = max(d.category for d, _ in parts)
    best_prio = max(p for d, p in parts if d.category == cat)
    cands = [d for d, p in parts if d.category == cat and p == best_prio]
    if best_prio == 0:  # only scalars of the winning category
        return {0: bool_, 1: int64, 2: DEFAULT_FLOAT}[cat]
    return max(cands, key=lambda d: d.itemsize)
