"""The CUDA backend under Numba's CUDA simulator, in a child pytest process.

``NUMBA_ENABLE_CUDASIM=1`` must be set before ``numba.cuda`` is first imported, and a process
that simulates cannot also use a real GPU, so the simulator run gets its own process: the checks
of cuda_checks.py run there, with small shapes (each simulated GPU thread is a Python thread).
Running them in the child keeps this process free to use a real GPU (test_cuda.py) and leaves
the CPU tests untouched. The child shares this session's kernel cache folder.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

import fusegrad

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(
    importlib.util.find_spec("numba_cuda") is None,
    reason='numba-cuda is not installed (pip install -e ".[cuda]")',
)
def test_cuda_backend_under_the_simulator():
    src = os.path.dirname(os.path.dirname(os.path.abspath(fusegrad.__file__)))
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "-rfE",
        os.path.join(HERE, "cuda_checks.py"),
    ]
    proc = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"CUDA simulator checks failed:\n{out[-12000:]}"
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 100 and "skipped" not in out, out[-3000:]


def test_cuda_is_unavailable_here_unless_a_gpu_or_the_simulator_is_present():
    if fusegrad.cuda.is_available():
        assert fusegrad.cuda.device_count() >= 1
        return
    assert fusegrad.cuda.device_count() == 0 and not fusegrad.cuda.is_simulator()
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        fusegrad.compile(lambda x: x, backend="cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        fusegrad.ones(2).cuda()
