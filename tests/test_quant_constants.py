"""The build-time integers of `ibert_tvm.quant` equal the ones HuggingFace's I-BERT code computes.

The reference is transformers' `models/ibert/quant_modules.py` itself, run on float32 tensors: the
integer constants it builds inside `IntGELU`, `IntSoftmax.int_exp`, `IntLayerNorm` are captured while
its own code runs (a TorchFunctionMode records every floor / floor-divide result), the (M, E) pairs of
`FixedPointMul` by wrapping its `batch_frexp`, and `QuantLinear`'s integers from the buffers it fills.
Nothing of HF's arithmetic is re-typed here, so a difference is a difference from HF (spec §6.3:
"compute every scale-derived constant exactly as HF does").

Scales: thousands of random float32 scales, log-uniform over the range each operator accepts, plus
float32 products (S_w * S_in, as the model forms them) and extreme values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers.models.ibert import quant_modules as hf

from ibert_tvm import quant

F32 = np.float32
RNG_SEED = 20210108


class FloorRecorder(TorchFunctionMode):
    """Records (name, result) of every floor-like torch call (`torch.floor`, `Tensor.__rfloordiv__`, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if "floor" in name and isinstance(out, torch.Tensor):
            self.calls.append((name, out.detach().clone()))
        return out

    def results(self, name: str, shape: tuple[int, ...]) -> list[np.ndarray]:
        return [v.numpy() for n, v in self.calls if n == name and tuple(v.shape) == shape]


def log_uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return (10.0 ** rng.uniform(np.log10(lo), np.log10(hi), n)).astype(F32)


def mismatch_message(name: str, scales: np.ndarray, ours: np.ndarray, ref: np.ndarray) -> str:
    bad = np.flatnonzero(np.asarray(ours).ravel() != np.asarray(ref).ravel())
    examples = ", ".join(
        f"S={float(np.asarray(scales).ravel()[i] if np.size(scales) > 1 else scales):.9g}: "
        f"ours {np.asarray(ours).ravel()[i]!r} vs HF {np.asarray(ref).ravel()[i]!r}" for i in bad[:4])
    return f"{name}: {bad.size} of {np.size(ref)} differ from HF ({examples})"


def assert_same(name: str, scales: np.ndarray, ours: np.ndarray, ref: np.ndarray) -> None:
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} vs HF {ref.shape}"
    assert np.array_equal(ours, ref), mismatch_message(name, scales, ours, ref)


# ---------------------------------------------------------------- symmetric scale, batch_frexp, (M, E)


@pytest.mark.parametrize("bits", [8, 16, 22, 32])
def test_symmetric_scale_matches_hf(bits):
    rng = np.random.default_rng(RNG_SEED + bits)
    lo = -log_uniform(rng, 1e-10, 1e6, 4000)
    hi = log_uniform(rng, 1e-10, 1e6, 4000)
    lo[:8] = F32([0, -1e-9, -1e-8, -1.1e-8, -3e38, 0, -1e-5, -2.0**60])
    hi[:8] = F32([0, 1e-9, 1e-8, 0.9e-8, 1.0, 3e38, 1e-5, 1.0])
    # Per-channel (QuantLinear's weights): one vectorised HF call.
    ref = hf.symmetric_linear_quantization_params(bits, torch.from_numpy(lo), torch.from_numpy(hi), True).numpy()
    ours = quant.symmetric_scale(bits, lo, hi)
    assert ours.dtype == np.float32
    assert_same(f"symmetric_scale({bits}) per-channel", hi, ours, ref)
    # Per-tensor (QuantAct): HF's python max() over (1,)-tensors.
    for i in range(0, 4000, 40):
        ref1 = hf.symmetric_linear_quantization_params(bits, torch.tensor([lo[i]]), torch.tensor([hi[i]]), False)
        assert np.array_equal(np.atleast_1d(quant.symmetric_scale(bits, lo[i], hi[i])), ref1.numpy()), (lo[i], hi[i])


