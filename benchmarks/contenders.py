"""The contenders: the different ways of running one workload's training step.

A contender turns a ``Workload`` and its ``Init`` into a ``Prepared`` step inside a worker
process (``worker.py``); it never runs in the parent, so importing torch, jax or numba cannot
disturb the other contenders' thread pools or memory figures.

* ``fusegrad eager`` / ``torch eager``: the workload's torch-like code on that module.
* ``fusegrad compiled``: the same step wrapped in ``fusegrad.compile`` (``backend="cuda"`` with
  ``--device cuda``: the CUDA renderer, tensors moved with ``.to("cuda")``); skipped (with the
  reason) while ``fusegrad.compile`` does not exist yet or fails on the first step.
* ``torch.compile``: the same step wrapped in ``torch.compile`` (inductor); skipped with the
  reason when compiling fails (e.g. no C compiler).
* ``numpy``: the hand-written step from ``numpy_steps``.
* ``jax.jit``: the step from ``jax_steps`` (CPU unless ``--device cuda``).

``Prepared.step(i)`` runs training step ``i`` (batch ``i % len(batches)``) and returns the
loss in the contender's own type; ``Prepared.value`` turns that into a float, which also
synchronises asynchronous runtimes (JAX, CUDA), so the timer reads it at the end of each
timed block.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .workloads import Init, Workload


class Skip(Exception):
    """The contender cannot run here (not installed, no GPU, compiler missing...)."""


@dataclass
class Prepared:
    """A ready-to-run step; ``stats`` is called once at the end for extra figures."""

    run: Callable[..., Any]
    batches: list[tuple]
    value: Callable[[Any], float]
    stats: Callable[[], dict] = field(default=lambda: {})
    notes: list[str] = field(default_factory=list)

    def step(self, i: int) -> Any:
        return self.run(*self.batches[i % len(self.batches)])


class Contender(Protocol):
    key: str  # identifier used on the command line and in the JSON
    label: str  # name shown in the table
    compiles: bool  # the first step includes compiling (reported as compile time)
    modules: tuple[str, ...]  # what must be importable (checked cheaply in the parent)
    quick_skip: str | None  # set: --quick leaves it out unless named in --contenders

    def prepare(self, workload: Workload, init: Init, device: str) -> Prepared: ...


def installed(*modules: str) -> str | None:
    """None if every module can be found, else a skip reason (without importing anything)."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            return f"{name} not installed"
    return None


# ---------------------------------------------------------------------------------------------


@dataclass
class TorchLike:
    """Runs the workload's torch-like definition on ``torch`` or ``fusegrad``.

    ``wrap`` optionally turns the step into a compiled step (``fusegrad.compile`` or
    ``torch.compile``); it returns the wrapped step and a stats function."""

    key: str
    label: str
    module: str
    compiles: bool = False
    wrap: Callable[[Any, Callable, str], tuple[Callable, Callable[[], dict]]] | None = None
    quick_skip: str | None = None  # why --quick leaves it out unless named in --contenders

    @property
    def modules(self) -> tuple[str, ...]:
        return (self.module,)

    def prepare(self, workload: Workload, init: Init, device: str) -> Prepared:
        tl = importlib.import_module(self.module)
        notes = []
        if self.module == "torch":  # all cores unless --torch-threads says otherwise
            threads = int(os.environ.get("BENCH_TORCH_THREADS") or os.cpu_count() or 1)
            tl.set_num_threads(threads)
            notes.append(f"torch.set_num_threads({threads})")
        if device == "cuda" and not tl.cuda.is_available():
            raise Skip(f"{self.module}.cuda.is_available() is False")
        _, step = workload.torch_like(tl, init, device)
        stats: Callable[[], dict] = lambda: {}
        if self.wrap is not None:
            step, stats = self.wrap(tl, step, device)

        def convert(a):
            t = tl.from_numpy(a.copy())
            return t.to(device) if device != "cpu" else t

        batches = [tuple(convert(a) for a in b) for b in init.batches]
        return Prepared(step, batches, lambda loss: float(loss.item()), stats, notes)


