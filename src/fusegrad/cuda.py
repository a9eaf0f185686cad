"""cuda: whether fusegrad can run on CUDA, and the one place that imports ``numba.cuda``.

fusegrad's CUDA backend needs the ``numba-cuda`` package (``pip install -e ".[cuda]"``) and
either an NVIDIA GPU with its driver, or Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``,
which runs every GPU thread as a Python thread: correct and very slow, for tests).

``is_available()`` is True in both cases, as ``numba.cuda.is_available()`` is: every CUDA code
path of fusegrad runs under the simulator, so code guarded by ``is_available()`` is exercised in
CI. ``is_simulator()`` tells the two apart (the ``gpu`` test marker needs a real GPU).

The simulator flag is read when ``numba.cuda`` is first imported. fusegrad imports numba (for
its CPU kernels) before anyone asks for CUDA, so ``_driver`` re-reads Numba's configuration from
the environment first: setting ``NUMBA_ENABLE_CUDASIM=1`` any time before the first CUDA use in a
process is enough. The CPU ``@njit`` kernels are unaffected by the flag.
"""

from __future__ import annotations

_STATE: dict = {}  # "driver": the numba.cuda module or None, "why": reason it is unavailable


def _driver():
    """``numba.cuda`` if fusegrad can use it, else None (the reason is kept for errors)."""
    if "driver" in _STATE:
        return _STATE["driver"]
    driver, why = None, ""
    try:
        import numba.core.config

        numba.core.config.reload_config()  # NUMBA_ENABLE_CUDASIM may be set after `import numba`
        from numba import cuda

        if cuda.is_available():
            driver = cuda
            if numba.core.config.ENABLE_CUDASIM:
                _lock_simulated_shared_arrays()
        else:
            why = "numba-cuda is installed but finds no CUDA GPU or driver"
    except ImportError as e:
        why = f'numba-cuda is not installed or incomplete ({e}); pip install -e ".[cuda]"'
    except Exception as e:  # a broken driver install: report it, never crash an import
        why = f"numba.cuda failed to initialise: {type(e).__name__}: {e}"
    _STATE["driver"], _STATE["why"] = driver, why
    return driver


def _lock_simulated_shared_arrays() -> None:
    """The simulator hands every thread of a block the block's shared array from a dict it
    fills on first use, keyed by the calling line, without a lock: two threads can both miss and
    each get its own uninitialised array, so a block reduction reads garbage now and then
    (numba-cuda 0.30; about one run in forty of the CUDA training checks). This is the same
    lookup under a lock (and with the caller's frame instead of a whole extracted stack)."""
    import sys
    import threading

    import numpy as np
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    shared = kernelapi.FakeCUDAShared
    if getattr(shared.array, "fusegrad_locked", False):
        return
    unlocked, lock = shared.array, threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:  # errors and dynamic shared memory: as before
            return unlocked(self, shape, dtype, alignment)
        f = sys._getframe(1)
        caller = (f.f_code.co_filename, f.f_lineno)
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    array.fusegrad_locked = True
    shared.array = array


def is_available() -> bool:
    """Whether CUDA tensors work here: a GPU (or Numba's simulator) and numba-cuda."""
    return _driver() is not None


def is_simulator() -> bool:
    """Whether CUDA runs in Numba's simulator (NUMBA_ENABLE_CUDASIM=1): correct but slow."""
    if _driver() is None:
        return False
    import numba.core.config

    return bool(numba.core.config.ENABLE_CUDASIM)


def device_count() -> int:
    cuda = _driver()
    if cuda is None:
        return 0
    try:
        return len(cuda.gpus)
    except Exception:
        return 1


def current_device() -> int:
    return 0


def get_device_name(device: int = 0) -> str:
    cuda = _require("fusegrad.cuda.get_device_name()")
    if is_simulator():
        return "Numba CUDA simulator"
    name = cuda.gpus[device].name
    return name.decode() if isinstance(name, bytes) else str(name)


def synchronize() -> None:
    """Wait for queued kernels (fusegrad's kernels run on the default stream)."""
    _require("fusegrad.cuda.synchronize()").synchronize()


def _require(what: str):
    cuda = _driver()
    if cuda is None:
        raise unavailable_error(what)
    return cuda


def unavailable_error(what: str) -> RuntimeError:
    _driver()
    return RuntimeError(
        f"{what}: CUDA is not available: {_STATE.get('why') or 'no CUDA device'}. "
        "fusegrad.cuda.is_available() is False; keep tensors on the CPU (or set "
        "NUMBA_ENABLE_CUDASIM=1 to run the CUDA backend in Numba's slow simulator)."
    )
