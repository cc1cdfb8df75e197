"""Fuse requantization into the matmul that produces it, so that no int32 accumulator is a Relax tensor.

`FuseRequantize` runs on a legalized module (after `relax.transform.LegalizeOps()`): TVM's own
`AnnotateTIROpPattern` + `FuseOps` + `FuseTIR`, plus one pattern FuseOps cannot see. The op patterns our TE
computes get are the ones output-epilogue fusion needs, so none is overridden:

- `ibert.linear`, `ibert.matmul`: kOutEWiseFusable (a multiply-accumulate reduction; `linear`'s bias add
  is an elementwise stage of the same PrimFunc).
- `ibert.requantize`, `ibert.int_gelu`, Relax `add`: kElemWise (a per-channel constant is a broadcast
  load beside an elementwise one, which TVM counts as elementwise).
- `ibert.int_layernorm`, `ibert.int_softmax` come out kOutEWiseFusable too (TVM's block analysis takes one
  of their reductions for a GEMM-like one; a plain `sum` gets kCommReduce). Strictly they are row
  reductions, but the label only lets their elementwise consumers fuse (LayerNorm -> requantize, so its
  int64 output is no tensor either), which is legal, so it is kept.

Fused, each into one PrimFunc named `fused_ibert_linear..._ibert_requantize...` (or `..._matmul...`):

- linear -> requantize: Q, K, V, and the two output dense layers with their 22-bit residual requantize
  (whose second input, the residual, is read inside the same PrimFunc);
- linear -> int_gelu -> requantize -> requantize (FFN intermediate); "hf" semantics: linear ->
  requantize (regrid) -> add (bias) -> requantize;
- P.V matmul -> permute_dims -> reshape -> requantize (the context). FuseOps stops at layout ops (its
  kOutEWiseFusable rule follows elementwise paths only), so GEMM -> 1-2 single-input layout PrimFuncs ->
  elementwise PrimFunc is first grouped by `FuseOpsByPattern`.

Where legal: only when every consumer of the accumulator is inside the fused epilogue. FuseOps fuses a
kOutEWiseFusable op only up to its immediate post-dominator along elementwise paths, so an accumulator that
is also returned, read by another GEMM or a reduction, or feeding two chains that do not rejoin stays a
standalone GEMM; the layout pattern requires each intermediate to have exactly one use.

With `layout_prologues` (x86 targets), a second round fuses the layout PrimFuncs that feed a batch GEMM's
operands (the heads split of Q, K and V: strided slice -> reshape -> transpose, each used once) into it;
the x86 schedule inlines them into the operand packing, so the split is never a tensor (36 calls fewer per
BERT-base run). The other families' schedules do not expect them, so they keep the copies.

Not fused: Q.K^T -> int_softmax (a row reduction, not an epilogue); int_softmax -> P.V (a prologue that
computes); GEMMs whose accumulator has another consumer. Besides the GEMM epilogues, FuseOps also fuses requantize
chains, LayerNorm -> requantize and layout ops with their neighbours.

`split_requantize_chains=True` (for GPU targets) keeps every requantize that reads another requantize's
output in its own PrimFunc: dlight inlines a fused chain into one expression, and TVM's simplifier then
takes minutes on the nested round-half-even Selects (one residual requantize: 2 s to build for CUDA; two
chained: over 5 min). The GEMM epilogue then ends at the first requantize (linear -> int_gelu -> requantize).

Memory: the accumulator becomes a buffer local to the fused PrimFunc. CUDA's dlight `Matmul` rule keeps it
in registers and stores only the epilogue's output; untuned llvm keeps a function-local buffer (moving the
epilogue into the accumulation loop with `reverse_compute_at` measured no faster untuned: left to tuning).
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
REQUANTIZE = "ibert_requantize"
_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


def _call_tir(*args: DFPattern) -> DFPattern:
    return is_op("relax.call_tir")(GlobalVarPattern(), TuplePattern(list(args)), add_constraint=False)


def _reductions(func: tirx.PrimFunc) -> int:
    """How many blocks of `func` reduce (a GEMM has one; LayerNorm and softmax have several)."""
    blocks: list[s_tir.SBlock] = []
    tvm_ffi.structural_walk(func.body, lambda n: blocks.append(n) if isinstance(n, s_tir.SBlock) else None)
    return sum(any(iv.iter_type == tirx.IterVar.CommReduce for iv in b.iter_vars) for b in blocks)


def _kind(mod: tvm.IRModule, call: relax.Call) -> int:
    """The op pattern AnnotateTIROpPattern gave the callee PrimFunc of a call_tir (opaque otherwise)."""
    func = mod[call.args[0]]
    return int(func.attrs.get("op_pattern", OPAQUE)) if isinstance(func, tirx.PrimFunc) else OPAQUE


def _is_gemm(mod: tvm.IRModule, call: relax.Call) -> bool:
    return _kind(mod, call) == OUT_EWISE_FUSABLE and _reductions(mod[call.args[0]]) == 1


def _used_once(ctx: relax.transform.PatternCheckContext, calls: list[relax.Call]) -> bool:
    """Whether each matched call is bound to a dataflow var that has exactly one use."""
    return all(isinstance(v := ctx.value_to_bound_var[c], relax.DataflowVar) and len(ctx.var_usages[v]) == 1
               for c in calls)


def _layout_epilogue_patterns(mod: tvm.IRModule) -> list[tuple]:
    """FuseOpsByPattern entries for GEMM -> layout op(s) -> elementwise, each intermediate used once."""

    def check(ctx: relax.transform.PatternCheckContext) -> bool:
        found = ctx.annotated_expr
        inner = [found["gemm"]] + [found[k] for k in sorted(found) if k.startswith("layout")]
        return (_used_once(ctx, inner) and _is_gemm(mod, found["gemm"]) and _kind(mod, found["epilogue"]) <= BROADCAST
                and all(_kind(mod, c) <= INJECTIVE for c in inner[1:]))

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


def _layout_prologue_patterns(mod: tvm.IRModule) -> list[tuple]:
    """FuseOpsByPattern entries for layout op(s) -> an operand of a two-operand batch GEMM (the heads split of
    Q, K, V before Q K^T and P V), each layout PrimFunc single-input, injective and used once; both operands'
    chains where both have one."""

    def check(ctx: relax.transform.PatternCheckContext) -> bool:
        found = ctx.annotated_expr
        layouts = [found[k] for k in found if k.startswith("layout")]
        return (_used_once(ctx, layouts) and _is_gemm(mod, found["gemm"])
                and all(_kind(mod, c) <= INJECTIVE for c in layouts))

    patterns = []
    for operands in ((0, 1), (0,), (1,)):  # both chains first
        annotations = {}
        args = [wildcard(), wildcard()]
        for i in operands:
            args[i] = annotations[f"layout{i}"] = _call_tir(wildcard())
        annotations["gemm"] = gemm = _call_tir(*args)
        patterns.append(("ibert.layout_gemm", gemm, annotations, check))
    return patterns


def _is_requantize(expr: relax.Expr | None) -> bool:
    """A call_tir of an `ibert.requantize` PrimFunc (LegalizeOps names it after the op, ops/registry.py)."""
    return (isinstance(expr, relax.Call) and expr.op.same_as(_CALL_TIR)
            and expr.args[0].name_hint.startswith(REQUANTIZE))


@relax.expr_functor.mutator
class _SplitRequantizeChains(relax.PyExprMutator):
    """Point each requantize whose input is another requantize's output at an opaque copy of its PrimFunc."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.mod = mod

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        x = call.args[1].fields[0] if _is_requantize(call) else None
        if not (isinstance(x, relax.Var) and _is_requantize(self.lookup_binding(x))):
            return call
        func = self.mod[call.args[0]].with_attr("op_pattern", OPAQUE)
        gvar = self.builder_.add_func(func, f"{call.args[0].name_hint}_unfused")
        return relax.call_tir(gvar, call.args[1], call.ty_args[0])


