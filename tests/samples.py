"""Sample inputs for every op in ``fusegrad.ops.REGISTRY``: the table that drives test_ops.py.

``SAMPLES[name]`` is a list of ``Sample(args, attrs, call)``:

- ``args``: the positional data, as numpy arrays or Python scalars. Float arrays (always
  float64 here) are cast to the dtype under test and are the inputs that gradients are taken
  for; integer and bool arrays are data or indices and are passed as they are; Python scalars
  stay Python scalars (they exercise promotion and the reflected operators).
- ``attrs``: the op's static attributes (dims, keepdim, shapes, indices, the exponent). The
  numpy reference of test_ops.py is called as ``REF[name](*arrays, **attrs)``.
- ``call(*tensors)``: applies the op through the PUBLIC Tensor API only. It works for fusegrad
  and for PyTorch tensors alike (``lib(x)`` picks the module), so the same sample is checked
  against PyTorch.

Ops with no public call of their own are reached through the public API that produces them:
``index_grad`` through the (create_graph) backward of indexing, ``index_put`` through item
assignment, ``mm_t`` through ``linear`` (the compiler splits linear into mm_t + bias add).

Values are chosen so that finite differences are well conditioned: positive inputs where the
op needs them (log, sqrt, rsqrt, pow), inputs away from kinks (abs, relu, sign, clamp bounds,
maximum/minimum), and no ties where an extreme is taken (amax, argmax).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class Sample(NamedTuple):
    args: tuple
    attrs: dict
    call: Callable


# ----------------------------------------------------------------------------- helpers
def lib(*xs):
    """The module that owns these tensors: torch for PyTorch tensors, fusegrad otherwise."""
    for x in xs:
        if type(x).__module__.split(".")[0] == "torch":
            import torch

            return torch
    import fusegrad

    return fusegrad


def index_for(x, index):
    """A numpy-described index made into one that x's library takes (arrays become tensors)."""
    if not isinstance(index, tuple):
        index = (index,)
    return tuple(lib(x).tensor(i) if isinstance(i, np.ndarray) else i for i in index)


def describe(s: Sample) -> str:
    """A short id for a sample: argument shapes/dtypes and attributes."""
    parts = []
    for a in s.args:
        if isinstance(a, np.ndarray):
            kind = {"f": "", "i": "i", "b": "b"}[a.dtype.kind]
            parts.append(f"{kind}{'x'.join(map(str, a.shape)) or '0d'}")
        else:
            parts.append(repr(a))
    for k, v in s.attrs.items():
        if isinstance(v, tuple) and any(isinstance(i, np.ndarray) for i in v):
            v = "arr"
        elif isinstance(v, np.ndarray):
            v = "arr"
        parts.append(f"{k}={v}")
    return ",".join(parts).replace(" ", "")


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


class _Gen:
    """Value generators for one op (seeded by the op name, so samples are stable)."""

    def __init__(self, name: str):
        self.r = _rng(name)

    def n(self, *shape):
        """Standard normal values."""
        return np.asarray(self.r.standard_normal(shape))

    def pos(self, *shape, lo=0.5, hi=2.0):
        """Positive values, away from 0 (log, sqrt, rsqrt, pow bases, divisors)."""
        return np.asarray(self.r.uniform(lo, hi, shape))

    def away(self, *shape, kinks=(0.0,), margin=0.1):
        """Normal values at least margin away from each kink (abs, relu, sign, clamp)."""
        x = self.r.standard_normal(shape)
        for k in kinks:
            near = np.abs(x - k) < margin
            x = np.where(near, k + np.where(x >= k, margin, -margin) * 2, x)
        return np.asarray(x)

    def distinct(self, *shape, gap=0.3):
        """Values with no ties (every pair at least ~gap apart): extremes have one winner."""
        size = int(np.prod(shape)) if shape else 1
        v = (self.r.permutation(size) - size / 2) * gap + self.r.uniform(0, gap / 4, size)
        return np.asarray(v.reshape(shape))

    def ints(self, *shape, lo=-3, hi=4):
        return self.r.integers(lo, hi, shape).astype(np.int64)

    def bools(self, *shape):
        return self.r.random(shape) < 0.5

    def grid(self, *shape):
        """Small integers as floats: exact in float32 and float64, with ties (comparisons)."""
        return self.r.integers(-2, 3, shape).astype(np.float64)


SAMPLES: dict[str, list[Sample]] = {}


def sampler(fn):
    """Register fn(gen) -> list of Samples under the op name fn is called for."""
    name = fn.__name__.removeprefix("s_")
    SAMPLES[name] = fn(_Gen(name))
    return fn


