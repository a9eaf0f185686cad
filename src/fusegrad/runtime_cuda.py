"""runtime_cuda: a plan made executable on a CUDA device, and eager ops on CUDA tensors.

``Executable`` is the device twin of runtime.Executable: the same plan, kernels from
codegen_cuda, device buffers for the values that stay inside the plan allocated once, and a
generated driver that launches kernels in order. Inputs, parameters, gradients and optimizer
state stay on the device; in-place writes are device-to-device copies at the end of the run.

Eager mode on CUDA tensors takes the same road: ``eager(op, args, attrs)`` builds a one-op graph,
plans and renders it like a compiled step, and caches the Executable by the op's signature. So
there is one CUDA code path, and an eager op costs one dict probe plus its kernel launch once
its kernel exists. Reshape-like views are the exception: they are device views that share
memory with their base, as numpy views do on the CPU.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict

import numpy as np

from . import codegen, codegen_cuda, device_array, dtypes, fuse, runtime
from .cache import KernelCache
from .device_array import CudaArray
from .errors import CompileError, op_error
from .trace import Graph, Node, _freeze


def _prelude() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for name in ("kernellib_cuda.py", "kernellib.py"):  # the CUDA library reuses CPU bodies
        with open(os.path.join(here, name), "rb") as f:
            h.update(f.read())
    lib = h.hexdigest()[:16]
    return (
        f"# fusegrad cuda kernel library {lib}\n"
        "import math\nimport numpy as np\nimport numba\nfrom numba import cuda\n"
        "from fusegrad.kernellib_cuda import *  # noqa: F401,F403\n\n"
    )


KERNELS = KernelCache(_prelude())
# Ops whose index tensors may stay on the CPU next to a CUDA tensor, as PyTorch allows: the
# position of the first index argument (the driver uploads a CPU index array on each call).
INDEX_ARGS = {"getitem": 1, "index_grad": 1, "index_put": 2}
_SEEN: set = set()  # kernel names launched in this process (compile accounting)


def graph_device(graph: Graph, arrays: list) -> str:
    """ "cuda" if the graph's tensors are on the device, "cpu" if on the host; a graph that mixes
    them raises the RuntimeError eager mode gives, naming the first op that mixes devices."""
    dev: dict[int, str] = {}
    for n in graph.nodes:
        if n.op == "input":
            dev[n.id] = "cuda" if type(arrays[n.attrs["k"]]) is CudaArray else "cpu"
        elif n.op != "scalar":
            ins = n.ins[: INDEX_ARGS.get(n.name, len(n.ins))]
            seen = {dev[i.id] for i in ins if i.id in dev}
            if len(seen) > 1:
                site = f"{os.path.basename(n.site[0])}:{n.site[1]}" if n.site else "<unknown>"
                raise RuntimeError(mixed_devices_message(n.name) + f" (at {site})")
            dev[n.id] = seen.pop() if seen else "cpu"
    return "cuda" if "cuda" in dev.values() else "cpu"


def mixed_devices_message(op: str) -> str:
    return (
        f"{op}: Expected all tensors to be on the same device, but found at least two devices, "
        "cuda:0 and cpu! Move them with .cuda() / .to('cuda') or .cpu() first"
    )


class Executable:
    """One plan on the device: kernels bound, device buffers allocated once, a driver."""

    def __init__(self, plan: fuse.Plan, stats, verify: bool = False):
        self.plan = plan
        self.graph = plan.graph
        self.stats = stats
        self.verify = verify
        sources = {}
        for s in plan.steps:
            src = None
            if s.kind == "loop":
                src = codegen_cuda.loop_source(s)
            elif s.kind == "update":
                src = codegen_cuda.update_source(s)
            elif s.kind == "extern":
                src = codegen_cuda.extern_source(s.nodes[0])
            else:
                raise CompileError(
                    f"the CUDA renderer does not know plan step kind {s.kind!r} (step {s.index}: "
                    f"{', '.join(x.name for x in s.nodes)})"
                )
            if src is not None:
                sources[s.index] = src
        names = runtime.load_kernels(self, sources, KERNELS)
        from . import device_array as device

        leaving = codegen.leaving(plan)
        self.layout, self.B = {}, []
        for s in plan.steps:
            for n in s.outputs:
                if n.id not in leaving and s.index in self.kernels:
                    self.layout[n.id] = len(self.B)
                    self.B.append(device.empty(n.shape, n.dtype.np).a)
        runtime.build_driver(self, *codegen_cuda.driver_source(plan, names, self.layout),
                             _FirstLaunch, verify)

    def run(self, arrays: list, scalars: list):
        if self.first:
            out = runtime.first_run(self, arrays, scalars)
        else:
            out = self.fn(arrays, scalars, self.B)
        if self.verify:  # compiled.py compares host copies of every value with eager mode
            env, out = out
            host = {
                k: v.copy_to_host()
                for k, v in env.items()
                if k.startswith("v") and hasattr(v, "copy_to_host")
            }
            return host, out
        return out


class _FirstLaunch:
    """A kernel on its plan's first run: compile accounting and clear errors."""

    def __init__(self, ex: Executable, disp, name, path, step):
        self.ex, self.disp, self.name, self.path, self.step = ex, disp, name, path, step

    def __getitem__(self, config):
        launch = self.disp[config]

        def call(*args):
            try:
                launch(*args)
            except Exception as e:
                if "numba" not in type(e).__module__:
                    raise
                raise runtime.compile_error("CUDA kernel", self.name, self.path, self.step, e) from None
            hits = getattr(getattr(self.disp, "stats", None), "cache_hits", None)
            if self.name in _SEEN or (hits and sum(hits.values())):
                self.ex.stats.kernel_hits += 1
            else:
                self.ex.stats.kernels_compiled += 1
            _SEEN.add(self.name)

        return call


