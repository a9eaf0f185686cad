"""tensor: the Tensor, the op dispatcher, creation functions and the random generator.

A Tensor points at a Store, which holds its value: a numpy array in eager mode, or a lazy IR
node while ``fusegrad.compile`` traces. Aliases (``.data``, ``detach()``) share the Store, so an
in-place write through one is seen through the others in both modes. Every op goes through
``apply``: eager mode runs the op's numpy kernel now; a tracer, when one is active, records it.
Autograd attaches the same Node either way.
"""

from __future__ import annotations

import builtins
import math
import threading
import weakref
from collections import namedtuple

import numpy as np

from . import autograd, device_array as _device, dtypes, ops
from .autograd import GRAD, Node
from .device_array import CudaArray
from .dtypes import bool_, float32, float64, int32, int64
from .errors import op_error, user_line


class _TracerSlot(list):
    """``TRACER[0]``: the active tracer, or None in eager mode. Setting it notes the thread that
    traces, so that tensor math other threads do meanwhile stays eager."""

    __slots__ = ("owner",)

    def __setitem__(self, i, tracer) -> None:
        self.owner = threading.get_ident()
        super().__setitem__(i, tracer)


TRACER = _TracerSlot([None])  # fusegrad.compile sets TRACER[0] while it traces a call
TRACER.owner = None
_get_ident = threading.get_ident
_NP2FG = {d.np: d for d in dtypes.ALL}
_ZERO_DIM = {d.np: f"0-d {d.name}" for d in dtypes.ALL}  # dtype-plan keys of zero-dim tensors
_new = object.__new__
_NP_ERR, _NP_QUIET = ops.NP_ERRSTATE, ops.NP_QUIET


class Store:
    """The value behind a Tensor and its aliases: a numpy array, or a lazy node when traced."""

    __slots__ = ("v", "version", "__weakref__")

    def __init__(self, v):
        self.v = v
        self.version = 0


class Size(tuple):
    """A tensor's shape: a tuple that prints like PyTorch's torch.Size."""

    def __repr__(self) -> str:
        return f"fusegrad.Size({list(self)})"

    def numel(self) -> int:
        return math.prod(self)


class device:
    __slots__ = ("type", "index")

    def __init__(self, spec="cpu", index=None):
        if isinstance(spec, device):
            spec, index = spec.type, spec.index
        typ, _, idx = str(spec).partition(":")
        if typ not in ("cpu", "cuda"):
            raise RuntimeError(f"Expected one of cpu, cuda device type at start of device string: {spec}")
        self.type = typ
        self.index = int(idx) if idx else index

    def __repr__(self) -> str:
        return f"device(type='{self.type}')" if self.index is None else f"device(type='{self.type}', index={self.index})"

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __eq__(self, other) -> bool:
        other = device(other) if isinstance(other, str) else other
        return isinstance(other, device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self) -> int:
        return hash((self.type, self.index))


CPU = device("cpu")
CUDA = device("cuda", 0)


def _place(arr: np.ndarray, dev, value=None):
    """arr where `dev` asks for it: itself on the CPU, a device array on CUDA (filled on the
    device when `value` says what arr holds, so zeros/ones/full copy nothing)."""
    if dev is None or dev is CPU or device(dev).type == "cpu":
        return arr
    from . import cuda

    if not cuda.is_available():
        raise cuda.unavailable_error(f"device={str(dev)!r}")
    if value is not None:
        return _device.full(arr.shape, value, arr.dtype)
    return _device.upload(arr)


def _lazy_device(node) -> device:
    """The device of a lazy value while tracing: that of the graph input it derives from
    (found by walking the graph, so only once some CUDA tensor exists)."""
    if not _device.USED[0]:
        return CPU
    while node.op != "input":
        node = next(i for i in node.ins if i.op != "scalar")
    return CUDA if type(TRACER[0].arrays[node.attrs["k"]]) is CudaArray else CPU


# --------------------------------------------------------------------------- dispatch
def _describe(args) -> str:
    parts = []
    for a in args:
        if isinstance(a, Tensor):
            parts.append(f"Tensor{tuple(a._s.v.shape)}:{a.dtype.name}")
        else:
            parts.append(repr(a))
    return ", ".join(parts)


def _eager(op, args, attrs) -> Tensor:
    """Run op's numpy kernel now. Elementwise ops cast their inputs and result by PyTorch's
    promotion rule, looked up per (op, input dtypes) so the rule runs once, not per call."""
    if _device.USED[0] and any(isinstance(a, Tensor) and type(a._s.v) is CudaArray for a in args):
        return _eager_cuda(op, args, attrs)
    kind = op.kind
    if kind == "elementwise":
        arrays, key = [], []
        for a in args:
            if isinstance(a, Tensor):
                v = a._s.v
                arrays.append(v)
                key.append(v.dtype if v.ndim else _ZERO_DIM[v.dtype])
            else:
                arrays.append(a)
                key.append(type(a))
        key = tuple(key)
        plan = op.plans.get(key)
        if plan is None:
            plan = op.plans[key] = _dtype_plan(op, args)
        casts, od = plan
        for i, d in casts:
            arrays[i] = arrays[i].astype(d)
    else:
        arrays = []
        for a in args:
            arrays.append(a._s.v if isinstance(a, Tensor) else a)
        od = None
    if kind == "view":  # views keep the dtype and never warn
        try:
            r = op.eager(*arrays, **attrs)
        except (ValueError, TypeError, IndexError) as e:
            raise _op_error(op, args, attrs, e) from None
        return _wrap(r if type(r) is np.ndarray else np.asarray(r))
    tok = _NP_ERR.set(_NP_QUIET)  # PyTorch returns inf/nan silently; numpy would warn
    try:
        r = op.eager(*arrays, **attrs)
        if type(r) is not np.ndarray:
            r = np.asarray(r)
        rd = r.dtype
        if od is not None:
            if rd is not od and rd != od:
                r = r.astype(od)
        elif rd not in _NP2FG:
            r = r.astype(_normalize_np_dtype(rd))
    except (ValueError, TypeError, IndexError) as e:
        raise _op_error(op, args, attrs, e) from None
    finally:
        _NP_ERR.reset(tok)
    return _wrap(r)


def _eager_cuda(op, args, attrs):
    """An eager op on CUDA tensors: a cached one-op plan through the CUDA renderer."""
    from . import runtime_cuda

    try:
        return _wrap(runtime_cuda.eager(op, args, attrs))
    except (ValueError, TypeError, IndexError) as e:
        raise _op_error(op, args, attrs, e) from None


