"""`ibert.lookup`: int8 -> int8 through a 256-entry table built at compile time (out = table[x + 128]).

Any elementwise function of an int8 value is exactly a table over its 256 possible inputs; the classifier
head's tanh runs this way (`quant.lookup_table`), so it stays integer-only at run time.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te

from .registry import IBertOpError, dims, like, make_call, register, tensor_type

OP = "ibert.lookup"
TABLE_SIZE = 256


def _infer(call: relax.Call) -> relax.TensorType:
    x = tensor_type(call, 0, "x", ["int8"])
    table = tensor_type(call, 1, "table", ["int8"], ndim=1)
    if dims(table) and int(dims(table)[0]) != TABLE_SIZE:
        raise IBertOpError(f"{OP}: 'table' must have {TABLE_SIZE} entries (one per int8 value), got {dims(table)[0]}")
    return like(x, "int8")


def _compute(x: te.Tensor, table: te.Tensor) -> te.Tensor:
    return te.compute(x.shape, lambda *i: table[x[i].astype("int32") + 128], name="lookup")


register(OP, "int8 -> int8 table lookup (an elementwise function over the 256 int8 values).", _infer, _compute)


def lookup(x: relax.Expr, table: np.ndarray | relax.Expr) -> relax.Call:
    """out = table[x + 128] for int8 `x`; a numpy table (int8, 256 entries) becomes a constant."""
    if isinstance(table, np.ndarray):
        if table.dtype != np.int8 or table.shape != (TABLE_SIZE,):
            raise IBertOpError(f"{OP}: 'table' must be int8 of shape ({TABLE_SIZE},), got {table.dtype} {table.shape}")
        table = relax.const(table, "int8")
    return make_call(OP, [x, table])


def reference(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Plain indexing."""
    return table[x.astype(np.int64) + 128]