def samples(name: str) -> list[Sample]:
    return SAMPLES[name]


S = Sample


# ----------------------------------------------------------------------------- binary
@sampler
def s_add(g):
    return [
        S((g.n(3, 4), g.n(3, 4)), {}, lambda a, b: a + b),
        S((g.n(3, 4), g.n(4)), {}, lambda a, b: a + b),
        S((g.n(2, 1, 4), g.n(3, 1)), {}, lambda a, b: a.add(b)),
        S((g.n(), g.n(3)), {}, lambda a, b: a + b),
        S((g.n(), g.n()), {}, lambda a, b: a + b),
        S((g.n(3, 4), 2.5), {}, lambda a, s: a + s),
        S((1.5, g.n(2, 3)), {}, lambda s, a: s + a),
        S((g.ints(3, 4), g.ints(4)), {}, lambda a, b: a + b),
        S((g.ints(3), 1.5), {}, lambda a, s: a + s),
        S((g.ints(2, 3), g.n(3)), {}, lambda a, b: a + b),
        S((g.n(3, 1), g.ints(1, 4)), {}, lambda a, b: a + b),
        S((g.bools(3), g.bools(3)), {}, lambda a, b: a + b),
    ]


@sampler
def s_sub(g):
    return [
        S((g.n(3, 4), g.n(4)), {}, lambda a, b: a - b),
        S((g.n(2, 1, 4), g.n(3, 1)), {}, lambda a, b: a.sub(b)),
        S((g.n(2, 3), 0.5), {}, lambda a, s: a - s),
        S((2.0, g.n(2, 3)), {}, lambda s, a: s - a),
        S((g.n(), g.n(2, 2)), {}, lambda a, b: a - b),
        S((g.ints(3, 4), g.ints(3, 1)), {}, lambda a, b: a - b),
        S((g.ints(3), 2), {}, lambda a, s: a - s),
    ]


@sampler
def s_mul(g):
    return [
        S((g.n(3, 4), g.n(4)), {}, lambda a, b: a * b),
        S((g.n(2, 1, 4), g.n(3, 1)), {}, lambda a, b: a * b),
        S((g.n(3, 4), g.n(3, 4)), {}, lambda a, b: a.mul(b)),
        S((g.n(2, 3), 3), {}, lambda a, s: a * s),
        S((-0.5, g.n(2, 3)), {}, lambda s, a: s * a),
        S((g.n(), g.n()), {}, lambda a, b: a * b),
        S((g.n(4), g.n()), {}, lambda a, b: a * b),
        S((g.ints(3, 4), 1.5), {}, lambda a, s: a * s),
        S((g.ints(3, 4), g.ints(4)), {}, lambda a, b: a * b),
        S((g.ints(4), g.n()), {}, lambda a, b: a * b),
        S((g.bools(2, 3), g.n(2, 3)), {}, lambda a, b: a * b),
    ]


@sampler
def s_div(g):
    return [
        S((g.n(3, 4), g.pos(4)), {}, lambda a, b: a / b),
        S((g.n(2, 1, 4), -g.pos(3, 1)), {}, lambda a, b: a.div(b)),
        S((g.n(2, 3), 4), {}, lambda a, s: a / s),
        S((2.0, g.pos(2, 3)), {}, lambda s, a: s / a),
        S((g.n(), g.pos()), {}, lambda a, b: a / b),
        S((g.ints(3, 4), g.ints(4, lo=1, hi=5)), {}, lambda a, b: a / b),
        S((g.ints(3), 2), {}, lambda a, s: a / s),
    ]


@sampler
def s_pow(g):
    return [
        S((g.pos(3, 4), g.n(3, 4)), {}, lambda a, b: a**b),
        S((g.pos(3, 4), g.n(4)), {}, lambda a, b: a.pow(b)),
        S((2.0, g.n(2, 3)), {}, lambda s, a: s**a),
        S((g.pos(2, 1), g.n(3)), {}, lambda a, b: a**b),
        S((g.ints(3, 4, lo=0, hi=4), g.ints(4, lo=0, hi=3)), {}, lambda a, b: a**b),
    ]


@sampler
def s_pow_scalar(g):
    out = []
    for e in (2, 3, 0.5, -1, 1.7, -2.5, 0, 1):
        out.append(S((g.pos(3, 4),), {"exponent": e}, lambda a, e=e: a**e))
    out += [
        S((g.n(2, 3),), {"exponent": 2}, lambda a: a.square()),
        S((g.n(2, 3),), {"exponent": 3}, lambda a: a.pow(3)),
        S((g.pos(),), {"exponent": 2.0}, lambda a: a**2.0),
        S((g.ints(3, lo=0, hi=5),), {"exponent": 2}, lambda a: a**2),
        S((g.ints(3, lo=0, hi=5),), {"exponent": 0.5}, lambda a: a**0.5),
    ]
    return out


