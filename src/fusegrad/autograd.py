"""autograd: the tape and the reverse-mode engine, shared by eager and traced execution.

A Node is what PyTorch calls a grad_fn: it remembers the op, its arguments (the saved tensors),
its static attributes and the edges to the producers of its inputs, captured when it was
recorded. ``backward`` walks nodes in reverse topological order and calls each op's VJP rule,
which is written in Tensor ops: in eager mode those compute now, inside ``fusegrad.compile``
they are recorded, so the backward graph is traced by this same code.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from .errors import user_line

_state = threading.local()
GRAD = [True]  # grad mode; a list so the hot path reads GRAD[0] without a function call


def is_grad_enabled() -> bool:
    return GRAD[0]


class _GradMode:
    """Base of no_grad / enable_grad: a context manager and a decorator, as in PyTorch."""

    mode = True

    def __enter__(self):
        self.prev = GRAD[0]
        GRAD[0] = self.mode

    def __exit__(self, *exc):
        GRAD[0] = self.prev

    def __call__(self, fn):
        def wrapped(*a, **k):
            with self.__class__():
                return fn(*a, **k)

        wrapped.__name__ = getattr(fn, "__name__", "wrapped")
        wrapped.__doc__ = getattr(fn, "__doc__", None)
        return wrapped


class no_grad(_GradMode):
    mode = False


class enable_grad(_GradMode):
    mode = True


class set_grad_enabled(_GradMode):
    def __init__(self, mode: bool = True):
        self.mode = mode
        self.prev = GRAD[0]
        GRAD[0] = mode  # like PyTorch, also works as a plain function call

    def __enter__(self):
        pass


class AccumulateGrad:
    """The node PyTorch shows for a leaf in next_functions."""

    __slots__ = ("variable",)

    def __init__(self, variable):
        self.variable = variable

    def name(self) -> str:
        return "AccumulateGrad"

    def __repr__(self) -> str:
        return "<AccumulateGrad object>"

    next_functions = ()


class Node:
    """grad_fn: one recorded op application with its saved inputs."""

    __slots__ = ("op", "args", "attrs", "out", "edges", "needs", "versions", "retain", "__weakref__")

    def __init__(self, op, args: tuple, attrs: dict, edges: tuple, needs: tuple):
        self.op = op
        self.args = args
        self.attrs = attrs
        self.out = None
        self.edges = edges  # per arg: producer Node, leaf Tensor, or None
        self.needs = needs
        self.versions = None
        self.retain = None  # weakref to the output tensor if it called retain_grad()

    def name(self) -> str:
        return self.op.node_name(self.attrs) or f"{self.op.name.capitalize()}Backward0"

    def __repr__(self) -> str:
        return f"<{self.name()} object at {hex(id(self))}>"

    @property
    def next_functions(self) -> tuple:
        out = []
        for e in self.edges:
            if e is None:
                out.append((None, 0))
            elif isinstance(e, Node):
                out.append((e, 0))
            else:
                out.append((AccumulateGrad(e), 0))
        return tuple(out)


def _topo(roots: list) -> list:
    """Nodes reachable from roots, each after every node that feeds a gradient into it."""
    order, seen = [], set()
    for root in roots:
        if not isinstance(root, Node) or id(root) in seen:
            continue
        stack = [(root, iter(root.edges))]
        seen.add(id(root))
        while stack:
            node, it = stack[-1]
            for e in it:
                if isinstance(e, Node) and id(e) not in seen:
                    seen.add(id(e))
                    stack.append((e, iter(e.edges)))
                    break
            else:
                stack.pop()
                order.append(node)
    order.reverse()
    return order


def _sum_to(g, shape: tuple):
    """Reduce a broadcast gradient back to an input's shape."""
    if g.shape == shape:
        return g
    lead = len(g.shape) - len(shape)
    dims = tuple(range(lead)) + tuple(
        i + lead for i, s in enumerate(shape) if s == 1 and g.shape[i + lead] != 1
    )
    if dims:
        g = g.sum(dim=dims, keepdim=True)
    return g.reshape(shape) if g.shape != shape else g


