"""Fuse requantization into the matmul that produces it, so the int32 accumulator is no Relax tensor.

Run on a legalized module (after `relax.transform.LegalizeOps()`). `FuseRequantize` is TVM's own fusion
(`AnnotateTIROpPattern`, `FuseOps`, `FuseTIR`) plus one pattern FuseOps cannot see. The op patterns our TE
computes get are the ones output-epilogue fusion needs, so no op's pattern is overridden:

- `ibert.linear`, `ibert.matmul`: kOutEWiseFusable (a multiply-accumulate reduction; the bias add of
  `linear` is an elementwise stage of the same PrimFunc).
- `ibert.requantize`, `ibert.int_gelu`, Relax `add` / `astype`: kElemWise (per-channel constants are
  broadcast loads beside elementwise ones, which TVM still counts as elementwise).
- `ibert.int_layernorm`, `ibert.int_softmax` are labelled kOutEWiseFusable too, because TVM gives that
  label to any multiply-accumulate-shaped reduction (their sum of squares). Strictly they are row
  reductions; the label only lets their own elementwise consumers fuse (LayerNorm -> int8 requantize, so
  the int64 LayerNorm output is no tensor either), which is legal, so it is kept.

Fused (each becomes one PrimFunc `fused_ibert_linear..._ibert_requantize...`):

- linear -> requantize (Q, K, V, the attention-output and FFN-output dense layers; with the 22-bit
  residual requantize, whose second input is the residual tensor);
- linear -> int_gelu -> requantize -> requantize (the FFN's intermediate dense layer);
- "hf" semantics: linear -> requantize(32-bit regrid) -> add(bias) -> requantize;
- P.V matmul -> permute_dims -> reshape -> requantize (the context): FuseOps stops at the layout ops (its
  kOutEWiseFusable rule takes elementwise paths only), so this file fuses GEMM -> 1-2 single-input
  layout PrimFuncs -> elementwise PrimFunc by pattern first.

Where legal: a GEMM is fused only when every consumer of its accumulator is inside the fused epilogue.
FuseOps fuses a kOutEWiseFusable op only up to its immediate post-dominator along elementwise paths, so an
accumulator that is also returned, read by another GEMM or reduction, or feeds two chains that do not
rejoin stays a standalone GEMM; the layout pattern checks that each intermediate has exactly one use.

Not fused: Q.K^T scores -> int_softmax (a row reduction, not an epilogue), int_softmax -> P.V (a prologue),
GEMMs whose accumulator has another consumer. Other fusion FuseOps does on the way: requantize chains,
LayerNorm -> requantize, layout ops with their elementwise neighbours.

Memory: the accumulator becomes a buffer local to the fused PrimFunc. CUDA's dlight `Matmul` rule keeps it
in registers and writes only the epilogue's output; untuned `llvm` keeps a function-local buffer (placing
the epilogue inside the accumulation loop lost LLVM's vectorization of the epilogue and was not faster).
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax, s_tir, tirx
from tvm.relax.dpl.pattern import DFPattern, GlobalVarPattern, TuplePattern, is_op, wildcard

__all__ = ["FuseRequantize"]

# TVM's OpPatternKind values (include/tvm/relax/op_attr_types.h).
ELEMWISE, BROADCAST, INJECTIVE, OUT_EWISE_FUSABLE, OPAQUE = 0, 1, 2, 4, 8
MAX_LAYOUT_OPS = 2  # permute_dims + reshape between the P.V matmul and its requantize
MAX_EPILOGUE_ARGS = 6  # requantize with a residual: x, M, E, residual, M1, E1


def _call_tir(*args: DFPattern) -> DFPattern:
    return is_op("relax.call_tir")(GlobalVarPattern(), TuplePattern(list(args)), add_constraint=False)


def _reductions(func: tirx.PrimFunc) -> int:
    """How many blocks of `func` reduce (a GEMM has one; LayerNorm and softmax have several)."""
    blocks: list[s_tir.SBlock] = []
    tvm_ffi.structural_walk(func.body, lambda n: blocks.append(n) if isinstance(n, s_tir.SBlock) else None)
    return sum(any(iv.iter_type == tirx.IterVar.CommReduce for iv in b.iter_vars) for b in blocks)


def _layout_epilogue_patterns(mod: tvm.IRModule) -> list[tuple]:
    """FuseOpsByPattern entries for GEMM -> layout op(s) -> elementwise, each intermediate used once."""

    def kind(call: relax.Call) -> int:
        func = mod[call.args[0]]
        return int(func.attrs.get("op_pattern", OPAQUE)) if isinstance(func, tirx.PrimFunc) else OPAQUE

    def is_gemm(call: relax.Call) -> bool:
        return kind(call) == OUT_EWISE_FUSABLE and _reductions(mod[call.args[0]]) == 1

    def check(ctx: relax.transform.PatternCheckContext) -> bool:
        found = ctx.annotated_expr
        inner = [found["gemm"]] + [found[k] for k in sorted(found) if k.startswith("layout")]
        single_use = all(isinstance(v := ctx.value_to_bound_var[c], relax.DataflowVar)
                         and len(ctx.var_usages[v]) == 1 for c in inner)
        return (single_use and is_gemm(found["gemm"]) and kind(found["epilogue"]) <= BROADCAST
                and all(kind(c) <= INJECTIVE for c in inner[1:]))

    patterns = []
    for n_layout in range(MAX_LAYOUT_OPS, 0, -1):  # longest chain first
        for n_args in range(1, MAX_EPILOGUE_ARGS + 1):
            gemm = _call_tir(wildcard(), wildcard()) | _call_tir(wildcard(), wildcard(), wildcard())
            annotations, x = {"gemm": gemm}, gemm
            for i in range(n_layout):
                x = annotations[f"layout{i}"] = _call_tir(x)
            annotations["epilogue"] = epilogue = _call_tir(x, *[wildcard() for _ in range(n_args - 1)])
            patterns.append(("ibert.gemm_layout_epilogue", epilogue, annotations, check))
    return patterns


@tvm.transform.module_pass(opt_level=0, name="FuseRequantize")
class FuseRequantize:
    """Fuse each requantize (and elementwise chain) into the linear/matmul producing it, where legal."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Annotate op patterns, fuse GEMM -> layout -> requantize by pattern, then FuseOps and FuseTIR."""
        mod = relax.transform.AnnotateTIROpPattern()(mod)
        return tvm.transform.Sequential([
            relax.transform.FuseOpsByPattern(_layout_epilogue_patterns(mod), bind_constants=False),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ])(mod)
