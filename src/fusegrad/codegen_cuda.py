"""codegen_cuda: the fusion plan rendered as @cuda.jit kernels, and a driver that launches them.

The CPU renderer (codegen.py) and this one read the same ``fuse.Plan``; expressions come from
the same op ``lower`` templates through ``codegen._expr``, and math functions resolve to
kernellib_cuda.py's twins of kernellib.py's names. How plan steps map to kernels:

- loop step without reductions: one thread per element of the loop shape, in a grid-stride
  loop over the flattened index (any grid size is correct; the driver picks one per size).
- loop step with reductions: one block per element of the kept (not reduced) dims, in a
  block-stride loop; each thread walks the reduced elements with a stride of the block size,
  computing the fused chain (and writing its elementwise outputs) as it goes, then the block
  combines its partial results in shared memory. Works for reductions over any dims.
- ``mm_t`` / ``matmul``: a tiled shared-memory matmul (TILE x TILE threads per block, blockIdx.z
  over a batch dim). The bias add and activation after a linear already run in the next loop.
- views: reshape/squeeze/unsqueeze are device views; permute/transpose/t are a generated copy
  kernel.
- indexing: ``IndexSpec`` turns x[index] (PyTorch's order, ops._index_steps) into address
  arithmetic on flat x. getitem is a device view when it selects one contiguous run, else a
  gather kernel; index_grad a zero fill and an atomic scatter-add; index_put a device copy and
  a scatter write. cat copies each input into its slab; argmax/argmin are a block reduction
  keeping the first index. What remains on the host (bool index parts, an index_grad of bools,
  matmuls whose batch dims broadcast partially) runs its numpy kernel on a host copy and
  uploads the result: a documented host round trip.

Kernel source, like the CPU renderer's, depends only on ops, dtypes, rank and broadcast pattern
(sizes are arguments), so kernels are shared between graphs and cached on disk by cache.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import codegen, ops
from .errors import CompileError
from .fuse import Plan, Step

_NUMBA_TYPE = {
    "float32": "numba.float32",
    "float64": "numba.float64",
    "int64": "numba.int64",
    "int32": "numba.int32",
    "bool": "numba.boolean",
}
VIEW_RESHAPES = ("reshape", "unsqueeze", "squeeze")
PERMUTES = ("permute", "transpose", "t")
MATMULS = ("mm_t", "matmul")
INDEXING = ("getitem", "index_grad", "index_put")
ARGREDUCE = ("argmax", "argmin")


def _sizes():
    from . import kernellib_cuda as K

    return K


def _unravel(dims: list, var: str, indent: str) -> list:
    """Lines that turn the linear index `var` into loop indices i<d> for dims (row-major)."""
    if not dims:
        return []
    lines = [f"{indent}r = {var}"]
    for d in reversed(dims[1:]):
        lines += [f"{indent}i{d} = r % n{d}", f"{indent}r = r // n{d}"]
    lines.append(f"{indent}i{dims[0]} = r")
    return lines


def _prod(dims: list) -> str:
    return " * ".join(f"n{d}" for d in dims) or "1"


def _acc_cuda(kind: str, d) -> tuple[str, str, str, str]:
    """(shared array dtype, initial value, next value, combine) of a block reduction; the next
    value is a template over {acc} and {v}, the combine one over {a} and {b}."""
    floating = d.is_floating_point
    wide = "np.float64" if floating else "np.int64"
    sh = "numba.float64" if floating else "numba.int64"
    if kind in ("sum", "mean"):
        return sh, f"{wide}(0)", f"{{acc}} + {wide}({{v}})", "{a} + {b}"
    if kind in ("max", "min"):
        if floating:
            init = "-math.inf" if kind == "max" else "math.inf"
        else:
            init = str(-(2**63)) if kind == "max" else str(2**63 - 1)
        if not floating:
            return sh, f"{wide}({init})", f"{kind}({{acc}}, {wide}({{v}}))", f"{kind}({{a}}, {{b}})"
        cmp = ">" if kind == "max" else "<"  # a NaN wins, as in numpy and PyTorch
        v = f"{wide}({{v}})"
        return (sh, f"{wide}({init})", f"({v} if ({v} {cmp} {{acc}} or {v} != {v}) else {{acc}})",
                f"({{b}} if ({{b}} {cmp} {{a}} or {{b}} != {{b}}) else {{a}})")
    pick = "min" if kind == "all" else "max"
    init = "1" if kind == "all" else "0"
    return (
        "numba.int64",
        f"np.int64({init})",
        f"{pick}({{acc}}, np.int64(1 if {{v}} else 0))",
        f"{pick}({{a}}, {{b}})",
    )


# --------------------------------------------------------------------------- loop kernels
def loop_source(step: Step) -> tuple[str, str]:
    """(header comment, body) of a loop step's @cuda.jit kernel; the function is KNAME."""
    K = _sizes()
    loop = codegen.loop_shape(step)
    r = len(loop)
    arrays, scalars, name, oname = codegen.loop_names(step)
    outs = step.outputs
    red_ids = {n.id for n in step.reductions}
    R, _ = codegen.reduce_layout(step)

    chain = []  # loads, the op chain and elementwise stores, for one loop element
    for k, n in enumerate(arrays):
        chain.append(f"x{k} = a{k}[{codegen._index(codegen.padded(n.shape, r), loop)}]")
    for n in step.nodes:
        if n.id not in red_ids:
            chain.append(f"{name[n.id]} = {codegen._expr(n, name)}")
    for n in outs:
        if n.id not in red_ids:
            chain.append(
                f"{oname[n.id]}[{codegen._index(codegen.padded(n.shape, r), loop)}] = {name[n.id]}"
            )

    params = [f"n{d}" for d in range(r)] + [f"a{k}" for k in range(len(arrays))]
    params += [f"s{k}" for k in range(len(scalars))] + [f"o{k}" for k in range(len(outs))]
    body = ["@cuda.jit(cache=True)", f"def KNAME({', '.join(params)}):"]
    ind = "    "
    if not step.reductions:
        body.append(
            f"{ind}for i in range(cuda.grid(1), {_prod(list(range(r)))}, cuda.gridsize(1)):"
        )
        body += _unravel(list(range(r)), "i", ind * 2)
        body += [ind * 2 + line for line in chain]
    else:
        kept = [d for d in range(r) if d not in R]
        red = list(R)
        accs = [_acc_cuda(n.op.lower, n.ins[0].dtype) for n in step.reductions]
        for k, (sh, _, _, _) in enumerate(accs):
            body.append(f"{ind}sh{k} = cuda.shared.array({K.RED_THREADS}, {sh})")
        body.append(f"{ind}tid = cuda.threadIdx.x")
        body.append(f"{ind}for k in range(cuda.blockIdx.x, {_prod(kept)}, cuda.gridDim.x):")
        lv = ind * 2
        body += _unravel(kept, "k", lv)
        for k, (_, init, _, _) in enumerate(accs):
            body.append(f"{lv}acc{k} = {init}")
        body.append(f"{lv}for j in range(tid, {_prod(red)}, {K.RED_THREADS}):")
        body += _unravel(red, "j", lv + ind)
        body += [lv + ind + line for line in chain]
        for k, n in enumerate(step.reductions):
            _, _, nxt, _ = accs[k]
            v = name[n.ins[0].id]
            body.append(f"{lv}{ind}acc{k} = {nxt.format(acc=f'acc{k}', v=v)}")
        for k in range(len(accs)):
            body.append(f"{lv}sh{k}[tid] = acc{k}")
        body.append(f"{lv}cuda.syncthreads()")
        body.append(f"{lv}s = {K.RED_THREADS // 2}")
        body.append(f"{lv}while s > 0:")
        body.append(f"{lv}{ind}if tid < s:")
        for k, (_, _, _, comb) in enumerate(accs):
            c = comb.format(a=f"sh{k}[tid]", b=f"sh{k}[tid + s]")
            body.append(f"{lv}{ind * 2}sh{k}[tid] = {c}")
        body.append(f"{lv}{ind}cuda.syncthreads()")
        body.append(f"{lv}{ind}s //= 2")
        body.append(f"{lv}if tid == 0:")
        for k, n in enumerate(step.reductions):
            fin = f"sh{k}[0]"
            if n.op.lower == "mean":
                fin = f"{fin} / ({_prod(red)})"
            idx = codegen._index(codegen.padded(n.ins[0].shape, r), loop, R)
            body.append(f"{lv}{ind}{oname[n.id]}[{idx}] = {codegen._CAST[n.dtype.name]}({fin})")
        body.append(f"{lv}cuda.syncthreads()")
    ops_chain = " -> ".join(n.name for n in step.nodes)
    return f"# ops: {ops_chain}\n", "\n".join(body) + "\n"


