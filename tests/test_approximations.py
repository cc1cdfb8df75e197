"""The integer approximations are as accurate as the I-BERT paper says (spec §2.1, §3.1).

* i-GELU (our compiled `ibert.int_gelu`, dequantized with `quant.gelu_constants(S).out_scale`) against
  the exact erf GELU on a fine grid over [-4, 4]: paper L_inf 1.8e-2, L2 (RMS) 8.2e-3.
* i-exp (`OPERATORS["ibert.int_softmax"].i_exp_reference`, value p 2^(30-z) at scale 0.35815147 S^2 / 2^30)
  against exp on (-ln2, 0]: paper 1.9e-3 (the code's polynomial: 1.913e-3); and over the whole
  clamped range [30 x0 S, 0], where the error only shrinks (2^-z).
* The compiled `ibert.int_softmax` (output scale 2^-8) against the exact float softmax of the same
  integer scores: within 2/256 (i-exp error, the 16-bit exp grid and the final floor to 1/256).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ibert_tvm import ops, quant
from ibert_tvm.build_util import compile_and_run, single_op_module
from ibert_tvm.ops import OPERATORS

F32 = np.float32
GELU_MAX_ERROR = 1.9e-2  # paper: 1.8e-2 (measured in the spec: 0.0182)
GELU_RMS_ERROR = 8.5e-3  # paper: 8.2e-3
EXP_MAX_ERROR = 2e-3  # paper: 1.9e-3 (code polynomial: 1.913e-3)
SOFTMAX_MAX_ERROR = 2.0 / 256


def exact_gelu(x: np.ndarray) -> np.ndarray:
    return torch.nn.functional.gelu(torch.from_numpy(x)).numpy()  # erf form, float64


@pytest.fixture(scope="module")
def gelu_on_grid():
    """Compiled int_gelu on every integer of a grid covering [-4, 4] at S = 2^-18 (2^21 + 1 points)."""
    s = F32(2.0**-18)
    q = np.arange(-(2**20), 2**20 + 1, dtype=np.int32)
    gc = quant.gelu_constants(np.array([s], F32))
    b, c, q1 = (int(v[0]) for v in (gc.b_int, gc.c_int, gc.q1))
    out = compile_and_run(single_op_module(lambda x: ops.int_gelu(x, b, c, q1), {"x": q}), [q])
    assert out.dtype == np.int64
    x = q.astype(np.float64) * np.float64(s)
    assert x[0] == -4.0 and x[-1] == 4.0
    return x, out.astype(np.float64) * np.float64(gc.out_scale[0])


def test_i_gelu_error_vs_exact_gelu(gelu_on_grid, report):
    x, approx = gelu_on_grid
    err = np.abs(approx - exact_gelu(x))
    worst, rms = float(err.max()), float(np.sqrt(np.mean(err**2)))
    report(f"i-GELU (compiled int_gelu, S=2^-18) vs exact GELU on [-4, 4], {x.size} points: "
           f"max |err| {worst:.4e} at x={x[np.argmax(err)]:+.4f} (paper 1.8e-2), RMS {rms:.4e} (paper 8.2e-3)")
    assert worst <= GELU_MAX_ERROR
    assert rms <= GELU_RMS_ERROR
    # Beyond the fitted range |x| > -b sqrt(2) = 2.50, L(x) = sgn(x): i-GELU is exactly ReLU there.
    outside = np.abs(x) >= 2.51
    assert np.abs(approx[outside] - np.maximum(x[outside], 0)).max() < 1e-4
    assert worst >= 1e-2  # the approximation's own error shows: the grid is not trivially coarse or fine


@pytest.mark.parametrize("acc_bits", [12, 16])
def test_i_gelu_error_at_realistic_scales(acc_bits, report):
    """Coarse FC1 scales (|acc| <= 2^12 .. 2^16 for |x| <= 4).

    On top of the polynomial's error, the `>> 14` overflow guard leaves the erf term on a grid of
    |S_L| = S'^2 0.2888 2^14 (and q1 = floor(1/S_L) on the same grid): the output x (1 + L) / 2 moves by at
    most |x| |S_L| <= 4 |S_L|; b_int's floor moves the fit by < S. At S = 4/2^12, |S_L| = 2.3e-3.
    """
    s = F32(4.0 / 2**acc_bits)
    q = np.arange(-(2**acc_bits), 2**acc_bits + 1, dtype=np.int32)
    gc = quant.gelu_constants(np.array([s], F32))
    b, c, q1 = (int(v[0]) for v in (gc.b_int, gc.c_int, gc.q1))
    out = compile_and_run(single_op_module(lambda x: ops.int_gelu(x, b, c, q1), {"x": q}), [q])
    x = q.astype(np.float64) * np.float64(s)
    err = np.abs(out.astype(np.float64) * np.float64(gc.out_scale[0]) - exact_gelu(x))
    s_l = 2 * abs(float(gc.out_scale[0])) / float(s)
    bound = GELU_MAX_ERROR + 4 * s_l + float(s)
    report(f"i-GELU (compiled int_gelu, S=4/2^{acc_bits}={s:.3e}, erf grid |S_L|={s_l:.2e}) vs exact GELU on "
           f"[-4, 4]: max |err| {err.max():.4e} (bound {bound:.4e}), RMS {np.sqrt(np.mean(err**2)):.4e}")
    assert err.max() <= bound


@pytest.mark.parametrize("scale", [1e-5, 1e-4, 1e-3])
def test_i_exp_error_vs_exp(scale, report):
    s = F32(scale)
    sc = quant.softmax_constants(s, quant.symmetric_scale(16, 0, quant.softmax_exp_range(s)))
    i_exp = OPERATORS["ibert.int_softmax"].i_exp_reference
    unit = 0.35815147 * np.float64(s) ** 2 / 2.0**30

    def error(q: np.ndarray) -> np.ndarray:
        value = np.array([float(v) for v in i_exp(q, sc.x0_int, sc.b_int, sc.c_int)]) * unit
        return np.abs(value - np.exp(q.astype(np.float64) * np.float64(s)))

    # (-ln2, 0]: q in (x0_int, 0], every integer (x0_int = floor(-0.6931 / S))
    q = np.arange(sc.x0_int + 1, 1, dtype=np.int64)
    err = error(q)
    worst = float(err.max())
    # the whole clamped range [30 x0, 0] (sampled), where i-exp(x) = L(p) 2^-z
    rng = np.random.default_rng(7)
    q_all = np.concatenate([rng.integers(30 * sc.x0_int, 1, 50000), [30 * sc.x0_int, 0]])
    worst_all = float(error(q_all).max())
    report(f"i-exp S={scale:g}: max |err| on (-ln2, 0] {worst:.4e} over {q.size} points (paper 1.9e-3); "
           f"on [{30 * sc.x0_int * float(s):.2f}, 0] {worst_all:.4e}")
    assert worst <= EXP_MAX_ERROR
    assert worst_all <= EXP_MAX_ERROR
    assert worst >= 1.5e-3  # the polynomial's own error, not a float artefact (code polynomial: 1.913e-3)


@pytest.mark.parametrize("scale", [3e-3, 1e-3, 1e-4])
def test_int_softmax_vs_exact_softmax(scale, report):
    """Compiled int_softmax (scale 2^-8) vs float64 softmax of the same integer scores, rows of 128."""
    s = F32(scale)
    rng = np.random.default_rng(int(1 / scale))
    shape = (48, 128)
    spread = rng.uniform(0.3, 8.0, (shape[0], 1))  # from near-uniform rows to near-one-hot rows
    q = np.round(rng.standard_normal(shape) * spread / np.float64(s)).astype(np.int32)
    q[::7, 5] = q[::7].max(axis=1) + np.int32(1.5 / s)  # rows with one dominant key
    sc = quant.softmax_constants(s, quant.symmetric_scale(16, 0, quant.softmax_exp_range(s)))
    kw = dict(x0_int=sc.x0_int, b_int=sc.b_int, c_int=sc.c_int, exp_multiplier=sc.exp_multiplier,
              exp_shift=sc.exp_shift)
    mask = (rng.random((shape[0], shape[1])) > 0.2).astype(np.int32)
    mask[:, 0] = 1
    mask[:8] = 1
    out = compile_and_run(single_op_module(lambda x, m: ops.int_softmax(x, mask=m, **kw), {"x": q, "m": mask}),
                          [q, mask])
    scores = torch.from_numpy(q.astype(np.float64) * np.float64(s))
    scores = scores.masked_fill(torch.from_numpy(mask == 0), float("-inf"))
    exact = torch.softmax(scores, dim=-1).numpy()
    diff = np.abs(out.astype(np.float64) / 256 - exact)
    worst = float(diff.max())
    report(f"int_softmax (compiled, S={scale:g}) vs exact softmax, {shape[0]} rows x {shape[1]}: "
           f"max |diff| {worst:.4e} = {worst * 256:.2f}/256, mean {diff.mean():.2e}")
    assert worst <= SOFTMAX_MAX_ERROR
    assert np.all(out[mask == 0] == 0)
    # The floor-based normalisation never exceeds 1 and loses < 1/256 per entry.
    sums = out.astype(np.int64).sum(axis=-1)
    assert np.all(sums <= 256) and np.all(sums >= 256 - mask.sum(axis=-1))
