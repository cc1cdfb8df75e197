"""`ibert.linear`: int8 activations x int8 weights (per-output-channel scales) -> int32, + int32 bias.

The weight scales are not an input: they only enter the requantization constants of the consumer
(`quant.quantize_linear` returns them), so the op is pure integer arithmetic: acc = x W^T + b in int32.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te

from ..quant import QuantizationRangeError
from .registry import (INT8_ABS_MAX, IBertOpError, check_reduction_length, constant_values, dims, make_call, register,
                       same_dim, tensor_type)

OP = "ibert.linear"
# |x| <= 128: output channel n's int32 accumulator holds at most 128 * sum_k |w[n, k]| + |bias[n]|.
ACC_LIMIT = (1 << 31) - 1


def _infer(call: relax.Call) -> relax.TensorType:
    x = tensor_type(call, 0, "x", ["int8"], min_ndim=1)
    w = tensor_type(call, 1, "weight", ["int8"], ndim=2)
    xs, ws = dims(x), dims(w)
    if xs and ws and not same_dim(xs[-1], ws[1]):
        raise IBertOpError(f"{OP}: 'x' has {xs[-1]} input features but 'weight' has {ws[1]}")
    if len(call.args) == 3:
        b = tensor_type(call, 2, "bias", ["int32"], ndim=1)
        if ws and dims(b) and not same_dim(dims(b)[0], ws[0]):
            raise IBertOpError(f"{OP}: 'bias' has {dims(b)[0]} channels but 'weight' has {ws[0]} output channels")
    _check_accumulator(call, ws[1:] + xs[-1:])
    if not (xs and ws):
        return relax.TensorType(ndim=x.ndim, dtype="int32")
    return relax.TensorType(xs[:-1] + [ws[0]], "int32")


def _check_accumulator(call: relax.Call, reduction_lengths: list) -> None:
    """The int32 accumulator's worst case for |x| <= 128, checked wherever its terms are known, however the call
    was built: per output channel, 128 sum_k |w[n, k]| + |bias[n]|, for a constant weight (a run-time bias adds
    nothing: the caller's contract); K 128^2 + max |bias| for a run-time weight (a static K; a constant bias)."""
    weight, bias = constant_values(call, 1), constant_values(call, 2)
    if weight is None:
        addend = 0 if bias is None else int(np.abs(bias.astype(np.int64)).max(initial=0))
        for k in reduction_lengths:
            check_reduction_length(OP, k, INT8_ABS_MAX, addend=addend)
        return
    worst = accumulator_bound(weight, bias)
    if worst.size and worst.max() > ACC_LIMIT:
        n = int(np.argmax(worst))
        raise QuantizationRangeError(f"{OP}: output channel {n} can overflow the int32 accumulator (128 x "
                                     f"sum |w| + |bias| = {int(worst[n])} > 2^31 - 1)")


def accumulator_bound(weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """Per output channel, the int32 accumulator's worst case for |x| <= 128: 128 sum_k |w[n, k]| + |bias[n]|
    (int64)."""
    # int16 |w| summed in int64: a fifth of the time of an int64 copy (2 ms for BERT's 3072 x 768)
    reach = INT8_ABS_MAX * np.abs(weight.astype(np.int16)).sum(axis=-1, dtype=np.int64)
    return reach if bias is None else reach + np.abs(bias.astype(np.int64))


def _compute(x: te.Tensor, w: te.Tensor, bias: te.Tensor | None = None) -> te.Tensor:
    k = te.reduce_axis((0, x.shape[-1]), name="k")
    shape = list(x.shape[:-1]) + [w.shape[0]]
    acc = te.compute(shape, lambda *i: te.sum(x[(*i[:-1], k)].astype("int32") * w[(i[-1], k)].astype("int32"), axis=k),
                     name="acc")
    if bias is None:
        return acc
    return te.compute(shape, lambda *i: acc[i] + bias[(i[-1],)], name="acc_bias")


register(OP, "int8 x int8 -> int32 dense with int32 bias (I-BERT QuantLinear).", _infer, _compute)


def linear(x: relax.Expr, weight: relax.Expr | np.ndarray, bias: relax.Expr | np.ndarray | None = None) -> relax.Call:
    """y[..., n] = sum_k x[..., k] * weight[n, k] + bias[n], int32. Numpy weights/bias become constants.

    The type rule checks the int32 accumulator's worst case wherever its terms are constants (numpy arrays or
    Relax constants alike). With a constant weight, each output channel (a QuantizationRangeError naming it):
    by its own weights, so that a pruned channel (zero weights) may hold a bias as large as int32 does, as HF's
    quantization saturates it. A run-time weight is bounded by its static K (as `ibert.matmul`'s: K 128^2, plus
    max |bias| for a constant bias, <= 2^31 - 1). A run-time bias cannot be checked: the caller guarantees
    128 sum_k |w[n, k]| + |bias[n]| <= 2^31 - 1, or the sum wraps.
    """
    if isinstance(weight, np.ndarray):
        if weight.dtype != np.int8:
            raise IBertOpError(f"{OP}: argument 'weight' must be int8, got {weight.dtype}")
        if weight.ndim != 2 or 0 in weight.shape:
            raise IBertOpError(f"{OP}: argument 'weight' must be a non-empty [N, K] matrix, got shape "
                               f"{list(weight.shape)}")
        if isinstance(bias, np.ndarray) and bias.shape != weight.shape[:1]:
            raise IBertOpError(f"{OP}: argument 'bias' must have shape [{weight.shape[0]}] (one per output channel), "
                               f"got {list(bias.shape)}")
        weight = relax.const(weight, "int8")
    args = [x, weight]
    if bias is not None:
        if isinstance(bias, np.ndarray):
            if bias.dtype != np.int32:
                raise IBertOpError(f"{OP}: argument 'bias' must be int32, got {bias.dtype}")
            bias = relax.const(bias, "int32")
        args.append(bias)
    return make_call(OP, args)


def reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Exact int64 result (the op's int32 output equals it whenever it fits, which `linear` checks)."""
    acc = x.astype(np.int64) @ weight.astype(np.int64).T
    return acc if bias is None else acc + bias.astype(np.int64)
