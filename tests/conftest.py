"""Test session setup: one private kernel cache folder per session, and the ``gpu`` marker.

FUSEGRAD_CACHE_DIR is set here, at import, before any test compiles a kernel: every test (and
every subprocess a test starts, such as the examples) then shares one folder, so a kernel that
Numba compiled for one test is loaded from disk by the next. A folder that CI set already is
honoured (and kept); a folder made here is private (mkdtemp makes it 0700) and removed at the end.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # `import samples` from any rootdir

_OWN_CACHE = None
if not os.environ.get("FUSEGRAD_CACHE_DIR"):
    _OWN_CACHE = tempfile.mkdtemp(prefix="fusegrad-test-")
    os.chmod(_OWN_CACHE, 0o700)
    os.environ["FUSEGRAD_CACHE_DIR"] = _OWN_CACHE


def _gpu_available() -> bool:
    """A real GPU: Numba's simulator also makes is_available() True, but it is not a GPU (the
    simulator runs of the CUDA checks are test_cuda_sim.py's)."""
    try:
        import fusegrad

        return bool(fusegrad.cuda.is_available() and not fusegrad.cuda.is_simulator())
    except Exception:
        return False


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a real CUDA GPU (skipped otherwise)")


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _gpu_available():
        skip = pytest.mark.skip(reason="needs a real CUDA GPU: fusegrad.cuda.is_available() is "
                                "False, or CUDA runs in Numba's simulator")
        for item in gpu_items:
            item.add_marker(skip)


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
