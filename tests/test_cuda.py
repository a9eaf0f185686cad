"""The CUDA checks of cuda_checks.py on a real GPU: the ``gpu`` marker set.

Skipped unless ``fusegrad.cuda.is_available()`` and not simulating (conftest.py). The same checks
run under Numba's CUDA simulator in every test run through test_cuda_sim.py.
"""

import pytest

pytestmark = pytest.mark.gpu

from cuda_checks import *  # noqa: E402,F401,F403
