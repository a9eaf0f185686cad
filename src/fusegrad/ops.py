"""ops: the one op registry.

Every op is one block here: its shape/dtype rule, its eager numpy kernel, its VJP rule (written
in fusegrad Tensor ops, so that backward traces like any other code) and its lowering (how the
compiler renders it inside a fused loop). Nothing else in fusegrad knows the math of an op.

Conventions
- Positional arguments are Tensors or Python scalars; Python scalars are *runtime* values (the
  compiler passes them as kernel arguments). Keyword attributes (dims, shapes, indices, the
  exponent of ``x ** 2``) are static: they are part of a graph's signature.
- ``vjp(n, g)`` gets the autograd node ``n`` (``n.args``, ``n.attrs``, ``n.out`` when
  ``saves_out``, ``n.needs[i]``: whether input i wants a gradient) and the output gradient ``g``;
  it returns one gradient per positional argument (None where there is none). The engine sums
  broadcast gradients back to each input's shape and casts them to its dtype.
- ``lower``: for ``kind == "elementwise"`` a Python expression template over the inputs
  ``{0} {1} ...``; math functions inside it are resolved per dtype by the renderer (float32 uses
  fusegrad.fastmath). Reductions name their accumulation. ``kind == "extern"`` ops have no loop
  form: the compiled runtime calls their eager kernel (BLAS matmul, concatenation, gathers).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from . import dtypes
from .dtypes import bool_, float32, int64
from .errors import op_error

REGISTRY: dict[str, Op] = {}
DISPATCH = None  # set by tensor.py: DISPATCH(op, args, attrs) -> Tensor


def call(name: str, *args, **attrs):
    """Apply a registered op from inside a VJP rule (eager or traced, like any Tensor op)."""
    return DISPATCH(REGISTRY[name], args, attrs)


def defop(cls):
    """Register an op class; the registry holds one instance per op name."""
    fn = cls.__dict__.get("vjp")
    if fn is not None and not isinstance(fn, staticmethod):
        cls.vjp = staticmethod(fn)  # vjp(n, g): the node is its context, not self
    op = cls()
    op.may_alias = op.kind == "view" or cls.aliases is not Op.aliases  # skip the call if never
    op.plans = {}  # eager dispatch: input dtypes -> (casts, output dtype), see tensor._eager
    assert op.name not in REGISTRY, op.name
    REGISTRY[op.name] = op
    return cls


class Op:
    name = ""
    grad_fn = ""  # PyTorch's autograd node name
    kind = "extern"  # elementwise | reduce | view | extern
    lower = None
    saves_out = False  # vjp reads n.out
    needs_inputs = True  # vjp reads input values (in-place changes to them are then an error)
    differentiable = True

    def __repr__(self) -> str:
        return self.name

    def infer(self, args: tuple, attrs: dict) -> tuple[tuple, dtypes.dtype]:
        """(shape, dtype) of the result, from the arguments' shapes and dtypes."""
        raise NotImplementedError

    def eager(self, *arrays, **attrs) -> np.ndarray:
        raise NotImplementedError

    vjp = None

    def node_name(self, attrs: dict) -> str:
        """PyTorch's grad_fn name; some ops name their overload by the arguments given."""
        return self.grad_fn

    def aliases(self, attrs: dict) -> bool:
        """Whether the result shares its first argument's memory, so that an in-place write
        to either must reach the other."""
        return self.kind == "view"


# --------------------------------------------------------------------------- shape helpers
@lru_cache(maxsize=8192)
def broadcast_shapes(*shapes: tuple) -> tuple:
    ndim = max(len(s) for s in shapes)
    out = []
    for i in range(ndim):
        size = 1
        for s in shapes:
            d = s[i - ndim + len(s)] if i - ndim + len(s) >= 0 else 1
            if d != 1:
                if size != 1 and d != size:
                    raise ValueError(
                        f"The size of tensor a ({size}) must match the size of tensor b ({d}) "
                        f"at non-singleton dimension {i}"
                    )
                size = d
        out.append(size)
    return tuple(out)


def shape_of(x) -> tuple:
    return x.shape if hasattr(x, "shape") else ()


def part(x) -> tuple:
    """A promotion participant: (dtype, priority) with tensors above zero-dim above scalars."""
    if hasattr(x, "dtype") and isinstance(x.dtype, dtypes.dtype):
        return (x.dtype, 2 if x.shape else 1)
    return (dtypes.scalar_dtype(x), 0)


class _SetErr:
    """numpy < 2 fallback of NP_ERRSTATE: np.seterr, undone by reset."""

    def set(self, mode: dict) -> dict:
        return np.seterr(**mode)

    def reset(self, old: dict) -> None:
        np.seterr(**old)


# numpy warns on log(0), 1/0, overflow; PyTorch returns inf/nan silently, so eager kernels run
# with NP_ERRSTATE.set(NP_QUIET) ... reset(token). numpy >= 2 keeps its error state in a context
# variable; setting it directly costs ~0.1 us, where ``with np.errstate()`` costs ~2 us per op.
try:
    from numpy._core.umath import _extobj_contextvar as NP_ERRSTATE
    from numpy._core.umath import _make_extobj

    NP_QUIET = _make_extobj(all="ignore")
except (ImportError, TypeError):  # numpy 1.x, or a numpy whose internals moved
    NP_ERRSTATE, NP_QUIET = _SetErr(), {"all": "ignore"}


def _reduced_numel(shape: tuple, dims) -> int:
    return math.prod(shape[d] for d in dims) if dims is not None else math.prod(shape)


def reduce_shape(shape: tuple, dims, keepdim: bool) -> tuple:
    if dims is None:
        return tuple(1 for _ in shape) if keepdim else ()
    if keepdim:
        return tuple(1 if i in dims else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in dims)


