"""Accuracy and special-value tests for fusegrad.fastmath (float32 approximations).

Errors are counted in float32 ulps: the distance, in representable float32
values, between the function's result and the float64 reference rounded to
float32 (so denormal results are measured in units of 2**-149).  Every
function is evaluated the way generated kernels use it: inside an @njit loop.
"""

from __future__ import annotations

import math
import os
import platform
import re
import sys

import numpy as np
import pytest

numba = pytest.importorskip("numba")

try:
    from fusegrad import fastmath as fm
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    from fusegrad import fastmath as fm

NAMES = list(fm.F32)

# Max error in ulps asserted below (documented in the fastmath module docstring).
ULP_BOUND = {
    "exp": 1,
    "log": 1,
    "tanh": 1,
    "sigmoid": 2,
    "erf": 1,
    "gelu": 5,
    "gelu_grad": 5,  # also right next to its root x0 = -0.75179...
}
ERF_ABS_BOUND = 1e-7
GELU_GRAD_ROOT = -0.7517915246935645
FASTMATH_CALLER_ULP_BOUND = 8

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

_LOOPS = {}


def _loop(name, fastmath=False):
    """Compiled ``out[i] = f(x[i])`` loop for one fastmath function."""
    key = (name, fastmath)
    if key not in _LOOPS:
        f = getattr(fm, fm.F32[name])

        @numba.njit(fastmath=fastmath)
        def run(x, out):
            for i in range(x.size):
                out[i] = f(x[i])

        _LOOPS[key] = run
    return _LOOPS[key]


def _apply(name, x, fastmath=False):
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    _loop(name, fastmath)(x, out)
    return out


@numba.njit
def _erf_ref(d, out):
    for i in range(d.size):
        out[i] = math.erf(d[i])


@numba.njit
def _phi_ref(d, out):  # Phi(d) = 0.5 * erfc(-d / sqrt 2), accurate in the tails
    for i in range(d.size):
        out[i] = 0.5 * math.erfc(-d[i] * _SQRT1_2)


