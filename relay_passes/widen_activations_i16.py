"""Rewrite the int8 GEMMs into the form AVX2 multiplies exactly: int16 activations x int8 operands in pairs.

Without VNNI, x86's exact integer dot product is `vpmaddwd`: two s16 x s16 products summed per int32 lane
(`vpmaddubsw`, u8 x s8, saturates its 16-bit pair sums, so it is not used). So on AVX2 targets:

- Linear layers with constant weights (`ibert_linear...` PrimFuncs): the int8 activations are widened to
  int16 inside the PrimFunc, the weights packed at compile time in pairs `[N/8, K/2, 8, 2]` and kept int8
  (the step sign-extends them, `vpmovsxbw`), the bias unchanged: signed x signed needs no compensation.
- int8 x int8 matmuls (Q K^T): `a` widened, `b` packed in int8 pairs at run time (te_packing.matmul_i16).

One `vpmaddwd` then does 16 multiply-adds; the earlier u8 x s8 form split both operands' bytes into 16-bit
halves around two (measured on a 128 x 768 x 768 linear built for `x86-avx2`: 93 -> 120 GMAC/s, bench/RESULTS.md).
Runs on a legalized module, before `FuseRequantize`, like shift_activations_u8.py (whose helpers it uses);
P V (int16 probabilities) is pack_probabilities_i16.py's. A no-op for targets with VNNI or without AVX2.
Exactness: |a b| <= 2^14 per product; the int32 accumulator's range is the op's own, checked where it is built.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.target import Target

from .shift_activations_u8 import linear_constants, pack_weight, rewrite_linears, rewrite_matmuls
from .te_packing import I16_GROUP, linear_i16, matmul_i16

__all__ = ["WidenActivationsI16"]


def _linear_plan(call: relax.Call, lanes: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(weight packed in int8 pairs, bias or zeros) for a call of a linear PrimFunc with constant operands."""
    constants = linear_constants(call)
    if constants is None:
        return None
    w, bias = constants
    return pack_weight(w, lanes, I16_GROUP), np.zeros(w.shape[0], np.int32) if bias is None else bias


@tvm.transform.module_pass(opt_level=0, name="WidenActivationsI16")
class WidenActivationsI16:
    """Widen the int8 activations of linear layers and Q K^T to int16 for AVX2's `vpmaddwd`; no-op elsewhere."""

    def __init__(self, target: Target) -> None:
        """`target`: the compilation target; the rewrite happens only where it has AVX2 and no VNNI."""
        from ibert_tvm.schedules.x86 import packed_lanes, vnni_lanes  # lazily, as in shift_activations_u8

        self.lanes = 0 if vnni_lanes(target) else packed_lanes(target)

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Rewrite linear PrimFuncs all of whose calls qualify (and those calls), then int8 matmuls."""
        if not self.lanes:
            return mod
        return self._matmuls(self._linears(mod))

    def _linears(self, mod: tvm.IRModule) -> tvm.IRModule:
        return rewrite_linears(mod, lambda call: _linear_plan(call, self.lanes), linear_i16)

    def _matmuls(self, mod: tvm.IRModule) -> tvm.IRModule:
        return rewrite_matmuls(mod, ("int8", "int8"),
                               lambda a, b, transpose_b: matmul_i16(a, b, transpose_b, self.lanes, b_dtype="int8"))
