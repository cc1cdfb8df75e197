"""`ibert.int_gelu`: i-GELU (spec §2; P-Alg.2, HF IntGELU) on int32 with per-channel constants -> int64.

  sgn = sign(q); t = min(|q|, -b); y = floor(sgn ((t + b)^2 + c) / 2^14); out = q (y + q1)

with b = floor(-1.769 / S'), c = floor((1/-0.2888) / S'^2), S' = S / 1.4142, q1 = floor(1 / S_L)
(`quant.gelu_constants`). The output scale S S_L / 2 is negative per channel; int64 is needed (|out| reaches
2^45 for typical scales; `quant.gelu_constants` bounds it below 2^62 or refuses the scale).
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx as tir

from .intmath import as_pyint, i64, per_channel
from .registry import as_expr, check_channel_vector, dims, like, make_call, register, tensor_type

OP = "ibert.int_gelu"
ERF_SHIFT = 14


def _infer(call: relax.Call) -> relax.TensorType:
    x = tensor_type(call, 0, "x", ["int32"], min_ndim=1)
    channels = dims(x)[-1] if dims(x) else None
    for idx, name in enumerate(("b_int", "c_int", "q1"), start=1):
        check_channel_vector(call, idx, name, channels)
    return like(x, "int64")


def _compute(x: te.Tensor, b: te.Tensor, c: te.Tensor, q1: te.Tensor) -> te.Tensor:
    def body(*i):
        q = i64(x[i])
        bi = per_channel(b, i)
        t = tir.min(tir.abs(q), -bi) + bi
        v = t * t + per_channel(c, i)
        y = tir.Select(q > i64(0), v, tir.Select(q < i64(0), -v, i64(0))) >> i64(ERF_SHIFT)  # sgn * v
        return q * (y + per_channel(q1, i))

    return te.compute(x.shape, body, name="int_gelu")


register(OP, "Integer-only GELU (I-BERT i-GELU).", _infer, _compute)


def int_gelu(x: relax.Expr, b_int: np.ndarray | int, c_int: np.ndarray | int, q1: np.ndarray | int) -> relax.Call:
    """i-GELU of int32 `x` with the integers of `quant.gelu_constants` (scalars or per-channel)."""
    return make_call(OP, [x, as_expr(b_int, OP, "b_int"), as_expr(c_int, OP, "c_int"), as_expr(q1, OP, "q1")])


def reference(x: np.ndarray, b_int: np.ndarray, c_int: np.ndarray, q1: np.ndarray) -> np.ndarray:
    """Exact Python-integer i-GELU (floor division for the >> 14, as HF's floor)."""
    q = as_pyint(x)
    b, c, k = as_pyint(b_int), as_pyint(c_int), as_pyint(q1)
    sgn = np.sign(x.astype(np.int64)).astype(object)
    t = np.minimum(np.abs(q), -b) + b
    y = (sgn * (t * t + c)) // (1 << ERF_SHIFT)
    return (q * (y + k)).astype(np.int64)
