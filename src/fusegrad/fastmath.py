"""Branch-free float32 approximations of transcendental functions for fused kernels.

Why this module exists
----------------------
Inside a Numba ``@njit`` loop, ``np.tanh``/``np.exp``/``np.log``/``math.erf`` on
a float32 scalar lower to calls into the C math library (the PyPI llvmlite has
no SVML), so the loop runs one libm call per element and, for tanh/erf, ~30-70x
slower than it could.  fusegrad's generated float32 kernels call the functions
below instead.  They are plain float32 arithmetic (Cephes-style range
reduction plus polynomials; the erfc/GELU polynomials were fitted for this
module), selects instead of data-dependent branches (no loops, no early
returns), and a few int32 bit tricks done by tiny LLVM intrinsics
(``_bits``/``_from_bits``), so a loop such as ``out[i] = tanh_f32(x[i])`` is
if-converted and vectorized.  float64 kernels keep calling ``math.*``.

``F32`` maps op names to function names for the code generator.

Contract
--------
* Each function takes one scalar (converted to float32) and returns float32.
* NaN in -> NaN out; +-inf, +-0 and denormals are handled (see tests).
* Compiled with ``inline="always"``: Numba inlines the body into the calling
  kernel, which LLVM needs to vectorize the bigger ones (without it gelu is
  left as an out-of-line call and the loop stays scalar).  Inlining means the
  body is compiled with the *caller's* fastmath flags, so the few steps whose
  rounding order is the algorithm (Cody-Waite reduction, the 1.5*2**23
  rounding trick, Veltkamp/Dekker splitting, two-step 2**n scaling) go through
  ``_sadd/_ssub/_smul``: intrinsics whose instructions carry the no-op
  ``arcp`` flag, which Numba's fastmath pass leaves alone.  A
  ``fastmath=True`` kernel therefore still gets accurate results for finite
  inputs (measured <= 5 ulp on normal results), but gives up the inf/NaN
  guarantees, as fastmath does.
* Division goes through ``_fdiv``: a plain ``/`` would carry Numba's
  ZeroDivisionError check under ``error_model='python'``, and that branch
  stops LLVM from vectorizing the loop.
* Results are bit-for-bit reproducible across x86-64 machines when the
  caller uses ``fastmath=False`` (only IEEE float32 add/sub/mul/div, no FMA).

Measured accuracy
-----------------
Error = distance in float32 values (ulps) between the result and the float64
reference (numpy / libm ``math.erf``, ``math.erfc``) rounded to float32;
below FLT_MIN one ulp is 2**-149.  Measured EXHAUSTIVELY over all 2**32
float32 inputs, each function inlined in a ``fastmath=False`` @njit loop
(x86-64, numba 0.68, llvmlite 0.50):

    exp_f32        1 ulp   inf for x >= 88.72284, 0 for x <= -103.97208, denormal
                           results rounded once (two-step 2**n scaling)
    log_f32        1 ulp   also for denormal inputs; log(+-0) = -inf,
                           log(x<0) = nan, log(inf) = inf
    tanh_f32       1 ulp   tanh(x) = x for tiny x (odd polynomial below 0.625),
                           +-1 for |x| >= 9.01, sign of -0 kept
    sigmoid_f32    2 ulp   e/(1+e) with e = exp(-|x|) for x < 0: no overflow,
                           tiny results (down to denormals) keep their accuracy
    erf_f32        1 ulp   max abs error 7.9e-8; +-1 for |x| >= 3.92
    gelu_f32       5 ulp   everywhere, incl. the negative tail: evaluated as
                           x/2 * erfc(-x/sqrt2) with exp(-x*x/2) from an exact
                           (Dekker) x*x, never as 1 + erf (which cancels);
                           gelu(-inf) = -0, gelu(inf) = inf
    gelu_grad_f32  5 ulp   everywhere, incl. next to the root x0 = -0.75179 of
                           gelu' (a (x - x0) * W(x) fit there);
                           gelu_grad(-inf) = 0, gelu_grad(inf) = 1

Speed (benchmarks/fastmath_speed.py, 1M float32, 2-core AMD EPYC with
AVX-512, machine shared with other jobs so ratios are approximate):
``out[i] = tanh_f32(x[i])`` 0.8 ms vs 24-60 ms for ``np.tanh`` (30-70x);
erf 16-32x, gelu 12-26x, exp/log/sigmoid 5-20x (glibc expf/logf are already
fast).  The loop is vectorized: ``<16 x float>`` in the LLVM IR, packed
``vmulps``/``vaddps`` on zmm registers (``<8 x float>`` on ymm with
``NUMBA_CPU_NAME=haswell``, where tanh is ~12-18x faster than libm), no libm
calls left.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

__all__ = [
    "F32",
    "exp_f32",
    "log_f32",
    "tanh_f32",
    "sigmoid_f32",
    "erf_f32",
    "gelu_f32",
    "gelu_grad_f32",
]

F32 = {
    "exp": "exp_f32",
    "log": "log_f32",
    "tanh": "tanh_f32",
    "sigmoid": "sigmoid_f32",
    "erf": "erf_f32",
    "gelu": "gelu_f32",
    "gelu_grad": "gelu_grad_f32",
}

_jit = numba.njit(inline="always", cache=False, fastmath=False)

_f = np.float32

# ---------------------------------------------------------------------------
# Bit-level helpers (LLVM intrinsics; they vectorize to plain integer SIMD)
# ---------------------------------------------------------------------------

_I32 = ir.IntType(32)
_F32T = ir.FloatType()


@intrinsic
def _bits(typingctx, x):
    """Reinterpret a float32 as its int32 bit pattern."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _I32)

    return types.int32(types.float32), codegen