def run_backward(
    tensors: Sequence,
    grad_tensors: Sequence,
    retain_graph: bool,
    create_graph: bool,
    inputs: Sequence | None = None,
    accumulate: bool = True,
):
    """The engine behind Tensor.backward and autograd.grad.

    With accumulate=False, returns the gradients of ``inputs`` instead of writing ``.grad``.
    """
    from .tensor import tracer  # autograd sits below tensor; only the engine needs it

    tr = tracer()
    memo = None
    if tr is not None and not tr.verify and not create_graph and inputs is None and accumulate:
        memo = tr.backward_start(tensors, grad_tensors, retain_graph)
        if memo is None:  # replayed: this call's graph and autograd structure were seen before
            return None
    grads: dict[int, object] = {}
    roots = []
    leaf_grads: dict[int, object] = {}
    input_ids = None if inputs is None else {id(t) for t in inputs}
    handed = set()  # stores of gradients already stored in some .grad (never alias two)

    def deliver(edge, g):
        if isinstance(edge, Node):
            k = id(edge)
            grads[k] = g if k not in grads else grads[k] + g
        elif edge is not None:  # leaf tensor
            if input_ids is not None and id(edge) not in input_ids:
                return
            if not accumulate:
                k = id(edge)
                leaf_grads[k] = g if k not in leaf_grads else leaf_grads[k] + g
                return
            _accumulate_leaf(edge, g, handed, create_graph)

    prev = GRAD[0]
    GRAD[0] = create_graph
    try:
        for t, g in zip(tensors, grad_tensors):
            if not t.requires_grad:
                raise RuntimeError(
                    "element 0 of tensors does not require grad and does not have a grad_fn"
                    f" (at {user_line()})"
                )
            handed.add(id(g._s))
            if t.grad_fn is None:
                deliver(t, g)
            else:
                roots.append(t.grad_fn)
                deliver(t.grad_fn, g)
        order = _topo(roots)
        for node in order:
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node.args is None:
                raise RuntimeError(
                    "Trying to backward through the graph a second time (or directly access "
                    "saved tensors after they have already been freed). Saved intermediate "
                    "values of the graph are freed when you call .backward() or "
                    "autograd.grad(). Specify retain_graph=True if you need to backward through "
                    f"the graph a second time. (node {node.name()}, at {user_line()})"
                )
            if node.retain is not None:
                t = node.retain()
                if t is not None:
                    t.grad = _retained(t.grad, g, handed)
            if node.versions is not None or node.out is not None:
                _check_versions(node)
            if create_graph and node.out is not None:
                gs = _vjp_through_out(node, g)
            else:
                gs = node.op.vjp(node, g)
            for arg, edge, gi in zip(node.args, node.edges, gs):
                if gi is None or edge is None:
                    continue
                if gi._s.v.shape != arg._s.v.shape:  # raw shapes: no Size objects per edge
                    gi = _sum_to(gi, arg.shape)
                if gi.dtype is not arg.dtype:
                    gi = gi.to(arg.dtype)
                if isinstance(edge, Node):  # deliver(edge, gi), inlined for the usual edge
                    k = id(edge)
                    acc = grads.get(k)
                    grads[k] = gi if acc is None else acc + gi
                else:
                    deliver(edge, gi)
            if not retain_graph:
                node.args = None
                node.out = None
    finally:
        GRAD[0] = prev
    if memo is not None:
        tr.backward_end(memo, tensors)
    if not accumulate:
        return [leaf_grads.get(id(t)) for t in inputs]
    return None


def structure(made: list) -> tuple:
    """What a traced backward depends on beyond the graph recorded so far: each autograd node
    made while tracing (``made``: (weakref, graph node id) in creation order) with its graph
    node, whether it was freed, retains its grad or has a saved tensor changed in place since,
    and where each edge goes: an earlier node of ``made`` (its position), a leaf (``~`` its
    number in order of first use), nowhere (None), or a node made elsewhere (-1). Returns
    (description, nodes, leaves, position by id).
    """
    pos: dict[int, int] = {}
    leaf_no: dict[int, int] = {}
    nodes, leaves, desc = [], [], []
    for k, (ref, gid) in enumerate(made):
        n = ref()
        nodes.append(n)
        if n is None:
            desc.append(None)
            continue
        pos[id(n)] = k
        codes = [gid, n.args is None, n.retain is None, n.args is None or _stale(n) is None]
        for e in n.edges:
            if e is None:
                codes.append(None)
            elif type(e) is Node:
                codes.append(pos.get(id(e), -1))
            else:
                j = leaf_no.get(id(e))
                if j is None:
                    j = leaf_no[id(e)] = len(leaves)
                    leaves.append(e)
                codes.append(~j)
        desc.append(tuple(codes))
    return tuple(desc), nodes, leaves, pos


