"""codegen: a plan's loop steps rendered as Numba @njit source, and the plan as a Python driver.

A kernel's source depends only on its op structure, dtypes, rank and broadcast pattern: names
are positional (x0 for the first input value, t3 for the third op in the loop), sizes are loop
bounds passed at run time, so a new graph (another depth, another batch size) reuses every
kernel it shares with earlier graphs. The driver is straight-line Python that binds buffers and
calls kernels and BLAS in order; generating it avoids an interpreter loop per call.
"""

from __future__ import annotations

import inspect
import math
import re
import textwrap

import numpy as np

from . import dtypes, ops
from .fuse import Plan, Step, red_dims

PARALLEL_MIN = 1 << 18  # loops with fewer elements run on one core (thread wake-up costs more)
CHUNK = 1024  # a reduction's innermost loop runs in chunks of this many elements
BLOCK = 1 << 14  # a large 1-D full reduction runs in parallel blocks of this many elements
ROWS = 64  # a loop rendered row by row runs in (parallel) blocks of this many rows
_MATH_FNS = "exp|log|tanh|sigmoid|erf|gelu|gelu_grad|sin|cos"  # calls that cost (vectorize them)
_FN = re.compile(rf"\b({_MATH_FNS}|sqrt|sign)\(")  # in an op's lower template
_MATH = re.compile(rf"\b({_MATH_FNS})_f(32|64)\(")  # in rendered code
_CAST = {"float32": "np.float32", "float64": "np.float64", "int64": "np.int64", "int32": "np.int32", "bool": "bool"}


def _suffix(d: dtypes.dtype) -> str:
    return {"float32": "_f32", "float64": "_f64"}.get(d.name, "_i")


def _scalar_dtype(node) -> dtypes.dtype:
    return {"bool": dtypes.bool_, "int": dtypes.int64}.get(node.attrs["type"], dtypes.float32)


def _part(node) -> tuple:
    if node.op == "scalar":
        return (_scalar_dtype(node), 0)
    return (node.dtype, 2 if node.shape else 1)


def loop_shape(step: Step) -> tuple:
    return step.shape if step.shape else (1,)


def padded(shape: tuple, rank: int) -> tuple:
    shape = tuple(shape) if shape else ()
    return (1,) * (rank - len(shape)) + shape


def _index(shape: tuple, loop: tuple, reduced: tuple = ()) -> str:
    """The index expression of an array of `shape` (already padded) inside the loop nest."""
    idx = [
        "0" if (d in reduced or shape[d] == 1 or loop[d] == 1) else f"i{d}"
        for d in range(len(loop))
    ]
    return ", ".join(idx) + ("," if len(idx) == 1 else "")


def reduce_layout(step: Step) -> tuple[tuple, bool]:
    """(reduced loop dims, whether they are a suffix of the loop nest) of a loop step."""
    r = len(loop_shape(step))
    R = tuple(step.reduce_dims) if step.reductions else ()
    if not step.shape and step.reductions:
        R = (0,)
    return R, R == tuple(range(r - len(R), r))


def loop_names(step: Step, pre: str = "") -> tuple[list, list, dict, dict]:
    """A loop step's array inputs, scalar inputs, and the positional local names both
    renderers use: x0 an array element, s0 a scalar, t3 the fourth op, o0 the first output
    (with ``pre`` after the letter: x1_0 is phase 1's first array element in a row group)."""
    arrays = [n for n in step.inputs if n.op != "scalar"]
    scalars = [n for n in step.inputs if n.op == "scalar"]
    name = {n.id: f"x{pre}{k}" for k, n in enumerate(arrays)}
    name.update({n.id: f"s{pre}{k}" for k, n in enumerate(scalars)})
    name.update({n.id: f"t{pre}{j}" for j, n in enumerate(step.nodes)})
    return arrays, scalars, name, {n.id: f"o{pre}{k}" for k, n in enumerate(step.outputs)}