@intrinsic
def _from_bits(typingctx, i):
    """Reinterpret the low 32 bits of an integer as a float32."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        width = v.type.width
        if width > 32:
            v = builder.trunc(v, _I32)
        elif width < 32:
            v = builder.sext(v, _I32)
        return builder.bitcast(v, _F32T)

    return types.float32(i), codegen


@intrinsic
def _fdiv(typingctx, a, b):
    """float32 a / b without Numba's ZeroDivisionError check (IEEE result)."""
    if a != types.float32 or b != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.fdiv(args[0], args[1])

    return types.float32(types.float32, types.float32), codegen


def _strict_binop(opname):
    """Build an intrinsic for one float32 op that a fastmath caller cannot relax.

    Numba's fastmath pass only adds flags to float instructions that carry
    none, so these carry ``arcp``, which has no effect on fadd/fsub/fmul.
    The ops are used exactly where the order of rounding is the algorithm
    (Cody-Waite reduction, the rounding-constant trick, Veltkamp splitting,
    the two-step 2**n scaling), so the functions stay accurate even when
    they are inlined into a kernel compiled with ``fastmath=True``.
    """

    def impl(typingctx, a, b):
        if a != types.float32 or b != types.float32:
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, opname)(args[0], args[1], flags=("arcp",))

        return types.float32(types.float32, types.float32), codegen

    impl.__name__ = "_s" + opname[1:]
    return intrinsic(impl)


_sadd = _strict_binop("fadd")
_ssub = _strict_binop("fsub")
_smul = _strict_binop("fmul")


# ---------------------------------------------------------------------------
# Constants (module-level np.float32 globals are frozen as float32 constants)
# ---------------------------------------------------------------------------

_ZERO = _f(0.0)
_HALF = _f(0.5)
_ONE = _f(1.0)
_TWO = _f(2.0)
_INF = _f(np.inf)
_NINF = _f(-np.inf)
_NAN = _f(np.nan)
_FLT_MIN = _f(1.17549435e-38)

