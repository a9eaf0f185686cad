"""trace: recording Tensor ops as a graph of lazy nodes instead of computing them.

While a compiled function runs, ``tensor.TRACER`` points at a Tracer. Every op (forward ops,
the VJP ops that backward runs, the optimizer's in-place updates) lands in ``Tracer.record``,
which computes only the result's shape and dtype and appends a Node. Realized tensors the
function touches (parameters, inputs, optimizer state) become ``input`` nodes; Python numbers
become ``scalar`` nodes whose values are runtime arguments. The signature of the graph is the
tuple of per-node keys, built while recording, so a lookup costs one dict probe.

``realize`` runs the pending graph: the outputs are the lazy tensors still alive (a weakref
test: what the user can still see) plus every realized tensor that was written in place.
"""

from __future__ import annotations

import os
import weakref

import numpy as np

from . import tensor as T
from .device_array import CudaArray
from .errors import user_line, user_site


class Node:
    """One IR value: an op application, a bound input array, or a runtime scalar."""

    __slots__ = ("op", "ins", "attrs", "shape", "dtype", "id", "site", "shadow")

    def __init__(self, op, ins, attrs, shape, dtype, id, site):
        self.op = op  # an ops.Op, or the strings "input" / "scalar"
        self.ins = ins
        self.attrs = attrs
        self.shape = shape
        self.dtype = dtype
        self.id = id
        self.site = site
        self.shadow = None  # eager value when verifying

    @property
    def name(self) -> str:
        return self.op if isinstance(self.op, str) else self.op.name

    def __repr__(self) -> str:
        return f"%{self.id}"


class Graph:
    """A recorded graph: nodes in program order, which of them leave, which inputs are written."""

    def __init__(self, nodes, outputs, mutations, key):
        self.nodes = nodes
        self.outputs = outputs  # node ids the caller gets arrays for
        self.mutations = mutations  # (input node id, value node id): write value into input
        self.key = key

    def format(self, title: str = "graph") -> str:
        """The graph as readable IR, one node a line, with the user's source lines."""
        lines = [f"{title}  ({len(self.nodes)} nodes)"]
        out_ids = set(self.outputs)
        for n in self.nodes:
            ty = f"{n.dtype.name}{list(n.shape)}" if n.dtype is not None else "scalar"
            if n.op == "input":
                rhs = f"input {n.attrs['k']}"
            elif n.op == "scalar":
                rhs = f"scalar ${n.attrs['k']} ({n.attrs['type']})"
            else:
                attrs = " ".join(f"{k}={v}" for k, v in n.attrs.items())
                rhs = f"{n.name} {' '.join(map(repr, n.ins))} {attrs}".rstrip()
            site = f"  # {os.path.basename(n.site[0])}:{n.site[1]}" if n.site and n.site[1] else ""
            mark = " -> out" if n.id in out_ids else ""
            lines.append(f"  %{n.id}:{ty} = {rhs}{mark}{site}")
        for dst, src in self.mutations:
            lines.append(f"  write! %{dst} <- %{src}")
        return "\n".join(lines)