def _chain(step: Step, at, pre: str = "") -> list:
    """The innermost loop's lines: loads of the inputs, the op chain, the elementwise stores.
    ``at(array name, shape)`` is the element expression of an array of that shape."""
    arrays, _, name, oname = loop_names(step, pre)
    red_ids = {n.id for n in step.reductions}
    lines = [f"{name[n.id]} = {at(f'a{pre}{k}', n.shape)}" for k, n in enumerate(arrays)]
    for n in step.nodes:
        if n.id in red_ids:
            continue
        if n.op.kind != "update":
            lines.append(f"{name[n.id]} = {_expr(n, name)}")
            continue
        # an update fused into the loop (fuse._fuse_updates): this element's new values
        (tensors,), shared, (each,) = n.op.split(n.ins, 1)
        cast = _CAST[tensors[0].dtype.name]
        args = [name[t.id] for t in tensors] + [f"{cast}({name[x.id]})" for x in shared + each]
        args += [repr(f) for f in n.op.flag_values(n.attrs, 0)]
        lines.append(f"{name[n.id]} = {n.op.elem.__name__}({', '.join(args)})")
        for j in n.op.writes(n.attrs):
            k = [a.id for a in arrays].index(tensors[j].id)
            lines.append(f"{at(f'a{pre}{k}', tensors[j].shape)} = {name[n.id]}[{j}]")
    outs = [n for n in step.outputs if n.id not in red_ids]
    lines += [f"{at(oname[n.id], n.shape)} = {name[n.id]}" for n in outs]
    return lines


def _elems(step: Step) -> str:
    """The element functions of the updates fused into a loop, copied in as in update_source."""
    fns = dict.fromkeys(n.op.elem for p in (step.phases or [step]) for n in p.nodes
                        if n.op.kind == "update")
    deco = "@njit(inline='always', fastmath=False, error_model='numpy')\n"
    return "".join(deco + textwrap.dedent(inspect.getsource(f)) + "\n\n" for f in fns)


def _params(step: Step, pre: str = "") -> list:
    """A loop kernel's parameters after the loop sizes: arrays, scalars, outputs."""
    arrays, scalars, _, _ = loop_names(step, pre)
    params = [f"a{pre}{k}" for k in range(len(arrays))]
    params += [f"s{pre}{k}" for k in range(len(scalars))]
    return params + [f"o{pre}{k}" for k in range(len(step.outputs))]


def _block(lines: list, depth: int) -> str:
    return "".join("    " * depth + line + "\n" for line in lines)


