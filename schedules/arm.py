"""aarch64 CPU schedules: int8 GEMMs on the `sdot` dot product (ARMv8.2+) or a NEON multiply-add sequence.

`apply_default_schedule` gives every PrimFunc of the legalized, fused program an untuned schedule:

- int8 x int8 -> int32 GEMMs (`ibert.linear`, its fused requantize / GELU epilogues included, and the Q.K^T
  `ibert.matmul`) whose N and K are multiples of 4 are tensorized with a 4x4 int8 dot-product intrinsic:
  `sdot` where the target has `dotprod`, else NEON's `smull` + `saddlp` + `addp` (the same sums in six
  instructions instead of one). Each kernel step computes a 4-row x 16-column block of the output in 16
  int32x4 registers from 4 broadcast rows of A and a 16x4 panel of B. The intrinsic needs B in 4x4 blocks
  ([N/4, K/4, 4, 4]): a constant weight is packed once at compile time (the PrimFunc's parameter layout
  changes and every call site gets the packed constant), any other B (the keys of Q.K^T) is packed inside
  the kernel.
- Everything else (the P.V matmul with int16 probabilities, GEMMs whose N or K is not a multiple of 4,
  softmax, LayerNorm, requantize, GELU, embeddings) keeps its legalized loops, which LLVM vectorizes for
  NEON; loop nests big enough to pay for a thread launch run their leading spatial loops in parallel.

`tuning_space` is MetaSchedule's ARM space (TVM's `DefaultARM` rules) with the post-processors that build.

Measured under qemu-aarch64, one thread, one int8 linear 64x768x768 (+ bias), against the placeholder (no
schedule, LLVM's own vectorization, which already uses `sdot` over K): 120-159 ms vs 144-187 ms with
`sdot`, 359-467 ms vs 802-983 ms with NEON on a Cortex-A53 model. Emulated times only rank the code; the
kernels' point is 0.5 loads per `sdot` instead of 2, which emulation does not price.
"""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, s_tir, tirx
from tvm.s_tir import meta_schedule as ms
from tvm.script import tirx as T
from tvm.target import Target, codegen

from .postprocs import KeepIntrinsicsUnvectorized, TensorizeOrReject

__all__ = ["INTRINSICS", "apply_default_schedule", "dot_instruction", "tuning_space"]

#: Register block of the GEMM kernel: TILE_M rows x TILE_N columns of int32 accumulators.
TILE_M, TILE_N = 4, 16
#: Side of the intrinsic: C[4] += A[4] . B[4, 4] (4 outputs, 4-deep int8 dot products).
LANES = 4
#: A loop nest with fewer iterations than this stays on one thread (a launch costs a few microseconds).
MIN_PARALLEL_WORK = 16384

#: Our tensor intrinsics, by the instruction they use: the accumulator is a `local` buffer (TVM's own ARM
#: intrinsics keep it in `global` memory, so LLVM reloads and stores it around every dot product).
INTRINSICS = {"sdot": "ibert_arm_dot_4x4_i8i8s32_sdot_local", "neon": "ibert_arm_dot_4x4_i8i8s32_neon_local"}


def dot_instruction(target: Target) -> str | None:
    """The int8 dot-product instruction the schedules use on `target`: 'sdot', 'neon', or None (not aarch64)."""
    if target.kind.name != "llvm" or not str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return None
    return "sdot" if codegen.llvm_cpu_has_features("dotprod", target) else "neon"