def _binary_extreme(g, method):
    return [
        S((g.distinct(3, 4), g.distinct(3, 4) + 0.1), {}, lambda a, b: getattr(a, method)(b)),
        S((g.distinct(2, 1, 4), g.distinct(3, 1) + 0.1), {}, lambda a, b: getattr(a, method)(b)),
        S(
            (g.distinct(4), np.asarray(g.distinct() + 0.1)),
            {},
            lambda a, b: getattr(lib(a), method)(a, b),
        ),
        S((g.ints(3, 4), g.ints(4)), {}, lambda a, b: getattr(a, method)(b)),
    ]


@sampler
def s_maximum(g):
    return _binary_extreme(g, "maximum") + [
        S((g.distinct(2, 3), g.distinct(2, 3) + 0.1), {}, lambda a, b: a.max(b)),
    ]


@sampler
def s_minimum(g):
    return _binary_extreme(g, "minimum") + [
        S((g.distinct(2, 3), g.distinct(2, 3) + 0.1), {}, lambda a, b: a.min(b)),
    ]


# ----------------------------------------------------------------------------- unary
def _unary(g, method, data, int_too=True):
    out = [
        S((data(3, 4),), {}, lambda a: getattr(a, method)()),
        S((data(),), {}, lambda a: getattr(a, method)()),
        S((data(2, 1, 3),), {}, lambda a: getattr(lib(a), method)(a)),
    ]
    if int_too:
        out.append(S((g.ints(5, lo=1, hi=4),), {}, lambda a: getattr(a, method)()))
    return out


@sampler
def s_neg(g):
    return _unary(g, "neg", g.n) + [
        S((g.n(3),), {}, lambda a: -a),
        S((g.ints(3),), {}, lambda a: -a),
    ]


@sampler
def s_exp(g):
    return _unary(g, "exp", g.n)


@sampler
def s_log(g):
    return _unary(g, "log", g.pos)


@sampler
def s_sqrt(g):
    return _unary(g, "sqrt", g.pos)


@sampler
def s_rsqrt(g):
    return _unary(g, "rsqrt", g.pos)


@sampler
def s_sin(g):
    return _unary(g, "sin", g.n)


@sampler
def s_cos(g):
    return _unary(g, "cos", g.n)


@sampler
def s_tanh(g):
    return _unary(g, "tanh", g.n)


@sampler
def s_sigmoid(g):
    return _unary(g, "sigmoid", g.n) + [
        S((g.n(4),), {}, lambda a: lib(a).nn.functional.sigmoid(a)),
    ]


@sampler
def s_relu(g):
    return _unary(g, "relu", g.away) + [
        S((g.away(4),), {}, lambda a: lib(a).nn.functional.relu(a)),
        S((g.ints(5),), {}, lambda a: a.relu()),
    ]


@sampler
def s_abs(g):
    return _unary(g, "abs", g.away) + [
        S((g.away(3),), {}, lambda a: abs(a)),
        S((g.ints(5),), {}, lambda a: a.abs()),
    ]


@sampler
def s_sign(g):
    return _unary(g, "sign", g.away) + [S((g.ints(5),), {}, lambda a: a.sign())]


@sampler
def s_erf(g):
    return _unary(g, "erf", g.n, int_too=False)


def _backward_call(forward):
    """The gradient of forward(x).sum() in x: how an op's backward op (gelu_backward, ...)
    is called, having no public call of its own (create_graph keeps it differentiable)."""
    def call(x):
        L = lib(x)
        leaf = x if x.requires_grad else x.detach().requires_grad_()
        return L.autograd.grad(forward(L, leaf).sum(), leaf, create_graph=x.requires_grad)[0]
    return call


def _backward_samples(g, forward):
    call = _backward_call(forward)
    return [S((g.n(3, 4) * 2,), {}, call), S((g.n(),), {}, call)]


@sampler
def s_gelu_backward(g):
    return _backward_samples(g, lambda L, x: L.nn.functional.gelu(x))


@sampler
def s_tanh_backward(g):
    return _backward_samples(g, lambda L, x: x.tanh())


@sampler
def s_sigmoid_backward(g):
    return _backward_samples(g, lambda L, x: x.sigmoid())


@sampler
def s_relu_backward(g):
    return _backward_samples(g, lambda L, x: x.relu())


