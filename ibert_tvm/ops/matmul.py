"""`ibert.matmul`: batched activation x activation product with int32 accumulation (Q K^T and P V).

`a` is int8, or int16 for the softmax probabilities: IntSoftmax outputs lie in [0, 256] (spec §3.3 step 7;
256 occurs when one entry holds the whole row), which uint8 cannot hold, so they are kept exactly as int16.
`b` is int8, laid out [..., K, N], or [..., N, K] with `transpose_b=True` (keys for Q K^T).
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx as tir

from .registry import (INT8_ABS_MAX, IBertOpError, check_constant_range, check_reduction_length, dims, make_call,
                       register, same_dim, tensor_type)

OP = "ibert.matmul"
# The largest |a| each dtype may carry in this scheme: int8 activations, and softmax probabilities <= 256.
A_MAX = {"int8": INT8_ABS_MAX, "int16": 256}


def _infer(call: relax.Call) -> relax.TensorType:
    a = tensor_type(call, 0, "a", list(A_MAX), min_ndim=2)
    check_constant_range(call, 0, "a", -A_MAX[str(a.dtype)], A_MAX[str(a.dtype)])
    b = tensor_type(call, 1, "b", ["int8"], min_ndim=2)
    transpose_b = bool(call.attrs["transpose_b"])
    if a.ndim != b.ndim:
        raise IBertOpError(f"{OP}: 'a' has rank {a.ndim} but 'b' has rank {b.ndim}; batch dims must match")
    sa, sb = dims(a), dims(b)
    if not (sa and sb):
        return relax.TensorType(ndim=a.ndim, dtype="int32")
    for i, (da, db) in enumerate(zip(sa[:-2], sb[:-2])):
        if not same_dim(da, db):
            raise IBertOpError(f"{OP}: batch dim {i} differs: 'a' has {da}, 'b' has {db}")
    k_b, n = (sb[-1], sb[-2]) if transpose_b else (sb[-2], sb[-1])
    if not same_dim(sa[-1], k_b):
        raise IBertOpError(f"{OP}: reduction length differs: 'a' has {sa[-1]}, 'b' has {k_b}")
    check_reduction_length(OP, sa[-1] if isinstance(sa[-1], tir.IntImm) else k_b, A_MAX[str(a.dtype)])
    return relax.TensorType(sa[:-1] + [n], "int32")


def _compute(a: te.Tensor, b: te.Tensor, transpose_b: bool) -> te.Tensor:
    k = te.reduce_axis((0, a.shape[-1]), name="k")
    n = b.shape[-2] if transpose_b else b.shape[-1]

    def b_at(batch, col):
        return b[(*batch, col, k)] if transpose_b else b[(*batch, k, col)]

    return te.compute(list(a.shape[:-1]) + [n],
                      lambda *i: te.sum(a[(*i[:-1], k)].astype("int32") * b_at(i[:-2], i[-1]).astype("int32"), axis=k),
                      name="matmul")


register(OP, "Batched int8/int16 x int8 -> int32 matmul (attention scores and context).", _infer, _compute)


def matmul(a: relax.Expr, b: relax.Expr, transpose_b: bool = False) -> relax.Call:
    """out[..., m, n] = sum_k a[..., m, k] * b[..., k, n] (or b[..., n, k] when transpose_b), int32."""
    return make_call(OP, [a, b], transpose_b=bool(transpose_b))


def reference(a: np.ndarray, b: np.ndarray, transpose_b: bool = False) -> np.ndarray:
    """Exact int64 batched product."""
    bb = np.swapaxes(b, -1, -2) if transpose_b else b
    return np.matmul(a.astype(np.int64), bb.astype(np.int64))