def update_source(step: Step) -> tuple[str, str]:
    """An update step's kernel: the op's element function as a device function, and one
    grid-stride loop per parameter over its flat arrays (the driver passes flat views)."""
    elem, params, per, writes = codegen.update_parts(step)
    body = []
    for arrays, scal, flags, _ in per:
        body.append(f"    for i in range(cuda.grid(1), {arrays[0]}.size, cuda.gridsize(1)):")
        body.append(f"        r = ELEM({', '.join(a + '[i]' for a in arrays)}, {', '.join(scal + flags)})")
        body += [f"        {arrays[j]}[i] = r[{j}]" for j in writes]
    src = (
        "@cuda.jit(device=True)\n" + elem + "\n\n@cuda.jit(cache=True)\n"
        f"def KNAME({', '.join(params)}):\n" + "\n".join(body) + "\n"
    )
    (n,) = step.nodes
    return f"# ops: {n.name} over {n.attrs['n']} parameters\n", src


# --------------------------------------------------------------------------- extern kernels
def matmul_source(dtype, transpose_b: bool) -> tuple[str, str]:
    """A tiled shared-memory matmul o[z] = a[z] @ b[z] (b[z].T when transpose_b), batch on z.

    a is (Ba, M, K), b is (Bb, K, N) or (Bb, N, K), o is (B, M, N); Ba, Bb are B or 1. Blocks
    walk the output tiles in a block-stride loop, so any grid size is correct."""
    K = _sizes()
    if dtype.name not in ("float32", "float64", "int64", "int32"):
        raise CompileError(f"matmul on cuda: dtype {dtype.name} is not supported")
    T, nt, cast = K.TILE, _NUMBA_TYPE[dtype.name], codegen._CAST[dtype.name]
    if transpose_b:  # coalesced loads along K; the tile is stored transposed
        load_b = [
            "wr = tc * T + ty",
            "if wr < N and t0 + tx < K:",
            "    sb[tx, ty] = b[zb, wr, t0 + tx]",
            "else:",
            f"    sb[tx, ty] = {cast}(0)",
        ]
    else:
        load_b = [
            "if t0 + ty < K and col < N:",
            "    sb[ty, tx] = b[zb, t0 + ty, col]",
            "else:",
            f"    sb[ty, tx] = {cast}(0)",
        ]
    lines = [
        "@cuda.jit(cache=True)",
        "def KNAME(a, b, o, M, N, K):",
        f"    T = {T}",
        f"    sa = cuda.shared.array(({T}, {T + 1}), {nt})",
        f"    sb = cuda.shared.array(({T}, {T + 1}), {nt})",
        "    tx = cuda.threadIdx.x",
        "    ty = cuda.threadIdx.y",
        "    z = cuda.blockIdx.z",
        "    za = z if a.shape[0] > 1 else 0",
        "    zb = z if b.shape[0] > 1 else 0",
        "    tiles_n = (N + T - 1) // T",
        "    for tile in range(cuda.blockIdx.x, ((M + T - 1) // T) * tiles_n, cuda.gridDim.x):",
        "        tr = tile // tiles_n",
        "        tc = tile % tiles_n",
        "        row = tr * T + ty",
        "        col = tc * T + tx",
        f"        acc = {cast}(0)",
        "        for t0 in range(0, K, T):",
        "            if row < M and t0 + tx < K:",
        "                sa[ty, tx] = a[za, row, t0 + tx]",
        "            else:",
        f"                sa[ty, tx] = {cast}(0)",
    ]
    lines += ["            " + line for line in load_b]
    lines += [
        "            cuda.syncthreads()",
        "            for j in range(T):",
        f"                acc = {cast}(acc + sa[ty, j] * sb[j, tx])",
        "            cuda.syncthreads()",
        "        if row < M and col < N:",
        "            o[z, row, col] = acc",
    ]
    what = "x @ w.T" if transpose_b else "a @ b"
    return f"# matmul ({what}, {dtype.name}, tile {T})\n", "\n".join(lines) + "\n"


