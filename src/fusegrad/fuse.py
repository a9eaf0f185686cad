"""fuse: the fusion planner, graph -> plan of steps.

A step is a fused loop (elementwise ops over one iteration shape, plus reductions of values
computed in that loop), an update (an optimizer step over a parameter group: one kernel that
writes the parameters and their state in place) or an extern call (a BLAS matmul, a view, a
gather). The rules:

- Linear is split into a BLAS matmul (x @ w.T) and a bias add, so the add and whatever
  activation follows run in the next fused loop (the matmul's "epilogue").
- An elementwise op joins the loop of one of its producers when it has the loop's shape and all
  its other inputs are ready before that loop starts. One with no producer loop (it reads only
  inputs, scalars and earlier extern results) joins the latest loop of its shape. Otherwise it
  opens a new loop.
- A reduction joins the loop that computes its input (MSE's (pred - y)**2 then sum is one
  pass). All reductions in one loop reduce over the same dims, except that on the CPU a 2-D
  loop may mix sums and means over rows, columns and everything (layer norm's backward: the
  loss's mean, gamma's and beta's column sums and a row sum in one pass over x). A value
  reduced in a loop cannot be consumed in that same loop (layer norm's x - mean is a second
  pass).
- On the CPU, a one-parameter update runs in the loop that computes its gradient when no
  later step reads what it writes (_fuse_updates), and consecutive 2-D loops over the same
  rows form a row group, run row by row in one kernel, when each reads only row values of
  the earlier ones (_row_groups).
- Values nobody reads are never computed (dead-code elimination from the outputs).

Every boundary records why it exists, for ``FUSEGRAD_DEBUG=2`` and ``explain()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import ops
from .trace import Graph, Node

LOOP_REDUCTIONS = {"sum", "mean", "max", "min", "all", "any"}
MIXED_DIMS = {(0, 1), (0,), (1,)}  # float sums/means a 2-D CPU loop can combine
SCALAR_VIEWS = {"reshape", "unsqueeze", "squeeze"}


@dataclass
class Step:
    kind: str  # "loop" | "extern" | "update"
    index: int
    shape: tuple = ()
    nodes: list = field(default_factory=list)  # nodes computed here, in order
    reduce_dims: tuple | None = None  # dims reduced by this loop's reductions
    reductions: list = field(default_factory=list)
    inputs: list = field(default_factory=list)  # nodes read from outside (arrays and scalars)
    outputs: list = field(default_factory=list)  # nodes materialized for later steps/caller
    why: str = ""  # why this step does not join the previous one
    phases: list = field(default_factory=list)  # a row group's loops, run row by row

    def ids(self) -> set:
        return {n.id for n in self.nodes}

    @property
    def by_rows(self) -> bool:
        """Rendered one row at a time (codegen.rows_source): a row group, or one loop whose
        reductions reduce over different dims."""
        return bool(self.phases) or any(red_dims(n) != self.reduce_dims for n in self.reductions)


def red_dims(n: Node) -> tuple:
    """The dims a reduction node reduces (``dims=None`` means all)."""
    d = n.attrs["dims"]
    return tuple(d) if d is not None else tuple(range(len(n.ins[0].shape)))


def _mixable(n: Node) -> bool:
    float_sum = n.op.lower in ("sum", "mean") and n.ins[0].dtype.is_floating_point
    return float_sum and red_dims(n) in MIXED_DIMS


@dataclass
class Plan:
    graph: Graph
    nodes: list  # nodes after rewriting (linear split), dead ones removed
    steps: list
    outputs: list  # node ids returned to the caller
    mutations: list  # (input node id, value node id)

    def describe(self) -> str:
        """Fusion groups and the reason each boundary exists (FUSEGRAD_DEBUG=2)."""
        lines = []
        for s in self.steps:
            names = " -> ".join(n.name for n in s.nodes)
            outs = ", ".join(f"%{n.id}" for n in s.outputs)
            if s.phases:
                lines.append(f"  step {s.index}: rows {list(s.shape)}: {len(s.phases)} loops run "
                             f"row by row in one kernel  => [{outs}]  ({s.why})")
                lines += [f"      {_head(p)}: {' -> '.join(n.name for n in p.nodes)}  ({p.why})"
                          for p in s.phases]
            else:
                lines.append(f"  step {s.index}: {_head(s)}: {names}  => [{outs}]  ({s.why})")
        return "\n".join(lines)

    def kernel_count(self) -> int:
        return sum(1 for s in self.steps if s.kind in ("loop", "update"))


def _head(s: Step) -> str:
    if s.kind != "loop":
        return s.kind
    dims = dict.fromkeys(red_dims(n) for n in s.reductions)  # distinct, in order
    return f"loop {list(s.shape)}" + (f" reduce dims={' + '.join(map(str, dims))}" if dims else "")


def _split_linear(nodes: list) -> list:
    """Rewrite linear(x, w, b) into mm_t(x, w) followed by add(mm, b)."""
    out, remap = [], {}
    next_id = max((n.id for n in nodes), default=-1) + 1
    for n in nodes:
        ins = tuple(remap.get(i.id, i) for i in n.ins)
        if n.op != "input" and n.op != "scalar" and n.op.name == "linear":
            mm = Node(ops.REGISTRY["mm_t"], ins[:2], {}, n.shape, n.dtype, next_id, n.site)
            next_id += 1
            out.append(mm)
            if len(ins) == 3:
                add = Node(ops.REGISTRY["add"], (mm, ins[2]), {}, n.shape, n.dtype, n.id, n.site)
                add.shadow = n.shadow
                out.append(add)
                remap[n.id] = add
            else:
                mm.id = n.id
                remap[n.id] = mm
            continue
        if ins != n.ins:
            shadow = n.shadow
            n = Node(n.op, ins, n.attrs, n.shape, n.dtype, n.id, n.site)
            n.shadow = shadow
            remap[n.id] = n
        out.append(n)
    return out


def _skip_scalar_views(nodes: list, keep: set) -> list:
    """Elementwise ops read a one-element value directly instead of its reshape (broadcasting
    gives the same values at any rank). The seed's `loss.backward()` reshapes the scalar
    gradient before it is expanded; as an extern step, that reshape kept the whole backward
    out of the forward's loop."""
    source, out = {}, []
    for n in nodes:
        if n.op not in ("input", "scalar"):
            if n.op.name in SCALAR_VIEWS and math.prod(n.ins[0].shape) == 1 and n.id not in keep:
                source[n.id] = source.get(n.ins[0].id, n.ins[0])
            if n.op.kind == "elementwise" and any(i.id in source for i in n.ins):
                shadow = n.shadow
                ins = tuple(source.get(i.id, i) for i in n.ins)
                n = Node(n.op, ins, n.attrs, n.shape, n.dtype, n.id, n.site)
                n.shadow = shadow
        out.append(n)
    return out


