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

import math
import os
import weakref

import numpy as np

from . import autograd, ops, tensor as T
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
        self.replays: dict[int, list] = {}  # node position -> Replays of a backward begun there

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


class Replay:
    """What one traced backward did, for a later call to do again without the engine.

    A backward records the same nodes, scalars and gradient writes whenever the graph recorded
    before it, the autograd structure (``autograd.structure``), the state of the gradients it
    reads and the forward's scalar values (VJP rules compute scalars from them) are the same:
    ``context`` and ``pre`` hold those; the rest is what to do again.
    """

    __slots__ = ("context", "pre", "zeros", "end", "sources", "special", "new_grads", "writes", "freed")

    def __init__(self, context, pre: list, end: int, sources: list, special: list, new_grads: list,
                 writes: list, freed: tuple):
        self.context = context
        self.pre = pre  # the scalar values recorded before the backward
        self.zeros = [(k, math.copysign(1.0, v)) for k, v in enumerate(pre) if v == 0 and type(v) is float]
        self.end = end  # the node position after the backward
        self.sources = sources  # per input node: a root's gradient (k >= 0) or a leaf's .grad (~leaf)
        self.special = special  # (position, is input, value) of its input and scalar nodes
        self.new_grads = new_grads  # (leaf, node id, store version) of each fresh .grad
        self.writes = writes  # (leaf, node id, version bump) of each .grad written in place
        self.freed = freed  # positions in Tracer.made of the autograd nodes the backward freed

    def matches(self, context, scalars: list) -> bool:
        return (self.context == context and self.pre == scalars
                and all(math.copysign(1.0, scalars[k]) == s for k, s in self.zeros))


class _Started:
    """The state before an engine-run backward that backward_end compares against."""

    def __init__(self, tracer, context, nodes, leaves, grads):
        self.i = len(tracer.nodes)
        self.context, self.nodes, self.leaves, self.grads = context, nodes, leaves, grads
        self.old = [leaf._grad for leaf in leaves]
        self.values = [g._s.v for g in grads] + [g if g is None else g._s.v for g in self.old]
        self.versions = [g if g is None else g._s.version for g in self.old]
        self.sizes = (len(tracer.scalars), len(tracer.arrays), len(tracer.live), len(tracer.mutated),
                      len(tracer.ran))


class Signature:
    """A graph's key: a tuple whose hash is computed once (tuples recompute theirs per lookup)."""

    __slots__ = ("t", "h")

    def __init__(self, t: tuple):
        self.t = t
        self.h = hash(t)

    def __hash__(self) -> int:
        return self.h

    def __eq__(self, other) -> bool:
        return self is other or (type(other) is Signature and self.h == other.h and self.t == other.t)


