"""runtime: a plan made executable (kernels bound, buffers allocated once) and run.

Buffers for values that stay inside the plan are allocated when the plan is built and reused
on every call, so a cached step allocates nothing but the arrays it hands back (the loss, new
``.grad`` tensors). Kernels compile on the plan's first run; that run counts as compile time.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback

import numpy as np

from . import codegen, tensor as T
from .cache import KERNELS
from .errors import CompileError
from .fuse import Plan

log = logging.getLogger("fusegrad.progress")
if not log.handlers:
    _h = logging.StreamHandler(sys.stderr)
    _h.terminator = "\r" if sys.stderr.isatty() else "\n"
    log.addHandler(_h)
    log.setLevel(logging.INFO)
    log.propagate = False


class Executable:
    """One compiled graph: its plan, kernels, buffers and generated driver."""

    def __init__(self, plan: Plan, stats, verify: bool = False):
        self.plan = plan
        self.graph = plan.graph
        self.stats = stats
        render = {"loop": codegen.kernel_source, "update": codegen.update_source}
        names = load_kernels(self, {s.index: render[s.kind](s) for s in plan.steps if s.kind in render},
                             KERNELS)
        leaving = codegen.leaving(plan)
        self.layout, self.B = {}, []
        for s in plan.steps:
            for n in s.outputs:
                blas = s.kind == "extern" and n.op.name in ("mm_t", "matmul")
                if n.id not in leaving and (s.kind == "loop" or blas):
                    self.layout[n.id] = len(self.B)
                    self.B.append(np.empty(n.shape, n.dtype.np))
        build_driver(self, *codegen.driver_source(plan, names, self.layout), _FirstCall, verify)
        self.compiled_now = 0

    def run(self, arrays: list, scalars: list):
        if not self.first:
            return self.fn(arrays, scalars, self.B)
        return first_run(self, arrays, scalars)


def first_run(ex, arrays: list, scalars: list):
    """A plan's first run (CPU or CUDA), through its kernels' first-call wrappers (compile
    accounting, progress, clear errors); afterwards the driver calls the kernels directly."""
    t0 = ex.t0 = time.perf_counter()
    try:
        out = ex.fn(arrays, scalars, ex.B)
    finally:
        for disp, name, _, _ in ex.kernels.values():
            ex.env[name] = disp
        ex.first = False
    ex.stats.compile_seconds += time.perf_counter() - t0
    return out


def load_kernels(ex, sources: dict, cache) -> dict:
    """Each step's kernel from the cache (compiled on first call): fills ex.kernels (step index
    -> (dispatcher, name, path, step)) and ex.sources; returns step index -> kernel name."""
    ex.kernels, ex.sources, names = {}, [], {}
    steps = {s.index: s for s in ex.plan.steps}
    for index, (header, body) in sources.items():
        disp, name, path = cache.get(header, body)
        ex.kernels[index] = (disp, name, path, steps[index])
        names[index] = name
        ex.sources.append((name, path, body.replace("KNAME", name)))
    return names


def build_driver(ex, src: str, env: dict, first_call, verify: bool) -> None:
    """Compile a plan's generated driver; kernels go through first_call wrappers on the first
    run (compile accounting, clear errors). verify=True also returns the driver's locals."""
    if verify:
        src = src.replace("    return [", "    return locals(), [")
    ex.driver_src, ex.env = src, env
    for disp, name, path, s in ex.kernels.values():
        env[name] = first_call(ex, disp, name, path, s)
    exec(compile(src, f"<fusegrad driver {id(ex):x}>", "exec"), env)
    ex.fn = env["run"]
    ex.first = True


class _FirstCall:
    """Wraps a kernel for the plan's first run: compile accounting, progress, clear errors."""

    def __init__(self, ex: Executable, disp, name, path, step):
        self.ex, self.disp, self.name, self.path, self.step = ex, disp, name, path, step

    def __call__(self, *args):
        disp, stats = self.disp, self.ex.stats
        before = len(disp.signatures)
        hits = sum(disp.stats.cache_hits.values())
        try:
            _call_healing(disp, args)
        except Exception as e:
            if "numba" not in type(e).__module__:
                raise
            raise compile_error("kernel", self.name, self.path, self.step, e) from None
        if len(disp.signatures) > before and sum(disp.stats.cache_hits.values()) == hits:
            stats.kernels_compiled += 1
            self.ex.compiled_now += 1
            elapsed = time.perf_counter() - self.ex.t0
            if elapsed > 1.0 and elapsed - getattr(self.ex, "logged", 0.0) > 1.0:
                self.ex.logged = elapsed
                total = len(self.ex.kernels)
                log.info("fusegrad: compiled %d kernels (of %d in this graph) in %.1fs",
                         self.ex.compiled_now, total, elapsed)
        else:
            stats.kernel_hits += 1


def compile_error(what: str, name: str, path: str, step, e: Exception) -> CompileError:
    """Numba's failure to compile a generated kernel, naming it, its ops and shapes, and its
    source file."""
    shapes = ", ".join(f"{n.name}{list(n.shape)}" for n in step.nodes)
    return CompileError(
        f"Numba could not compile {what} {name} (ops: {shapes}); generated source: {path}\n"
        f"{type(e).__name__}: {str(e)[:2000]}"
    )


def _call_healing(disp, args: tuple) -> None:
    """Call a kernel for the first time. Machine code on disk that Numba cannot read back (a
    truncated or garbage .nbi/.nbc file) is dropped, and the kernel is compiled afresh."""
    try:
        disp(*args)
    except Exception as e:
        if not any(f.filename.endswith(os.path.join("numba", "core", "caching.py"))
                   for f in traceback.extract_tb(e.__traceback__)):
            raise
        log.warning("fusegrad: unreadable Numba cache for %s (%s); recompiling it",
                    disp.__name__, type(e).__name__)
        disp._cache.flush()
        disp(*args)


def interpret(graph, arrays: list, scalars: list) -> list:
    """Run a graph op by op with the eager kernels (fallback="eager", and reference runs)."""
    env = {}
    for n in graph.nodes:
        if n.op == "input":
            env[n.id] = T._wrap(arrays[n.attrs["k"]])
        elif n.op == "scalar":
            env[n.id] = scalars[n.attrs["k"]]
        else:
            env[n.id] = T._eager(n.op, tuple(env[i.id] for i in n.ins), n.attrs)
    for dst, src in graph.mutations:
        np.copyto(env[dst]._s.v, env[src]._s.v)
    return [env[i]._s.v for i in graph.outputs]