# exp: Cody-Waite split of ln2 (C1 has 9 significant bits -> n*C1 exact)
_EXP_HI = _f(89.0)  # exp(89) overflows float32
_EXP_LO = _f(-104.0)  # exp(-104) < 2**-150 rounds to 0
_LOG2E = _f(1.4426950408889634)
_MAGIC = _f(12582912.0)  # 1.5 * 2**23: adding it rounds to an integer
_MAGIC_BITS = 0x4B400000
_LN2_HI = _f(0.693359375)
_LN2_LO = _f(-2.12194440e-4)
# Cephes expf polynomial: exp(r) ~ 1 + r + r^2 * P(r), |r| <= ln2/2
_EP0 = _f(1.9875691500e-4)
_EP1 = _f(1.3981999507e-3)
_EP2 = _f(8.3334519073e-3)
_EP3 = _f(4.1665795894e-2)
_EP4 = _f(1.6666665459e-1)
_EP5 = _f(5.0000001201e-1)

# log: Cephes logf polynomial on sqrt(1/2) <= m < sqrt(2)
_SQRTHF = _f(0.707106781186547524)
_TWO23 = _f(8388608.0)
_TWOM24 = _f(2.0**-24)
_LP0 = _f(7.0376836292e-2)
_LP1 = _f(-1.1514610310e-1)
_LP2 = _f(1.1676998740e-1)
_LP3 = _f(-1.2420140846e-1)
_LP4 = _f(1.4249322787e-1)
_LP5 = _f(-1.6668057665e-1)
_LP6 = _f(2.0000714765e-1)
_LP7 = _f(-2.4999993993e-1)
_LP8 = _f(3.3333331174e-1)

# tanh: Cephes tanhf odd polynomial for |x| < 0.625, else 1 - 2/(exp(2|x|)+1)
_TANH_SMALL = _f(0.625)
_TANH_CLAMP = _f(10.0)
_TP0 = _f(-5.70498872745e-3)
_TP1 = _f(2.06390887954e-2)
_TP2 = _f(-5.37397155531e-2)
_TP3 = _f(1.33314422036e-1)
_TP4 = _f(-3.33332819422e-1)

# erf for |x| < 1: x * P(x^2) (Cephes erff)
_ET0 = _f(7.853861353153693e-5)
_ET1 = _f(-8.010193625184903e-4)
_ET2 = _f(5.188327685732524e-3)
_ET3 = _f(-2.685381193529856e-2)
_ET4 = _f(1.128358514861418e-1)
_ET5 = _f(-3.761262582423300e-1)
_ET6M1 = _f(1.28379165726710e-1)  # 1.128379165726710 - 1

# Complementary tail used by erf/gelu/gelu_grad, written in the GELU variable
# s = |x| (so no rounded x/sqrt2 enters it):
#   H(s) = exp(s^2/2) * erfc(s/sqrt2) = 2 exp(s^2/2) Phi(-s) = G(q) / (s + K),
#   q = (s - K) / (s + K), K = float32(2 sqrt2).
# G is smooth on q in [-1, 0.687] (s in [0, 15.2]).  Degree-10 relative-minimax
# fit (Lawson iterations, coefficients rounded to float32 one at a time and
# the rest refitted); approximation error 0.13 float32 ulp.
_HK = _f(2.8284270763397217)
_HG0 = _f(1.444736123085022)
_HG1 = _f(-0.9717919230461121)
_HG2 = _f(0.39523234963417053)
_HG3 = _f(-0.05153748393058777)
_HG4 = _f(-0.0304095521569252)
_HG5 = _f(0.00916615966707468)
_HG6 = _f(0.004318851511925459)
_HG7 = _f(-0.001200434984639287)
_HG8 = _f(-0.0008307482348755002)
_HG9 = _f(9.070298983715475e-05)
_HG10 = _f(0.0001070520156645216)

# |x| < 0.5: Phi(x) = 1/2 + x R(x^2), gelu'(x) = 1/2 + x S(x^2) (relative
# minimax fits, 0.48 ulp; the erfc form loses a few ulp near 0 where H ~ 1).
_GELU_SMALL = _f(0.5)
_GR0 = _f(0.3989422917366028)
_GR1 = _f(-0.0664907842874527)
_GR2 = _f(0.009973005391657352)
_GR3 = _f(-0.00115179771091789)
_GS0 = _f(0.7978845834732056)
_GS1 = _f(-0.2659643292427063)
_GS2 = _f(0.05989622324705124)
_GS3 = _f(-0.009840174578130245)
_GS4 = _f(0.00179396104067564)