def kept_shape(shape: tuple, dims) -> tuple:
    """The keepdim=True shape of a reduction, used to broadcast gradients back."""
    return reduce_shape(shape, dims, True)


# --------------------------------------------------------------------------- elementwise
class Elementwise(Op):
    kind = "elementwise"
    rule = "promote"  # promote | float | bool (output) | same (first input's dtype)

    def result_dtype(self, parts: tuple):
        """(compute dtype, output dtype) from the promotion participants."""
        if self.rule == "same":
            return parts[0][0], parts[0][0]
        d = dtypes.promote(parts)
        if self.rule == "float":
            return (d, d) if d.is_floating_point else (float32, float32)
        if self.rule == "bool":
            return d, bool_
        return d, d

    def infer(self, args, attrs):
        shape = broadcast_shapes(*(shape_of(a) for a in args))
        return shape, self.result_dtype(tuple(part(a) for a in args))[1]


class Unary(Elementwise):
    rule = "float"


@defop
class Add(Elementwise):
    name, grad_fn, lower = "add", "AddBackward0", "({0} + {1})"
    eager = staticmethod(np.add)
    needs_inputs = False

    def vjp(n, g):
        return g, g


@defop
class Sub(Elementwise):
    name, grad_fn, lower = "sub", "SubBackward0", "({0} - {1})"
    eager = staticmethod(np.subtract)
    needs_inputs = False

    def vjp(n, g):
        return g, (-g if n.needs[1] else None)


@defop
class Mul(Elementwise):
    name, grad_fn, lower = "mul", "MulBackward0", "({0} * {1})"
    eager = staticmethod(np.multiply)

    def vjp(n, g):
        a, b = n.args
        return (g * b if n.needs[0] else None), (g * a if n.needs[1] else None)


@defop
class Div(Elementwise):
    name, grad_fn, lower, rule = "div", "DivBackward0", "({0} / {1})", "float"
    eager = staticmethod(np.true_divide)

    def vjp(n, g):
        a, b = n.args
        ga = g / b if n.needs[0] else None
        gb = -g * a / (b * b) if n.needs[1] else None
        return ga, gb


@defop
class Pow(Elementwise):
    """tensor ** tensor (or scalar ** tensor); tensor ** number is PowScalar."""

    name, grad_fn, lower, rule = "pow", "PowBackward1", "({0} ** {1})", "promote"
    eager = staticmethod(np.power)
    saves_out = True

    def vjp(n, g):  # PyTorch's: 0 where the exponent is 0, and where 0 ** (b >= 0) for b
        a, b = n.args
        ga = gb = None
        if n.needs[0]:
            ga = b * a ** (b - 1)
            ga = g * (call("where", b == 0, 0.0, ga) if hasattr(b, "shape") else ga if b else 0.0)
        if n.needs[1]:
            if hasattr(a, "log"):
                gb = call("where", (a == 0) & (b >= 0), 0.0, n.out * a.log())
            elif a == 0:
                gb = call("where", b >= 0, 0.0, n.out * -math.inf)
            else:
                gb = n.out * (math.log(a) if a > 0 else math.nan)
            gb = g * gb
        return ga, gb


@defop
class PowScalar(Elementwise):
    """x ** e for a Python number e. The exponents the renderer turns into multiplications
    (-1, 0, 1, 2, 3) are static; any other exponent of a float tensor is a runtime scalar
    argument, so changing it never recompiles."""

    name, grad_fn, rule = "pow_scalar", "PowBackward0", "same"
    STATIC = (-1, 0, 1, 2, 3)

    def result_dtype(self, parts):
        return None, None  # depends on the exponent: eager() decides, infer() mirrors it

    @staticmethod
    def exponent(args, attrs):
        e = attrs["exponent"]
        return args[1] if e is None else e

    def infer(self, args, attrs):
        x = args[0]
        d = x.dtype
        if not d.is_floating_point and not float(self.exponent(args, attrs)).is_integer():
            d = float32
        return x.shape, d

    def eager(self, x, e=None, *, exponent):
        exponent = e if exponent is None else exponent
        if exponent == 2:
            return np.multiply(x, x)
        if not float(exponent).is_integer() and not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        return np.power(x, exponent if not np.issubdtype(x.dtype, np.floating) else x.dtype.type(exponent))

    @staticmethod
    def lower(args, attrs, cast):
        x, e = args[0], attrs["exponent"]
        if e is None:
            return f"({x} ** {args[1]})"
        if e == 1:
            return x
        if e == 2:
            return f"({x} * {x})"
        if e == 3:
            return f"({x} * {x} * {x})"
        if e == -1:
            return f"({cast}(1) / {x})"
        return f"({x} ** {cast}({e!r}))"

    def vjp(n, g):
        x = n.args[0]
        if n.attrs["exponent"] is None:  # a runtime exponent stays one in the backward
            e = n.args[1]
            return g * (call("pow_scalar", x, e - 1, exponent=None) * e), None
        e = n.attrs["exponent"]
        if e == 0:
            return (g * 0.0,)
        return (g * (x ** (e - 1) * e) if e != 2 else g * (x * 2.0),)


def _ufunc_unary(name, grad_fn, fn, lower, vjp, rule="float", saves_out=False, needs=True):
    cls = type(
        name.capitalize(),
        (Unary,),
        dict(
            name=name, grad_fn=grad_fn, lower=lower, rule=rule, saves_out=saves_out,
            needs_inputs=needs, eager=staticmethod(fn), vjp=vjp,
        ),
    )
    return REGISTRY[defop(cls).name]


_ZERO = {d.np: np.zeros((), d.np) for d in dtypes.ALL}  # numpy converts a Python 0 slowly


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


_erf_ufunc = None