def _reference(name, x):
    """float64 reference values for float32 inputs x."""
    with np.errstate(all="ignore"):
        d = x.astype(np.float64)
        if name == "exp":
            return np.exp(d)
        if name == "log":
            return np.log(d)
        if name == "tanh":
            return np.tanh(d)
        if name == "sigmoid":
            e = np.exp(-np.abs(d))
            return np.where(d >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        out = np.empty_like(d)
        if name == "erf":
            _erf_ref(d, out)
            return out
        _phi_ref(d, out)
        if name == "gelu":
            return np.where(np.isinf(d) & (d < 0), -0.0, d * out)
        if name == "gelu_grad":
            dd = np.where(np.isfinite(d), d, 0.0)
            return np.where(np.isnan(d), d, out + dd * np.exp(-0.5 * dd * dd) * _INV_SQRT_2PI)
    raise KeyError(name)


def _ordinal(v):
    """Map float32 values to integers that are consecutive for adjacent floats."""
    i = np.asarray(v, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def ulp_error(got, ref64):
    """Per-element float32 ulp distance; 0 where both are NaN, inf where one is."""
    with np.errstate(over="ignore", invalid="ignore"):
        ref32 = ref64.astype(np.float32)
    err = np.abs(_ordinal(got) - _ordinal(ref32)).astype(np.float64)
    gnan, rnan = np.isnan(got), np.isnan(ref32)
    err[gnan | rnan] = np.inf
    err[gnan & rnan] = 0.0
    return err


def _samples():
    # every 4093rd float32 bit pattern: ~1M values spread over the whole range
    # (both signs, denormals, huge values, infinities' neighbours and NaNs)
    grid = np.arange(0, 2**32, 4093, dtype=np.uint64).astype(np.uint32).view(np.float32)
    dense = np.linspace(-10.0, 10.0, 400_001, dtype=np.float32)
    small = np.float32(2.0) ** np.arange(-149, 1, dtype=np.float32)
    return np.concatenate([grid, dense, small, -small])


SAMPLES = _samples()

SPECIALS = np.array(
    [
        0.0,
        -0.0,
        np.inf,
        -np.inf,
        np.nan,
        1e-45,
        -1e-45,
        1e-40,
        -1e-40,
        1.1754944e-38,
        -1.1754944e-38,
        3.4028235e38,
        -3.4028235e38,
        1.0,
        -1.0,
        0.5,
        -0.5,
    ],
    dtype=np.float32,
)


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------


def test_table_names_exist():
    assert set(fm.F32) == set(ULP_BOUND)
    for op, fname in fm.F32.items():
        assert fname == f"{op}_f32"
        assert callable(getattr(fm, fname))


def test_ulp_metric_detects_errors():
    x = np.linspace(0.5, 2.0, 1000, dtype=np.float32)
    ref = x.astype(np.float64)
    assert ulp_error(x, ref).max() == 0
    bumped = np.nextafter(np.nextafter(x, np.float32(3)), np.float32(3))
    assert ulp_error(bumped, ref).min() == 2
    assert ulp_error(np.float32([np.nan]), np.array([1.0]))[0] == np.inf
    assert ulp_error(np.float32([1e-45]), np.array([0.0]))[0] == 1  # denormal ulps


# Worst cases found by an exhaustive run over all 2**32 inputs (one per function).
WORST_CASES = np.array(
    [5.9604645e-08, 9.14e-43, 0.00035211173, -1.0987998, 3.6026e-41, -0.81332433, -1.8212556],
    dtype=np.float32,
)


@pytest.mark.parametrize("name", NAMES)
def test_accuracy_whole_range(name):
    x = np.concatenate([SAMPLES, SPECIALS, WORST_CASES])
    got = _apply(name, x)
    ref = _reference(name, x)
    err = ulp_error(got, ref)
    if name == "erf":
        finite = np.isfinite(ref)
        assert np.abs(got[finite].astype(np.float64) - ref[finite]).max() <= ERF_ABS_BOUND
    worst = int(np.argmax(err))
    assert err.max() <= ULP_BOUND[name], (
        f"{name}: {err.max()} ulp at x={x[worst]!r}: got {got[worst]!r}, want {ref[worst]!r}"
    )


@pytest.mark.parametrize("name", NAMES)
def test_nan_propagates(name):
    nans = np.array([np.nan, -np.nan], dtype=np.float32)
    nans = np.concatenate([nans, np.uint32([0x7FC00001, 0xFFFFFFFF, 0x7F800001]).view(np.float32)])
    assert np.isnan(_apply(name, nans)).all()


def _one(name, v):
    return _apply(name, np.array([v], dtype=np.float32))[0]


def _is_neg_zero(v):
    return v == 0 and np.signbit(v)


def _ulps(name, v):
    """ulp error of the function at float32(v) against the float64 reference."""
    x = np.array([v], dtype=np.float32)
    return ulp_error(_apply(name, x), _reference(name, x))[0]


def test_exp_special_values():
    assert _one("exp", 0.0) == 1.0
    assert _one("exp", -0.0) == 1.0
    assert _one("exp", np.inf) == np.inf
    assert _one("exp", -np.inf) == 0.0
    assert _one("exp", 89.0) == np.inf
    assert np.isfinite(_one("exp", 88.72))  # just below overflow
    assert _ulps("exp", 88.72) <= 1
    assert _one("exp", 1e30) == np.inf
    assert _one("exp", -104.0) == 0.0
    assert _one("exp", -1e30) == 0.0
    d = _one("exp", -100.0)  # gradual underflow: denormal, correctly scaled
    assert 0 < d < 1.1754944e-38
    assert abs(float(d) - math.exp(-100.0)) <= 2.0**-149
    assert _one("exp", 1e-45) == 1.0
    assert _ulps("exp", 1.0) <= 1


def test_log_special_values():
    assert _one("log", 0.0) == -np.inf
    assert _one("log", -0.0) == -np.inf
    assert np.isnan(_one("log", -1.0))
    assert np.isnan(_one("log", -1e-45))
    assert np.isnan(_one("log", -np.inf))
    assert _one("log", np.inf) == np.inf
    assert _one("log", 1.0) == 0.0
    assert _ulps("log", 1e-45) <= 1  # smallest denormal
    assert _ulps("log", 3e-39) <= 1  # denormal
    assert _ulps("log", 3.4028235e38) <= 1


def test_tanh_special_values():
    assert _one("tanh", np.inf) == 1.0
    assert _one("tanh", -np.inf) == -1.0
    assert _one("tanh", 20.0) == 1.0
    assert _one("tanh", -3e38) == -1.0
    assert _one("tanh", 0.0) == 0.0 and not np.signbit(_one("tanh", 0.0))
    assert _is_neg_zero(_one("tanh", -0.0))
    for v in (1e-45, -1e-45, 1e-38, 3e-20, -2e-10, 1e-5):  # tanh(x) = x: no cancellation
        assert _one("tanh", v) == np.float32(v)
    for v in (1e-3, -0.1, 0.6, 0.65, -3.0):
        assert _ulps("tanh", v) <= 1
    assert _one("tanh", 9.0) == np.float32(math.tanh(9.0)) < 1.0  # not rounded to 1 early


def test_sigmoid_special_values():
    assert _one("sigmoid", 0.0) == 0.5
    assert _one("sigmoid", np.inf) == 1.0
    assert _one("sigmoid", -np.inf) == 0.0
    assert _one("sigmoid", 1e30) == 1.0
    assert _one("sigmoid", -1e30) == 0.0
    assert _one("sigmoid", 20.0) == np.float32(1.0 / (1.0 + math.exp(-20.0)))
    s = _one("sigmoid", -90.0)  # tiny but representable result is kept
    assert s > 0 and abs(float(s) - math.exp(-90.0)) <= 2.0**-149
    assert _ulps("sigmoid", -50.0) <= 1


def test_erf_special_values():
    assert _one("erf", np.inf) == 1.0
    assert _one("erf", -np.inf) == -1.0
    assert _one("erf", 5.0) == 1.0
    assert _one("erf", -1e30) == -1.0
    assert _one("erf", 0.0) == 0.0 and not np.signbit(_one("erf", 0.0))
    assert _is_neg_zero(_one("erf", -0.0))
    assert _ulps("erf", 1e-30) <= 1
    assert _ulps("erf", -1e-40) <= 1


def test_gelu_special_values():
    assert _one("gelu", np.inf) == np.inf
    g = _one("gelu", -np.inf)
    assert g == 0.0 and not np.isnan(g)
    assert _one("gelu", 0.0) == 0.0
    assert _is_neg_zero(_one("gelu", -0.0))
    assert _one("gelu", 1e30) == np.float32(1e30)
    assert _one("gelu", -30.0) == 0.0
    assert _one("gelu", 1e-30) == np.float32(1e-30) * np.float32(0.5)
    # negative tail keeps relative accuracy (1 + erf(x/sqrt2) would cancel)
    want = -5.0 * 0.5 * math.erfc(5.0 * _SQRT1_2)
    assert abs(_one("gelu", -5.0) / want - 1) < 4 * 2.0**-23


def test_gelu_grad_near_its_root():
    x0 = np.float32(GELU_GRAD_ROOT)
    steps = np.arange(-300, 301)
    x = (x0.view(np.int32) + steps).astype(np.int32).view(np.float32)  # x0 +- 300 ulp
    got = _apply("gelu_grad", x)
    assert ulp_error(got, _reference("gelu_grad", x)).max() <= ULP_BOUND["gelu_grad"]
    assert (np.sign(got) == np.sign(x.astype(np.float64) - GELU_GRAD_ROOT)).all()


def test_gelu_grad_special_values():
    assert _one("gelu_grad", np.inf) == 1.0
    assert _one("gelu_grad", -np.inf) == 0.0
    assert _one("gelu_grad", 0.0) == 0.5
    assert _one("gelu_grad", 30.0) == 1.0
    assert _one("gelu_grad", -30.0) == 0.0
    # matches a finite difference of gelu_f32 in float64
    x = np.linspace(-6, 6, 1001).astype(np.float32).astype(np.float64)
    h = 1e-3
    num = (_reference("gelu", x + h) - _reference("gelu", x - h)) / (2 * h)
    assert np.abs(_apply("gelu_grad", x).astype(np.float64) - num).max() < 1e-6


def test_accepts_float64_and_int_arguments():
    @numba.njit
    def call(v, i):
        return fm.exp_f32(v), fm.log_f32(i)

    e, lg = call(1.0, 2)  # float64 and int64 arguments are converted to float32
    assert e == np.float32(math.e)
    assert lg == np.float32(math.log(2.0))


@pytest.mark.parametrize("name", NAMES)
def test_accuracy_inside_fastmath_kernel(name):
    """Inlined into a fastmath=True kernel, the compensated steps must survive."""
    x = np.concatenate([np.linspace(-20, 20, 40_001, dtype=np.float32), SAMPLES[::16]])
    x = x[np.isfinite(x)]
    if name == "log":
        x = np.abs(x[x != 0])
    if name == "exp":
        x = x[np.abs(x) < 87]  # fastmath may drop inf/denormal handling
    got = _apply(name, x, fastmath=True)
    ref = _reference(name, x)
    err = ulp_error(got, ref)
    tiny = np.abs(ref) < 1.1754944e-38  # denormal results are not promised here
    err[tiny] = 0
    assert err.max() <= FASTMATH_CALLER_ULP_BOUND, (name, err.max(), x[np.argmax(err)])


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"),
    reason="vector ISA check only for x86-64/aarch64",
)
@pytest.mark.parametrize("name", ["tanh", "gelu"])
def test_loop_is_vectorized(name):
    """No libm call and vector float arithmetic in the compiled loop (not timed)."""
    run = _loop(name)
    _apply(name, np.zeros(64, np.float32))
    llvm_ir = run.inspect_llvm(run.signatures[0])
    assert re.search(r"<(4|8|16) x float>", llvm_ir), "loop was not vectorized"
    assert not re.search(r"declare[^\n]*@(tanhf?|expf?|erff?|erfcf?)\(", llvm_ir)


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"),
    reason="vector ISA check only for x86-64/aarch64",
)
def test_gelu_and_its_gradient_share_one_tail():
    """A fused forward + backward loop evaluates erfc's tail once: gelu_f32 and
    gelu_grad_f32 start with the same _gelu_tail, which LLVM merges (not timed: the
    vectorized loop body has as many divisions as the gradient's alone)."""

    @numba.njit
    def both(x, out, dout):
        for i in range(x.size):
            v = x[i]
            out[i] = fm.gelu_f32(v)
            dout[i] = fm.gelu_grad_f32(v)

    x = np.linspace(-20, 20, 257, dtype=np.float32)
    out, dout = np.empty_like(x), np.empty_like(x)
    both(x, out, dout)
    assert np.array_equal(out, _apply("gelu", x)) and np.array_equal(dout, _apply("gelu_grad", x))
    _apply("gelu_grad", x)
    grad = _loop("gelu_grad")

    def vector_divisions(f):
        return len(re.findall(r"= fdiv <\d+ x float>", f.inspect_llvm(f.signatures[0])))

    assert vector_divisions(both) == vector_divisions(grad) >= 1