# -2 <= x <= -0.5: gelu'(x) = (x - x0) * W(x), x0 = -0.75179152469356... the
# root of gelu' (split in two float32s), W a relative-minimax fit in (x + 1.25)
# (0.35 ulp).  Keeps gelu' accurate to a few ulp even next to its root, where
# Phi(x) + x phi(x) cancels.
_GGR_LO = _f(-2.0)
_GGR_HI = _f(-0.5)
_GG_X0_HI = _f(-0.7517915368080139)
_GG_X0_LO = _f(1.211444988769017e-08)
_GG_C = _f(-1.25)
_GW0 = _f(0.24620532989501953)
_GW1 = _f(0.3337886929512024)
_GW2 = _f(0.11146774142980576)
_GW3 = _f(-0.050982534885406494)
_GW4 = _f(-0.04019780457019806)
_GW5 = _f(8.402320963796228e-05)
_GW6 = _f(0.006382361985743046)
_GW7 = _f(0.0010690060444176197)
_GW8 = _f(-0.0005713310092687607)
_GW9 = _f(-0.00017817031766753644)

_ERF_SMALL = _f(1.0)
_ERF_CLAMP = _f(10.0)  # erfc(10) = 2e-45: erf is exactly +-1 beyond
_GELU_CLAMP = _f(15.0)  # |x| >= 15: gelu(x) = x or -0, gelu'(x) = 1 or -0
_SQRT2 = _f(1.4142135623730951)
_NZERO = _f(-0.0)
_INV_SQRT_2PI = _f(0.3989422804014327)
_SPLIT = _f(4097.0)  # 2**12 + 1, Veltkamp splitter for float32


# ---------------------------------------------------------------------------
# Internal building blocks
# ---------------------------------------------------------------------------


@_jit
def _tail_h(s):
    """H(s) = exp(s*s/2) * erfc(s/sqrt2) for float32 0 <= s <= 15.2 (~1.5 ulp)."""
    u = _fdiv(_ONE, s + _HK)  # (1 - q) / (2K), accurate also as q -> 1
    q = (s - _HK) * u
    g = _HG10
    g = g * q + _HG9
    g = g * q + _HG8
    g = g * q + _HG7
    g = g * q + _HG6
    g = g * q + _HG5
    g = g * q + _HG4
    g = g * q + _HG3
    g = g * q + _HG2
    g = g * q + _HG1
    g = g * q + _HG0
    return g * u


@_jit
def _sq_err(a):
    """Rounding error of a*a: a*a (float32) + _sq_err(a) == a**2 exactly.

    Veltkamp split + Dekker product; valid for |a| < 2**100.
    """
    c = _SPLIT * a
    hi = _ssub(c, _ssub(c, a))
    lo = _ssub(a, hi)
    p = _smul(a, a)
    hl = _smul(hi, lo)
    return _sadd(_sadd(_ssub(_smul(hi, hi), p), _sadd(hl, hl)), _smul(lo, lo))


@_jit
def _exp_reduced(x, lo):
    """(t, exp(r)) for x + lo = n*ln2 + r: t holds n in its low mantissa bits (see
    _MAGIC), exp(r) is the polynomial; the callers scale by 2**n."""
    t = x * _LOG2E + _MAGIC  # round(x / ln2) lives in the low mantissa bits
    n = _ssub(t, _MAGIC)
    r = _sadd(_ssub(_ssub(x, _smul(n, _LN2_HI)), _smul(n, _LN2_LO)), lo)
    p = _EP0
    p = p * r + _EP1
    p = p * r + _EP2
    p = p * r + _EP3
    p = p * r + _EP4
    p = p * r + _EP5
    return t, p * (r * r) + r + _ONE


