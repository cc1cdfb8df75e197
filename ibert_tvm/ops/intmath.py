"""Exact integer building blocks shared by the operators: rounding shifts, wide products, integer sqrt.

Each TE helper (on int64 PrimExprs) has an exact Python-integer twin (`ref_*`) that the operators' numpy
references use; the twins are written from the definitions, not from the TE code, so tests compare two
independent derivations. Every helper states the operand bounds under which it is exact.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx as tir

I64 = "int64"
LOW31 = (1 << 31) - 1
# Newton steps that reach floor(sqrt(n)) for every 0 <= n < 2^63 from x0 = 2^ceil(bits(n)/2)
# (x0 / sqrt(n) <= 2, so six quadratic steps pass 2^-32 relative error; one spare, see tests).
ISQRT_STEPS = 7


def i64(value: int | tir.PrimExpr) -> tir.PrimExpr:
    """An int64 PrimExpr from a Python int or any integer PrimExpr."""
    if isinstance(value, int):
        return tir.const(value, I64)
    return value if dtype_of(value) == I64 else value.astype(I64)


def dtype_of(value: tir.PrimExpr) -> str:
    """The dtype of a PrimExpr or TE tensor element, as a string."""
    return str(value.dtype if hasattr(value, "dtype") else value.ty)


def rne_shift(v: tir.PrimExpr, e: tir.PrimExpr | int) -> tir.PrimExpr:
    """round_half_even(v / 2^e) for int64 `v` and 0 <= e <= 62 (exact)."""
    v, e = i64(v), i64(e)
    q = v >> e
    r = v - (q << e)
    half = (i64(1) << e) >> i64(1)
    round_up = tir.Or(r > half, tir.And(tir.And(r == half, half > i64(0)), (q & i64(1)) == i64(1)))
    return q + tir.Select(round_up, i64(1), i64(0))


def mul_rne_shift_wide(x: tir.PrimExpr, m: tir.PrimExpr | int, e: tir.PrimExpr | int) -> tir.PrimExpr:
    """round_half_even(x * m / 2^e) exactly, without a 128-bit type.

    Bounds: |x| < 2^62, |m| <= 2^31, 0 <= e <= 93. x*m is split as c*2^31 + bl with 0 <= bl < 2^31, so every
    partial product stays below 2^63. A result whose magnitude would pass 2^62 saturates there, keeping its
    sign (every caller clamps to at most 32 bits afterwards, so the clamp still sees the right side).
    """
    x, m, e = i64(x), i64(m), i64(e)
    low31, k31 = i64(LOW31), i64(31)
    b = (x & low31) * m
    c = (x >> k31) * m + (b >> k31)
    bl = b & low31
    # e >= 31: shift c by d = e - 31; the remainder is rc * 2^31 + bl against half = 2^(d-1) * 2^31.
    d = tir.max(e - k31, i64(0))
    q_hi = c >> d
    rc = c - (q_hi << d)
    hd = (i64(1) << d) >> i64(1)
    half31 = i64(1 << 30)
    gt_hi = tir.Select(d == i64(0), bl > half31, tir.Or(rc > hd, tir.And(rc == hd, bl > i64(0))))
    eq_hi = tir.Select(d == i64(0), bl == half31, tir.And(rc == hd, bl == i64(0)))
    # e < 31: q = c * 2^(31-e) + (bl >> e); the remainder lies in bl's low e bits.
    s = tir.min(e, k31)
    c_limit = i64(1) << (k31 + s)  # |c| < 2^(31+s) keeps c * 2^(31-s) below 2^62
    q_lo = (tir.min(tir.max(c, -c_limit), c_limit - i64(1)) << (k31 - s)) + (bl >> s)
    r_lo = bl & ((i64(1) << s) - i64(1))
    h_lo = (i64(1) << s) >> i64(1)
    gt_lo = r_lo > h_lo
    eq_lo = tir.And(r_lo == h_lo, s > i64(0))
    wide = e >= k31
    q = tir.Select(wide, q_hi, q_lo)
    gt = tir.Select(wide, gt_hi, gt_lo)
    eq = tir.Select(wide, eq_hi, eq_lo)
    return q + tir.Select(tir.Or(gt, tir.And(eq, (q & i64(1)) == i64(1))), i64(1), i64(0))


def add_for_clamp(v: tir.PrimExpr, w: tir.PrimExpr, limit_bits: int = 40) -> tir.PrimExpr:
    """v + w for int64 terms up to 2^62 each, saturated at +-2^(limit_bits+1) instead of wrapping.

    Exact whenever |v + w| < 2^limit_bits; beyond that only the sign matters to a clamp of <= 32 bits.
    floor((v + w) / 2) is formed without overflow to decide.
    """
    half = (v >> i64(1)) + (w >> i64(1)) + (((v & i64(1)) + (w & i64(1))) >> i64(1))
    big = i64(1 << limit_bits)
    return tir.Select(half > big, big * i64(2), tir.Select(half < -big, -big * i64(2), v + w))


def clamp(v: tir.PrimExpr, lo: int, hi: int) -> tir.PrimExpr:
    """min(max(v, lo), hi) in v's dtype."""
    return tir.min(tir.max(v, tir.const(lo, dtype_of(v))), tir.const(hi, dtype_of(v)))