def special_ratios() -> np.ndarray:
    """Doubles that stress batch_frexp: powers of two, exact .5 ties of m 2^31, m rounding up to 2^31, signs."""
    two = 2.0
    ties = [(2**30 + k + 0.5) / 2**31 for k in (0, 1, 2, 12345, 2**29, 2**30 - 1)]
    near_one = [1 - 2.0**-33, 1 - 2.0**-32, 1 - 2.0**-31, 0.5 + 2.0**-33, 0.5 + 2.0**-32]
    base = [*ties, *near_one, 0.5, 0.75, 1.0 / 3.0, 0.0]
    out = []
    for e in (-60, -40, -31, -1, 0, 1, 7, 30):
        out += [v * two**e for v in base]
    out += [-v for v in out]
    out += [1e-300, 5e-324, 1e300, float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)]
    return np.array(out, dtype=np.float64)


def test_batch_frexp_matches_hf():
    rng = np.random.default_rng(RNG_SEED)
    # The ratios FixedPointMul forms: double(float32 S_in) / double(float32 S_out).
    s_in = log_uniform(rng, 1e-12, 1e4, 20000).astype(np.float64)
    s_out = log_uniform(rng, 1e-12, 1e4, 20000).astype(np.float64)
    ratios = np.concatenate([s_in / s_out, -(s_in[:2000] / s_out[:2000]), special_ratios()])
    ref_m, ref_e = hf.batch_frexp(torch.from_numpy(ratios))
    ours = quant.batch_frexp(ratios)
    assert ours.multiplier.dtype == np.int64 and ours.shift.dtype == np.int64
    assert_same("batch_frexp M", ratios, ours.multiplier, ref_m.numpy().astype(np.int64))
    assert np.all(ref_e.numpy() == np.round(ref_e.numpy()))
    assert_same("batch_frexp E", ratios, ours.shift, ref_e.numpy().astype(np.int64))
    # The ROUND_HALF_UP mantissa: ties go away from zero, and m close to 1 gives M = 2^31.
    tie = quant.batch_frexp(np.array([(2**30 + 0.5) / 2**31, -(2**30 + 0.5) / 2**31, 1 - 2.0**-33]))
    assert tie.multiplier.tolist() == [2**30 + 1, -(2**30 + 1), 2**31]
    assert tie.shift.tolist() == [31, 31, 31]


@pytest.fixture
def fixedpointmul_frexp_calls(monkeypatch):
    """Every (ratio, M, E) that HF's FixedPointMul feeds/gets from `batch_frexp`."""
    calls = []
    original = hf.batch_frexp

    def recording(inputs, max_bit=31):
        m, e = original(inputs, max_bit)
        calls.append((inputs.clone(), m.clone(), e.clone()))
        return m, e

    monkeypatch.setattr(hf, "batch_frexp", recording)
    return calls


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_requant_dyadic_matches_fixedpointmul(per_channel, fixedpointmul_frexp_calls):
    rng = np.random.default_rng(RNG_SEED + per_channel)
    n_cases = 60
    channels = 768 if per_channel else 1
    for case in range(n_cases):
        if per_channel:  # accumulator scales S_w[c] * S_in, as QuantLinear forms them in float32
            s_in = log_uniform(rng, 1e-4, 1e-1, channels) * F32(log_uniform(rng, 1e-4, 1e-1, 1)[0])
            if case % 2:  # i-GELU / LayerNorm output scales: negative channels -> negative M
                s_in = s_in * np.where(rng.random(channels) < 0.5, F32(-1), F32(1))
        else:
            s_in = log_uniform(rng, 1e-12, 1e3, 1)
        s_out = log_uniform(rng, 1e-8, 1e2, 1)
        if case == 0:  # extremes: HF's smallest possible scale, subnormal, largest float32
            s_in[0], s_out[0] = F32(1e-8 / 127), F32(1e-8 / 32767)
        if case == 1 and not per_channel:
            s_in[0], s_out[0] = F32(1e-40), F32(3e38)
        if case == 2 and not per_channel:
            s_in[0], s_out[0] = F32(3e38), F32(1e-8 / 2097151)
        fixedpointmul_frexp_calls.clear()
        x = torch.zeros(1, 2, channels)
        hf.FixedPointMul.apply(x, torch.from_numpy(s_in), 8, torch.from_numpy(s_out))
        (ratio, ref_m, ref_e), = fixedpointmul_frexp_calls
        ours = quant.requant_dyadic(s_in, float(s_out[0]))
        assert_same("requant_dyadic M", s_in, ours.multiplier, ref_m.numpy().reshape(-1).astype(np.int64))
        assert_same("requant_dyadic E", s_in, ours.shift, ref_e.numpy().reshape(-1).astype(np.int64))
        # And (M, E) represent the ratio to 31 bits.
        r = ratio.numpy().reshape(-1)
        approx = ours.multiplier.astype(np.float64) * np.exp2(-ours.shift.astype(np.float64))
        assert np.all(np.abs(approx - r) <= np.abs(r) * 2.0**-30)


