"""compiled: ``fusegrad.compile``, the user-facing decorator.

Each call runs the Python function again with a Tracer active, so control flow, loops and
``random.randint`` shape the recorded graph freely. The graph's signature (built while
recording) picks a cached Executable, or the graph is planned, rendered and compiled. Graph
breaks (``item()``, ``bool(t)``, ``print(t)``) run the pending graph and tracing goes on.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, fields

import numpy as np

from . import device_array as _device, fuse, runtime, tensor as T
from .errors import CompileError, RecompileWarning, VerifyError
from .trace import Graph, Tracer


@dataclass
class Stats:
    """Counters since the compiled function was created."""

    calls: int = 0
    graphs_compiled: int = 0
    graph_hits: int = 0
    kernels_compiled: int = 0
    kernel_hits: int = 0
    graph_breaks: int = 0
    backward_replays: int = 0
    compile_seconds: float = 0.0
    trace_seconds: float = 0.0
    run_seconds: float = 0.0

    def __str__(self) -> str:
        return ", ".join(
            f"{f.name}={getattr(self, f.name):.3f}" if isinstance(getattr(self, f.name), float)
            else f"{f.name}={getattr(self, f.name)}" for f in fields(self)
        )


def _debug_level() -> int:
    try:
        return int(os.environ.get("FUSEGRAD_DEBUG", "0"))
    except ValueError:
        return 0


class CompiledFunction:
    def __init__(self, fn, backend: str = "auto", verify: bool = False, fallback: str | None = None,
                 max_graphs: int = 64):
        if backend not in ("cpu", "cuda", "auto"):
            raise ValueError(f"fusegrad.compile: backend must be 'cpu', 'cuda' or 'auto', got {backend!r}")
        if backend == "cuda":
            from . import cuda

            if not cuda.is_available():
                raise cuda.unavailable_error(f"fusegrad.compile(backend={backend!r})")
        self.backend = backend
        if fallback not in (None, "eager"):
            raise ValueError(f"fusegrad.compile: fallback must be None or 'eager', got {fallback!r}")
        self.fn = fn
        self.verify = verify
        self.fallback = fallback
        self.max_graphs = max_graphs
        self.stats = Stats()
        self.graphs: OrderedDict = OrderedDict()  # signature -> Executable (LRU)
        self.history: list[Graph] = []  # every graph compiled, for explain()
        self._last_run: list = []  # the graphs the last call ran, in order: the next call's guide
        self._warned_evict = False
        self._warned_fallback = False
        self.__name__ = getattr(fn, "__name__", "compiled")
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn

    def __get__(self, obj, objtype=None):  # decorating a method binds like a function
        if obj is None:
            return self
        from functools import partial

        return partial(self.__call__, obj)

    def __call__(self, *args, **kwargs):
        if T.TRACER[0] is not None:  # called from inside another compiled function
            return self.fn(*args, **kwargs)
        self.stats.calls += 1
        t0 = time.perf_counter()
        c0, r0 = self.stats.compile_seconds, self.stats.run_seconds
        tracer = Tracer(self._run_graph, self.verify, self.graphs, self._last_run)
        tracer.final = False
        T.TRACER[0] = tracer
        try:
            out = self.fn(*args, **kwargs)
        except BaseException:
            T.TRACER[0] = None
            tracer.final = True
            tracer.realize()  # what was recorded before the error still happens, as in eager
            raise
        finally:
            T.TRACER[0] = None
        tracer.final = True
        tracer.realize()
        self._last_run = tracer.ran
        self.stats.backward_replays += tracer.replayed
        spent = time.perf_counter() - t0
        self.stats.trace_seconds += spent - (self.stats.compile_seconds - c0) - (self.stats.run_seconds - r0)
        return out

    # ---- one graph
    def _run_graph(self, graph: Graph, arrays: list, scalars: list) -> list:
        tracer = T.TRACER[0]
        if tracer is not None and not getattr(tracer, "final", True):
            self.stats.graph_breaks += 1
        ex = self.graphs.get(graph.key)
        if ex is None:
            ex = self._compile(graph, arrays)
            if ex is None:  # fallback="eager": this graph runs eagerly from now on
                self.graphs[graph.key] = _Interpreted(graph)
                return runtime.interpret(graph, arrays, scalars)
        else:
            self.stats.graph_hits += 1
            self.graphs.move_to_end(graph.key)
            if type(ex) is _Interpreted:
                return runtime.interpret(graph, arrays, scalars)
        t0 = time.perf_counter()
        first = ex.first
        try:
            out = ex.run(arrays, scalars)
        except CompileError:
            self.graphs.pop(graph.key, None)
            if self.fallback != "eager":
                raise
            self._warn_fallback()
            self.graphs[graph.key] = _Interpreted(graph)
            return runtime.interpret(graph, arrays, scalars)
        if not first:
            self.stats.run_seconds += time.perf_counter() - t0
        if self.verify:
            env, out = out
            _check(graph, ex, env)
        return out

    def _compile(self, graph: Graph, arrays: list = ()):
        t0 = time.perf_counter()
        self.stats.graphs_compiled += 1
        level = _debug_level()
        if level >= 1:
            print(f"[fusegrad] new graph #{self.stats.graphs_compiled} for {self.__name__}: "
                  f"{_diff_text(graph, self.history)}", flush=True)
        ex = None
        try:
            if _device.USED[0] or self.backend == "cuda":  # which renderer: the tensors' device
                from . import runtime_cuda

                on = runtime_cuda.graph_device(graph, arrays)
                if on != self.backend != "auto":
                    raise RuntimeError(
                        f"fusegrad.compile({self.__name__}, backend={self.backend!r}): the step's "
                        f"tensors are on {on}; move them with .to({self.backend!r}) or use "
                        "backend='auto'"
                    )
                if on == "cuda":
                    plan = fuse.plan(graph, cpu=False)
                    ex = runtime_cuda.Executable(plan, self.stats, verify=self.verify)
            if ex is None:
                plan = fuse.plan(graph)
                ex = runtime.Executable(plan, self.stats, verify=self.verify)
        except CompileError:
            if self.fallback != "eager":
                raise
            self._warn_fallback()
            return None
        self.history.append(graph)
        if level >= 1:
            print(f"[fusegrad]   {len(graph.nodes)} nodes -> {plan.kernel_count()} kernels, "
                  f"{len(plan.steps) - plan.kernel_count()} extern calls", flush=True)
        if level >= 2:
            print(graph.format(f"graph #{self.stats.graphs_compiled}"))
            print("fusion groups:\n" + plan.describe(), flush=True)
        if level >= 3:
            for name, path, src in ex.sources:
                print(f"# {path}\n{src}")
            print(ex.driver_src, flush=True)
        self.graphs[graph.key] = ex
        if len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
            if not self._warned_evict:
                self._warned_evict = True
                warnings.warn(
                    f"fusegrad.compile({self.__name__}): more than max_graphs={self.max_graphs} "
                    f"distinct graphs; evicting the least recently used. What changed:\n"
                    f"{self.explain()}", RecompileWarning, stacklevel=_user_stacklevel(),
                )
        self.stats.compile_seconds += time.perf_counter() - t0
        return ex

    def _warn_fallback(self):
        if not self._warned_fallback:
            self._warned_fallback = True
            warnings.warn(f"fusegrad.compile({self.__name__}): compiling failed; running this "
                          "graph eagerly (fallback='eager')", RuntimeWarning,
                          stacklevel=_user_stacklevel())

    # ---- observability
    def explain(self) -> str:
        """The graphs compiled so far and, for each after the first, what differed."""
        lines = [f"{self.__name__}: {len(self.history)} graphs compiled, {self.stats}"]
        for i, g in enumerate(self.history):
            n_ops = sum(1 for n in g.nodes if n.op not in ("input", "scalar"))
            head = f"graph {i + 1}: {n_ops} ops"
            if i == 0:
                lines.append(f"{head} (first)")
            else:
                lines.append(f"{head}: {_diff_text(g, self.history[:i])}")
        hint = _hint(self.history)
        if hint:
            lines.append("hint: " + hint)
        return "\n".join(lines)


class _Interpreted:
    """A graph that failed to compile under fallback="eager": it runs op by op, and is never
    planned or compiled again (each attempt would cost the failing compile again)."""

    def __init__(self, graph: Graph):
        self.graph = graph


def _user_stacklevel() -> int:
    """The warnings stacklevel that points at the user's frame, outside fusegrad."""
    import sys

    from .errors import _PKG_DIR

    f, level = sys._getframe(1), 1
    while f is not None and f.f_code.co_filename.startswith(_PKG_DIR):
        f, level = f.f_back, level + 1
    return level


