"""Untuned int8 GEMM schedules for CUDA: INT8 tensor cores (WMMA, `imma`) and dp4a, as dlight schedule rules.

Both apply to a PrimFunc with exactly one reduction block of the GEMM form
`C[S..., I, J] += int32(A[S..., I, K]) * int32(B[S..., J, K])` (any order of the axes in the buffers) with
int8 `A` and `B` and an int32 `C`, followed by any epilogue of spatial blocks: `ibert.linear` (bias add,
requantize, GELU fused after it) and `ibert.matmul` Q.K^T. The P.V matmul reads int16 probabilities
(values up to 256) and is left to the SIMT rule. The GEMM is first normalized to `C[b, i, j] += A[b, i, k] *
B[b, j, k]` (dlight's reindex index maps: batch axes fused into `b`, B always [N, K]), then padded with
`pad_einsum` to the tile sizes below: shapes that the tiles do not divide are computed on a zero-padded
copy of the operands, and only the valid part of the result reaches the epilogue. The epilogue is inlined
into the loop that copies the accumulator tile out, so bias and requantization run on registers and only
the final (int8) output is written.

- `TensorCoreMatmul`: 16x16x16 WMMA fragments (IMMA in SASS); a thread block of 2x2 warps, each owning
  2x2 fragments of C (a 64x64 tile), K staged through shared memory 32 at a time. Declines M or N below 16
  (not one full fragment: the tile would be mostly padding), which then falls to dp4a.
- `Dp4aMatmul`: dlight's SIMT matmul tiling (16x8 threads, 4x4 outputs each, a 64x32 tile of C), with
  K staged 16 at a time through shared memory and the innermost 4 of K as one `__dp4a`.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain, auto_inline_producers, get_index_map
from tvm.s_tir.schedule import SBlockRV
from tvm.target import Target

from . import cuda_intrin

__all__ = ["Dp4aMatmul", "TensorCoreMatmul", "int8_gemm_block"]

WARP = 32


def int8_gemm_block(sch: s_tir.Schedule) -> SBlockRV | None:
    """The PrimFunc's only reduction block when it is an int8 x int8 -> int32 GEMM, else None."""
    blocks = sch.get_child_blocks(get_root_block(sch))
    kinds = [{iv.iter_type for iv in sch.get(b).iter_vars} for b in blocks]
    reductions = [b for b, k in zip(blocks, kinds) if tirx.IterVar.CommReduce in k]
    if len(reductions) != 1 or not all(k <= {tirx.IterVar.DataPar, tirx.IterVar.CommReduce} for k in kinds):
        return None
    stmt = sch.get(reductions[0])
    dtypes = [r.source.dtype for r in stmt.reads]
    if dtypes != ["int8", "int8"] or stmt.writes[0].source.dtype != "int32" or get_index_map(stmt) is None:
        return None
    return reductions[0]


def _normalize(sch: s_tir.Schedule, block: SBlockRV) -> None:
    """Rewrite the GEMM block to C[b, i, j] += A[b, i, k] * B[b, j, k] over reindexed copies (dlight's maps)."""
    reindex_a = sch.reindex(block, ("read", 0))
    reindex_b = sch.reindex(block, ("read", 1))
    reindex_c = sch.reindex(block, ("write", 0))
    block_map, a_map, b_map, c_map = get_index_map(sch.get(block))
    sch.transform_layout(reindex_a, ("write", 0), a_map)
    sch.transform_layout(reindex_b, ("write", 0), b_map)
    sch.transform_layout(reindex_c, ("read", 0), c_map)
    sch.transform_block_layout(block, block_map)


def _extents(sch: s_tir.Schedule, block: SBlockRV) -> list[int | None]:
    """The constant extents of the block's iterators (None where symbolic)."""
    return [int(iv.dom.extent) if isinstance(iv.dom.extent, tirx.IntImm) else None for iv in sch.get(block).iter_vars]


def _prepared_gemm(rule: GPUScheduleRule, func: tirx.PrimFunc, target: Target
                   ) -> tuple[s_tir.Schedule, SBlockRV] | None:
    """A schedule of `func` with its int8 GEMM block normalized to [batch, i, j, k], or None where `rule`
    does not apply (not a PrimFunc, another target, no int8 GEMM)."""
    if not isinstance(func, tirx.PrimFunc) or not rule.is_target_available(target):
        return None
    sch = s_tir.Schedule(func)
    block = int8_gemm_block(sch)
    if block is None:
        return None
    cuda_intrin.register()
    _normalize(sch, block)
    return sch, block