@sampler
def s_gelu(g):
    return [
        S((g.n(3, 4) * 2,), {}, lambda a: lib(a).nn.functional.gelu(a)),
        S((g.n(),), {}, lambda a: lib(a).nn.functional.gelu(a)),
        S((g.n(2, 1, 3),), {}, lambda a: lib(a).nn.functional.gelu(a)),
    ]


@sampler
def s_logical_not(g):
    return [
        S((g.bools(3, 4),), {}, lambda a: ~a),
        S((g.bools(5),), {}, lambda a: a.logical_not()),
        S((g.grid(2, 3),), {}, lambda a: a.logical_not()),
        S((np.array(True),), {}, lambda a: ~a),
    ]


# ----------------------------------------------------------------------------- comparisons
_CMP = {
    "eq": "__eq__",
    "ne": "__ne__",
    "lt": "__lt__",
    "le": "__le__",
    "gt": "__gt__",
    "ge": "__ge__",
}


def _compare(name):
    def make(g):
        op = _CMP[name]
        return [
            S((g.grid(3, 4), g.grid(3, 4)), {}, lambda a, b: getattr(a, op)(b)),
            S((g.grid(3, 4), g.grid(4)), {}, lambda a, b: getattr(a, name)(b)),
            S((g.grid(2, 1, 4), g.grid(3, 1)), {}, lambda a, b: getattr(a, op)(b)),
            S((g.grid(3, 4), 0.0), {}, lambda a, s: getattr(a, op)(s)),
            S((g.grid(), g.grid(3)), {}, lambda a, b: getattr(lib(a), name)(a, b)),
            S((g.ints(3, 4), g.grid(4)), {}, lambda a, b: getattr(a, op)(b)),
            S((g.ints(3, 4), 1), {}, lambda a, s: getattr(a, op)(s)),
        ]

    make.__name__ = "s_" + name
    return make


for _name in _CMP:
    sampler(_compare(_name))


@sampler
def s_logical_and(g):
    return [
        S((g.bools(3, 4), g.bools(3, 4)), {}, lambda a, b: a & b),
        S((g.bools(2, 1, 4), g.bools(3, 1)), {}, lambda a, b: a & b),
        S((g.bools(3), np.array(True)), {}, lambda a, b: a & b),
    ]


@sampler
def s_logical_or(g):
    return [
        S((g.bools(3, 4), g.bools(3, 4)), {}, lambda a, b: a | b),
        S((g.bools(2, 1, 4), g.bools(3, 1)), {}, lambda a, b: a | b),
        S((g.bools(3), np.array(False)), {}, lambda a, b: a | b),
    ]


# ----------------------------------------------------------------------------- clamp, where
def _off_bound(g):
    """(x, bound): a (4,)-tensor bound and x (3, 4) at least 0.1 away from it everywhere."""
    bound = g.n(4)
    return bound + g.away(3, 4), bound


def _off_bounds(g):
    """(x, lo, hi): tensor bounds lo < hi = lo + 1, x at least 0.1 away from both."""
    lo = g.n(4)
    return lo + g.away(3, 4, kinks=(0.0, 1.0)), lo, lo + 1.0


@sampler
def s_clamp_min(g):
    return [
        S((g.away(3, 4, kinks=(0.2,)), 0.2), {}, lambda a, lo: a.clamp(min=lo)),
        S((g.away(3, 4, kinks=(-0.3,)), -0.3), {}, lambda a, lo: a.clamp_min(lo)),
        S((g.away(), 0.5), {}, lambda a, lo: a.clamp(min=lo)),
        S((g.ints(6), 1), {}, lambda a, lo: a.clamp(min=lo)),
        S((g.ints(6), 0.5), {}, lambda a, lo: a.clamp(min=lo)),
        S(_off_bound(g), {}, lambda a, lo: a.clamp(min=lo)),
    ]


@sampler
def s_clamp_max(g):
    return [
        S((g.away(3, 4, kinks=(0.2,)), 0.2), {}, lambda a, hi: a.clamp(max=hi)),
        S((g.away(3, 4, kinks=(-0.3,)), -0.3), {}, lambda a, hi: a.clamp_max(hi)),
        S((g.away(5), 0.0), {}, lambda a, hi: lib(a).clamp(a, max=hi)),
        S((g.ints(6), 1), {}, lambda a, hi: a.clamp(max=hi)),
        S((g.ints(6), 1.5), {}, lambda a, hi: a.clamp(max=hi)),
        S(_off_bound(g), {}, lambda a, hi: a.clamp(max=hi)),
    ]


