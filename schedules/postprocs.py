"""MetaSchedule post-processors the CPU families' tuning spaces share."""

from __future__ import annotations

from collections.abc import Callable

from tvm import s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

__all__ = ["KeepIntrinsicsUnvectorized"]


@derived_object
class KeepIntrinsicsUnvectorized(ms.postproc.PyPostproc):
    """Drop the vectorize annotation of a PrimFunc whose GEMM is to be tensorized (before it is applied).

    `ParallelizeVectorizeUnroll` marks the root block `meta_schedule.vectorize`; `RewriteParallelVectorizeUnroll`
    then vectorizes the innermost spatial loops of every block, which for a tensorized GEMM are the tile loops
    around the dot-product intrinsic. Vectorizing the intrinsic's vector code once more fails in TVM's
    vectorizer ("Cannot broadcast lanes=4 to 16" on ARM, "lanes=16 to 32" on x86). The intrinsic is a vector
    instruction already; the other blocks of such a candidate are left to LLVM's own vectorizer.
    """

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        """Nothing to initialize."""

    def apply(self, sch: s_tir.Schedule) -> bool:
        """Remove `meta_schedule.vectorize` from the root when any block is marked for auto-tensorization."""
        root = sch.get_sblock(sch.mod["main"].body.block.name_hint)
        if "meta_schedule.vectorize" in sch.get(root).annotations and _any_block(
                sch, root, lambda b: "meta_schedule.auto_tensorize" in sch.get(b).annotations):
            sch.unannotate(root, "meta_schedule.vectorize")
        return True

    def clone(self) -> KeepIntrinsicsUnvectorized:
        return KeepIntrinsicsUnvectorized()


def _any_block(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, predicate: Callable) -> bool:
    """Whether `predicate` holds for a block nested (at any depth) under `block`."""
    return any(predicate(child) or _any_block(sch, child, predicate) for child in sch.get_child_blocks(block))