# ---------------------------------------------------------------- i-GELU


def gelu_scales() -> np.ndarray:
    """Per-channel FC1 accumulator scales: random, float32 products S_w * S_in, and extremes.

    The lower end 1e-6 is where `gelu_constants` (for 32-bit inputs) still fits int64; finer scales are
    refused by design (QuantizationRangeError), which `test_gelu_constants_refuses_too_fine_scales` checks.
    """
    rng = np.random.default_rng(RNG_SEED + 1)
    random = log_uniform(rng, 1e-6, 10.0, 6000)
    products = log_uniform(rng, 1e-4, 1e-1, 2000) * log_uniform(rng, 1e-4, 1e-1, 2000)
    products = products[products >= 1e-6]
    extremes = F32([1e-6, 1.0000001e-6, 2.0**-19, 2.0**-14, 1e-5, 1e-3, 0.5, 1.0, 1.4142, 2.0, 8.0, 100.0, 1e4, 1e6])
    return np.concatenate([random, products, extremes]).astype(F32)


@pytest.fixture(scope="module")
def gelu_pair():
    """(scales, ours, HF) with HF's b_int, c_int, q1 captured from `IntGELU.forward` and its output scale."""
    s = gelu_scales()
    module = hf.IntGELU(quant_mode=True).eval()
    x = torch.zeros(2, s.size)
    with torch.no_grad(), FloorRecorder() as rec:
        _, out_scale = module(x, torch.from_numpy(s))
    b_int, c_int = rec.results("floor", (s.size,))
    (q1,) = rec.results("__rfloordiv__", (s.size,))
    ref = {"b_int": b_int, "c_int": c_int, "q1": q1, "out_scale": out_scale.numpy()}
    gc = quant.gelu_constants(s)
    ours = {"b_int": gc.b_int, "c_int": gc.c_int, "q1": gc.q1, "out_scale": gc.out_scale}
    return s, ours, ref


@pytest.mark.parametrize("name", ["b_int", "c_int", "q1", "out_scale"])
def test_gelu_constants_match_hf(gelu_pair, name):
    s, ours, ref = gelu_pair
    if name == "out_scale":
        assert ours[name].dtype == np.float32
        assert np.all(ours[name] < 0)  # S * S_L / 2 with S_L < 0 (spec §2.3 step 6)
        assert_same(f"i-GELU {name}", s, ours[name], ref[name])
    else:
        assert ours[name].dtype == np.int64
        # HF's float32 values are integers; compare as exact integers.
        assert np.all(ref[name] == np.floor(ref[name]))
        assert_same(f"i-GELU {name}", s, ours[name], ref[name].astype(np.int64))


