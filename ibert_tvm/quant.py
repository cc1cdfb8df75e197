"""Build-time constants of the I-BERT scheme, computed from real scales exactly as the reference does.

Every float the scheme needs becomes integers here, once, while compiling: weight/bias quantization,
dyadic requantization multipliers (`batch_frexp`), the i-GELU / i-exp polynomial constants in the input's
scale, the LayerNorm bias offset. The float arithmetic mirrors HuggingFace `quant_modules.py` operation by
operation (float32 where it uses float32 tensors, double where it uses double), so the integers match the
reference's (spec §6.3, "static constants"). Each function also checks the int64 bounds its operator relies
on and raises :class:`QuantizationRangeError` when a scale would overflow them.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

F32 = np.float32

# i-GELU (spec §2.2): truncated sqrt(2), the >>14 overflow guard, erf polynomial a(x+b)^2 + c with c/a.
GELU_K = 1.4142
GELU_SHIFT = 14
GELU_A, GELU_B = -0.2888, -1.769
GELU_C_OVER_A = 1.0 / -0.2888
# i-exp (spec §3.2): truncated -ln2, the shift bound 30, exp polynomial a x^2 + b x + c normalised by a.
EXP_X0 = -0.6931
EXP_CONST = 30
EXP_A = 0.35815147
EXP_B_OVER_A = 0.96963238 / 0.35815147
EXP_C_OVER_A = 1.0 / 0.35815147
SOFTMAX_OUT_BITS = 8
SOFTMAX_EXP_BITS = 16
# IntLayerNorm (spec §4.3): output scale sqrt(C) / 2^30.
LN_OUT_SHIFT = 30

INT64_SAFE = 1 << 62  # bound for values entering a wide (split) multiply


class QuantizationRangeError(ValueError):
    """A scale or range that the integer-only operators cannot represent within their int64 bounds."""


@contextmanager
def range_errors_of(where: str) -> Iterator[None]:
    """A QuantizationRangeError raised inside, prefixed with `where`: the module whose constants it refuses."""
    try:
        yield
    except QuantizationRangeError as err:
        raise QuantizationRangeError(f"{where}: {err}") from None


def _f32(x: np.ndarray | float) -> np.ndarray:
    return np.asarray(x, dtype=F32)


def check_scale(value: np.ndarray | float, name: str) -> None:
    """Refuse a scale (scalar or per-channel) that is not finite and > 0 in float32, as the functions below
    use it, naming the argument: a zero, negative, infinite or NaN scale gave silently wrong constants
    (all-zero probabilities, a positive i-GELU clip point) or failed deep inside `batch_frexp`."""
    with np.errstate(all="ignore"):
        v = _f32(value)
    bad = ~np.isfinite(v) | (v <= 0)
    if np.any(bad):
        got = float(v[bad].flat[0])
        rounded = np.ndim(value) == 0 and float(value) == float(value) and float(value) != got
        raise QuantizationRangeError(f"{name} must be a finite scale > 0, got {got}"
                                     + (f" (float32 of {float(value)})" if rounded else ""))


def check_bits(bits: int, name: str = "bits") -> None:
    """A symmetric quantization needs an integer bit width >= 2 (2^(bits-1) - 1 > 0 levels per side)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 2:
        raise QuantizationRangeError(f"{name} must be an integer >= 2, got {bits!r}")


def symmetric_scale(bits: int, lo: np.ndarray | float, hi: np.ndarray | float) -> np.ndarray:
    """Symmetric scale max(|lo|, |hi|).clamp(1e-8) / (2^(bits-1) - 1) in float32 (spec §1.1), elementwise."""
    check_bits(bits)
    if not (np.all(np.isfinite(_f32(lo))) and np.all(np.isfinite(_f32(hi)))):
        raise QuantizationRangeError(f"symmetric_scale: the range [{lo}, {hi}] is not finite")
    n = F32(2 ** (bits - 1) - 1)
    return np.maximum(np.maximum(np.abs(_f32(lo)), np.abs(_f32(hi))), F32(1e-8)) / n