class Tracer:
    """Records ops for one compiled call; ``realize`` hands graphs to ``runner(graph, ...)``."""

    def __init__(self, runner, verify: bool = False):
        self.runner = runner  # fn(graph, arrays, scalars) -> list of output arrays
        self.verify = verify
        self._reset()

    def _reset(self):
        self.nodes: list[Node] = []
        self.keys: list[tuple] = []
        self.arrays: list[np.ndarray] = []
        self.scalars: list = []
        self.by_store: dict[int, Node] = {}
        self.keep: list = []  # stores bound as inputs stay alive while the graph is pending
        self.live: list = []  # weakrefs to stores holding lazy nodes
        self.mutated: dict[int, tuple] = {}  # id(store) -> (store, input node)

    # ---- recording
    def _input(self, store) -> Node:
        n = self.by_store.get(id(store))
        if n is None:
            arr = store.v
            n = Node("input", (), {"k": len(self.arrays)}, arr.shape, T._NP2FG[arr.dtype],
                     len(self.nodes), None)
            if self.verify:
                n.shadow = np.array(arr, copy=True)
            self.arrays.append(arr)
            self.nodes.append(n)
            self.keys.append(("input", arr.shape, n.dtype.name) if type(arr) is np.ndarray
                             else ("input", arr.shape, n.dtype.name, "cuda"))
            self.by_store[id(store)] = n
            self.keep.append(store)
        return n

    def _scalar(self, value) -> Node:
        n = Node("scalar", (), {"k": len(self.scalars), "type": type(value).__name__}, (), None,
                 len(self.nodes), None)
        n.shadow = value
        self.scalars.append(value)
        self.nodes.append(n)
        self.keys.append(("scalar", n.attrs["type"]))
        return n

    def node_of(self, a):
        if isinstance(a, T.Tensor):
            v = a._s.v
            return self._input(a._s) if type(v) is np.ndarray or type(v) is CudaArray else v
        if isinstance(a, (bool, int, float, np.number)):
            return self._scalar(a.item() if isinstance(a, np.number) else a)
        raise TypeError(f"fusegrad.compile: cannot trace an argument of type {type(a).__name__}")

    def record(self, op, args, attrs):
        ins = tuple(self.node_of(a) for a in args)
        infer_args = tuple(n if n.op != "scalar" else n.shadow for n in ins)
        shape, dtype = op.infer(infer_args, attrs)
        shape = tuple(shape)
        n = Node(op, ins, attrs, shape, dtype, len(self.nodes), user_site())
        self.nodes.append(n)
        self.keys.append((op.name, tuple(i.id for i in ins), _freeze(attrs), shape, dtype.name))
        if self.verify:
            n.shadow = _shadow_eval(op, ins, attrs)
        store = T.Store(n)
        self.live.append(weakref.ref(store))
        return T._wrap_store(store)

    def assign(self, store, src_store):
        """An in-place write (optimizer update, grad accumulation) to a store."""
        v = store.v
        if type(v) is Node and v.op not in ("input", "scalar") and v.op.kind == "view" and not (
            v.op.name == "getitem" and "T" in v.attrs["index"]
        ):
            raise RuntimeError(
                f"fusegrad.compile: an in-place write to the result of {v.name} (a view of "
                f"another tensor) is not supported inside a compiled function, because the "
                f"write would not reach the viewed tensor; use clone() first, or write to the "
                f"original tensor (at {user_line()})"
            )
        if type(v) is np.ndarray or type(v) is CudaArray:
            node = self._input(store)
            self.mutated[id(store)] = (store, node)
        elif id(store) not in self.mutated:
            self.live.append(weakref.ref(store))
        store.v = src_store.v

    # ---- running
    def pending(self) -> bool:
        return any(n.op not in ("input", "scalar") for n in self.nodes)

    def realize(self):
        """Run everything recorded so far and give every live lazy tensor its array."""
        if not self.pending():
            self._reset()
            return
        outs, seen = [], set()
        stores = []
        for ref in self.live:
            s = ref()
            if s is not None and type(s.v) is Node and id(s) not in seen and id(s) not in self.mutated:
                seen.add(id(s))
                stores.append(s)
                outs.append(s.v.id)
        mutations = []
        for store, inp in self.mutated.values():
            v = store.v
            if type(v) is Node and v is not inp:
                mutations.append((inp.id, v.id))
        key = (tuple(self.keys), tuple(outs), tuple(mutations))
        graph = Graph(self.nodes, outs, mutations, key)
        arrays, scalars, mutated = self.arrays, self.scalars, list(self.mutated.values())
        self._reset()  # tracing continues on a fresh graph, even if running fails
        for store, inp in mutated:
            store.v = arrays[inp.attrs["k"]]
        try:
            results = self.runner(graph, arrays, scalars)
        except BaseException:
            for s in stores:  # leave no lazy value behind a failed run
                s.v = np.full(s.v.shape, np.nan, s.v.dtype.np)
            raise
        for s, r in zip(stores, results):
            s.v = r


def _freeze(attrs: dict) -> tuple:
    return tuple(sorted(attrs.items())) if attrs else ()


def _shadow_eval(op, ins, attrs):
    """The eager value of a node from its inputs' eager values (verify mode)."""
    args = tuple(T._wrap(i.shadow) if i.op != "scalar" else i.shadow for i in ins)
    return T._eager(op, args, attrs)._s.v