@sampler
def s_clamp(g):
    return [
        S((g.away(3, 4, kinks=(-0.5, 0.5)), -0.5, 0.5), {}, lambda a, lo, hi: a.clamp(lo, hi)),
        S((g.away(5, kinks=(-1.0, 0.2)), -1.0, 0.2), {}, lambda a, lo, hi: a.clip(lo, hi)),
        S((g.away(kinks=(0.0, 1.0)), 0.0, 1.0), {}, lambda a, lo, hi: lib(a).clamp(a, lo, hi)),
        S((g.ints(6), -1, 2), {}, lambda a, lo, hi: a.clamp(lo, hi)),
        S((g.ints(6), -0.5, 1.5), {}, lambda a, lo, hi: a.clamp(lo, hi)),
        S(_off_bounds(g), {}, lambda a, lo, hi: a.clamp(lo, hi)),
    ]


@sampler
def s_where(g):
    return [
        S((g.bools(3, 4), g.n(3, 4), g.n(3, 4)), {}, lambda c, a, b: lib(a).where(c, a, b)),
        S((g.bools(3, 1), g.n(1, 4), g.n(4)), {}, lambda c, a, b: lib(a).where(c, a, b)),
        S((g.bools(2, 3), g.n(2, 3), 0.0), {}, lambda c, a, s: lib(a).where(c, a, s)),
        S((g.bools(4), g.n(4), g.n()), {}, lambda c, a, b: a.where(c, b)),
        S((g.bools(4), g.ints(4), g.n(4)), {}, lambda c, a, b: lib(b).where(c, a, b)),
    ]


# ----------------------------------------------------------------------------- copies
def _flip(a):
    """float32 <-> float64: a cast that exists whatever float dtype is under test."""
    return a.double() if a.dtype == lib(a).float32 else a.float()


@sampler
def s_cast(g):
    return [
        S((g.n(3, 4),), {"to": "flip"}, _flip),
        S((g.ints(3, 4),), {"to": "float32"}, lambda a: a.float()),
        S((g.ints(4),), {"to": "float64"}, lambda a: a.double()),
        S((g.n(5) * 2,), {"to": "int64"}, lambda a: a.long()),
        S((g.n(5) * 2,), {"to": "int32"}, lambda a: a.int()),
        S((g.grid(5),), {"to": "bool"}, lambda a: a.bool()),
        S((g.bools(4),), {"to": "float32"}, lambda a: a.float()),
        S((g.ints(4),), {"to": "int32"}, lambda a: a.to(lib(a).int32)),
    ]


@sampler
def s_clone(g):
    return [
        S((g.n(3, 4),), {}, lambda a: a.clone()),
        S((g.n(),), {}, lambda a: a.clone()),
        S((g.ints(3),), {}, lambda a: a.clone()),
        S((g.n(3, 4),), {"transpose": True}, lambda a: a.t().contiguous()),
    ]


@sampler
def s_expand(g):
    return [
        S((g.n(1, 4),), {"shape": (3, 4)}, lambda a: a.expand(3, 4)),
        S((g.n(3, 1),), {"shape": (2, 3, 4)}, lambda a: a.expand(2, 3, 4)),
        S((g.n(3, 1),), {"shape": (3, 4)}, lambda a: a.expand(-1, 4)),
        S((g.n(),), {"shape": (3,)}, lambda a: a.expand(3)),
        S((g.n(4),), {"shape": (2, 4)}, lambda a: a.expand_as(lib(a).zeros(2, 4))),
        S((g.ints(2, 1),), {"shape": (2, 3)}, lambda a: a.expand(2, 3)),
    ]


# ----------------------------------------------------------------------------- reductions
def _reduction(g, method, data, extra=()):
    return [
        S((data(3, 4),), {"dim": None, "keepdim": False}, lambda a: getattr(a, method)()),
        S((data(3, 4),), {"dim": 1, "keepdim": False}, lambda a: getattr(a, method)(dim=1)),
        S(
            (data(3, 4),),
            {"dim": 0, "keepdim": True},
            lambda a: getattr(a, method)(0, keepdim=True),
        ),
        S(
            (data(2, 3, 4),),
            {"dim": (0, 2), "keepdim": False},
            lambda a: getattr(a, method)(dim=(0, 2)),
        ),
        S(
            (data(2, 3, 4),),
            {"dim": (-1, -3), "keepdim": True},
            lambda a: getattr(a, method)((-1, -3), True),
        ),
        S((data(2, 3, 4),), {"dim": -2, "keepdim": False}, lambda a: getattr(a, method)(-2)),
        S((data(),), {"dim": None, "keepdim": False}, lambda a: getattr(a, method)()),
        S(
            (data(5),),
            {"dim": 0, "keepdim": True},
            lambda a: getattr(lib(a), method)(a, 0, keepdim=True),
        ),
        *extra,
    ]


