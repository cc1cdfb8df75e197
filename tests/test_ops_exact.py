"""Bit-exactness of every `ibert.*` operator: compiled for `llvm`, run by the Relax VM, equal to its `reference`.

(a) fixed random shapes (ranks 2-4, odd sizes) through the public builders with numpy constants;
(b) Hypothesis-generated values at the extremes, fed through VMs compiled once with the integer constants as
    Relax tensor parameters (and symbolic shapes), so many examples share one compile;
(c) documented corner cases: fully masked softmax rows, one-hot rows (256), constant LayerNorm rows.

Every comparison is on 100% of the elements.
"""

from __future__ import annotations

import contextlib
import functools
import math
import subprocess
import sys

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tvm import relax

from ibert_tvm import ops, quant
from ibert_tvm.build_util import single_op_module
from ibert_tvm.ops import IBertOpError
from ibert_tvm.ops.registry import make_call

from op_harness import (EMBEDDING, GELU, I32_MAX, I32_MIN, LAYERNORM, LINEAR, LN_MAX, LN_MIN, LOOKUP, MATMUL, REQUANT,
                        SOFTMAX,
                        assert_exact, boundary_scale, compile_vm, run_static, sym, tvar)

HYP = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def ints(lo: int, hi: int, extra=()) -> st.SearchStrategy[int]:
    """Integers in [lo, hi], biased towards the ends and the usual edges."""
    special = sorted({v for v in (lo, lo + 1, -1, 0, 1, hi - 1, hi, *extra) if lo <= v <= hi})
    return st.one_of(st.sampled_from(special), st.integers(lo, hi))


def arr(dtype, shape, lo: int, hi: int, extra=()) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.dtype(dtype), tuple(shape), elements=ints(lo, hi, extra))


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[np.float32]:
    """float32 scales log-uniform in [lo, hi], with both ends as explicit examples."""
    lo32, hi32 = np.float32(lo), np.float32(hi)

    def to_scale(u: float) -> np.float32:
        return np.float32(min(max(np.float32(10.0 ** u), lo32), hi32))

    return st.one_of(st.sampled_from([lo32, hi32]),
                     st.floats(math.log10(lo), math.log10(hi)).map(to_scale))


def v2(n: int) -> int:
    """2-adic valuation of a nonzero int."""
    return (n & -n).bit_length() - 1




def _gelu_ok(s) -> bool:
    try:
        with np.errstate(all="ignore"):
            quant.gelu_constants(np.float32(s))
        return True
    except quant.QuantizationRangeError:
        return False


def softmax_consts(s, exp_scale=None) -> dict:
    """Softmax constants with HF's calibrated S16 (row max -> 32767) unless `exp_scale` is given."""
    s = np.float32(s)
    with np.errstate(all="ignore"):
        if exp_scale is None:
            exp_scale = quant.symmetric_scale(16, 0, quant.softmax_exp_range(s))
        c = quant.softmax_constants(s, exp_scale)
    return dict(x0_int=c.x0_int, b_int=c.b_int, c_int=c.c_int, exp_multiplier=c.exp_multiplier,
                exp_shift=c.exp_shift)


def _softmax_ok(s) -> bool:
    try:
        softmax_consts(s)
        return True
    except quant.QuantizationRangeError:
        return False


GELU_MIN_SCALE = boundary_scale(_gelu_ok, 1e-12, 1e-1)
SOFTMAX_MIN_SCALE = boundary_scale(_softmax_ok, 1e-12, 1e-1)
SOFTMAX_MAX_SCALE = boundary_scale(_softmax_ok, 1e-1, 10.0)  # c' = floor(2.79 / S^2) must stay >= 1


# ================================================================ (a) random shapes, builder path


@pytest.mark.parametrize("xshape,n_out,with_bias", [
    ((5, 17), 11, True),
    ((3, 7, 33), 1, False),
    ((2, 3, 5, 9), 13, True),
    ((4, 1), 3, False),
])
def test_linear_random_shapes(xshape, n_out, with_bias):
    rng = np.random.default_rng(sum(xshape) * n_out)
    k = xshape[-1]
    x = rng.integers(-128, 128, xshape, dtype=np.int8)
    w = rng.integers(-128, 128, (n_out, k), dtype=np.int8)
    b = rng.integers(-2**24, 2**24, n_out).astype(np.int32) if with_bias else None
    out = run_static(lambda xv: ops.linear(xv, w, b), {"x": x})
    assert_exact(out, LINEAR.reference(x, w, b), "int32", "linear")


@pytest.mark.parametrize("ashape,bshape,a_dtype,transpose_b", [
    ((7, 5), (5, 9), "int8", False),
    ((3, 4, 17), (3, 6, 17), "int8", True),
    ((2, 3, 5, 16), (2, 3, 16, 7), "int16", False),
    ((2, 2, 3, 1), (2, 2, 1, 5), "int8", False),
    ((1, 3, 9, 31), (1, 3, 11, 31), "int16", True),
])
def test_matmul_random_shapes(ashape, bshape, a_dtype, transpose_b):
    rng = np.random.default_rng(len(ashape) * 100 + ashape[-1])
    a = (rng.integers(0, 257, ashape) if a_dtype == "int16" else rng.integers(-128, 128, ashape)).astype(a_dtype)
    b = rng.integers(-128, 128, bshape, dtype=np.int8)
    out = run_static(lambda av, bv: ops.matmul(av, bv, transpose_b=transpose_b), {"a": a, "b": b})
    assert_exact(out, MATMUL.reference(a, b, transpose_b), "int32", "matmul")


def _rand_ints(rng, dtype, shape, mag=None):
    info = np.iinfo(dtype)
    lo, hi = (info.min, info.max) if mag is None else (-mag, mag)
    return rng.integers(lo, hi, shape, endpoint=True, dtype=np.int64).astype(dtype)


@pytest.mark.parametrize("case", [
    dict(xdt="int32", shape=(3, 8), bits=8, per_channel=True),
    dict(xdt="int32", shape=(2, 5, 7), bits=16, per_channel=False),
    dict(xdt="int16", shape=(2, 3, 4, 9), bits=8, per_channel=True, res="int8", res_pc=False),
    dict(xdt="int8", shape=(5, 11), bits=22, per_channel=False, res="int32", res_pc=True),
    dict(xdt="int64", shape=(4, 13), bits=8, per_channel=True, mag=2**46, negative=True),
    dict(xdt="int64", shape=(3, 2, 7), bits=32, per_channel=False, mag=2**31),
    dict(xdt="int32", shape=(6, 5), bits=32, per_channel=True, res="int16", res_pc=True),
])
def test_requantize_random_shapes(case):
    rng = np.random.default_rng(len(case["shape"]) * 7 + case["bits"])
    shape, c = case["shape"], case["shape"][-1]
    x = _rand_ints(rng, case["xdt"], shape, case.get("mag"))
    in_scale = rng.uniform(1e-6, 1e-4, c if case["per_channel"] else ()).astype(np.float32)
    if case.get("negative"):
        in_scale = -in_scale * np.float32(2.0**-20)  # a negative i-GELU-like scale
    out_scale = float(np.max(np.abs(in_scale))) * 2.0 ** (8 if case["bits"] == 8 else -4)
    d = quant.requant_dyadic(in_scale, out_scale)
    if "res" in case:
        y = _rand_ints(rng, case["res"], shape)
        r_scale = rng.uniform(1e-3, 1e-1, c if case["res_pc"] else ()).astype(np.float32)
        d1 = quant.requant_dyadic(r_scale, out_scale)
        out = run_static(lambda xv, yv: ops.requantize(xv, d.multiplier, d.shift, case["bits"], yv,
                                                       d1.multiplier, d1.shift), {"x": x, "y": y})
        ref = REQUANT.reference(x, d.multiplier, d.shift, case["bits"], y, d1.multiplier, d1.shift)
    else:
        out = run_static(lambda xv: ops.requantize(xv, d.multiplier, d.shift, case["bits"]), {"x": x})
        ref = REQUANT.reference(x, d.multiplier, d.shift, case["bits"])
    expect_dtype = {8: "int8", 16: "int16", 22: "int32", 32: "int32"}[case["bits"]]
    assert_exact(out, ref, expect_dtype, "requantize")
    if case["bits"] == 22:
        assert out.min() >= LN_MIN and out.max() <= LN_MAX


