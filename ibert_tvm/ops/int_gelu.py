"""`ibert.int_gelu`: i-GELU (spec §2; P-Alg.2, HF IntGELU) on int32 with per-channel constants -> int64.

  sgn = sign(q); t = min(|q|, -b); y = floor(sgn ((t + b)^2 + c) / 2^14); out = q (y + q1)

with b = floor(-1.769 / S'), c = floor((1/-0.2888) / S'^2), S' = S / 1.4142, q1 = floor(1 / S_L)
(`quant.gelu_constants`). The output scale S S_L / 2 is negative per channel; int64 is needed (|out| reaches
2^45 for typical scales; `quant.gelu_constants` bounds it below 2^62 or refuses the scale).

Where known constants keep y + q1 inside int32 (`int32_bounded`, attribute `narrow`, checked against
constants; BERT's usual |b| ~ 2^17, t^2 ~ 2^35), everything but the last product runs in int32, twice the
vector lanes and no 64-bit multiply: with s = -t = -b - |clamp(q, b, -b)| (no |q| of q = -2^31) split as
s = 2^13 s_h + s_l, c = 2^14 c_h + c_l and n = q >> 31 (-1 or 0),

  floor((t^2 + c + n) / 2^14) = c_h + 2^12 s_h^2 + s_h s_l + floor((s_l^2 + c_l + n) / 2^14)

is exact with every term and partial sum bounded by |y| (s_l^2 < 2^26), and sgn * v >> 14 is that value
xor n (floor(-v / 2^14) = ~floor((v - 1) / 2^14); for q = 0 the output is 0 whatever y is). The last
product is int32 x int32 -> int64.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx as tir

from ..quant import gelu_integer_problem
from .intmath import INT32_MAX, as_pyint, i64, per_channel, widened
from .registry import IBertOpError, as_expr, check_channel_vector, dims, like, make_call, register, tensor_type

OP = "ibert.int_gelu"
ERF_SHIFT = 14
SPLIT = ERF_SHIFT - 1  # bits of s_l: the cross term 2 s_h s_l 2^13 is then s_h s_l 2^14


def int32_bounded(b_int: np.ndarray | int, c_int: np.ndarray | int, q1: np.ndarray | int) -> bool:
    """Whether y = floor(sgn (t^2 + c) / 2^14) (t in [b, 0]) and y + q1 stay inside int32 (signed int32 overflow
    is undefined in the generated code, so no intermediate may wrap; the split's terms are bounded by |y|)."""
    b, c, k = (as_pyint(np.atleast_1d(v)) for v in (b_int, c_int, q1))
    v_max = max(max(int(bi) ** 2, int(bi) ** 2 + int(ci), -int(ci)) for bi, ci in np.broadcast(b, c))
    return max(abs(int(v)) for v in k.ravel()) + (v_max >> ERF_SHIFT) + 1 <= INT32_MAX


def _infer(call: relax.Call) -> relax.TensorType:
    x = tensor_type(call, 0, "x", ["int32"], min_ndim=1)
    channels = dims(x)[-1] if dims(x) else None
    for idx, name in enumerate(("b_int", "c_int", "q1"), start=1):
        check_channel_vector(call, idx, name, channels)
    consts = call.args[1:]
    if all(isinstance(a, tvm.ir.GenericConst) for a in consts):  # run-time constants are the caller's contract
        values = [a.value.numpy() for a in consts]
        if problem := gelu_integer_problem(*values):  # e.g. b = -2^40 wrapped int64 silently (a fuzz)
            raise IBertOpError(f"{OP}: {problem}")
        if int(call.attrs.get("narrow", 0)) and not int32_bounded(*values):
            raise IBertOpError(f"{OP}: narrow is set, but the constants do not keep y + q1 in int32")
    return like(x, "int64")


def _compute(x: te.Tensor, b: te.Tensor, c: te.Tensor, q1: te.Tensor, narrow: int = 0) -> te.Tensor:
    def body(*i):
        q, bi, ci = x[i], per_channel(b, i), per_channel(c, i)
        if narrow:
            return i64(q) * widened(_erf_shifted_int32(q, bi, ci) + per_channel(q1, i).astype("int32"))
        q = i64(q)
        t = tir.abs(tir.min(tir.max(q, bi), -bi)) + bi  # min(|q|, -b) + b
        zero = i64(0)
        y = tir.Select(q > zero, t * t + ci, tir.Select(q < zero, -(t * t + ci), zero)) >> i64(ERF_SHIFT)
        return q * (y + per_channel(q1, i))

    return te.compute(x.shape, body, name="int_gelu")


def _erf_shifted_int32(q: tir.PrimExpr, b: tir.PrimExpr, c: tir.PrimExpr) -> tir.PrimExpr:
    """y = floor(sgn(q) (t^2 + c) / 2^14) in int32 by the split of the module docstring (for q = 0 any value)."""
    i32 = lambda v: tir.const(v, "int32")  # noqa: E731
    b32 = b.astype("int32")
    s = -b32 - tir.abs(tir.min(tir.max(q, b32), -b32))
    s_h, s_l = s >> i32(SPLIT), s & i32((1 << SPLIT) - 1)
    c_h, c_l = (c >> i64(ERF_SHIFT)).astype("int32"), (c & i64((1 << ERF_SHIFT) - 1)).astype("int32")
    n = q >> i32(31)
    low = (s_l * s_l + c_l + n) >> i32(ERF_SHIFT)
    return (((s_h * s_h) << i32(2 * SPLIT - ERF_SHIFT)) + s_h * s_l + low + c_h) ^ n


register(OP, "Integer-only GELU (I-BERT i-GELU).", _infer, _compute, channel_args=(1, 2, 3))


def int_gelu(x: relax.Expr, b_int: np.ndarray | int, c_int: np.ndarray | int, q1: np.ndarray | int) -> relax.Call:
    """i-GELU of int32 `x` with the integers of `quant.gelu_constants` (scalars or per-channel)."""
    narrow = not any(isinstance(v, relax.Expr) for v in (b_int, c_int, q1)) and int32_bounded(b_int, c_int, q1)
    return make_call(OP, [x, as_expr(b_int, OP, "b_int"), as_expr(c_int, OP, "c_int"), as_expr(q1, OP, "q1")],
                     **({"narrow": 1} if narrow else {}))


def reference(x: np.ndarray, b_int: np.ndarray, c_int: np.ndarray, q1: np.ndarray) -> np.ndarray:
    """Exact Python-integer i-GELU (floor division for the >> 14, as HF's floor)."""
    q = as_pyint(x)
    b, c, k = as_pyint(b_int), as_pyint(c_int), as_pyint(q1)
    sgn = np.sign(x.astype(np.int64)).astype(object)
    t = np.minimum(np.abs(q), -b) + b
    y = (sgn * (t * t + c)) // (1 << ERF_SHIFT)
    return (q * (y + k)).astype(np.int64)