def _wrap(arr: np.ndarray) -> Tensor:
    """A new tensor with its own Store (the hot path of every op; no __init__ calls)."""
    s = _new(Store)
    s.v = arr
    s.version = 0
    t = _new(Tensor)
    t._s = s
    t.requires_grad = False
    t._grad = None
    t.grad_fn = None
    t._retains = False
    return t


def _dtype_plan(op, args) -> tuple:
    """(casts, output numpy dtype) of an elementwise op: casts are (position, numpy dtype) of
    the tensor inputs whose dtype differs from the compute dtype."""
    cd, od = op.result_dtype(tuple(ops.part(a) for a in args))
    casts = ()
    if cd is not None:
        casts = tuple(
            (i, cd.np) for i, a in enumerate(args) if isinstance(a, Tensor) and a.dtype is not cd
        )
    return casts, (None if od is None else od.np)


def _op_error(op, args, attrs, e) -> Exception:
    """The error of a failed op, naming it, its arguments and the user's line: a RuntimeError
    as PyTorch raises, or an IndexError for an index out of range (as PyTorch, and Python code
    that catches IndexError, expect)."""
    msg = str(e)
    try:  # the shape rule words the problem as PyTorch does, identically in traced mode
        op.infer(args, attrs)
    except (ValueError, TypeError, IndexError) as rule_error:
        msg = str(rule_error)
    except Exception:
        pass
    cls = IndexError if isinstance(e, IndexError) else RuntimeError
    return op_error(op.name, f"{msg}; got ({_describe(args)})", cls)


def apply(op, args: tuple, attrs: dict) -> Tensor:
    """Run (eager) or record (traced) one op, and attach its autograd node."""
    tr = TRACER[0]
    if tr is None or TRACER.owner != _get_ident():  # tracer(), inlined: this runs per op
        tr = None
        out = _eager(op, args, attrs)
    else:
        try:
            out = tr.record(op, args, attrs)
        except (ValueError, TypeError, IndexError) as e:
            raise _op_error(op, args, attrs, e) from None
    if GRAD[0] and op.differentiable:
        for a in args:
            if isinstance(a, Tensor) and a.requires_grad:
                if out.dtype.is_floating_point:
                    _record(op, args, attrs, out)
                    if tr is not None:  # what a remembered backward is checked against
                        tr.made.append((weakref.ref(out.grad_fn), out._s.v.id))
                break
    return out


def tracer():
    """The tracer recording this thread's ops, or None (eager)."""
    tr = TRACER[0]
    return tr if tr is not None and TRACER.owner == _get_ident() else None


def _record(op, args: tuple, attrs: dict, out: Tensor) -> None:
    """Attach the autograd node of one op application to its output."""
    needs, edges, versions = [], [], []
    for a in args:
        if isinstance(a, Tensor):
            versions.append(a._s.version)
            if a.requires_grad:
                needs.append(True)
                edges.append(a.grad_fn or a)  # _edge(a), inlined
                continue
        else:
            versions.append(None)
        needs.append(False)
        edges.append(None)
    node = Node(op, args, attrs, tuple(edges), tuple(needs))
    if op.needs_inputs:
        node.versions = tuple(versions)
    if op.saves_out:
        node.out = _wrap_store(out._s)
    out.requires_grad = True
    out.grad_fn = node


ops.DISPATCH = apply


def update(op, args: tuple, attrs: dict) -> None:
    """Run a multi-tensor in-place update op (an optimizer step over a parameter group).

    The written tensors keep their identity: eager mode writes their arrays, traced mode
    records the op once and rebinds each written tensor to the op's new value of it.
    """
    try:
        tr = tracer()
        if tr is not None:
            tr.record_update(op, args, attrs)
            return
        op.infer(args, attrs)
        if any(isinstance(a, Tensor) and type(a._s.v) is CudaArray for a in args):
            from . import runtime_cuda

            runtime_cuda.eager(op, args, attrs)  # one cached update kernel, in place
        else:
            op.eager(*(a._s.v if isinstance(a, Tensor) else a for a in args), **attrs)
    except (ValueError, TypeError, IndexError) as e:
        raise _op_error(op, args, attrs, e) from None
    for t in op.written_tensors(args, attrs):
        t._s.version += 1


def _edge(a):
    """Where a's gradient goes: its producer node, the leaf itself, or nowhere (None)."""
    if not isinstance(a, Tensor) or not a.requires_grad:
        return None
    return a.grad_fn if a.grad_fn is not None else a


def _wrap_store(store: Store) -> Tensor:
    t = _new(Tensor)
    t._s = store
    t.requires_grad = False
    t._grad = None
    t.grad_fn = None
    t._retains = False
    return t


def _normalize_np_dtype(d) -> np.dtype:
    d = np.dtype(d)
    if d in _NP2FG:
        return d
    if d.kind == "f":
        return np.dtype(np.float32) if d.itemsize < 4 else np.dtype(np.float64)
    if d.kind in "iu":
        return np.dtype(np.int64)
    if d.kind == "b":
        return np.dtype(np.bool_)
    raise TypeError(f"fusegrad does not support numpy dtype {d}")


def _value(t: Tensor) -> np.ndarray:
    """A tensor's numpy array; inside a compiled call this realizes the pending graph."""
    v = t._s.v
    if type(v) is not np.ndarray:
        if type(v) is not CudaArray:
            TRACER[0].realize()
            v = t._s.v
        if type(v) is CudaArray:  # the user asked for values: one device -> host copy
            v = v.host()
    return v


def _scalar_or_tensor(x):
    if isinstance(x, _OPERAND):
        return x
    if isinstance(x, (np.ndarray, np.generic, list, tuple)):
        return tensor(x)
    return x


def _normalize_index(idx) -> tuple[tuple, list]:
    """A static, hashable index (slices as tuples, tensors as 'T') plus the index tensors."""
    if type(idx) is int:
        return (idx,), []
    if not isinstance(idx, tuple):
        idx = (idx,)
    static, tensors = [], []
    for i in idx:
        if isinstance(i, slice):
            static.append(("s", i.start, i.stop, i.step))
        elif i is None or i is Ellipsis:
            static.append(i)
        elif isinstance(i, (bool, np.bool_)):
            static.append(("b", bool(i)))
        elif isinstance(i, (int, np.integer)):
            static.append(int(i))
        elif isinstance(i, Tensor):
            static.append("T")
            tensors.append(i)
        elif isinstance(i, (list, np.ndarray)):
            static.append("T")
            tensors.append(tensor(i))
        else:
            raise IndexError(f"fusegrad: unsupported index {i!r}")
    if TRACER[0] is not None and any(t.dtype is bool_ for t in tensors):
        return _mask_to_positions(static, tensors)
    return tuple(static), tensors