def _site(n) -> str:
    if n is None or not n.site or not n.site[1]:
        return ""
    return f" ({os.path.basename(n.site[0])}:{n.site[1]})"


def _diff_text(g: Graph, earlier: list) -> str:
    """What differs between g and the closest earlier graph (the longest common prefix)."""
    if not earlier:
        return "first graph"
    keys = g.key.t[0]

    def common(h):
        k = h.key.t[0]
        i = 0
        while i < min(len(k), len(keys)) and k[i] == keys[i]:
            i += 1
        return i

    best = max(earlier, key=common)
    i = common(best)
    k_old = best.key.t[0]
    if i == len(keys) == len(k_old):
        return "same ops; outputs or in-place writes differ"
    new = g.nodes[i] if i < len(g.nodes) else None
    old = best.nodes[i] if i < len(best.nodes) else None
    if new is not None and old is not None and new.op == old.op == "input":
        return (f"input {new.attrs['k']} shape {tuple(old.shape)} -> {tuple(new.shape)}"
                f"{_site(_first_user(g, new))}")
    if new is None:
        return f"op {i}: graph ends early (old graph continues with {old.name}){_site(old)}"
    if old is None:
        return f"op {i}: new {new.name}{_site(new)} (graph is longer)"
    if new.name != old.name:
        return f"op {i}: {old.name} -> {new.name}{_site(new)}"
    if tuple(new.shape) != tuple(old.shape):
        return f"op {i}: {new.name} shape {tuple(old.shape)} -> {tuple(new.shape)}{_site(new)}"
    return f"op {i}: {new.name} attributes or dtypes changed{_site(new)}"