def _live(nodes: list, roots: set) -> list:
    """The nodes some root depends on, in program order."""
    need = set(roots)
    for n in reversed(nodes):
        if n.id in need:
            need.update(i.id for i in n.ins)
    return [n for n in nodes if n.id in need]


def plan(graph: Graph, cpu: bool = True) -> Plan:
    """``cpu``: plan for the CPU renderer, which also runs reductions over different dims in
    one loop and row groups; the CUDA renderer reduces over one set of dims per kernel."""
    roots = set(graph.outputs) | {v for _, v in graph.mutations} | {d for d, _ in graph.mutations}
    roots |= {n.id for n in graph.nodes if n.op not in ("input", "scalar") and n.op.kind == "update"}
    nodes = _live(_skip_scalar_views(_split_linear(graph.nodes), roots), roots)
    steps: list[Step] = []
    step_of: dict[int, Step] = {}
    reduced: set[int] = set()

    def ready(n: Node, s: Step) -> bool:
        """All inputs of n are computed in s (and not reduced there) or before s starts."""
        for i in n.ins:
            if i.op in ("input", "scalar"):
                continue
            si = step_of[i.id]
            if si is s:
                if i.id in reduced:
                    return False
            elif si.index >= s.index:
                return False
        return True

    def new_step(kind, shape, why) -> Step:
        s = Step(kind, len(steps), shape=shape, why=why)
        steps.append(s)
        return s

    for n in nodes:
        if n.op in ("input", "scalar"):
            continue
        kind = n.op.kind
        target, why = None, ""
        if kind == "elementwise":
            for i in n.ins:
                s = step_of.get(i.id)
                if s is None or s.kind != "loop":
                    continue
                if s.shape != n.shape:
                    why = f"not fused: shape {list(n.shape)} differs from producer loop {list(s.shape)}"
                elif not ready(n, s):
                    why = "not fused: an input is computed after that loop (or reduced in it)"
                elif target is None or s.index > target.index:
                    target = s
            if target is None and not why:  # no producer loop: join the latest loop of its shape
                target = next((s for s in reversed(steps) if s.kind == "loop" and s.shape == n.shape
                               and ready(n, s)), None)
            if target is None:
                target = new_step("loop", n.shape, why or "starts at an extern result or input")
        elif kind == "reduce" and n.op.lower in LOOP_REDUCTIONS:
            x = n.ins[0]
            s = step_of.get(x.id)
            dims = red_dims(n)
            if s is not None and s.kind == "loop":
                mixes = cpu and len(x.shape) == 2 and all(map(_mixable, s.reductions + [n]))
                if s.shape != x.shape:
                    why = "not fused: input loop has another shape"
                elif s.reduce_dims is not None and s.reduce_dims != dims and not mixes:
                    why = "not fused: reduction over another axis"
                elif not ready(n, s):
                    why = "not fused: input not ready in that loop"
                else:
                    target = s
            if target is None:
                target = new_step("loop", x.shape, why or "reduces an extern result or input")
            if target.reduce_dims is None:
                target.reduce_dims = dims
            target.reductions.append(n)
            reduced.add(n.id)
        elif kind == "update":
            target = new_step("update", n.shape, f"{n.name}: one kernel updates {n.attrs['n']} "
                              "parameters in place")
        else:
            target = new_step("extern", n.shape, f"{n.name} is an extern op ({kind})")
        target.nodes.append(n)
        step_of[n.id] = target

    _wire(steps, step_of, nodes, set(graph.outputs) | {v for _, v in graph.mutations})
    if cpu:
        steps = _row_groups(_fuse_updates(steps, step_of), step_of)
    return Plan(graph, nodes, steps, list(graph.outputs), list(graph.mutations))


