"""`ibert.requantize`: dyadic rescale `clamp(rne(x M / 2^E) [+ rne(y M1 / 2^E1)])` (HF QuantAct/FixedPointMul).

Round half to even, like HF's `torch.round`; each term is rounded on its own, then added, then clamped to
[-2^(bits-1), 2^(bits-1) - 1] (spec §1.6). `M`, `E` are per-tensor (int64 scalars) or per-channel (int64
vectors over the last axis). Output: int8 for bits=8, int16 for 16, int32 for 22 (the LayerNorm input) and 32.

Exactness: int8/16/32 inputs use one int64 product (|x M| <= 2^62); int64 inputs (i-GELU and LayerNorm
outputs, up to 2^62) use the split product of `intmath.mul_rne_shift_wide`, so no 128-bit type is needed.
Where known constants show that every channel saturates for |x| >= X and X |M| < 2^62 (attribute
`input_clamp` = X), an int64 input is clamped to [-X, X] first and takes the one-product path: the same
result (rounding is monotonic, so a saturated output stays saturated), a fraction of the work.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te

from .intmath import (INT32_MAX, add_for_clamp, as_pyint, clamp, i64, mul_rne_shift_wide, per_channel,
                      ref_rne_div_pow2, rne_shift, rne_shift_capped)
from .registry import (IBertOpError, as_expr, attrs_of, check_channel_vector, constant_values, dims, known_dtype, like,
                       make_call, register, same_dim, tensor_type)

OP = "ibert.requantize"
OUT_DTYPE = {8: "int8", 16: "int16", 22: "int32", 32: "int32"}
NARROW_INPUTS = ["int8", "int16", "int32"]
# Shift ranges the two product paths are exact for (beyond the upper end the result is 0 and is folded so).
# The builder folds at 62 only for an input known to be narrow; the narrow path also takes shifts up to 93
# (`rne_shift_capped`), so an input whose dtype is not known when the call is built is still exact.
NARROW_MAX_SHIFT = 62
WIDE_MAX_SHIFT = 93


def _check_bits(bits: object) -> int:
    """`bits` as an int, refused (naming it) unless it is one of OUT_DTYPE's integers: 8.5 was truncated to 8,
    -1 failed as a raw 'negative shift count' (found by a fuzz)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or int(bits) not in OUT_DTYPE:
        raise IBertOpError(f"{OP}: 'bits' must be one of {sorted(OUT_DTYPE)}, got {bits!r}")
    return int(bits)


def _infer(call: relax.Call) -> relax.TensorType:
    bits = _check_bits(attrs_of(call)["bits"])
    x = tensor_type(call, 0, "x", NARROW_INPUTS + ["int64"], min_ndim=1)
    channels = dims(x)[-1] if dims(x) else None
    check_channel_vector(call, 1, "multiplier", channels)
    check_channel_vector(call, 2, "shift", channels)
    _check_shift_range(call)
    _check_input_clamp(call, x.dtype)
    if len(call.args) == 6:
        y = tensor_type(call, 3, "residual", NARROW_INPUTS, ndim=x.ndim)
        for i, (dx, dy) in enumerate(zip(dims(x), dims(y))):
            if not same_dim(dx, dy):
                raise IBertOpError(f"{OP}: 'residual' dim {i} is {dy} but 'x' has {dx}")
        check_channel_vector(call, 4, "residual_multiplier", channels)
        check_channel_vector(call, 5, "residual_shift", channels)
    elif len(call.args) != 3:
        raise IBertOpError(f"{OP}: expects 3 arguments, or 6 with a residual, got {len(call.args)}")
    return like(x, OUT_DTYPE[bits])


def _check_shift_range(call: relax.Call) -> None:
    """The optional `shift_min`/`shift_max` attributes must hold the shift's values (a constant is checked):
    the wide product builds only the cases they admit."""
    if "shift_min" not in call.attrs:
        return
    lo, hi = int(call.attrs["shift_min"]), int(call.attrs["shift_max"])
    values = constant_values(call, 2)
    if not 0 <= lo <= hi <= WIDE_MAX_SHIFT or (values is not None and (values.min() < lo or values.max() > hi)):
        raise IBertOpError(f"{OP}: shift range [{lo}, {hi}] does not hold the shift's values"
                           + (f" [{values.min()}, {values.max()}]" if values is not None else ""))