def rows_source(step: Step) -> str:
    """A 2-D loop over rows, rendered one row at a time: a row group's phases (fuse.py) or one
    loop whose float sums/means reduce over different dims (everything, rows, columns).

    Rows run in parallel in fixed blocks of ROWS. For each row, each phase runs in order over
    the row (a [R, 1] phase once): a later phase reads what an earlier one wrote for this row
    from cache, and its row results (a row sum or max, a [R, 1] value) are complete. Row sums
    go through a chunk buffer and pairwise_sum, as in kernel_source (a row max or min through
    the buffer into one accumulator); sums over everything add each
    row into a per-block partial, column sums into the block's row of a (blocks, n1) partials
    array. After the loop, the partials are added up in block order, so no two threads write
    one value and the result does not depend on the thread count."""
    phases = step.phases or [step]
    pres = [f"{p}_" if step.phases else "" for p in range(len(phases))]
    parallel = math.prod(step.shape) >= PARALLEL_MIN
    alloc, per_block, per_row, after = [], [], [], []
    for phase, pre in zip(phases, pres, strict=True):
        _, _, name, oname = loop_names(phase, pre)
        loop = loop_shape(phase)
        inner, accs, after_chunk, after_row = [], [], [], []
        for k, n in enumerate(phase.reductions):
            dims, v, dt = red_dims(n), name[n.ins[0].id], n.ins[0].dtype.np.name
            k = f"{pre}{k}"
            out = f"{oname[n.id]}[{'0' if 0 in dims else 'i0'}, {'0' if 1 in dims else 'i1'}]"
            count = " * ".join(f"n{d}" for d in dims)
            div = f" / ({count})" if n.op.lower == "mean" else ""
            store = f"{out} = {_CAST[n.dtype.name]}(acc{k}{div})"
            if n.op.lower in ("max", "min"):  # over rows only (fuse._row_phase)
                init, nxt = _acc(n.op.lower, n.ins[0].dtype, f"acc{k}", f"w{k}[j]")
                per_block.append(f"w{k} = np.empty({CHUNK}, np.{dt})")
                inner.append(f"w{k}[j] = {v}")
                accs.append((f"acc{k}", init))
                after_chunk += ["for j in range(m):", f"    acc{k} = {nxt}"]
                after_row.append(store)
                continue
            if dims == (0,):  # columns: a block's partials stay in the input dtype (vectorizes)
                alloc.append(f"cols{k} = np.zeros((nb, n1), np.{dt})")
                inner.append(f"cols{k}[b, i1] = cols{k}[b, i1] + {v}")
                after += ["for i1 in range(n1):", f"    acc{k} = np.float64(0)",
                          "    for b in range(nb):",
                          f"        acc{k} = acc{k} + np.float64(cols{k}[b, i1])", "    " + store]
                continue
            per_block += [f"w{k} = np.empty({CHUNK}, np.{dt})",
                          f"d{k} = np.empty({CHUNK // 2}, np.float64)"]
            inner.append(f"w{k}[j] = {v}")
            accs.append((f"acc{k}", "np.float64(0)"))
            after_chunk.append(f"acc{k} = acc{k} + pairwise_sum(w{k}, d{k}, m)")
            if dims == (1,):
                after_row.append(store)
            else:  # everything: a block's partial
                alloc.append(f"parts{k} = np.zeros(nb, np.float64)")
                after_row.append(f"parts{k}[b] = parts{k}[b] + acc{k}")
                after += [f"acc{k} = np.float64(0)", "for b in range(nb):",
                          f"    acc{k} = acc{k} + parts{k}[b]", store]
        def at(a, shape, loop=loop):
            return f"{a}[{_index(padded(shape, 2), loop)}]"
        chain = _chain(phase, at, pre)
        if loop[1] == 1 and not phase.reductions:  # a [R, 1] phase: row values, once per row
            per_row += chain
            continue
        per_row += [f"{acc} = {init}" for acc, init in accs]
        per_row += [f"for ci in range((n1 + {CHUNK - 1}) // {CHUNK}):",
                    f"    c = ci * {CHUNK}", f"    m = min({CHUNK}, n1 - c)",
                    "    for j in range(m):", "        i1 = c + j"]
        per_row += ["        " + line for line in chain + inner]
        per_row += ["    " + line for line in after_chunk] + after_row
    if not parallel:  # one set of chunk buffers for the whole loop
        alloc, per_block = alloc + per_block, []
    params = ["n0", "n1"]
    for phase, pre in zip(phases, pres, strict=True):
        params += _params(phase, pre)
    deco = f"@njit(cache=True, fastmath=False, error_model='numpy', parallel={parallel})"
    return (
        f"{deco}\ndef KNAME({', '.join(params)}):\n"
        f"    nb = (n0 + {ROWS - 1}) // {ROWS}\n" + _block(alloc, 1)
        + f"    for b in {'prange' if parallel else 'range'}(nb):\n" + _block(per_block, 2)
        + f"        for i0 in range(b * {ROWS}, min(n0, b * {ROWS} + {ROWS})):\n"
        + _block(per_row, 3) + _block(after, 1)
    )