@sampler
def s_sum(g):
    return _reduction(
        g,
        "sum",
        g.n,
        [
            S((g.ints(3, 4),), {"dim": None, "keepdim": False}, lambda a: a.sum()),
            S((g.ints(3, 4),), {"dim": 1, "keepdim": False}, lambda a: a.sum(1)),
            S((g.bools(3, 4),), {"dim": 0, "keepdim": False}, lambda a: a.sum(0)),
            S(
                (g.n(3, 4),),
                {"dim": None, "keepdim": True},
                lambda a: a.sum(dim=(0, 1), keepdim=True),
            ),
        ],
    )


@sampler
def s_mean(g):
    return _reduction(g, "mean", g.n)


def _extreme(g, method):
    """amax/amin, over distinct values: the gradient of a tie is a convention (see max/min)."""
    return _reduction(
        g,
        method,
        g.distinct,
        [S((g.ints(3, 4),), {"dim": 1, "keepdim": False}, lambda a: getattr(a, method)(1))],
    )


@sampler
def s_amax(g):
    return _extreme(g, "amax")


@sampler
def s_amin(g):
    return _extreme(g, "amin")


def _max_min(g, method):
    """x.max() and the values of x.max(dim) (PyTorch's MaxBackward1 / MaxBackward0)."""
    return [
        S((g.distinct(3, 4),), {"dim": None, "keepdim": False}, lambda a: getattr(a, method)()),
        S(
            (g.distinct(3, 4),),
            {"dim": 1, "keepdim": False},
            lambda a: getattr(a, method)(dim=1)[0],
        ),
        S(
            (g.distinct(3, 4),),
            {"dim": 0, "keepdim": True},
            lambda a: getattr(a, method)(0, True).values,
        ),
        S(
            (g.distinct(2, 3, 4),),
            {"dim": -2, "keepdim": False},
            lambda a: getattr(a, method)(-2)[0],
        ),
        S((g.ints(3, 4),), {"dim": 1, "keepdim": False}, lambda a: getattr(a, method)(1).values),
    ]


@sampler
def s_max(g):
    return _max_min(g, "max")


@sampler
def s_min(g):
    return _max_min(g, "min")


def _arg(g, method, short):
    return [
        S((g.distinct(3, 4),), {"dim": None, "keepdim": False}, lambda a: getattr(a, method)()),
        S((g.distinct(3, 4),), {"dim": 1, "keepdim": False}, lambda a: getattr(a, method)(dim=1)),
        S(
            (g.distinct(3, 4),),
            {"dim": 0, "keepdim": True},
            lambda a: getattr(a, method)(0, keepdim=True),
        ),
        S((g.distinct(2, 3, 4),), {"dim": -1, "keepdim": False}, lambda a: getattr(a, method)(-1)),
        S((g.distinct(3, 4),), {"dim": 1, "keepdim": False}, lambda a: getattr(a, short)(1)[1]),
        S((g.distinct(),), {"dim": None, "keepdim": False}, lambda a: getattr(a, method)()),
        S(
            (g.ints(3, 4, lo=-100, hi=100),),
            {"dim": 0, "keepdim": False},
            lambda a: getattr(lib(a), method)(a, 0),
        ),
    ]


@sampler
def s_argmax(g):
    return _arg(g, "argmax", "max")


@sampler
def s_argmin(g):
    return _arg(g, "argmin", "min")


def _boolean_reduction(g, method):
    def mostly(*shape):
        return g.r.random(shape) < 0.8

    return [
        S((mostly(3, 4),), {"dim": None, "keepdim": False}, lambda a: getattr(a, method)()),
        S((mostly(3, 4),), {"dim": 1, "keepdim": False}, lambda a: getattr(a, method)(dim=1)),
        S(
            (mostly(3, 4),),
            {"dim": 0, "keepdim": True},
            lambda a: getattr(a, method)(0, keepdim=True),
        ),
        S(
            (np.ones((2, 3), bool),),
            {"dim": None, "keepdim": False},
            lambda a: getattr(a, method)(),
        ),
        S(
            (np.zeros((2, 3), bool),),
            {"dim": None, "keepdim": False},
            lambda a: getattr(a, method)(),
        ),
        S((g.grid(3, 4),), {"dim": None, "keepdim": False}, lambda a: getattr(a, method)()),
        S((g.grid(3, 4),), {"dim": 1, "keepdim": False}, lambda a: getattr(a, method)(1)),
    ]


@sampler
def s_all(g):
    return _boolean_reduction(g, "all")


@sampler
def s_any(g):
    return _boolean_reduction(g, "any")