@pytest.mark.parametrize("shape,per_channel", [((6, 10), True), ((2, 3, 8), False), ((2, 2, 3, 5), True)])
def test_int_gelu_random_shapes(shape, per_channel):
    rng = np.random.default_rng(shape[-1])
    c = shape[-1]
    scales = rng.uniform(2e-6, 2e-4, c if per_channel else 1).astype(np.float32)
    g = quant.gelu_constants(scales)
    b, cc, q1 = (g.b_int, g.c_int, g.q1) if per_channel else (g.b_int[0], g.c_int[0], g.q1[0])
    x = rng.integers(-2**22, 2**22, shape).astype(np.int32)
    x.flat[: min(4, x.size)] = [I32_MIN, I32_MAX, 0, -1][: min(4, x.size)]
    out = run_static(lambda xv: ops.int_gelu(xv, b, cc, q1), {"x": x})
    assert_exact(out, GELU.reference(x, b, cc, q1), "int64", "int_gelu")


_SOFTMAX_MASK_CASES = {  # scores shape, mask shape (each dim equal or 1), mask dtype
    "padding_int8": ((2, 3, 5, 11), (2, 1, 1, 11), "int8"),
    "causal_uint8": ((3, 4, 9), (1, 4, 9), "uint8"),
    "rows_int64": ((2, 3, 5, 11), (1, 3, 5, 1), "int64"),
}
MASK_SCALE = 2e-3


@functools.lru_cache(maxsize=None)
def _softmax_mask_vm(case: str):
    xshape, mshape, mdt = _SOFTMAX_MASK_CASES[case]
    kw = softmax_consts(MASK_SCALE)
    return compile_vm([tvar("x", xshape, "int32"), tvar("m", mshape, mdt)],
                      lambda x, m: ops.int_softmax(x, mask=m, **kw)), kw


@pytest.mark.parametrize("shape,scale", [((3, 4, 9), 1e-1), ((2, 3, 5, 11), 1e-5)])
def test_int_softmax_random_shapes(shape, scale):
    """Ranks 3 and 4 here; rank 2 (with symbolic shapes) in the Hypothesis tests below."""
    rng = np.random.default_rng(shape[-1])
    kw = softmax_consts(scale)
    span = int(12 / scale)  # about 12 in real units: the whole i-exp range, clamp included
    x = (rng.integers(-span, span, shape) + int(rng.integers(-2**30, 2**30))).astype(np.int32)
    out = run_static(lambda xv: ops.int_softmax(xv, **kw), {"x": x})
    assert_exact(out, SOFTMAX.reference(x, **kw), "int16", "int_softmax")
    assert out.min() >= 0 and out.max() <= 256


def _masked_scores(case: str, seed: int):
    xshape, mshape, mdt = _SOFTMAX_MASK_CASES[case]
    rng = np.random.default_rng(seed)
    span = int(12 / MASK_SCALE)
    x = rng.integers(-span, span, xshape).astype(np.int32)
    m = (rng.random(mshape) < 0.6).astype(mdt)
    return x, m


@pytest.mark.parametrize("case", list(_SOFTMAX_MASK_CASES))
def test_int_softmax_masked_random(case):
    """Masked positions act as -inf: they take no part in the row max or the sum (module docstring)."""
    fn, kw = _softmax_mask_vm(case)
    x, m = _masked_scores(case, 1)
    keep = np.broadcast_to(m != 0, x.shape)
    out = fn(x, m)
    assert_exact(out, SOFTMAX.reference(x, mask=m, **kw), "int16", f"int_softmax mask {case}")
    assert np.all(out[~keep] == 0)


@pytest.mark.parametrize("case", list(_SOFTMAX_MASK_CASES))
def test_int_softmax_mask_broadcast_masked_scores_lowest(case):
    """Mask indexing and broadcasting alone: masked scores at INT32_MIN can never be a row's max."""
    fn, kw = _softmax_mask_vm(case)
    x, m = _masked_scores(case, 2)
    keep = np.broadcast_to(m != 0, x.shape)
    x = np.where(keep, x, I32_MIN).astype(np.int32)
    out = fn(x, m)
    assert_exact(out, SOFTMAX.reference(x, mask=m, **kw), "int16", f"int_softmax mask {case}")
    assert np.all(out[~keep] == 0)


def test_int_softmax_masked_score_above_row_max_minimal():
    """Minimal case: the only masked score is above the kept one; the kept entry gets the whole row."""
    fn, kw = _softmax_vm(0.1, masked=True)
    x = np.array([[0, 100], [I32_MIN, I32_MAX]], np.int32)
    m = np.array([[1, 0], [1, 0]], np.int32)
    out = fn(x, m)
    ref = SOFTMAX.reference(x, mask=m, **kw)
    assert ref.tolist() == [[255, 0], [255, 0]]
    assert_exact(out, ref, "int16", "int_softmax masked max")


def test_int_softmax_bool_mask():
    """`bool` is one of the accepted mask dtypes (MASK_DTYPES): it must compile for llvm and match."""
    kw = softmax_consts(MASK_SCALE)
    rng = np.random.default_rng(3)
    x = rng.integers(-5000, 5000, (2, 7)).astype(np.int32)
    m = rng.random((2, 7)) < 0.6
    failure = None
    try:
        fn = compile_vm([tvar("x", x.shape, "int32"), tvar("m", m.shape, "bool")],
                        lambda xv, mv: ops.int_softmax(xv, mask=mv, **kw))
    except Exception as err:  # noqa: BLE001 - report the compiler's first lines, not its 10k-line IR dump
        failure = f"{type(err).__name__}: " + " / ".join(str(err).strip().splitlines()[:2])
    if failure is not None:
        pytest.fail(f"int_softmax with a bool mask does not compile for llvm: {failure}")
    assert_exact(fn(x, m), SOFTMAX.reference(x, mask=m, **kw), "int16", "int_softmax bool mask")


def _mask_dims(case: str):
    """(scores shape, mask shape) for the mask-shape cases; n, h, hm, L are shape variables."""
    n, h, hm, length = sym("n", "h", "hm", "L")
    return {
        "fewer_columns": ((2, 4), (2, 3)),
        "more_columns": ((2, 4), (2, 8)),
        "symbolic_other_var": ((n, h, length), (n, hm, length)),
        "symbolic_vs_static": ((n, 4), (n, length)),
        "static_vs_symbolic": ((2, length), (2, 4)),
    }[case]


@pytest.mark.parametrize("case", ["fewer_columns", "more_columns", "symbolic_other_var", "symbolic_vs_static",
                                  "static_vs_symbolic"])