def permute_source(dims: tuple) -> tuple[str, str]:
    """A copy kernel o = a.permute(dims), one thread per output element (contiguous result)."""
    r = len(dims)
    inv = [dims.index(p) for p in range(r)]
    a_idx = ", ".join(f"i{inv[p]}" for p in range(r)) + ("," if r == 1 else "")
    o_idx = ", ".join(f"i{d}" for d in range(r)) + ("," if r == 1 else "")
    params = [f"n{d}" for d in range(r)] + ["a", "o"]
    lines = [
        "@cuda.jit(cache=True)",
        f"def KNAME({', '.join(params)}):",
        f"    for i in range(cuda.grid(1), {_prod(list(range(r)))}, cuda.gridsize(1)):",
    ]
    lines += _unravel(list(range(r)), "i", "        ")
    lines.append(f"        o[{o_idx}] = a[{a_idx}]")
    return f"# permute {dims}\n", "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- indexing
@dataclass(frozen=True)
class IndexSpec:
    """x[index] as address arithmetic on the flat (contiguous) x, found once per plan.

    Output element (i0, ..., ir) reads flat x at ``offset + sum(i_d * strides[d])`` plus, for
    each index array j, ``wrap(a_j[b]) * arrays[j][1]``, where b are the output dims ``bdims``
    (the broadcast shape of the index arrays) and wrap adds ``arrays[j][2]`` to a negative
    index. ``strides`` is 0 on ``bdims``. ``arrays[j]`` is (shape padded to len(bdims), stride,
    dim size)."""

    out_shape: tuple
    offset: int
    strides: tuple
    bdims: tuple
    arrays: tuple

    def key(self) -> tuple:
        """What the kernel source depends on (sizes and strides are arguments)."""
        pattern = tuple(tuple(x == 1 for x in a[0]) for a in self.arrays)
        return len(self.out_shape), self.bdims, pattern


