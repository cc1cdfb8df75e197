"""`FuseSiblingLinears` (relay_passes/fuse_sibling_linears.py): Q, K and V of every layer become one GEMM over
their stacked weights with identical integers; linears that do not share an input, or whose requantize has a
residual or whose output has another consumer, stay as they are."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from ibert_tvm import ops, quant
from ibert_tvm.relay_passes.fuse_sibling_linears import FuseSiblingLinears
from ibert_tvm.relay_passes.pipeline import build

RNG = np.random.default_rng(3)


def _count(mod: tvm.IRModule, op: str) -> int:
    return mod.script(show_meta=False).count(f'"{op}"')


def _run(mod: tvm.IRModule, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The outputs of the unscheduled LegalizeOps build (no project pass at all) of `mod`."""
    exe = tvm.compile(relax.transform.LegalizeOps()(mod), "llvm")
    out = relax.VirtualMachine(exe, tvm.cpu())["main"](*map(tvm.runtime.tensor, inputs))
    return [out.numpy()] if hasattr(out, "numpy") else [t.numpy() for t in out]


def test_tiny_bert_qkv_become_one_gemm_with_identical_integers(tiny_bert):
    """2 layers x (Q, K, V, attention out, FFN in, FFN out): 12 linears -> 8, the integers unchanged both
    unscheduled and through the whole pipeline (where the fused GEMM is packed for VNNI / AMX)."""
    mod, inputs, ref = tiny_bert  # conftest.py: row 1 has padding; ref is the unfused program's unscheduled build
    fused = FuseSiblingLinears()(mod)
    assert (_count(mod, "ibert.linear"), _count(fused, "ibert.linear")) == (12, 8)
    assert _count(fused, "ibert.requantize") == _count(mod, "ibert.requantize") - 4
    np.testing.assert_array_equal(_run(fused, inputs)[0], ref)
    built = relax.VirtualMachine(build(mod, "llvm"), tvm.cpu())["main"](*map(tvm.runtime.tensor, inputs)).numpy()
    np.testing.assert_array_equal(built, ref)


def _siblings(kinds: list[str], per_tensor: bool = True) -> tuple[tvm.IRModule, list[np.ndarray]]:
    """main(x[, r]) = tuple of requantize(linear(x, W_i)) for each kind: 'plain' (K = 24, bias), 'no_bias',
    'residual' (a requantize with residual r), 'shared' (the accumulator is returned too), 'other_input'
    (reads r instead of x), 'bits16' (16-bit output)."""
    x = relax.Var("x", relax.TensorType((2, 5, 24), "int8"))
    r = relax.Var("r", relax.TensorType((2, 5, 24), "int8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, r]):
        with bb.dataflow():
            outs = []
            for i, kind in enumerate(kinds):
                n = 8 + 8 * i
                w = RNG.integers(-128, 128, (n, 24), dtype=np.int8)
                bias = None if kind == "no_bias" else RNG.integers(-9999, 9999, n, dtype=np.int32)
                d = quant.requant_dyadic(0.01 * (i + 1), 0.05)
                m, e = (d.multiplier, d.shift) if per_tensor else (
                    np.full(n, d.multiplier, np.int64) - np.arange(n), np.full(n, d.shift, np.int64))
                acc = bb.emit(ops.linear(r if kind == "other_input" else x, w, bias))
                extra = {"residual": r, "residual_multiplier": d.multiplier, "residual_shift": d.shift} \
                    if kind == "residual" and n == 24 else {}
                if kind == "residual" and not extra:
                    raise ValueError("a residual sibling needs N = 24 (position 2)")
                outs.append(bb.emit(ops.requantize(acc, m, e, bits=16 if kind == "bits16" else 8, **extra)))
                if kind == "shared":
                    outs.append(acc)
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.get(), [RNG.integers(-128, 128, (2, 5, 24), dtype=np.int8) for _ in range(2)]


@pytest.mark.parametrize("kinds, per_tensor, linears_after", [
    (["plain", "plain", "plain"], True, 1),
    (["plain", "plain", "plain"], False, 1),  # per-channel multipliers and shifts are stacked too
    (["no_bias", "no_bias"], True, 1),
    (["plain", "no_bias"], True, 2),  # bias presence differs: not stacked
    (["plain", "plain", "residual"], True, 2),  # the residual one stays
    (["plain", "shared", "plain"], True, 2),  # the shared accumulator stays
    (["plain", "other_input", "plain"], True, 2),
    (["plain", "bits16", "plain"], True, 2),
])
def test_fuses_exactly_the_siblings_it_may(kinds, per_tensor, linears_after):
    mod, inputs = _siblings(kinds, per_tensor)
    fused = FuseSiblingLinears()(mod)
    assert _count(fused, "ibert.linear") == linears_after
    got, want = _run(fused, inputs), _run(mod, inputs)
    assert len(got) == len(want) == len(kinds) + ("shared" in kinds)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_no_siblings_leaves_the_module_unchanged():
    mod, _ = _siblings(["plain"])
    assert FuseSiblingLinears()(mod).same_as(mod)