@tvm.transform.module_pass(opt_level=0, name="FuseRequantize")
class FuseRequantize:
    """Fuse each requantize (and elementwise chain) into the linear/matmul producing it, where legal."""

    def __init__(self, split_requantize_chains: bool = False, layout_prologues: bool = False) -> None:
        """`split_requantize_chains`: keep requantize -> requantize in separate PrimFuncs (for GPU targets);
        `layout_prologues`: also fuse the layout copies that feed a batch GEMM's operands into it (x86, whose
        schedule inlines them into the operand packing)."""
        self.split_requantize_chains = split_requantize_chains
        self.layout_prologues = layout_prologues

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Annotate op patterns, fuse GEMM -> layout -> requantize by pattern, then FuseOps and FuseTIR."""
        mod = relax.transform.AnnotateTIROpPattern()(mod)
        if self.split_requantize_chains:
            split = _SplitRequantizeChains(mod)
            for gvar, func in mod.functions_items():
                if isinstance(func, relax.Function):
                    split.builder_.update_func(gvar, split.visit_expr(func))
            mod = split.builder_.get()
        mod = tvm.transform.Sequential([
            relax.transform.FuseOpsByPattern(_layout_epilogue_patterns(mod), bind_constants=False),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ])(mod)
        if not self.layout_prologues:
            return mod
        mod = relax.transform.AnnotateTIROpPattern()(mod)
        return tvm.transform.Sequential([
            relax.transform.FuseOpsByPattern(_layout_prologue_patterns(mod), bind_constants=False),
            relax.transform.FuseTIR(),
        ])(mod)