def _strided_dummy(shape: tuple):
    """A C-contiguous int8 'array' of `shape` over one byte: numpy's basic indexing on it gives
    the offset and strides of x[index] in elements, without touching (or allocating) memory."""
    base = np.zeros(1, np.int8)
    strides, acc = [], 1
    for x in reversed(shape):
        strides.append(acc)
        acc *= x
    return base, np.lib.stride_tricks.as_strided(base, tuple(shape), tuple(reversed(strides)))


def _basic(view, index: tuple):
    r = view[index]
    return r if isinstance(r, np.ndarray) else view[index + (Ellipsis,)]


def _array_dims(last: tuple, ndim: int) -> list:
    """Where each index array of `last` (no ints, no bools) sits among the dims of
    view[last with arrays as full slices]."""
    consumed = sum(1 for i in last if i is not None and i is not Ellipsis)
    pos, d = [], 0
    for i in last:
        if i is Ellipsis:
            d += ndim - consumed
        elif isinstance(i, np.ndarray):
            pos.append(d)
            d += 1
        else:
            d += 1
    return pos


def index_spec(x_shape: tuple, index: tuple, idx_shapes: list, want: tuple) -> IndexSpec | None:
    """The IndexSpec of x[index] (PyTorch's order, as ops._index_steps applies it), or None
    when the index has bool parts (masks run on the host) or the result is not `want`."""
    if any(type(i) is tuple and i[0] == "b" for i in index):
        return None
    base, dummy = _strided_dummy(tuple(x_shape))
    arrays = tuple(np.broadcast_to(np.zeros((), np.int64), s) for s in idx_shapes)
    view, last = ops._index_steps(dummy, index, arrays)
    if not arrays:
        v2, pos, bshape = _basic(view, last), [], ()
    else:
        v2 = _basic(view, tuple(slice(None) if isinstance(i, np.ndarray) else i for i in last))
        pos = _array_dims(last, view.ndim)
        bshape = tuple(np.broadcast_shapes(*idx_shapes))
    off = v2.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    rest = [d for d in range(v2.ndim) if d not in pos]
    adjacent = pos == list(range(pos[0], pos[0] + len(pos))) if pos else True
    lead = [d for d in rest if d < pos[0]] if pos and adjacent else []
    tail = [d for d in rest if d not in lead]
    dims = [(v2.shape[d], v2.strides[d]) for d in lead] + [(b, 0) for b in bshape]
    dims += [(v2.shape[d], v2.strides[d]) for d in tail]
    out_shape = tuple(x for x, _ in dims)
    if out_shape != tuple(want):
        return None
    nb = len(bshape)
    padded = [(1,) * (nb - len(s)) + tuple(s) for s in idx_shapes]
    arr = tuple((p, v2.strides[d], v2.shape[d]) for p, d in zip(padded, pos, strict=True))
    bdims = tuple(range(len(lead), len(lead) + nb))
    return IndexSpec(out_shape, off, tuple(s for _, s in dims), bdims, arr)


def contiguous_view(spec: IndexSpec) -> bool:
    """Whether x[index] is one contiguous run of x (then it is a device view, not a copy)."""
    if spec.arrays:
        return False
    acc = 1
    for x, st in reversed(list(zip(spec.out_shape, spec.strides, strict=True))):
        if x != 1 and st != acc:
            return False
        acc *= x
    return True