def test_hf_gelu_constants_are_reciprocal_times_constant(gelu_pair):
    """Pins HF's exact float32 formula (the one `quant.gelu_constants` has to mirror).

    `coeff / scaling_factor` on a tensor is `Tensor.__rtruediv__` = `scaling_factor.reciprocal() * coeff`:
    two float32 roundings (1/S', then the product), not one correctly rounded division. Above 2^24 a
    one-ulp difference is a difference of 2 .. 2^k in the integer (c_int ~ 1e9 .. 1e12).
    """
    s, _, ref = gelu_pair
    s_erf = s / F32(1.4142)
    assert np.array_equal(np.floor((F32(1.0) / s_erf) * F32(-1.769)), ref["b_int"])
    assert np.array_equal(np.floor((F32(1.0) / (s_erf * s_erf)) * F32(1.0 / -0.2888)), ref["c_int"])


def test_gelu_q1_uses_floor_not_truncation():
    """q1 = 1.0 // S_L on torch >= 1.13 floors toward -inf; S_L < 0, so truncation would be 1 larger."""
    s = F32([1e-5, 3.3e-4, 0.01, 0.7])
    gc = quant.gelu_constants(s)
    s_l = (s / F32(1.4142)) ** 2 * F32(-0.2888) * F32(2**14)
    assert np.all(gc.q1 == np.floor(F32(1.0) / s_l.astype(np.float64)).astype(np.int64))
    assert np.all(gc.q1 < 0)


def test_gelu_constants_refuses_too_fine_scales():
    with pytest.raises(quant.QuantizationRangeError):
        quant.gelu_constants(F32([1e-5, 1e-8]))


# ---------------------------------------------------------------- IntSoftmax


@pytest.fixture(scope="module")
def softmax_pair():
    """(scales, ours, HF): x0_int, b', c' captured from `IntSoftmax.int_exp`, e(0) = c' 2^30 its row-max value."""
    rng = np.random.default_rng(RNG_SEED + 2)
    s = np.concatenate([log_uniform(rng, 2e-5, 1.0, 3000),
                        # S_q S_k / sqrt(64), as the attention forms it in float32
                        log_uniform(rng, 2e-3, 5e-2, 1000) * log_uniform(rng, 2e-3, 5e-2, 1000) / F32(8.0),
                        F32([2e-5, 5e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.6931, 1.0]),
                        # found by search: floor(-0.6931 / S) sits within one float32 rounding of an integer
                        F32([1.032013024087064e-04, 3.1164565007202327e-04, 2.465144279995002e-05])]).astype(F32)
    s = s[s >= 2e-5]
    module = hf.IntSoftmax(8, quant_mode=True).eval()
    x_int = torch.zeros(s.size, 2)  # q = 0: e is i-exp at the row max
    with torch.no_grad(), FloorRecorder() as rec:
        exp_int, exp_scale = module.int_exp(x_int, torch.from_numpy(s).reshape(-1, 1))
    x0_int, b_int, c_int = rec.results("floor", (s.size, 1))
    ref = {"x0_int": x0_int.ravel(), "b_int": b_int.ravel(), "c_int": c_int.ravel(),
           "exp_range": exp_int.numpy()[:, 0].astype(np.float64)}
    ours = {k: [] for k in ref}
    for si in s:
        rng_ = quant.softmax_exp_range(float(si))
        sc = quant.softmax_constants(si, quant.symmetric_scale(16, 0, rng_))
        ours["x0_int"].append(sc.x0_int)
        ours["b_int"].append(sc.b_int)
        ours["c_int"].append(sc.c_int)
        ours["exp_range"].append(rng_)
    return s, {k: np.array(v) for k, v in ours.items()}, ref


@pytest.mark.parametrize("name", ["x0_int", "b_int", "c_int", "exp_range"])
def test_softmax_constants_match_hf(softmax_pair, name):
    s, ours, ref = softmax_pair
    if name == "exp_range":
        assert_same("IntSoftmax row-max exp c' 2^30", s, ours[name], ref[name])
    else:
        assert np.all(ref[name] == np.floor(ref[name]))
        assert_same(f"IntSoftmax {name}", s, ours[name].astype(np.int64), ref[name].astype(np.int64))