class TensorCoreMatmul(GPUScheduleRule):
    """int8 GEMM on INT8 tensor cores (WMMA 16x16x16), for sm_72 and newer."""

    warps = (2, 2)  # warps of a thread block along (i, j)
    fragments = (2, 2)  # 16x16 fragments of C per warp along (i, j)
    k_fragments = 2  # 16-wide K slices staged in shared memory per step

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        prepared = _prepared_gemm(self, func, target)
        if prepared is None:
            return None
        sch, block = prepared
        _, m, n, k = _extents(sch, block)
        if (m is not None and m < 16) or (n is not None and n < 16):
            return None
        self._schedule(sch, block, [m, n, k])
        return sch

    def _schedule(self, sch: s_tir.Schedule, block: SBlockRV, extents: list[int | None]) -> None:
        """Tile, stage through shared memory and tensorize the normalized GEMM block."""
        (wi, wj), (fi, fj), fk = self.warps, self.fragments, self.k_fragments
        tiles = [16 * wi * fi, 16 * wj * fj, 16 * fk]
        padded = [e is None or e % t != 0 for e, t in zip(extents, tiles)]
        sch.pad_einsum(block, [1, *tiles])
        batch, i, j, k = sch.get_loops(block)
        i, ii = sch.split(i, [None, 16])
        j, jj = sch.split(j, [None, 16])
        k, kk = sch.split(k, [None, 16])
        sch.reorder(i, j, k, ii, jj, kk)
        inner = block
        outer = sch.blockize(ii)
        i0, i1, i2 = sch.split(i, [None, wi, fi])
        j0, j1, j2 = sch.split(j, [None, wj, fj])
        k0, k1 = sch.split(k, [None, fk])
        sch.reorder(i0, j0, i1, j1, k0, k1, i2, j2)
        sch.bind(batch, "blockIdx.y")
        sch.bind(sch.fuse(i0, j0), "blockIdx.x")
        warp = sch.fuse(i1, j1)
        sch.bind(warp, "threadIdx.y")
        for index, rows_padded in ((0, padded[0]), (1, padded[1])):
            # TVM's CUDA codegen cannot write a 16-lane int8 zero (the padding), so padded operands load 4 bytes
            self._fetch_to_shared(sch, outer, index, k0, 4 if rows_padded or padded[2] else 16)
        for index, scope, intrin in ((0, "wmma.matrix_a", "load_a"), (1, "wmma.matrix_b", "load_b")):
            load = sch.cache_read(outer, index, scope)
            sch.compute_at(load, k1)
            self._tensorize_tiles(sch, load, cuda_intrin.WMMA[intrin])
        out = sch.cache_write(outer, 0, cuda_intrin.ACCUMULATOR_SCOPE)
        sch.storage_align(out, 0, axis=-2, factor=16, offset=4)
        store = sch.cache_write(outer, 0, "wmma.accumulator")
        sch.reverse_compute_at(store, warp)
        sch.reverse_compute_at(out, warp)
        self._tensorize_tiles(sch, store, cuda_intrin.WMMA["store"])
        init = sch.decompose_reduction(outer, k0)
        sch.tensorize(sch.get_loops(sch.get_child_blocks(init)[0])[-2], cuda_intrin.WMMA["fill"])
        sch.tensorize(sch.get_loops(inner)[-3], cuda_intrin.WMMA["sync"])
        auto_inline_consumer_chain(sch, out)
        _, tx = sch.split(sch.fuse(*sch.get_loops(out)[-2:]), [None, WARP])
        sch.bind(tx, "threadIdx.x")

    def _fetch_to_shared(self, sch: s_tir.Schedule, block: SBlockRV, index: int, k0: tirx.Var, vector: int) -> None:
        """Stage operand `index` in (dynamic) shared memory, loaded by the whole block `vector` bytes a thread."""
        fetch = sch.cache_read(block, index, cuda_intrin.OPERAND_SCOPE)
        sch.compute_at(fetch, k0)
        warps = self.warps[0] * self.warps[1]
        _, ty, tx, vec = sch.split(sch.fuse(*sch.get_loops(fetch)[-2:]), [None, warps, WARP, vector])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.vectorize(vec)
        sch.storage_align(fetch, 0, axis=-2, factor=32, offset=16)
        auto_inline_producers(sch, fetch)

    @staticmethod
    def _tensorize_tiles(sch: s_tir.Schedule, block: SBlockRV, intrin: str) -> None:
        """Split the block's last two loops into 16x16 tiles and tensorize each tile with `intrin`."""
        i, j = sch.get_loops(block)[-2:]
        i0, i1 = sch.split(i, [None, 16])
        j0, j1 = sch.split(j, [None, 16])
        sch.reorder(i0, j0, i1, j1)
        sch.tensorize(i1, intrin)


class Dp4aMatmul(GPUScheduleRule):
    """int8 GEMM with `__dp4a` (4-way s8 dot product into s32), for sm_61 and newer."""

    threads = (16, 8)  # threads of a block along (i, j)
    micro = (4, 4)  # outputs per thread along (i, j)
    k_tile = 16  # K staged in shared memory per step

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        prepared = _prepared_gemm(self, func, target)
        if prepared is None:
            return None
        sch, block = prepared
        self._schedule(sch, block)
        return sch

    def _schedule(self, sch: s_tir.Schedule, block: SBlockRV) -> None:
        """SIMT tiling with register accumulators; the innermost 4 of K become one dp4a."""
        (ti, tj), (mi, mj) = self.threads, self.micro
        sch.pad_einsum(block, [1, ti * mi, tj * mj, self.k_tile])
        batch, i, j, k = sch.get_loops(block)
        bi, ty, ii = sch.split(i, [None, ti, mi])
        bj, tx, jj = sch.split(j, [None, tj, mj])
        ko, ki, k4 = sch.split(k, [None, self.k_tile // 4, 4])
        sch.reorder(bi, bj, ty, tx, ko, ki, ii, jj, k4)
        sch.bind(sch.fuse(batch, bi), "blockIdx.y")
        sch.bind(bj, "blockIdx.x")
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        local = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(local, tx, preserve_unit_loops=True)
        for index in (0, 1):
            fetch = sch.cache_read(block, index, "shared")
            sch.compute_at(fetch, ko, preserve_unit_loops=True)
            fty, ftx, _, vec = sch.split(sch.fuse(*sch.get_loops(fetch)[-2:]), [ti, tj, None, 4])
            sch.bind(fty, "threadIdx.y")
            sch.bind(ftx, "threadIdx.x")
            sch.vectorize(vec)
            sch.storage_align(fetch, 0, axis=-2, factor=32, offset=4)  # rows stay 4-byte aligned for dp4a
            auto_inline_producers(sch, fetch)
        auto_inline_consumer_chain(sch, local)
        sch.decompose_reduction(block, ko)
        sch.tensorize(k4, cuda_intrin.DP4A)