class Tracer:
    """Records ops for one compiled call; ``realize`` hands graphs to ``runner(graph, ...)``.

    ``known`` holds the graphs compiled so far (an ordered mapping of signature -> object with
    a ``graph``, most recently used last). While the recording matches one of them node for
    node, ``record`` reuses that graph's nodes: no shape rule runs, no source line is looked up
    and no key is built, so a cache hit costs a few comparisons per op. At the first node that
    differs, the key of the matching prefix is taken from the known graph and recording goes on
    the slow way.
    """

    def __init__(self, runner, verify: bool = False, known=None, hints=()):
        self.runner = runner  # fn(graph, arrays, scalars) -> list of output arrays
        self.verify = verify
        self.known = {} if known is None or verify else known
        self.hints = hints  # the graphs the previous call ran, in order (one per graph break)
        self.ran: list = []  # the graphs this call ran
        self.replayed = 0  # backwards replayed (stats.backward_replays)
        self._reset()

    def _reset(self):
        self.nodes: list[Node] = []
        self.keys: list[tuple] | None = None  # None while following self.exp
        self.arrays: list[np.ndarray] = []
        self.scalars: list = []
        self.by_store: dict[int, Node] = {}
        self.keep: list = []  # stores bound as inputs stay alive while the graph is pending
        self.live: list = []  # weakrefs to stores holding lazy nodes
        self.mutated: dict[int, tuple] = {}  # id(store) -> (store, input node)
        self.views: dict[int, list] = {}  # id(base store) -> [(weakref to view store, op, ...)]
        self.exp = None  # the known graph being followed: what the last call ran at this point
        self.made: list = []  # (weakref, graph node id) of each autograd node made meanwhile
        self.replays: list = []  # (position, Replay) of the backwards recorded meanwhile
        if self.known:
            seg = len(self.ran)
            hint = self.hints[seg] if seg < len(self.hints) else None
            known = hint is not None and hint.key in self.known
            self.exp = hint if known else next(reversed(self.known.values())).graph
        else:
            self.keys = []

    # ---- following a known graph
    def _diverged(self, match) -> Node | None:
        """The followed graph differs here: switch to a known graph with the same prefix whose
        node here matches, or (None) record the slow way from now on."""
        i = len(self.nodes)
        for g in self._siblings(i):
            if i < len(g.nodes) and match(g.nodes[i]):
                self._switch(g)
                return g.nodes[i]
        self.keys = list(self.exp.key.t[0][:i])
        self.exp = None
        return None

    def _siblings(self, i: int):
        """The other known graphs whose first i nodes equal the followed graph's, newest first."""
        prefix = self.exp.key.t[0][:i]
        for other in reversed(self.known.values()):
            g = other.graph
            if g is not self.exp and g.key.t[0][:i] == prefix:
                yield g

    def _switch(self, g: Graph):
        """Follow g from here on: its nodes replace the (equal) ones recorded so far."""
        i = len(self.nodes)
        self.nodes = list(g.nodes[:i])
        self.by_store = {k: g.nodes[n.id] for k, n in self.by_store.items()}
        self.mutated = {k: (s, g.nodes[n.id]) for k, (s, n) in self.mutated.items()}
        self.exp = g

    def _next(self) -> Node | None:
        """The followed graph's node at this position."""
        nodes = self.exp.nodes
        i = len(self.nodes)
        return nodes[i] if i < len(nodes) else None

    # ---- recording
    def _input(self, store) -> Node:
        n = self.by_store.get(id(store))
        if n is None:
            arr = store.v
            dtype = T._NP2FG[arr.dtype]
            cuda = type(arr) is CudaArray
            if self.exp is not None:
                n = self._next()
                if n is None or not _is_input(n, arr.shape, dtype, cuda):
                    n = self._diverged(lambda e: _is_input(e, arr.shape, dtype, cuda))
            if n is None:
                attrs = {"k": len(self.arrays), "cuda": True} if cuda else {"k": len(self.arrays)}
                n = Node("input", (), attrs, arr.shape, dtype, len(self.nodes), None)
                self.keys.append(("input", arr.shape, dtype.name, "cuda") if cuda
                                 else ("input", arr.shape, dtype.name))
            if self.verify:
                n.shadow = np.array(arr, copy=True)
            self.arrays.append(arr)
            self.nodes.append(n)
            self.by_store[id(store)] = n
            self.keep.append(store)
        return n

    def _scalar(self, value) -> Node:
        kind = type(value).__name__
        n = None
        if self.exp is not None:
            n = self._next()
            if n is None or n.op != "scalar" or n.attrs["type"] != kind:
                n = self._diverged(lambda e: e.op == "scalar" and e.attrs["type"] == kind)
        if n is None:
            n = Node("scalar", (), {"k": len(self.scalars), "type": kind}, (), None, len(self.nodes), None)
            self.keys.append(("scalar", kind))
        n.shadow = value
        self.scalars.append(value)
        self.nodes.append(n)
        return n

    def _scalars(self, values) -> list:
        """The scalar nodes of many values (an update's), checked against the followed graph
        in one pass."""
        if self.exp is not None:
            i = len(self.nodes)
            known = self.exp.nodes[i:i + len(values)]
            if len(known) == len(values) and all(
                n.op == "scalar" and n.attrs["type"] == type(v).__name__ for n, v in zip(known, values)
            ):
                for n, v in zip(known, values):
                    n.shadow = v
                self.scalars += values
                self.nodes += known
                return known
        return [self.node_of(v) for v in values]

    def node_of(self, a):
        if isinstance(a, T.Tensor):
            store = a._s
            v = store.v
            if type(v) is Node:
                return v
            n = self.by_store.get(id(store))
            return n if n is not None else self._input(store)
        if isinstance(a, (bool, int, float)):
            return self._scalar(a)
        if isinstance(a, np.number):
            return self._scalar(a.item())
        raise TypeError(f"fusegrad.compile: cannot trace an argument of type {type(a).__name__}")

    def record(self, op, args, attrs):
        node_of = self.node_of
        if len(args) == 1:
            ins = (node_of(args[0]),)
        elif len(args) == 2:
            ins = (node_of(args[0]), node_of(args[1]))
        else:
            ins = tuple([node_of(a) for a in args])
        store = T.Store(self._node(op, ins, attrs))
        ref = weakref.ref(store)
        self.live.append(ref)
        if op.may_alias and op.aliases(attrs):  # an in-place write to the base re-derives the view
            base = args[0]._s  # (ids of dead stores get reused: the entry checks its base)
            self.views.setdefault(id(base), []).append((weakref.ref(base), ref, op, args[1:], attrs))
        return T._wrap_store(store)

    def _node(self, op, ins: tuple, attrs: dict) -> Node:
        """The node of op on ins: the followed graph's, or a new one (shape rule, source line)."""
        n = None
        if self.exp is not None:
            n = self._next()
            if n is None or not _is_op(n, op, ins, attrs):
                n = self._diverged(lambda e: _is_op(e, op, ins, attrs))
        if n is None:
            if self.known:  # a tensor may still hold the equal node of a graph followed earlier
                ins = tuple(self.nodes[i.id] for i in ins)
            infer_args = tuple(i if i.op != "scalar" else i.shadow for i in ins)
            shape, dtype = op.infer(infer_args, attrs)
            shape = tuple(shape)
            n = Node(op, ins, attrs, shape, dtype, len(self.nodes), user_site())
            self.keys.append((op.name, tuple(i.id for i in ins), _freeze(attrs), shape, dtype.name))
            if self.verify:
                n.shadow = _shadow_eval(op, ins, attrs)
        self.nodes.append(n)
        return n

    def record_update(self, op, args, attrs):
        """A multi-tensor in-place update: one node, then one alias node per written tensor."""
        width = len(op.tensors)
        written = op.written(attrs)
        for k in written:
            v = args[k]._s.v
            if type(v) is np.ndarray and not v.flags.c_contiguous:
                raise ValueError(
                    f"the {op.tensors[k % width]} of parameter {k // width} is written "
                    f"in place but has strides {v.strides} (shape {v.shape}); a compiled update "
                    f"needs contiguous tensors: make it contiguous once, outside the compiled step"
                )
        tensors = attrs["n"] * width
        ins = tuple([self.node_of(a) for a in args[:tensors]] + self._scalars(args[tensors:]))
        token = self._node(op, ins, attrs)
        updated = ops.REGISTRY["updated"]
        for k in written:
            store = args[k]._s
            bound = None if type(store.v) is Node else ins[k]  # else written earlier in this loop
            self._write(store, self._node(updated, (token, bound or store.v), _NO_ATTRS), bound)

    def assign(self, store, src_store):
        """An in-place write (optimizer update, grad accumulation) to a store."""
        self._write(store, src_store.v)

    def _write(self, store, node: Node, bound: Node | None = None):
        """store.v = node, noting the write; bound: store's input node, if the caller has it."""
        v = store.v
        if type(v) is Node and v.op not in ("input", "scalar") and v.op.aliases(v.attrs):
            raise RuntimeError(
                f"fusegrad.compile: an in-place write to the result of {v.name} (a view of "
                f"another tensor) is not supported inside a compiled function, because the "
                f"write would not reach the viewed tensor; use clone() first, or write to the "
                f"original tensor (at {user_line()})"
            )
        if type(v) is not Node:
            self.mutated[id(store)] = (store, bound or self._input(store))
        elif id(store) not in self.mutated:
            self.live.append(weakref.ref(store))
        store.v = node
        if id(store) in self.views:
            self._rederive_views(store, node)

    def _rederive_views(self, base, node: Node):
        """Views of a tensor written in place see the write (they share memory in eager)."""
        for base_ref, ref, op, rest, attrs in self.views.get(id(base), ()):
            view = ref()
            if view is not None and base_ref() is base:
                view.v = self._node(op, (node, *[self.node_of(a) for a in rest]), attrs)
                self._rederive_views(view, view.v)

    # ---- backward: replayed when seen before, else run by the engine and remembered
    def backward_start(self, tensors, grads, retain_graph: bool):
        """Replay the backward of ``tensors`` (returns None) or return what backward_end needs
        to remember the backward the engine is about to record."""
        desc, nodes, leaves, pos = autograd.structure(self.made)
        roots = tuple(pos.get(id(t.grad_fn), -1) for t in tensors)
        states = tuple(self._grad_state(g) for g in grads)
        states += tuple(self._grad_state(leaf._grad) for leaf in leaves)
        context = (desc, roots, states, retain_graph)
        if self.exp is not None:
            r = self._find_replay(len(self.nodes), context)
            if r is not None and self._replay(r, grads, nodes, leaves, retain_graph):
                self.replayed += 1
                return None
        return _Started(self, context, nodes, leaves, grads)

    def _grad_state(self, g):
        """What the backward's use of a gradient (a root's, or a leaf's .grad) depends on."""
        if g is None:
            return None
        s = g._s
        if g.grad_fn is not None or id(s) in self.views:
            return _NEVER  # a differentiable or viewed .grad: the engine always runs
        v = s.v
        if type(v) is Node:
            return v.id
        bound = self.by_store.get(id(s))
        return (bound.id if bound is not None else -1, v.shape, v.dtype, type(v))

    def _find_replay(self, i: int, context) -> Replay | None:
        """A Replay of the followed graph (or of another known graph with the same prefix,
        which is then followed) that matches this backward."""
        for r in self.exp.replays.get(i, ()):
            if r.matches(context, self.scalars):
                return r
        for g in self._siblings(i):
            for r in g.replays.get(i, ()):
                if r.matches(context, self.scalars):
                    self._switch(g)
                    return r
        return None

    def _replay(self, r: Replay, grads, nodes, leaves, retain_graph: bool) -> bool:
        stores = [grads[k]._s if k >= 0 else leaves[~k]._grad._s for k in r.sources]
        if len({id(s) for s in stores}) != len(stores):
            return False  # one tensor is two of the gradients now: the engine binds it once
        exp = self.exp
        known, at = exp.nodes, len(self.nodes)
        stores = iter(stores)
        for k, is_input, v in r.special:
            self.nodes += known[at:k]
            at = k + 1
            if is_input:
                self._input(next(stores))
            else:
                known[k].shadow = v
                self.scalars.append(v)
                self.nodes.append(known[k])
        self.nodes += known[at:r.end]
        for k, nid, version in r.new_grads:
            s = T.Store(exp.nodes[nid])
            s.version = version
            self.live.append(weakref.ref(s))
            leaves[k]._grad = T._wrap_store(s)
        for k, nid, bump in r.writes:
            s = leaves[k]._grad._s
            self._write(s, exp.nodes[nid], self.by_store.get(id(s)))
            s.version += bump
        if not retain_graph:
            for k in r.freed:
                n = nodes[k]
                n.args = n.out = None
        return True

    def backward_end(self, st: _Started, tensors) -> None:
        """Remember the backward the engine just recorded, when a later call can replay it."""
        desc, roots, states, _ = st.context
        s0, a0, live0, m0, ran0 = st.sizes
        if len(self.ran) != ran0 or _NEVER in states or -1 in roots:
            return  # it ran a graph, reads a .grad that is a view, or starts at a leaf
        if any(d is not None and not d[2] for d in desc):
            return  # a node retains its grad: the engine writes it
        made = {id(n) for n in st.nodes if n is not None}
        if any(id(n) not in made for n in autograd._topo([t.grad_fn for t in tensors])):
            return  # it went through autograd nodes made before this graph began
        sources = []
        for arr in self.arrays[a0:]:
            hits = [k if k < len(st.grads) else ~(k - len(st.grads))
                    for k, v in enumerate(st.values) if v is arr]
            if len(hits) != 1:
                return  # an input that is not one of the gradients it was given or wrote
            sources.append(hits[0])
        first = {}  # store id -> first position in live: the order of the graph's outputs
        for k, ref in enumerate(self.live[live0:]):
            first.setdefault(id(ref()), k)
        new_grads, writes = [], {}
        for j, (leaf, old, version) in enumerate(zip(st.leaves, st.old, st.versions)):
            g = leaf._grad
            if g is None and old is None:
                continue
            s = g._s
            if type(s.v) is not Node or (old is not None and g is not old):
                return
            if old is None:
                if id(s) not in first:
                    return
                new_grads.append((first[id(s)], j, s.v.id, s.version))
            else:
                writes[id(s)] = (j, s.v.id, s.version - version)
        in_order = [writes.pop(k) for k in list(self.mutated)[m0:] if k in writes]
        freed = tuple(k for k, (n, d) in enumerate(zip(st.nodes, desc))
                      if n is not None and n.args is None and not d[1])
        values = iter(self.scalars[s0:])
        special = [(k, n.op == "input", None if n.op == "input" else next(values))
                   for k, n in enumerate(self.nodes[st.i:], st.i) if n.op in ("input", "scalar")]
        self.replays.append((st.i, Replay(
            st.context, list(self.scalars[:s0]), len(self.nodes), sources, special,
            [t[1:] for t in sorted(new_grads)], in_order + list(writes.values()), freed,
        )))

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
            if type(v) is Node and v.id != inp.id:
                mutations.append((inp.id, v.id))
        exp = self.exp
        if exp is not None and len(self.nodes) == len(exp.nodes) and outs == exp.outputs \
                and mutations == exp.mutations:
            graph = exp
        else:
            keys = self.keys if exp is None else exp.key.t[0][:len(self.nodes)]
            key = Signature((tuple(keys), tuple(outs), tuple(mutations)))
            graph = Graph(self.nodes, outs, mutations, key)
        for i, r in self.replays:
            kept = graph.replays.setdefault(i, [])
            kept.insert(0, r)
            del kept[4:]
        arrays, scalars, mutated = self.arrays, self.scalars, list(self.mutated.values())
        self.ran.append(graph)
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


_NO_ATTRS: dict = {}
_NEVER = object()  # the state of a gradient whose backward is never remembered


def _is_input(e: Node, shape: tuple, dtype, cuda: bool) -> bool:
    return e.op == "input" and e.shape == shape and e.dtype is dtype and ("cuda" in e.attrs) == cuda


def _is_op(e: Node, op, ins: tuple, attrs: dict) -> bool:
    """Whether known node e records op on the same inputs (compared by position) and attrs."""
    if e.op is not op or (e.attrs is not attrs and e.attrs != attrs):
        return False
    if e.ins == ins:  # the same Node objects: the usual case when following one graph
        return True
    return len(e.ins) == len(ins) and all(a.id == b.id for a, b in zip(e.ins, ins))


def _freeze(attrs: dict) -> tuple:
    return tuple(sorted(attrs.items())) if attrs else ()


def _shadow_eval(op, ins, attrs):
    """The eager value of a node from its inputs' eager values (verify mode)."""
    args = tuple(T._wrap(i.shadow) if i.op != "scalar" else i.shadow for i in ins)
    return T._eager(op, args, attrs)._s.v