def kernel_source(step: Step) -> tuple[str, str]:
    """(header comment, body) of a loop step's kernel; the body names the function KNAME."""
    chain = " -> ".join(n.name for n in step.nodes)
    if step.by_rows:
        return f"# ops: {chain}\n", _elems(step) + rows_source(step)
    loop = loop_shape(step)
    r = len(loop)
    _, _, name, oname = loop_names(step)
    R, suffix = reduce_layout(step)
    kept = r - len(R) if suffix else 0

    numel = math.prod(loop)
    # Numba's parfor reduction variables keep a loop from vectorizing (measured 4.9 ms vs
    # 1.3 ms on 1M elements, one thread), so a reduction over every dim of a large loop runs
    # in parallel over rows (rank >= 2) or blocks of BLOCK elements (rank 1) into a partials
    # array, which is added up serially in order: the result does not depend on the thread
    # count.
    full = bool(step.reductions) and suffix and kept == 0 and numel >= PARALLEL_MIN
    rows, blocks = full and r >= 2, full and r == 1
    outer = 1 if rows else kept  # loop dims outside the reduction accumulators
    parallel = numel >= PARALLEL_MIN and (not step.reductions or (suffix and outer > 0) or blocks)
    row, nrows = ("b", "nb") if blocks else ("i0", "n0")

    body = []
    # Inside a prange body, the arrays the inner loops of a block walk are first bound to the
    # block's slice: indexing the kernel's own arguments there keeps LLVM from vectorizing
    # the inner loop (measured 4.1 ms vs 0.9 ms for tanh over 1M float32, one thread). Rows
    # of rank >= 2 loops measured no better bound to row views (layernorm+gelu: 11.4 ms vs
    # 10.8 ms for the heavy loop), so they index the arguments.
    bind = []

    def at(arr: str, shape: tuple) -> str:
        ps = padded(shape, r)
        if not blocks or ps[0] == 1 or loop[0] == 1:
            return f"{arr}[{_index(ps, loop)}]"
        bind.append(f"{arr}_r = {arr}[lo:lo + nn]")
        return f"{arr}_r[i0]"

    inner = _chain(step, at)
    # Suffix reductions accumulate in float64 (int64) scalars. A chain of float adds is a serial
    # dependency that keeps the loop from vectorizing (LLVM keeps their order), so a loop with
    # a float sum or one that calls math functions ("heavy") runs its innermost dim in
    # chunks: one loop computes the chunk's values into a buffer (it vectorizes), then each
    # float sum adds its buffer up as a pairwise tree of vectorized halvings (fixed order, so
    # the result does not depend on the thread count) into one float64 scalar; max/min/all/
    # any and integer sums, whose accumulators LLVM does vectorize or which are cheap, add
    # their buffer up into four partials. A light loop without float sums is unrolled four
    # times into four partials.
    heavy = any(_MATH.search(line) for line in inner)
    pairwise = [n.op.lower in ("sum", "mean") and n.ins[0].dtype.is_floating_point
                for n in step.reductions]
    chunked = heavy or any(pairwise)
    acc_init, acc_fin, acc_add, acc_chunk, rows_init, rows_fin, trees = [], [], [], [], [], [], []
    for k, n in enumerate(step.reductions):
        src = name[n.ins[0].id]
        kind = n.op.lower
        out_idx = _index(padded(n.ins[0].shape, r), loop, R)
        if suffix:
            wide = "np.float64" if n.ins[0].dtype.is_floating_point else "np.int64"
            split = kind in ("sum", "mean")  # four partial sums p{k}_0..3
            v = f"w{k}[j]" if chunked else src
            init, nxt = _acc(kind, n.ins[0].dtype, f"acc{k}", v)
            if pairwise[k]:
                acc_init.append(f"p{k} = np.float64(0)")
                trees.append(k)
                total = f"p{k}"
            elif split:
                acc_init += [f"p{k}_{q} = {wide}(0)" for q in range(4)]
                acc_add.append(lambda q, k=k, v=v, wide=wide: f"p{k}_{q} = p{k}_{q} + {wide}({v})")
                total = f"((p{k}_0 + p{k}_1) + (p{k}_2 + p{k}_3))"
            else:
                acc_init.append(f"acc{k} = {init}")
                acc_add.append(lambda q, k=k, nxt=nxt: f"acc{k} = {nxt}")
                total = f"acc{k}"
            if chunked:
                inner.append(f"w{k}[j] = {src}")
                acc_chunk.append(f"w{k} = np.empty({CHUNK}, np.{n.ins[0].dtype.np.name})")
                if pairwise[k]:
                    acc_chunk.append(f"d{k} = np.empty({CHUNK // 2}, np.float64)")
            if full:  # this row's (block's) result; the partials are combined after the loop
                pd = wide if split else ("np.bool_" if kind in ("all", "any") else f"np.{n.ins[0].dtype.np.name}")
                acc_fin.append(f"parts{k}[{row}] = {total}")
                init, nxt = _acc(kind, n.ins[0].dtype, f"acc{k}", f"parts{k}[{row}]")
                rows_init.append(f"parts{k} = np.empty({nrows}, {pd})")
                rows_fin += [f"acc{k} = {init}", f"for {row} in range({nrows}):", f"    acc{k} = {nxt}"]
                total = f"acc{k}"
            fin = total
            if kind == "mean":
                count = " * ".join(f"n{d}" for d in R)
                fin = f"{total} / ({count})"
            (rows_fin if full else acc_fin).append(f"{oname[n.id]}[{out_idx}] = {_CAST[n.dtype.name]}({fin})")
        else:  # accumulate in the (pre-filled) output; the driver divides for mean
            o = f"{oname[n.id]}[{out_idx}]"
            _, nxt = _acc(kind, n.ins[0].dtype, o, src)
            inner.append(f"{o} = {_CAST[n.dtype.name]}({nxt})")

    def loop_line(d, par):
        rng = "prange" if par else "range"
        return f"for i{d} in {rng}(n{d}):"

    indent = "    "
    level = 1
    if suffix and step.reductions:
        last, ii = f"n{r - 1}", f"i{r - 1}"
        if blocks:
            body.append(indent + f"nb = (n0 + {BLOCK - 1}) // {BLOCK}")
        body += [indent + line for line in rows_init]
        if chunked and not parallel:  # one set of buffers for the whole (serial) loop
            body += [indent + line for line in acc_chunk]
        if blocks:
            body.append(indent + "for b in prange(nb):")
            body.append(indent * 2 + f"lo = b * {BLOCK}")
            body.append(indent * 2 + f"nn = min({BLOCK}, n0 - lo)")
            level, last = 2, "nn"
            body += [indent * level + line for line in dict.fromkeys(bind)]
        for d in range(outer):
            body.append(indent * level + loop_line(d, parallel and d == 0))
            level += 1
        body += [indent * level + line for line in acc_init]
        for d in range(outer, r - 1):
            body.append(indent * level + loop_line(d, False))
            level += 1
        if chunked:
            if parallel:  # a set of buffers per row / block: threads must not share one
                body += [indent * level + line for line in acc_chunk]
            body.append(indent * level + f"for ci in range(({last} + {CHUNK - 1}) // {CHUNK}):")
            level += 1
            body.append(indent * level + f"c = ci * {CHUNK}")
            body.append(indent * level + f"m = min({CHUNK}, {last} - c)")
            body.append(indent * level + "for j in range(m):")  # (range(c, c + m) vectorizes worse)
            body.append(indent * (level + 1) + f"{ii} = c + j")
            body += [indent * (level + 1) + line for line in inner]
            if acc_add:
                body.append(indent * level + "for j0 in range(0, m - 3, 4):")
                for q in range(4):
                    body.append(indent * (level + 1) + f"j = j0 + {q}")
                    body += [indent * (level + 1) + add(q) for add in acc_add]
                body.append(indent * level + "for j in range(m - m % 4, m):")
                body += [indent * (level + 1) + add(0) for add in acc_add]
            body += [indent * level + f"p{k} = p{k} + pairwise_sum(w{k}, d{k}, m)" for k in trees]
        else:
            body.append(indent * level + f"for u in range({last} // 4):")
            for q in range(4):
                body.append(indent * (level + 1) + f"{ii} = u * 4 + {q}")
                body += [indent * (level + 1) + line for line in inner]
                body += [indent * (level + 1) + add(q) for add in acc_add]
            body.append(indent * level + f"for u in range({last} - {last} % 4, {last}):")
            body.append(indent * (level + 1) + f"{ii} = u")
            body += [indent * (level + 1) + line for line in inner]
            body += [indent * (level + 1) + add(0) for add in acc_add]
        level = 1 + outer + blocks
        body += [indent * level + line for line in acc_fin]
        body += [indent + line for line in rows_fin]
    else:
        for d in range(r):
            body.append(indent * level + loop_line(d, parallel and d == 0 and not step.reductions))
            level += 1
        body += [indent * level + line for line in inner]

    deco = f"@njit(cache=True, fastmath=False, error_model='numpy', parallel={parallel})"
    params = [f"n{d}" for d in range(r)] + _params(step)
    src = _elems(step) + f"{deco}\ndef KNAME({', '.join(params)}):\n" + "\n".join(body) + "\n"
    return f"# ops: {chain}\n", src


