"""Exact integer building blocks shared by the operators: rounding shifts, wide products, integer sqrt.

Each TE helper (on int64 PrimExprs) has an exact Python-integer twin (`ref_*`) that the operators' numpy
references use; the twins are written from the definitions, not from the TE code, so tests compare two
independent derivations. Every helper states the operand bounds under which it is exact.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx as tir

I64 = "int64"
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
LOW31 = (1 << 31) - 1
# Newton steps that reach floor(sqrt(n)) for every 0 <= n < 2^63 from x0 = 2^ceil(bits(n)/2)
# (x0 / sqrt(n) <= 2, so six quadratic steps pass 2^-32 relative error; one spare, see tests).
ISQRT_STEPS = 7
# A block annotation that every MetaSchedule rule but ApplyCustomRule skips (a "None" custom rule does
# nothing): tuning neither inlines such a stage (AutoInline, RandomComputeLocation) nor moves it.
KEEP_STAGE = {"schedule_rule": "None"}


def i64(value: int | tir.PrimExpr) -> tir.PrimExpr:
    """An int64 PrimExpr from a Python int or any integer PrimExpr."""
    return _as(value, I64)


def widened(value: tir.PrimExpr) -> tir.PrimExpr:
    """int64 of an int32 `value` through an identity reinterpret, which TE's simplifier does not look into.
    Without it the simplifier distributes the cast over the value's sums, and LLVM no longer sees a
    sign-extended int32: a product of two such values is then a 64-bit multiply, which AVX2 and NEON emulate,
    instead of one widening multiply. (A Let did the same, but MetaSchedule's FLOP estimate has no rule for
    Let, so the kernels holding one could not be tuned.)"""
    if dtype_of(value) != "int32":
        raise TypeError(f"widened takes an int32 value, got {dtype_of(value)}")
    return i64(tir.call_intrin("int32", "tirx.reinterpret", value))


def dtype_of(value: tir.PrimExpr) -> str:
    """The dtype of a PrimExpr or TE tensor element, as a string."""
    return str(value.dtype if hasattr(value, "dtype") else value.ty)


def rne_shift(v: tir.PrimExpr, e: tir.PrimExpr | int, dtype: str = I64) -> tir.PrimExpr:
    """round_half_even(v / 2^e) for int64 |v| <= 2^62 and 0 <= e <= 62 (exact), without compares:
    floor((v + 2^(e-1) - 1 + odd) / 2^e) with odd the parity of floor(v / 2^e) (0 for e = 0) rounds a
    remainder below one half down, above it up, and exactly one half to the even neighbour.
    For v >= 0, `dtype` "uint64" makes every shift logical (one instruction where the CPU has no 64-bit
    arithmetic vector shift, as AVX2); the result is then uint64."""
    v, e, one = _as(v, dtype), _as(e, dtype), tir.const(1, dtype)
    odd = (v >> e) & tir.min(e, one)
    return (v + (((one << e) - one) >> one) + odd) >> e


def rne_shift_capped(v: tir.PrimExpr, e: tir.PrimExpr | int, e_max: int, dtype: str = I64) -> tir.PrimExpr:
    """round_half_even(v / 2^e) for int64 |v| < 2^62 and 0 <= e <= e_max (exact): a shift past 62 gives 0,
    since |v| / 2^63 < 1/2 (`rne_shift` alone takes e <= 62). `dtype` as for `rne_shift`."""
    v, e = _as(v, dtype), _as(e, dtype)
    if e_max <= 62:
        return rne_shift(v, e, dtype)
    limit = tir.const(62, dtype)
    return tir.Select(e > limit, tir.const(0, dtype), rne_shift(v, tir.min(e, limit), dtype))


def _as(value: int | tir.PrimExpr, dtype: str) -> tir.PrimExpr:
    """`value` as a PrimExpr of `dtype` (a no-op where it already is one)."""
    if isinstance(value, int):
        return tir.const(value, dtype)
    return value if dtype_of(value) == dtype else value.astype(dtype)


def mul_rne_shift_wide(x: tir.PrimExpr, m: tir.PrimExpr | int, e: tir.PrimExpr | int, e_min: int = 0,
                       e_max: int = 93) -> tir.PrimExpr:
    """round_half_even(x * m / 2^e) exactly, without a 128-bit type.

    Bounds: |x| < 2^62, |m| <= 2^31, e_min <= e <= e_max within [0, 93]. x*m is split as c*2^31 + bl with
    0 <= bl < 2^31, so every partial product stays below 2^63. A result whose magnitude would pass 2^62
    saturates there, keeping its sign (every caller clamps to at most 32 bits afterwards, so the clamp still
    sees the right side). Shifts known to lie on one side of 31 (`e_min`, `e_max`) build only that side.
    """
    x, m, e = i64(x), i64(m), i64(e)
    low31, k31 = i64(LOW31), i64(31)
    b = (x & low31) * m
    c = (x >> k31) * m + (b >> k31)
    bl = b & low31
    if e_min >= 31:
        return _wide_round_hi(c, bl, e - k31, e_min - 31)
    if e_max < 31:
        q, gt, eq = _wide_shift_lo(c, bl, e)
    else:
        hi = _wide_shift_hi(c, bl, tir.max(e - k31, i64(0)))
        lo = _wide_shift_lo(c, bl, tir.min(e, k31))
        q, gt, eq = (tir.Select(e >= k31, h, l) for h, l in zip(hi, lo))
    return q + tir.Select(tir.Or(gt, tir.And(eq, (q & i64(1)) == i64(1))), i64(1), i64(0))


def _wide_round_hi(c: tir.PrimExpr, bl: tir.PrimExpr, d: tir.PrimExpr, d_min: int) -> tir.PrimExpr:
    """round_half_even((c * 2^31 + bl) / 2^(31 + d)) for d >= d_min >= 0 as floor((V + 2^(e-1) - 1 + odd) /
    2^e), odd = the parity of floor(V / 2^e) = c >> d (bl < 2^31): the bias 2^(e-1) - 1 splits into a high
    part (2^(d-1) - 1, none for d = 0) added to c and a low part (2^31 - 1, or 2^30 - 1 for d = 0) whose carry
    out of bl's 31 bits is added too. |c| <= 2^62 + 2^31 and d <= 62 keep every sum below 2^63."""
    one = i64(1)
    half = (one << d) >> one
    odd = (c >> d) & one
    if d_min >= 1:
        return (c + half - one + ((bl + i64(LOW31) + odd) >> i64(31))) >> d
    low_bias = tir.Select(d == i64(0), i64((1 << 30) - 1), i64(LOW31))
    return (c + tir.max(half - one, i64(0)) + ((bl + low_bias + odd) >> i64(31))) >> d


