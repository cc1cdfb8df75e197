"""Registration of the `ibert.*` Relax operators: one call registers name, type rule, purity and lowering.

Each operator file calls :func:`register` once with its type rule and its TE compute. Type rules raise
:class:`IBertOpError`, which names the operator and the offending argument; the public builder functions
run the same rule eagerly so a bad graph fails where the user built it, not deep inside TVM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.sym import Analyzer
from tvm.relax.transform.legalize_ops.common import register_legalize

from .intmath import INT32_MAX, INT32_MIN

InferFn = Callable[[relax.Call], relax.TensorType]
ComputeFn = Callable[..., Any]
_TYPE_RULES: dict[str, InferFn] = {}


class IBertOpError(TypeError):
    """A malformed `ibert.*` call: wrong dtype, rank, shape or attribute. The message names op and argument."""


def register(name: str, doc: str, infer: InferFn, compute: ComputeFn, channel_args: Sequence[int] = ()) -> None:
    """Register `name` as a pure Relax op whose type rule is `infer` and whose lowering is the TE `compute`.

    `compute(*te_tensors, **attrs)` receives one TE tensor per call argument and the call's attributes
    as Python values; it returns the TE output tensor. `channel_args` are the positions of the per-tensor or
    per-channel int64 parameters (`check_channel_vector`), which `compute` reads with `intmath.per_channel`.
    """
    _TYPE_RULES[name] = infer
    if _op_exists(name):
        return
    tvm.get_global_func("ir.RegisterOp")(name, doc)
    tvm.ir.register_op_attr(name, "FInferType", lambda call, _ctx: infer(call))
    tvm.ir.register_op_attr(name, "FPurity", True)

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        args = [_lowering_value(a, i in channel_args) for i, a in enumerate(call.args)]
        return bb.call_te(compute, *args, primfunc_name_hint=name.replace(".", "_"), **attrs_of(call))

    register_legalize(name, legalize)


def _lowering_value(arg: relax.Expr, channel_param: bool) -> relax.Expr | int:
    """What the TE compute receives for a call argument. A rank-0 integer constant becomes a Python int, an
    immediate (LLVM then folds shifts and rounding biases and keeps multipliers in registers). A per-channel
    parameter (`channel_param`) held as an int64 constant whose values all fit int32 becomes an int32
    constant, which `intmath.per_channel` reads back as int64: the same values, half the bytes, and products
    of two sign-extended int32 values, which a CPU without 64-bit vector multiplies (AVX2, NEON) does in one
    widening instruction. Anything else, data inputs included, as is."""
    if not isinstance(arg, tvm.ir.GenericConst):
        return arg
    value = arg.value.numpy()
    if value.ndim == 0 and value.dtype.kind in "iu":
        return int(value)
    if channel_param and value.ndim == 1 and value.dtype == np.int64 and value.size and \
            INT32_MIN <= int(value.min()) and int(value.max()) <= INT32_MAX:
        return relax.const(value.astype(np.int32), "int32")
    return arg


def _op_exists(name: str) -> bool:
    try:
        return tvm.ir.Op.get(name).get_attr("FInferType") is not None
    except (AttributeError, RuntimeError):
        return False


def make_call(name: str, args: Sequence[relax.Expr], **attrs: Any) -> relax.Call:
    """Build a call of a registered `ibert.*` op and check it with the op's own type rule right away."""
    call = relax.Call(tvm.ir.Op.get(name), list(args), tvm.ir.make_node("ir.DictAttrs", **attrs))
    if all(_has_type(a) for a in args):
        _TYPE_RULES[name](call)
    return call


def known_dtype(expr: relax.Expr) -> str | None:
    """The dtype of `expr` before it is emitted, where it can be known: its TensorType's, or, for a call of an
    `ibert.*` op whose arguments are typed (e.g. `requantize(int_gelu(x, ...))`), the dtype of the op's type
    rule; None otherwise. A builder that chooses its constants by the input's dtype must not guess."""
    if _has_type(expr):
        return str(expr.ty.dtype)
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in _TYPE_RULES \
            and all(_has_type(a) for a in expr.args):
        return str(_TYPE_RULES[expr.op.name](expr).dtype)
    return None


def _has_type(expr: relax.Expr) -> bool:
    try:
        return isinstance(expr.ty, relax.TensorType)
    except (AttributeError, RuntimeError):
        return False


def attrs_of(call: relax.Call) -> dict[str, Any]:
    """The call's attributes as plain Python values (ints, bools, strings)."""
    if call.attrs is None:
        return {}
    out = {}
    for key, value in call.attrs.items():
        if isinstance(value, tvm.tirx.IntImm):
            value = bool(value.value) if str(value.dtype) == "bool" else int(value.value)
        elif isinstance(value, str):
            value = str(value)
        out[str(key)] = value
    return out


