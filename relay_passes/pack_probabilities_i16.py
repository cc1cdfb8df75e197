"""Rewrite the int16 x int8 matmul (softmax probabilities x V) into int16 pairs for x86 VNNI `vpdpwssd`.

Softmax probabilities lie in [0, 256] and are kept exactly as int16 (ops/matmul.py), so P V cannot use the
u8 x s8 `vpdpbusd`. VNNI's `vpdpwssd` adds two s16 x s16 products per int32 lane, exactly (|p| <= 2^15,
no saturation), at half vpdpbusd's rate: P V is a few percent of BERT's MACs. V is packed
`[..., N/lanes, K/2, lanes, 2]` at run time inside the PrimFunc (te_packing.matmul_i16), widened to int16
for vpdpwssd, kept int8 on AVX2 (whose `vpmaddwd` step sign-extends it); the product accumulates in int32.

Runs on a legalized module, before `FuseRequantize`: each `ibert_matmul...` PrimFunc with an int16 `a` is
replaced (same name and parameters), so the P V -> transpose -> reshape -> requantize
fusion is unchanged. A no-op for targets without VNNI or AVX2.
"""

from __future__ import annotations

import tvm
from tvm.target import Target

from .shift_activations_u8 import rewrite_matmuls
from .te_packing import matmul_i16

__all__ = ["PackProbabilitiesI16"]


@tvm.transform.module_pass(opt_level=0, name="PackProbabilitiesI16")
class PackProbabilitiesI16:
    """Pack int16 x int8 matmuls for vpdpwssd (x86 VNNI) or vpmaddwd (AVX2); no-op on other targets."""

    def __init__(self, target: Target) -> None:
        """`target`: the compilation target; the rewrite happens only where it has VNNI or AVX2."""
        from ibert_tvm.schedules.x86 import packed_lanes, vnni_lanes  # lazily: not needed at import

        self.lanes = packed_lanes(target)
        self.v_dtype = "int16" if vnni_lanes(target) else "int8"  # vpdpwssd's operand; AVX2 sign-extends int8

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Replace each int16 x int8 matmul PrimFunc by its packed form."""
        if not self.lanes:
            return mod
        return rewrite_matmuls(mod, ("int16", "int8"),
                               lambda a, b, transpose_b: matmul_i16(a, b, transpose_b, self.lanes, self.v_dtype))