def quantize_symmetric(x: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """Direct quantization `clamp(rne((1/S) * x), -n, n-1)` as HF's SymmetricQuantFunction (spec §1.2).

    `scale` broadcasts against `x` (per-channel weights: shape (N, 1)). The clamp is applied in float64, so a
    saturating 32-bit value lands on n-1 exactly (float32 cannot hold 2^31 - 2). Returns int64.
    """
    n = 2 ** (bits - 1) - 1
    q = np.round((F32(1.0) / _f32(scale)) * _f32(x)).astype(np.float64)
    return np.clip(q, -n, n - 1).astype(np.int64)


def _const_over(const: float, denom: np.ndarray) -> np.ndarray:
    """HF's `python_const / float32_tensor`: torch evaluates it as reciprocal(tensor) * const (two roundings)."""
    return (F32(1.0) / denom) * F32(const)


@dataclass(frozen=True)
class QuantizedLinear:
    """Per-output-channel int8 weights, int32 bias, and the accumulator's per-channel scale S_w * S_in."""

    weight: np.ndarray  # int8 [N, K]
    bias: np.ndarray | None  # int32 [N]
    weight_scale: np.ndarray  # float32 [N]
    acc_scale: np.ndarray  # float32 [N]


def quantize_linear(weight: np.ndarray, bias: np.ndarray | None, input_scale: float) -> QuantizedLinear:
    """HF QuantLinear (spec §1.3): 8-bit per-channel weights, 32-bit bias at scale S_w[c] * S_in."""
    check_scale(input_scale, "quantize_linear: input_scale")
    w = _f32(weight)
    s_w = symmetric_scale(8, w.min(axis=1), w.max(axis=1))
    w_int = quantize_symmetric(w, s_w.reshape(-1, 1), 8).astype(np.int8)
    acc_scale = s_w * F32(input_scale)
    b_int = None if bias is None else quantize_symmetric(_f32(bias), acc_scale, 32).astype(np.int32)
    return QuantizedLinear(w_int, b_int, s_w, acc_scale)


@dataclass(frozen=True)
class Dyadic:
    """r ~= multiplier / 2^shift, elementwise (int64 arrays of equal shape)."""

    multiplier: np.ndarray
    shift: np.ndarray


def batch_frexp(ratio: np.ndarray | float, max_bit: int = 31) -> Dyadic:
    """HF `batch_frexp` (spec §1.6 step 3): r = m 2^k, M = round_half_up(m 2^31) exactly, E = 31 - k."""
    r = np.asarray(ratio, dtype=np.float64)
    if not np.all(np.isfinite(r)):
        raise QuantizationRangeError(f"batch_frexp: the ratio {r[~np.isfinite(r)].flat[0]} is not finite")
    m, k = np.frexp(r)
    to_int = np.vectorize(
        lambda v: int(decimal.Decimal(float(v) * 2**max_bit).quantize(decimal.Decimal(1),
                                                                      rounding=decimal.ROUND_HALF_UP)),
        otypes=[np.int64])
    return Dyadic(to_int(m).reshape(r.shape), (max_bit - k).astype(np.int64).reshape(r.shape))


def requant_dyadic(in_scale: np.ndarray | float, out_scale: float) -> Dyadic:
    """(M, E) with M / 2^E ~= S_in / S_out, computed as double(S_in) / double(float32(S_out)) (HF-qm:L788).

    S_out must be a positive scale; S_in may be negative (i-GELU's output scale is)."""
    check_scale(out_scale, "requant_dyadic: out_scale")
    ratio = _f32(in_scale).astype(np.float64) / np.float64(F32(out_scale))
    if not np.all(np.isfinite(ratio)):
        raise QuantizationRangeError(f"requantization ratio S_in / S_out is not finite (S_out = {out_scale})")
    return batch_frexp(ratio)


@dataclass(frozen=True)
class GeluConstants:
    """i-GELU integers per channel (spec §2.3) and the (negative, per-channel) output scale."""

    b_int: np.ndarray
    c_int: np.ndarray
    q1: np.ndarray
    out_scale: np.ndarray


#: a per-channel scale below this is taken for one of a channel whose weights all quantize to 0: HF's weight scale
#: is then 1e-8 / 127 (its clamp), times an activation scale that is rarely below 1e-3
PRUNED_SCALE_BELOW = 1e-10


def gelu_constants(in_scale: np.ndarray | float) -> GeluConstants:
    """i-GELU constants for an int32 input (a linear's accumulator) with (per-channel) float32 scale S."""
    check_scale(in_scale, "gelu_constants: in_scale")
    s = np.atleast_1d(_f32(in_scale))
    s_erf = s / F32(GELU_K)
    s_erf_sq = s_erf * s_erf
    b_int = np.floor(_const_over(GELU_B, s_erf))
    c_int = np.floor(_const_over(GELU_C_OVER_A, s_erf_sq))
    s_l = s_erf_sq * F32(GELU_A) * F32(2**GELU_SHIFT)
    q1 = np.floor_divide(F32(1.0), s_l)
    out_scale = s * s_l / F32(2)
    for name, v in (("b_int", b_int), ("c_int", c_int), ("q1", q1)):
        bad = ~np.isfinite(v) | (np.abs(v.astype(np.float64)) >= 2.0**62)
        if np.any(bad):
            ch = int(np.flatnonzero(bad)[0])
            hint = (" (the scale of a channel whose weights all quantize to 0, e.g. a pruned one, is 1e-8 / 127 "
                    "times the input's)" if s[ch] < PRUNED_SCALE_BELOW else "")
            raise QuantizationRangeError(
                f"i-GELU: input scale {s[ch]:.3e} of channel {ch} is too small: {name} overflows int64{hint}")
    b, c, q = (v.astype(np.int64) for v in (b_int, c_int, q1))
    if problem := gelu_integer_problem(b, c, q):
        raise QuantizationRangeError(f"i-GELU: input scale {s.min():.3e} is too small for int64 intermediates "
                                     f"({problem})")
    return GeluConstants(b, c, q, out_scale)


def _channels(*values: np.ndarray | int) -> zip:
    """Scalar or per-channel integer parameters as Python ints (unbounded), broadcast channel by channel."""
    return zip(*np.broadcast_arrays(*(np.atleast_1d(np.asarray(v)).astype(object) for v in values)))


def gelu_integer_problem(b_int: np.ndarray | int, c_int: np.ndarray | int, q1: np.ndarray | int) -> str | None:
    """Why i-GELU integers (scalars or per channel) are unusable for int32 inputs (|q| <= 2^31), or None: the
    bounds that `gelu_constants` guarantees and `ibert.int_gelu`'s type rule checks. b <= 0 (the clip point
    -b of min(|q|, -b); the kernel's clamp(q, b, -b) is another function for b > 0); t^2 + c within int64 for
    t in [b, 0]; |out| <= 2^31 (ceil(max|t^2 + c| / 2^14) + |q1|) < 2^62 (the wide requantization's input
    bound; y = floor(sgn (t^2 + c) / 2^14) is at most that ceiling in magnitude)."""
    worst = 0
    for b, c, q in _channels(b_int, c_int, q1):
        if b > 0:
            return f"b_int {b} is positive (-b is the clip point of min(|q|, -b))"
        if b * b >= 1 << 63 or not -(1 << 63) < c < (1 << 63) - b * b:
            return f"t^2 + c_int overflows int64 for b_int {b}, c_int {c}"
        worst = max(worst, (1 << 31) * (-(-max(b * b + c, -c) >> GELU_SHIFT) + abs(q)))
    return f"|out| could reach {worst}, not below 2^62" if worst >= INT64_SAFE else None


@dataclass(frozen=True)
class SoftmaxConstants:
    """i-exp integers (spec §3.3) and the fused 16-bit requantization of exp, (M', E') ~= 1 / S16."""

    x0_int: int
    b_int: int
    c_int: int
    exp_multiplier: int
    exp_shift: int


def softmax_exp_range(in_scale: float) -> float:
    """The value of i-exp at the row max, c' * 2^30: what the reference's QuantAct(16) calibrates to."""
    check_scale(in_scale, "softmax_exp_range: in_scale")
    s = F32(in_scale)
    return float(np.floor(_const_over(EXP_C_OVER_A, s * s))) * 2.0**EXP_CONST


def softmax_constants(in_scale: float, exp_scale: float) -> SoftmaxConstants:
    """Constants for IntSoftmax on scores with scalar float32 scale S.

    `exp_scale` is the scale S16 of the reference's internal QuantAct(16), which HF calibrates on the
    *integer* exp values (spec §3.3 step 6); the fused form requantizes `p 2^(30-z)` by 1/S16 directly.
    """
    check_scale(in_scale, "softmax_constants: in_scale")
    check_scale(exp_scale, "softmax_constants: exp_scale")
    s = F32(in_scale)
    x0_int = np.floor(_const_over(EXP_X0, s))
    b_int = np.floor(_const_over(EXP_B_OVER_A, s))
    c_int = np.floor(_const_over(EXP_C_OVER_A, s * s))
    if not all(np.isfinite(v) and abs(float(v)) < 2.0**62 for v in (x0_int, b_int, c_int)) or x0_int >= 0:
        raise QuantizationRangeError(f"IntSoftmax: input scale {float(s):.3e} is out of range")
    d = batch_frexp(1.0 / np.float64(F32(exp_scale)))
    x0, b, c = int(x0_int), int(b_int), int(c_int)
    m, e = int(d.multiplier), int(d.shift)
    if problem := softmax_integer_problem(x0, b, c, m, e):
        raise QuantizationRangeError(f"IntSoftmax: input scale {float(s):.3e} with exp requantization scale "
                                     f"{float(exp_scale):.3e} is out of range: {problem}")
    return SoftmaxConstants(x0, b, c, m, e)


def softmax_integer_problem(x0_int: int, b_int: int, c_int: int, exp_multiplier: int, exp_shift: int
                            ) -> str | None:
    """Why IntSoftmax integers are unusable, or None: the bounds that `softmax_constants` guarantees and
    `ibert.int_softmax`'s type rule checks. x0 < 0 <= b, c (floors of -ln2 / S and of positive polynomial
    coefficients); 0 < M <= 2^31 (`batch_frexp`'s mantissa of 1 / S16 > 0; the wide product takes |M| <= 2^31);
    E in [30, 93]; 30 |x0|, the polynomial's bound |x0| (|x0| + b) + c and its rescale below 2^62."""
    x0, b, c, m, e = (int(v) for v in (x0_int, b_int, c_int, exp_multiplier, exp_shift))
    if x0 >= 0:
        return f"x0_int {x0} must be negative (floor(-ln2 / S))"
    if b < 0 or c < 0:
        return f"b_int {b} and c_int {c} must be >= 0 (i-exp's coefficients at a positive scale)"
    if not 0 < m <= 1 << 31:
        return f"exp_multiplier {m} must lie in [1, 2^31] (a batch_frexp mantissa of 1 / S16)"
    if not EXP_CONST <= e <= 93:
        return f"exp_shift {e} is not in [30, 93]"
    p_max = abs(x0) * (abs(x0) + b) + c
    if max(abs(x0) * EXP_CONST, p_max, (p_max * m) >> (e - EXP_CONST)) >= INT64_SAFE:
        return f"int64 intermediates pass 2^62 (polynomial bound {p_max})"
    return None


@dataclass(frozen=True)
class LayerNormConstants:
    """IntLayerNorm's per-channel integer bias offset and per-channel output scale (spec §4.3 step 6)."""

    bias_int: np.ndarray
    out_scale: np.ndarray


def layernorm_constants(weight: np.ndarray, bias: np.ndarray) -> LayerNormConstants:
    """gamma is folded into the output scale, beta into `floor((beta/gamma) / (sqrt(C)/2^30))`."""
    gamma, beta = _f32(weight), _f32(bias)
    for name, v in (("weight (gamma)", gamma), ("bias (beta)", beta)):
        if not np.all(np.isfinite(v)):
            raise QuantizationRangeError(f"IntLayerNorm: LayerNorm {name} has a non-finite channel "
                                         f"{int(np.flatnonzero(~np.isfinite(v))[0])}: {v[~np.isfinite(v)].flat[0]}")
    if np.any(gamma == 0):
        raise QuantizationRangeError("IntLayerNorm: LayerNorm weight (gamma) has zero channels; "
                                     "the integer scheme folds gamma into the output scale and cannot represent 0")
    scale = np.sqrt(F32(gamma.shape[-1])) / F32(2**LN_OUT_SHIFT)
    bias_int = np.floor((beta / gamma) / scale)
    if not np.all(np.isfinite(bias_int)) or np.any(np.abs(bias_int.astype(np.float64)) >= 2.0**61):
        raise QuantizationRangeError("IntLayerNorm: beta / gamma is too large for an int64 bias offset")
    return LayerNormConstants(bias_int.astype(np.int64), scale * gamma)


TANH_OUT_SCALE = F32(1.0 / 127)  # tanh lies in (-1, 1): int8 at scale 1/127


def lookup_table(fn, in_scale: float, out_scale: float) -> np.ndarray:
    """The int8 -> int8 table of an elementwise `fn`: table[q + 128] = clamp(rne(fn(q S_in) / S_out))."""
    check_scale(in_scale, "lookup_table: in_scale")
    check_scale(out_scale, "lookup_table: out_scale")
    q = np.arange(-128, 128, dtype=np.float64)
    y = np.round(fn(q * float(F32(in_scale))) / float(F32(out_scale)))
    return np.clip(y, -128, 127).astype(np.int8)