def saturation_clamp(multiplier: np.ndarray, shift: np.ndarray, bits: int) -> int | None:
    """X such that every channel's output saturates (to `bits`) for all |x| >= X, i.e. |x M| / 2^E >=
    2^(bits-1) + 1/2 (channels with M = 0 give 0 anyway), when X |M| < 2^62, so that x clamped to [-X, X]
    takes one int64 product; None where it would not."""
    m, e = np.broadcast_arrays(as_pyint(np.abs(np.asarray(multiplier))), as_pyint(np.asarray(shift)))
    pairs = [(mi, ei) for mi, ei in zip(m.ravel(), e.ravel()) if mi != 0]
    x = max((-(-(((1 << bits) + 1) << ei) // (2 * mi)) for mi, ei in pairs), default=0)
    return x if x * max((mi for mi, _ in pairs), default=0) < 1 << 62 else None


def _check_input_clamp(call: relax.Call, dtype: str) -> None:
    """`input_clamp` is for an int64 input without residual, and must be a saturation clamp of constant (M, E)."""
    x = int(call.attrs.get("input_clamp", 0))
    if not x:
        return
    if dtype != "int64" or len(call.args) != 3:
        raise IBertOpError(f"{OP}: input_clamp applies to an int64 input without residual")
    m, e = call.args[1], call.args[2]
    if all(isinstance(a, tvm.ir.GenericConst) for a in (m, e)):
        needed = saturation_clamp(m.value.numpy(), e.value.numpy(), int(call.attrs["bits"]))
        if needed is None or x < needed or x * int(np.abs(m.value.numpy()).max()) >= 1 << 62:
            raise IBertOpError(f"{OP}: input_clamp {x} is not a saturation point of the multipliers and shifts "
                               f"with |x M| < 2^62 (needed: {needed})")


def _compute(x: te.Tensor, m: te.Tensor, e: te.Tensor, *residual: te.Tensor, bits: int, shift_min: int = 0,
             shift_max: int = WIDE_MAX_SHIFT, input_clamp: int = 0) -> te.Tensor:
    wide = x.dtype == "int64" and not input_clamp
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    # Where the two rounded terms cannot pass 2^63 together, their plain sum is exact before the clamp.
    plain_sum = bool(residual) and not wide and \
        _term_bound(str(x.dtype), shift_min) + _term_bound(str(residual[0].dtype), 0) < 1 << 63

    def body(*i):
        mi, ei = per_channel(m, i), per_channel(e, i)
        if wide:
            v = mul_rne_shift_wide(x[i], mi, ei, shift_min, shift_max)
        elif input_clamp:  # shifts were folded for the wide product (up to 93)
            clamped = clamp(x[i], -input_clamp, input_clamp)
            if input_clamp <= INT32_MAX:  # int32 x int32 where M fits int32 too (see `registry`)
                clamped = i64(clamped.astype("int32"))
            v = rne_shift_capped(clamped * mi, ei, shift_max)
        else:  # |x M| <= 2^62; shifts past 62 (attribute shift_max) give 0
            v = rne_shift_capped(i64(x[i]) * mi, ei, shift_max)
        if residual:
            y, m1, e1 = residual
            w = rne_shift(i64(y[i]) * per_channel(m1, i), per_channel(e1, i))
            v = v + w if plain_sum else add_for_clamp(v, w)
        return clamp(v, lo, hi).astype(OUT_DTYPE[bits])

    return te.compute(x.shape, body, name="requantize")


def _term_bound(dtype: str, shift_min: int) -> int:
    """A bound of |rne(x M / 2^E)| for x of a narrow `dtype`, |M| <= 2^31 and E >= shift_min: |x| <= 2^(b-1)
    makes |x M| / 2^E <= 2^(b+30-E), a power of two that rounding cannot pass (or at most 1)."""
    return 1 << max(int(dtype[3:]) + 30 - shift_min, 0)


register(OP, "Dyadic requantization with round-half-even, optional rescaled residual, clamp.", _infer, _compute,
         channel_args=(1, 2, 4, 5))


def requantize_dtype(bits: int) -> str:
    """The integer dtype that holds a `bits`-wide requantized value."""
    return OUT_DTYPE[_check_bits(bits)]


def _dyadic(m: np.ndarray | int | relax.Expr, e: np.ndarray | int | relax.Expr, max_shift: int, arg: str
            ) -> tuple[np.ndarray | relax.Expr, np.ndarray | relax.Expr]:
    """Check (M, E) and fold shifts past `max_shift` (the exact range of the input's product) to (0, 0):
    their product rounds to 0 anyway.

    Relax expressions (run-time parameters) pass unchecked: their values must already satisfy the bounds.
    """
    if isinstance(m, relax.Expr) or isinstance(e, relax.Expr):
        return m, e
    m, e = _python_ints(m, f"'{arg}' multiplier"), _python_ints(e, f"'{arg}' shift")
    if m.shape != e.shape:
        raise IBertOpError(f"{OP}: '{arg}' multiplier shape {m.shape} differs from its shift shape {e.shape}")
    if m.size == 0:  # `requantize`'s int(e.min()) raised numpy's "zero-size array to reduction operation"
        raise IBertOpError(f"{OP}: '{arg}' multiplier and shift are empty: give one per tensor (scalars) or one per "
                           "channel")
    if any(abs(v) > 1 << 31 for v in m.flat):
        raise IBertOpError(f"{OP}: '{arg}' multiplier must satisfy |M| <= 2^31 (a batch_frexp mantissa)")
    if any(v < 0 for v in e.flat):
        raise IBertOpError(f"{OP}: '{arg}' shift must be >= 0 (scale ratio below 2^31), got {min(e.flat)}")
    beyond = (e > max_shift).astype(bool)
    return np.where(beyond, 0, m).astype(np.int64), np.where(beyond, 0, e).astype(np.int64)


def _python_ints(value: np.ndarray | int, what: str) -> np.ndarray:
    """`value` as an object array of Python ints, refused unless it holds integers (bools and floats are not),
    so bounds are checked before any int64 conversion (2^63 raised numpy's OverflowError there)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuO" or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                               for v in arr.flat):
        raise IBertOpError(f"{OP}: {what} must be integers, got {value!r}")
    return arr.astype(object)


def _per_tensor_if_uniform(m: np.ndarray | relax.Expr, e: np.ndarray | relax.Expr
                           ) -> tuple[np.ndarray | relax.Expr, np.ndarray | relax.Expr]:
    """Per-channel (M, E) vectors that hold one pair become that pair: a per-tensor constant, which the
    kernel takes as an immediate (`registry`), e.g. LayerNorm's output requantization."""
    if isinstance(m, np.ndarray) and m.ndim == 1 and m.size and np.all(m == m[0]) and np.all(e == e[0]):
        return m[0], e[0]
    return m, e


def requantize(x: relax.Expr, multiplier: np.ndarray | int, shift: np.ndarray | int, bits: int = 8,
               residual: relax.Expr | None = None, residual_multiplier: np.ndarray | int | None = None,
               residual_shift: np.ndarray | int | None = None) -> relax.Call:
    """clamp(rne(x M / 2^E) + rne(residual M1 / 2^E1)) into `bits` (8, 16, 22 or 32).

    `multiplier`/`shift` come from `quant.requant_dyadic` (scalars, or per-channel vectors).
    """
    bits = _check_bits(bits)
    dtype = known_dtype(x)
    wide = dtype == "int64"
    # Only an input known to be narrow folds at 62: folding a wide one there zeroed i-GELU's usual shifts (~66)
    # when its call was nested unemitted, its dtype then unknown (found by a fuzz).
    max_shift = NARROW_MAX_SHIFT if dtype in NARROW_INPUTS else WIDE_MAX_SHIFT
    m, e = _per_tensor_if_uniform(*_dyadic(multiplier, shift, max_shift, "x"))
    args = [x, as_expr(m, OP, "multiplier"), as_expr(e, OP, "shift")]
    # Known shifts bound the wide product's cases (`intmath.mul_rne_shift_wide`); run-time ones may be any.
    attrs = {} if isinstance(e, relax.Expr) else {"shift_min": int(e.min()), "shift_max": int(e.max())}
    saturation = saturation_clamp(m, e, bits) if wide and residual is None and not isinstance(e, relax.Expr) else None
    if saturation:
        attrs["input_clamp"] = saturation
    if residual is not None:
        if residual_multiplier is None or residual_shift is None:
            raise IBertOpError(f"{OP}: a residual needs residual_multiplier and residual_shift")
        m1, e1 = _per_tensor_if_uniform(*_dyadic(residual_multiplier, residual_shift, NARROW_MAX_SHIFT, "residual"))
        args += [residual, as_expr(m1, OP, "residual_multiplier"), as_expr(e1, OP, "residual_shift")]
    return make_call(OP, args, bits=int(bits), **attrs)


def reference(x: np.ndarray, multiplier: np.ndarray | int, shift: np.ndarray | int, bits: int = 8,
              residual: np.ndarray | None = None, residual_multiplier: np.ndarray | int | None = None,
              residual_shift: np.ndarray | int | None = None) -> np.ndarray:
    """Exact Python-integer definition, with HF's clamp; returns int64."""
    out = ref_rne_div_pow2(x.astype(object) * np.asarray(multiplier, dtype=object), shift)
    if residual is not None:
        out = out + ref_rne_div_pow2(residual.astype(object) * np.asarray(residual_multiplier, dtype=object),
                                     residual_shift)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return np.clip(out, lo, hi).astype(np.int64)