@_jit
def _exp_hilo(x, lo, k):
    """exp(x + lo) * 2**k for float32 x, tiny correction lo, small int k >= 0.

    lo (|lo| <= ulp(x)) carries the low part of an argument known to more
    than float32 precision; k lets a caller keep an intermediate normal and
    round into the denormal range only once, in its own final multiply.
    """
    xc = _EXP_HI if x > _EXP_HI else x  # comparisons keep NaN flowing
    lo_clamp = _EXP_LO - np.float32(k) * _LN2_HI  # constant after inlining
    xc = lo_clamp if xc < lo_clamp else xc
    t, y = _exp_reduced(xc, lo)
    # 2**n with n in [-150, 128], split in two normal powers of two so that
    # overflow and gradual underflow are produced by the final multiply.
    ni = (_bits(t) - _MAGIC_BITS) + k
    n1 = ni >> 1
    n2 = ni - n1
    s1 = _from_bits((n1 + 127) << 23)
    s2 = _from_bits((n2 + 127) << 23)
    return _smul(_smul(y, s1), s2)


@_jit
def _exp_small(x):
    """exp(x) for 0 <= x <= 20 (tanh's argument): no clamps, one 2**n scale. The same
    reduction and polynomial as _exp_hilo, so the same bits, about 17% less work in tanh."""
    t, y = _exp_reduced(x, _NZERO)  # adding -0.0 folds away
    return _smul(y, _from_bits(((_bits(t) - _MAGIC_BITS) + 127) << 23))


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------


@_jit
def exp_f32(x):
    """exp(x) in float32, <= 1 ulp; inf from 88.72284, 0 from -103.97208 down."""
    return _exp_hilo(np.float32(x), _NZERO, 0)  # adding -0.0 folds away


@_jit
def log_f32(x):
    """Natural log in float32, <= 1 ulp; log(0)=-inf, log(<0)=nan, log(inf)=inf."""
    x = np.float32(x)
    tiny = x < _FLT_MIN
    xs = x * _TWO23 if tiny else x  # make denormals normal (exact)
    eadj = _f(-23.0) if tiny else _ZERO
    b = _bits(xs)
    m = _from_bits((b & 0x007FFFFF) | 0x3F000000)  # mantissa in [0.5, 1)
    e = np.float32((b >> 23) & 0xFF) + (eadj - _f(126.0))
    low = m < _SQRTHF
    e = e - _ONE if low else e
    m = (m + m if low else m) - _ONE  # in [sqrt(.5)-1, sqrt(2)-1), exact
    z = m * m
    p = _LP0
    p = p * m + _LP1
    p = p * m + _LP2
    p = p * m + _LP3
    p = p * m + _LP4
    p = p * m + _LP5
    p = p * m + _LP6
    p = p * m + _LP7
    p = p * m + _LP8
    y = p * m * z
    y = _sadd(y, _smul(e, _LN2_LO))
    y = _ssub(y, _smul(_HALF, z))
    r = _sadd(m, y)
    r = _sadd(r, _smul(e, _LN2_HI))
    r = _NINF if x == _ZERO else r
    r = r if x < _INF else x  # +inf -> inf, nan -> nan
    r = _NAN if x < _ZERO else r
    return r


@_jit
def tanh_f32(x):
    """tanh in float32, <= 1 ulp; odd polynomial near 0, exp-based elsewhere."""
    x = np.float32(x)
    a = abs(x)
    z = a * a
    p = _TP0
    p = p * z + _TP1
    p = p * z + _TP2
    p = p * z + _TP3
    p = p * z + _TP4
    small = p * z * a + a
    ac = _TANH_CLAMP if a > _TANH_CLAMP else a  # no inf even for huge |x|
    e = _exp_small(ac + ac)
    large = _ONE - _fdiv(_TWO, e + _ONE)  # rounds to exactly 1 for |x| >= 9.01
    r = small if a < _TANH_SMALL else large  # NaN -> large -> NaN
    return np.float32(np.copysign(r, x))


