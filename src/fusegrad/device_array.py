"""device: the value behind a CUDA tensor, and every host <-> device copy fusegrad makes.

A CUDA tensor's Store holds a ``CudaArray``: a C-contiguous numba-cuda device array with the
``shape``/``dtype``/``base`` that the rest of fusegrad reads from numpy arrays. Keeping every
device array contiguous (views that cannot be contiguous are copies on the device) lets kernels
and the driver reshape freely.

All copies between host and device go through ``to_device`` and ``to_host``, which count them
in ``TRANSFERS``: tests assert that a cached compiled step copies nothing, and that only what
the user asks for (``.cpu()``, ``.item()``, ``.numpy()``, printing) crosses the bus.

This module imports ``numba.cuda`` only when a CUDA tensor is first made (``fusegrad.cuda``
decides between a GPU and the simulator), so CPU-only programs never load it.
"""

from __future__ import annotations

import numpy as np

TRANSFERS = {"to_device": 0, "to_host": 0}  # copies since the process started
USED = [False]  # a CUDA tensor was ever made: eager dispatch checks devices only then


def _cuda():
    from . import cuda as fg_cuda

    return fg_cuda._require("CUDA tensors")


class CudaArray:
    """A CUDA tensor's value: a contiguous device array ``a``, with ndarray-like metadata."""

    __slots__ = ("a", "shape", "dtype", "base", "__weakref__")

    def __init__(self, a, base: CudaArray | None = None):
        self.a = a
        self.shape = tuple(a.shape)
        self.dtype = np.dtype(a.dtype)
        self.base = base  # the CudaArray this one is a reshaped view of (autograd asks)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def host(self) -> np.ndarray:
        """A host copy (the user asked for values: .cpu(), .item(), printing)."""
        return to_host(self.a)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        h = self.host()
        return h if dtype is None else h.astype(dtype)

    def reshape(self, shape: tuple) -> CudaArray:
        """A view with another shape (the array is contiguous, so this never copies)."""
        return CudaArray(self.a.reshape(tuple(shape)), base=self.base or self)

    def fill(self, value) -> None:
        from .kernellib_cuda import fill_flat, launch_1d

        n = self.size
        if n:
            blocks, threads = launch_1d(n)
            fill_flat[blocks, threads](self.a.reshape(n), self.dtype.type(value))

    def copy_from(self, src) -> None:
        """Write src (a CudaArray: on the device; a numpy array: one upload) into this array."""
        if type(src) is CudaArray:
            if src.dtype != self.dtype:
                raise RuntimeError(f"copy: dtype {src.dtype} into {self.dtype} on cuda")
            if self.size:
                self.a.copy_to_device(src.a)
        else:
            TRANSFERS["to_device"] += 1
            self.a.copy_to_device(_contiguous(np.asarray(src, dtype=self.dtype)))

    def __deepcopy__(self, memo) -> CudaArray:
        """copy.deepcopy(model) on CUDA: a new device array, copied on the device."""
        out = empty(self.shape, self.dtype)
        out.copy_from(self)
        return out

    def __reduce__(self):
        """Pickling (torch.save-style) stores host values; loading puts them back on CUDA."""
        return upload, (self.host(),)

    def __repr__(self) -> str:
        return f"CudaArray(shape={self.shape}, dtype={self.dtype})"


def to_device(arr: np.ndarray):
    """One host -> device copy of arr (a raw device array)."""
    TRANSFERS["to_device"] += 1
    USED[0] = True
    return _cuda().to_device(_contiguous(np.asarray(arr)))


def _contiguous(arr: np.ndarray) -> np.ndarray:
    """arr in C order (np.ascontiguousarray would turn a 0-d array into a 1-d one)."""
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def to_host(a) -> np.ndarray:
    """One device -> host copy of a raw device array."""
    TRANSFERS["to_host"] += 1
    return a.copy_to_host()


def upload(arr: np.ndarray) -> CudaArray:
    """arr on the device: one counted copy, except an integer arange (which a step may make
    per call, e.g. ``arange(C, device=...)`` in cross_entropy), which is generated there."""
    step = _int_progression(arr)
    if step is None:
        return CudaArray(to_device(arr))
    from .kernellib_cuda import arange_flat, launch_1d

    out = empty(arr.shape, arr.dtype)
    blocks, threads = launch_1d(arr.size)
    arange_flat[blocks, threads](out.a, arr.dtype.type(arr[0]), arr.dtype.type(step))
    return out


def _int_progression(arr) -> int | None:
    """The step of a 1-D int64/int32 arithmetic progression of 2+ elements, else None."""
    if not (type(arr) is np.ndarray and arr.ndim == 1 and arr.size > 1):
        return None
    if arr.dtype not in (np.int64, np.int32):
        return None
    step = int(arr[1]) - int(arr[0])
    if not np.array_equal(arr, arr[0] + step * np.arange(arr.size, dtype=arr.dtype)):
        return None
    return step


def empty(shape: tuple, dtype) -> CudaArray:
    """An uninitialised device array (no copy)."""
    USED[0] = True
    return CudaArray(_cuda().device_array(tuple(shape), np.dtype(dtype)))


def full(shape: tuple, value, dtype) -> CudaArray:
    """A device array filled on the device (zeros, ones, full: no host copy)."""
    out = empty(shape, dtype)
    out.fill(value)
    return out
