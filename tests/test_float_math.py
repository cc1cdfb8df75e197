"""The vectorized float32 exp and erf (`ops/float_math.py`) against mpmath's correctly rounded values, at the edges
of float32, and the float Softmax and GELU built with them against TVM's own and float64's; the CPU pipeline uses
them."""

import math

import mpmath
import numpy as np
import pytest
import torch
import tvm
from tvm import relax, s_tir, te

from ibert_tvm.ops.float_math import CPU_LEGALIZATIONS, erf_f32, exp_f32
from ibert_tvm.relay_passes.pipeline import tunable_module

TARGET = tvm.target.Target({"kind": "llvm"})
F32_MAX = float(np.finfo(np.float32).max)


def run_elementwise(fn, values: np.ndarray, lanes: int = 8) -> np.ndarray:
    """`fn` over float32 `values` in a loop vectorized `lanes` wide (the schedules' form), on this CPU."""
    x = te.placeholder(values.shape, "float32")
    y = te.compute(values.shape, lambda i: fn(x[i]), name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    (loop,) = sch.get_loops(sch.get_sblock("y"))
    sch.vectorize(sch.split(loop, [None, lanes])[1])
    out = tvm.runtime.tensor(np.zeros_like(values))
    tvm.tirx.build(sch.mod, target=TARGET)(tvm.runtime.tensor(values), out)
    return out.numpy()


def correctly_rounded(f, values: np.ndarray) -> np.ndarray:
    """float32(f(x)) computed by mpmath at 60 digits, rounded once (float32's subnormals and overflow included)."""
    mpmath.mp.dps = 60
    return np.array([np.float32(float(f(mpmath.mpf(float(v))))) if np.isfinite(v) else np.nan for v in values],
                    np.float32)


def samples(scale: float, count: int = 6000) -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.concatenate([rng.standard_normal(count) * scale, rng.uniform(-scale * 4, scale * 4, count)]
                          ).astype(np.float32)


@pytest.mark.parametrize("fn, reference, scale", [(exp_f32, mpmath.exp, 20.0), (erf_f32, mpmath.erf, 2.0)],
                         ids=["exp", "erf"])
def test_values_are_correctly_rounded(fn, reference, scale):
    """Every sampled value equals mpmath's, rounded once to float32 (libm's expf and erff missed 0.1 % and 2.2 %
    of such samples; PyTorch's 1.0 % and 3.2 %)."""
    values = samples(scale)
    np.testing.assert_array_equal(run_elementwise(fn, values), correctly_rounded(reference, values))


def test_exp_at_the_edges_of_float32():
    """Subnormal results, the last finite one, overflow to infinity, underflow to 0, infinities, NaN, -0."""
    last_finite = np.nextafter(np.float32(math.log(F32_MAX)), np.float32(0))  # 88.72283, float32's nearest overflows
    edges = np.array([0.0, -0.0, 1e-30, -1e-30, -87.3, -100.0, -103.9, -103.97, -104.0, -1e4, np.float32(-F32_MAX),
                      last_finite, np.nextafter(last_finite, np.float32(100)), 89.0, 1e4, np.inf, -np.inf],
                     np.float32)
    got = run_elementwise(exp_f32, edges)
    np.testing.assert_array_equal(got[:-2], correctly_rounded(mpmath.exp, edges[:-2]))
    assert got[-2] == np.inf and got[-1] == 0.0 and np.isfinite(got[11]) and got[12] == np.inf
    assert 0 < got[6] < np.finfo(np.float32).tiny  # a subnormal
    assert np.isnan(run_elementwise(exp_f32, np.array([np.nan] * 8, np.float32))).all()


def test_erf_at_the_edges_of_float32():
    """Odd; +-1 from where 1 - erf(x) is below half an ulp of 1 (3.92) on, tiny arguments, infinities, NaN."""
    edges = np.array([0.0, -0.0, 1e-38, 1e-45, -1e-20, 3.8, 3.9, 3.92, 4.0, 5.0, 1e30, -3.9, -4.0, -1e30], np.float32)
    got = run_elementwise(erf_f32, edges)
    np.testing.assert_array_equal(got, correctly_rounded(mpmath.erf, edges))
    assert np.signbit(got[1]) and got[6] == np.float32(0.99999994) and got[8] == 1.0
    extremes = run_elementwise(erf_f32, np.array([np.inf, -np.inf, np.nan, 1.0], np.float32))
    assert extremes[0] == 1.0 and extremes[1] == -1.0 and np.isnan(extremes[2])


def legalized(op, shape: tuple[int, ...], dtype: str = "float32", legalizations: dict | None = CPU_LEGALIZATIONS
              ) -> relax.VirtualMachine:
    """`op(x)` through `legalizations` (default: the CPU ones; None: TVM's own), compiled for this CPU."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, dtype))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(op(x)))
    mod = relax.transform.LegalizeOps(legalizations)(bb.get())
    return relax.VirtualMachine(tvm.compile(mod, target=TARGET), tvm.cpu())


def ours_tvms_and_exact(op, torch_op, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`op` on `values` with the CPU legalizations and with TVM's own (libm's exp and erf), and `torch_op` in
    float64 rounded to float32."""
    ours, tvms = (legalized(op, values.shape, legalizations=m)["main"](tvm.runtime.tensor(values)).numpy()
                  for m in (CPU_LEGALIZATIONS, None))
    return ours, tvms, torch_op(torch.from_numpy(values).double()).numpy()


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many float32 values apart a and b are (same signs)."""
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))


def test_softmax_is_tvms_own_with_a_padding_mask():
    """Attention scores with HF's additive mask (float32's min) on a row's last columns: identical to TVM's own
    softmax (libm's expf) but for 0.1 %, no further from the float64 softmax, masked columns exactly 0."""
    rng = np.random.default_rng(0)
    scores = (rng.standard_normal((2, 4, 16, 64)) * 4).astype(np.float32)
    scores[1, :, :, 40:] += np.finfo(np.float32).min
    ours, tvms, exact = ours_tvms_and_exact(lambda x: relax.op.nn.softmax(x, axis=-1),
                                            lambda x: torch.softmax(x, -1), scores)
    exact = exact.astype(np.float32)
    assert np.mean(ours == tvms) > 0.999 and ulps(ours, exact).max() <= ulps(tvms, exact).max()
    assert (ours[1, :, :, 40:] == 0).all() and np.allclose(ours.sum(-1), 1, atol=1e-6)


def test_gelu_is_as_accurate_as_tvms_own():
    """The GELU of FFN-like activations: identical to TVM's own (libm's erff) but for 2 %, and as far from the
    float64 GELU, at most and on average (1 - erf(x / sqrt 2) cancels: an ulp of erf moves a negative x's GELU
    by hundreds of its ulps, in either)."""
    values = (np.random.default_rng(1).standard_normal((128, 512)) * 3).astype(np.float32)
    ours, tvms, exact = ours_tvms_and_exact(relax.op.nn.gelu, torch.nn.functional.gelu, values)
    assert np.mean(ours == tvms) > 0.98
    assert np.abs(ours - exact).max() <= 1.01 * np.abs(tvms - exact).max()
    assert np.abs(ours - exact).mean() <= 1.01 * np.abs(tvms - exact).mean()


def test_softmax_over_another_axis_is_tvms_own():
    """The axis attribute is honoured: softmax over axis 1 of a 3-D tensor, as TVM's own computes it."""
    values = (np.random.default_rng(2).standard_normal((3, 40, 5)) * 3).astype(np.float32)
    ours, tvms, exact = ours_tvms_and_exact(lambda x: relax.op.nn.softmax(x, axis=1), lambda x: torch.softmax(x, 1),
                                            values)
    assert np.mean(ours == tvms) > 0.99 and np.allclose(ours, exact, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
@pytest.mark.parametrize("op", [relax.op.nn.gelu, lambda x: relax.op.nn.softmax(x, axis=-1)], ids=["gelu", "softmax"])
def test_other_dtypes_keep_tvms_legalization(op, dtype):
    """Only float32 takes the polynomials: other dtypes give TVM's own legalization's values, bit for bit."""
    values = np.linspace(-3, 3, 64).astype(dtype).reshape(4, 16)
    ours, tvms = (legalized(op, values.shape, dtype, m)["main"](tvm.runtime.tensor(values)).numpy()
                  for m in (CPU_LEGALIZATIONS, None))
    np.testing.assert_array_equal(ours, tvms)


def test_the_cpu_pipeline_computes_no_libm_exp_or_erf():
    """After the CPU pipeline's legalization a float Softmax and GELU call no scalar `exp`/`erf` (the float64
    polynomials replace them); on CUDA, whose exp and erf are vector instructions already, they stay."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 32), "float32"))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.op.nn.softmax(bb.emit(relax.op.nn.gelu(x)), axis=-1)))
    cpu = tunable_module(bb.get(), TARGET, integer_only=False).script(show_meta=False)
    assert "T.exp(" not in cpu and "T.erf(" not in cpu and "T.reinterpret" in cpu
    cuda = tunable_module(bb.get(), tvm.target.Target({"kind": "cuda", "arch": "sm_75"}), integer_only=False)
    assert "T.exp(" in cuda.script(show_meta=False) and "T.erf(" in cuda.script(show_meta=False)