def _wide_shift_hi(c: tir.PrimExpr, bl: tir.PrimExpr, d: tir.PrimExpr) -> tuple[tir.PrimExpr, ...]:
    """e = 31 + d >= 31: (quotient c >> d, remainder above half, remainder exactly half); the remainder is
    rc * 2^31 + bl against half = 2^(d-1) * 2^31."""
    q = c >> d
    rc = c - (q << d)
    hd = (i64(1) << d) >> i64(1)
    half31 = i64(1 << 30)
    gt = tir.Select(d == i64(0), bl > half31, tir.Or(rc > hd, tir.And(rc == hd, bl > i64(0))))
    eq = tir.Select(d == i64(0), bl == half31, tir.And(rc == hd, bl == i64(0)))
    return q, gt, eq


def _wide_shift_lo(c: tir.PrimExpr, bl: tir.PrimExpr, s: tir.PrimExpr) -> tuple[tir.PrimExpr, ...]:
    """e = s < 31: q = c * 2^(31-s) + (bl >> s); the remainder lies in bl's low s bits."""
    k31 = i64(31)
    c_limit = i64(1) << (k31 + s)  # |c| < 2^(31+s) keeps c * 2^(31-s) below 2^62
    q = (tir.min(tir.max(c, -c_limit), c_limit - i64(1)) << (k31 - s)) + (bl >> s)
    r = bl & ((i64(1) << s) - i64(1))
    h = (i64(1) << s) >> i64(1)
    return q, r > h, tir.And(r == h, s > i64(0))


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