def _mask_to_positions(static: list, tensors: list) -> tuple[tuple, list]:
    """Inside a compiled call, x[mask] has a shape that depends on the mask's values: read the
    mask (a graph break if it is pending) and index with its nonzero positions instead."""
    out_static, out_tensors, it = [], [], iter(tensors)
    for i in static:
        if i != "T":
            out_static.append(i)
            continue
        t = next(it)
        if t.dtype is not bool_:
            out_static.append(i)
            out_tensors.append(t)
            continue
        for pos in np.nonzero(_value(t)):
            out_static.append("T")
            out_tensors.append(_wrap(pos.astype(np.int64)))
    return tuple(out_static), out_tensors


_T_DIMS = ((), (0,), (1, 0))  # t()'s permutation by rank


def _dims(dim, ndim: int):
    """Normalize a reduction's dim argument to a sorted tuple of non-negative ints (or None)."""
    if dim is None:
        return None
    if type(dim) is int and -ndim <= dim < ndim:  # the common case, checked and normalized
        return (dim % ndim,)
    if isinstance(dim, (int, np.integer)):
        dim = (dim,)
    out = []
    for d in dim:
        if not -builtins.max(ndim, 1) <= d < builtins.max(ndim, 1):
            raise IndexError(
                f"Dimension out of range (expected to be in range of [{-builtins.max(ndim, 1)}, "
                f"{builtins.max(ndim, 1) - 1}], but got {d}) (at {user_line()})"
            )
        out.append(d % ndim if ndim else 0)
    return tuple(sorted(set(out))) if ndim else None


def _dim(d: int, ndim: int) -> int:
    if not -ndim <= d < ndim:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-ndim}, {ndim - 1}], but got "
            f"{d}) (at {user_line()})"
        )
    return d % ndim


def _shape_arg(shape) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(map(int, shape))


MinMax = namedtuple("MinMax", ["values", "indices"])


