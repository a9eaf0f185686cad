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
  kernel. Other extern ops (indexing, gathers, cat, argmax, index_put) run their numpy kernel
  on a host copy and upload the result: a documented host round trip.

Kernel source, like the CPU renderer's, depends only on ops, dtypes, rank and broadcast pattern
(sizes are arguments), so kernels are shared between graphs and cached on disk by cache.py.
"""

from __future__ import annotations

import math

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
        return sh, f"{wide}({init})", f"{kind}({{acc}}, {wide}({{v}}))", f"{kind}({{a}}, {{b}})"
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
    arrays = [n for n in step.inputs if n.op != "scalar"]
    scalars = [n for n in step.inputs if n.op == "scalar"]
    outs = step.outputs
    red_ids = {n.id for n in step.reductions}
    R, _ = codegen.reduce_layout(step)

    name = {}
    for k, n in enumerate(arrays):
        name[n.id] = f"x{k}"
    for k, n in enumerate(scalars):
        name[n.id] = f"s{k}"
    for j, n in enumerate(step.nodes):
        name[n.id] = f"t{j}"
    oname = {n.id: f"o{k}" for k, n in enumerate(outs)}

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

    env: dict = {"W": device.CudaArray, "E": _alloc, "C": _copy, "U": _unwrap}
    lines = ["def run(A, S, B):"]
    leaving = set(plan.outputs)
    for n in plan.nodes:
        if n.op == "input":
            lines.append(f"    v{n.id} = U(A[{n.attrs['k']}])")
        elif n.op == "scalar":
            lines.append(f"    v{n.id} = S[{n.attrs['k']}]")

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
            else:
                fname = f"X{s.index}"
                env[fname] = host_extern(n.op, n.attrs, n.dtype)
                lines.append(f"    v{n.id} = {fname}({', '.join(ins)})  # {name}: host round trip")
        else:
            raise CompileError(
                f"the CUDA renderer does not know plan step kind {s.kind!r} (step {s.index}: "
                f"{', '.join(x.name for x in s.nodes)}); compile this step with backend='cpu'"
            )
    for dst, src in codegen.copied_mutations(plan):
        lines.append(f"    v{dst}.copy_to_device(v{src})")
    lines.append(f"    return [{', '.join(f'W(v{i})' for i in plan.outputs)}]")
    return "\n".join(lines) + "\n", env


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