def isqrt(n: tir.PrimExpr) -> tir.PrimExpr:
    """floor(sqrt(n)) for 0 <= n < 2^63 by the paper's Newton iteration (P-Alg.4), run to convergence.

    The loop `x <- floor((x + floor(n/x)) / 2) while it decreases` is unrolled ISQRT_STEPS times as
    `x <- min(x, step(x))`: once the step stops decreasing, min keeps the fixed point. Each iterate is bound
    with a Let so the expression grows linearly with the number of steps.
    """
    n = i64(n)
    bits = i64(64) - tir.clz(n).astype(I64)
    xs = [tir.Var(f"isqrt_x{i}", I64) for i in range(ISQRT_STEPS + 1)]
    values = [i64(1) << ((bits + i64(1)) >> i64(1))]
    for x in xs[:-1]:
        values.append(tir.min(x, (x + tir.floordiv(n, tir.max(x, i64(1)))) >> i64(1)))
    expr = tir.Select(n > i64(0), xs[-1], i64(0))
    for var, value in reversed(list(zip(xs, values))):
        expr = tir.Let(var, value, expr)
    return expr


# ---------------------------------------------------------------- exact Python-integer twins

def as_pyint(a: np.ndarray | int) -> np.ndarray:
    """An object array of Python ints (unbounded), so references never overflow."""
    return np.vectorize(int, otypes=[object])(np.asarray(a))


def ref_rne_div_pow2(v: np.ndarray, e: np.ndarray | int) -> np.ndarray:
    """round_half_even(v / 2^e) on Python ints, e >= 0 (elementwise, broadcasting)."""
    v, e = np.broadcast_arrays(as_pyint(v), as_pyint(e))

    def one(vi: int, ei: int) -> int:
        q, r = divmod(vi, 1 << ei)
        twice = 2 * r
        if twice > (1 << ei) or (twice == (1 << ei) and q % 2 == 1):
            q += 1
        return q

    return np.vectorize(one, otypes=[object])(v, e)


def ref_isqrt_newton(n: int) -> tuple[int, int]:
    """The paper's integer sqrt (P-Alg.4) as written: returns (floor(sqrt(n)), number of decreasing steps)."""
    if n == 0:
        return 0, 0
    x = 1 << ((n.bit_length() + 1) // 2)
    steps = 0
    while True:
        nxt = (x + n // x) // 2
        if nxt >= x:
            return x, steps
        x, steps = nxt, steps + 1


def per_channel(t, index: tuple) -> tir.PrimExpr:
    """Read a per-tensor (rank 0) or per-channel (rank 1, last axis) TE parameter tensor at `index`."""
    return t[()] if len(t.shape) == 0 else t[index[-1]]
