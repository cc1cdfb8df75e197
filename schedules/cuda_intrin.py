"""The int8 CUDA tensor intrinsics the default GEMM schedules tensorize with, registered on first use.

TVM's own definitions live in `tvm.s_tir.tensor_intrin.cuda`, but importing any module of that package
parses every intrinsic it defines (about 150 TVMScript PrimFunc pairs, measured 52 s here on an idle core;
over 100 s on a loaded machine), while the int8 GEMM needs six. So these six are defined here, after TVM's
generators (`get_wmma_*_intrin`, `get_dp4a_intrin`), restricted to s8 x s8 -> s32 with B given as [N, K]
(every GEMM is normalized so), and registered under `ibert_*` names, in about 1 s, once per process:

- WMMA 16x16x16 (`wmma::mma_sync` on s8 fragments, IMMA in SASS on sm_72+): fill, load A (row-major),
  load B (col-major: a [N, K] tile) from dynamic shared memory, sync, store to static shared memory;
- dp4a (`__dp4a`, IDP.4A.S8.S8 in SASS on sm_61+): a 4-element s8 dot product accumulated into s32.
"""

from __future__ import annotations

import functools

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.ir import Expr
from tvm.tirx import Buffer

__all__ = ["ACCUMULATOR_SCOPE", "DP4A", "OPERAND_SCOPE", "WMMA", "WMMA_SHAPE", "register"]

#: The (m, n, k) shape of one WMMA s8 fragment product.
WMMA_SHAPE = (16, 16, 16)
#: Where the WMMA operand tiles are staged (int8) and where the accumulator tile is stored (int32): two
#: scopes, so that TVM's StorageRewrite, which shares memory only within a scope, never places the int32
#: tile in an int8 tile's memory; it does within one scope, and then fails to lower the WMMA store
#: ("tvm_access_ptr element type must match"; TVM 0.27).
OPERAND_SCOPE, ACCUMULATOR_SCOPE = "shared.dyn", "shared"
#: role -> registered intrinsic name, for `sch.tensorize`.
WMMA = {"fill": "ibert_wmma_fill_s32", "load_a": "ibert_wmma_load_s8_a", "load_b": "ibert_wmma_load_s8_b_trans",
        "sync": "ibert_wmma_sync_s8s8s32_trans", "store": "ibert_wmma_store_s32_shared"}
DP4A = "ibert_dp4a_s8s8s32"
_M, _N, _K = WMMA_SHAPE


def _fragment(buffer: Buffer, stride: Expr, rows: int, cols: int) -> Expr:
    """The index of the 16x16 fragment a buffer view starts at, within its fragment array (row-major)."""
    return buffer.elem_offset // stride // rows * (stride // cols) + buffer.elem_offset % stride // cols


def _load(is_b: bool) -> tuple:
    """[16, 16] int8 operand tile -> wmma.matrix_a (row-major [M, K]) or wmma.matrix_b (col-major [N, K])."""
    scope, layout = ("wmma.matrix_b", "col_major") if is_b else ("wmma.matrix_a", "row_major")

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (16, 16), "int8", align=64, offset_factor=16, scope=OPERAND_SCOPE)
        C = T.match_buffer(c, (16, 16), "int8", align=64, offset_factor=16, scope=scope)
        with T.sblock("root"):
            T.reads(A[0:16, 0:16])
            T.writes(C[0:16, 0:16])
            for i, j in T.grid(16, 16):
                with T.sblock("load"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    C[vi, vj] = A[vi, vj]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, c: T.handle) -> None:
        s1, s0, d1, d0 = T.int32(), T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (16, 16), "int8", align=64, offset_factor=16, scope=OPERAND_SCOPE,
                           strides=[s1, s0])
        C = T.match_buffer(c, (16, 16), "int8", align=64, offset_factor=16, scope=scope, strides=[d1, d0])
        with T.sblock("root"):
            T.reads(A[0:16, 0:16])
            T.writes(C[0:16, 0:16])
            T.evaluate(T.tvm_load_matrix_sync(C.data, _M, _N, _K, _fragment(C, d1, 16, 16),
                                              A.access_ptr("r", ptr_type="int8"), s1, layout, dtype="void"))

    return desc, impl


def _fill() -> tuple:
    """wmma.accumulator [16, 16] int32 <- 0."""

    @T.prim_func(s_tir=True)
    def desc(c: T.handle) -> None:
        C = T.match_buffer(c, (16, 16), "int32", align=64, offset_factor=16, scope="wmma.accumulator")
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:16, 0:16])
            for i, j in T.grid(16, 16):
                with T.sblock("init"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    C[vi, vj] = T.int32(0)

    @T.prim_func(s_tir=True)
    def impl(c: T.handle) -> None:
        d1, d0 = T.int32(), T.int32()
        C = T.match_buffer(c, (16, 16), "int32", align=64, offset_factor=16, scope="wmma.accumulator",
                           strides=[d1, d0])
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:16, 0:16])
            T.evaluate(T.tvm_fill_fragment(C.data, _M, _N, _K, _fragment(C, d1, 16, 16), T.float32(0),
                                           dtype="void"))

    return desc, impl