def test_hf_softmax_constants_are_reciprocal_times_constant(softmax_pair):
    """As for i-GELU: HF's `x0 / S`, `coef / S`, `coef / S**2` are `reciprocal(S) * constant` in float32."""
    s, _, ref = softmax_pair
    inv, inv_sq = F32(1.0) / s, F32(1.0) / (s * s)
    assert np.array_equal(np.floor(inv * F32(-0.6931)), ref["x0_int"])
    assert np.array_equal(np.floor(inv * F32(0.96963238 / 0.35815147)), ref["b_int"])
    assert np.array_equal(np.floor(inv_sq * F32(1.0 / 0.35815147)), ref["c_int"])


def test_softmax_exp_requant_matches_hf_frexp():
    """(M', E') of the fused 16-bit step = HF batch_frexp of 1 / double(float32(S16))."""
    for s in F32([3e-3, 1e-3, 3e-4, 1e-4, 5e-5, 2e-5]):
        s16 = quant.symmetric_scale(16, 0, quant.softmax_exp_range(s))
        sc = quant.softmax_constants(s, s16)
        m, e = hf.batch_frexp(1.0 / torch.tensor([s16], dtype=torch.float32).double())
        assert (sc.exp_multiplier, sc.exp_shift) == (int(m[0]), int(e[0])), float(s)


@pytest.mark.parametrize("scale", [3e-3, 1e-3, 3.1e-4, 1e-4, 5e-5])
def test_softmax_act_calibrates_to_exp_range(scale):
    """HF's QuantAct(16) inside IntSoftmax, calibrated in train mode, gets S16 = scale(16, 0, c' 2^30)."""
    s = F32(scale)
    rng = np.random.default_rng(RNG_SEED + 3)
    module = hf.IntSoftmax(8, quant_mode=True).train()
    x = torch.from_numpy(np.round(rng.normal(0, 3.0, (2, 3, 16, 16)) / s).astype(F32)) * torch.tensor([s])
    with torch.no_grad():
        module(x, torch.tensor([s]))
    expected = quant.symmetric_scale(16, 0, quant.softmax_exp_range(s))
    assert module.act.act_scaling_factor.numpy()[0] == expected, (float(module.act.x_max[0]), expected)


# ---------------------------------------------------------------- IntLayerNorm


def layernorm_params(rng: np.random.Generator, c: int) -> tuple[np.ndarray, np.ndarray]:
    gamma = rng.uniform(0.2, 2.0, c).astype(F32) * np.where(rng.random(c) < 0.1, -1, 1).astype(F32)
    gamma[: min(4, c)] = F32([1e-3, -1e-3, 17.0, 1.0])[: min(4, c)]
    beta = rng.normal(0, 0.5, c).astype(F32)
    beta[: min(3, c)] = F32([0.0, 4.0, -3.3])[: min(3, c)]
    return gamma, beta


@pytest.mark.parametrize("channels", [768, 1024, 4096, 3])
def test_layernorm_constants_match_hf(channels):
    rng = np.random.default_rng(RNG_SEED + channels)
    for _ in range(6):
        gamma, beta = layernorm_params(rng, channels)
        module = hf.IntLayerNorm(channels, 1e-5, quant_mode=True).eval()
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(gamma))
            module.bias.copy_(torch.from_numpy(beta))
        x = torch.from_numpy(rng.integers(-2**15, 2**15, (1, 2, channels)).astype(F32)) * 1e-4
        with torch.no_grad(), FloorRecorder() as rec:
            _, out_scale = module(x, torch.tensor([F32(1e-4)]))
        (bias_int,) = rec.results("floor", (channels,))
        lc = quant.layernorm_constants(gamma, beta)
        assert lc.bias_int.dtype == np.int64
        assert_same("IntLayerNorm bias_int", gamma, lc.bias_int, bias_int.astype(np.int64))
        assert_same("IntLayerNorm out_scale", gamma, lc.out_scale, out_scale.numpy())