def _erf(x):
    """numpy has no erf; a Numba-vectorized math.erf, compiled on first use."""
    global _erf_ufunc
    if _erf_ufunc is None:
        import numba

        @numba.vectorize(["float32(float32)", "float64(float64)"], cache=True)
        def erf(v):
            return math.erf(v)

        _erf_ufunc = erf
    return _erf_ufunc(x)


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x * x.dtype.type(1 / math.sqrt(2.0))))


SQRT1_2 = 1 / math.sqrt(2.0)
INV_SQRT_2PI = 1 / math.sqrt(2.0 * math.pi)

_ufunc_unary("neg", "NegBackward0", np.negative, "(-{0})", lambda n, g: (-g,), "same", needs=False)
_ufunc_unary("exp", "ExpBackward0", np.exp, "exp({0})", lambda n, g: (g * n.out,), saves_out=True)
_ufunc_unary("log", "LogBackward0", np.log, "log({0})", lambda n, g: (g / n.args[0],))
_ufunc_unary(
    "sqrt", "SqrtBackward0", np.sqrt, "sqrt({0})", lambda n, g: (g / (n.out * 2.0),), saves_out=True
)
_ufunc_unary(
    "rsqrt", "RsqrtBackward0", lambda x: 1.0 / np.sqrt(x), "(1.0 / sqrt({0}))",
    lambda n, g: (g * (n.out ** 3 * -0.5),), saves_out=True,
)
_ufunc_unary("sin", "SinBackward0", np.sin, "sin({0})", lambda n, g: (g * n.args[0].cos(),))
_ufunc_unary("cos", "CosBackward0", np.cos, "cos({0})", lambda n, g: (g * -n.args[0].sin(),))
_ufunc_unary(
    "tanh", "TanhBackward0", np.tanh, "tanh({0})",
    lambda n, g: (call("tanh_backward", g, n.out),), saves_out=True,
)
_ufunc_unary(
    "sigmoid", "SigmoidBackward0", _sigmoid, "sigmoid({0})",
    lambda n, g: (call("sigmoid_backward", g, n.out),), saves_out=True,
)
_ufunc_unary(
    "relu", "ReluBackward0", lambda x: np.maximum(x, _ZERO[x.dtype]), "max({0}, 0)",
    lambda n, g: (call("relu_backward", g, n.out),), "same", saves_out=True,
)


def _backward_op(name, grad_fn, rule, template, eager, ds):
    """An op's backward as ONE op of the gradient g and the value s its VJP reads (the op's
    input x or output y), as ATen's gelu_backward and tanh_backward: a traced backward records
    one node instead of a chain of them and their scalars, and a fused loop computes it in one
    expression. ``template`` renders it from {g}, {s} and {c} (the compute dtype's cast),
    doing the float32 operations of ``eager`` in its order; ``ds(g, s, gg)`` is its gradient
    in s (its gradient in g is the op itself, applied to gg)."""

    def lower(args, attrs, cast):
        return template.format(g=args[0], s=args[1], c=cast)

    def vjp(n, gg):
        g, s = n.args
        return (call(name, gg, s) if n.needs[0] else None), (ds(g, s, gg) if n.needs[1] else None)

    body = dict(name=name, grad_fn=grad_fn, rule=rule, lower=staticmethod(lower),
                eager=staticmethod(eager), vjp=vjp, __doc__=_backward_op.__doc__)
    defop(type(grad_fn.replace("Backward0", ""), (Elementwise,), body))


# GELU's backward (erf, exp and ten multiplies) is one fused call of fastmath's gelu_grad;
# d/dx (Phi + x phi) = phi * (2 - x^2).
_backward_op("gelu_backward", "GeluBackwardBackward0", "float", "({g} * gelu_grad({s}))",
             lambda g, x: g * _gelu_grad(x),
             lambda g, x, gg: gg * g * ((x * x * -0.5).exp() * INV_SQRT_2PI * (2.0 - x * x)))
_backward_op("tanh_backward", "TanhBackwardBackward0", "float", "({g} * ({c}(1) - {s} * {s}))",
             lambda g, y: g * (1 - y * y), lambda g, y, gg: gg * g * (y * -2.0))
_backward_op("sigmoid_backward", "SigmoidBackwardBackward0", "float",
             "({g} * ({s} * ({c}(1) - {s})))",
             lambda g, y: g * (y * (1 - y)), lambda g, y, gg: gg * g * (1 - y * 2.0))
_backward_op("relu_backward", "ThresholdBackwardBackward0", "same", "({g} * {c}({s} > 0))",
             lambda g, y: g * (y > 0), lambda g, y, gg: gg * 0.0)  # zero in y, as ATen's


_ufunc_unary("abs", "AbsBackward0", np.abs, "abs({0})", lambda n, g: (g * n.args[0].sign(),), "same")
_ufunc_unary("sign", "SignBackward0", np.sign, "sign({0})", lambda n, g: (g * 0.0,), "same")
_ufunc_unary(
    "erf", "ErfBackward0", _erf, "erf({0})",
    lambda n, g: (g * ((n.args[0] * n.args[0] * -1.0).exp() * (2.0 / math.sqrt(math.pi))),),
)


def _gelu_grad(x):
    """d gelu / dx = Phi(x) + x * phi(x)."""
    t = x.dtype.type
    return 0.5 * (1.0 + _erf(x * t(SQRT1_2))) + x * (np.exp(x * x * t(-0.5)) * t(INV_SQRT_2PI))


_ufunc_unary("gelu", "GeluBackward0", _gelu, "gelu({0})", lambda n, g: (call("gelu_backward", g, n.args[0]),))


@defop
class LogicalNot(Elementwise):
    name, lower, rule, differentiable = "logical_not", "(not {0})", "bool", False
    eager = staticmethod(np.logical_not)


def _compare(name, fn, sym):
    cls = type(name, (Elementwise,), dict(
        name=name, lower=f"({{0}} {sym} {{1}})", rule="bool", differentiable=False,
        eager=staticmethod(fn),
    ))
    return REGISTRY[defop(cls).name]