# ----------------------------------------------------------------------------- views
@sampler
def s_reshape(g):
    return [
        S((g.n(3, 4),), {"shape": (4, 3)}, lambda a: a.reshape(4, 3)),
        S((g.n(3, 4),), {"shape": (-1,)}, lambda a: a.view(-1)),
        S((g.n(2, 3, 4),), {"shape": (2, -1, 2)}, lambda a: a.reshape((2, -1, 2))),
        S((g.n(),), {"shape": (1,)}, lambda a: a.reshape(1)),
        S((g.n(1),), {"shape": ()}, lambda a: a.reshape(())),
        S((g.n(2, 3, 4),), {"shape": (6, 4)}, lambda a: a.flatten(0, 1)),
        S((g.n(2, 3, 4),), {"shape": (24,)}, lambda a: a.flatten()),
        S((g.n(3, 4),), {"shape": (2, 6)}, lambda a: a.view(2, 6)),
        S((g.ints(6),), {"shape": (2, 3)}, lambda a: a.view(2, 3)),
    ]


@sampler
def s_unsqueeze(g):
    return [
        S((g.n(3, 4),), {"dim": 0}, lambda a: a.unsqueeze(0)),
        S((g.n(3, 4),), {"dim": -1}, lambda a: a.unsqueeze(-1)),
        S((g.n(3, 4),), {"dim": 1}, lambda a: lib(a).unsqueeze(a, 1)),
        S((g.n(),), {"dim": 0}, lambda a: a.unsqueeze(0)),
    ]


@sampler
def s_squeeze(g):
    return [
        S((g.n(3, 1, 4, 1),), {"dim": None}, lambda a: a.squeeze()),
        S((g.n(3, 1, 4, 1),), {"dim": 1}, lambda a: a.squeeze(1)),
        S((g.n(3, 1, 4, 1),), {"dim": -1}, lambda a: a.squeeze(-1)),
        S((g.n(3, 1, 4, 1),), {"dim": (1, 3)}, lambda a: a.squeeze((1, 3))),
        S((g.n(1),), {"dim": None}, lambda a: a.squeeze()),
    ]


@sampler
def s_permute(g):
    return [
        S((g.n(2, 3, 4),), {"dims": (2, 0, 1)}, lambda a: a.permute(2, 0, 1)),
        S((g.n(2, 3, 4),), {"dims": (-1, 0, 1)}, lambda a: a.permute((-1, 0, 1))),
        S((g.n(3, 4),), {"dims": (1, 0)}, lambda a: lib(a).permute(a, (1, 0))),
        S((g.n(2, 3, 4),), {"dims": (2, 1, 0)}, lambda a: a.permute(2, 1, 0)),
        S((g.n(3, 4),), {"dims": (1, 0)}, lambda a: a.T),  # PyTorch's x.T is a permute
    ]


@sampler
def s_transpose(g):
    return [
        S((g.n(3, 4),), {"dims": (0, 1)}, lambda a: a.transpose(0, 1)),
        S((g.n(2, 3, 4),), {"dims": (-1, -3)}, lambda a: a.transpose(-1, -3)),
        S((g.n(2, 3, 4),), {"dims": (1, 2)}, lambda a: lib(a).transpose(a, 1, 2)),
        S((g.n(2, 3, 4),), {"dims": (-2, -1)}, lambda a: a.mT),
    ]


@sampler
def s_t(g):
    return [
        S((g.n(3, 4),), {}, lambda a: a.t()),
        S((g.n(4),), {}, lambda a: a.t()),
        S((g.n(2, 3),), {}, lambda a: lib(a).t(a)),
    ]


# ----------------------------------------------------------------------------- indexing
def _get(index):
    return lambda a: a[index_for(a, index)]


_MASK = np.array(
    [[True, False, True, False], [False, False, True, True], [True, True, False, False]]
)


@sampler
def s_getitem(g):
    indices = [
        (1,),
        (-1, 2),
        (slice(1, None), [0, 2]),
        (slice(None), slice(1, 3)),
        (slice(None, None, 2),),
        (np.array([0, 2, 0, 1]),),
        ([0, 1], [1, 3]),
        (_MASK,),
        (None, 1),
        (Ellipsis, -1),
        (slice(None), None, slice(0, 2)),
    ]
    out = [S((g.n(3, 4),), {"index": i}, _get(i)) for i in indices]
    out.append(
        S(
            (g.n(2, 3, 4),),
            {"index": (1, slice(None), np.array([3, 0]))},
            _get((1, slice(None), np.array([3, 0]))),
        )
    )
    out.append(S((g.ints(5),), {"index": (slice(1, 4),)}, _get((slice(1, 4),))))
    return out


