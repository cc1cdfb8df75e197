"""float32 `exp` and `erf` as float64 polynomials that LLVM vectorizes, and the CPU legalizations of the float
Softmax and GELU (Q8BERT mode, float layers) that use them.

On CPUs LLVM lowers TIR's `exp` and `erf` to libm's `expf` and `erff`, one scalar call per value even in a
vectorized loop: 2.7 and 14 ns per value against 0.6 and 0.9 ns here (one core of the Emerald Rapids VM, a
vectorized loop over 2^20 values); the six float GELUs of the bundled classifier took longer than its integer
encoder. Here each value is computed in float64 to about 1e-15 and rounded once to float32: the correctly
rounded result unless the exact one lies that near a halfway point (libm's missed 0.1 % and 2.2 % of samples).

- exp: x = k ln2 + r with |r| <= ln2 / 2 (Cody-Waite, ln2 in two parts), exp(r) by its Taylor polynomial of
  degree 13 (truncation below 1e-17), times 2^k made from k's bits; x clamped to [-104, 89], beyond which the
  float32 result is 0 or infinite.
- erf: odd, so erf(x) = x g(x^2) with g(t) = erf(sqrt t) / sqrt t, entire in t, interpolated at the Chebyshev
  points of [0, 16] (degree 24, from `math.erf` at import; within 1e-14 of erf) and summed by Horner's rule;
  x clamped to [-4, 4], beyond which erf rounds to +-1 in float32.

A NaN stays NaN. The legalizations keep TVM's own arithmetic: `topi.nn.softmax`'s four stages (their block
names and the axis attribute too), and GELU's `x * (0.5 + erf(x / sqrt 2) * 0.5)` (one block where TVM's has
five, which its fusion and the schedules inline alike); only exp and erf differ. Other dtypes than float32 keep
TVM's legalization.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.polynomial import chebyshev
from tvm import relax, te, tirx

__all__ = ["CPU_LEGALIZATIONS", "erf_f32", "exp_f32"]

_EXP_DEGREE = 13
_EXP_LIMITS = (-104.0, 89.0)  # float32 exp is 0 below (-103.97 rounds to 0) and infinite above (88.72)
_LN2_HI = 0.693145751953125  # ln 2 to 16 bits: k * _LN2_HI is exact for |k| < 2^37
_LN2_LO = math.log(2) - _LN2_HI
_ROUND_BITS = 6755399441055744.0  # 1.5 * 2^52: adding it leaves k + 2^51 in a float64's low mantissa bits

_ERF_DEGREE = 24
_ERF_LIMIT = 4.0  # 1 - erf(4) = 1.5e-8, below half a float32 ulp of 1


def _erf_polynomial() -> np.ndarray:
    """Monomial coefficients in u = t / 8 - 1 of g(t) = erf(sqrt t) / sqrt t interpolated at the Chebyshev points
    of t in [0, 16]; their absolute values sum to 1.13, so Horner's rule loses nothing to cancellation."""
    def g(u: np.ndarray) -> np.ndarray:
        x = np.sqrt((u + 1) * _ERF_LIMIT ** 2 / 2)
        return np.array([math.erf(v) / v if v > 0 else 2 / math.sqrt(math.pi) for v in x])

    return chebyshev.cheb2poly(chebyshev.chebinterpolate(g, _ERF_DEGREE))


_ERF_POLYNOMIAL = _erf_polynomial()


def _f64(value: float) -> tirx.FloatImm:
    """A float64 constant."""
    return tirx.const(value, "float64")


def _let(value: tirx.PrimExpr, body: Callable[[tirx.Var], tirx.PrimExpr], name: str) -> tirx.PrimExpr:
    """`body(v)` with v bound to `value` once (an expression used several times is otherwise computed each time)."""
    var = tirx.Var(name, value.ty)
    return tirx.Let(var, value, body(var))


def _nan_kept(x: tirx.PrimExpr, value: tirx.PrimExpr) -> tirx.PrimExpr:
    """`value`, or `x` where x is NaN (the clamps and integer steps would make a number of it)."""
    return tirx.Select(tirx.isnan(x), x, value)