_compare("eq", np.equal, "==")
_compare("ne", np.not_equal, "!=")
_compare("lt", np.less, "<")
_compare("le", np.less_equal, "<=")
_compare("gt", np.greater, ">")
_compare("ge", np.greater_equal, ">=")
_compare("logical_and", np.logical_and, "and")
_compare("logical_or", np.logical_or, "or")


def _pick_vjp(a_wins):
    """The VJP of maximum / minimum: the gradient goes to the winner; ties split it evenly,
    as PyTorch does."""
    def vjp(n, g):
        a, b = n.args
        w = a_wins(a, b) + (a == b) * 0.5
        return (g * w if n.needs[0] else None), (g * (1.0 - w) if n.needs[1] else None)
    return vjp


@defop
class Maximum(Elementwise):
    name, grad_fn, lower = "maximum", "MaximumBackward0", "max({0}, {1})"
    eager = staticmethod(np.maximum)
    vjp = _pick_vjp(lambda a, b: a > b)


@defop
class Minimum(Elementwise):
    name, grad_fn, lower = "minimum", "MinimumBackward0", "min({0}, {1})"
    eager = staticmethod(np.minimum)
    vjp = _pick_vjp(lambda a, b: a < b)


@defop
class ClampMin(Elementwise):
    name, grad_fn, lower = "clamp_min", "ClampMinBackward0", "max({0}, {1})"
    eager = staticmethod(np.maximum)

    def vjp(n, g):
        x, lo = n.args
        return g * (x >= lo), (g * (x < lo) if n.needs[1] else None)


@defop
class ClampMax(Elementwise):
    name, grad_fn, lower = "clamp_max", "ClampMaxBackward0", "min({0}, {1})"
    eager = staticmethod(np.minimum)

    def vjp(n, g):
        x, hi = n.args
        return g * (x <= hi), (g * (x > hi) if n.needs[1] else None)


@defop
class Clamp(Elementwise):
    name, grad_fn, lower = "clamp", "ClampBackward1", "min(max({0}, {1}), {2})"

    def eager(self, x, lo, hi):
        return np.minimum(np.maximum(x, lo), hi)

    def vjp(n, g):  # PyTorch's: with min > max the result is max, and max gets the gradient
        x, lo, hi = n.args
        glo = g * ((x < lo) & (lo < hi)) if n.needs[1] else None
        ghi = g * ((x > hi) | (hi < lo)) if n.needs[2] else None
        return g * ((x >= lo) & (x <= hi)), glo, ghi


@defop
class Where(Elementwise):
    name, grad_fn, lower = "where", "WhereBackward0", "({1} if {0} else {2})"

    def result_dtype(self, parts):
        d = dtypes.promote(parts[1:])
        return d, d

    def eager(self, c, a, b):
        return np.where(c, a, b)

    def vjp(n, g):
        c, a, b = n.args
        ga = call("where", c, g, 0.0) if n.needs[1] else None
        gb = call("where", c, 0.0, g) if n.needs[2] else None
        return None, ga, gb


@defop
class Cast(Elementwise):
    name, grad_fn, lower = "cast", "ToCopyBackward0", "{0}"

    def result_dtype(self, parts):
        return None, None  # the target dtype is the attribute

    def infer(self, args, attrs):
        return args[0].shape, attrs["dtype"]

    def eager(self, x, dtype):
        return x.astype(dtype.np)

    def vjp(n, g):
        return (call("cast", g, dtype=n.args[0].dtype) if g.dtype is not n.args[0].dtype else g,)


@defop
class Clone(Elementwise):
    name, grad_fn, lower, rule, needs_inputs = "clone", "CloneBackward0", "{0}", "same", False

    def eager(self, x):
        return np.array(x, copy=True)

    def vjp(n, g):
        return (g,)


@defop
class Expand(Elementwise):
    """Broadcast to a shape; inside a fused loop it is only an index pattern."""

    name, grad_fn, lower, rule, needs_inputs = "expand", "ExpandBackward0", "{0}", "same", False

    def infer(self, args, attrs):
        shape = attrs["shape"]
        broadcast_shapes(args[0].shape, shape)
        if len(shape) < len(args[0].shape) or broadcast_shapes(args[0].shape, shape) != shape:
            raise ValueError(f"the shape {tuple(args[0].shape)} cannot be expanded to {shape}")
        return shape, args[0].dtype

    def eager(self, x, shape):
        return np.broadcast_to(x, shape)

    def vjp(n, g):
        return (g,)  # the engine sums it back to the input's shape


# --------------------------------------------------------------------------- reductions
class Reduce(Op):
    kind = "reduce"
    rule = "same"

    def out_dtype(self, d):
        return d

    def infer(self, args, attrs):
        x = args[0]
        return reduce_shape(x.shape, attrs["dims"], attrs["keepdim"]), self.out_dtype(x.dtype)


@defop
class Sum(Reduce):
    name, grad_fn, lower, needs_inputs = "sum", "SumBackward0", "sum", False

    def node_name(self, attrs):
        return "SumBackward0" if attrs["dims"] is None and not attrs["keepdim"] else "SumBackward1"

    def out_dtype(self, d):
        return d if d.is_floating_point else int64

    def eager(self, x, dims, keepdim):
        return np.add.reduce(x, dims, None if x.dtype.kind == "f" else np.int64, None, keepdim)

    def vjp(n, g):
        x = n.args[0]
        dims = n.attrs["dims"]
        if not n.attrs["keepdim"]:
            g = g.reshape(kept_shape(x.shape, dims))
        return (g.expand(x.shape),)