def _index_grad_call(shape, index):
    def call(grad):
        L = lib(grad)
        x = L.zeros(shape, dtype=grad.dtype, requires_grad=True)
        picked = x[index_for(grad, index)]
        return L.autograd.grad((picked * grad).sum(), x, create_graph=True)[0]

    return call


@sampler
def s_index_grad(g):
    cases = [
        ((4, 3), (np.array([0, 2, 0]),), (3, 3)),  # repeated rows accumulate
        ((3, 4), (slice(1, None), [0, 2, 2]), (2, 3)),
        ((3, 4), (_MASK,), (6,)),
        ((3, 4), (1,), (4,)),
    ]
    return [
        S((g.n(*gshape),), {"shape": shape, "index": index}, _index_grad_call(shape, index))
        for shape, index, gshape in cases
    ]


def _put_call(index):
    def call(a, v):
        b = a.clone()
        b[index_for(a, index)] = v
        return b

    return call


def _put_into_zeros(shape, index):
    def call(v):
        b = lib(v).zeros(shape, dtype=v.dtype)
        b[index_for(v, index)] = v
        return b

    return call


@sampler
def s_index_put(g):
    return [
        S((g.n(3, 4), 0.0), {"index": (_MASK,)}, _put_call((_MASK,))),
        S((g.n(3, 4), g.n(2, 4)), {"index": (np.array([2, 0]),)}, _put_call((np.array([2, 0]),))),
        S((g.n(3, 4), g.n(4)), {"index": (1,)}, _put_call((1,))),
        S((g.n(3, 4), g.n(2)), {"index": (slice(1, None), 0)}, _put_call((slice(1, None), 0))),
        S((g.n(3, 4), g.n(6)), {"index": (_MASK,)}, _put_call((_MASK,))),
        S(
            (g.n(2, 4),),
            {"index": (np.array([0, 2]),), "zeros": (3, 4)},
            _put_into_zeros((3, 4), (np.array([0, 2]),)),
        ),
    ]


# ----------------------------------------------------------------------------- extern
@sampler
def s_matmul(g):
    return [
        S((g.n(3, 4), g.n(4, 5)), {}, lambda a, b: a @ b),
        S((g.n(3, 4), g.n(4, 2)), {}, lambda a, b: a.mm(b)),
        S((g.n(4), g.n(4, 5)), {}, lambda a, b: a @ b),
        S((g.n(3, 4), g.n(4)), {}, lambda a, b: a.matmul(b)),
        S((g.n(4), g.n(4)), {}, lambda a, b: a @ b),
        S((g.n(2, 3, 4), g.n(4, 2)), {}, lambda a, b: a @ b),
        S((g.n(2, 3, 4), g.n(2, 4, 2)), {}, lambda a, b: lib(a).matmul(a, b)),
        S((g.n(2, 1, 3, 4), g.n(3, 4, 2)), {}, lambda a, b: a @ b),
    ]


def _linear(*args):
    return lib(*args).nn.functional.linear(*args)


def _linear_samples(g):
    return [
        S((g.n(3, 4), g.n(5, 4), g.n(5)), {}, _linear),
        S((g.n(3, 4), g.n(2, 4)), {}, _linear),
        S((g.n(2, 3, 4), g.n(5, 4), g.n(5)), {}, _linear),
        S((g.n(4), g.n(3, 4), g.n(3)), {}, _linear),
    ]


@sampler
def s_linear(g):
    return _linear_samples(g)


@sampler
def s_mm_t(g):
    # No public call of its own: the compiler splits linear into mm_t + a fused bias add.
    return _linear_samples(g)[:3]


@sampler
def s_cat(g):
    return [
        S((g.n(2, 3), g.n(4, 3)), {"dim": 0}, lambda a, b: lib(a).cat([a, b])),
        S((g.n(2, 3), g.n(2, 1), g.n(2, 2)), {"dim": 1}, lambda *xs: lib(*xs).cat(xs, dim=1)),
        S((g.n(2, 3), g.n(2, 2)), {"dim": -1}, lambda a, b: lib(a).cat((a, b), -1)),
        S((g.n(3), g.n(3)), {"dim": 0, "stack": True}, lambda a, b: lib(a).stack([a, b])),
        S(
            (g.n(2, 3), g.n(2, 3)),
            {"dim": 2, "stack": True},
            lambda a, b: lib(a).stack([a, b], dim=-1),
        ),
        S((g.ints(2, 3), g.n(1, 3)), {"dim": 0}, lambda a, b: lib(b).cat([a, b])),
        S((g.ints(2), g.ints(3)), {"dim": 0}, lambda a, b: lib(a).cat([a, b])),
    ]