def _first_user(g: Graph, node):
    for n in g.nodes:
        if node in n.ins:
            return n
    return None


def _hint(history: list) -> str:
    shape_changes = 0
    for i in range(1, len(history)):
        if "shape" in _diff_text(history[i], history[:i]):
            shape_changes += 1
    if shape_changes >= 2:
        return (f"{shape_changes} recompiles came from changing shapes: pad or bucket the "
                "dimension that keeps changing so that fewer distinct shapes reach the step")
    return ""


def _check(graph: Graph, ex, env: dict) -> None:
    """verify=True: compare every materialized value with its eager twin, in program order."""
    for n in graph.nodes:  # this call's nodes: their shadows hold this call's eager values
        if n.op in ("input", "scalar") or n.shadow is None:
            continue
        got = env.get(f"v{n.id}")
        if got is None:
            continue
        want = n.shadow
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5, equal_nan=True):
            err = float(np.max(np.abs(got.astype(np.float64) - want))) if got.shape == want.shape else None
            raise VerifyError(
                f"verify: op %{n.id} {n.name}{_site(n)} differs from eager mode "
                f"(shape {tuple(got.shape)}, max abs error {err})"
            )


def compile(fn=None, *, backend: str = "auto", verify: bool = False, fallback: str | None = None,
            max_graphs: int = 64):
    """Compile a training step (or any function of tensors); see docs/compile.md."""
    if fn is None:
        return lambda f: CompiledFunction(f, backend, verify, fallback, max_graphs)
    return CompiledFunction(fn, backend, verify, fallback, max_graphs)