def int_const(values: int | Sequence[int] | np.ndarray, op: str, arg: str) -> relax.Constant:
    """An int64 Relax constant (shape () for per-tensor, (C,) for per-channel) holding integer parameters."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        raise IBertOpError(f"{op}: argument '{arg}' must be integers computed at build time, got dtype {arr.dtype}")
    if arr.ndim > 1:
        raise IBertOpError(f"{op}: argument '{arg}' must be a scalar or a per-channel vector, got shape {arr.shape}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) >> 63:  # astype would wrap it silently
        raise IBertOpError(f"{op}: argument '{arg}' does not fit int64, got {int(arr.max())}")
    return relax.const(arr.astype("int64"), "int64")


def as_expr(value: Any, op: str, arg: str) -> relax.Expr:
    """Accept a Relax expression as is, or wrap integer Python/numpy parameters with :func:`int_const`."""
    return value if isinstance(value, relax.Expr) else int_const(value, op, arg)


# ---------------------------------------------------------------- type-rule helpers


def tensor_type(call: relax.Call, index: int, arg: str, dtypes: Sequence[str], ndim: int | None = None,
                min_ndim: int = 0) -> relax.TensorType:
    """The TensorType of argument `index`, checked for dtype and rank; raises IBertOpError naming `arg`."""
    op = call.op.name
    try:
        ty = call.args[index].ty
    except (AttributeError, RuntimeError) as err:
        raise IBertOpError(f"{op}: argument '{arg}' has no known type") from err
    if not isinstance(ty, relax.TensorType):
        raise IBertOpError(f"{op}: argument '{arg}' must be a tensor, got {ty}")
    if str(ty.dtype) not in dtypes:
        raise IBertOpError(f"{op}: argument '{arg}' must have dtype {' or '.join(dtypes)}, got {ty.dtype}")
    if ndim is not None and ty.ndim != ndim:
        raise IBertOpError(f"{op}: argument '{arg}' must have rank {ndim}, got rank {ty.ndim}")
    if ty.ndim != -1 and ty.ndim < min_ndim:
        raise IBertOpError(f"{op}: argument '{arg}' must have rank >= {min_ndim}, got rank {ty.ndim}")
    return ty


def dims(ty: relax.TensorType) -> list[Any]:
    """The shape of a TensorType as a list of PrimExprs (empty when unknown)."""
    shape = ty.shape
    return list(shape.values) if isinstance(shape, relax.ShapeExpr) else []


def same_dim(a: Any, b: Any) -> bool:
    """True unless both dims are known integers that differ (symbolic dims are trusted)."""
    if isinstance(a, tvm.tirx.IntImm) and isinstance(b, tvm.tirx.IntImm):
        return int(a) == int(b)
    return True


def provably_equal(a: Any, b: Any) -> bool:
    """True only where `a` and `b` (dims: IntImms, symbolic PrimExprs or Python ints) are provably equal, e.g.
    the same shape variable twice. Stricter than `same_dim`: for a kernel that indexes one tensor by another's
    dims, a dim that merely might differ is an out-of-bounds read."""
    return bool(Analyzer().can_prove_equal(a, b))


def is_literal_one(dim: Any) -> bool:
    """Whether `dim` is the integer literal 1 (a broadcast dim; a symbolic dim that is 1 at run time is not)."""
    return isinstance(dim, tvm.tirx.IntImm) and int(dim) == 1


#: the largest |value| of an int8 operand (-128) in the int32 accumulations of `ibert.linear` and `ibert.matmul`
INT8_ABS_MAX = 128


def check_reduction_length(op: str, k: Any, a_max: int, b_max: int = INT8_ABS_MAX, addend: int = 0) -> None:
    """A static reduction length K must keep K a_max b_max + addend within int32 (the worst case of an int32
    accumulator of K products of operands bounded by a_max and b_max, plus a known |bias| bound `addend`); a
    symbolic K is not checked."""
    if isinstance(k, tvm.tirx.IntImm) and int(k) * a_max * b_max + addend > INT32_MAX:
        plus = f" + {addend}" if addend else ""
        raise IBertOpError(f"{op}: reduction length {int(k)} can overflow the int32 accumulator "
                           f"({int(k)} x {a_max} x {b_max}{plus} > 2^31 - 1)")


def constant_values(call: relax.Call, index: int) -> np.ndarray | None:
    """Argument `index`'s values where it is a constant; None where it is a run-time value or absent."""
    if index < len(call.args) and isinstance(call.args[index], tvm.ir.GenericConst):
        return call.args[index].value.numpy()
    return None


def check_constant_range(call: relax.Call, index: int, arg: str, lo: int | None, hi: int | None) -> None:
    """Where argument `index` is a constant, its values must lie in [lo, hi] (an input contract the kernel
    relies on but cannot check at run time); nothing to check where lo is None or the argument is not constant."""
    arr = constant_values(call, index)
    if lo is None or arr is None:
        return
    if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
        raise IBertOpError(f"{call.op.name}: constant '{arg}' holds values in [{int(arr.min())}, {int(arr.max())}] "
                           f"outside its contract [{lo}, {hi}]")


def check_channel_vector(call: relax.Call, index: int, arg: str, channels: Any) -> None:
    """Argument `index` must be an int64 scalar (per-tensor) or an int64 vector of length `channels`."""
    ty = tensor_type(call, index, arg, ["int64"])
    if ty.ndim not in (0, 1):
        raise IBertOpError(f"{call.op.name}: argument '{arg}' must be a scalar or a per-channel vector, "
                           f"got rank {ty.ndim}")
    if ty.ndim == 1 and not same_dim(dims(ty)[0], channels):
        raise IBertOpError(f"{call.op.name}: argument '{arg}' has {dims(ty)[0]} channels but the input "
                           f"has {channels}")


def check_scalar(call: relax.Call, index: int, arg: str) -> None:
    """Argument `index` must be an int64 scalar (rank 0)."""
    tensor_type(call, index, arg, ["int64"], ndim=0)


def like(ty: relax.TensorType, dtype: str) -> relax.TensorType:
    """A TensorType with `ty`'s shape (or rank, when the shape is unknown) and another dtype."""
    shape = dims(ty)
    return relax.TensorType(shape, dtype) if shape or ty.ndim == 0 else relax.TensorType(ndim=ty.ndim, dtype=dtype)