def test_int_softmax_refuses_a_mask_dim_not_provably_the_scores(case):
    """The kernel reads the mask at the scores' indices (a literal 1 broadcast): a (2, 3) mask on (2, 4) scores
    read past the mask, a (2, 8) one used 4 of its columns, and a symbolic dim that is 1 at run time was read
    as if it were the scores' (found by a fuzz). Each is refused when the call is built, naming the dim."""
    xshape, mshape = _mask_dims(case)
    kw = softmax_consts(MASK_SCALE)
    with pytest.raises(IBertOpError, match=r"'mask' dim \d+ is .*literal 1 \(broadcast\) or provably equal"):
        ops.int_softmax(tvar("x", xshape, "int32"), mask=tvar("m", mshape, "int32"), **kw)


def test_int_softmax_accepts_a_mask_of_the_same_shape_variables():
    """The model's mask [B, 1, 1, L] on scores [B, heads, L, L] (the same variables, literal 1s) is accepted,
    and so is a static mask broadcast over static scores (rows 1): such masks are exact in the tests above."""
    b, length = sym("b", "L")
    kw = softmax_consts(MASK_SCALE)
    call = ops.int_softmax(tvar("x", (b, 4, length, length), "int32"), mask=tvar("m", (b, 1, 1, length), "int8"),
                           **kw)
    assert call.op.name == SOFTMAX.OP
    assert ops.int_softmax(tvar("x", (2, 4), "int32"), mask=tvar("m", (1, 4), "int32"), **kw).op.name == SOFTMAX.OP


@pytest.mark.parametrize("shape,xdt,per_channel,shift", [
    ((2, 5, 48), "int16", False, 0),
    ((2, 2, 3, 17), "int32", True, 3),
])
def test_int_layernorm_random_shapes(shape, xdt, per_channel, shift):
    rng = np.random.default_rng(shape[-1])
    c = shape[-1]
    lo, hi = (LN_MIN, LN_MAX) if xdt == "int32" else (-2**15, 2**15 - 1)
    x = rng.integers(lo, hi, shape, endpoint=True).astype(xdt)
    if per_channel:
        bias = quant.layernorm_constants(rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c)).bias_int
    else:
        bias = np.int64(rng.integers(-2**40, 2**40))
    out = run_static(lambda xv: ops.int_layernorm(xv, bias, shift), {"x": x})
    assert_exact(out, LAYERNORM.reference(x, bias, shift), "int64", "int_layernorm")


@pytest.mark.parametrize("ids_shape,ids_dtype,vocab,dim", [
    ((5,), "int64", 50, 9),
    ((3, 7), "int32", 1000, 16),
    ((2, 3, 4), "int64", 7, 3),
    ((), "int64", 11, 5),
])
def test_embedding_random_shapes(ids_shape, ids_dtype, vocab, dim):
    rng = np.random.default_rng(vocab)
    table = rng.integers(-128, 128, (vocab, dim), dtype=np.int8)
    ids = rng.integers(0, vocab, ids_shape).astype(ids_dtype)
    out = run_static(lambda iv: ops.embedding(iv, table), {"ids": ids})
    assert_exact(out, EMBEDDING.reference(ids, table), "int8", "embedding")


# ================================================================ (b) Hypothesis at the extremes


@functools.lru_cache(maxsize=None)
def _linear_vm(with_bias: bool):
    n, k, c = sym("n", "k", "c")
    params = [tvar("x", (n, k), "int8"), tvar("w", (c, k), "int8")]
    if with_bias:
        params.append(tvar("b", (c,), "int32"))
    return compile_vm(params, lambda *p: ops.linear(*p))


@st.composite
def linear_case(draw):
    n, k, c = draw(st.integers(1, 4)), draw(st.integers(1, 40)), draw(st.integers(1, 9))
    x = draw(arr("int8", (n, k), -128, 127))
    w = draw(arr("int8", (c, k), -128, 127))
    bound = I32_MAX - k * 128 * 128  # the int32 accumulator's headroom (ops.linear's check)
    b = draw(st.none() | arr("int32", (c,), -bound, bound))
    return x, w, b


@settings(max_examples=40, **HYP)
@given(linear_case())
def test_linear_hypothesis(case):
    x, w, b = case
    fn = _linear_vm(b is not None)
    out = fn(x, w) if b is None else fn(x, w, b)
    assert_exact(out, LINEAR.reference(x, w, b), "int32", "linear")


@functools.lru_cache(maxsize=None)
def _matmul_vm(a_dtype: str, transpose_b: bool):
    bt, m, k, n = sym("bt", "m", "k", "n")
    bshape = (bt, n, k) if transpose_b else (bt, k, n)
    return compile_vm([tvar("a", (bt, m, k), a_dtype), tvar("b", bshape, "int8")],
                      lambda a, b: ops.matmul(a, b, transpose_b=transpose_b))


@st.composite
def matmul_case(draw):
    a_dtype, transpose_b = draw(st.sampled_from([("int8", True), ("int8", False), ("int16", False)]))
    bt, m, k, n = (draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 40)),
                   draw(st.integers(1, 7)))
    a = draw(arr(a_dtype, (bt, m, k), *((-128, 127) if a_dtype == "int8" else (-256, 256)), extra=(255,)))
    b = draw(arr("int8", (bt, n, k) if transpose_b else (bt, k, n), -128, 127))
    return a, b, transpose_b


@settings(max_examples=40, **HYP)
@given(matmul_case())
def test_matmul_hypothesis(case):
    a, b, transpose_b = case
    out = _matmul_vm(str(a.dtype), transpose_b)(a, b)
    assert_exact(out, MATMUL.reference(a, b, transpose_b), "int32", "matmul")


@functools.lru_cache(maxsize=None)
def _requant_vm(x_dtype: str, bits: int, res_dtype: str | None, side: str | None = None, input_clamp: int = 0):
    """requantize with (M, E) as runtime int64 parameters (built with make_call: `ops.requantize`
    only takes numpy/int constants). Values must be pre-folded like the builder does (`_dyadic`).
    `side` "hi" / "lo" / "above" declares every shift >= 31 / < 31 / >= 32 (the attributes `ops.requantize`
    sets from known shifts), so that the wide product is built for that side only. `input_clamp` X declares that every
    channel saturates beyond |x| = X (what `ops.requantize` sets from known constants): int64 inputs are
    clamped there and take one product."""
    n, c = sym("n", "c")
    params = [tvar("x", (n, c), x_dtype), tvar("m", (c,), "int64"), tvar("e", (c,), "int64")]
    if res_dtype is not None:
        params += [tvar("y", (n, c), res_dtype), tvar("m1", (c,), "int64"), tvar("e1", (c,), "int64")]
    attrs = {None: {}, "hi": {"shift_min": 31, "shift_max": 93}, "lo": {"shift_min": 0, "shift_max": 30},
             "above": {"shift_min": 32, "shift_max": 93}}[side]
    attrs.update({"input_clamp": input_clamp} if input_clamp else {})
    return compile_vm(params, lambda *p: make_call("ibert.requantize", list(p), bits=bits, **attrs))


def _requant_wide_by_side(x: np.ndarray, fm: np.ndarray, fe: np.ndarray, bits: int, above: bool = False
                          ) -> np.ndarray:
    """The wide requantize built for one side of E = 31, run on the channels whose shift lies there (both
    sides' outputs, stitched per channel); `above`: built for E >= 32 (E = 31 is the one case the E >= 31
    rounding treats apart) on those channels, the unrestricted build on the others."""
    out = np.zeros(x.shape, np.int64)
    sides = (("above", fe >= 32), (None, fe < 32)) if above else (("hi", fe >= 31), ("lo", fe < 31))
    for side, cols in sides:
        if cols.any():
            out[:, cols] = _requant_vm("int64", bits, None, side)(np.ascontiguousarray(x[:, cols]), fm[cols], fe[cols])
    return out