def _fusegrad_compile(fg: Any, step: Callable, device: str):
    if not hasattr(fg, "compile"):
        raise Skip("fusegrad.compile is not available yet")
    compiled = fg.compile(step, backend=device) if device != "cpu" else fg.compile(step)
    names = (
        "calls",
        "graphs_compiled",
        "graph_hits",
        "kernels_compiled",
        "kernel_hits",
        "graph_breaks",
        "compile_seconds",
        "trace_seconds",
        "run_seconds",
    )

    def stats() -> dict:
        s = getattr(compiled, "stats", None)
        return {n: getattr(s, n) for n in names if hasattr(s, n)}

    return compiled, stats


def _torch_compile(torch: Any, step: Callable, device: str):
    compiled = torch.compile(step)

    def stats() -> dict:
        try:
            from torch._dynamo.utils import counters

            return {"graphs_compiled": int(counters["stats"]["unique_graphs"])}
        except Exception:  # private API: the figure is optional
            return {}

    return compiled, stats


# ---------------------------------------------------------------------------------------------


@dataclass
class NumpyHand:
    """The hand-written numpy step (always on the CPU)."""

    key: str = "numpy"
    label: str = "numpy (by hand)"
    compiles: bool = False
    modules: tuple[str, ...] = ("numpy",)
    quick_skip: str | None = None

    def prepare(self, workload: Workload, init: Init, device: str) -> Prepared:
        from . import numpy_steps

        notes = ["numpy runs on the CPU"] if device != "cpu" else []
        try:  # one BLAS thread, as fusegrad does: OpenBLAS's spinning pool loses on small
            # matmuls as soon as anything else runs (ARCHITECTURE.md, pitfalls)
            from threadpoolctl import threadpool_limits

            threadpool_limits(1, user_api="blas")
            notes.append("BLAS threads: 1")
        except ImportError:
            notes.append("BLAS threads: numpy default (threadpoolctl missing)")
        step = numpy_steps.BUILDERS[workload.impl](init)
        batches = [tuple(a.copy() for a in b) for b in init.batches]
        return Prepared(step, batches, float, notes=notes)


@dataclass
class JaxJit:
    """``jax.jit`` of value_and_grad + update (``JAX_PLATFORMS`` is set by the parent)."""

    key: str = "jax"
    label: str = "jax.jit"
    compiles: bool = True
    modules: tuple[str, ...] = ("jax",)
    quick_skip: str | None = None

    def prepare(self, workload: Workload, init: Init, device: str) -> Prepared:
        import warnings

        import jax
        import jax.numpy as jnp
        import numpy as np

        if device == "cuda" and not any(d.platform == "gpu" for d in jax.devices()):
            raise Skip("jax sees no GPU")
        warnings.filterwarnings("ignore", message=".*donated buffers.*")
        from . import jax_steps

        step = jax_steps.BUILDERS[workload.impl](init)

        def convert(a):  # JAX is 32-bit by default: labels go in as int32
            return jnp.asarray(a.astype(np.int32) if a.dtype == np.int64 else a)

        batches = [tuple(convert(a) for a in b) for b in init.batches]

        def stats() -> dict:
            size = getattr(step.jitted, "_cache_size", None)
            return {"graphs_compiled": size()} if size else {}

        return Prepared(step, batches, float, stats, [f"jax {jax.__version__}"])


CONTENDERS: dict[str, Contender] = {
    c.key: c
    for c in [
        TorchLike("fusegrad_eager", "fusegrad eager", "fusegrad"),
        TorchLike("fusegrad_compiled", "fusegrad compiled", "fusegrad", True, _fusegrad_compile),
        NumpyHand(),
        TorchLike("torch_eager", "PyTorch eager", "torch"),
        TorchLike(
            "torch_compile",
            "torch.compile",
            "torch",
            True,
            _torch_compile,
            quick_skip="not in --quick (compiles 10-50 s per workload; name it in --contenders)",
        ),
        JaxJit(),
    ]
}

# Candidates for the correctness reference, in order of preference (see runner.check_losses).
REFERENCE_ORDER = ("fusegrad_eager", "numpy", "torch_eager")