def _store() -> tuple:
    """wmma.accumulator [16, 16] int32 -> static shared memory (row-major)."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (16, 16), "int32", align=64, offset_factor=16, scope="wmma.accumulator")
        C = T.match_buffer(c, (16, 16), "int32", align=64, offset_factor=16, scope=ACCUMULATOR_SCOPE)
        with T.sblock("root"):
            T.reads(A[0:16, 0:16])
            T.writes(C[0:16, 0:16])
            for i, j in T.grid(16, 16):
                with T.sblock("store"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    C[vi, vj] = A[vi, vj]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, c: T.handle) -> None:
        s1, s0, d1, d0 = T.int32(), T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (16, 16), "int32", align=64, offset_factor=16, scope="wmma.accumulator",
                           strides=[d1, d0])
        C = T.match_buffer(c, (16, 16), "int32", align=64, offset_factor=16, scope=ACCUMULATOR_SCOPE,
                           strides=[s1, s0])
        with T.sblock("root"):
            T.reads(A[0:16, 0:16])
            T.writes(C[0:16, 0:16])
            T.evaluate(T.tvm_store_matrix_sync(A.data, _M, _N, _K, _fragment(A, d1, 16, 16),
                                               C.access_ptr("w", ptr_type="int32"), s1, "row_major", dtype="void"))

    return desc, impl


def _sync() -> tuple:
    """C[M, N] += A[M, K] * B[N, K] on 16x16x16 s8 fragments, s32 accumulation."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (16, 16), "int8", align=64, offset_factor=16, scope="wmma.matrix_a")
        B = T.match_buffer(b, (16, 16), "int8", align=64, offset_factor=16, scope="wmma.matrix_b")
        C = T.match_buffer(c, (16, 16), "int32", align=64, offset_factor=16, scope="wmma.accumulator")
        with T.sblock("root"):
            T.reads(C[0:16, 0:16], A[0:16, 0:16], B[0:16, 0:16])
            T.writes(C[0:16, 0:16])
            for i, j, k in T.grid(16, 16, 16):
                with T.sblock(""):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    C[vi, vj] = C[vi, vj] + T.Cast("int32", A[vi, vk]) * T.Cast("int32", B[vj, vk])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        a1, a0, b1, b0, c1, c0 = T.int32(), T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (16, 16), "int8", align=64, offset_factor=16, scope="wmma.matrix_a", strides=[a1, a0])
        B = T.match_buffer(b, (16, 16), "int8", align=64, offset_factor=16, scope="wmma.matrix_b", strides=[b1, b0])
        C = T.match_buffer(c, (16, 16), "int32", align=64, offset_factor=16, scope="wmma.accumulator",
                           strides=[c1, c0])
        with T.sblock("root"):
            T.reads(C[0:16, 0:16], A[0:16, 0:16], B[0:16, 0:16])
            T.writes(C[0:16, 0:16])
            T.evaluate(T.tvm_mma_sync(C.data, _fragment(C, c1, 16, 16), A.data, _fragment(A, a1, 16, 16),
                                      B.data, _fragment(B, b1, 16, 16), C.data, _fragment(C, c1, 16, 16),
                                      dtype="void"))

    return desc, impl


def _dp4a() -> tuple:
    """C[0] += sum_i A[i] * B[i] over 4 int8 lanes of shared memory, int32 accumulation in a register."""

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
             B: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
             C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            for i in range(4):
                with T.sblock("update"):
                    vi = T.axis.remap("R", [i])
                    C[0] = C[0] + T.Cast("int32", A[vi]) * T.Cast("int32", B[vi])

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared", strides=(1,)),
             B: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared", strides=(1,)),
             C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            C[0] += T.call_pure_extern("__dp4a", A.vload([0], "int8x4"), B.vload([0], "int8x4"), T.int32(0),
                                       dtype="int32")

    return desc, impl


@functools.cache
def register() -> None:
    """Register the intrinsics (once per process; TVMScript parsing, about 1 s)."""
    for name, pair in [(WMMA["fill"], _fill()), (WMMA["load_a"], _load(False)), (WMMA["load_b"], _load(True)),
                       (WMMA["sync"], _sync()), (WMMA["store"], _store()), (DP4A, _dp4a())]:
        TensorIntrin.register(name, *pair, override=True)
