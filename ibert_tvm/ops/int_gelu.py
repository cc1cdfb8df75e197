"""`ibert.int_gelu`: i-GELU (spec §2; P-Alg.2, HF IntGELU) on int32 with per-channel constants -> int64.

  sgn = sign(q); t = min(|q|, -b); y = floor(sgn ((t + b)^2 + c) / 2^14); out = q (y + q1)

with b = floor(-1.769 / S'), c = floor((1/-0.2888) / S'^2), S' = S / 1.4142, q1 = floor(1 / S_L)
(`quant.gelu_constants`). The output scale S S_L / 2 is negative per channel; int64 is needed (|out| reaches
2^45 for typical scales; `quant.gelu_constants` bounds it below 2^62 or refuses the scale).

Where known constants bound the stages (`narrow_level`, attribute `narrow`, checked against constants), they
run in int32 (twice the vector lanes): ALL: everything but the last product; ENDS (the usual case: |b| ~ 2^17,
t^2 ~ 2^35): t and y + q1, with t^2 + c an int32 x int32 -> int64 product. The last product is int32 x int32
-> int64 then. t = |clamp(q, b, -b)| + b avoids |q| of q = -2^31, and sgn * v is (v ^ n) - n with n = q >> 31
(for q = 0 the output is 0 whatever y is).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx as tir

from .intmath import as_pyint, i64, per_channel
from .registry import IBertOpError, as_expr, check_channel_vector, dims, like, make_call, register, tensor_type

OP = "ibert.int_gelu"
ERF_SHIFT = 14
NONE, ALL, ENDS = 0, 1, 2  # values of the `narrow` attribute: the stages that run in int32 (`narrow_level`)


def narrow_level(b_int: np.ndarray | int, c_int: np.ndarray | int, q1: np.ndarray | int) -> int:
    """Which stages known constants let run in int32 (signed overflow is undefined in the generated code, so
    no intermediate may wrap): ALL where t^2 + c (t in [b, 0]), its shift y and y + q1 stay inside int32;
    ENDS where t (|b| < 2^31) and y + q1 do, t^2 + c taking int64; else NONE (everything int64)."""
    b, c, k = (as_pyint(np.atleast_1d(v)) for v in (b_int, c_int, q1))
    limit = (1 << 31) - 1
    v_max = max(max(int(bi) ** 2, int(bi) ** 2 + int(ci), -int(ci)) for bi, ci in np.broadcast(b, c))
    ends = max(abs(int(v)) for v in b.ravel()) <= limit and \
        max(abs(int(v)) for v in k.ravel()) + (v_max >> ERF_SHIFT) + 1 <= limit
    return (ALL if v_max <= limit else ENDS) if ends else NONE


def _infer(call: relax.Call) -> relax.TensorType:
    x = tensor_type(call, 0, "x", ["int32"], min_ndim=1)
    channels = dims(x)[-1] if dims(x) else None
    for idx, name in enumerate(("b_int", "c_int", "q1"), start=1):
        check_channel_vector(call, idx, name, channels)
    consts, narrow = call.args[1:], int(call.attrs.get("narrow", NONE))
    if narrow not in (NONE, ALL, ENDS):
        raise IBertOpError(f"{OP}: narrow must be {NONE}, {ALL} or {ENDS}, got {narrow}")
    if narrow and all(isinstance(a, tvm.ir.GenericConst) for a in consts):
        level = narrow_level(*(a.value.numpy() for a in consts))
        if level == NONE or (narrow == ALL and level != ALL):
            raise IBertOpError(f"{OP}: narrow is {narrow}, but the constants do not keep "
                               + ("t^2 + c and " if narrow == ALL else "t and ") + "y + q1 in int32")
    return like(x, "int64")


def _compute(x: te.Tensor, b: te.Tensor, c: te.Tensor, q1: te.Tensor, narrow: int = NONE) -> te.Tensor:
    mid = "int32" if narrow == ALL else "int64"  # of t^2 + c and its shift
    end = "int64" if narrow == NONE else "int32"  # of t and of y + q1

    def body(*i):
        q, bi = x[i].astype(end), per_channel(b, i).astype(end)
        t = tir.abs(tir.min(tir.max(q, bi), -bi)) + bi  # min(|q|, -b) + b without |q| of q = -2^31
        v = t.astype(mid) * t.astype(mid) + per_channel(c, i).astype(mid)
        neg = (x[i] >> tir.const(31, "int32")).astype(mid)  # -1 where q < 0, else 0
        y = (((v ^ neg) - neg) >> tir.const(ERF_SHIFT, mid)).astype(end)  # sgn * v >> 14; q = 0 gives out = 0
        return i64(q) * i64(y + per_channel(q1, i).astype(end))

    return te.compute(x.shape, body, name="int_gelu")


register(OP, "Integer-only GELU (I-BERT i-GELU).", _infer, _compute)


def int_gelu(x: relax.Expr, b_int: np.ndarray | int, c_int: np.ndarray | int, q1: np.ndarray | int) -> relax.Call:
    """i-GELU of int32 `x` with the integers of `quant.gelu_constants` (scalars or per-channel)."""
    narrow = NONE if any(isinstance(v, relax.Expr) for v in (b_int, c_int, q1)) else narrow_level(b_int, c_int, q1)
    return make_call(OP, [x, as_expr(b_int, OP, "b_int"), as_expr(c_int, OP, "c_int"), as_expr(q1, OP, "q1")],
                     **({"narrow": narrow} if narrow else {}))


def reference(x: np.ndarray, b_int: np.ndarray, c_int: np.ndarray, q1: np.ndarray) -> np.ndarray:
    """Exact Python-integer i-GELU (floor division for the >> 14, as HF's floor)."""
    q = as_pyint(x)
    b, c, k = as_pyint(b_int), as_pyint(c_int), as_pyint(q1)
    sgn = np.sign(x.astype(np.int64)).astype(object)
    t = np.minimum(np.abs(q), -b) + b
    y = (sgn * (t * t + c)) // (1 << ERF_SHIFT)
    return (q * (y + k)).astype(np.int64)