def _fuse_updates(steps: list, step_of: dict) -> list:
    """A one-parameter update whose gradient a loop computes elementwise over the parameter's
    own shape runs in that loop (the element's update right after its gradient), when no step
    after the loop reads the tensors it writes: they would see the new values. Saves a pass
    that reads the parameter and its gradient again, and a kernel call."""
    out = []
    for u in steps:
        loop = _update_loop(u, steps, step_of)
        if loop is None:
            out.append(u)
            continue
        (n,) = u.nodes
        ids = loop.ids() | {i.id for i in loop.inputs}
        loop.inputs += [i for i in dict.fromkeys(n.ins) if i.id not in ids]
        loop.nodes.append(n)
        step_of[n.id] = loop
    return out


def _update_loop(u: Step, steps: list, step_of: dict) -> Step | None:
    """The loop step an update step can run in, or None."""
    if u.kind != "update" or u.nodes[0].attrs["n"] != 1:
        return None
    (n,) = u.nodes
    (tensors,), _, _ = n.op.split(n.ins, 1)
    loop = step_of.get(tensors[1].id)  # the gradient's step
    if loop is None or loop.kind != "loop" or tensors[1] in loop.reductions or not loop.shape:
        return None
    written = {t.id for t in n.op.written_tensors(n.ins, n.attrs)}
    if any(t.shape != loop.shape for t in tensors) or any(
            t.op != "input" for t in tensors if t.id in written):
        return None
    if any(i.op not in ("input", "scalar") and step_of[i.id].index > loop.index for i in n.ins):
        return None  # an argument computed after the loop
    readers = [s for s in steps if s.index > loop.index and s is not u
               and not (s.kind == "extern" and s.nodes[0].op.name == "updated")]
    return None if any(i.id in written for s in readers for i in s.inputs) else loop