@defop
class Mean(Reduce):
    name, grad_fn, lower, needs_inputs = "mean", "MeanBackward0", "mean", False

    def node_name(self, attrs):
        return "MeanBackward0" if attrs["dims"] is None and not attrs["keepdim"] else "MeanBackward1"

    def out_dtype(self, d):
        if not d.is_floating_point:
            raise TypeError(
                "mean(): could not infer output dtype. Input dtype must be either a floating "
                f"point or complex dtype. Got: {d.name}"
            )
        return d

    def eager(self, x, dims, keepdim):
        self.out_dtype(dtypes.from_numpy_dtype(x.dtype))
        # sum / count, as np.mean computes it, without its "Mean of empty slice" warning
        total = np.add.reduce(x, axis=dims, keepdims=keepdim)
        return np.true_divide(total, _reduced_numel(x.shape, dims), dtype=x.dtype)

    def vjp(n, g):
        x = n.args[0]
        dims = n.attrs["dims"]
        if not n.attrs["keepdim"]:
            g = g.reshape(kept_shape(x.shape, dims))
        return (g.expand(x.shape) / _reduced_numel(x.shape, dims),)


def _extreme_vjp(n, g):
    """Gradient of amax/amin: split evenly among the elements that attain the extreme."""
    x = n.args[0]
    dims = n.attrs["dims"]
    out = n.out if n.attrs["keepdim"] else n.out.reshape(kept_shape(x.shape, dims))
    if not n.attrs["keepdim"]:
        g = g.reshape(kept_shape(x.shape, dims))
    mask = x == out
    count = mask.sum(dim=dims, keepdim=True)
    return (g / count * mask,)


@defop
class Amax(Reduce):
    name, grad_fn, lower, saves_out = "amax", "AmaxBackward0", "max", True
    eager = staticmethod(lambda x, dims, keepdim: np.maximum.reduce(x, axis=dims, keepdims=keepdim))
    vjp = _extreme_vjp


@defop
class Amin(Reduce):
    name, grad_fn, lower, saves_out = "amin", "AminBackward0", "min", True
    eager = staticmethod(lambda x, dims, keepdim: np.minimum.reduce(x, axis=dims, keepdims=keepdim))
    vjp = _extreme_vjp


def _first_extreme_vjp(n, g):
    """Gradient of max(dim)/min(dim): all of it to the index they return (the first extreme),
    as PyTorch's does; without a dim, split evenly among ties like amax/amin."""
    if n.attrs["dims"] is None:
        return _extreme_vjp(n, g)
    x, ((d,), keepdim) = n.args[0], (n.attrs["dims"], n.attrs["keepdim"])
    arg = "argmax" if n.op.name == "max" else "argmin"
    first = call(arg, x, dim=d, keepdim=True)
    positions = np.arange(x.shape[d]).reshape([-1 if i == d else 1 for i in range(len(x.shape))])
    if not keepdim:
        g = g.reshape(kept_shape(x.shape, (d,)))
    return (g * (first == positions),)


@defop
class Max(Amax):
    """x.max() and the values of x.max(dim): amax's values, PyTorch's gradient and names."""

    name = "max"
    vjp = _first_extreme_vjp

    def node_name(self, attrs):
        return "MaxBackward1" if attrs["dims"] is None else "MaxBackward0"


@defop
class Min(Amin):
    name = "min"
    vjp = _first_extreme_vjp

    def node_name(self, attrs):
        return "MinBackward1" if attrs["dims"] is None else "MinBackward0"


class _ArgReduce(Reduce):
    differentiable = False

    def infer(self, args, attrs):
        x, dim = args[0], attrs["dim"]
        if dim is None:
            return ((1,) * len(x.shape) if attrs["keepdim"] else ()), int64
        return reduce_shape(x.shape, (dim,), attrs["keepdim"]), int64


@defop
class Argmax(_ArgReduce):
    name = "argmax"

    def eager(self, x, dim, keepdim):
        return np.argmax(x, axis=dim, keepdims=keepdim)


@defop
class Argmin(_ArgReduce):
    name = "argmin"

    def eager(self, x, dim, keepdim):
        return np.argmin(x, axis=dim, keepdims=keepdim)


@defop
class All(Reduce):
    name, lower, differentiable = "all", "all", False
    eager = staticmethod(lambda x, dims, keepdim: np.all(x, axis=dims, keepdims=keepdim))
    out_dtype = staticmethod(lambda d: bool_)


@defop
class Any(Reduce):
    name, lower, differentiable = "any", "any", False
    eager = staticmethod(lambda x, dims, keepdim: np.any(x, axis=dims, keepdims=keepdim))
    out_dtype = staticmethod(lambda d: bool_)


# --------------------------------------------------------------------------- views
class View(Op):
    kind = "view"
    needs_inputs = False


@defop
class Reshape(View):
    name, grad_fn = "reshape", "ViewBackward0"

    def infer(self, args, attrs):
        x, shape = args[0], attrs["shape"]
        if math.prod(shape) != math.prod(x.shape):
            raise ValueError(f"shape '{list(shape)}' is invalid for input of size {math.prod(x.shape)}")
        return shape, x.dtype

    def eager(self, x, shape):
        return x.reshape(shape)

    def vjp(n, g):
        return (g.reshape(n.args[0].shape),)


@defop
class Unsqueeze(Reshape):
    name, grad_fn = "unsqueeze", "UnsqueezeBackward0"


@defop
class Squeeze(Reshape):
    """A reshape; ``dim`` (None, an int or a tuple, as given) only names the grad_fn."""

    name, grad_fn = "squeeze", "SqueezeBackward0"

    def node_name(self, attrs):
        dim = attrs["dim"]
        return "SqueezeBackward" + ("0" if dim is None else "1" if type(dim) is int else "2")

    def eager(self, x, shape, dim):
        return x.reshape(shape)


@defop
class Permute(View):
    name, grad_fn = "permute", "PermuteBackward0"

    def infer(self, args, attrs):
        s = args[0].shape
        return tuple(s[d] for d in attrs["dims"]), args[0].dtype

    def eager(self, x, dims):
        return x.transpose(dims)

    def vjp(n, g):
        return (g.permute(*np.argsort(n.attrs["dims"]).tolist()),)


