"""`ibert.int_softmax`: I-BERT Softmax (spec §3; P-Alg.3, HF IntSoftmax) on int32 scores -> int16 in [0, 256].

Per row: q = x - max(x) (masked entries act as -inf, as HF's additive mask makes them), clamped at
30 x0; z = floor(q / x0), r = q - z x0; p = (r + b) r + c (i-exp polynomial); then the fused 16-bit step of
§3.3.6, e16 = clamp(rne(max(p, 0) M / 2^(E - 30 + z))), equal to HF's rne(p 2^(30-z) / S16) without the
2^60 intermediate; finally F = floor(2^32 / sum e16) and out = floor(e16 F / 2^24), scale 2^-8.

Output values lie in [0, 256] (256 only where one entry holds a row whose e16 sum is a power of two; a calibrated
one-hot row gives 255, where HF's float32 normalisation rounds up to 256), stored as int16 for `ibert.matmul`.
A row with no unmasked entry (or whose exp values all round to 0) is defined as all zeros: HF gives NaN there.
The optional `mask` has the scores' rank, each dim provably equal to the scores' or a literal 1 (broadcast);
nonzero means "attend".
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx as tir

from .intmath import I64, INT32_MAX, as_pyint, clamp, i64, mul_rne_shift_wide, ref_rne_div_pow2, rne_shift_capped
from ..quant import softmax_integer_problem
from .registry import IBertOpError, dims, is_literal_one, like, make_call, provably_equal, register, tensor_type

OP = "ibert.int_softmax"
EXP_CONST = 30
OUT_BITS = 8
SUM_BITS = 32
MASK_DTYPES = ["bool", "int8", "uint8", "int32", "int64"]
E16_MIN, E16_MAX = -(1 << 15), (1 << 15) - 1
# Rows up to this (static) length sum their e16 in int32 (|e16| <= 2^15), twice the lanes of int64.
SUM32_MAX_LENGTH = INT32_MAX >> 15


def _infer(call: relax.Call) -> relax.TensorType:
    x = tensor_type(call, 0, "x", ["int32"], min_ndim=1)
    if len(call.args) == 2:
        _check_mask_shape(x, tensor_type(call, 1, "mask", MASK_DTYPES, ndim=x.ndim))
    attrs = {k: int(call.attrs[k]) for k in ("x0_int", "b_int", "c_int", "exp_multiplier", "exp_shift")}
    if problem := softmax_integer_problem(**attrs):  # e.g. M = 2^62 rounded wrongly in the wide product (a fuzz)
        raise IBertOpError(f"{OP}: {problem}")
    return like(x, "int16")


def _check_mask_shape(x: relax.TensorType, mask: relax.TensorType) -> None:
    """Each mask dim must be a literal 1 (broadcast, as `_compute` reads it) or provably the scores' dim: the
    kernel indexes the mask with the scores' indices, so any other dim (a different size, or a symbolic one
    that may be 1 or smaller at run time) would read outside the mask."""
    xs, ms = dims(x), dims(mask)
    if not ms or not xs and not all(is_literal_one(d) for d in ms):
        raise IBertOpError(f"{OP}: 'mask' needs a known shape (each dim 1 or the scores'), got {mask}")
    for i, (dx, dm) in enumerate(zip(xs or ms, ms)):
        if not (is_literal_one(dm) or provably_equal(dx, dm)):
            raise IBertOpError(f"{OP}: 'mask' dim {i} is {dm}; it must be the literal 1 (broadcast) or provably "
                               f"equal to the scores' dim {dx}")


def _compute(x: te.Tensor, *mask: te.Tensor, x0_int: int, b_int: int, c_int: int, exp_multiplier: int,
             exp_shift: int) -> te.Tensor:
    rows, length = list(x.shape[:-1]), x.shape[-1]

    def keep(i):
        if not mask:
            return tir.const(True, "bool")
        m = mask[0]
        idx = [0 if is_literal_one(dm) else ix for dm, ix in zip(m.shape, i)]
        value = m[tuple(idx)]
        return value if str(m.dtype) == "bool" else value != tir.const(0, m.dtype)

    k = te.reduce_axis((0, length), name="k")
    # Masked entries enter the max as INT32_MIN (a reduction `where=` predicate is not honoured by TE here).
    lowest = tir.min_value("int32")
    row_max = te.compute(rows, lambda *r: te.max(tir.Select(keep(r + (k,)), x[(*r, k)], lowest), axis=k),
                         name="row_max")
    dt, one_product = arithmetic(x0_int, b_int, c_int, exp_multiplier)
    floor_q = EXP_CONST * x0_int

    # q: the difference clamped at 30 x0; then z and the polynomial p in `dt`. Each a stage of its own, so that
    # TVM's simplifier cannot widen them back to int64 through the casts.
    q = te.compute(x.shape, lambda *i: tir.Select(keep(i), _clamped_difference(x[i], row_max[i[:-1]], floor_q, dt),
                                                  tir.const(floor_q, dt)), name="exp_q")
    x0 = tir.const(x0_int, dt)
    z = te.compute(x.shape, lambda *i: tir.truncdiv(q[i], x0), name="exp_z")  # q <= 0, x0 < 0: the floor

    def poly(*i):
        r = q[i] - x0 * z[i]
        return tir.max((r + tir.const(b_int, dt)) * r + tir.const(c_int, dt), tir.const(0, dt))

    p = te.compute(x.shape, poly, name="exp_poly")

    def exp16(*i):
        shift = i64(exp_shift - EXP_CONST) + i64(z[i])
        # p >= 0 and M > 0 (1 / S16's mantissa, the type rule): the one product rounds in uint64, with logical shifts
        e = (i64(rne_shift_capped(i64(p[i]) * i64(exp_multiplier), shift, exp_shift, "uint64")) if one_product
             else mul_rne_shift_wide(i64(p[i]), exp_multiplier, shift))
        return clamp(e, E16_MIN, E16_MAX).astype("int32")

    e16 = te.compute(x.shape, exp16, name="exp16")
    k2 = te.reduce_axis((0, length), name="k2")
    sum_dtype = "int32" if isinstance(length, tir.IntImm) and int(length) <= SUM32_MAX_LENGTH else I64
    total = te.compute(rows, lambda *r: te.sum(e16[(*r, k2)].astype(sum_dtype), axis=k2), name="exp_sum")
    if mask:
        k3 = te.reduce_axis((0, length), name="k3")
        one, zero = tir.const(1, "int32"), tir.const(0, "int32")
        alive = te.compute(rows, lambda *r: te.max(tir.Select(keep(r + (k3,)), one, zero), axis=k3),
                           name="row_alive")
    else:
        alive = None

    def prob(*i):
        # M > 0 (the type rule), so every e16 is >= 0 and a row sum of 0 means every e16 of the row is 0, and so is
        # every output: no condition on the sum is needed, and none may be given, as TVM's simplifier would use it
        # to drop the max and divide by 0 (SIGFPE on x86, in a fully masked row).
        factor = tir.floordiv(i64(1 << SUM_BITS), tir.max(i64(total[i[:-1]]), i64(1)))
        value = _scaled_exp(e16[i], factor)
        if alive is not None:
            value = tir.Select(alive[i[:-1]] > tir.const(0, "int32"), value, tir.const(0, "int32"))
        return value.astype("int16")

    return te.compute(x.shape, prob, name="int_softmax")


def _clamped_difference(x: tir.PrimExpr, row_max: tir.PrimExpr, floor_q: int, dt: str) -> tir.PrimExpr:
    """max(x - row_max, floor_q) in `dt`, for x <= row_max (a masked entry may exceed it; its value is not
    used). The difference of two int32 scores spans 33 bits; in int32 it is taken as the unsigned distance
    row_max - x (exact modulo 2^32 and below 2^32), capped at -floor_q."""
    if dt == I64:
        return tir.max(i64(x) - i64(row_max), i64(floor_q))
    distance = row_max.astype("uint32") - x.astype("uint32")
    return -tir.min(distance, tir.const(-floor_q, "uint32")).astype("int32")


def _scaled_exp(e16: tir.PrimExpr, factor: tir.PrimExpr) -> tir.PrimExpr:
    """floor(e16 F / 2^24) for 0 <= e16 < 2^15 and 1 <= F <= 2^32, in 32-bit lanes: with F = 2^16 F_h + F_l,
    it is (e16 F_h + floor(e16 F_l / 2^16)) / 2^8 floored, and e16 F_h <= (2^15 - 1) 2^16, e16 F_l and their
    sum stay below 2^31. F is the row's: a 64-bit value made outside the loop over the row would reach the
    loop's multiply with no known high bits (LLVM selects instructions per basic block), so it is split there,
    and each product is one 32-bit multiply. uint32: an e16 outside the contract (a row whose sum is not
    positive, whose output is 0 anyway) wraps instead of overflowing."""
    u32 = "uint32"
    e = e16.astype(u32)
    high = e * (factor >> i64(16)).astype(u32)
    low = e * (factor & i64(0xFFFF)).astype(u32)
    return ((high + (low >> tir.const(16, u32))) >> tir.const(SUM_BITS - OUT_BITS - 16, u32)).astype("int32")


def _poly_range(x0_int: int, b_int: int, c_int: int) -> tuple[int, int]:
    """(min, max) of the i-exp polynomial (r + b) r + c over its remainders r in (x0, 0] (Python ints)."""
    r_lo = x0_int + 1
    candidates = {r_lo, 0} | {r for r in (-b_int // 2, -(b_int // 2)) if r_lo <= r <= 0}
    values = [(r + b_int) * r + c_int for r in candidates]
    return min(values), max(values)


def arithmetic(x0_int: int, b_int: int, c_int: int, exp_multiplier: int) -> tuple[str, bool]:
    """(dtype of q, z and the polynomial, whether the exp rescale is one int64 product) for these constants.

    int32 where q, z, r, (r + b) r and the polynomial all stay within it (16 lanes per AVX-512 register and
    no 64-bit division), else int64; one product where p_max |M| < 2^62, else the split (wide) product.
    """
    lo, hi = _poly_range(x0_int, b_int, c_int)
    fits = max(abs(EXP_CONST * x0_int), abs(b_int) + abs(x0_int), abs(c_int), abs(lo), abs(hi),
               abs(lo - c_int), abs(hi - c_int)) <= INT32_MAX
    return ("int32" if fits else I64), hi * abs(exp_multiplier) < 1 << 62


register(OP, "Integer-only Softmax (I-BERT i-exp + integer normalisation), output scale 2^-8.", _infer, _compute)


def int_softmax(x: relax.Expr, x0_int: int, b_int: int, c_int: int, exp_multiplier: int, exp_shift: int,
                mask: relax.Expr | None = None) -> relax.Call:
    """IntSoftmax over the last axis of int32 scores, with the integers of `quant.softmax_constants`."""
    args = [x] if mask is None else [x, mask]
    return make_call(OP, args, x0_int=int(x0_int), b_int=int(b_int), c_int=int(c_int),
                     exp_multiplier=int(exp_multiplier), exp_shift=int(exp_shift))


def reference(x: np.ndarray, x0_int: int, b_int: int, c_int: int, exp_multiplier: int, exp_shift: int,
              mask: np.ndarray | None = None) -> np.ndarray:
    """Exact Python-integer IntSoftmax in HF's unfused order: e = max(p, 0) 2^(30-z), then rne(e M / 2^E)."""
    keep = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask != 0, x.shape)
    xi = as_pyint(x)
    floor_q = EXP_CONST * x0_int
    out = np.zeros(x.shape, dtype=np.int64)
    for idx in np.ndindex(*x.shape[:-1]):
        row_keep = keep[idx]
        if not row_keep.any():
            continue
        mx = max(v for v, k in zip(xi[idx], row_keep) if k)
        q = np.array([int(v) - mx if k else floor_q for v, k in zip(xi[idx], row_keep)], dtype=object)
        e = i_exp_reference(q, x0_int, b_int, c_int)
        e16 = np.clip(ref_rne_div_pow2(e * exp_multiplier, exp_shift), E16_MIN, E16_MAX)
        total = int(sum(e16))
        if total <= 0:
            continue
        factor = (1 << SUM_BITS) // total
        out[idx] = [(int(v) * factor) >> (SUM_BITS - OUT_BITS) for v in e16]
    return out


def i_exp_reference(q: np.ndarray, x0_int: int, b_int: int, c_int: int) -> np.ndarray:
    """i-exp of non-positive integers (before the 16-bit step): value p 2^(30-z), scale 0.358 S^2 / 2^30."""
    qi = np.maximum(as_pyint(q), EXP_CONST * x0_int)
    z = qi // x0_int
    r = qi - x0_int * z
    p = (r + b_int) * r + c_int
    return np.array([max(int(pi), 0) << (EXP_CONST - int(zi)) for pi, zi in zip(p.ravel(), z.ravel())],
                    dtype=object).reshape(q.shape)