def fold(m, e, wide: bool):
    """The builder's own check-and-fold of (M, E) (shifts past the exact range become (0, 0))."""
    max_shift = REQUANT.WIDE_MAX_SHIFT if wide else REQUANT.NARROW_MAX_SHIFT
    return REQUANT._dyadic(np.asarray(m, np.int64), np.asarray(e, np.int64), max_shift, "test")


M_EDGES = [1 << 31, -(1 << 31), (1 << 31) - 1, 1 << 30, -(1 << 30), (1 << 30) + 1, 1, -1, 0]


@st.composite
def dyadic(draw, c: int, e_lo: int, e_hi: int):
    """Per-channel (M, E): from real scales through quant.requant_dyadic, or raw values at the bounds."""
    if draw(st.booleans()):
        s_in = draw(st.lists(log_uniform(1e-12, 1.0), min_size=c, max_size=c))
        s_out = draw(log_uniform(1e-12, 1.0))
        sign = draw(st.sampled_from([1, -1]))
        d = quant.requant_dyadic(np.array(s_in, np.float32) * np.float32(sign), s_out)
        assume(np.all(d.shift >= e_lo) and np.all(d.shift <= max(e_hi, 200)))
        return d.multiplier.astype(np.int64), d.shift.astype(np.int64)
    m = draw(st.lists(st.sampled_from(M_EDGES) | st.integers(-(1 << 31), 1 << 31), min_size=c, max_size=c))
    e = draw(st.lists(ints(e_lo, e_hi, extra=(31, 62, 63, 93, 94)), min_size=c, max_size=c))
    return np.array(m, np.int64), np.array(e, np.int64)


# (input dtype, bits, residual dtype): every dtype, width and residual kind, in 8 compiles
REQUANT_COMBOS = [("int8", 8, None), ("int16", 16, "int8"), ("int32", 8, None), ("int32", 22, "int32"),
                  ("int32", 32, "int16"), ("int8", 32, "int32"), ("int16", 22, None), ("int32", 16, "int8")]


@st.composite
def requant_narrow_case(draw):
    x_dtype, bits, res_dtype = draw(st.sampled_from(REQUANT_COMBOS))
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    info = np.iinfo(x_dtype)
    x = draw(arr(x_dtype, (n, c), int(info.min), int(info.max)))
    m, e = draw(dyadic(c, 0, 100))
    res = None
    if res_dtype is not None:
        ri = np.iinfo(res_dtype)
        y = draw(arr(res_dtype, (n, c), int(ri.min), int(ri.max)))
        # E1 >= 1 keeps |rne(y M1 / 2^E1)| <= 2^61; the E = E1 = 0 sum of two 2^62 terms is in test_overflow.
        m1, e1 = draw(dyadic(c, 1, 100))
        res = (y, m1, e1)
    return x, m, e, bits, res


@settings(max_examples=60, **HYP)
@given(requant_narrow_case())
def test_requantize_narrow_hypothesis(case):
    x, m, e, bits, res = case
    fm, fe = fold(m, e, wide=False)
    fn = _requant_vm(str(x.dtype), bits, None if res is None else str(res[0].dtype))
    if res is None:
        out, ref = fn(x, fm, fe), REQUANT.reference(x, m, e, bits)
    else:
        y, m1, e1 = res
        fm1, fe1 = fold(m1, e1, wide=False)
        out, ref = fn(x, fm, fe, y, fm1, fe1), REQUANT.reference(x, m, e, bits, y, m1, e1)
    assert_exact(out, ref, {8: "int8", 16: "int16", 22: "int32", 32: "int32"}[bits], "requantize narrow")