# --------------------------------------------------------------------------- eager mode
class EagerStats:
    """Counters of the eager CUDA path (one-op graphs), for tests and debugging."""

    def __init__(self):
        self.ops = self.graphs_compiled = self.kernels_compiled = self.kernel_hits = 0
        self.compile_seconds = 0.0


EAGER_STATS = EagerStats()
_EAGER: OrderedDict = OrderedDict()  # signature -> Executable of a one-op graph (LRU)
EAGER_MAX = 2048


def mask_positions(args: tuple, attrs: dict, first: int) -> tuple[tuple, dict]:
    """x[mask] on CUDA: the mask's nonzero positions as int64 index tensors, as the tracer does
    in compiled mode. The result's shape depends on the mask's values, so this reads them: one
    download of the mask and one upload of its positions (a documented host round trip)."""
    from .dtypes import bool_
    from .tensor import _wrap

    tensors = args[first:]
    if not any(t.dtype is bool_ for t in tensors):
        return args, attrs
    static, out, it = [], [], iter(tensors)
    for i in attrs["index"]:
        t = next(it) if i == "T" else None
        if t is None or t.dtype is not bool_:
            static.append(i)
            out += [t] if t is not None else []
            continue
        for pos in np.nonzero(np.asarray(t._s.v)):
            static.append("T")
            out.append(_wrap(device_array.upload(pos.astype(np.int64))))
    return tuple(args[:first]) + tuple(out), dict(attrs, index=tuple(static))


def eager(op, args: tuple, attrs: dict):
    """Run one op on CUDA tensors (returns the result's CudaArray) through a cached one-op plan.

    Raises the mixed-device RuntimeError if a tensor argument lives on the CPU."""
    from .tensor import Tensor

    EAGER_STATS.ops += 1
    if op.name in INDEX_ARGS:
        args, attrs = mask_positions(args, attrs, INDEX_ARGS[op.name])
    nodes, ins, keys, arrays, scalars = [], [], [], [], []
    for pos, a in enumerate(args):
        if isinstance(a, Tensor):
            v = a._s.v
            if type(v) is not CudaArray and pos < INDEX_ARGS.get(op.name, len(args)):
                raise op_error(op.name, mixed_devices_message(op.name).split(": ", 1)[1])
            n = Node(
                "input",
                (),
                {"k": len(arrays)},
                v.shape,
                dtypes.from_numpy_dtype(v.dtype),
                len(nodes),
                None,
            )
            arrays.append(v)
            keys.append(("input", v.shape, n.dtype.name, type(v) is CudaArray))
        else:
            value = a.item() if isinstance(a, np.generic) else a
            n = Node(
                "scalar",
                (),
                {"k": len(scalars), "type": type(value).__name__},
                (),
                None,
                len(nodes),
                None,
            )
            n.shadow = value
            scalars.append(value)
            keys.append(("scalar", n.attrs["type"]))
        nodes.append(n)
        ins.append(n)
    infer_args = tuple(n if n.op != "scalar" else n.shadow for n in ins)
    shape, dtype = op.infer(infer_args, attrs)
    shape = tuple(shape)
    if op.name in codegen_cuda.VIEW_RESHAPES:  # a view sharing memory, as numpy's reshape is
        return arrays[0].reshape(shape)
    out = Node(op, tuple(ins), attrs, shape, dtype, len(nodes), None)
    key = (op.name, tuple(keys), _freeze(attrs), shape, dtype.name)
    ex = _EAGER.get(key)
    if ex is None:
        t0 = time.perf_counter()
        graph = Graph(nodes + [out], [] if op.kind == "update" else [out.id], [], key)
        ex = Executable(fuse.plan(graph, cpu=False), EAGER_STATS)
        EAGER_STATS.graphs_compiled += 1
        EAGER_STATS.compile_seconds += time.perf_counter() - t0
        _EAGER[key] = ex
        if len(_EAGER) > EAGER_MAX:
            _EAGER.popitem(last=False)
    outs = ex.run(arrays, scalars)
    return outs[0] if outs else None  # an update op wrote its tensors in place