def _vjp_through_out(node: Node, g) -> tuple:
    """The VJP of an op that reads its own output (tanh, exp, sqrt, ...), differentiable
    through that output: the saved output is linked to its producer while the VJP records
    (only then, so the node and its saved output do not keep each other alive)."""
    out = node.out
    out.requires_grad, out.grad_fn = True, node
    try:
        return node.op.vjp(node, g)
    finally:
        out.requires_grad, out.grad_fn = False, None


def _retained(old, g, handed: set):
    """A retained non-leaf's new .grad: g itself the first time, unless g's memory is (or will
    be) some leaf's .grad, which accumulates in place later; a copy then."""
    g = g.detach()
    if old is not None:
        return old + g
    if id(g._s) in handed:
        return g.clone()
    handed.add(id(g._s))
    return g


def _accumulate_leaf(leaf, g, handed: set, create_graph: bool):
    """leaf.grad += g, as AccumulateGrad does; a fresh .grad never aliases another tensor."""
    if not create_graph:
        g = g.detach()
    if leaf.grad is None:
        if id(g._s) in handed or g._is_view():
            g = g.clone()
        handed.add(id(g._s))
        leaf.grad = g
    elif create_graph:
        leaf.grad = leaf.grad + g
    else:
        leaf.grad._inplace_update(leaf.grad + g, "AccumulateGrad")


def zero_grads(params, set_to_none: bool) -> None:
    """What Module.zero_grad and Optimizer.zero_grad do to each parameter: drop its .grad,
    or (set_to_none=False) zero it in place, detached from any graph first."""
    for p in params:
        if p.grad is None:
            continue
        if set_to_none:
            p.grad = None
        else:
            if p.grad.grad_fn is not None:
                p.grad = p.grad.detach()
            with no_grad():
                p.grad.zero_()


def _check_versions(node: Node):
    """PyTorch's saved-tensor check: an input or output that the VJP reads was changed in place
    after the op ran, so its gradient would be computed from the wrong values."""
    stale = _stale(node)
    if stale is not None:
        raise _version_error(node, *stale)


def _stale(node: Node) -> tuple | None:
    """(tensor, saved version, which) of a saved tensor changed in place since, or None."""
    if node.versions is not None:
        for a, v in zip(node.args, node.versions):
            if v is not None and a._s.version != v:
                return a, v, "an input"
    if node.out is not None and node.out._s.version != 0:  # a saved output starts at version 0
        return node.out, 0, "an output"
    return None


def _version_error(node: Node, a, v: int, what: str) -> RuntimeError:
    return RuntimeError(
        "one of the variables needed for gradient computation has been modified by an "
        f"inplace operation: [{a.dtype} {list(a.shape)}], which is {what} of "
        f"{node.name()}, is at version {a._s.version}; expected version {v} instead "
        f"(at {user_line()})"
    )


def grad(
    outputs,
    inputs,
    grad_outputs=None,
    retain_graph: bool | None = None,
    create_graph: bool = False,
    allow_unused: bool = False,
):
    """torch.autograd.grad: gradients of outputs w.r.t. inputs, without touching .grad."""
    from .tensor import Tensor, _default_grads

    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    single = isinstance(inputs, Tensor)
    inputs = [inputs] if single else list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs]
    gos = _default_grads(outputs, grad_outputs)
    if retain_graph is None:
        retain_graph = create_graph
    # inputs that are not leaves: gradients stop there, so treat their grad_fn as a sink
    res = _grad_with_nonleaf(outputs, gos, inputs, retain_graph, create_graph)
    for t, r in zip(inputs, res):
        if r is None and not allow_unused:
            raise RuntimeError(
                "One of the differentiated Tensors appears to not have been used in the graph. "
                f"Set allow_unused=True if this is the desired behavior. (at {user_line()})"
            )
    return tuple(res)


def _grad_with_nonleaf(outputs, gos, inputs, retain_graph, create_graph):
    """autograd.grad for any inputs: non-leaf inputs get their grad via a temporary retain."""
    import weakref

    captured = {}
    saved = []
    for t in inputs:
        if t.grad_fn is not None:
            saved.append((t.grad_fn, t.grad_fn.retain))

            class _Sink:
                __slots__ = ("grad", "__weakref__")

                def __init__(self):
                    self.grad = None

            sink = _Sink()
            captured[id(t)] = sink
            t.grad_fn.retain = weakref.ref(sink)
    try:
        leaf_res = run_backward(
            outputs, gos, retain_graph, create_graph,
            inputs=[t for t in inputs if t.grad_fn is None], accumulate=False,
        )
    finally:
        for node, r in saved:
            node.retain = r
    it = iter(leaf_res)
    return [next(it) if t.grad_fn is None else captured[id(t)].grad for t in inputs]
