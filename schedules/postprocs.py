"""MetaSchedule post-processors the CPU families' tuning spaces share."""

from __future__ import annotations

from collections.abc import Iterator

from tvm import s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

__all__ = ["KeepIntrinsicsUnvectorized", "TensorizeOrReject"]

_AUTO_TENSORIZE = "meta_schedule.auto_tensorize"


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
        if "meta_schedule.vectorize" in sch.get(root).annotations and any(
                _AUTO_TENSORIZE in sch.get(b).annotations for b in _blocks(sch, root)):
            sch.unannotate(root, "meta_schedule.vectorize")
        return True

    def clone(self) -> KeepIntrinsicsUnvectorized:
        return KeepIntrinsicsUnvectorized()


@derived_object
class TensorizeOrReject(ms.postproc.PyPostproc):
    """TVM's `RewriteTensorize(vectorize_init_loop=True)`, except that a candidate whose marked block does not
    tensorize is rejected, not kept as a scalar GEMM after a C++ warning on stderr (about 100 per short tune).

    Such candidates come from sketches where `AutoInline` put the u8 shift (or int16 widening) of the
    activations into the GEMM block after `MultiLevelTilingWithIntrin` marked it: the block then reads
    `int8 + 128`, not the intrinsic's u8 operand.
    """

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        """Nothing to initialize."""

    def apply(self, sch: s_tir.Schedule) -> bool:
        """Tensorize every block marked with an intrinsic and vectorize the init loop of every block marked
        with none (`RewriteReductionBlock`'s init blocks); False if one of them does not go through. Like
        TVM's, children before parents, and no init loop vectorized for a block whose name starts with
        "init" (TVM tests `find("init")` for truth); the one PrimFunc of a tuning task, `main`."""
        root = sch.get_sblock(sch.mod["main"].body.block.name_hint)
        marked = [(sch.get(b).name_hint, str(sch.get(b).annotations[_AUTO_TENSORIZE]))
                  for b in _blocks(sch, root) if _AUTO_TENSORIZE in sch.get(b).annotations]
        for name, intrinsic in reversed(marked):
            try:
                block = sch.get_sblock(name)
                sch.unannotate(block, _AUTO_TENSORIZE)
                if intrinsic:
                    sch.tensorize(block, intrinsic)
                elif not name.startswith("init"):
                    (init,) = sch.get_child_blocks(block)
                    (loop,) = sch.get_loops(init)
                    sch.vectorize(loop)
            except (RuntimeError, ValueError):  # ScheduleError; not one init block with one loop
                return False
        return True

    def clone(self) -> TensorizeOrReject:
        return TensorizeOrReject()


def _blocks(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> Iterator[s_tir.schedule.SBlockRV]:
    """Every block nested (at any depth) under `block`, parents before their children."""
    for child in sch.get_child_blocks(block):
        yield child
        yield from _blocks(sch, child)