@_jit
def sigmoid_f32(x):
    """Logistic 1/(1+exp(-x)) in float32, <= 2 ulp, also for tiny results."""
    x = np.float32(x)
    e = exp_f32(-abs(x))
    num = _ONE if x >= _ZERO else e  # x < 0: e/(1+e), no overflow, no underflow loss
    return _fdiv(num, e + _ONE)


@_jit
def erf_f32(x):
    """erf in float32, <= 1 ulp; polynomial for |x| < 1, 1 - erfc(|x|) beyond."""
    x = np.float32(x)
    a = abs(x)
    z = a * a
    p = _ET0
    p = p * z + _ET1
    p = p * z + _ET2
    p = p * z + _ET3
    p = p * z + _ET4
    p = p * z + _ET5
    p = p * z + _ET6M1
    small = a * p + a  # a * (1 + p): keeps the last rounding on the final add
    ac = _ERF_CLAMP if a > _ERF_CLAMP else a
    erfc = _tail_h(ac * _SQRT2) * _exp_hilo(-(ac * ac), -_sq_err(ac), 0)
    large = _ONE - erfc
    r = small if a < _ERF_SMALL else large
    return np.float32(np.copysign(r, x))


@_jit
def _gelu_tail(x):
    """What gelu and its gradient share: x clamped to +-15, a = |x clamped|,
    exp(-a*a/2) * 2**24 (normal down to x = -15; x*x split exactly) and
    h = Phi(-a) / exp(-a*a/2).  Both functions start with this exact sequence, so in a
    kernel that inlines both (a fused forward + backward) LLVM computes it once."""
    xc = -_GELU_CLAMP if x < -_GELU_CLAMP else x
    xc = _GELU_CLAMP if xc > _GELU_CLAMP else xc
    a = abs(xc)
    ex24 = _exp_hilo(-(_HALF * (a * a)), -(_HALF * _sq_err(a)), 24)
    return xc, a, ex24, _HALF * _tail_h(a)


@_jit
def gelu_f32(x):
    """Exact-erf GELU x * Phi(x) = 0.5 x (1 + erf(x/sqrt2)) in float32, <= 5 ulp.

    Polynomial for |x| < 0.5, else through erfc so the negative tail keeps
    its relative accuracy.
    """
    x = np.float32(x)
    xc, a, ex24, hh = _gelu_tail(x)
    neg = _smul((xc * hh) * ex24, _TWOM24)  # x Phi(x) = x/2 erfc(|x|/sqrt2), x < 0; one rounding into denormals
    pos = x * (_ONE - hh * (ex24 * _TWOM24))
    z = x * x
    p = _GR3
    p = p * z + _GR2
    p = p * z + _GR1
    p = p * z + _GR0
    small = x * (_HALF + x * p)
    r = neg if x < _ZERO else pos
    return small if a < _GELU_SMALL else r


@_jit
def gelu_grad_f32(x):
    """d/dx of exact GELU, Phi(x) + x * phi(x), in float32, <= 5 ulp."""
    x = np.float32(x)
    xc, a, ex24, hh = _gelu_tail(x)
    ex = ex24 * _TWOM24  # exact unless the result is denormal (then unused)
    xphi = xc * _INV_SQRT_2PI  # x phi(x) / exp(-x^2/2)
    neg = _smul((hh + xphi) * ex24, _TWOM24)  # one rounding into denormals
    pos = _ONE + (xphi - hh) * ex
    z = xc * xc
    p = _GS4
    p = p * z + _GS3
    p = p * z + _GS2
    p = p * z + _GS1
    p = p * z + _GS0
    small = _HALF + xc * p
    w = xc - _GG_C
    q = _GW9
    q = q * w + _GW8
    q = q * w + _GW7
    q = q * w + _GW6
    q = q * w + _GW5
    q = q * w + _GW4
    q = q * w + _GW3
    q = q * w + _GW2
    q = q * w + _GW1
    q = q * w + _GW0
    root = _ssub(_ssub(xc, _GG_X0_HI), _GG_X0_LO) * q
    r = neg if xc < _ZERO else pos
    r = root if (xc >= _GGR_LO) & (xc <= _GGR_HI) else r
    return small if a < _GELU_SMALL else r