def update_parts(step: Step) -> tuple[str, list, list, tuple]:
    """What both renderers need for an update step: the op's ``elem`` source renamed ELEM (its
    source is copied into the kernel, so the kernel's hash changes when the formula does), the
    kernel's parameters, and per parameter (array names, scalar casts, flags, element count)."""
    (n,) = step.nodes
    op, npar = n.op, n.attrs["n"]
    width, ns, ne = len(op.tensors), len(op.shared), len(op.each)
    tensors = op.split(n.ins, npar)[0]
    elem = textwrap.dedent(inspect.getsource(op.elem)).replace(f"def {op.elem.__name__}(", "def ELEM(", 1)
    per = []
    for k, ts in enumerate(tensors):
        cast = _CAST[ts[0].dtype.name]
        scal = [f"{cast}(s{i})" for i in range(ns)] + [f"{cast}(s{ns + k * ne + i})" for i in range(ne)]
        flags = [repr(f) for f in op.flag_values(n.attrs, k)]
        per.append(([f"a{k * width + j}" for j in range(width)], scal, flags, math.prod(ts[0].shape)))
    params = [f"a{i}" for i in range(npar * width)] + [f"s{i}" for i in range(ns + npar * ne)]
    return elem, params, per, op.writes(n.attrs)


def update_source(step: Step) -> tuple[str, str]:
    """(header, body) of an update step's @njit kernel: ELEM over each parameter, flat.

    Scalars are cast once to each parameter's dtype; flags are literals. Written arrays are
    contiguous (the tracer checks), so their flat views write through.
    """
    elem, params, per, writes = update_parts(step)
    parallel = any(numel >= PARALLEL_MIN for *_, numel in per)
    body = []
    for k, (arrays, scal, flags, numel) in enumerate(per):
        xs = [f"x{k}_{j}" for j in range(len(arrays))]
        # one statement per view: Numba's parfors copy views assigned as a tuple
        for j, (x, a) in enumerate(zip(xs, arrays)):
            body.append(f"    {x} = {a}.reshape({a}.size)" if j in writes else f"    {x} = {a}.ravel()")
        body += [f"    c{k}_{i} = {c}" for i, c in enumerate(scal)]
        sc = [f"c{k}_{i}" for i in range(len(scal))]
        rng = "prange" if parallel and numel >= PARALLEL_MIN else "range"
        body.append(f"    for i in {rng}({xs[0]}.size):")
        body.append(f"        r = ELEM({', '.join(x + '[i]' for x in xs)}, {', '.join(sc + flags)})")
        body += [f"        {xs[j]}[i] = r[{j}]" for j in writes]
    src = (
        "@njit(inline='always', fastmath=False, error_model='numpy')\n" + elem + "\n\n"
        f"@njit(cache=True, fastmath=False, error_model='numpy', parallel={parallel})\n"
        f"def KNAME({', '.join(params)}):\n" + "\n".join(body) + "\n"
    )
    (n,) = step.nodes
    return f"# ops: {n.name} over {n.attrs['n']} parameters\n", src