# ---------------------------------------------------------------- QuantLinear (weights and bias)


def hf_quant_linear(weight: np.ndarray, bias: np.ndarray, s_in: float):
    n, k = weight.shape
    module = hf.QuantLinear(k, n, bias=True, weight_bit=8, bias_bit=32, per_channel=True, quant_mode=True).eval()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(weight))
        module.bias.copy_(torch.from_numpy(bias))
        _, acc_scale = module(torch.zeros(1, 1, k), torch.tensor([F32(s_in)]))
    return module, acc_scale.numpy()


@pytest.mark.parametrize("shape", [(768, 768), (3072, 768), (768, 3072), (5, 3)])
def test_quantize_linear_matches_quantlinear(shape):
    rng = np.random.default_rng(RNG_SEED + shape[0] + shape[1])
    for s_in in log_uniform(rng, 1e-4, 0.2, 3):
        w = rng.normal(0, 0.04, shape).astype(F32)
        w[0, 0] = 0.9  # an outlier row whose largest |w| is positive -> would be 127, clipped to 126
        w[-1, -1] = -0.9  # and one whose largest |w| is negative -> -127
        b = rng.normal(0, 0.2, shape[0]).astype(F32)
        module, acc_scale = hf_quant_linear(w, b, float(s_in))
        ql = quant.quantize_linear(w, b, float(s_in))
        assert ql.weight.dtype == np.int8 and ql.bias.dtype == np.int32
        assert_same("weight_scale (per output channel)", s_in, ql.weight_scale, module.fc_scaling_factor.numpy())
        assert_same("weight_int", s_in, ql.weight.astype(np.int64), module.weight_integer.numpy().astype(np.int64))
        assert_same("acc_scale S_w S_in", s_in, ql.acc_scale, acc_scale)
        assert_same("bias_int (int32)", s_in, ql.bias.astype(np.int64), module.bias_integer.numpy().astype(np.int64))
        # The [-127, 126] quirk (spec §1.2): the positive extreme is clipped to 126.
        assert ql.weight[0, 0] == 126 and ql.weight[-1, -1] == -127
        assert ql.weight.max() <= 126 and ql.weight.min() >= -127


def test_quantize_linear_spec_example():
    ql = quant.quantize_linear(np.array([[1.0, -1.0, 0.5]], F32), np.array([0.0], F32), 0.1)
    assert ql.weight.tolist() == [[126, -127, 64]]


def test_quantize_linear_saturating_bias():
    """A bias beyond the int32 grid (tiny S_in, e.g. an uncalibrated +-1e-5 range) saturates, sign kept.

    HF clamps to [-(2^31-1), 2^31-2] in float32, i.e. to -2^31 / +2^31 as floats; an int32 bias must be
    the spec's clamp (§1.2) -(2^31-1) / 2^31-2 -- within 2 of HF's float and never wrapped around.
    """
    w = np.array([[0.5, -0.25], [0.1, 0.3]], F32)
    b = np.array([1000.0, -1000.0], F32)
    s_in = 1e-5 / 127
    module, _ = hf_quant_linear(w, b, s_in)
    ref = module.bias_integer.numpy().astype(np.int64)
    ours = quant.quantize_linear(w, b, s_in).bias.astype(np.int64)
    assert np.all(np.sign(ours) == np.sign(ref)), f"int32 bias wrapped: ours {ours.tolist()} vs HF {ref.tolist()}"
    assert np.all(np.abs(ours - ref) <= 2), (ours.tolist(), ref.tolist())
    assert ours.tolist() == [2**31 - 2, -(2**31 - 1)]


# ---------------------------------------------------------------- malformed scales and bit widths

NAN, INF = float("nan"), float("inf")
W2 = np.array([[0.5, -0.25], [0.1, 0.3]], F32)