def index_source(spec: IndexSpec, mode: str, cast: str = "") -> tuple[str, str]:
    """A kernel over the elements of x[index], one thread each (grid-stride): ``gather``
    (o[i] = x[p], getitem), ``add`` (atomic o[p] += g[i], index_grad: repeated indices
    accumulate) or ``put`` (o[p] = v[i], index_put; v is ``vs``, a scalar, when the
    ``cast`` template has no index). Arrays are flat except the index arrays and put's v."""
    r = len(spec.out_shape)
    dims = list(range(r))
    params = [f"n{d}" for d in dims] + [f"s{d}" for d in dims] + ["off", "x", "o"]
    for j in range(len(spec.arrays)):
        params += [f"a{j}", f"t{j}", f"m{j}"]
    if mode == "put":
        params.append("v")
    lines = ["@cuda.jit(cache=True)", f"def KNAME({', '.join(params)}):"]
    lines.append(f"    for i in range(cuda.grid(1), {_prod(dims)}, cuda.gridsize(1)):")
    ind = "        "
    lines += _unravel(dims, "i", ind)
    terms = ["off"] + [f"i{d} * s{d}" for d in dims if d not in spec.bdims]
    lines.append(f"{ind}p = {' + '.join(terms)}")
    for j, (shape, _, _) in enumerate(spec.arrays):
        idx = [("0" if x == 1 else f"i{b}") for x, b in zip(shape, spec.bdims, strict=True)]
        lines.append(f"{ind}q = a{j}[{', '.join(idx or ['0'])},]")
        lines.append(f"{ind}p += (q + m{j} if q < 0 else q) * t{j}")
    if mode == "gather":
        lines.append(f"{ind}o[i] = x[p]")
    elif mode == "add":
        lines.append(f"{ind}cuda.atomic.add(o, p, x[i])")
    else:
        lines.append(f"{ind}o[p] = {cast}")
    head = f"# index {mode}: rank {r}, index dims {spec.bdims}, {len(spec.arrays)} index arrays\n"
    return head, "\n".join(lines) + "\n"


def put_value(v, out_shape: tuple, dtype) -> tuple[str, tuple | None]:
    """index_put's value read inside the kernel: a cast of the scalar, or of v broadcast to
    the indexed shape (v passed reshaped to the padded shape that returns)."""
    c = codegen._CAST[dtype.name]
    if v.op == "scalar":
        return f"{c}(v)", None
    r = len(out_shape)
    if r == 0:
        return f"{c}(v[0])", (1,)
    p = codegen.padded(v.shape, r)
    return f"{c}(v[{codegen._index(p, tuple(out_shape))}])", p


def cat_source(dtype) -> tuple[str, str]:
    """Copy one input into its slab of cat's output, seen as (outer, dim, inner) blocks."""
    c = codegen._CAST[dtype.name]
    lines = [
        "@cuda.jit(cache=True)",
        "def KNAME(n0, n1, n2, a, o, start):",
        "    for i in range(cuda.grid(1), n0 * n1 * n2, cuda.gridsize(1)):",
        *_unravel([0, 1, 2], "i", "        "),
        f"        o[i0, start + i1, i2] = {c}(a[i0, i1, i2])",
    ]
    return f"# cat into {dtype.name}\n", "\n".join(lines) + "\n"


def argreduce_source(kind: str, dtype) -> tuple[str, str]:
    """argmax/argmin over the middle dim of x seen as (outer, dim, inner): one block per kept
    element, threads stride over the dim keeping (best value, first index), then a shared-memory
    tree that keeps the lower index on ties (PyTorch's rule; NaN counts as the extreme)."""
    K = _sizes()
    T = K.RED_THREADS
    floating = dtype.is_floating_point
    wide, sh = ("np.float64", "numba.float64") if floating else ("np.int64", "numba.int64")
    better = f"arg_better_{kind}"
    lines = [
        "@cuda.jit(cache=True)",
        "def KNAME(n0, n1, n2, a, o):",
        f"    shv = cuda.shared.array({T}, {sh})",
        f"    shi = cuda.shared.array({T}, numba.int64)",
        "    tid = cuda.threadIdx.x",
        "    for k in range(cuda.blockIdx.x, n0 * n2, cuda.gridDim.x):",
        "        i0 = k // n2",
        "        i2 = k % n2",
        f"        bv = {wide}(0)",
        "        bi = -1",
        f"        for j in range(tid, n1, {T}):",
        f"            w = {wide}(a[i0, j, i2])",
        f"            if {better}(bv, bi, w, j):",
        "                bv = w",
        "                bi = j",
        "        shv[tid] = bv",
        "        shi[tid] = bi",
        "        cuda.syncthreads()",
        f"        s = {T // 2}",
        "        while s > 0:",
        f"            if tid < s and {better}(shv[tid], shi[tid], shv[tid + s], shi[tid + s]):",
        "                shv[tid] = shv[tid + s]",
        "                shi[tid] = shi[tid + s]",
        "            cuda.syncthreads()",
        "            s //= 2",
        "        if tid == 0:",
        "            o[i0, i2] = shi[0]",
        "        cuda.syncthreads()",
    ]
    return f"# {kind} index ({dtype.name})\n", "\n".join(lines) + "\n"


def three_blocks(shape: tuple, dim: int | None) -> tuple[int, int, int]:
    """shape seen as (outer, shape[dim], inner); dim None flattens everything into the middle."""
    if dim is None:
        return 1, math.prod(shape), 1
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1 :])