def _acc(kind: str, d: dtypes.dtype, acc: str, v: str) -> tuple[str, str]:
    """(initial value, next value) of an accumulator named acc."""
    wide = "np.float64" if d.is_floating_point else "np.int64"
    if kind in ("sum", "mean"):
        return f"{wide}(0)", f"{acc} + {wide}({v})"
    if kind in ("max", "min") and d.is_floating_point:  # a NaN wins, as in numpy and PyTorch
        cmp = ">" if kind == "max" else "<"
        init = "-np.inf" if kind == "max" else "np.inf"
        return init, f"{v} if ({v} {cmp} {acc} or {v} != {v}) else {acc}"
    if kind == "max":
        return "np.iinfo(np.int64).min", f"max({acc}, {v})"
    if kind == "min":
        return "np.iinfo(np.int64).max", f"min({acc}, {v})"
    if kind == "all":
        return "True", f"{acc} and bool({v})"
    return "False", f"{acc} or bool({v})"


def reduction_fill(kind: str, d: dtypes.dtype):
    """Initial value of a reduction accumulated in its output array."""
    if kind in ("sum", "mean"):
        return 0
    if kind in ("all", "any"):
        return kind == "all"
    big = np.inf if d.is_floating_point else np.iinfo(d.np).max
    return -big if kind == "max" else big