def _writes(s: Step) -> set:
    """Ids of the tensors the updates fused into loop s write in place."""
    return {t.id for n in s.nodes if n.op.kind == "update"
            for t in n.op.written_tensors(n.ins, n.attrs)}


def _row_phase(s: Step) -> bool:
    """A loop that can run one row at a time: 2-D, and reducing only by float sums/means over
    rows, columns or everything, or by max/min over rows (none at all over a single column)."""
    if s.kind != "loop" or len(s.shape) != 2 or s.shape[0] < 2:
        return False
    ok = all(_mixable(n) or n.op.lower in ("max", "min") and red_dims(n) == (1,)
             for n in s.reductions)
    return ok and not (s.shape[1] == 1 and s.reductions)


def _row_groups(steps: list, step_of: dict) -> list:
    """Consecutive 2-D loops over the same rows become one loop that runs them row by row
    (codegen.rows_source), when each reads from the earlier ones only row values: elementwise
    results and row sums, complete once that row has run. Layer norm's mean, variance, scale
    and the gelu loop after it are one pass over memory; the later loops read the row the
    earlier ones wrote from cache. A loop or extern call in between that no later member reads
    moves after the group (the gradients' reshapes between layer norm's forward and backward);
    an update ends the group, as its in-place writes keep their place."""
    out, group, deferred = [], [], []

    def joins(s: Step) -> bool:
        if not group or not _row_phase(s) or s.shape[0] != group[0].shape[0]:
            return False
        wide = {g.shape[1] for g in group + [s]} - {1}
        inside = {n.id for g in group for n in g.nodes}
        later = {n.id for d in deferred for n in d.nodes}
        row_values = all(i.id not in inside or i not in step_of[i.id].reductions
                         or red_dims(i) == (1,) for i in s.inputs)
        read_later = {i.id for d in deferred for i in d.inputs}
        return (len(wide) <= 1 and row_values and not any(i.id in later for i in s.inputs)
                and not _writes(s) & read_later)

    def close():
        if len(group) > 1 and any(g.shape[1] > 1 for g in group):
            ids = {n.id for g in group for n in g.nodes}
            inputs = {i.id: i for g in group for i in g.inputs if i.id not in ids}
            first = group[0]
            out.append(Step("loop", 0, (first.shape[0], max(g.shape[1] for g in group)),
                            [n for g in group for n in g.nodes], first.reduce_dims,
                            [n for g in group for n in g.reductions], list(inputs.values()),
                            [n for g in group for n in g.outputs],
                            "row group: each loop reads only row values of the earlier ones",
                            list(group)))
        else:
            out.extend(group)
        out.extend(deferred)
        group.clear()
        deferred.clear()

    for s in steps:
        if joins(s):
            group.append(s)
        elif group and not _row_phase(s) and (
                s.kind == "loop" or s.kind == "extern" and s.nodes[0].op.name != "updated"):
            deferred.append(s)
        else:  # a row loop that cannot join starts the next group
            close()
            (group if _row_phase(s) else out).append(s)
    close()
    for k, s in enumerate(out):
        s.index = k
    return out


def _wire(steps, step_of, nodes, leaving: set):
    """Fill each step's external inputs and the outputs it must materialize."""
    used_outside: set[int] = set()
    for s in steps:
        ids = s.ids()
        seen = set()
        for n in s.nodes:
            for i in n.ins:
                if i.id not in ids and i.id not in seen:
                    seen.add(i.id)
                    s.inputs.append(i)
                    used_outside.add(i.id)
    for s in steps:
        s.outputs = [
            n for n in s.nodes
            if n.id in used_outside or n.id in leaving or n in s.reductions or s.kind != "loop"
        ]
