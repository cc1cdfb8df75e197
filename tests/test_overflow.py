"""Each `ibert.*` operator driven to its widest intermediate, compared with its exact reference.

linear / matmul at the largest reduction length the int32 accumulator allows; requantize at |x M| = 2^62
(narrow) and |x| ~ 2^62 over every shift (wide); i-GELU at the smallest scale `quant.gelu_constants`
accepts; IntSoftmax at the scale and shift limits of `quant.softmax_constants` with scores spanning int32;
IntLayerNorm with C = 4096 (and the contract's largest C) at the 22-bit ends; embedding at ids 0 and V-1.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from tvm import relax

from ibert_tvm import ops, quant
from ibert_tvm.ops import IBertOpError
from ibert_tvm.ops.registry import make_call

from op_harness import (EMBEDDING, GELU, I32_MAX, I32_MIN, LAYERNORM, LINEAR, LN_MAX, LN_MIN, MATMUL, REQUANT, SOFTMAX,
                        assert_exact, boundary_scale, compile_vm, describe_mismatch, run_static, sym, tvar)

K_LINEAR_MAX = I32_MAX // (128 * 128)  # 131071: K * 2^14 <= 2^31 - 1
K_PV_MAX = I32_MAX // (256 * 128)  # 65535: softmax probabilities (<= 256) x int8




def _accepts(fn):
    def ok(s) -> bool:
        try:
            with np.errstate(all="ignore"):
                fn(s)
            return True
        except quant.QuantizationRangeError:
            return False

    return ok


def softmax_consts(s, exp_scale=None) -> dict:
    s = np.float32(s)
    with np.errstate(all="ignore"):
        if exp_scale is None:  # HF's calibration: the row max maps to 32767
            exp_scale = quant.symmetric_scale(16, 0, quant.softmax_exp_range(s))
        c = quant.softmax_constants(s, exp_scale)
    return dict(x0_int=c.x0_int, b_int=c.b_int, c_int=c.c_int, exp_multiplier=c.exp_multiplier,
                exp_shift=c.exp_shift)


GELU_MIN_SCALE = boundary_scale(_accepts(lambda s: quant.gelu_constants(np.float32(s))), 1e-12, 1e-1)
SOFTMAX_MIN_SCALE = boundary_scale(_accepts(softmax_consts), 1e-12, 1e-1)
SOFTMAX_MAX_SCALE = boundary_scale(_accepts(softmax_consts), 1e-1, 10.0)


# ============================================================================== linear / matmul


def test_linear_max_k_all_minus_128():
    """K = 131071, the largest K with K 2^14 + |bias| < 2^31; -128 x -128 everywhere, bias 16383."""
    k = K_LINEAR_MAX
    x = np.full((2, k), -128, np.int8)
    x[1, ::2] = 127
    w = np.full((3, k), -128, np.int8)
    w[1] = 127
    w[2, 1::2] = 127
    b = np.array([16383, -16383, 0], np.int32)  # max |bias| the builder accepts at this K
    out = run_static(lambda xv: ops.linear(xv, w, b), {"x": x})
    ref = LINEAR.reference(x, w, b)
    assert ref[0, 0] == I32_MAX  # the accumulator's exact top: k 2^14 + 16383 = 2^31 - 1
    assert_exact(out, ref, "int32", "linear max K")


@pytest.mark.parametrize("k,bias", [
    (K_LINEAR_MAX + 1, None),
    (K_LINEAR_MAX, [16384]),
    (K_LINEAR_MAX, [-16384, 0]),
    (K_LINEAR_MAX - 1, [32768]),
    (1, [I32_MAX]),
])
def test_linear_rejects_accumulator_overflow(k, bias):
    w = np.full((len(bias) if bias else 1, k), -128, np.int8)
    b = None if bias is None else np.array(bias, np.int32)
    x = tvar("x", (2, k), "int8")
    with pytest.raises(quant.QuantizationRangeError, match="output channel 0 can overflow"):
        ops.linear(x, w, b)


def test_linear_bounds_each_channel_by_its_own_weights():
    """A pruned channel (zero weights) holds a bias as large as int32 does (HF's quantization saturates it there),
    beside a channel at the full bound, exactly; one more on the full channel is refused, naming it."""
    k = K_LINEAR_MAX
    x = np.full((2, k), -128, np.int8)
    x[1, ::2] = 127
    w = np.full((2, k), -128, np.int8)
    w[0] = 0
    b = np.array([I32_MAX, 16383], np.int32)
    out = run_static(lambda xv: ops.linear(xv, w, b), {"x": x})
    ref = LINEAR.reference(x, w, b)
    assert ref[0, 0] == ref[0, 1] == I32_MAX
    assert_exact(out, ref, "int32", "linear, a pruned channel beside a full one")
    with pytest.raises(quant.QuantizationRangeError, match="output channel 1 can overflow"):
        ops.linear(tvar("x", (2, k), "int8"), w, np.array([I32_MAX, 16384], np.int32))


def test_linear_accepts_accumulator_limit():
    """Channels exactly at the bound 128 sum|w| + |bias| = 2^31 - 1 are taken (one more is refused above)."""
    w = np.full((2, K_LINEAR_MAX), -128, np.int8)
    call = ops.linear(tvar("x", (2, K_LINEAR_MAX), "int8"), w, np.array([16383, -16383], np.int32))
    assert call.op.name == "ibert.linear"
    call = ops.linear(tvar("x", (2, 1), "int8"), np.full((1, 1), 127, np.int8),
                      np.array([I32_MAX - 128 * 127], np.int32))
    assert call.op.name == "ibert.linear"
    call = ops.linear(tvar("x", (2, K_LINEAR_MAX - 1), "int8"), np.full((1, K_LINEAR_MAX - 1), -128, np.int8),
                      np.array([-32767], np.int32))
    assert call.op.name == "ibert.linear"


@pytest.mark.parametrize("as_const", ["weight", "bias", "both"])
def test_linear_bounds_relax_constant_weight_and_bias(as_const):
    """Weights and bias given as Relax constants are bounded per channel as numpy ones are (the type rule checks
    them): K = 131072 of -128 wrapped to -2^31 + 2^14, and a bias of 2^31 - 1 beside |x w| = 2^14 wrapped."""
    cases = [(np.full((1, K_LINEAR_MAX + 1), -128, np.int8), None),
             (np.full((1, 1), -128, np.int8), np.array([I32_MAX], np.int32))]
    for w, b in cases:
        weight = relax.const(w, "int8") if as_const in ("weight", "both") else w
        bias = relax.const(b, "int32") if b is not None and as_const in ("bias", "both") else b
        with pytest.raises(quant.QuantizationRangeError, match="output channel 0 can overflow"):
            ops.linear(tvar("x", (2, w.shape[1]), "int8"), weight, bias)


def test_linear_bounds_run_time_weight_with_constant_bias():
    """A run-time weight with a constant bias: K 128^2 + max |bias| <= 2^31 - 1 (the bias was ignored)."""
    k = K_LINEAR_MAX
    w = tvar("w", (2, k), "int8")
    ops.linear(tvar("x", (2, k), "int8"), w, np.array([-16383, 5], np.int32))
    for bias in (np.array([0, -16384], np.int32), relax.const(np.array([16384, 0], np.int32), "int32")):
        with pytest.raises(IBertOpError, match=r"reduction length 131071 .* \(131071 x 128 x 128 \+ 16384 > 2"):
            ops.linear(tvar("x", (2, k), "int8"), w, bias)


@pytest.mark.parametrize("weight, bias, message", [
    (np.zeros(4, np.int8), None, r"'weight' must be a non-empty \[N, K\] matrix, got shape \[4\]"),
    (np.zeros((0, 4), np.int8), None, "got shape \\[0, 4\\]"),
    (np.zeros((2, 4), np.int8), np.zeros(3, np.int32), r"'bias' must have shape \[2\].*got \[3\]"),
])
def test_linear_names_a_malformed_constant_weight_or_bias(weight, bias, message):
    with pytest.raises(IBertOpError, match=message):
        ops.linear(tvar("x", (2, 4), "int8"), weight, bias)


def test_matmul_probabilities_256_by_minus_128_max_k():
    """P V with int16 probabilities: K = 65535, 256 x -128 = -2^15 per term, sum -2^31 + 2^15."""
    k = K_PV_MAX
    a = np.full((1, 2, 2, k), 256, np.int16)
    a[0, 1, 1, 1::2] = 0
    b = np.full((1, 2, k, 3), -128, np.int8)
    b[..., 1] = 127
    b[0, 1, ::3, 2] = 127
    out = run_static(lambda av, bv: ops.matmul(av, bv), {"a": a, "b": b})
    ref = MATMUL.reference(a, b)
    assert ref[0, 0, 0, 0] == -k * 256 * 128
    assert_exact(out, ref, "int32", "P V max K")


def test_matmul_int8_minus_128_squared_max_k_transposed():
    """Q K^T with int8 keys (transpose_b): K = 131071, -128 x -128 everywhere -> 2^31 - 2^14."""
    k = K_LINEAR_MAX
    a = np.full((2, 1, k), -128, np.int8)
    b = np.full((2, 2, k), -128, np.int8)
    b[1, 1] = 127
    out = run_static(lambda av, bv: ops.matmul(av, bv, transpose_b=True), {"a": a, "b": b})
    ref = MATMUL.reference(a, b, True)
    assert ref[0, 0, 0] == k * 128 * 128
    assert_exact(out, ref, "int32", "Q K^T max K")


@pytest.mark.parametrize("a_dtype,k_max", [("int16", K_PV_MAX), ("int8", K_LINEAR_MAX)])
def test_matmul_type_rule_bounds_k(a_dtype, k_max):
    ok = ops.matmul(tvar("a", (1, 2, k_max), a_dtype), tvar("b", (1, k_max, 3), "int8"))
    assert ok.op.name == "ibert.matmul"
    with pytest.raises(IBertOpError, match="overflow"):
        ops.matmul(tvar("a", (1, 2, k_max + 1), a_dtype), tvar("b", (1, k_max + 1, 3), "int8"))


def test_linear_type_rule_bounds_k_of_a_run_time_weight():
    """A run-time weight had no K bound: K = 131073, all -128, wrapped to -2147467264 (exact 2147500032; found by a
    fuzz). The type rule now bounds K as matmul's does (the same helper), whichever operand's K is static; a
    constant weight keeps the builder's finer per-channel bound (small weights at a larger K)."""
    k, (n, kv) = K_LINEAR_MAX, sym("n", "k")
    assert ops.linear(tvar("x", (2, k), "int8"), tvar("w", (3, k), "int8")).op.name == LINEAR.OP
    for x_shape, w_shape in [((2, k + 1), (3, k + 1)), ((n, kv), (3, k + 1)), ((n, k + 2), (3, kv))]:
        with pytest.raises(IBertOpError, match=rf"ibert.linear: reduction length ({k + 1}|{k + 2}) can overflow"):
            ops.linear(tvar("x", x_shape, "int8"), tvar("w", w_shape, "int8"), tvar("b", (3,), "int32"))
    small = np.ones((1, 2 * k), np.int8)  # 128 x 2k < 2^31
    assert ops.linear(tvar("x", (2, 2 * k), "int8"), small).op.name == LINEAR.OP


# ============================================================================== requantize

OUT_DTYPE = {8: "int8", 16: "int16", 22: "int32", 32: "int32"}
NARROW_X = np.array([I32_MIN, I32_MAX, I32_MIN + 1, -1, 0, 1], np.int64)
NARROW_E = [0, 1, 31, 62, 63, 100]
NARROW_M = [1 << 31, -(1 << 31)]


@pytest.mark.parametrize("bits", [8, 16, 22, 32])
def test_requantize_narrow_x_times_m_at_2_62(bits):
    """x = -2^31 with M = +-2^31: |x M| = 2^62, E in {0, 1, 31, 62, 63, 100} (63 and 100 fold to 0)."""
    cols = [(m, e) for m in NARROW_M for e in NARROW_E]
    m = np.array([c[0] for c in cols], np.int64)
    e = np.array([c[1] for c in cols], np.int64)
    x = np.repeat(NARROW_X[:, None], len(cols), axis=1).astype(np.int32)
    out = run_static(lambda xv: ops.requantize(xv, m, e, bits), {"x": x})
    ref = REQUANT.reference(x, m, e, bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    want_row0 = [max(lo, min(hi, v)) for v in
                 [-(1 << 62), -(1 << 61), -(1 << 31), -1, 0, 0, 1 << 62, 1 << 61, 1 << 31, 1, 0, 0]]
    assert ref[0].tolist() == want_row0  # -2^62 / 2^63 = -0.5 rounds to even 0
    assert_exact(out, ref, OUT_DTYPE[bits], f"requantize narrow bits={bits}",
                 labels=lambda i: f"x={int(x[i])}, M={int(m[i[1]])}, E={int(e[i[1]])}")


@pytest.mark.parametrize("bits", [8, 32])
def test_requantize_residual_two_terms_at_2_62(bits):
    """x = y = -2^31 with M = M1 = +-2^31: each rounded term is +-2^62 at E = E1 = 0, their sum +-2^63."""
    cols = [(1 << 31, 0, 1 << 31, 0), (-(1 << 31), 0, -(1 << 31), 0), (-(1 << 31), 0, 1 << 31, 0),
            (-(1 << 31), 1, -(1 << 31), 1), (-(1 << 31), 0, -(1 << 31), 1), (1 << 31, 62, -(1 << 31), 62),
            (-(1 << 31), 63, -(1 << 31), 100)]
    m, e, m1, e1 = (np.array(v, np.int64) for v in zip(*cols))
    x = np.repeat(np.array([I32_MIN, I32_MAX, I32_MIN], np.int64)[:, None], len(cols), axis=1).astype(np.int32)
    y = np.repeat(np.array([I32_MIN, I32_MIN, I32_MAX], np.int64)[:, None], len(cols), axis=1).astype(np.int32)
    out = run_static(lambda xv, yv: ops.requantize(xv, m, e, bits, yv, m1, e1), {"x": x, "y": y})
    ref = REQUANT.reference(x, m, e, bits, y, m1, e1)
    assert ref[0, 1] == (1 << (bits - 1)) - 1  # 2^62 + 2^62 = 2^63 saturates high
    assert_exact(out, ref, OUT_DTYPE[bits], f"requantize residual bits={bits}",
                 labels=lambda i: (f"x={int(x[i])}, y={int(y[i])}, M={int(m[i[1]])}, E={int(e[i[1]])}, "
                                   f"M1={int(m1[i[1]])}, E1={int(e1[i[1]])}"))


def test_requantize_residual_plain_sum_at_its_bound():
    """With every shift E >= 1 the first term stays within 2^61 and an int32 residual's within 2^62, so the two
    are added plainly (no saturating add): x = y = +-2^31 with M = M1 = +-2^31 puts the sum at +-(2^62 + 2^61),
    which the 32-bit clamp saturates, equal to the exact reference. At E = 0 the bound reaches 2^63, and the
    saturating add (`test_requantize_residual_two_terms_at_2_62`) is kept."""
    assert REQUANT._term_bound("int32", 1) + REQUANT._term_bound("int32", 0) < 1 << 63
    assert REQUANT._term_bound("int32", 0) * 2 == 1 << 63
    cols = [(1 << 31, 1, 1 << 31, 0), (-(1 << 31), 1, -(1 << 31), 0), (-(1 << 31), 1, 1 << 31, 0),
            ((1 << 31) - 1, 1, 1 << 31, 0), (1 << 31, 2, -(1 << 31), 0), (3, 1, 5, 1)]
    m, e, m1, e1 = (np.array(v, np.int64) for v in zip(*cols))
    rows = [I32_MIN, I32_MAX, I32_MIN, -1, 0, 1]
    x = np.repeat(np.array(rows, np.int64)[:, None], len(cols), axis=1).astype(np.int32)
    y = np.repeat(np.array(rows[::-1], np.int64)[:, None], len(cols), axis=1).astype(np.int32)
    out = run_static(lambda xv, yv: ops.requantize(xv, m, e, 32, yv, m1, e1), {"x": x, "y": y})
    assert_exact(out, REQUANT.reference(x, m, e, 32, y, m1, e1), "int32", "requantize residual, plain sum")


WIDE_X = np.array([1 << 62, -(1 << 62), (1 << 62) - 1, -((1 << 62) - 1), (1 << 62) - (1 << 31),
                   -(1 << 62) + (1 << 31) + 1, (1 << 61) + 1, -(1 << 61) - 1, (1 << 45) + 3, 1 << 32, I32_MAX,
                   -1, 1, 0], np.int64)
# 2^31 keeps the multipliers int64 in the kernel; without it they reach it as int32 (`registry`).
WIDE_M = {"int64": [1 << 31, -(1 << 31), (1 << 30) + 1, -((1 << 31) - 1)],
          "int32": [-(1 << 31), (1 << 31) - 1, (1 << 30) + 1, -((1 << 31) - 1)]}
WIDE_E = list(range(0, 94)) + [94, 95, 100, 127, 200]


@functools.lru_cache(maxsize=None)
def _wide_requant(bits: int, m_kind: str):
    """One per-channel run over every (M, E) column; returns x, M, E, out, reference."""
    cols = [(mi, ei) for mi in WIDE_M[m_kind] for ei in WIDE_E]
    m = np.array([c[0] for c in cols], np.int64)
    e = np.array([c[1] for c in cols], np.int64)
    x = np.repeat(WIDE_X[:, None], len(cols), axis=1)
    out = run_static(lambda xv: ops.requantize(xv, m, e, bits), {"x": x})
    ref = REQUANT.reference(x, m, e, bits)
    exact = x.astype(object) * m.astype(object)
    fits = np.vectorize(lambda p, ei: abs(p) < 1 << (63 + ei), otypes=[bool])(exact, e[None, :])
    return x, m, e, out, ref, fits


@pytest.mark.parametrize("m_kind", list(WIDE_M))
@pytest.mark.parametrize("bits", [8, 32])
def test_requantize_wide_near_2_62_result_within_int64(bits, m_kind):
    """int64 x up to 2^62 - 1, E over [0, 93] and beyond (folded): every element whose exact x M / 2^E
    fits int64 (the split product's own precondition), with M read as int64 or as int32."""
    x, m, e, out, ref, fits = _wide_requant(bits, m_kind)
    assert out.dtype == np.dtype(OUT_DTYPE[bits])
    assert fits.sum() > 0.8 * fits.size
    masked_out = np.where(fits, out.astype(np.int64), 0)
    masked_ref = np.where(fits, ref, 0)
    msg = describe_mismatch(masked_out, masked_ref, lambda i: f"x={int(x[i])}, M={int(m[i[1]])}, E={int(e[i[1]])}")
    assert not msg, f"requantize wide bits={bits}: {msg}"


@pytest.mark.parametrize("m_kind", list(WIDE_M))
@pytest.mark.parametrize("bits", [8, 32])
def test_requantize_wide_result_past_int64_saturates(bits, m_kind):
    """The same run, elements with |x M / 2^E| >= 2^63 (E < 31, large x): the result must saturate like the
    reference's clamp. `requantize` accepts these (M, E) for int64 inputs and checks no output bound."""
    x, m, e, out, ref, fits = _wide_requant(bits, m_kind)
    over = ~fits
    assert over.sum() > 0
    assert set(np.unique(ref[over]).tolist()) <= {-(1 << (bits - 1)), (1 << (bits - 1)) - 1}
    masked_out = np.where(over, out.astype(np.int64), 0)
    masked_ref = np.where(over, ref, 0)
    msg = describe_mismatch(masked_out, masked_ref, lambda i: f"x={int(x[i])}, M={int(m[i[1]])}, E={int(e[i[1]])}")
    assert not msg, f"requantize wide bits={bits}, result past int64: {msg}"


def test_requantize_wide_minimal_past_int64():
    """Smallest case of the above: x = 2^32 (int64), M = 2^31, E = 0 -> x M = 2^63 -> clamp to 127."""
    x = np.array([[1 << 32, -(1 << 32) - 1, (1 << 32) - 1]], np.int64)
    out = run_static(lambda xv: ops.requantize(xv, 1 << 31, 0, 8), {"x": x})
    ref = REQUANT.reference(x, 1 << 31, 0, 8)
    assert ref.tolist() == [[127, -128, 127]]
    assert_exact(out, ref, "int8", "requantize wide minimal")


# ============================================================================== i-GELU


def test_gelu_constants_smallest_scale_boundary():
    assert quant.gelu_constants(GELU_MIN_SCALE).q1.size == 1
    for smaller in (np.nextafter(GELU_MIN_SCALE, np.float32(0)), GELU_MIN_SCALE * np.float32(0.5),
                    np.float32(1e-9)):
        with pytest.raises(quant.QuantizationRangeError), np.errstate(all="ignore"):
            quant.gelu_constants(np.float32(smaller))
    # one channel too small is enough to refuse a per-channel vector
    with pytest.raises(quant.QuantizationRangeError), np.errstate(all="ignore"):
        quant.gelu_constants(np.array([1e-2, np.nextafter(GELU_MIN_SCALE, np.float32(0))], np.float32))


def test_gelu_constants_are_what_int_gelu_accepts():
    """The constants of the smallest scale `gelu_constants` accepts pass `ibert.int_gelu`'s type rule, whose input
    is int32: gelu_constants takes no input width (with in_bits=16 it accepted 2.553e-09, whose constants the
    type rule refused: "|out| could reach 2.8e23")."""
    g = quant.gelu_constants(GELU_MIN_SCALE)
    assert ops.int_gelu(tvar("x", (2, 1), "int32"), g.b_int, g.c_int, g.q1).op.name == "ibert.int_gelu"
    with pytest.raises(TypeError, match="in_bits"):
        quant.gelu_constants(np.float32(2.553e-9), in_bits=16)


@functools.lru_cache(maxsize=None)
def _gelu_vm():
    n, c = sym("n", "c")
    return compile_vm([tvar("x", (n, c), "int32")] + [tvar(k, (c,), "int64") for k in ("b", "cc", "q1")],
                      lambda x, b, cc, q1: ops.int_gelu(x, b, cc, q1))


@functools.lru_cache(maxsize=None)
def _wide_requant_vm(bits: int):
    n, c = sym("n", "c")
    return compile_vm([tvar("x", (n, c), "int64"), tvar("m", (c,), "int64"), tvar("e", (c,), "int64")],
                      lambda x, m, e: make_call("ibert.requantize", [x, m, e], bits=bits))


def test_gelu_smallest_scale_extreme_inputs():
    """i-GELU at the smallest accepted scale with q = +-(2^31 - 1) and -2^31: |out| approaches 2^62.
    Then the 8- and 32-bit requantization of that int64 output (negative per-channel scale)."""
    scales = np.array([GELU_MIN_SCALE, GELU_MIN_SCALE, GELU_MIN_SCALE * np.float32(1.5), 1e-5, 1e-1], np.float32)
    g = quant.gelu_constants(scales)
    top = I32_MAX
    rows = [[top] * 5, [-top] * 5, [-top - 1] * 5, [0] * 5, [1] * 5, [-1] * 5]
    for edge in (-g.b_int, -g.b_int - 1, g.b_int, g.b_int + 1):  # where min(|q|, -b) starts to clip
        rows.append(np.clip(edge, -top - 1, top).tolist())
    x = np.array(rows, np.int64).astype(np.int32)
    out = _gelu_vm()(x, g.b_int, g.c_int, g.q1)
    ref = GELU.reference(x, g.b_int, g.c_int, g.q1)
    assert_exact(out, ref, "int64", "int_gelu smallest scale")
    mag = np.abs(ref.astype(object))
    assert max(mag.ravel()) < quant.INT64_SAFE  # the bound gelu_constants promises
    assert max(mag.ravel()) >= 1 << 60  # ... and this input really drives it there
    real = np.abs(ref.astype(np.float64) * g.out_scale.astype(np.float64))
    for bits in (8, 32):
        target = float(real.max()) / ((1 << (bits - 1)) - 1)  # a calibrated per-tensor output scale
        d = quant.requant_dyadic(g.out_scale, target)
        y = _wide_requant_vm(bits)(out, *REQUANT._dyadic(d.multiplier, d.shift, REQUANT.WIDE_MAX_SHIFT, "x"))
        assert_exact(y, REQUANT.reference(ref, d.multiplier, d.shift, bits), OUT_DTYPE[bits],
                     f"requantize of i-GELU output to {bits} bits")
        assert np.abs(y.astype(np.int64)).max() >= (1 << (bits - 1)) - 2


# ============================================================================== IntSoftmax


@functools.lru_cache(maxsize=None)
def _softmax_vm(scale: float, exp_scale: float | None):
    n, length = sym("n", "L")
    kw = softmax_consts(scale, exp_scale)
    return compile_vm([tvar("x", (n, length), "int32")], lambda x: ops.int_softmax(x, **kw)), kw


SOFTMAX_EXTREMES = {
    # largest scale (x0 = -1, c' = 1), HF calibration
    "max_scale": (float(SOFTMAX_MAX_SCALE), None),
    # smallest scale: c' ~ 2^48, fused requantization shift E' = 93 (the limit)
    "min_scale": (float(SOFTMAX_MIN_SCALE), None),
    # S16 = 1: E' = 30 (the other limit), so every e16 near the row max clamps at 32767
    "exp_shift_30": (0.1, 1.0),
}


def _softmax_rows(x0: int, rng) -> list[np.ndarray]:
    """Row groups (each a 2-D array) at the int32 and clamp extremes."""
    c = 30 * x0  # the clamp point, in integer units (negative)

    def clip(v):
        return np.clip(np.array(v, np.int64), I32_MIN, I32_MAX).astype(np.int32)

    top = I32_MAX
    return [
        clip(rng.integers(I32_MIN, I32_MAX, (4, 33), endpoint=True)),  # spanning all of int32
        clip([[I32_MAX] + [I32_MIN] * 15, [I32_MIN] * 15 + [I32_MAX], [0] * 7 + [I32_MAX] + [I32_MIN] * 8]),
        clip([[top, top + c, top + c + 1, top + c - 1, top + x0, top + x0 + 1, top - 1, top],
              [I32_MIN - c, I32_MIN - c + c, I32_MIN - c + c + 1, I32_MIN, I32_MIN - c - 1, I32_MIN - c,
               I32_MIN - c + x0, I32_MIN - c + 2 * x0]]),
        clip([[I32_MIN] * 9, [I32_MAX] * 9, list(range(9))]),
        clip([np.linspace(I32_MIN, I32_MAX, 64, dtype=np.float64).astype(np.int64)]),
        clip([[top + z * x0 + r for z in range(31) for r in (0, x0 // 2 if x0 < -1 else 0)]]),  # every z
        clip([[5]]),
    ]


@pytest.mark.parametrize("case", list(SOFTMAX_EXTREMES))
def test_int_softmax_extreme_scales(case):
    scale, exp_scale = SOFTMAX_EXTREMES[case]
    fn, kw = _softmax_vm(scale, exp_scale)
    if case == "min_scale":
        assert kw["exp_shift"] == 93
    if case == "exp_shift_30":
        assert kw["exp_shift"] == 30
    rng = np.random.default_rng(11)
    for x in _softmax_rows(kw["x0_int"], rng):
        out = fn(x)
        assert_exact(out, SOFTMAX.reference(x, **kw), "int16", f"int_softmax {case} (S={scale}), rows {x[:, :4]}")
        assert out.min() >= 0 and out.max() <= 256


@pytest.mark.parametrize("multiplier, shift", [(1 << 30, 47), (1 << 31, 62), (1, 30), ((1 << 31) - 1, 93)])
def test_int_softmax_exp_multiplier_at_its_mantissa_range_ends(multiplier, shift):
    """The exp rescale rounds in uint64 (p M >= 0) for every M in [1, 2^31] and shift in [30, 93]: each end
    equals the exact reference."""
    kw = dict(x0_int=-700, b_int=1000, c_int=400000, exp_multiplier=multiplier, exp_shift=shift)
    x = np.array([[0, -1, -700, -701, -20000, I32_MIN, 5, 3], [7] * 8, [I32_MAX, I32_MIN, 0, -1, 1, 2, 3, 4]], np.int32)
    out = run_static(lambda xv: ops.int_softmax(xv, **kw), {"x": x})
    assert_exact(out, SOFTMAX.reference(x, **kw), "int16", f"int_softmax M={multiplier} E={shift}")


SOFTMAX_KW = dict(x0_int=-694, b_int=2707, c_int=2792114, exp_multiplier=1 << 30, exp_shift=40)


@pytest.mark.parametrize("change, message", [
    # M = 2^62 with E = 93 took the split product, which needs |M| <= 2^31: [[256, 0, 0, 0, 0]], exact
    # [[77, 77, 77, 22, 0]] (found by a fuzz); M past 2^31, 0 or negative is no mantissa of 1 / S16 > 0
    (dict(exp_multiplier=1 << 62, exp_shift=93), r"exp_multiplier 4611686018427387904 must lie in \[1, 2\^31\]"),
    (dict(exp_multiplier=(1 << 31) + 1, exp_shift=62), "exp_multiplier 2147483649 must lie in"),
    (dict(exp_multiplier=0), "exp_multiplier 0 must lie in"),
    (dict(exp_multiplier=-(1 << 30)), "exp_multiplier -1073741824 must lie in"),
    (dict(b_int=-1), "b_int -1 and c_int 2792114 must be >= 0"),
    (dict(c_int=-5), "c_int -5 must be >= 0"),
    (dict(c_int=1 << 63), r"int64 intermediates pass 2\^62"),
    (dict(c_int=(1 << 62) - 694 * (694 + 2707)), r"int64 intermediates pass 2\^62"),  # p_max = 2^62 exactly
    (dict(x0_int=0), "x0_int 0 must be negative"),
    (dict(exp_shift=29), r"exp_shift 29 is not in \[30, 93\]"),
    (dict(exp_shift=94), r"exp_shift 94 is not in \[30, 93\]"),
])
def test_int_softmax_type_rule_refuses_constants_softmax_constants_never_makes(change, message):
    """The type rule checks the bounds `quant.softmax_constants` guarantees, with the same function."""
    with pytest.raises(IBertOpError, match=f"ibert.int_softmax: .*{message}"):
        ops.int_softmax(tvar("x", (1, 5), "int32"), **{**SOFTMAX_KW, **change})


def test_int_softmax_accepts_the_polynomial_just_below_2_62():
    """One unit below the refused p_max = 2^62 above: accepted, the bound is not off by one."""
    call = ops.int_softmax(tvar("x", (1, 5), "int32"), **{**SOFTMAX_KW, "c_int": (1 << 62) - 694 * (694 + 2707) - 1,
                                                         "exp_shift": 93})
    assert call.op.name == SOFTMAX.OP


@pytest.mark.parametrize("b, c, q1, message", [
    # b = -2^40: b^2 = 2^80 wrapped int64 silently (the numpy reference raises OverflowError; a fuzz)
    (-(1 << 40), -(1 << 50), -5, "t\\^2 \\+ c_int overflows int64 for b_int -1099511627776"),
    (-(1 << 31) - (1 << 30), 0, -1, "t\\^2 \\+ c_int overflows int64"),  # b^2 >= 2^63
    (-(1 << 22), -(1 << 63) + 1, -1, r"\|out\| could reach \d+, not below 2\^62"),  # |c| >> 14 = 2^49, x 2^31 past 2^62
    (1000, -5, -5, "b_int 1000 is positive"),  # b > 0: the kernel's clamp(q, b, -b) is another function
    (-3, np.array([1, 2]), np.array([1 << 63, 1], dtype=np.uint64), "argument 'q1' does not fit int64"),
    # |y| <= 2^30 (c = -b^2): |q1| = 2^31 - 2^30 keeps 2^31 (2^31 - 1) < 2^62 (test_int_gelu_int32_arithmetic_...),
    # one more reaches 2^62 exactly
    (-(1 << 22), -(1 << 44), np.array([(1 << 30) - 1, 1 << 30]), f"could reach {1 << 62}, not below 2\\^62"),
])
def test_int_gelu_type_rule_refuses_constants_gelu_constants_never_makes(b, c, q1, message):
    """The type rule checks constant (b, c, q1) against the bounds `quant.gelu_constants` guarantees (the same
    function), for any int32 input: y + q1 and q (y + q1) within 2^62, t^2 + c within int64, b <= 0."""
    with pytest.raises(IBertOpError, match=f"ibert.int_gelu: .*{message}"):
        ops.int_gelu(tvar("x", (2, 2), "int32"), b, c, q1)


def test_requantize_int64_constant_input_is_not_narrowed():
    """Only the per-channel parameters reach the kernel as int32: an int64 constant *input* whose values fit
    int32 keeps its dtype, so shifts past 62 and clamps past int32 still apply to it."""
    x = relax.const(np.array([I32_MAX, 123456789, -5, 1 << 20], np.int64), "int64")
    m, e = np.array([1 << 31, (1 << 31) - 1, -(1 << 30), 7]), np.array([70, 64, 63, 93])
    for bits in (8, 32):
        out = run_static(lambda: ops.requantize(x, m, e, bits), {})
        assert_exact(out, REQUANT.reference(x.value.numpy(), m, e, bits), OUT_DTYPE[bits], "requantize const x")
    out = run_static(lambda: ops.requantize(x, 1, 40, 8), {})  # its input clamp exceeds int32
    assert_exact(out, REQUANT.reference(x.value.numpy(), 1, 40, 8), "int8", "requantize const x, clamp")


@pytest.mark.parametrize("length", [SOFTMAX.SUM32_MAX_LENGTH, 131077])
def test_int_softmax_row_sum_at_its_int32_limit(length):
    """A static row of SUM32_MAX_LENGTH = 65535 entries sums its e16 in int32: every e16 at 2^15 - 1 (S16 = 1
    clamps them) still fits. A longer row sums in int64: at 131077 x 32767 = 2^32 + 32763 an int32 sum would
    wrap to 32763 and give 256s where the exact answer is 0s. (M > 0, the type rule: no e16 is negative.)"""
    kw = softmax_consts(*SOFTMAX_EXTREMES["exp_shift_30"])
    x = np.zeros((1, length), np.int32)
    out = run_static(lambda xv: ops.int_softmax(xv, **kw), {"x": x})
    assert_exact(out, SOFTMAX.reference(x, **kw), "int16", f"int_softmax, {length} equal scores")
    if length > SOFTMAX.SUM32_MAX_LENGTH:
        assert not out.any()  # the exact sum is past 2^32: the factor floor(2^32 / sum) is 0


@pytest.mark.parametrize("case", ["max_scale", "min_scale"])
def test_int_softmax_all_but_max_clamped(case):
    """Every entry but the max is below the clamp (30 x0): with HF's calibration the max gets 255, the rest 0."""
    scale, exp_scale = SOFTMAX_EXTREMES[case]
    fn, kw = _softmax_vm(scale, exp_scale)
    c = 30 * kw["x0_int"]
    x = np.array([[I32_MAX] + [I32_MIN] * 20,
                  [1000] + [1000 + c - k for k in range(20)],
                  [I32_MIN - c] + [I32_MIN] * 20], np.int64).astype(np.int32)
    out = fn(x)
    assert out[:, 0].tolist() == [255, 255, 255]
    assert not out[:, 1:].any()
    assert_exact(out, SOFTMAX.reference(x, **kw), "int16", f"int_softmax clamped rows ({case})")


# ============================================================================== IntLayerNorm


@functools.lru_cache(maxsize=None)
def _layernorm_vm(shift: int):
    n, c = sym("n", "c")
    return compile_vm([tvar("x", (n, c), "int32"), tvar("b", (c,), "int64")],
                      lambda x, b: ops.int_layernorm(x, b, shift))


def _ln_rows(c: int, rng) -> np.ndarray:
    alt = np.where(np.arange(c) % 2 == 0, LN_MIN, LN_MAX)
    half = np.where(np.arange(c) < c // 2, LN_MIN, LN_MAX)
    one_hi = np.full(c, LN_MIN)
    one_hi[c // 3] = LN_MAX
    one_lo = np.full(c, LN_MAX)
    one_lo[-1] = LN_MIN
    rand = rng.choice([LN_MIN, LN_MAX, LN_MIN + 1, LN_MAX - 1], c)
    ramp = np.linspace(LN_MIN, LN_MAX, c).astype(np.int64)
    const = np.full(c, LN_MIN)
    return np.stack([alt, half, one_hi, one_lo, rand, ramp, const]).astype(np.int32)


@pytest.mark.parametrize("shift", [0, 5, 12, 21, 31, 32])
def test_int_layernorm_c4096_at_22bit_ends(shift):
    c = 4096
    rng = np.random.default_rng(shift)
    x = _ln_rows(c, rng)
    bias = rng.choice([(1 << 61) - 1, -(1 << 61) + 1, 0, 12345], c).astype(np.int64)
    out = _layernorm_vm(shift)(x, bias)
    ref = LAYERNORM.reference(x, bias, shift)
    assert_exact(out, ref, "int64", f"int_layernorm C=4096 shift={shift}")
    assert np.array_equal(out[-1], bias)  # the constant row
    y = x[0].astype(object) - int(np.round(x[0].astype(np.float64).mean()))
    assert sum(int(v) ** 2 for v in y) >= 1 << 53  # var ~ 2^54 for the isqrt and the y F product


def test_int_layernorm_factor_at_2_31():
    """Rows whose shifted variance has isqrt 1 get F = 2^31, the factor's largest (F >> 1 = 2^30 still int32);
    the output y F / 2 = y 2^30 then reaches +-2^30."""
    c = 768
    x = np.zeros((4, c), np.int32)
    x[0, 5], x[1, 7], x[2, :2], x[3, 0], x[3, 1] = 1, -1, 1, 1, -1
    out = _layernorm_vm(0)(x, np.zeros(c, np.int64))
    ref = LAYERNORM.reference(x, np.zeros(c, np.int64), 0)
    assert_exact(out, ref, "int64", "int_layernorm F = 2^31")
    assert out[0, 5] == 1 << 30 and out[1, 7] == -(1 << 30)


def test_int_layernorm_largest_c_at_22bit_ends():
    """C = 2^18 - 1, the contract's largest, half at -2^21 and half at 2^21 - 1: var ~ 2^60 (< 2^63)."""
    c = (1 << 18) - 1
    x = np.where(np.arange(c) < c // 2, LN_MIN, LN_MAX).astype(np.int32)[None, :]
    bias = np.zeros(c, np.int64)
    out = _layernorm_vm(0)(x, bias)
    ref = LAYERNORM.reference(x, bias, 0)
    assert_exact(out, ref, "int64", "int_layernorm C=2^18-1")
    assert np.abs(out).max() <= 1 << 30


# ============================================================================== embedding


@pytest.mark.parametrize("ids_dtype", ["int32", "int64"])
def test_embedding_first_and_last_id(ids_dtype):
    vocab, dim = 50265, 17  # RoBERTa's vocabulary
    rng = np.random.default_rng(0)
    table = rng.integers(-128, 128, (vocab, dim), dtype=np.int8)
    table[0], table[-1] = -128, 127
    ids = np.array([[0, vocab - 1, 0], [vocab - 1, vocab - 1, 1]], ids_dtype)
    out = run_static(lambda iv: ops.embedding(iv, table), {"ids": ids})
    assert_exact(out, EMBEDDING.reference(ids, table), "int8", "embedding ends")
    assert (out[0, 0] == -128).all() and (out[0, 1] == 127).all()


def test_requantize_records_its_shift_range_and_refuses_a_wrong_one():
    """The wide product is built only for the shifts the call declares, so a declared range that misses a
    constant shift is refused (it would silently take the other side's arithmetic)."""
    x = tvar("x", (2, 3), "int64")
    call = ops.requantize(x, np.array([1 << 30, 3, 5]), np.array([31, 40, 60]))
    assert (int(call.attrs["shift_min"]), int(call.attrs["shift_max"])) == (31, 60)
    with pytest.raises(IBertOpError, match=r"shift range \[31, 93\] does not hold the shift's values \[30, 60\]"):
        make_call("ibert.requantize", [x, *call.args[1:2], ops.registry.as_expr(np.array([30, 40, 60]), "t", "e")],
                  bits=8, shift_min=31, shift_max=93)


def test_requantize_input_clamp_at_the_saturation_edge():
    """`input_clamp` X: every channel saturates for |x| >= X, so int64 inputs are clamped there and take one
    product. M = 129, E = 31 gives X = ceil(257 * 2^31 / 258); inputs at X - 1, X, X + 1 (the edge), around
    2^31 and out to 2^62 equal the exact reference; a call declaring X - 1 is refused."""
    m, e = np.array([129]), np.array([31])
    edge = -(-(257 << 31) // 258)
    x = np.array([[s * v for s in (1, -1)] for v in (edge - 1, edge, edge + 1, I32_MAX, 1 << 31, 1 << 40,
                                                     (1 << 62) - 1)], np.int64).reshape(-1, 1)
    call = ops.requantize(tvar("x", (14, 1), "int64"), m, e)
    assert int(call.attrs["input_clamp"]) == edge
    out = compile_vm([tvar("x", (14, 1), "int64")], lambda v: ops.requantize(v, m, e))(x)
    assert_exact(out, REQUANT.reference(x, m, e, 8), "int8", "requantize with its input clamped")
    assert list(np.unique(out[4:])) == [-128, 127]  # beyond the edge: saturated
    with pytest.raises(IBertOpError, match="is not a saturation point"):
        constants = [ops.registry.as_expr(a, "t", "m") for a in (m, e)]
        make_call("ibert.requantize", [tvar("x", (14, 1), "int64"), *constants], bits=8, input_clamp=edge - 1)


def test_int_gelu_int32_arithmetic_at_its_bounds():
    """i-GELU's int32 path (`narrow`) where y + q1 just fits: b = -2^22 (s = -t reaches 2^22: s_h = 2^9, s_l
    up to 2^13 - 1), c = -b^2 and c = -2^31 + 1 (so |v| <= 2^44, |y| <= 2^30) and |q1| = 2^31 - 2 - 2^30; q at
    the int32 ends, at +-b, next to them and where s_l wraps equals the exact reference. One more unit of |q1|
    leaves int32: the builder then keeps int64 (no `narrow`), and a call that sets `narrow` is refused."""
    b = np.array([-(1 << 22), -(1 << 22)])
    c = np.array([-(1 << 44), -(1 << 31) + 1])
    q1 = np.array([(1 << 30) - 2, -((1 << 30) - 2)])
    assert GELU.int32_bounded(b, c, q1)
    qs = [I32_MAX, 0, 1, 8191, 8192, (1 << 22) - 8192, (1 << 22) - 8193] + [(1 << 22) + d for d in (-1, 0, 1)]
    x = np.array([[v, v] for v in [I32_MIN] + qs + [-v for v in qs]], np.int32)
    shape = x.shape
    call = ops.int_gelu(tvar("x", shape, "int32"), b, c, q1)
    assert int(call.attrs["narrow"]) == 1
    out = compile_vm([tvar("x", shape, "int32")], lambda v: ops.int_gelu(v, b, c, q1))(x)
    assert_exact(out, GELU.reference(x, b, c, q1), "int64", "int_gelu in int32")
    wider = q1 + np.sign(q1)
    assert "narrow" not in ops.int_gelu(tvar("x", shape, "int32"), b, c, wider).attrs
    with pytest.raises(IBertOpError, match="do not keep y \\+ q1 in int32"):
        make_call("ibert.int_gelu", [tvar("x", shape, "int32"), *(ops.registry.as_expr(v, "t", "k")
                                                                  for v in (b, c, wider))], narrow=1)

# ============================================================================== malformed arguments named early


@pytest.mark.parametrize("x_dtype", ["int32", "int64"])
@pytest.mark.parametrize("bits", [-1, 8.5, 9, True, "8"])
def test_requantize_refuses_bits_outside_its_dtypes_when_built(bits, x_dtype):
    """bits = -1 failed deep in the compute ('negative shift count'), 8.5 raised a raw TypeError or was
    truncated to 8 (int32 input; found by a fuzz): the builder names it first."""
    with pytest.raises(IBertOpError, match=r"'bits' must be one of \[8, 16, 22, 32\], got"):
        ops.requantize(tvar("x", (1, 4), x_dtype), 1 << 30, 40, bits)


@pytest.mark.parametrize("multiplier, shift, message", [
    (1 << 63, 40, r"multiplier must satisfy \|M\| <= 2\^31"),  # numpy's OverflowError before
    (-(1 << 70), 40, r"multiplier must satisfy \|M\| <= 2\^31"),
    ((1 << 31) + 1, 40, r"multiplier must satisfy \|M\| <= 2\^31"),
    (1.5, 40, "'x' multiplier must be integers, got 1.5"),
    (1 << 30, np.array([40.0]), "'x' shift must be integers"),
    (1 << 30, -1, "shift must be >= 0"),
    (np.array([], np.int64), np.array([], np.int64), "'x' multiplier and shift are empty"),  # numpy's ValueError before
])
def test_requantize_names_a_bad_constant_multiplier_or_shift(multiplier, shift, message):
    with pytest.raises(IBertOpError, match=message):
        ops.requantize(tvar("x", (1, 4), "int64"), multiplier, shift, 8)


def test_requantize_folds_a_shift_past_int64():
    """A shift of 2^70 (beyond every product) folds to (0, 0) like any shift past 93, without overflowing."""
    call = ops.requantize(tvar("x", (1, 4), "int64"), 1 << 31, 1 << 70, 8)
    assert [int(a.value.numpy()) for a in call.args[1:3]] == [0, 0]


def test_embedding_refuses_an_empty_table():
    """V = 0 was accepted and read row -1 (the id clamp into [0, V - 1]; found by a fuzz)."""
    ids = tvar("ids", (2, 3), "int64")
    with pytest.raises(IBertOpError, match=r"'table' has no rows \(shape \[0, 4\]\); V must be >= 1"):
        ops.embedding(ids, np.zeros((0, 4), np.int8))
    with pytest.raises(IBertOpError, match="'table' has no rows"):
        ops.embedding(ids, tvar("t", (0, 4), "int8"))
    assert ops.embedding(ids, np.zeros((1, 4), np.int8)).op.name == EMBEDDING.OP


def test_int_layernorm_checks_a_static_c_and_a_constant_input_against_its_contract():
    """C < 2^18 and a 22-bit int32 input: beyond them the variance or y = x - mu wraps silently. A static C and
    a constant input are checked (a run-time input cannot be: the README's operator table states the limit)."""
    c = (1 << 18) - 1
    assert ops.int_layernorm(tvar("x", (1, c), "int32"), np.zeros(c, np.int64)).op.name == LAYERNORM.OP
    with pytest.raises(IBertOpError, match=r"262144 channels exceed the contract's C < 2\^18"):
        ops.int_layernorm(tvar("x", (1, c + 1), "int32"), 0)
    edges = relax.const(np.array([[LN_MIN, LN_MAX, 0]], np.int32))
    assert ops.int_layernorm(edges, 0).op.name == LAYERNORM.OP
    for bad in (LN_MIN - 1, LN_MAX + 1):
        with pytest.raises(IBertOpError, match=rf"constant 'x' holds values in \[.*\] outside its contract "
                                               rf"\[{LN_MIN}, {LN_MAX}\]"):
            ops.int_layernorm(relax.const(np.array([[bad, 0, 1]], np.int32)), 0)
    int16 = relax.const(np.array([[-(1 << 15), (1 << 15) - 1]], np.int16))
    assert ops.int_layernorm(int16, 0).op.name == LAYERNORM.OP


def test_matmul_checks_a_constant_int16_operand_against_the_probability_range():
    """int16 `a` holds softmax probabilities, |a| <= 256, which the K bound assumes; 257 at K = 65535 wraps."""
    b = tvar("b", (1, 4, 2), "int8")
    assert ops.matmul(relax.const(np.array([[[256, -256, 0, 1]]], np.int16)), b).op.name == MATMUL.OP
    with pytest.raises(IBertOpError, match=r"constant 'a' holds values in \[0, 257\] outside its contract "
                                           r"\[-256, 256\]"):
        ops.matmul(relax.const(np.array([[[257, 0, 0, 1]]], np.int16)), b)