def _expr(n, name: dict) -> str:
    """The scalar expression of an elementwise node over its inputs' local names."""
    op = n.op
    cd, _ = op.result_dtype(tuple(_part(i) for i in n.ins))
    args = []
    for i in n.ins:
        a = name[i.id]
        idt = _scalar_dtype(i) if i.op == "scalar" else i.dtype
        if cd is not None and (i.op == "scalar" or idt is not cd):
            a = f"{_CAST[cd.name]}({a})"
        args.append(a)
    cast = _CAST[(cd or n.dtype).name]
    if callable(op.lower):
        e = op.lower(args, n.attrs, cast)
    else:
        e = op.lower.format(*args)
    e = _FN.sub(lambda m: m.group(1) + _suffix(cd or n.dtype) + "(", e)
    return f"{_CAST[n.dtype.name]}({e})"


# --------------------------------------------------------------------------- driver
def driver_source(plan: Plan, kernels: dict, layout: dict) -> tuple[str, dict]:
    """Python source of run(A, S, B) -> outputs, and the names it needs.

    ``kernels`` maps step index -> kernel name; ``layout`` maps node id -> buffer slot in B
    (absent: allocate fresh each call, because the array leaves to the caller).
    """
    env: dict = {"np": np}
    lines = driver_head(plan, "A[{}]")
    leaving = set(plan.outputs)

    def buf(n) -> str:
        if n.id in layout:
            return f"B[{layout[n.id]}]"
        return f"np.empty({tuple(n.shape)!r}, np.{n.dtype.np.name})"

    for s in plan.steps:
        if s.kind == "loop":
            args, after = [str(x) for x in loop_shape(s)], []
            for phase in s.phases or [s]:
                args += _loop_args(phase, lines, after, buf, filled=not s.by_rows)
            lines.append(f"    {kernels[s.index]}({', '.join(args)})  # {' -> '.join(x.name for x in s.nodes)}")
            lines += after
        elif s.kind == "update":
            (n,) = s.nodes
            lines.append(f"    {kernels[s.index]}({', '.join(f'v{i.id}' for i in n.ins)})  # {n.name}")
            lines.append(f"    v{n.id} = None")
        else:
            (n,) = s.nodes
            ins = ", ".join(f"v{i.id}" for i in n.ins)
            if n.op.name == "updated":  # the update step wrote the array in place
                lines.append(f"    v{n.id} = v{n.ins[1].id}")
            elif n.op.name in ("mm_t", "matmul") and len(n.shape) == 2 and all(len(i.shape) == 2 for i in n.ins):
                # np.dot: about 0.7 us less per call than np.matmul at these sizes, but it
                # takes only an out array of exactly its result dtype
                mm = "np.dot" if all(i.dtype is n.dtype for i in n.ins) else "np.matmul"
                x, w = n.ins
                tail = ".T" if n.op.name == "mm_t" else ""
                lines.append(f"    v{n.id} = {mm}(v{x.id}, v{w.id}{tail}, out={buf(n)})")
            else:
                copy = ".copy()" if n.id in leaving and n.op.kind == "view" else ""
                if isinstance(n.op, (ops.Permute, ops.Reshape)):  # a method, not a Python wrapper
                    call = (f"transpose({tuple(n.attrs['dims'])!r})" if isinstance(n.op, ops.Permute)
                            else f"reshape({tuple(n.shape)!r})")
                    lines.append(f"    v{n.id} = {ins}.{call}{copy}  # {n.name}")
                    continue
                fname = f"X{s.index}"
                env[fname] = _extern(n.op, n.attrs, n.dtype)
                lines.append(f"    v{n.id} = {fname}({ins}){copy}  # {n.name}")
    for dst, src in copied_mutations(plan):
        lines.append(f"    np.copyto(v{dst}, v{src})")
    lines.append(f"    return [{', '.join(f'v{i}' for i in plan.outputs)}]")
    return "\n".join(lines) + "\n", env


