"""cuda: whether a CUDA device can be used (needs a GPU and the numba-cuda package)."""

from __future__ import annotations


def is_available() -> bool:
    """True when numba-cuda is installed and sees a GPU; False otherwise (never raises)."""
    try:
        from numba import cuda

        return bool(cuda.is_available()) and not _simulated()
    except Exception:
        return False


def _simulated() -> bool:
    import os

    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def device_count() -> int:
    return 1 if is_available() else 0


def unavailable_error(what: str) -> RuntimeError:
    return RuntimeError(
        f"{what}: CUDA is not available in this fusegrad: no CUDA backend is built yet, and "
        "fusegrad.cuda.is_available() is False. Keep tensors on the CPU."
    )