def apply_default_schedule(mod: tvm.IRModule, target: Target, **options) -> tvm.IRModule:
    """Schedule every PrimFunc of `mod` not yet scheduled (by a tuning database) for an aarch64 `target`.

    Tensorizes the int8 GEMMs and packs their constant weights (which rewrites the call sites in the Relax
    functions); parallelizes large loop nests. `options` are accepted for the common hook signature; the
    ARM family has none. Raises ValueError for a target that is not aarch64 LLVM.
    """
    instruction = dot_instruction(target)
    if instruction is None:
        raise ValueError(f"the ARM schedules need an aarch64 llvm target, got {target}")
    _register_intrinsics()
    constant_args = _constant_call_args(mod)
    packed: dict[tvm.ir.GlobalVar, int] = {}  # PrimFunc -> its weight parameter packed at compile time
    updates = {}
    for gvar, func in mod.functions_items():
        if (not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", False)
                or not isinstance(func.body, s_tir.SBlockRealize)):  # not schedulable (e.g. a library's scan)
            continue
        sch = s_tir.Schedule(func)
        gemm = _find_int8_gemm(sch)
        if gemm is not None:
            pack_param = gemm.weight_layout and gemm.b_param in constant_args.get(gvar, ())
            _schedule_gemm(sch, gemm, INTRINSICS[instruction], pack_param)
            if pack_param:
                packed[gvar] = gemm.b_param
        _parallelize_root_nests(sch)
        updates[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    mod = mod.clone()
    for gvar, func in updates.items():
        mod[gvar] = func
    return _pack_constant_weights(mod, packed) if packed else mod


def tuning_space(target: Target) -> dict:
    """MetaSchedule's ARM space for `target`: TVM's rules for the target (DefaultARM: the `sdot` or NEON 4x4
    intrinsic by its features, plain multi-level tiling otherwise) and the CPU post-processors, led by
    `KeepIntrinsicsUnvectorized`. Measured with the builder alone on 32 candidates of the tiny encoder's
    linear + requantize task: TVM's default post-processors fail 41 % of them ("Cannot broadcast lanes=4 to
    16", to 8 or 32 on NEON), these fail none, on both `aarch64` and `aarch64-neon`.
    """
    postprocs = [KeepIntrinsicsUnvectorized(), ms.postproc.DisallowDynamicLoop(),
                 ms.postproc.RewriteParallelVectorizeUnroll(), ms.postproc.RewriteReductionBlock(),
                 TensorizeOrReject(), ms.postproc.RewriteLayout()]
    return {"space": ms.space_generator.PostOrderApply(sch_rules="from-target", postprocs=postprocs,
                                                       mutator_probs="from-target")}


# ----------------------------------------------------------------------------------------------------------
# Tensor intrinsics


def _dot_desc() -> tirx.PrimFunc:
    """C[i] += sum_k A[k] * B[i, k] for a 4-vector of int32 accumulators in registers."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int8", offset_factor=1)
        B = T.match_buffer(b, (4, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (4,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            for i, k in T.grid(4, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk])

    return desc


def _sdot_impl() -> tirx.PrimFunc:
    """One `sdot v.4s, a.16b, b.16b`: A's 4 bytes broadcast to the 4 lanes, B's 16 bytes as 4 rows."""

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int8", offset_factor=1, strides=[1])
        B = T.match_buffer(b, (4, 4), "int8", offset_factor=1, strides=[4, 1])
        C = T.match_buffer(c, (4,), "int32", offset_factor=1, scope="local", strides=[1])
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            a_x16 = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 4), dtype="int8x16")
            C[T.ramp(0, 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                C.vload([0], "int32x4"), a_x16, B.vload([0, 0], "int8x16"), dtype="int32x4")

    return impl


def _neon_impl() -> tirx.PrimFunc:
    """The same dot products without `sdot`: int8 x int8 -> int16 (smull), pairwise widening adds to int32."""

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int8", offset_factor=1, strides=[1])
        B = T.match_buffer(b, (4, 4), "int8", offset_factor=1, strides=[4, 1])
        C = T.match_buffer(c, (4,), "int32", offset_factor=1, scope="local", strides=[1])
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            a_x8 = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 2), dtype="int8x8")
            b_x16 = B.vload([0, 0], dtype="int8x16")
            rows01 = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"), T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"), a_x8,
                    T.vectorlow(b_x16, dtype="int8x8"), dtype="int16x8"), dtype="int32x4")
            rows23 = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"), T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"), a_x8,
                    T.vectorhigh(b_x16, dtype="int8x8"), dtype="int16x8"), dtype="int32x4")
            C[T.ramp(0, 1, 4)] = C.vload([0], "int32x4") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.addp.v4i32"), rows01, rows23, dtype="int32x4")

    return impl


@functools.cache
def _register_intrinsics() -> None:
    """Register INTRINSICS with TVM once per process (TensorIntrin's registry is global)."""
    desc = _dot_desc()
    s_tir.TensorIntrin.register(INTRINSICS["sdot"], desc, _sdot_impl(), override=True)
    s_tir.TensorIntrin.register(INTRINSICS["neon"], desc, _neon_impl(), override=True)


# ----------------------------------------------------------------------------------------------------------
# The int8 GEMM kernel


@dataclass(frozen=True)
class _Gemm:
    """An int8 x int8 -> int32 GEMM block C[batch, m, n] += A[batch, m, k] * B[batch, n|k, k|n] and its axes."""

    block: s_tir.schedule.SBlockRV
    b_read: int  # index of B among the block's reads
    b_param: int | None  # position of B among the PrimFunc's parameters (None: an intermediate buffer)
    batch: tuple[int, ...]  # positions in `iters` of the batch axes (indexing C, A and B)
    m: tuple[int, ...]  # ... of the row axes (indexing C and A)
    n: int  # ... of the column axis
    k: int  # ... of the reduction axis
    b_indices: tuple[int, ...]  # positions in `iters` of B's indices, in B's order
    extents: tuple[int, ...]  # each iter var's extent

    @property
    def weight_layout(self) -> bool:
        """B is a PrimFunc parameter laid out [N, K], as `ibert.linear`'s weight (what `_pack_weight` packs)."""
        return self.b_param is not None and self.b_indices == (self.n, self.k)


def _find_int8_gemm(sch: s_tir.Schedule) -> _Gemm | None:
    """The tensorizable int8 GEMM block of the PrimFunc (N, K multiples of 4), or None when there is none."""
    for block in _root_children(sch):
        gemm = _as_int8_gemm(sch, block)
        if gemm is not None:
            return gemm
    return None


def _as_int8_gemm(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> _Gemm | None:
    """`block` as a _Gemm when it is C[...] = C[...] + int32(A[...]) * int32(B[...]) on int8 A, B, else None."""
    stmt = sch.get(block)
    store = stmt.body
    reduce = [i for i, iv in enumerate(stmt.iter_vars) if iv.iter_type == tirx.IterVar.CommReduce]
    if (len(reduce) != 1 or stmt.init is None or not isinstance(store, tirx.BufferStore)
            or store.buffer.dtype != "int32" or not isinstance(store.value, tirx.Add)
            or not isinstance(store.value.b, tirx.Mul)):
        return None
    loads = [_cast_load(x) for x in (store.value.b.a, store.value.b.b)]
    if any(ld is None or ld.source.dtype != "int8" for ld in loads):
        return None
    position = {iv.var: i for i, iv in enumerate(stmt.iter_vars)}
    c_idx, (a_idx, b_idx) = _positions(store.indices, position), (_positions(ld.indices, position) for ld in loads)
    k = reduce[0]
    if c_idx is None or a_idx is None or b_idx is None or not c_idx or a_idx[-1] != k or k not in b_idx:
        return None
    n = c_idx[-1]
    if n not in b_idx or set(b_idx) - {n, k} - set(c_idx) or set(a_idx) != set(c_idx) - {n} | {k}:
        return None
    batch = tuple(i for i in c_idx if i in b_idx and i != n)
    extents = tuple(int(iv.dom.extent) for iv in stmt.iter_vars)
    if extents[n] % LANES or extents[k] % LANES:
        return None
    b_buffer = loads[1].source
    b_read = next(i for i, r in enumerate(stmt.reads) if r.source.same_as(b_buffer))
    b_param = next((i for i, p in enumerate(sch.mod["main"].params) if p.same_as(b_buffer)), None)
    return _Gemm(block, b_read, b_param, batch, tuple(i for i in c_idx if i not in batch and i != n), n, k,
                 tuple(b_idx), extents)


def _root_children(sch: s_tir.Schedule) -> list[s_tir.schedule.SBlockRV]:
    """The blocks right under the PrimFunc's root block (named "root" by TE, otherwise by library ops)."""
    return list(sch.get_child_blocks(sch.get_sblock(sch.mod["main"].body.block.name_hint)))


def _cast_load(expr: tirx.PrimExpr) -> tvm.ir.expr.TensorLoad | None:
    """The buffer load inside `int32(load)`, or None."""
    if isinstance(expr, tirx.Cast) and isinstance(expr.value, tvm.ir.expr.TensorLoad):
        return expr.value
    return None


def _positions(indices, position: dict) -> tuple[int, ...] | None:
    """Each index's iter-var position, or None unless every index is a bare iter var."""
    out = tuple(position.get(i) if isinstance(i, tirx.Var) else None for i in indices)
    return None if None in out else out


def _pack_map(gemm: _Gemm) -> tirx.IndexMap:
    """B's index map [..., n, k] or [..., k, n] -> [..., n/4, k/4, n%4, k%4] (batch axes kept in front)."""
    n_at, k_at = gemm.b_indices.index(gemm.n), gemm.b_indices.index(gemm.k)

    def pack(*idx):
        rest = [v for i, v in enumerate(idx) if i not in (n_at, k_at)]
        n, k = idx[n_at], idx[k_at]
        return (*rest, n // LANES, k // LANES, n % LANES, k % LANES)

    return tirx.IndexMap.from_func(pack, ndim=len(gemm.b_indices))


def _schedule_gemm(sch: s_tir.Schedule, gemm: _Gemm, intrin: str, pack_param: bool) -> None:
    """Tensorize `gemm` with `intrin`: B packed in 4x4 blocks, a TILE_M x TILE_N register block per step."""
    block = gemm.block
    if pack_param:
        sch.transform_layout(block, ("read", gemm.b_read), _pack_map(gemm))
    else:
        packing = sch.cache_read(block, gemm.b_read, "global")
        sch.transform_layout(packing, ("write", 0), _pack_map(gemm))
    sch.transform_block_layout(block, _canonical_iters(gemm))
    writeback = sch.reindex(block, ("write", 0))  # C as [batch?, M, N]: a compact register tile below
    sch.set_scope(block, 0, "local")
    *batch, m, n, k = sch.get_loops(block)
    mo, mi = sch.split(m, [None, _largest_divisor(_extent(sch, m), TILE_M)])
    no, nj, ni = sch.split(n, [None, _largest_divisor(_extent(sch, n) // LANES, TILE_N // LANES), LANES])
    ko, ki = sch.split(k, [None, LANES])
    sch.reorder(*batch, mo, no, ko, mi, nj, ni, ki)
    sch.reverse_compute_at(writeback, no)
    sch.parallel(sch.fuse(*batch, mo, no))  # before the init split: parallel wants a complete reduction block
    sch.unroll(mi)
    sch.unroll(nj)
    init = sch.decompose_reduction(block, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.split(sch.get_loops(writeback)[-1], [None, LANES])[-1])
    sch.tensorize(ni, intrin)


def _canonical_iters(gemm: _Gemm) -> tirx.IndexMap:
    """Block iteration map onto ([batch fused,] m fused, n, k), the loop nest the kernel tiles."""

    def fuse(vs: list, axes: tuple[int, ...]):
        out = 0
        for axis in axes:
            out = out * gemm.extents[axis] + vs[axis]
        return out

    def remap(*vs):
        head = (fuse(vs, gemm.batch),) if gemm.batch else ()
        return (*head, fuse(vs, gemm.m), vs[gemm.n], vs[gemm.k])

    return tirx.IndexMap.from_func(remap, ndim=len(gemm.extents))


def _extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int:
    return int(sch.get(loop).extent)


def _largest_divisor(extent: int, at_most: int) -> int:
    """The largest d <= at_most dividing extent (tiles stay exact: no predicated tails around the intrinsic)."""
    return next(d for d in range(min(at_most, extent), 0, -1) if extent % d == 0)


# ----------------------------------------------------------------------------------------------------------
# Parallel loops for everything else


def _parallelize_root_nests(sch: s_tir.Schedule) -> None:
    """Parallelize each big enough loop nest of the PrimFunc that no schedule touched (all loops serial)."""
    for block in _root_children(sch):
        loops = sch.get_loops(block)
        if loops and not any(sch.get(loop).kind != tirx.ForKind.SERIAL for loop in loops):
            _parallelize(sch, block)


def _parallelize(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> None:
    """Fuse the block's leading spatial loops into one parallel loop when the nest does enough work."""
    loops = sch.get_loops(block)
    spatial = _leading_spatial_loops(sch, block, loops)
    work = int(np.prod([_extent(sch, loop) for loop in loops]))
    if not spatial or work < MIN_PARALLEL_WORK or int(np.prod([_extent(sch, loop) for loop in spatial])) < 2:
        return
    try:
        sch.parallel(sch.fuse(*spatial) if len(spatial) > 1 else spatial[0])
    except s_tir.ScheduleError:  # a nest that is not a complete block (e.g. a scan): stays serial
        pass


def _leading_spatial_loops(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, loops: list) -> list:
    """The outermost loops, up to the first one that drives a reduction axis of `block` (or several blocks)."""
    realize = sch.get(loops[-1]).body if loops else None
    if not isinstance(realize, s_tir.SBlockRealize):
        return []
    reduce_vars = set()
    for iv, value in zip(realize.block.iter_vars, realize.iter_values):
        if iv.iter_type != tirx.IterVar.DataPar:
            reduce_vars |= set(tirx.analysis.undefined_vars(value))
    out = []
    for loop in loops:
        if sch.get(loop).loop_var in reduce_vars:
            break
        out.append(loop)
    return out


# ----------------------------------------------------------------------------------------------------------
# Compile-time weight packing in the Relax functions


def _constant_call_args(mod: tvm.IRModule) -> dict[tvm.ir.GlobalVar, set[int]]:
    """For each PrimFunc used only through call_tir, the argument positions constant at every call site."""
    call_tir = tvm.ir.Op.get("relax.call_tir")
    constants: dict[tvm.ir.GlobalVar, set[int]] = {}
    references: collections.Counter = collections.Counter()

    def visit(node) -> None:
        if isinstance(node, tvm.ir.GlobalVar):
            references[node] += 1
        elif isinstance(node, relax.Call) and node.op.same_as(call_tir):
            gvar, args = node.args[0], node.args[1].fields
            constant = {i for i, a in enumerate(args) if isinstance(a, tvm.ir.expr.GenericConst)}
            constants[gvar] = constants[gvar] & constant if gvar in constants else constant
            references[gvar] -= 1  # this reference is a call_tir's callee

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return {gvar: positions for gvar, positions in constants.items() if references[gvar] == 0}


def _pack_constant_weights(mod: tvm.IRModule, packed: dict[tvm.ir.GlobalVar, int]) -> tvm.IRModule:
    """Pass each PrimFunc in `packed` its weight constant packed [N/4, K/4, 4, 4], as its parameter now is.

    The PrimFuncs get new GlobalVars: a GlobalVar carries its function's signature, which packing changed.
    """
    call_tir = tvm.ir.Op.get("relax.call_tir")
    funcs = {gvar: mod[gvar] for gvar in packed}
    for gvar in packed:
        del mod[gvar]
    bb = relax.BlockBuilder(mod)
    renamed = {gvar: bb.add_func(func, gvar.name_hint) for gvar, func in funcs.items()}

    @relax.expr_functor.mutator
    class _Repack(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = super().visit_call_(call)
            if not (call.op.same_as(call_tir) and call.args[0] in renamed):
                return call
            args = list(call.args[1].fields)
            position = packed[call.args[0]]
            args[position] = relax.const(_pack_weight(args[position].value.numpy()))
            return relax.Call(call.op, [renamed[call.args[0]], relax.Tuple(args), *call.args[2:]], call.attrs,
                              call.ty_args)

    for gvar, func in bb.get().functions_items():
        if isinstance(func, relax.Function):
            bb.update_func(gvar, _Repack().visit_expr(func))
    return bb.get()


def _pack_weight(weight: np.ndarray) -> np.ndarray:
    """[N, K] int8 -> [N/4, K/4, 4, 4]: the 4x4 blocks the dot-product intrinsic loads as one 16-byte vector."""
    n, k = weight.shape
    return np.ascontiguousarray(weight.reshape(n // LANES, LANES, k // LANES, LANES).transpose(0, 2, 1, 3))