def _loop_args(s: Step, lines: list, after: list, buf, filled: bool) -> list:
    """A loop step's kernel arguments after the sizes (arrays reshaped to the loop's rank,
    scalars, outputs); appends the outputs' allocations to ``lines``. ``filled``: a reduction
    that is not over trailing dims accumulates in its output, filled first (``after``: the
    division for a mean, after the call)."""
    r = len(loop_shape(s))
    filled = filled and not reduce_layout(s)[1]
    args = []
    for n in s.inputs:
        if n.op != "scalar":
            p = padded(n.shape, r)
            args.append(f"v{n.id}" if tuple(n.shape) == p else f"v{n.id}.reshape({p!r})")
    args += [f"v{n.id}" for n in s.inputs if n.op == "scalar"]
    red = {n.id for n in s.reductions}
    for n in s.outputs:
        lines.append(f"    v{n.id} = {buf(n)}")
        if n.id in red:
            p = padded(n.ins[0].shape, r)
            p = tuple(1 if d in red_dims(n) else x for d, x in enumerate(p))
            if filled:
                fill = reduction_fill(n.op.lower, n.dtype)
                fill = {np.inf: "np.inf", -np.inf: "-np.inf"}.get(fill, repr(fill))
                lines.append(f"    v{n.id}.fill({fill})")
                if n.op.lower == "mean":
                    count = math.prod(n.ins[0].shape[d] for d in red_dims(n))
                    after.append(f"    np.divide(v{n.id}, {count}, out=v{n.id})")
        else:
            p = padded(n.shape, r)
        args.append(f"v{n.id}" if tuple(n.shape) == p else f"v{n.id}.reshape({p!r})")
    return args


def driver_head(plan: Plan, load: str) -> list:
    """The driver's first lines: `def run(A, S, B)` binding inputs (``load`` formats A[k]) and
    runtime scalars to their node names."""
    lines = ["def run(A, S, B):"]
    for n in plan.nodes:
        if n.op == "input":
            lines.append(f"    v{n.id} = {load.format(n.attrs['k'])}")
        elif n.op == "scalar":
            lines.append(f"    v{n.id} = S[{n.attrs['k']}]")
    return lines


def copied_mutations(plan: Plan) -> list:
    """The in-place writes the driver must copy: an update step already wrote its own."""
    written = {n.id: n.ins[1].id for n in plan.nodes if is_updated(n)}
    return [(dst, src) for dst, src in plan.mutations if written.get(src) != dst]


def is_updated(n) -> bool:
    return not isinstance(n.op, str) and n.op.name == "updated"


def leaving(plan: Plan) -> set:
    """Node ids whose arrays leave to the caller (never a reused buffer), including the arrays
    an update step writes in place for a leaving value."""
    out = set(plan.outputs)
    return out | {n.ins[1].id for n in plan.nodes if n.id in out and is_updated(n)}


def _extern(op: ops.Op, attrs: dict, dtype: dtypes.dtype):
    """An extern op's eager kernel with the node's dtype enforced (numpy may widen)."""
    want = dtype.np

    def call(*arrays):
        r = op.eager(*arrays, **attrs)
        if type(r) is not np.ndarray:
            r = np.asarray(r)
        return r if r.dtype == want else r.astype(want)

    return call