def node_index_spec(n) -> IndexSpec | None:
    """The IndexSpec of an indexing node (getitem, index_grad, index_put), or None (host)."""
    name = n.op.name
    if name == "getitem":
        base, idx, want = n.ins[0].shape, n.ins[1:], n.shape
    elif name == "index_grad":
        base, idx, want = n.attrs["shape"], n.ins[1:], n.ins[0].shape
    else:
        base, idx, want = n.shape, n.ins[2:], None
    if any(i.dtype is None or i.dtype.name == "bool" for i in idx):
        return None
    if want is None:  # index_put: x[index]'s shape is what op.infer of getitem says
        getitem = ops.REGISTRY["getitem"]
        want = getitem.infer((n.ins[0],) + tuple(idx), {"index": n.attrs["index"]})[0]
    try:
        return index_spec(tuple(base), n.attrs["index"], [tuple(i.shape) for i in idx], want)
    except (IndexError, ValueError, TypeError):
        return None


def extern_source(n) -> tuple[str, str] | None:
    """The kernel of an extern node, or None: no kernel (views, the host round trips)."""
    name = n.op.name
    if name in MATMULS:
        views = matmul_views(n)
        return matmul_source(n.dtype, views[3]) if views is not None else None
    if name in PERMUTES:
        return permute_source(tuple(n.attrs["dims"]))
    if name in INDEXING:
        spec = node_index_spec(n)
        if spec is None or (name == "getitem" and contiguous_view(spec)):
            return None
        if name == "getitem":
            return index_source(spec, "gather")
        if name == "index_grad":
            ok = n.dtype.name in ("float32", "float64", "int32", "int64")
            return index_source(spec, "add") if ok else None
        cast, _ = put_value(n.ins[1], spec.out_shape, n.dtype)
        return index_source(spec, "put", cast)
    if name == "cat":
        return cat_source(n.dtype)
    if name in ARGREDUCE:
        return argreduce_source(name[3:], n.ins[0].dtype)
    return None


# --------------------------------------------------------------------------- driver
def matmul_views(n) -> tuple | None:
    """How a matmul node runs as a batched 3-D kernel: (a shape, b shape, out shape, transpose_b,
    batch), or None when it needs the host (batch dims that broadcast partially)."""
    x, y = n.ins
    if n.op.name == "mm_t":
        M = math.prod(x.shape[:-1])
        return (1, M, x.shape[-1]), (1,) + tuple(y.shape), (1, M, y.shape[0]), True, 1
    sa, sb = tuple(x.shape), tuple(y.shape)
    a2 = (1,) + sa if len(sa) == 1 else sa
    b2 = sb + (1,) if len(sb) == 1 else sb
    batch = tuple(n.shape[: max(len(a2), len(b2)) - 2])
    B = math.prod(batch)

    def flat(s):
        lead = s[:-2]
        nb = math.prod(lead)
        if nb != 1 and tuple((1,) * (len(batch) - len(lead)) + lead) != batch:
            return None
        return (nb,) + s[-2:]

    a3, b3 = flat(a2), flat(b2)
    if a3 is None or b3 is None:
        return None
    return a3, b3, (B, a3[1], b3[2]), False, B