@pytest.mark.parametrize("call, message", [
    # before: all-zero probabilities (-1, inf), decimal.InvalidOperation (0), a raw ValueError (nan)
    *[(lambda v=v: quant.softmax_constants(1e-3, v), "softmax_constants: exp_scale") for v in (-1.0, INF, 0.0, NAN)],
    (lambda: quant.softmax_constants(-1e-3, 1.0), "softmax_constants: in_scale"),
    (lambda: quant.softmax_exp_range(0.0), "softmax_exp_range: in_scale"),
    # before: accepted, with a positive clip point b_int
    *[(lambda v=v: quant.gelu_constants(v), "gelu_constants: in_scale")
      for v in (F32(-1e-4), INF, NAN, F32([1e-4, -2e-4]))],
    *[(lambda v=v: quant.quantize_linear(W2, None, v), "quantize_linear: input_scale") for v in (0.0, -0.01, NAN)],
    (lambda: quant.requant_dyadic(1e-3, -1.0), "requant_dyadic: out_scale"),
    (lambda: quant.requant_dyadic(1e-3, 1e-50), r"out_scale must be a finite scale > 0, got 0.0 \(float32 of 1e-50\)"),
    (lambda: quant.lookup_table(np.tanh, 0.1, 0.0), "lookup_table: out_scale"),
])
def test_a_scale_not_finite_and_positive_is_refused_by_name(call, message):
    """Every function that takes a scale refuses a zero, negative, infinite or NaN one (in float32, as it uses
    it), naming the argument, instead of wrong constants or an error from deep inside (found by a fuzz)."""
    with pytest.raises(quant.QuantizationRangeError, match=message):
        call()


def test_requant_dyadic_keeps_a_negative_input_scale():
    """The input scale of the requantization after i-GELU is negative (HF's): (M, E) ~= S_in / S_out keeps its sign."""
    d = quant.requant_dyadic(F32([-1e-3, -3e-5]), 0.05)
    assert np.all(d.multiplier < 0)
    assert np.allclose(d.multiplier / 2.0 ** d.shift, np.float64(F32([-1e-3, -3e-5])) / np.float64(F32(0.05)))


@pytest.mark.parametrize("call, message", [
    (lambda: quant.symmetric_scale(0, -1.0, 1.0), "bits must be an integer >= 2, got 0"),  # before: -2.0
    (lambda: quant.symmetric_scale(1, -1.0, 1.0), "bits must be an integer >= 2, got 1"),  # before: inf
    (lambda: quant.symmetric_scale(8.5, -1.0, 1.0), "bits must be an integer >= 2, got 8.5"),
    (lambda: quant.symmetric_scale(8, -1.0, NAN), r"the range .* is not finite"),
    (lambda: quant.batch_frexp(np.array([0.5, INF])), "batch_frexp: the ratio inf is not finite"),
    (lambda: quant.batch_frexp(NAN), "batch_frexp: the ratio nan is not finite"),
    (lambda: quant.layernorm_constants(np.array([INF, 1.0]), np.zeros(2)),
     "weight \\(gamma\\) has a non-finite channel 0"),
    (lambda: quant.layernorm_constants(np.ones(2), np.array([0.0, NAN])), "bias \\(beta\\) has a non-finite channel 1"),
])
def test_bad_bit_widths_ratios_and_layernorm_parameters_are_refused(call, message):
    with pytest.raises(quant.QuantizationRangeError, match=message):
        call()


def test_the_smallest_bit_width_and_a_zero_ratio_are_accepted():
    """bits = 2 (one level per side) is a scale; a zero ratio (a pruned channel's) is (M, E) = (0, 31)."""
    assert quant.symmetric_scale(2, -0.5, 2.0) == F32(2.0)
    d = quant.batch_frexp(np.array([0.0, 0.75]))
    assert d.multiplier.tolist() == [0, 3 << 29] and d.shift.tolist() == [31, 31]
