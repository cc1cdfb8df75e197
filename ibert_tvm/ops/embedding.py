"""`ibert.embedding`: int8 table lookup (HF QuantEmbedding: 8-bit, one per-tensor scale).

Ids must lie in [0, V): the runtime boundary rejects others before they reach the program; inside the
kernel an id is clamped into the table so that no memory outside it is ever read.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx as tir

from .intmath import i64
from .registry import IBertOpError, dims, make_call, register, tensor_type

OP = "ibert.embedding"


def _infer(call: relax.Call) -> relax.TensorType:
    ids = tensor_type(call, 0, "ids", ["int32", "int64"])
    table = tensor_type(call, 1, "table", ["int8"], ndim=2)
    si, st = dims(ids), dims(table)
    if st and isinstance(st[0], tir.IntImm) and int(st[0]) == 0:  # the clamp into [0, V - 1] would read row -1
        raise IBertOpError(f"{OP}: argument 'table' has no rows (shape {[int(d) for d in st]}); V must be >= 1")
    if not (st and (si or ids.ndim == 0)):
        return relax.TensorType(ndim=ids.ndim + 1 if ids.ndim >= 0 else -1, dtype="int8")
    return relax.TensorType(si + [st[1]], "int8")


def _compute(ids: te.Tensor, table: te.Tensor) -> te.Tensor:
    last = i64(table.shape[0]) - i64(1)

    def row(*i):
        idx = tir.min(tir.max(i64(ids[i[:-1]]), i64(0)), last)
        return table[(idx, i[-1])]

    return te.compute(list(ids.shape) + [table.shape[1]], row, name="embedding")


register(OP, "int8 embedding table lookup.", _infer, _compute)


def embedding(ids: relax.Expr, table: relax.Expr | np.ndarray) -> relax.Call:
    """out[..., d] = table[ids[...], d] (int8). A numpy table (int8) becomes a constant."""
    if isinstance(table, np.ndarray):
        if table.dtype != np.int8:
            raise IBertOpError(f"{OP}: argument 'table' must be int8, got {table.dtype}")
        table = relax.const(table, "int8")
    return make_call(OP, [ids, table])


def reference(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Plain lookup; ids out of range raise IndexError here (the reference never clamps)."""
    return table[ids]