def driver_source(plan: Plan, kernels: dict, layout: dict) -> tuple[str, dict]:
    """Python source of run(A, S, B) -> outputs, launching the plan's kernels on the device.

    ``kernels`` maps step index -> kernel name (loops, matmuls, permutes); ``layout`` maps node
    id -> preallocated device buffer slot in B. Values in the driver are raw device arrays;
    outputs are wrapped as CudaArrays. Launch sizes are constants: a plan has fixed shapes."""
    from . import device_array as device
    from . import kernellib_cuda as K

    env: dict = {"W": device.CudaArray, "E": _alloc, "C": _copy, "U": _unwrap, "D": _on_device}
    lines = codegen.driver_head(plan, "U(A[{}])")
    leaving = set(plan.outputs)

    def buf(n) -> str:
        if n.id in layout:
            return f"B[{layout[n.id]}]"
        return f"E({tuple(n.shape)!r}, {n.dtype.np.name!r})"

    def view(v: str, shape: tuple, want: tuple) -> str:
        return v if tuple(shape) == tuple(want) else f"{v}.reshape({tuple(want)!r})"

    for s in plan.steps:
        if s.kind == "loop":
            loop = codegen.loop_shape(s)
            r = len(loop)
            args = [str(x) for x in loop]
            for n in s.inputs:
                if n.op != "scalar":
                    args.append(view(f"v{n.id}", n.shape, codegen.padded(n.shape, r)))
            args += [f"v{n.id}" for n in s.inputs if n.op == "scalar"]
            red = {n.id for n in s.reductions}
            R, _ = codegen.reduce_layout(s)
            for n in s.outputs:
                lines.append(f"    v{n.id} = {buf(n)}")
                if n.id in red:
                    p = codegen.padded(n.ins[0].shape, r)
                    p = tuple(1 if d in R else x for d, x in enumerate(p))
                else:
                    p = codegen.padded(n.shape, r)
                args.append(view(f"v{n.id}", n.shape, p))
            if s.reductions:
                kept = math.prod(x for d, x in enumerate(loop) if d not in R)
                grid = (min(kept, K.MAX_BLOCKS), K.RED_THREADS) if kept else None
            else:
                numel = math.prod(loop)
                grid = K.launch_1d(numel) if numel else None
            chain = " -> ".join(x.name for x in s.nodes)
            if grid is not None:
                lines.append(
                    f"    {kernels[s.index]}[{grid[0]}, {grid[1]}]({', '.join(args)})  # {chain}"
                )
        elif s.kind == "update":
            (n,) = s.nodes
            numel = max(math.prod(i.shape) for i in n.ins if i.op != "scalar")
            args = [f"v{i.id}" if i.op == "scalar" else f"v{i.id}.reshape({math.prod(i.shape)})"
                    for i in n.ins]
            if numel:
                blocks, threads = K.launch_1d(numel)
                lines.append(f"    {kernels[s.index]}[{blocks}, {threads}]({', '.join(args)})  # {n.name}")
            lines.append(f"    v{n.id} = None")
        elif s.kind == "extern":
            (n,) = s.nodes
            name = n.op.name
            ins = [f"v{i.id}" for i in n.ins]
            if name == "updated":  # the update step wrote the array in place
                lines.append(f"    v{n.id} = v{n.ins[1].id}")
            elif name in MATMULS and s.index in kernels:
                a3, b3, o3, _, batch = matmul_views(n)
                x, y = n.ins
                lines.append(f"    v{n.id} = {buf(n)}")
                M, N, Kd = o3[1], o3[2], a3[2]
                grid = (min(-(-N // K.TILE) * -(-M // K.TILE), K.MAX_BLOCKS), 1, batch)
                if M and N:
                    lines.append(
                        f"    {kernels[s.index]}[{grid}, ({K.TILE}, {K.TILE})]("
                        f"{view(ins[0], x.shape, a3)}, {view(ins[1], y.shape, b3)}, "
                        f"{view(f'v{n.id}', n.shape, o3)}, {M}, {N}, {Kd})  # {name}"
                    )
                if Kd == 0:
                    lines.append(f"    W(v{n.id}).fill(0)")
            elif name in VIEW_RESHAPES:
                copy = n.id in leaving  # what leaves never aliases an input (as on the CPU)
                v = f"{ins[0]}.reshape({tuple(n.shape)!r})"
                lines.append(f"    v{n.id} = {f'C({v})' if copy else v}  # {name}")
            elif name in PERMUTES and s.index in kernels:
                lines.append(f"    v{n.id} = {buf(n)}")
                numel = math.prod(n.shape)
                if numel:
                    blocks, threads = K.launch_1d(numel)
                    sizes = ", ".join(str(x) for x in n.shape)
                    launch = f"{kernels[s.index]}[{blocks}, {threads}]"
                    lines.append(f"    {launch}({sizes}, {ins[0]}, v{n.id})  # {name}")
            elif name in INDEXING and (s.index in kernels or name == "getitem"):
                spec = node_index_spec(n)
                if spec is not None:
                    copy = n.id in leaving
                    lines += _index_lines(n, spec, kernels.get(s.index), buf(n), copy)
                else:
                    lines += _host_lines(n, s.index, env)
            elif name == "cat" and s.index in kernels:
                lines.append(f"    v{n.id} = {buf(n)}")
                lines += _cat_lines(n, kernels[s.index])
            elif name in ARGREDUCE and s.index in kernels:
                lines.append(f"    v{n.id} = {buf(n)}")
                lines += _argreduce_lines(n, kernels[s.index])
            else:
                lines += _host_lines(n, s.index, env)
        else:
            raise CompileError(
                f"the CUDA renderer does not know plan step kind {s.kind!r} (step {s.index}: "
                f"{', '.join(x.name for x in s.nodes)}); compile this step with backend='cpu'"
            )
    for dst, src in codegen.copied_mutations(plan):
        lines.append(f"    v{dst}.copy_to_device(v{src})")
    lines.append(f"    return [{', '.join(f'W(v{i})' for i in plan.outputs)}]")
    return "\n".join(lines) + "\n", env


def _host_lines(n, index: int, env: dict) -> list:
    """An extern op with no device kernel: a call of its numpy kernel on host copies."""
    fname = f"X{index}"
    env[fname] = host_extern(n.op, n.attrs, n.dtype)
    ins = ", ".join(f"v{i.id}" for i in n.ins)
    return [f"    v{n.id} = {fname}({ins})  # {n.op.name}: host round trip"]


def _launch(kernel: str, numel: int) -> str:
    from . import kernellib_cuda as K

    blocks, threads = K.launch_1d(numel)
    return f"{kernel}[{blocks}, {threads}]"


def _flat(v: str, shape: tuple) -> str:
    return f"{v}.reshape({math.prod(shape)})"  # a 0-d array has one element


def _index_lines(n, spec: IndexSpec, kernel: str | None, buf: str, copy: bool) -> list:
    """Driver lines of getitem / index_grad / index_put on the device (see index_source)."""
    name, out = n.op.name, f"v{n.id}"
    numel = math.prod(spec.out_shape)
    if kernel is None:  # getitem of one contiguous run: a device view
        x = n.ins[0]
        v = f"{_flat(f'v{x.id}', x.shape)}[{spec.offset}:{spec.offset + numel}]"
        v = f"{v}.reshape({tuple(n.shape)!r})"
        return [f"    {out} = {f'C({v})' if copy else v}  # {name}: view"]
    lines = [f"    {out} = {buf}"]
    first = {"getitem": 1, "index_grad": 1, "index_put": 2}[name]
    args = [str(x) for x in spec.out_shape] + [str(x) for x in spec.strides] + [str(spec.offset)]
    if name == "getitem":
        args += [_flat(f"v{n.ins[0].id}", n.ins[0].shape), _flat(out, n.shape)]
    elif name == "index_grad":
        lines.append(f"    W({out}).fill(0)")
        args += [_flat(f"v{n.ins[0].id}", n.ins[0].shape), _flat(out, n.shape)]
    else:
        lines.append(f"    {out}.copy_to_device(v{n.ins[0].id})")
        args += [_flat(out, n.shape)] * 2
    for i, (shape, stride, size) in zip(n.ins[first:], spec.arrays, strict=True):
        args += [f"D(v{i.id}).reshape({shape or (1,)!r})", str(stride), str(size)]
    if name == "index_put":
        v = n.ins[1]
        _, pad = put_value(v, spec.out_shape, n.dtype)
        args.append(f"v{v.id}" if pad is None else f"D(v{v.id}).reshape({pad!r})")
    if numel:
        lines.append(f"    {_launch(kernel, numel)}({', '.join(args)})  # {name}")
    return lines


def _cat_lines(n, kernel: str) -> list:
    """One copy launch per input into its slab of the preallocated output."""
    dim, lines, start = n.attrs["dim"], [], 0
    total = n.shape[dim]
    for x in n.ins:
        a, m, c = three_blocks(tuple(x.shape), dim)
        o = f"v{n.id}.reshape({(a, total, c)!r})"
        if a * m * c:
            src = f"v{x.id}.reshape({(a, m, c)!r})"
            launch = _launch(kernel, a * m * c)
            lines.append(f"    {launch}({a}, {m}, {c}, {src}, {o}, {start})  # cat")
        start += m
    return lines


def _argreduce_lines(n, kernel: str) -> list:
    from . import kernellib_cuda as K

    x = n.ins[0]
    dim = n.attrs["dim"]
    dim = None if dim is None else dim % max(len(x.shape), 1)
    a, m, c = three_blocks(tuple(x.shape), dim) if x.shape else (1, 1, 1)
    if not a * c:
        return []
    grid = (min(a * c, K.MAX_BLOCKS), K.RED_THREADS)
    src = f"v{x.id}.reshape({(a, m, c)!r})"
    out = f"v{n.id}.reshape({(a, c)!r})"
    return [f"    {kernel}[{grid[0]}, {grid[1]}]({a}, {m}, {c}, {src}, {out})  # {n.op.name}"]


def _on_device(a):
    """An index (or index_put value) array on the device: a CPU one is uploaded (counted), as
    the user kept it on the host; a device one passes as it is."""
    from . import device_array as device

    return device.to_device(a) if isinstance(a, np.ndarray) else a


def _unwrap(x):
    """The raw device array of a CudaArray input (a CPU index array passes as it is)."""
    return x.a if hasattr(x, "a") else x


def _alloc(shape: tuple, dtype: str):
    from . import device_array as device

    return device.empty(shape, dtype).a


def _copy(a):
    from . import device_array as device

    out = device.empty(tuple(a.shape), a.dtype).a
    if out.size:
        out.copy_to_device(a)
    return out


def host_extern(op: ops.Op, attrs: dict, dtype):
    """An extern op with no device kernel: its numpy kernel on host copies, result uploaded."""
    from . import device_array as device

    call = codegen._extern(op, attrs, dtype)

    def run(*args):
        host = [device.to_host(a) if hasattr(a, "copy_to_host") else a for a in args]
        return device.to_device(call(*host))

    run.__name__ = f"host_{op.name}"
    return run