@st.composite
def requant_wide_case(draw):
    """int64 input |x| < 2^62 (i-GELU / LayerNorm outputs). x is drawn per channel so that the exact
    result x M / 2^E fits in int64 (the documented precondition of the split product); results past int64
    are driven in test_overflow."""
    bits = draw(st.sampled_from([8, 16, 22, 32]))
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    m, e = draw(dyadic(c, 0, 120))
    cols = []
    for mi, ei in zip(m.tolist(), e.tolist()):
        bound = (1 << 62) - 1
        if mi != 0 and ei <= 93:
            bound = min(bound, ((1 << (63 + ei)) - 1) // abs(mi))
        cols.append(draw(arr("int64", (n,), -bound, bound, extra=(1 << 31, -(1 << 31), 1 << 45))))
    return np.stack(cols, axis=1), m, e, bits


@settings(max_examples=50, **HYP)
@given(requant_wide_case())
def test_requantize_wide_hypothesis(case):
    x, m, e, bits = case
    fm, fe = fold(m, e, wide=True)
    out = _requant_vm("int64", bits, None)(x, fm, fe)
    ref = REQUANT.reference(x, m, e, bits)
    assert_exact(out, ref, None, "requantize wide")
    assert_exact(_requant_wide_by_side(x, fm, fe, bits), ref, None, "requantize wide, one side of E = 31")
    assert_exact(_requant_wide_by_side(x, fm, fe, bits, above=True), ref, None, "requantize wide, E >= 32 apart")
    saturation = REQUANT.saturation_clamp(fm, fe, bits)
    if saturation:
        out = _requant_vm("int64", bits, None, input_clamp=saturation)(x, fm, fe)
        assert_exact(out, ref, None, f"requantize, input clamped to +-{saturation}")


@st.composite
def tie_case(draw, wide: bool):
    """Every element is an exact tie: x M = odd * 2^(E-1), i.e. x M / 2^E = k + 1/2."""
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    e_max, x_bits = (93, 62) if wide else (62, 31)
    ms, es, cols = [], [], []
    for _ in range(c):
        mi = draw(st.sampled_from(M_EDGES[:-1]) | st.integers(1, 1 << 31)) * draw(st.sampled_from([1, -1]))
        vm = v2(mi)
        s = draw(st.integers(0, min(x_bits - 1, e_max - 1 - vm)))  # x = u 2^s, E = s + v2(M) + 1
        u_max = (1 << (x_bits - s)) - 1
        if wide:  # |x M / 2^E| = |u M_odd| / 2 must fit int64
            u_max = min(u_max, ((1 << 63) // abs(mi >> vm)) - 1)
        us = []
        for _ in range(n):
            u = draw(ints(0, (u_max - 1) // 2, extra=(1, 2**20))) * 2 + 1  # odd, 1 <= u <= u_max
            us.append(u * draw(st.sampled_from([1, -1])))
        ms.append(mi)
        es.append(s + vm + 1)
        cols.append([ui << s for ui in us])
    x = np.array(cols, dtype=np.int64).T.copy()
    return x, np.array(ms, np.int64), np.array(es, np.int64)


@settings(max_examples=40, **HYP)
@given(tie_case(wide=False), st.sampled_from([16, 32]))
def test_requantize_round_half_even_ties_narrow(case, bits):
    x64, m, e = case
    x = x64.astype(np.int32)
    assert all((int(v) * int(mi)) % (1 << int(ei)) == 1 << (int(ei) - 1)
               for row in x for v, mi, ei in zip(row, m, e))  # the inputs really are ties
    out = _requant_vm("int32", bits, None)(x, *fold(m, e, wide=False))
    assert_exact(out, REQUANT.reference(x, m, e, bits), None, "requantize ties")


@settings(max_examples=40, **HYP)
@given(tie_case(wide=True))
def test_requantize_round_half_even_ties_wide(case):
    x, m, e = case
    fm, fe = fold(m, e, wide=True)
    ref = REQUANT.reference(x, m, e, 32)
    assert_exact(_requant_vm("int64", 32, None)(x, fm, fe), ref, "int32", "requantize wide ties")
    assert_exact(_requant_wide_by_side(x, fm, fe, 32), ref, None, "requantize wide ties, one side of E = 31")
    assert_exact(_requant_wide_by_side(x, fm, fe, 32, above=True), ref, None, "requantize wide ties, E >= 32 apart")


def test_requantize_uniform_channels_become_immediates():
    """Per-channel (M, E) that hold one pair become per-tensor in the builder, and per-tensor constants reach
    the kernel as immediates (no constant parameters left); the integers equal the exact reference, also
    for a residual whose (M1, E1) are per-tensor."""
    m, e = np.full(6, 1234567891, np.int64), np.full(6, 40, np.int64)
    x = np.array([[I32_MIN, I32_MAX, -1, 0, 1, 890], [3 << 20, -(3 << 20), 1 << 29, 7, -7, 5]], np.int32)
    y = np.arange(-60, 60, 10, dtype=np.int8).reshape(2, 6)
    build = lambda xv, yv: ops.requantize(xv, m, e, 8, yv, np.full(6, 1 << 30), np.full(6, 31))  # noqa: E731
    mod = single_op_module(build, {"x": x, "y": y})
    call = mod["main"].body.blocks[0].bindings[-1].value
    assert [a.ty.ndim for a in call.args[1:]] == [0, 0, 2, 0, 0]
    kernel = [f for _, f in relax.transform.LegalizeOps()(mod).functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert [len(f.params) for f in kernel] == [3]  # x, y and the output
    out = run_static(build, {"x": x, "y": y})
    assert_exact(out, REQUANT.reference(x, m, e, 8, y, np.full(6, 1 << 30), np.full(6, 31)), "int8",
                 "requantize with immediates")


@pytest.mark.parametrize("m, kernel_dtype", [
    ([I32_MIN, I32_MAX, -1, 1 << 30, -(1 << 30) - 7, 3], "int32"),
    ([I32_MIN, 1 << 31, -1, 1 << 30, -(1 << 30) - 7, 3], "int64"),  # one value past int32 keeps int64
])
def test_per_channel_constants_reach_the_kernel_as_int32_where_they_fit(m, kernel_dtype):
    """A per-channel int64 constant whose values all fit int32 is handed to the kernel as int32 (half the
    bytes, widening int32 products); the integers equal the exact reference at the int32 ends either way."""
    m, e = np.array(m, np.int64), np.array([0, 31, 62, 40, 45, 1], np.int64)
    x = np.array([[I32_MIN, I32_MAX, -1, 0, 1, 890], [3 << 20, -(3 << 20), 1 << 29, 7, -7, I32_MIN]], np.int32)
    build = lambda xv: ops.requantize(xv, m, e, 32)  # noqa: E731
    kernel, = [f for _, f in relax.transform.LegalizeOps()(single_op_module(build, {"x": x})).functions_items()
               if isinstance(f, tvm.tirx.PrimFunc)]
    params = [str(p.dtype) for p in kernel.params]
    assert params == ["int32", kernel_dtype, "int32", "int32"]  # x, M, E (0..62), out
    assert_exact(run_static(build, {"x": x}), REQUANT.reference(x, m, e, 32), "int32", "requantize, int32 ends")


def test_requantize_ties_round_to_even_explicit():
    """0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -1.5 -> -2, -2.5 -> -2 (HF torch.round), M = 1, E = 1."""
    x = np.array([[1, 3, 5, -1, -3, -5, 7, -7]], np.int32)
    out = _requant_vm("int32", 8, None)(x, *fold(np.ones(8, np.int64), np.ones(8, np.int64), wide=False))
    assert out.tolist() == [[0, 2, 2, 0, -2, -2, 4, -4]]
    assert_exact(out, REQUANT.reference(x, np.ones(8, np.int64), np.ones(8, np.int64), 8), "int8")


@functools.lru_cache(maxsize=None)
def _gelu_vm(per_channel: bool, narrow: bool = False):
    """i-GELU with run-time constants; `narrow` declares them int32-bounded (what `ops.int_gelu` sets from
    known constants), so the int32 arithmetic is built."""
    n, c = sym("n", "c")
    pshape = (c,) if per_channel else ()
    attrs = {"narrow": 1} if narrow else {}
    return compile_vm([tvar("x", (n, c), "int32")] + [tvar(k, pshape, "int64") for k in ("b", "cc", "q1")],
                      lambda x, b, cc, q1: make_call("ibert.int_gelu", [x, b, cc, q1], **attrs))


@st.composite
def gelu_case(draw):
    per_channel = draw(st.booleans())
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 7))
    scales = np.array(draw(st.lists(log_uniform(float(GELU_MIN_SCALE), 1.0), min_size=c if per_channel else 1,
                                    max_size=c if per_channel else 1)), np.float32)
    g = quant.gelu_constants(scales)
    cols = []
    for j in range(c):
        b = int(g.b_int[j if per_channel else 0])
        # the clip point of min(|q|, -b) and its neighbours, both signs, with the int32 ends
        edges = (-b, -b - 1, -b + 1, b, b + 1, b - 1, I32_MAX - 1)
        cols.append(draw(arr("int32", (n,), I32_MIN, I32_MAX, extra=edges)))
    x = np.stack(cols, axis=1)
    consts = (g.b_int, g.c_int, g.q1) if per_channel else (g.b_int[0], g.c_int[0], g.q1[0])
    return x, consts, per_channel, g


@settings(max_examples=50, **HYP)
@given(gelu_case())
def test_int_gelu_hypothesis(case):
    x, consts, per_channel, _ = case
    out = _gelu_vm(per_channel)(x, *[np.asarray(k, np.int64) for k in consts])
    ref = GELU.reference(x, *consts)
    assert_exact(out, ref, "int64", "int_gelu")
    if GELU.int32_bounded(*consts):
        narrow = _gelu_vm(per_channel, narrow=True)(x, *[np.asarray(k, np.int64) for k in consts])
        assert_exact(narrow, ref, "int64", "int_gelu in int32")
    assert np.all(np.abs(ref.astype(object)) < quant.INT64_SAFE)  # gelu_constants' promise


@settings(max_examples=30, **HYP)
@given(gelu_case(), log_uniform(1e-4, 1.0))
def test_int_gelu_then_requantize_int8(case, out_scale):
    """The FFN chain: i-GELU (negative per-channel scale) -> 8-bit requantization of its int64 output."""
    x, consts, per_channel, g = case
    y = _gelu_vm(per_channel)(x, *[np.asarray(k, np.int64) for k in consts])
    s = g.out_scale if per_channel else np.full(x.shape[1], g.out_scale[0], np.float32)
    d = quant.requant_dyadic(s, float(out_scale))
    assume(np.all(d.shift >= 0))
    out = _requant_vm("int64", 8, None)(y, *fold(d.multiplier, d.shift, wide=True))
    assert_exact(out, REQUANT.reference(GELU.reference(x, *consts), d.multiplier, d.shift, 8), "int8",
                 "gelu -> requantize")


def test_requantize_nested_on_int_gelu_equals_the_two_step_form():
    """`requantize(int_gelu(x, ...))` built unemitted (its input's dtype not yet known) with i-GELU's usual
    shifts above 62: it gave all zeros (the shifts were folded as for a narrow input, found by a fuzz); it now
    equals requantize of an emitted int64 input, and the exact reference, with the same constants."""
    g = quant.gelu_constants(np.full(4, 1e-5, np.float32))
    d = quant.requant_dyadic(g.out_scale, 0.05)
    assert d.shift.min() > 62  # the case the narrow fold got wrong
    x = np.array([[100000, 200000, -50000, 400000], [I32_MIN, I32_MAX, -1, 0]], np.int32)
    ref = REQUANT.reference(GELU.reference(x, g.b_int, g.c_int, g.q1), d.multiplier, d.shift, 8)
    assert np.count_nonzero(ref) >= 4
    nested = run_static(lambda v: ops.requantize(ops.int_gelu(v, g.b_int, g.c_int, g.q1), d.multiplier, d.shift, 8),
                        {"x": x})
    y = run_static(lambda v: ops.int_gelu(v, g.b_int, g.c_int, g.q1), {"x": x})
    two_step = run_static(lambda v: ops.requantize(v, d.multiplier, d.shift, 8), {"y": y})
    assert_exact(two_step, ref, "int8", "gelu, then requantize of its int64 output")
    assert_exact(nested, two_step, "int8", "requantize(int_gelu(...)) nested")


UNTYPED_X = {  # an int32 input at its ends, an int64 one up to 2^62 (i-GELU's range), with shifts up to 93
    "int32": (np.array([I32_MIN, I32_MAX, I32_MIN + 1, -1, 0, 1 << 30]),
              [[62, 62, 63, 0, 62, 93], [63, 70, 93, 31, 64, 62]]),
    "int64": (np.array([(1 << 62) - 1, -(1 << 62), 3 << 60, -(5 << 58), 1 << 40, -1]), [[93, 93, 92, 80, 63, 62]] * 2),
}


@pytest.mark.parametrize("x_dtype", list(UNTYPED_X))
def test_requantize_of_an_untyped_input_is_exact_past_shift_62(x_dtype):
    """An input whose dtype the builder cannot know (an unemitted non-ibert call, here a cast) keeps shifts up
    to 93: an int64 one gave 0 where they passed 62; the narrow kernel takes them too (past 62: 0; at 62,
    |x M| = 2^62 gives 1)."""
    x, shifts = UNTYPED_X[x_dtype]
    x = x.astype(x_dtype)
    m = np.array([1 << 31, -(1 << 31), 1 << 31, 1 << 31, 7, 1 << 31])
    for e in map(np.array, shifts):
        out = run_static(lambda v: ops.requantize(relax.op.astype(v, x_dtype), m, e, 32), {"x": x})
        ref = REQUANT.reference(x, m, e, 32)
        assert np.any(ref != 0)
        assert_exact(out, ref, "int32", f"requantize({x_dtype} cast), E={e}")


def _softmax_path(s) -> tuple[bool, bool]:
    """(polynomial in int32, exp rescale in one int64 product) that int_softmax picks for scale s."""
    kw = softmax_consts(s)
    dtype, one_product = SOFTMAX.arithmetic(kw["x0_int"], kw["b_int"], kw["c_int"], kw["exp_multiplier"])
    return dtype == "int32", one_product


def _beside(s: np.float32) -> list[float]:
    """s and its float32 neighbour below: the two sides of an arithmetic switch found by `boundary_scale`."""
    return [float(s), float(np.nextafter(s, np.float32(0)))]


# Each side of the switches from int32 to int64 arithmetic and from one product to the split (wide) one.
SOFTMAX_INT32_SCALE = boundary_scale(lambda s: _softmax_path(s)[0], float(SOFTMAX_MIN_SCALE), 1e-1)
SOFTMAX_ONE_PRODUCT_SCALE = boundary_scale(lambda s: _softmax_path(s)[1], float(SOFTMAX_MIN_SCALE), 1e-1)
SOFTMAX_HYP_SCALES = [float(SOFTMAX_MAX_SCALE), 1e-1, *_beside(SOFTMAX_INT32_SCALE),
                      *_beside(SOFTMAX_ONE_PRODUCT_SCALE), float(SOFTMAX_MIN_SCALE)]


def test_softmax_scales_cover_every_arithmetic_path():
    """The hypothesis scales reach all three paths: int32 + one product, int64 + one product or not."""
    paths = {_softmax_path(s) for s in SOFTMAX_HYP_SCALES}
    assert {(True, True), (False, False)} <= paths and len(paths) >= 3, paths


@functools.lru_cache(maxsize=None)
def _softmax_vm(scale: float, masked: bool = False, exp_scale: float | None = None):
    n, length = sym("n", "L")
    kw = softmax_consts(scale, exp_scale)
    params = [tvar("x", (n, length), "int32")] + ([tvar("m", (n, length), "int32")] if masked else [])
    return compile_vm(params, lambda x, *m: ops.int_softmax(x, mask=m[0] if m else None, **kw)), kw


@st.composite
def scores(draw, scale: float, n: int, length: int):
    """Rows around a random base, spread over ~1 LSB, the i-exp range (30 |x0|), or all of int32."""
    x0 = softmax_consts(scale)["x0_int"]
    spread = draw(st.sampled_from([1, abs(x0), 30 * abs(x0) + 2, 1 << 31]))
    base = draw(ints(I32_MIN, I32_MAX))
    off = draw(arr("int64", (n, length), -spread, spread, extra=(30 * x0, 30 * x0 + 1, 30 * x0 - 1, x0)))
    return np.clip(base + off, I32_MIN, I32_MAX).astype(np.int32)


@st.composite
def softmax_case(draw):
    scale = draw(st.sampled_from(SOFTMAX_HYP_SCALES))
    n, length = draw(st.integers(1, 4)), draw(st.integers(1, 24))
    return scale, draw(scores(scale, n, length))


@settings(max_examples=40, **HYP)
@given(softmax_case())
def test_int_softmax_hypothesis(case):
    scale, x = case
    fn, kw = _softmax_vm(scale)
    out = fn(x)
    assert_exact(out, SOFTMAX.reference(x, **kw), "int16", f"int_softmax S={scale}")
    assert out.min() >= 0 and out.max() <= 256


@st.composite
def masked_softmax_case(draw):
    n, length = draw(st.integers(1, 4)), draw(st.integers(1, 24))
    x = draw(scores(1e-1, n, length))
    return x, draw(arr("int32", x.shape, 0, 1))


@settings(max_examples=25, **HYP)
@given(masked_softmax_case())
def test_int_softmax_masked_hypothesis(case):
    """Random 0/1 masks over the same extreme scores (one compile, S = 0.1)."""
    x, m = case
    scale = 1e-1
    fn, kw = _softmax_vm(scale, masked=True)
    out = fn(x, m)
    assert_exact(out, SOFTMAX.reference(x, mask=m, **kw), "int16", "int_softmax masked")
    assert out.min() >= 0 and out.max() <= 256


@functools.lru_cache(maxsize=None)
def _layernorm_vm(shift: int, x_dtype: str = "int32", per_channel: bool = True):
    n, c = sym("n", "c")
    return compile_vm([tvar("x", (n, c), x_dtype), tvar("b", (c,) if per_channel else (), "int64")],
                      lambda x, b: ops.int_layernorm(x, b, shift))


@st.composite
def layernorm_case(draw):
    shift = draw(st.sampled_from([0, 5]))
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 64))
    mode = draw(st.sampled_from(["extremes", "uniform", "narrow"]))
    if mode == "extremes":
        x = draw(hnp.arrays(np.int32, (n, c), elements=st.sampled_from([LN_MIN, LN_MAX, LN_MIN + 1, 0])))
    elif mode == "uniform":
        x = draw(arr("int32", (n, c), LN_MIN, LN_MAX))
    else:
        base = draw(ints(LN_MIN + 64, LN_MAX - 64))
        x = (base + draw(arr("int32", (n, c), -64, 64))).astype(np.int32)
    if draw(st.booleans()):
        gamma = np.array(draw(st.lists(st.floats(0.01, 10.0), min_size=c, max_size=c)), np.float32)
        gamma *= np.float32(draw(st.sampled_from([1, -1])))
        beta = np.array(draw(st.lists(st.floats(-10.0, 10.0), min_size=c, max_size=c)), np.float32)
        bias = quant.layernorm_constants(gamma, beta).bias_int
    else:
        bias = draw(arr("int64", (c,), -(1 << 61) + 1, (1 << 61) - 1))
    return x, bias, shift


@settings(max_examples=40, **HYP)
@given(layernorm_case())
def test_int_layernorm_hypothesis(case):
    x, bias, shift = case
    out = _layernorm_vm(shift)(x, bias)
    ref = LAYERNORM.reference(x, bias, shift)
    assert_exact(out, ref, "int64", f"int_layernorm shift={shift}")
    normed = np.abs(out.astype(object) - bias.astype(object))
    assert np.all(normed < 1 << 31)  # |y F / 2| stays below 2^31 (module docstring)
    if shift == 0:
        assert np.all(normed <= 1 << 30)  # |y| <= isqrt(var) when nothing is shifted out (spec §4.3.5)


@functools.lru_cache(maxsize=None)
def _embedding_vm(ids_dtype: str):
    n, length, v, d = sym("n", "L", "V", "D")
    return compile_vm([tvar("ids", (n, length), ids_dtype), tvar("t", (v, d), "int8")],
                      lambda i, t: ops.embedding(i, t))


@st.composite
def embedding_case(draw):
    vocab, dim = draw(st.integers(1, 300)), draw(st.integers(1, 9))
    table = draw(arr("int8", (vocab, dim), -128, 127))
    ids_dtype = draw(st.sampled_from(["int32", "int64"]))
    ids = draw(arr(ids_dtype, (draw(st.integers(1, 3)), draw(st.integers(1, 12))), 0, vocab - 1))
    return ids, table


@settings(max_examples=30, **HYP)
@given(embedding_case())
def test_embedding_hypothesis(case):
    ids, table = case
    out = _embedding_vm(str(ids.dtype))(ids, table)
    assert_exact(out, EMBEDDING.reference(ids, table), "int8", "embedding")


# ================================================================ (c) documented corner cases


def test_int_softmax_fully_masked_row_through_the_pipeline_is_zero(tmp_path):
    """The same through the project pipeline for this CPU, vectorized: a condition on the row sum let TVM's
    simplifier drop the divisor's guard, and the row with no key divided by 0 (SIGFPE, the process killed) on
    x86 with AVX-512; inputs that skip Python's checks (the C++ driver) reached it. The library runs in a
    process of its own, so that such a crash fails this test alone."""
    from ibert_tvm.relay_passes.pipeline import build
    from ibert_tvm.targets import resolve_target

    kw = softmax_consts(MASK_SCALE)
    params = [tvar("x", (2, 3, 5, 11), "int32"), tvar("m", (2, 1, 1, 11), "int32")]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(ops.int_softmax(params[0], mask=params[1], **kw))
        bb.emit_func_output(out)
    x = np.random.default_rng(6).integers(-3000, 3000, (2, 3, 5, 11)).astype(np.int32)
    m = np.ones((2, 1, 1, 11), np.int32)
    m[1] = 0
    build(bb.get(), resolve_target("llvm").target).export_library(str(tmp_path / "softmax.so"))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "m.npy", m)
    script = ("import sys, numpy as np, tvm; from tvm import relax; d = sys.argv[1]; "
              "vm = relax.VirtualMachine(tvm.runtime.load_module(d + '/softmax.so'), tvm.cpu()); "
              "args = [tvm.runtime.tensor(np.load(f'{d}/{n}.npy')) for n in ('x', 'm')]; "
              "np.save(d + '/out.npy', vm['main'](*args).numpy())")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the library's run ended with status {proc.returncode} (SIGFPE: -8): {proc.stderr}"
    out = np.load(tmp_path / "out.npy")
    assert_exact(out, SOFTMAX.reference(x, mask=m, **kw), "int16", "fully masked batch, project pipeline")
    assert np.all(out[1] == 0) and np.all(out[0].sum(axis=-1) > 0)


def test_int_softmax_fully_masked_row_is_zero():
    """A row with no unmasked entry is defined as all zeros (HF gives NaN there); other rows are unaffected."""
    rng = np.random.default_rng(5)
    # padding mask (B, 1, 1, L): batch 1 has no key at all
    fn, kw = _softmax_mask_vm("padding_int8")
    x = rng.integers(-3000, 3000, (2, 3, 5, 11)).astype(np.int32)
    m = np.ones((2, 1, 1, 11), np.int8)
    m[0, ..., 7:] = 0
    m[1] = 0
    out = fn(x, m)
    assert np.all(out[1] == 0) and np.all(out[0, ..., 7:] == 0)
    assert np.all(out[0].sum(axis=-1) > 0)
    assert_exact(out, SOFTMAX.reference(x, mask=m, **kw), "int16", "fully masked batch")
    # row mask (1, H, Lq, 1): whole query rows masked, including at extreme scores
    fn, kw = _softmax_mask_vm("rows_int64")
    x = rng.integers(-3000, 3000, (2, 3, 5, 11)).astype(np.int32)
    x[0, 0, 0] = I32_MAX
    x[1, 2, 4] = I32_MIN
    m = np.ones((1, 3, 5, 1), np.int64)
    m[0, 0, 0] = 0
    m[0, 2, 4] = 0
    m[0, 1] = 0
    out = fn(x, m)
    assert np.all(out[:, 0, 0] == 0) and np.all(out[:, 2, 4] == 0) and np.all(out[:, 1] == 0)
    assert np.all(out[:, 0, 1:].sum(axis=-1) > 0)
    assert_exact(out, SOFTMAX.reference(x, mask=m, **kw), "int16", "fully masked rows")


@pytest.mark.parametrize("scale", [1e-3])
def test_int_softmax_one_hot_row_gives_256(scale):
    """256 occurs when one entry holds the whole row and its e16 is a power of two: S16 = c' 2^30 / 2^14."""
    s = np.float32(scale)
    exp_scale = quant.softmax_exp_range(s) / 2.0**14
    fn, kw = _softmax_vm(float(s), exp_scale=exp_scale)
    x0 = kw["x0_int"]
    x = np.array([
        [5000, 5000 + 30 * x0, 5000 + 30 * x0 - 1, I32_MIN, 5000 + 60 * x0],  # all but the max clamped
        [I32_MIN, I32_MIN, I32_MAX, I32_MIN, I32_MIN],
        [7, 7 + 40 * x0, 7 + 40 * x0, 7 + 40 * x0, 7 + 40 * x0],
    ], np.int32)
    out = fn(x)
    assert out[0].tolist() == [256, 0, 0, 0, 0]
    assert out[1].tolist() == [0, 0, 256, 0, 0]
    assert out[2].tolist() == [256, 0, 0, 0, 0]
    assert_exact(out, SOFTMAX.reference(x, **kw), "int16", "one-hot")
    single = fn(np.array([[123], [I32_MIN], [I32_MAX]], np.int32))  # rows of length 1
    assert single.tolist() == [[256], [256], [256]]


@pytest.mark.parametrize("scale", [float(SOFTMAX_MAX_SCALE), 1e-1, float(SOFTMAX_MIN_SCALE)])
def test_int_softmax_one_hot_row_calibrated_is_255(scale):
    """With HF's calibration the row max maps to e16 = 32767, so a one-hot row gives 255 (spec §3.3.7)."""
    fn, kw = _softmax_vm(scale)
    x = np.array([[I32_MAX] + [I32_MIN] * 6, [0] * 3 + [1 << 30] + [0] * 3], np.int32)
    out = fn(x)
    assert out.tolist() == [[255] + [0] * 6, [0] * 3 + [255] + [0] * 3]
    assert_exact(out, SOFTMAX.reference(x, **kw), "int16", "one-hot calibrated")


@pytest.mark.parametrize("shift", [0, 5, 12])
def test_int_layernorm_constant_row_is_bias(shift):
    """A constant row gives exactly bias_int (HF divides by zero there)."""
    c = 24
    rng = np.random.default_rng(shift)
    bias = quant.layernorm_constants(rng.uniform(-2, 2, c), rng.normal(0, 1, c)).bias_int
    bias[:3] = [(1 << 61) - 1, -(1 << 61) + 1, 0]
    consts = [LN_MIN, LN_MAX, 0, -1, 1, 12345]
    x = np.array([[v] * c for v in consts], np.int32)
    out = _layernorm_vm(shift)(x, bias)
    assert np.array_equal(out, np.broadcast_to(bias, out.shape))
    assert_exact(out, LAYERNORM.reference(x, bias, shift), "int64")
    if shift == 5:  # the int16 (embedding LayerNorm) input
        x16 = np.array([[v] * c for v in (-2**15, 2**15 - 1, 0)], np.int16)
        out16 = _layernorm_vm(shift, "int16")(x16, bias)
        assert np.array_equal(out16, np.broadcast_to(bias, out16.shape))


def test_int_layernorm_zero_shifted_variance():
    """Rows whose shifted variance is 0 (but are not constant) are normalised as if isqrt(var) were 1."""
    shift, c = 12, 64
    base = np.array([LN_MIN, 0, LN_MAX - 4095], np.int64)
    offs = np.zeros(c, np.int64)
    offs[[3, 17, 40]] = [1, 4095, 2000]  # small spread: most shifted values are floor(-96 / 4096) = -1
    x = (base[:, None] + offs[None, :]).astype(np.int32)
    bias = np.zeros(c, np.int64)
    out = _layernorm_vm(shift)(x, bias)
    assert_exact(out, LAYERNORM.reference(x, bias, shift), "int64", "zero shifted variance")
    # a row where every y lies in [0, 2^shift): y >> shift == 0 everywhere
    y = np.zeros(c, np.int64)
    y[5] = 31  # mean 31/64 -> rne 0
    x2 = (np.int64(LN_MIN) + y)[None, :].astype(np.int32)
    out2 = _layernorm_vm(shift)(x2, bias)
    factor = (1 << 31) // (1 << shift)
    assert out2[0].tolist() == [(int(v) * factor) // 2 for v in y]
    assert_exact(out2, LAYERNORM.reference(x2, bias, shift), "int64")


def _row_with_variance(target: int, c: int) -> np.ndarray:
    """A row of c channels in [LN_MIN, LN_MAX], mean rounding to 0, with sum of squares exactly `target`."""
    vals = []
    if target % 2:
        vals.append(1)  # sum 1 -> mean rne(1/c) = 0 for c >= 3
        target -= 1
    rest = target // 2  # pairs (a, -a) add 2 a^2
    while rest:
        a = min(math.isqrt(rest), LN_MAX)
        vals += [a, -a]
        rest -= a * a
    assert len(vals) <= c
    return np.array(vals + [0] * (c - len(vals)), np.int64)


@pytest.mark.parametrize("target", [None, "cuda"])
def test_int_layernorm_isqrt_at_perfect_squares(target):
    """var = k^2 - 1, k^2, k^2 + 1 with k small enough that floor(2^31 / isqrt) changes with an off-by-one;
    in both forms of `intmath.isqrt` (built for llvm): stages, and Lets (legalized for CUDA)."""
    c = 96
    rows, targets = [], []
    for k in (1, 2, 3, 7, 255, 4097, 40000, 46339, 46340):
        for t in (k * k - 1, k * k, k * k + 1):
            row = _row_with_variance(t, c)
            assert sum(int(v) ** 2 for v in row) == t
            rows.append(row)
            targets.append(t)
    x = np.array(rows, np.int32)
    bias = np.zeros(c, np.int64)
    with tvm.target.Target(target) if target else contextlib.nullcontext():
        out = _layernorm_vm(0)(x, bias)
    assert_exact(out, LAYERNORM.reference(x, bias, 0), "int64", "isqrt edges")


@pytest.mark.parametrize("target", [None, "llvm", "cuda"])
def test_int_layernorm_isqrt_form_follows_the_target(target):
    """Stages, each marked for tuning to leave alone, unless legalized for CUDA; a Let chain there (dlight
    inlines every per-row stage, which would make 3^7 terms of the stages: `intmath.isqrt`)."""
    mod = single_op_module(lambda v: ops.int_layernorm(v, np.zeros(8, np.int64), 0),
                           {"x": np.zeros((2, 8), np.int32)})
    with tvm.target.Target(target) if target else contextlib.nullcontext():
        script = relax.transform.LegalizeOps()(mod)["ibert_int_layernorm"].script()
    staged = target != "cuda"
    assert ('sblock("row_isqrt_x7")' in script) == staged and ("T.Let(" in script) != staged
    assert script.count('"schedule_rule": "None"') == (8 if staged else 0)


def test_int_layernorm_mean_rounds_half_to_even_explicit():
    """mu = rne(sum / C) (HF round_ste): sums at k + 1/2 for even and odd k, both signs; then the spec's
    y = x - mu, var = sum y^2, F = floor(2^31 / isqrt(var)), out = floor(y F / 2), computed here by hand."""
    rows = {  # row -> the rne mean the spec requires
        (0, 0, 0, 2): 0,  # 0.5 -> 0
        (0, 0, 2, 4): 2,  # 1.5 -> 2
        (0, 0, 0, 10): 2,  # 2.5 -> 2
        (-2, 0, 0, 0): 0,  # -0.5 -> 0
        (-6, 0, 0, 0): -2,  # -1.5 -> -2
        (LN_MIN, LN_MAX, LN_MIN, LN_MAX): 0,  # -0.5 -> 0
        (LN_MAX, LN_MAX, LN_MAX, LN_MAX - 2): LN_MAX - 1,  # 2^21 - 1.5 -> 2^21 - 2 (even)
        (LN_MIN, LN_MIN, LN_MIN, LN_MIN + 2): LN_MIN,  # -2^21 + 0.5 -> -2^21 (even)
    }
    x = np.array(list(rows), np.int32)
    bias = np.zeros(4, np.int64)
    out = _layernorm_vm(0)(x, bias)
    for row, mu, got in zip(rows, rows.values(), out.tolist()):
        y = [v - mu for v in row]
        factor = (1 << 31) // max(math.isqrt(sum(v * v for v in y)), 1)
        assert got == [(v * factor) // 2 for v in y], (row, mu)
    assert_exact(out, LAYERNORM.reference(x, bias, 0), "int64", "LN mean ties")


@functools.cache
def _lookup_vm():
    return compile_vm([tvar("x", (3, 17), "int8"), tvar("table", (256,), "int8")], ops.lookup)


@settings(max_examples=20, **HYP)
@given(x=arr("int8", (3, 17), -128, 127), scale=log_uniform(1e-3, 1.0))
def test_lookup_tanh_table_is_exact(x, scale):
    """ibert.lookup equals the table indexing, and the tanh table equals rne(tanh(q S) * 127) clamped."""
    table = quant.lookup_table(np.tanh, float(scale), float(quant.TANH_OUT_SCALE))
    q = np.arange(-128, 128)
    np.testing.assert_array_equal(table, np.clip(np.round(np.tanh(q * float(scale)) * 127), -128, 127))
    assert_exact(_lookup_vm()(x, table), LOOKUP.reference(x, table), "int8", "lookup")