def exp_f32(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """exp of a float32 expression, correctly rounded unless the exact value lies within about 1e-15 (relative)
    of a halfway point between two float32 values."""
    low, high = _EXP_LIMITS

    def scaled(d: tirx.Var) -> tirx.PrimExpr:
        return _let(tirx.floor(d * _f64(1 / math.log(2)) + _f64(0.5)), lambda k: _let(
            d - k * _f64(_LN2_HI) - k * _f64(_LN2_LO), lambda r: _taylor(r) * _power_of_two(k), "r"), "k")

    clamped = tirx.max(tirx.min(tirx.Cast("float64", x), _f64(high)), _f64(low))
    return _nan_kept(x, tirx.Cast("float32", _let(clamped, scaled, "d")))


def _taylor(r: tirx.PrimExpr) -> tirx.PrimExpr:
    """sum_k r^k / k! for k <= _EXP_DEGREE."""
    return _horner(r, np.array([1 / math.factorial(k) for k in range(_EXP_DEGREE + 1)]))


def _power_of_two(k: tirx.PrimExpr) -> tirx.PrimExpr:
    """2^k for an integral float64 k in [-151, 129], from its bits (integer add and shift, which vectorize
    without AVX-512's float64-to-int64 conversion)."""
    magic = int(np.float64(_ROUND_BITS).view(np.int64))
    bits = tirx.reinterpret("int64", k + _f64(_ROUND_BITS)) - tirx.const(magic - 1023, "int64")
    return tirx.reinterpret("float64", bits << tirx.const(52, "int64"))


def erf_f32(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """erf of a float32 expression, correctly rounded unless the exact value lies within about 1e-15 (relative)
    of a halfway point between two float32 values."""
    clamped = tirx.max(tirx.min(tirx.Cast("float64", x), _f64(_ERF_LIMIT)), _f64(-_ERF_LIMIT))

    def series(d: tirx.Var) -> tirx.PrimExpr:
        return d * _let(d * d * _f64(2 / _ERF_LIMIT ** 2) - _f64(1), lambda u: _horner(u, _ERF_POLYNOMIAL), "u")

    return _nan_kept(x, tirx.Cast("float32", _let(clamped, series, "d")))


def _horner(u: tirx.PrimExpr, coefficients: np.ndarray) -> tirx.PrimExpr:
    """sum_k coefficients[k] u^k."""
    out = _f64(float(coefficients[-1]))
    for c in coefficients[-2::-1]:
        out = out * u + _f64(float(c))
    return out


def _float32_only(te_func: Callable[..., te.Tensor], name: str, *attrs: str
                  ) -> Callable[[relax.BlockBuilder, relax.Call], relax.Expr]:
    """A legalization that computes float32 calls with `te_func` (the call's argument and its `attrs`) and leaves
    other dtypes to TVM's own."""
    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        if call.args[0].ty.dtype != "float32":
            return call.op.get_attr("FLegalize")(bb, call)
        return bb.call_te(te_func, call.args[0], *(int(getattr(call.attrs, a)) for a in attrs),
                          primfunc_name_hint=name)

    return legalize


def _gelu(x: te.Tensor) -> te.Tensor:
    """`relax.nn.gelu` as TVM legalizes it, x (0.5 + erf(x / sqrt 2) 0.5), with `erf_f32`."""
    half = tirx.const(0.5, "float32")
    return te.compute(x.shape, lambda *i: x(*i) * (half + erf_f32(x(*i) * tirx.const(0.5 ** 0.5, "float32")) * half),
                      name="T_gelu")


def _softmax(x: te.Tensor, axis: int) -> te.Tensor:
    """`relax.nn.softmax` as `topi.nn.softmax` computes it (row max, exp of the difference, its sum, the quotient;
    its block names), with `exp_f32`."""
    axis = axis % len(x.shape)
    kept = [d for i, d in enumerate(x.shape) if i != axis]

    def rest(i: tuple) -> tuple:
        return i[:axis] + i[axis + 1:]

    def along(i: tuple, k: tirx.Var) -> tuple:
        return i[:axis] + (k,) + i[axis:]

    k1, k2 = te.reduce_axis((0, x.shape[axis]), "k"), te.reduce_axis((0, x.shape[axis]), "k")
    top = te.compute(kept, lambda *i: te.max(x(*along(i, k1)), axis=k1), name="T_softmax_maxelem")
    e = te.compute(x.shape, lambda *i: exp_f32(x(*i) - top(*rest(i))), name="T_softmax_exp")
    total = te.compute(kept, lambda *i: te.sum(e(*along(i, k2)), axis=k2), name="T_softmax_expsum")
    return te.compute(x.shape, lambda *i: e(*i) / total(*rest(i)), name="T_softmax_norm", attrs={"axis": axis})


#: `LegalizeOps(customize_legalize_map=...)` for CPU targets
CPU_LEGALIZATIONS = {"relax.nn.gelu": _float32_only(_gelu, "gelu"),
                     "relax.nn.softmax": _float32_only(_softmax, "softmax", "axis")}