@defop
class Transpose(Permute):
    name, grad_fn = "transpose", "TransposeBackward0"


@defop
class T(Permute):
    name, grad_fn = "t", "TBackward0"


def _index_arrays(index: tuple, arrays: tuple) -> tuple:
    """Put the runtime index arrays back into a static index tuple (slots marked 'T')."""
    if not arrays:
        return _static_index(index)
    it = iter(arrays)
    return tuple(next(it) if i == "T" else _index_item(i) for i in index)


def _index_item(i):
    """A static index element as numpy takes it: ("s", start, stop, step) is a slice and
    ("b", flag) a Python bool (kept apart from the int 1, which compares equal to True)."""
    if type(i) is tuple:
        return slice(*i[1:]) if i[0] == "s" else i[1]
    return i


def _index_steps(x: np.ndarray, index: tuple, arrays: tuple) -> tuple[np.ndarray, tuple]:
    """(view, last index): x[index] in PyTorch's order is view[last index]. PyTorch selects
    with ints before it applies tensor indices (x[1, :, t] is x[1][:, t]); numpy would fold the
    int into one advanced index and put t's dims first. The view is a numpy view of x, so writes
    through it (item assignment, gradient accumulation) reach x."""
    if not arrays or not any(type(i) is int for i in index) or any(
        type(i) is tuple and i[0] == "b" for i in index
    ):
        return x, _index_arrays(index, arrays)
    first, last, it = [], [], iter(arrays)
    for i in index:
        if i == "T":
            a = next(it)
            first.extend([slice(None)] * (a.ndim if a.dtype == np.bool_ else 1))
            last.append(a)
        elif type(i) is int:
            first.append(i)
        elif i is Ellipsis:
            first.append(i)
            last.append(i)
        else:  # a slice or None: taken in the first step, kept whole in the second
            first.append(_index_item(i))
            last.append(slice(None))
    return x[tuple(first)], tuple(last)


@lru_cache(maxsize=4096)
def _static_index(index: tuple) -> tuple:
    return tuple(_index_item(i) for i in index)


_FULL_SLICES = ((None, None, None), (None, None, 1), (0, None, None), (0, None, 1))


def index_kind(index: tuple) -> str:
    """PyTorch's grad_fn name for x[index]: that of the last step its indexing takes (it
    selects, slices and unsqueezes left to right, tensor and bool indices last)."""
    if any(i == "T" or (type(i) is tuple and i[0] == "b") for i in index):
        return "IndexBackward0"
    for i in reversed(index):
        if type(i) is int:
            return "SelectBackward0"
        if i is None:
            return "UnsqueezeBackward0"
        if type(i) is tuple and i[1:] not in _FULL_SLICES:
            return "SliceBackward0"
    return "AliasBackward0"


@defop
class GetItem(View):
    """x[index]; tensor indices are runtime inputs, the rest of the index is static."""

    name, grad_fn = "getitem", "IndexBackward0"

    def node_name(self, attrs):
        return index_kind(attrs["index"])

    def aliases(self, attrs):
        return "T" not in attrs["index"]  # tensor indices gather a copy

    def infer(self, args, attrs):
        x = args[0]
        dummy = np.broadcast_to(np.zeros((), np.int8), x.shape)
        idx = [np.zeros(a.shape, a.dtype.np) if a.dtype is not bool_ else np.ones(a.shape, bool)
               for a in args[1:]]
        view, i = _index_steps(dummy, attrs["index"], tuple(idx))
        return view[i].shape, x.dtype

    def eager(self, x, *idx, index):
        view, i = (x, _static_index(index)) if not idx else _index_steps(x, index, idx)
        r = view[i]
        return r if type(r) is np.ndarray else view[i + (Ellipsis,)]  # a 0-d view, not a scalar

    def vjp(n, g):
        x, *idx = n.args
        return (call("index_grad", g, *idx, shape=x.shape, index=n.attrs["index"]),) + (None,) * len(idx)


@defop
class IndexGrad(Op):
    """The gradient of getitem: zeros of the source shape with g added at the index."""

    name, grad_fn = "index_grad", "IndexBackward0"

    def infer(self, args, attrs):
        return attrs["shape"], args[0].dtype

    def eager(self, g, *idx, shape, index):
        out = np.zeros(shape, g.dtype)
        np.add.at(*_index_steps(out, index, idx), g)
        return out

    def vjp(n, g):
        _, *idx = n.args
        return (call("getitem", g, *idx, index=n.attrs["index"]),) + (None,) * len(idx)


def put(x: np.ndarray, index: tuple, arrays: tuple, v) -> None:
    """x[index] = v in place, in PyTorch's indexing order."""
    view, i = _index_steps(x, index, arrays)
    view[i] = v


@defop
class IndexPut(Op):
    """x with x[index] = v, out of place (autograd-aware item assignment)."""

    name, grad_fn, needs_inputs = "index_put", "IndexPutBackward0", False

    def infer(self, args, attrs):
        return args[0].shape, args[0].dtype

    def eager(self, x, v, *idx, index):
        out = np.array(x, copy=True)
        put(out, index, idx, v)
        return out

    def vjp(n, g):
        x, v, *idx = n.args
        gx = call("index_put", g, 0.0, *idx, index=n.attrs["index"]) if n.needs[0] else None
        gv = call("getitem", g, *idx, index=n.attrs["index"]) if n.needs[1] else None
        return (gx, gv) + (None,) * len(idx)


