"""`ibert.int_layernorm`: I-BERT LayerNorm (spec §4; P-Alg.4, HF IntLayerNorm) on 22-bit (or int16) input.

Per row of C channels: mu = rne(sum / C); y = x - mu; var = sum floor(y / 2^shift)^2;
std = isqrt(var) 2^shift (Newton iteration to convergence, not HF's float sqrt); F = floor(2^31 / std);
out = floor(y F / 2) + bias_int, at scale (sqrt(C) / 2^30) gamma per channel (`quant.layernorm_constants`).

Output is int64: |y F / 2| stays below 2^31, but bias_int (beta / gamma) is unbounded in general. A row whose
shifted variance is 0 is normalised as if isqrt(var) were 1 (a constant row gives exactly bias_int; HF divides
by zero there). Input contract: |x| < 2^21 (the 22-bit QuantAct output) or int16, C < 2^18, so var < 2^63.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx as tir
from tvm.target import Target

from .intmath import as_pyint, i64, isqrt, per_channel, ref_isqrt_newton, widened
from .registry import (IBertOpError, as_expr, check_channel_vector, check_constant_range, dims, like, make_call,
                       register, tensor_type)

OP = "ibert.int_layernorm"
FACTOR_BITS = 31
MAX_SHIFT = 32
MAX_CHANNELS = (1 << 18) - 1
#: the input contract per dtype (int32: the 22-bit QuantAct output), checked where the input is a constant;
#: int16 holds any of its values
INPUT_RANGE = {"int32": (-(1 << 21), (1 << 21) - 1)}


def _infer(call: relax.Call) -> relax.TensorType:
    x = tensor_type(call, 0, "x", ["int16", "int32"], min_ndim=1)
    check_channel_vector(call, 1, "bias_int", dims(x)[-1] if dims(x) else None)
    shift = int(call.attrs["shift"])
    if not 0 <= shift <= MAX_SHIFT:
        raise IBertOpError(f"{OP}: attribute 'shift' must lie in [0, {MAX_SHIFT}], got {shift}")
    channels = dims(x)[-1] if dims(x) else None
    if isinstance(channels, tir.IntImm) and int(channels) > MAX_CHANNELS:
        raise IBertOpError(f"{OP}: {int(channels)} channels exceed the contract's C < 2^18 (the variance sum "
                           f"would pass 2^63)")
    check_constant_range(call, 0, "x", *INPUT_RANGE.get(str(x.dtype), (None, None)))
    return like(x, "int64")


def _compute(x: te.Tensor, bias: te.Tensor, shift: int) -> te.Tensor:
    rows, channels = list(x.shape[:-1]), x.shape[-1]
    n = i64(channels)
    k = te.reduce_axis((0, channels), name="k")
    total = te.compute(rows, lambda *r: te.sum(i64(x[(*r, k)]), axis=k), name="row_sum")

    def mean_of(*r):
        s = total[r]
        q = tir.floordiv(s, n)
        twice_rem = (s - q * n) * i64(2)
        up = tir.Or(twice_rem > n, tir.And(twice_rem == n, (q & i64(1)) == i64(1)))
        return q + tir.Select(up, i64(1), i64(0))

    mean = te.compute(rows, mean_of, name="row_mean")
    k2 = te.reduce_axis((0, channels), name="k2")

    # y = x - mu and y >> shift in int32 (|y| < 2^22 by the input contract), so that the square and y F are
    # int32 x int32 products: one widening multiply each where the CPU has no 64-bit vector multiply (AVX2,
    # NEON). The difference is taken in uint32: outside the contract it wraps, with no undefined overflow.
    def centered(*i):
        return (x[i].astype("uint32") - mean[i[:-1]].astype("uint32")).astype("int32")

    def shifted(*i):  # a shift of 31 gives what 32 gives for |y| < 2^31 (0 or -1); int32 >> 32 is undefined
        return widened(centered(*i) >> tir.const(min(shift, 31), "int32"))

    var = te.compute(rows, lambda *r: te.sum(shifted(*r, k2) * shifted(*r, k2), axis=k2), name="row_var")
    root = isqrt(var, "row_isqrt", staged=not _legalizing_for_cuda())
    factor = te.compute(rows, lambda *r: tir.floordiv(i64(1 << FACTOR_BITS), tir.max(root[r], i64(1)) << i64(shift)),
                        name="row_factor")

    def normalized(*i):
        # floor(y F / 2) = y (F >> 1) + (F odd ? y >> 1 : 0), with F >> 1 <= 2^30 an int32 (F <= 2^31)
        y, f = centered(*i), factor[i[:-1]]
        half = widened(y) * widened((f >> i64(1)).astype("int32"))
        return half + i64(tir.Select((f & i64(1)) == i64(1), y >> tir.const(1, "int32"), tir.const(0, "int32")))

    return te.compute(x.shape, lambda *i: normalized(*i) + per_channel(bias, i), name="int_layernorm")


def _legalizing_for_cuda() -> bool:
    """Whether a CUDA target is in scope: its schedule (dlight's GeneralReduction) inlines every per-row stage
    into the per-element one, so `isqrt` takes its Let form there (`schedules/cuda.py` refuses the stages)."""
    target = Target.current(allow_none=True)
    return target is not None and target.kind.name == "cuda"


register(OP, "Integer-only LayerNorm (I-BERT, integer Newton sqrt).", _infer, _compute, channel_args=(1,))


def int_layernorm(x: relax.Expr, bias_int: np.ndarray | int, shift: int = 0) -> relax.Call:
    """IntLayerNorm over the last axis, with `bias_int` from `quant.layernorm_constants` and HF's `shift`."""
    return make_call(OP, [x, as_expr(bias_int, OP, "bias_int")], shift=int(shift))


def reference(x: np.ndarray, bias_int: np.ndarray, shift: int = 0) -> np.ndarray:
    """Exact Python-integer IntLayerNorm with the paper's Newton isqrt loop."""
    xi = as_pyint(x)
    c = x.shape[-1]
    bias = np.broadcast_to(as_pyint(bias_int), (c,))
    out = np.empty(x.shape, dtype=np.int64)
    for idx in np.ndindex(*x.shape[:-1]):
        row = xi[idx]
        q, rem = divmod(int(sum(row)), c)
        mean = q + (1 if 2 * rem > c or (2 * rem == c and q % 2 == 1) else 0)
        y = [int(v) - mean for v in row]
        var = sum((v >> shift) ** 2 for v in y)
        std = max(ref_isqrt_newton(var)[0], 1) << shift
        factor = (1 << FACTOR_BITS) // std
        out[idx] = [(v * factor) // 2 + int(b) for v, b in zip(y, bias)]
    return out
