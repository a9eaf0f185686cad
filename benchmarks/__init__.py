"""fusegrad's benchmark suite: ``python -m benchmarks``.

Five float32 training steps (forward, backward, optimizer update), each written once against
the PyTorch API and run by fusegrad eager, fusegrad compiled, PyTorch eager, torch.compile, plus
a hand-written numpy step and a jax.jit step.  Every contender starts from the same weights and
must end at the same loss (else its row says WRONG); every time is also shown against a lower
bound computed from the machine's measured bandwidth and GEMM rate.

Modules, in the order data flows: ``workloads`` (what is measured), ``numpy_steps`` and
``jax_steps`` (the non-torch-like implementations), ``contenders`` (how each way of running a
step is set up), ``worker`` (one measurement in a fresh process), ``limits`` (machine limits),
``runner`` (the suite), ``progress`` (live display), ``report`` (table, JSON, plot).
``eager_overhead`` is a separate tool for per-op dispatch cost and memory stability.
"""

from .runner import run_suite

__all__ = ["run_suite"]