def isqrt(n: te.Tensor, name: str, staged: bool = True) -> te.Tensor:
    """floor(sqrt(n)) elementwise for int64 0 <= n < 2^63 by the paper's Newton iteration (P-Alg.4), run to
    convergence.

    The loop `x <- floor((x + floor(n/x)) / 2) while it decreases` is unrolled ISQRT_STEPS times as
    `x <- min(x, step(x))`: once the step stops decreasing, min keeps the fixed point. Each step uses its
    predecessor three times, so the iterates must stay shared; inlined into one another they become an
    expression of 3^steps terms:
    - `staged`: each iterate is a stage of its own (`name`_x0, ...), which tuning leaves alone (`KEEP_STAGE`;
      MetaSchedule's AutoInline and RandomComputeLocation inlined them). As Lets in one expression they cost 3^steps
      build work, because TVM's analyzers (buffer compaction, LLVM codegen) substitute each Let's value into the
      next: 0.33 s of a BERT-base LayerNorm kernel's 0.36 s.
    - otherwise one stage binding the iterates with Lets, for schedules that inline every elementwise stage
      into its consumer regardless (dlight's on CUDA).
    Operands are non-negative, so truncating division is floor division without the sign fix-up.
    """
    if not staged:
        return te.compute(n.shape, lambda *i: _isqrt_lets(n[i]), name=name)
    x = te.compute(n.shape, lambda *i: _isqrt_start(n[i]), name=f"{name}_x0", attrs=KEEP_STAGE)
    for step in range(1, ISQRT_STEPS + 1):  # te.compute calls its lambda at once, so it reads this step's x
        x = te.compute(n.shape, lambda *i: _newton_step(n[i], x[i]), name=f"{name}_x{step}",  # noqa: B023
                       attrs=KEEP_STAGE)
    return te.compute(n.shape, lambda *i: tir.Select(n[i] > i64(0), x[i], i64(0)), name=name)


def _isqrt_start(n: tir.PrimExpr) -> tir.PrimExpr:
    """x0 = 2^ceil(bits(n) / 2) >= sqrt(n); n | 1 because ctlz of 0 is poison (the same bits for n >= 1)."""
    return i64(1) << ((i64(65) - tir.clz(n | i64(1)).astype(I64)) >> i64(1))


def _newton_step(n: tir.PrimExpr, x: tir.PrimExpr) -> tir.PrimExpr:
    """One `isqrt` iterate: min(x, (x + n / max(x, 1)) >> 1)."""
    return tir.min(x, (x + tir.truncdiv(n, tir.max(x, i64(1)))) >> i64(1))


def _isqrt_lets(n: tir.PrimExpr) -> tir.PrimExpr:
    """`isqrt` of one value as one expression, each iterate bound by a Let."""
    xs = [tir.Var(f"isqrt_x{i}", I64) for i in range(ISQRT_STEPS + 1)]
    values = [_isqrt_start(n)] + [_newton_step(n, x) for x in xs[:-1]]
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
    """Read a per-tensor (rank 0) or per-channel (rank 1, last axis) TE parameter tensor at `index` as int64;
    `registry` passes a known scalar as a Python int and a per-channel constant that fits int32 as int32."""
    if isinstance(t, int):
        return tir.const(t, I64)
    return i64(t[()] if len(t.shape) == 0 else t[index[-1]])
