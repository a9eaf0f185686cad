"""cuda: whether a CUDA device can be used (needs a GPU and the numba-cuda package)."""

from __future__ import annotations


def is_available() -> bool:
    """Whether fusegrad can run on CUDA: False until its CUDA backend exists, even on a machine
    with a GPU, so that code guarded by it never reaches ``.cuda()``, which would raise."""
    return False


def device_count() -> int:
    return 1 if is_available() else 0


def unavailable_error(what: str) -> RuntimeError:
    return RuntimeError(
        f"{what}: CUDA is not available in this fusegrad: no CUDA backend is built yet, and "
        "fusegrad.cuda.is_available() is False. Keep tensors on the CPU."
    )