# --------------------------------------------------------------------------- extern (BLAS etc.)
def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.matmul; np.dot where it means the same (1-D and 2-D operands), as it costs less."""
    if 0 < a.ndim < 3 and 0 < b.ndim < 3:
        return np.dot(a, b)
    return np.matmul(a, b)


@defop
class Matmul(Op):
    name, grad_fn = "matmul", "MmBackward0"

    def infer(self, args, attrs):
        a, b = args
        sa, sb = a.shape, b.shape
        if not sa or not sb:
            raise ValueError("both arguments to matmul need to be at least 1D")
        k1 = sa[-1]
        k2 = sb[-2] if len(sb) > 1 else sb[0]
        if k1 != k2:
            raise ValueError(
                f"mat1 and mat2 shapes cannot be multiplied ({'x'.join(map(str, sa))} and "
                f"{'x'.join(map(str, sb))})"
            )
        batch = broadcast_shapes(sa[:-2], sb[:-2])
        out = batch + (sa[-2:-1] if len(sa) > 1 else ()) + (sb[-1:] if len(sb) > 1 else ())
        return out, dtypes.promote((part(a), part(b)))

    eager = staticmethod(_matmul)

    def vjp(n, g):
        a, b = n.args
        if a.dim() == 1 and b.dim() == 1:  # dot product: g is 0-d
            return (g * b if n.needs[0] else None), (g * a if n.needs[1] else None)
        a2 = a.unsqueeze(0) if a.dim() == 1 else a
        b2 = b.unsqueeze(-1) if b.dim() == 1 else b
        if a.dim() == 1:
            g = g.unsqueeze(-2)
        if b.dim() == 1:
            g = g.unsqueeze(-1)
        ga = g @ b2.transpose(-1, -2) if n.needs[0] else None
        gb = a2.transpose(-1, -2) @ g if n.needs[1] else None
        if ga is not None and a.dim() == 1:
            ga = ga.squeeze(-2)
        if gb is not None and b.dim() == 1:
            gb = gb.squeeze(-1)
        return ga, gb


@defop
class Linear(Op):
    """x @ w.T + b as ONE op, so a Linear layer records one node; the planner splits the bias
    add off into the next fused loop."""

    name, grad_fn = "linear", "AddmmBackward0"

    def infer(self, args, attrs):
        x, w = args[0], args[1]
        if x.shape[-1:] != w.shape[1:]:
            raise ValueError(
                f"mat1 and mat2 shapes cannot be multiplied ({'x'.join(map(str, x.shape))} and "
                f"{w.shape[1]}x{w.shape[0]})"
            )
        return x.shape[:-1] + (w.shape[0],), dtypes.promote(tuple(part(a) for a in args))

    def eager(self, x, w, b=None):
        out = _matmul(x, w.T)
        if b is not None:
            out += b
        return out

    def vjp(n, g):
        x, w = n.args[0], n.args[1]
        g2 = g.reshape(-1, g.shape[-1]) if g.dim() != 2 else g
        x2 = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
        gx = g @ w if n.needs[0] else None
        gw = g2.t() @ x2 if n.needs[1] else None
        gb = (g2.sum(0) if n.needs[2] else None) if len(n.args) == 3 else None
        return (gx, gw, gb)[: len(n.args)]


@defop
class MatmulT(Op):
    """x @ w.T: the BLAS half of linear once the planner has split the bias add off."""

    name, differentiable = "mm_t", False

    def infer(self, args, attrs):
        x, w = args
        return x.shape[:-1] + (w.shape[0],), x.dtype

    def eager(self, x, w):
        return _matmul(x, w.T)


@defop
class Cat(Op):
    name, grad_fn, needs_inputs = "cat", "CatBackward0", False

    def infer(self, args, attrs):
        dim = attrs["dim"]
        first = args[0].shape
        for a in args[1:]:
            if len(a.shape) != len(first) or any(
                x != y for i, (x, y) in enumerate(zip(a.shape, first)) if i != dim
            ):
                raise ValueError(
                    f"Sizes of tensors must match except in dimension {dim}. Got shapes "
                    f"{[tuple(t.shape) for t in args]}"
                )
        shape = list(first)
        shape[dim] = sum(a.shape[dim] for a in args)
        return tuple(shape), dtypes.promote(tuple(part(a) for a in args))

    def eager(self, *xs, dim):
        d = dtypes.promote(tuple((dtypes.from_numpy_dtype(x.dtype), 2 if x.ndim else 1) for x in xs))
        return np.concatenate([x.astype(d.np, copy=False) for x in xs], axis=dim)

    def vjp(n, g):
        dim, start, out = n.attrs["dim"], 0, []
        for a in n.args:
            size = a.shape[dim]
            idx = (slice(None),) * dim + (slice(start, start + size),)
            out.append(g[idx])
            start += size
        return tuple(out)


# --------------------------------------------------------------------------- multi-tensor updates
class Update(Op):
    """An optimizer step over a whole parameter group as ONE op (one kernel when compiled).

    Arguments: ``len(tensors)`` tensors for each of ``n`` parameters (parameter-major), then the
    group's ``shared`` scalars, then ``each`` scalars per parameter. ``elem`` computes the new
    values of one element; given whole arrays it is also the eager kernel, and the compiler
    copies its source into the kernel's loop, so eager and compiled run the same float32
    operations in the same order (PyTorch's single-tensor formulas). ``elem`` returns the new
    value of every tensor; those named by ``writes(attrs)`` are written back in place. Static
    flags come last, from the attrs (a tuple attr gives one flag per parameter).
    """

    kind = "update"
    differentiable = False
    needs_inputs = False
    tensors: tuple = ()
    shared: tuple = ()
    each: tuple = ()
    flags: tuple = ()
    elem = None

    def writes(self, attrs: dict) -> tuple:
        """Indices (into one parameter's tensors) written back in place."""
        raise NotImplementedError

    def written(self, attrs: dict) -> list[int]:
        """Positions in the op's arguments of the tensors written back in place."""
        t = len(self.tensors)
        return [k * t + j for k in range(attrs["n"]) for j in self.writes(attrs)]

    def written_tensors(self, args: tuple, attrs: dict) -> list:
        return [args[k] for k in self.written(attrs)]

    def split(self, args: tuple, n: int) -> tuple[list, tuple, list]:
        """(per-parameter tensor tuples, shared scalars, per-parameter scalar tuples)."""
        t, e = len(self.tensors), len(self.each)
        tensors = [tuple(args[k * t:(k + 1) * t]) for k in range(n)]
        shared = tuple(args[n * t:n * t + len(self.shared)])
        rest = args[n * t + len(self.shared):]
        return tensors, shared, [tuple(rest[k * e:(k + 1) * e]) for k in range(n)]

    def flag_values(self, attrs: dict, k: int) -> tuple:
        return tuple(attrs[f][k] if isinstance(attrs[f], tuple) else attrs[f] for f in self.flags)

    def infer(self, args, attrs):
        n = attrs["n"]
        if len(args) != n * (len(self.tensors) + len(self.each)) + len(self.shared):
            raise ValueError(f"expected {n} parameters' arguments, got {len(args)} arguments")
        for k, ts in enumerate(self.split(args, n)[0]):
            shapes = [tuple(shape_of(x)) for x in ts]
            kinds = {x.dtype for x in ts}
            if len(set(shapes)) > 1 or len(kinds) > 1 or not ts[0].dtype.is_floating_point:
                got = ", ".join(f"{nm}{list(sh)}:{x.dtype.name}" for nm, sh, x in zip(self.tensors, shapes, ts))
                raise ValueError(f"parameter {k}: {got} must have one shape and one floating dtype")
        return (), bool_

    def eager(self, *arrays, **attrs):
        tensors, shared, each = self.split(arrays, attrs["n"])
        with np.errstate(all="ignore"):
            for k, ts in enumerate(tensors):
                cast = ts[0].dtype.type
                new = self.elem(*ts, *map(cast, shared), *map(cast, each[k]), *self.flag_values(attrs, k))
                for j in self.writes(attrs):
                    np.copyto(ts[j], new[j])
        return np.zeros((), np.bool_)


def _sgd_elem(p, g, buf, neg_lr, momentum, one_minus_dampening, weight_decay,
              maximize, decay, use_momentum, nesterov, first):
    if maximize:
        g = -g
    if decay:
        g = g + p * weight_decay
    if use_momentum:
        if first:
            buf = g
        else:
            buf = buf * momentum + g * one_minus_dampening
        if nesterov:
            g = g + buf * momentum
        else:
            g = buf
    p = p + g * neg_lr
    return p, g, buf


@defop
class SGDStep(Update):
    """torch.optim.SGD's update: buf = momentum * buf + (1 - dampening) * g (buf = g on the
    first step), p -= lr * (g + momentum * buf if nesterov else buf)."""

    name = "sgd_step"
    tensors = ("param", "grad", "momentum_buffer")
    shared = ("neg_lr", "momentum", "one_minus_dampening", "weight_decay")
    flags = ("maximize", "decay", "use_momentum", "nesterov", "first")
    elem = staticmethod(_sgd_elem)

    def writes(self, attrs):
        return (0, 2) if attrs["use_momentum"] else (0,)


def _adam_elem(p, g, m, v, vmax, beta2, one_minus_beta2, weight, one_minus_weight, eps,
               weight_decay, keep, neg_step_size, bias_correction2_sqrt,
               maximize, decay, decoupled, amsgrad, small_weight):
    if maximize:
        g = -g
    if decay:
        if decoupled:
            p = p * keep
        else:
            g = g + p * weight_decay
    if small_weight:  # exp_avg.lerp_(g, weight), ATen's two-sided formula
        m = m + (g - m) * weight
    else:
        m = g - (g - m) * one_minus_weight
    v = v * beta2
    v = v + g * g * one_minus_beta2
    if amsgrad:
        vmax = np.maximum(vmax, v)
        denom = np.sqrt(vmax) / bias_correction2_sqrt + eps
    else:
        denom = np.sqrt(v) / bias_correction2_sqrt + eps
    p = p + m / denom * neg_step_size
    return p, g, m, v, vmax


@defop
class AdamStep(Update):
    """torch.optim.Adam / AdamW's update with bias correction (step counts per parameter)."""

    name = "adam_step"
    tensors = ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    shared = ("beta2", "one_minus_beta2", "weight", "one_minus_weight", "eps", "weight_decay", "keep")
    each = ("neg_step_size", "bias_correction2_sqrt")
    flags = ("maximize", "decay", "decoupled", "amsgrad", "small_weight")
    elem = staticmethod(_adam_elem)

    def writes(self, attrs):
        return (0, 2, 3, 4) if attrs["amsgrad"] else (0, 2, 3)


@defop
class Updated(Op):
    """The new value of a tensor written by an update op: an alias of the written array."""

    name, kind, differentiable, needs_inputs = "updated", "view", False, False

    def aliases(self, attrs):
        return False  # it is the written tensor's own new value, not a view of another tensor

    def infer(self, args, attrs):
        return tuple(shape_of(args[1])), args[1].dtype

    def eager(self, token, x):
        return x


# --------------------------------------------------------------------------- entry points
def linear(x, weight, bias=None):
    """x @ weight.T + bias as one recorded op (what nn.Linear calls)."""
    if x.dtype is not weight.dtype or (bias is not None and bias.dtype is not x.dtype):
        raise op_error(
            "linear", f"expected input, weight and bias of one dtype, got {x.dtype.name}, "
            f"{weight.dtype.name}{', ' + bias.dtype.name if bias is not None else ''}",
        )
    return call("linear", x, weight) if bias is None else call("linear", x, weight, bias)


def gelu(x):
    """Exact (erf) GELU, one elementwise op."""
    return call("gelu", x)


def erf(x):
    return call("erf", x)