# --------------------------------------------------------------------------- Tensor
class Tensor:
    __slots__ = ("_s", "requires_grad", "_grad", "grad_fn", "_retains", "__weakref__")
    __array_priority__ = 1000
    __array_ufunc__ = None  # numpy defers to our reflected operators

    def __init__(self, *data):
        if len(data) == 1 and not isinstance(data[0], (int, np.integer)):
            arr = _to_array(data[0], float32)
        else:
            arr = np.empty(_shape_arg(data), np.float32)
        self._s = Store(arr)
        self.requires_grad = False
        self._grad = None
        self.grad_fn = None
        self._retains = False

    # ---- metadata
    @property
    def shape(self) -> Size:
        return Size(self._s.v.shape)

    def size(self, dim: int | None = None):
        s = self._s.v.shape
        return Size(s) if dim is None else s[_dim(dim, len(s))]

    @property
    def dtype(self) -> dtypes.dtype:
        v = self._s.v
        return _NP2FG[v.dtype] if type(v) is np.ndarray or type(v) is CudaArray else v.dtype

    @property
    def device(self) -> device:
        v = self._s.v
        if type(v) is np.ndarray:
            return CPU
        return CUDA if type(v) is CudaArray else _lazy_device(v)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def dim(self) -> int:
        return len(self._s.v.shape)

    ndim = property(dim)

    def numel(self) -> int:
        return math.prod(self._s.v.shape)

    nelement = numel

    def element_size(self) -> int:
        return self.dtype.itemsize

    def __len__(self) -> int:
        s = self._s.v.shape
        if not s:
            raise TypeError("len() of a 0-d tensor")
        return s[0]

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def is_contiguous(self) -> bool:
        v = self._s.v
        return v.flags.c_contiguous if type(v) is np.ndarray else True

    def _is_view(self) -> bool:
        v = self._s.v
        if type(v) is np.ndarray or type(v) is CudaArray:
            return v.base is not None
        return not isinstance(v.op, str) and v.op.kind == "view"

    def __hash__(self) -> int:
        return id(self)

    # ---- autograd
    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if not self.is_leaf and not requires_grad:
            raise op_error(
                "requires_grad_", "you can only change requires_grad flags of leaf variables. If "
                "you want to use a computed variable in a subgraph that doesn't require "
                "differentiation use var_no_grad = var.detach().",
            )
        if requires_grad and not self.dtype.is_floating_point:
            raise op_error(
                "requires_grad_", "only Tensors of floating point dtype can require gradients, "
                f"got {self.dtype.name}",
            )
        self.requires_grad = requires_grad
        return self

    @property
    def grad(self) -> Tensor | None:
        return self._grad

    @grad.setter
    def grad(self, g: Tensor | None) -> None:
        """Checked like PyTorch's: a gradient has the tensor's shape and dtype."""
        if g is not None:
            if not isinstance(g, Tensor):
                raise TypeError(
                    f"assigned grad expected to be a Tensor or None but got grad of type "
                    f"{type(g).__name__} (at {user_line()})"
                )
            if g.dtype is not self.dtype:
                raise RuntimeError(
                    f"attempting to assign a gradient with dtype '{g.dtype.name}' to a tensor "
                    f"with dtype '{self.dtype.name}'. The gradient must match the tensor's dtype "
                    f"(at {user_line()})"
                )
            if tuple(g._s.v.shape) != tuple(self._s.v.shape):
                raise RuntimeError(
                    f"attempting to assign a gradient of size '{list(g._s.v.shape)}' to a tensor "
                    f"of size '{list(self._s.v.shape)}'. Please ensure that the gradient and the "
                    f"tensor are the same size (at {user_line()})"
                )
        self._grad = g

    def retain_grad(self) -> None:
        if self.grad_fn is None:
            return
        self._retains = True
        self.grad_fn.retain = weakref.ref(self)

    @property
    def retains_grad(self) -> bool:
        return self._retains

    def detach(self) -> Tensor:
        return _wrap_store(self._s)

    def detach_(self) -> Tensor:
        self.grad_fn = None
        self.requires_grad = False
        return self

    @property
    def data(self) -> Tensor:
        return _wrap_store(self._s)

    @data.setter
    def data(self, other: Tensor) -> None:
        self._s = other._s

    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None) -> None:
        grads = _default_grads([self], [gradient])
        if retain_graph is None:
            retain_graph = create_graph
        if isinstance(inputs, Tensor):
            inputs = [inputs]
        autograd.run_backward([self], grads, retain_graph, create_graph, inputs)

    # ---- conversion
    def numpy(self, *, force: bool = False) -> np.ndarray:
        if self.requires_grad and not force:
            raise RuntimeError(
                "Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() "
                "instead."
            )
        return _value(self)

    def __array__(self, dtype=None, copy=None):
        v = _value(self)
        return v if dtype is None else v.astype(dtype)

    def item(self):
        v = _value(self)
        if v.size != 1:
            raise RuntimeError(
                f"a Tensor with {v.size} elements cannot be converted to Scalar (at {user_line()})"
            )
        return v.item()

    def tolist(self):
        return _value(self).tolist()

    def __bool__(self) -> bool:
        v = _value(self)
        if v.size != 1:
            raise RuntimeError(
                f"Boolean value of Tensor with more than one value is ambiguous (at {user_line()})"
            )
        return bool(v)

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        if self.dtype.is_floating_point or self.numel() != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    def __iter__(self):
        if not self.shape:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(len(self)))

    def to(self, *args, **kwargs) -> Tensor:
        dt, dev = None, None
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, dtypes.dtype):
                dt = a
            elif isinstance(a, (str, device)):
                dev = device(a)
            elif isinstance(a, Tensor):
                dt = a.dtype
        out = self
        if dev is not None and dev.type != self.device.type:
            out = _to_device(self, dev)
        if dt is None or dt is out.dtype:
            return out
        return apply(ops.REGISTRY["cast"], (out,), {"dtype": dt})

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def cuda(self, device=None) -> Tensor:
        return self.to("cuda" if device is None else device)

    def float(self) -> Tensor:
        return self.to(float32)

    def double(self) -> Tensor:
        return self.to(float64)

    def long(self) -> Tensor:
        return self.to(int64)

    def int(self) -> Tensor:
        return self.to(int32)

    def bool(self) -> Tensor:
        return self.to(bool_)

    def type(self, dtype=None):
        if dtype is None:
            return {float32: "fusegrad.FloatTensor", float64: "fusegrad.DoubleTensor",
                    int64: "fusegrad.LongTensor", int32: "fusegrad.IntTensor",
                    bool_: "fusegrad.BoolTensor"}[self.dtype]
        return self.to(dtype)

    # ---- printing
    def __repr__(self) -> str:
        from .printing import tensor_repr

        return tensor_repr(self)

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        if self.dim() == 0 and spec:
            return self.item().__format__(spec)
        return repr(self)

    # ---- elementwise math
    def _bin(self, name, other, reverse=False):
        if not isinstance(other, _OPERAND):
            other = _scalar_or_tensor(other)
        return apply(_OPS[name], (other, self) if reverse else (self, other), {})

    def __add__(self, o):
        return self._bin("add", o)

    def __radd__(self, o):
        return self._bin("add", o, True)

    def __sub__(self, o):
        return self._bin("sub", o)

    def __rsub__(self, o):
        return self._bin("sub", o, True)

    def __mul__(self, o):
        return self._bin("mul", o)

    def __rmul__(self, o):
        return self._bin("mul", o, True)

    def __truediv__(self, o):
        return self._bin("div", o)

    def __rtruediv__(self, o):
        return self._bin("div", o, True)

    def __pow__(self, e):
        return self.pow(e)

    def __rpow__(self, b):
        return self._bin("pow", b, True)

    def __matmul__(self, o):
        return self.matmul(o)

    def __rmatmul__(self, o):
        return _scalar_or_tensor(o).matmul(self)

    def __neg__(self):
        return apply(ops.REGISTRY["neg"], (self,), {})

    def __pos__(self):
        return self

    def __abs__(self):
        return self.abs()

    def __eq__(self, o):
        return self._bin("eq", o)

    def __ne__(self, o):
        return self._bin("ne", o)

    def __lt__(self, o):
        return self._bin("lt", o)

    def __le__(self, o):
        return self._bin("le", o)

    def __gt__(self, o):
        return self._bin("gt", o)

    def __ge__(self, o):
        return self._bin("ge", o)

    def __and__(self, o):
        return self._bin("logical_and", o)

    def __or__(self, o):
        return self._bin("logical_or", o)

    def __invert__(self):
        if self.dtype is not bool_:
            raise op_error(
                "bitwise_not", f"only bool tensors are supported here, got {self.dtype.name}"
            )
        return apply(ops.REGISTRY["logical_not"], (self,), {})

    def add(self, other, alpha=1):
        return self + (other if alpha == 1 else other * alpha)

    def sub(self, other, alpha=1):
        return self - (other if alpha == 1 else other * alpha)

    def mul(self, other):
        return self * other

    def div(self, other):
        return self / other

    def pow(self, e):
        if isinstance(e, (int, float)) and not isinstance(e, bool):
            op = ops.REGISTRY["pow_scalar"]
            if e in op.STATIC or not self.dtype.is_floating_point:
                return apply(op, (self,), {"exponent": e})
            return apply(op, (self, e), {"exponent": None})  # a runtime scalar
        return self._bin("pow", e)

    def square(self):
        return self.pow(2)

    def eq(self, o):
        return self == o

    def ne(self, o):
        return self != o

    def lt(self, o):
        return self < o

    def le(self, o):
        return self <= o

    def gt(self, o):
        return self > o

    def ge(self, o):
        return self >= o

    def maximum(self, o):
        return self._bin("maximum", o)

    def minimum(self, o):
        return self._bin("minimum", o)

    def where(self, condition, other):
        return where(condition, self, other)

    def clamp(self, min=None, max=None):
        if min is None and max is None:
            raise op_error("clamp", "At least one of 'min' or 'max' must not be None")
        if max is None:
            return apply(ops.REGISTRY["clamp_min"], (self, _scalar_or_tensor(min)), {})
        if min is None:
            return apply(ops.REGISTRY["clamp_max"], (self, _scalar_or_tensor(max)), {})
        return apply(ops.REGISTRY["clamp"], (self, _scalar_or_tensor(min), _scalar_or_tensor(max)), {})

    clip = clamp

    def clamp_min(self, min):
        return self.clamp(min=min)

    def clamp_max(self, max):
        return self.clamp(max=max)

    def _unary(name):  # noqa: N805  (builds methods below)
        op = ops.REGISTRY[name]

        def method(self):
            return apply(op, (self,), {})

        method.__name__ = name
        return method

    neg = _unary("neg")
    exp = _unary("exp")
    log = _unary("log")
    sqrt = _unary("sqrt")
    rsqrt = _unary("rsqrt")
    sin = _unary("sin")
    cos = _unary("cos")
    tanh = _unary("tanh")
    sigmoid = _unary("sigmoid")
    relu = _unary("relu")
    abs = _unary("abs")
    sign = _unary("sign")
    erf = _unary("erf")
    logical_not = _unary("logical_not")
    clone = _unary("clone")
    del _unary

    def contiguous(self):
        return self if self.is_contiguous() else self.clone()

    # ---- matmul
    def matmul(self, other):
        if not isinstance(other, Tensor):
            other = tensor(other)
        if self.dtype is not other.dtype:
            raise op_error(
                "matmul", f"expected both operands to have the same dtype, but got: "
                f"{self.dtype.name} != {other.dtype.name}",
            )
        return apply(ops.REGISTRY["matmul"], (self, other), {})

    def mm(self, other):
        if self.dim() != 2 or other.dim() != 2:
            raise op_error("mm", f"expected 2-D tensors, got shapes {tuple(self.shape)} and {tuple(other.shape)}")
        return self.matmul(other)

    # ---- shape
    def reshape(self, *shape):
        shape = _shape_arg(shape)
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            n = self.numel()
            if known == 0 or n % known:
                raise op_error("reshape", f"shape '{list(shape)}' is invalid for input of size {n}")
            shape = tuple(n // known if s == -1 else s for s in shape)
        return apply(_OPS["reshape"], (self,), {"shape": shape})

    view = reshape

    def view_as(self, other):
        return self.reshape(other.shape)

    reshape_as = view_as

    def flatten(self, start_dim=0, end_dim=-1):
        s = tuple(self._s.v.shape)
        if not s:
            return self.reshape(1)
        a, b = _dim(start_dim, len(s)), _dim(end_dim, len(s))
        return self.reshape(s[:a] + (math.prod(s[a : b + 1]),) + s[b + 1 :])

    def unsqueeze(self, dim):
        s = tuple(self._s.v.shape)
        d = _dim(dim, len(s) + 1)
        return apply(ops.REGISTRY["unsqueeze"], (self,), {"shape": s[:d] + (1,) + s[d:]})

    def squeeze(self, dim=None):
        s = tuple(self._s.v.shape)
        if dim is None:
            new = tuple(x for x in s if x != 1)
        else:
            dims = _dims(dim, len(s)) or ()
            new = tuple(x for i, x in enumerate(s) if not (i in dims and x == 1))
            dim = int(dim) if isinstance(dim, (int, np.integer)) else tuple(dims)
        return apply(_OPS["squeeze"], (self,), {"shape": new, "dim": dim})

    def expand(self, *shape):
        shape = _shape_arg(shape)
        s = tuple(self._s.v.shape)
        lead = len(shape) - len(s)
        shape = tuple(
            (s[i - lead] if n == -1 else n) for i, n in enumerate(shape)
        )
        if shape == s:
            return self
        return apply(ops.REGISTRY["expand"], (self,), {"shape": shape})

    def expand_as(self, other):
        return self.expand(other.shape)

    def permute(self, *dims):
        dims = _shape_arg(dims)
        n = self.dim()
        if len(dims) != n:
            raise op_error("permute", f"number of dims don't match in permute: {dims} for shape {tuple(self.shape)}")
        dims = tuple(_dim(d, n) for d in dims)
        return apply(ops.REGISTRY["permute"], (self,), {"dims": dims})

    def transpose(self, dim0, dim1):
        n = self.dim()
        perm = list(range(n))
        a, b = _dim(dim0, n), _dim(dim1, n)
        perm[a], perm[b] = perm[b], perm[a]
        return apply(ops.REGISTRY["transpose"], (self,), {"dims": tuple(perm)})

    def t(self):
        n = len(self._s.v.shape)
        if n > 2:
            raise op_error("t", f"t() expects a tensor with <= 2 dimensions, but self is {n}D")
        return apply(_OPS["t"], (self,), {"dims": _T_DIMS[n]})

    @property
    def T(self):
        n = len(self._s.v.shape)
        dims = _T_DIMS[n] if n < 3 else tuple(range(n - 1, -1, -1))
        return apply(_OPS["permute"], (self,), {"dims": dims})

    @property
    def mT(self):
        return self.transpose(-2, -1)

    # ---- reductions
    def _reduce(self, name, dim, keepdim):
        dims = None if dim is None else _dims(dim, len(self._s.v.shape))
        return apply(_OPS[name], (self,), {"dims": dims, "keepdim": keepdim})

    def sum(self, dim=None, keepdim=False, dtype=None):
        out = self._reduce("sum", dim, keepdim)
        return out if dtype is None else out.to(dtype)

    def mean(self, dim=None, keepdim=False):
        return self._reduce("mean", dim, keepdim)

    def amax(self, dim=(), keepdim=False):
        return self._reduce("amax", None if dim == () else dim, keepdim)

    def amin(self, dim=(), keepdim=False):
        return self._reduce("amin", None if dim == () else dim, keepdim)

    def _minmax(self, name, dim, keepdim):
        if isinstance(dim, Tensor):
            return self.maximum(dim) if name == "max" else self.minimum(dim)
        if dim is None:
            if self.numel() == 0:
                raise op_error(name, "Expected reduction dim to be specified for input.numel() == 0")
            return self._reduce(name, None, False)
        n = self.dim()
        d = _dim(dim, builtins.max(n, 1))  # a 0-d tensor takes dim 0 or -1, as in PyTorch
        values = self._reduce(name, d, keepdim)
        arg = "argmax" if name == "max" else "argmin"
        indices = apply(_OPS[arg], (self,), {"dim": d if n else None, "keepdim": keepdim})
        return MinMax(values, indices)

    def max(self, dim=None, keepdim=False):
        return self._minmax("max", dim, keepdim)

    def min(self, dim=None, keepdim=False):
        return self._minmax("min", dim, keepdim)

    def argmax(self, dim=None, keepdim=False):
        d = None if dim is None else _dim(dim, self.dim())
        return apply(ops.REGISTRY["argmax"], (self,), {"dim": d, "keepdim": keepdim})

    def argmin(self, dim=None, keepdim=False):
        d = None if dim is None else _dim(dim, self.dim())
        return apply(ops.REGISTRY["argmin"], (self,), {"dim": d, "keepdim": keepdim})

    def all(self, dim=None, keepdim=False):
        return self._reduce("all", dim, keepdim)

    def any(self, dim=None, keepdim=False):
        return self._reduce("any", dim, keepdim)

    def norm(self, p="fro", dim=None, keepdim=False):
        x = self if self.dtype.is_floating_point else self.float()
        if p in ("fro", 2, 2.0):
            return (x * x).sum(dim, keepdim).sqrt()
        if p == 1:
            return x.abs().sum(dim, keepdim)
        if p == float("inf"):
            return x.abs().amax(() if dim is None else dim, keepdim)
        return (x.abs() ** p).sum(dim, keepdim) ** (1.0 / p)

    def softmax(self, dim):
        m = self.detach().amax(dim, keepdim=True)
        e = (self - m).exp()
        return e / e.sum(dim, keepdim=True)

    def log_softmax(self, dim):
        m = self.detach().amax(dim, keepdim=True)
        shifted = self - m
        return shifted - shifted.exp().sum(dim, keepdim=True).log()

    # ---- indexing
    def __getitem__(self, idx):
        index, tensors = _normalize_index(idx)
        return apply(_OPS["getitem"], (self, *tensors), {"index": index})

    def __setitem__(self, idx, value):
        index, tensors = _normalize_index(idx)
        value = _scalar_or_tensor(value)
        if GRAD[0] and (self.requires_grad or (isinstance(value, Tensor) and value.requires_grad)):
            self._check_inplace("index_put_")  # index_put reads only x's shape: no snapshot
            r = apply(_OPS["index_put"], (self._alias(), value, *tensors), {"index": index})
            self._inplace_update(r, "index_put_")
            self.grad_fn, self.requires_grad = r.grad_fn, True
        elif TRACER[0] is None and type(self._s.v) is not CudaArray:  # numpy writes in place
            v = value._s.v if isinstance(value, Tensor) else value
            try:
                ops.put(self._s.v, index, tuple(t._s.v for t in tensors), v)
            except (ValueError, IndexError, TypeError) as e:
                cls = IndexError if isinstance(e, IndexError) else RuntimeError
                msg = f"{e}; got ({_describe((self, value))})"
                raise op_error("index_put_", msg, cls) from None
            self._s.version += 1
        else:  # traced, or on the device: index_put, then write the result into self's memory
            r = apply(_OPS["index_put"], (self, value, *tensors), {"index": index})
            self._inplace_update(r, "index_put_")

    # ---- in-place
    def _check_inplace(self, name: str):
        if not GRAD[0] or not self.requires_grad:
            return
        if self.grad_fn is None:
            raise RuntimeError(
                "a leaf Variable that requires grad is being used in an in-place operation. "
                f"(op {name}, at {user_line()})"
            )
        fn = self.grad_fn
        if fn.op.aliases(fn.attrs):
            raise RuntimeError(
                f"{name}: in-place change of a view ({self.grad_fn.name()}) of a tensor that "
                f"requires grad is not supported (the gradient of the viewed tensor would miss "
                f"it); clone() the view first (at {user_line()})"
            )

    def _alias(self) -> Tensor:
        t = _wrap_store(self._s)
        t.requires_grad, t.grad_fn = self.requires_grad, self.grad_fn
        return t

    def _snapshot(self) -> Tensor:
        """self's current value in a Store of its own, with self's history: what the backward
        of an in-place op reads after self's memory has been overwritten."""
        v = self._s.v
        t = _wrap(np.array(v, copy=True) if type(v) is np.ndarray else v)
        t.requires_grad, t.grad_fn = self.requires_grad, self.grad_fn
        return t

    def _inplace_update(self, r: Tensor, name: str):
        """Write r's value into self's memory, which aliases (detach(), .data, numpy()) share,
        and bump the version counter that saved tensors are checked against."""
        s = self._s
        rs = r._s.v.shape
        if tuple(rs) != tuple(s.v.shape):
            raise op_error(
                name, f"output with shape {list(s.v.shape)} doesn't match the broadcast shape "
                f"{list(rs)}",
            )
        if r.dtype is not self.dtype:
            if self.dtype.category < r.dtype.category:
                raise op_error(
                    name, f"result type {r.dtype.name} can't be cast to the desired output "
                    f"type {self.dtype.name}",
                )
            r = r.to(self.dtype)
        v, rv = s.v, r._s.v
        if type(v) is np.ndarray and type(rv) is np.ndarray:
            try:
                np.copyto(v, rv)
            except ValueError as e:  # e.g. the read-only result of expand()
                raise op_error(name, f"{e}; got ({_describe((self,))})") from None
        elif type(v) is CudaArray and (type(rv) is CudaArray or type(rv) is np.ndarray):
            v.copy_from(rv)  # on the device; an upload only for copy_ from a CPU tensor
        elif type(v) is np.ndarray and type(rv) is CudaArray:
            np.copyto(v, rv.host())
        else:
            TRACER[0].assign(s, r._s)
        s.version += 1

    def _inplace(self, name: str, fn, *operands) -> Tensor:
        """self = fn(self) in self's memory. When autograd records it, fn reads a snapshot of
        self, so the saved values stay intact and later readers of self see the version bump."""
        self._check_inplace(name)
        recording = GRAD[0] and (
            self.requires_grad or any(isinstance(o, Tensor) and o.requires_grad for o in operands)
        )
        if not recording:
            self._inplace_update(fn(self), name)
            return self
        src = self._snapshot()
        r = fn(src)
        if not r.requires_grad and self.requires_grad:  # e.g. fill_: self's gradient is zero
            r = r + src * 0
        self._inplace_update(r, name)
        self.grad_fn, self.requires_grad = r.grad_fn, r.requires_grad
        return self

    def add_(self, other, alpha=1):
        return self._inplace("add_", lambda s: s.add(other, alpha=alpha), other)

    def sub_(self, other, alpha=1):
        return self._inplace("sub_", lambda s: s.sub(other, alpha=alpha), other)

    def mul_(self, other):
        return self._inplace("mul_", lambda s: s * other, other)

    def div_(self, other):
        return self._inplace("div_", lambda s: s / other, other)

    def pow_(self, e):
        return self._inplace("pow_", lambda s: s.pow(e), e)

    def clamp_(self, min=None, max=None):
        return self._inplace("clamp_", lambda s: s.clamp(min, max), min, max)

    def relu_(self):
        return self._inplace("relu_", lambda s: s.relu())

    def addcmul_(self, t1, t2, value=1):
        return self._inplace(
            "addcmul_", lambda s: s + (t1 * t2 if value == 1 else t1 * t2 * value), t1, t2
        )

    def addcdiv_(self, t1, t2, value=1):
        return self._inplace(
            "addcdiv_", lambda s: s + (t1 / t2 if value == 1 else t1 / t2 * value), t1, t2
        )

    def lerp(self, end, weight):
        """PyTorch's formula: start + w * (end - start) for w < 0.5, else end - (end - start) *
        (1 - w); exact at both ends, where the one-sided form loses the small operand."""
        diff = end - self
        if isinstance(weight, Tensor):
            return where(weight < 0.5, self + weight * diff, end - diff * (1 - weight))
        return self + weight * diff if weight < 0.5 else end - diff * (1 - weight)

    def lerp_(self, end, weight):
        return self._inplace("lerp_", lambda s: s.lerp(end, weight), end, weight)

    def copy_(self, src):
        src = _scalar_or_tensor(src)
        return self._inplace("copy_", lambda s: _copy_like(src, s), src)

    def zero_(self):
        return self.fill_(0)

    def fill_(self, value):
        if not GRAD[0] or not self.requires_grad:
            if TRACER[0] is None:
                self._s.v.fill(value.item() if isinstance(value, Tensor) else value)
                self._s.version += 1
                return self
        return self._inplace("fill_", lambda s: _copy_like(full_like(s, value, dtype=s.dtype), s))

    def uniform_(self, a=0.0, b=1.0):
        with autograd.no_grad():
            return self.copy_(_from_rng(lambda g: g.uniform(a, b, self.shape), self.dtype))

    def normal_(self, mean=0.0, std=1.0):
        with autograd.no_grad():
            return self.copy_(_from_rng(lambda g: g.normal(mean, std, self.shape), self.dtype))

    __iadd__ = add_
    __isub__ = sub_
    __imul__ = mul_
    __itruediv__ = div_


class _ToDevice(ops.Op):
    """The autograd record of .to(device) (not a registry op: it has no kernel; the gradient
    goes back to the source device)."""

    name, grad_fn, needs_inputs = "to_device", "ToCopyBackward0", False

    @staticmethod
    def vjp(n, g):
        return (g.to(n.attrs["src"]),)


_TO_DEVICE = _ToDevice()


def _to_device(t: Tensor, dev: device) -> Tensor:
    """A copy of t on dev (one host <-> device copy), differentiable as PyTorch's."""
    v = t._s.v
    if type(v) is not np.ndarray and type(v) is not CudaArray:
        TRACER[0].realize()  # a copy between devices is a realization point, as .numpy() is
        v = t._s.v
    if dev.type == "cuda":
        from . import cuda

        if not cuda.is_available():
            raise cuda.unavailable_error(f"Tensor.to({str(dev)!r})")
        out = _wrap(_device.upload(v))
    else:
        out = _wrap(v.host())
    if GRAD[0] and t.requires_grad:
        out.requires_grad = True
        out.grad_fn = Node(_TO_DEVICE, (t,), {"src": str(t.device)}, (_edge(t),), (True,))
    return out


def _copy_like(src, dst: Tensor) -> Tensor:
    """src broadcast to dst's shape and cast to its dtype, recorded so copy_ is differentiable."""
    if not isinstance(src, Tensor):
        return dst * 0 + src
    out = src.to(dst.dtype) if src.dtype is not dst.dtype else src
    if tuple(out.shape) != tuple(dst.shape):
        out = out.expand(dst.shape)
    return apply(ops.REGISTRY["clone"], (out,), {})


_OPERAND = (Tensor, bool, int, float)  # what ops take as is; lists and arrays become tensors
_OPS = ops.REGISTRY


class Parameter(Tensor):
    """A Tensor that a Module registers as a parameter (requires grad by default)."""

    __slots__ = ()

    def __new__(cls, data: Tensor | None = None, requires_grad: bool = True):
        if data is None:
            data = Tensor(np.empty(0, np.float32))
        t = object.__new__(cls)
        t._s = data._s
        t.requires_grad = requires_grad
        t._grad = None
        t.grad_fn = None
        t._retains = False
        return t

    def __init__(self, data=None, requires_grad=True):
        pass

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

    def __reduce_ex__(self, proto):
        return (Parameter, (self.detach(), self.requires_grad))


def _default_grads(outputs, grads) -> list:
    out = []
    for t, g in zip(outputs, grads):
        if g is None:
            if t.numel() != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs (output has shape "
                    f"{tuple(t.shape)}, at {user_line()})"
                )
            g = ones_like(t)
        elif not isinstance(g, Tensor):
            g = tensor(g, dtype=t.dtype)
        elif tuple(g.shape) != tuple(t.shape):
            raise RuntimeError(
                f"Mismatch in shape: grad_output[0] has a shape of {g.shape} and output[0] has a "
                f"shape of {t.shape}. (at {user_line()})"
            )
        out.append(g)
    return out


# --------------------------------------------------------------------------- creation
def _to_array(data, dtype: dtypes.dtype | None) -> np.ndarray:
    if isinstance(data, Tensor):
        arr = np.array(_value(data), copy=True)
    elif isinstance(data, (np.ndarray, np.generic)):
        arr = np.array(data, copy=True)
        if dtype is None:
            arr = arr.astype(_normalize_np_dtype(arr.dtype), copy=False)
    else:
        if isinstance(data, (list, tuple)) and any(isinstance(x, Tensor) for x in _flat(data)):
            data = _tolist_tensors(data)
        arr = np.array(data)
        if dtype is None:
            if arr.dtype.kind == "f":
                arr = arr.astype(np.float32)
            elif arr.dtype.kind in "iu":
                arr = arr.astype(np.int64)
            elif arr.dtype.kind == "b":
                pass
            elif arr.size == 0:
                arr = arr.astype(np.float32)
            else:
                raise TypeError(f"fusegrad.tensor: could not infer dtype of {type(data).__name__}")
    if dtype is not None:
        arr = arr.astype(dtypes.as_dtype(dtype).np, copy=False)
    return arr


def _flat(x):
    for i in x:
        if isinstance(i, (list, tuple)):
            yield from _flat(i)
        else:
            yield i


def _tolist_tensors(x):
    if isinstance(x, Tensor):
        return x.tolist()
    if isinstance(x, (list, tuple)):
        return [_tolist_tensors(i) for i in x]
    return x


def tensor(data, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A new tensor that owns a copy of data (a list, a number, a numpy array or a Tensor)."""
    t = _wrap(_place(_to_array(data, dtypes.as_dtype(dtype)), device))
    if requires_grad:
        t.requires_grad_(True)
    return t


def as_tensor(data, dtype=None, device=None) -> Tensor:
    if isinstance(data, Tensor):
        out = data if device is None else data.to(device)
        return out if dtype is None else out.to(dtype)
    if device is None or globals()["device"](device).type == "cpu":
        if isinstance(data, np.ndarray) and (dtype is None or dtypes.as_dtype(dtype).np == data.dtype):
            if data.dtype in _NP2FG:
                return _wrap(data)
    return tensor(data, dtype=dtype, device=device)


def from_numpy(arr: np.ndarray) -> Tensor:
    """A tensor sharing memory with arr, as torch.from_numpy does."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(arr).__name__})")
    if arr.dtype not in _NP2FG:
        raise TypeError(
            f"can't convert np.ndarray of type {arr.dtype}. The only supported types are: "
            "float64, float32, int64, int32, and bool."
        )
    return _wrap(arr)


def _make(fill, shape, dtype, requires_grad, dev=None, value=None) -> Tensor:
    d = dtypes.as_dtype(dtype) or float32
    if dev is not None and dev is not CPU and value is not None and device(dev).type == "cuda":
        fill = lambda s, d: np.broadcast_to(np.zeros((), d), s)  # noqa: E731 (filled on device)
    t = _wrap(_place(fill(_shape_arg(shape), d.np), dev, value))
    if requires_grad:
        t.requires_grad_(True)
    return t


def zeros(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _make(np.zeros, shape, dtype, requires_grad, device, 0)


def ones(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _make(np.ones, shape, dtype, requires_grad, device, 1)


def empty(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _make(np.zeros, shape, dtype, requires_grad, device, 0)


def full(shape, fill_value, dtype=None, device=None, requires_grad=False) -> Tensor:
    if dtype is None:
        dtype = dtypes.scalar_dtype(fill_value)
    value = fill_value.item() if isinstance(fill_value, Tensor) else fill_value
    return _make(lambda s, d: np.full(s, fill_value, d), (shape,), dtype, requires_grad, device,
                 value)


def _like(make, t: Tensor, dtype, requires_grad: bool, device, *extra) -> Tensor:
    """make(t's shape, *extra) with t's dtype and device unless given: every *_like."""
    return make(tuple(t.shape), *extra, dtype=dtype or t.dtype, requires_grad=requires_grad,
                device=device or t.device)


def zeros_like(t: Tensor, dtype=None, requires_grad=False, device=None) -> Tensor:
    return _like(zeros, t, dtype, requires_grad, device)


def ones_like(t: Tensor, dtype=None, requires_grad=False, device=None) -> Tensor:
    return _like(ones, t, dtype, requires_grad, device)


def empty_like(t: Tensor, dtype=None, requires_grad=False, device=None) -> Tensor:
    return zeros_like(t, dtype, requires_grad, device)


def full_like(t: Tensor, fill_value, dtype=None, requires_grad=False, device=None) -> Tensor:
    return _like(full, t, dtype, requires_grad, device, fill_value)


def eye(n: int, m: int | None = None, dtype=None, requires_grad=False, device=None) -> Tensor:
    return _make(lambda s, d: np.eye(n, m, dtype=d), (), dtype, requires_grad, device)


def arange(start, end=None, step=1, dtype=None, requires_grad=False, device=None) -> Tensor:
    if end is None:
        start, end = 0, start
    if dtype is None:
        dtype = int64 if all(isinstance(v, int) for v in (start, end, step)) else float32
    d = dtypes.as_dtype(dtype)
    return tensor(np.arange(start, end, step, dtype=np.float64 if d.is_floating_point else np.int64), dtype=d, requires_grad=requires_grad, device=device)


def linspace(start, end, steps: int, dtype=None, requires_grad=False, device=None) -> Tensor:
    return tensor(np.linspace(start, end, steps), dtype=dtype or float32, requires_grad=requires_grad, device=device)


# ---- randomness: one generator for eager and compiled mode
class Generator:
    """fusegrad's random generator (numpy PCG64); it need not reproduce PyTorch's stream."""

    def __init__(self, seed: int = 67280421310721):
        self.manual_seed(seed)

    def manual_seed(self, seed: int) -> Generator:
        self._seed = int(seed)
        self.np = np.random.Generator(np.random.PCG64(self._seed))
        return self

    def initial_seed(self) -> int:
        return self._seed

    def get_state(self) -> dict:
        return self.np.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.np.bit_generator.state = state


default_generator = Generator()


def manual_seed(seed: int) -> Generator:
    return default_generator.manual_seed(seed)


def seed() -> int:
    s = int(np.random.SeedSequence().entropy % (2**63))
    default_generator.manual_seed(s)
    return s


def initial_seed() -> int:
    return default_generator.initial_seed()


def _from_rng(draw, dtype) -> Tensor:
    return _wrap(np.asarray(draw(default_generator.np)).astype(dtype.np, copy=False))


def rand(*shape, dtype=None, device=None, requires_grad=False, generator=None) -> Tensor:
    g = (generator or default_generator).np
    d = dtypes.as_dtype(dtype) or float32
    return _make(lambda s, _: g.random(s, dtype=np.float64).astype(d.np), shape, d, requires_grad, device)


def randn(*shape, dtype=None, device=None, requires_grad=False, generator=None) -> Tensor:
    g = (generator or default_generator).np
    d = dtypes.as_dtype(dtype) or float32
    return _make(lambda s, _: g.standard_normal(s).astype(d.np), shape, d, requires_grad, device)


def randint(low, high=None, size=None, dtype=None, device=None, generator=None) -> Tensor:
    if high is None:
        low, high = 0, low
    g = (generator or default_generator).np
    return _make(lambda s, d: g.integers(low, high, s).astype(d), (size,), dtype or int64, False, device)


def rand_like(t: Tensor, dtype=None, requires_grad=False, device=None) -> Tensor:
    return _like(rand, t, dtype, requires_grad, device)


def randn_like(t: Tensor, dtype=None, requires_grad=False, device=None) -> Tensor:
    return _like(randn, t, dtype, requires_grad, device)


# --------------------------------------------------------------------------- functions
def where(condition, input=None, other=None) -> Tensor:
    if input is None and other is None:
        raise op_error("where", "where(condition) with one argument is not supported")
    return apply(ops.REGISTRY["where"], (_scalar_or_tensor(condition), _scalar_or_tensor(input), _scalar_or_tensor(other)), {})


def cat(tensors, dim: int = 0) -> Tensor:
    tensors = list(tensors)
    if not tensors:
        raise op_error("cat", "expected a non-empty list of Tensors")
    d = _dim(dim, tensors[0].dim())
    return apply(ops.REGISTRY["cat"], tuple(tensors), {"dim": d})


concat = cat


def stack(tensors, dim: int = 0) -> Tensor:
    tensors = list(tensors)
    if not tensors:
        raise op_error("stack", "stack expects a non-empty TensorList")
    d = _dim(dim, tensors[0].dim() + 1)
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise op_error("stack", f"stack expects each tensor to be equal size, but got {sorted(shapes)}")
    return cat([t.unsqueeze(d) for t in tensors], d)


def is_tensor(x) -> bool:
    return isinstance(x, Tensor)
