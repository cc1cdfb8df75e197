"""x86 CPU schedules: int8 GEMMs on AMX tiles or tensorized with VNNI, everything else parallel and vectorized.

Features come from the target itself (its `mcpu` / `mattr`, through LLVM), never from the machine compiling:
`Target("llvm")` has none and gets the plain schedules; `ibert_tvm.targets.resolve_target("llvm")` is this
machine's CPU (e.g. znver4: avx512vnni, avx512bw, avx2).

GEMMs. On VNNI targets the pipeline's fuse phase has rewritten every GEMM into a packed form
(relay_passes/shift_activations_u8.py, pack_probabilities_i16.py, te_packing.py): linear layers and Q K^T
as u8 activations x s8 operands packed `[N/lanes, K/4, lanes, 4]` for `vpdpbusd`, P V (int16
probabilities) as s16 x s16 pairs packed `[N/lanes, K/2, lanes, 2]` for `vpdpwssd`. Their accumulation is
tiled into MR rows x NR column blocks of `lanes` (MR * NR accumulators that stay in vector registers: up to
8 x 8 within 32 zmm / 16 ymm), the whole k loop runs inside the register tile, and the `lanes x group`
step is one VNNI instruction (the project's tensor intrinsics below: zmm for avx512vnni, ymm for
avxvnni; TVM's own `dot_16x4_vnni` passes <16 x i32> operands that LLVM 22's vpdpbusd no longer takes, so
the module fails verification). Parallel tasks: (column tile, row tile) for linear layers, column tiles
outermost so a weight panel stays in cache; (batch, column tile) for activation x activation products,
whose run-time packing then happens once per task. The epilogue (bias, requantize, GELU, residual, the
context's transpose) runs on each task's tile right after it is accumulated. On AVX2 without VNNI
(relay_passes/widen_activations_i16.py) the int8 activations are widened to int16 instead and the int8
operands packed in pairs `[N/8, K/2, 8, 2]`, and the same tiling takes `vpmaddwd`, which adds two s16 x s16
products per int32 lane exactly (`_avx2_intrinsic`: the int8 operand sign-extended in the step); with SSE2
only, the GEMMs stay unpacked and the same tiling accumulates int32 vectors over the columns.

AMX (targets with amx-int8, e.g. Sapphire Rapids; `ibert_tvm.targets` adds it to the host target where Linux
grants the tile state): a linear layer whose rows come in 16s and whose K comes in 64s runs as tasks of
32 (or 16) rows x 32 (or 16) columns, each one `tdpbusd` tile block over the whole K (`_amx_intrinsic`:
2 x 2 accumulator tiles stay in tile registers, A and B tiles stream through the other four). The VNNI
packing of B is already AMX's B tile layout, so the graph is the same as for VNNI. Each AMX kernel first
asks Linux for the tile state (`arch_prctl`, once per process in effect) and fails with a clear error if
refused. Q K^T (its compensation row makes M + 1 rows) and P V (s16 x s16, which AMX lacks) stay on VNNI.

Row reductions (int_softmax, int_layernorm): rows parallel, every stage computed per row, elementwise
stages vectorized at the width of their widest type. Everything else (requantize chains, embedding,
layout): copies inlined into their consumers, innermost axis vectorized, the rest fused and parallel.

Schedules only reorder, tile, vectorize and tensorize the legalized integer computation, so the results are
identical to the unscheduled build's (tests/test_x86_schedules.py). `tuning_space` gives MetaSchedule the
same dot-product intrinsics, VNNI's or AVX2's (`MultiLevelTilingWithIntrin`), for tuning on top of these
defaults.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import TensorIntrin
from tvm.s_tir import meta_schedule as ms
from tvm.script import tirx as T
from tvm.target import Target, codegen

from . import family_of, gemm_prefetch
from .postprocs import KeepIntrinsicsUnvectorized, TensorizeOrReject

__all__ = ["AMX_PERMISSION_SYSCALL", "AVX2_INTRINSICS", "DotKey", "VNNI_INTRINSICS", "apply_default_schedule",
           "dot_intrinsics", "has_amx", "int8_features", "packed_lanes", "schedule_prim_func", "tuning_space",
           "vector_bytes", "vnni_lanes"]

#: x86 features that decide the int8 GEMM instruction, widest first (LLVM's names).
INT8_FEATURES = ("amx-int8", "avx512vnni", "avxvnni", "avx512bw", "avx2")
#: (int32 lanes, products per lane) -> (tensor intrinsic, LLVM intrinsic, A dtype, B dtype): VNNI's u8 x s8
#: `vpdpbusd` and s16 x s16 `vpdpwssd`, in zmm (AVX512-VNNI) and ymm (AVX-VNNI) widths.
VNNI_INTRINSICS = {
    (16, 4): ("ibert_dot_16x4_u8s8_avx512vnni", "llvm.x86.avx512.vpdpbusd.512", "uint8", "int8"),
    (8, 4): ("ibert_dot_8x4_u8s8_avxvnni", "llvm.x86.avx512.vpdpbusd.256", "uint8", "int8"),
    (16, 2): ("ibert_dot_16x2_s16s16_avx512vnni", "llvm.x86.avx512.vpdpwssd.512", "int16", "int16"),
    (8, 2): ("ibert_dot_8x2_s16s16_avxvnni", "llvm.x86.avx512.vpdpwssd.256", "int16", "int16"),
}
#: AVX2 without VNNI, exactly: `vpmaddwd` on s16 activations x s8 (sign-extended) or s16 operands, 8 lanes x 2.
AVX2_INTRINSICS = {"int8": "ibert_dot_8x2_s16s8_avx2", "int16": "ibert_dot_8x2_s16s16_avx2"}
MAX_ROWS = 8  # register tile: at most this many rows ...
MAX_COLUMN_BLOCKS = 8  # ... and this many vector-wide column blocks
VECTOR_REGISTERS = {64: 32, 32: 16, 16: 16}  # vector bytes -> architectural vector registers (zmm / ymm / xmm)
#: a linear layer's task prefetches the output lines of the task this many ahead (`gemm_prefetch.py`):
#: 2 and 4 measured alike on BERT-base's linear layers, 1 and 8 slower; 0 turns the output prefetches off
#: (also those of the batched GEMMs, whose row tiles each prefetch their own rows' output lines)
OUTPUT_PREFETCH_TASKS = 2
#: ... and the next panel's weights, at the top of each chunk of this many k steps (the accumulators stay in
#: registers, kept on the stack so that LLVM sees the prefetches leave them alone; LLVM unrolls a short chunk):
#: with 32 vector registers (AVX-512) 4 measured best of 2 / 4 / 8 / 16 (BERT-base on x86-avx512vnni, 1 x 128
#: 29.68 -> 27.99 ms and 1 x 32 8.00 -> 7.64 ms against 16, `bench/pass_ab.py --constant`); 0 turns them off
#: there
WEIGHT_PREFETCH_K_STEPS = 4
#: ... with 16 (ymm: AVX-VNNI, AVX2) 16 steps: 4 ran 1 x 32 12.29 -> 13.69 ms on x86-avxvnni, 27.13 -> 30.87 ms
#: on x86-avx2; 0 turns them off there
NARROW_WEIGHT_PREFETCH_K_STEPS = 16
#: vector registers the AVX2 step needs besides the register tile's: `vpmaddwd`'s product, which `vpaddd` then
#: adds (VNNI accumulates in place) ...
AVX2_STEP_TEMPORARIES = 1
#: ... and its tile's preferred most rows where more rows bring no more MACs, as each row's broadcast serves
#: only the tile's NR `vpmaddwd`. Counting the product, 16 ymm hold 4 x 2 accumulator blocks instead of 4 x 3
#: (of which LLVM kept one on the stack, loaded and stored every step): BERT-base on x86-avx2 1 x 128 91.45 ->
#: 73.12 ms and 1 x 32 21.79 -> 16.90 ms on the AMD EPYC (Zen 5) VM of bench/RESULTS.md, 2026-12-05; 8 x 1, which
#: the product alone would pick, 74.10 / 17.16 ms there. On the Intel VM of bench/RESULTS.md both had measured
#: slower than the spilling 4 x 3 (8 x 1 109.7 ms against 106.3, 2026-12-05); on an Intel Emerald Rapids VM 4 x 3
#: was 3 % faster at 1 x 128 (82.38 against 84.98 ms) and even at 1 x 32 (2026-12-07), so 4 x 2 stays.
AVX2_PREFERRED_ROWS = 4
#: on AVX2 only panels of at most this many row tiles
#: prefetch weights: at 16 (128 tokens) BERT-base ran 1.7 % slower with them when each column block's pieces
#: came from one row tile, and 105.81 against 106.09 ms (no gain) with the pieces shared out; at 4 3.6 % faster
AVX2_WEIGHT_PREFETCH_ROW_TILES = 8


def int8_features(target: Target) -> tuple[str, ...]:
    """The int8-relevant x86 features of `target` itself (its mcpu / mattr), widest first; () for plain llvm."""
    if target.kind.name != "llvm" or family_of(target) != "x86":
        return ()
    return tuple(f for f in INT8_FEATURES if codegen.llvm_cpu_has_features(f, target))


def vnni_lanes(target: Target) -> int:
    """int32 lanes of the target's VNNI instructions: 16 (AVX512-VNNI), 8 (AVX-VNNI), 0 (none)."""
    features = int8_features(target)
    return 16 if "avx512vnni" in features else 8 if "avxvnni" in features else 0


def packed_lanes(target: Target) -> int:
    """int32 lanes of the packed GEMMs' dot-product step: VNNI's (16 or 8), 8 on AVX2 (`vpmaddwd`), 0 where
    the GEMMs stay plain (SSE2 only)."""
    return vnni_lanes(target) or (8 if "avx2" in int8_features(target) else 0)


#: (lanes, products per lane, A dtype, B dtype) of a packed GEMM's dot-product step
DotKey = tuple[int, int, str, str]


def dot_intrinsics(target: Target) -> dict[DotKey, str]:
    """The target's packed GEMM steps -> the tensor intrinsic each is tensorized with."""
    lanes = vnni_lanes(target)
    if lanes:
        return {(w, g, a, b): name for (w, g), (name, _, a, b) in VNNI_INTRINSICS.items() if w == lanes}
    return {(8, 2, "int16", b): name for b, name in AVX2_INTRINSICS.items()} if packed_lanes(target) else {}


def has_amx(target: Target) -> bool:
    """Whether the target has AMX's int8 tiles (with AVX-512 VNNI for the GEMMs that do not fit tiles)."""
    return "amx-int8" in int8_features(target) and vnni_lanes(target) == 16


def vector_bytes(target: Target) -> int:
    """Bytes of the target's widest integer vector register: 64 (AVX-512 BW), 32 (AVX2), 16 (SSE2)."""
    features = int8_features(target)
    return 64 if "avx512bw" in features else 32 if "avx2" in features or "avxvnni" in features else 16


def _dot_desc(lanes: int, group: int, a_dtype: str, b_dtype: str) -> tirx.PrimFunc:
    """C[lanes] += sum_{k<group} A[k] * B[lane, k]: the packed GEMMs' dot-product step."""

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((group,), a_dtype, offset_factor=1), b: T.Buffer((lanes, group), b_dtype, offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:group], b[0:lanes, 0:group])
            T.writes(c[0:lanes])
            for i, k in T.grid(lanes, group):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    return desc


def _vnni_intrinsic(lanes: int, group: int, llvm_intrinsic: str, a_dtype: str, b_dtype: str
                    ) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """(description, implementation) of the dot-product step as one VNNI instruction: A's group (4 bytes)
    broadcast to every lane, B one vector. The LLVM 22 signatures take byte / word vectors (TVM's own
    `dot_16x4_vnni` passes <16 x i32> and fails LLVM's module verification)."""
    width = lanes * group

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((group,), a_dtype, offset_factor=1, strides=(1,)),
             b: T.Buffer((lanes, group), b_dtype, offset_factor=1, strides=(group, 1)),
             c: T.Buffer((lanes,), "int32", offset_factor=1, strides=(1,))) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:group], b[0:lanes, 0:group])
            T.writes(c[0:lanes])
            c[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_intrinsic), c.vload([0], dtype=f"int32x{lanes}"),
                T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], f"{a_dtype}x{group}"), dtype="int32"), lanes),
                              dtype=f"{a_dtype}x{width}"),
                b.vload([0, 0], dtype=f"{b_dtype}x{width}"), dtype=f"int32x{lanes}")

    return _dot_desc(lanes, group, a_dtype, b_dtype), impl


def _avx2_intrinsic(b_dtype: str) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """(description, implementation) of the 8-lane dot-product step on AVX2: one `vpmaddwd`, two s16 x s16
    products per int32 lane, exact (|sum| <= 2^31 for s16 x s8, 2 * 2^30 for s16 x s16 of [0, 256]
    probabilities: no 32-bit wrap). A's pair is broadcast as one 32-bit word; B's 16 values are loaded as one
    vector, int8 sign-extended to int16 (`vpmovsxbw`), so a weight stays int8 in memory. `vpmaddubsw` (u8 x s8)
    is not used: its 16-bit pair sums saturate. The operands are bound to names (`aw`, `bw`): written inline
    into the call, as the VNNI step's are, BERT-base 1 x 128 on x86-avx2 ran 106.7 -> 123.4 ms (a probe)."""
    pmadd = "llvm.x86.avx2.pmadd.wd"

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((2,), "int16", offset_factor=1, strides=(1,)),
             b: T.Buffer((8, 2), b_dtype, offset_factor=1, strides=(2, 1)),
             c: T.Buffer((8,), "int32", offset_factor=1, strides=(1,))) -> None:
        with T.sblock("root"):
            T.reads(c[0:8], a[0:2], b[0:8, 0:2])
            T.writes(c[0:8])
            aw = T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "int16x2"), dtype="int32"), 8),
                               dtype="int16x16")
            bw = T.Cast("int16x16", b.vload([0, 0], dtype=f"{b_dtype}x16"))
            c[T.ramp(T.int32(0), 1, 8)] = c.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(pmadd), aw, bw, dtype="int32x8")

    return _dot_desc(8, 2, "int16", b_dtype), impl


for (_lanes, _group), (_name, _llvm, _a, _b) in VNNI_INTRINSICS.items():
    TensorIntrin.register(_name, *_vnni_intrinsic(_lanes, _group, _llvm, _a, _b), override=True)
for _b, _name in AVX2_INTRINSICS.items():
    TensorIntrin.register(_name, *_avx2_intrinsic(_b), override=True)


AMX_ROWS, AMX_BYTES = 16, 64  # one tile: 16 rows of 64 bytes (C: 16 x 16 int32; A: 16 x 64 u8; B: 16 x 64 s8)
#: The 64-byte tile configurations `_amx_intrinsic` reads back and loads, kept on the stack (`_request_amx`).
#: From TVM's workspace pool, where a Relax build put them, each cost an allocation and a free per tile block:
#: BERT-base 1 x 128 19.55 -> 19.18 ms, MiniLM 1 x 32 1.144 -> 1.103 ms on this host (a probe building both
#: ways, 20 alternating rounds of 10 calls, 2026-12-05).
AMX_CONFIG_BUFFERS = ("current", "wanted")
#: The 64-byte tile configuration as 8 little-endian words: palette 1; tiles 0-7 of 16 rows x 64 bytes.
TILE_CONFIG = (1, 0, AMX_BYTES * 0x0001000100010001, AMX_BYTES * 0x0001000100010001, 0, 0,
               AMX_ROWS * 0x0101010101010101, 0)
#: Linux x86-64: syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), the tile state's request
AMX_PERMISSION_SYSCALL = (158, 0x1023, 18)


def _amx_intrinsic(rows: int, cols: int, k: int) -> str:
    """Register (once) and name the tensor intrinsic C[rows, cols] += A[rows, k] . B over the whole k:
    AMX `tdpbusd` on (rows / 16) x (cols / 16) accumulator tiles that stay in tile registers for the whole
    k loop (zeroed before: the description includes the GEMM's init; stored after). B is the vpdpbusd packing `[cols / 16, k / 4, 16, 4]`, which is
    exactly AMX's B tile: 16 rows of k / 4 groups, each 16 columns x 4 bytes. Tile registers: C in 0..3,
    A in 4..5, B in 6..7 (immediates, so the loops over them are unrolled). The rows of A and C, and each
    16 x 64-byte block of B, must be compact: a tile load reads them as 64-byte rows."""
    name = f"ibert_amx_u8s8_{rows}x{cols}x{k}"
    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    mt, nt, kt = rows // AMX_ROWS, cols // AMX_ROWS, k // AMX_BYTES
    cfg0, cfg1, cfg2, cfg3, cfg4, cfg5, cfg6, cfg7 = (tirx.const(w, "int64") for w in TILE_CONFIG)
    i64 = T.int64

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((rows, k), "uint8", offset_factor=1),
             b: T.Buffer((nt, k // 4, 16, 4), "int8", offset_factor=1),
             c: T.Buffer((rows, cols), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(a[0:rows, 0:k], b[0:nt, 0:k // 4, 0:16, 0:4])
            T.writes(c[0:rows, 0:cols])
            for i, j, r in T.grid(i64(rows), i64(cols), i64(k)):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, r])
                    T.reads(c[vi, vj], a[vi, vk], b[vj // i64(16), vk // i64(4), vj % i64(16), vk % i64(4)])
                    T.writes(c[vi, vj])
                    with T.init():
                        c[vi, vj] = T.int32(0)
                    c[vi, vj] = c[vi, vj] + T.cast(a[vi, vk], "int32") * T.cast(
                        b[vj // i64(16), vk // i64(4), vj % i64(16), vk % i64(4)], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((rows, k), "uint8", offset_factor=1, strides=[T.int64(), 1]),
             b: T.Buffer((nt, k // 4, 16, 4), "int8", offset_factor=1, strides=[T.int64(), AMX_BYTES, 4, 1]),
             c: T.Buffer((rows, cols), "int32", offset_factor=1, strides=[T.int64(), 1])) -> None:
        with T.sblock("root"):
            T.reads(a[0:rows, 0:k], b[0:nt, 0:k // 4, 0:16, 0:4])
            T.writes(c[0:rows, 0:cols])
            # The tile configuration is loaded only where the thread's differs (ldtilecfg costs ~150 ns, a
            # tenth of a task; reading it back ~10 ns), and kept afterwards, as the next task needs it.
            current = T.alloc_buffer((8,), "int64", scope="local")
            wanted = T.alloc_buffer((8,), "int64", scope="local")
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.sttilecfg", current.access_ptr("w")))
            wanted[0] = cfg0
            wanted[1] = cfg1
            wanted[2] = cfg2
            wanted[3] = cfg3
            wanted[4] = cfg4
            wanted[5] = cfg5
            wanted[6] = cfg6
            wanted[7] = cfg7
            if (current[0] != wanted[0] or current[1] != wanted[1] or current[2] != wanted[2]
                    or current[3] != wanted[3] or current[4] != wanted[4] or current[5] != wanted[5]
                    or current[6] != wanted[6] or current[7] != wanted[7]):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", wanted.access_ptr("r")))
            for m in T.unroll(mt):
                for n in T.unroll(nt):
                    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", T.int8(m * nt + n)))
            for kk in range(kt):
                for m in T.unroll(mt):
                    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.int8(4 + m), a.access_ptr(
                        "r", offset=m * AMX_ROWS * a.strides[0] + kk * AMX_BYTES), a.strides[0]))
                for n in T.unroll(nt):
                    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.int8(6 + n), b.access_ptr(
                        "r", offset=n * b.strides[0] + kk * AMX_ROWS * b.strides[1]), i64(AMX_BYTES)))
                for m in T.unroll(mt):
                    for n in T.unroll(nt):
                        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbusd", T.int8(m * nt + n), T.int8(4 + m),
                                                      T.int8(6 + n)))
            for m in T.unroll(mt):
                for n in T.unroll(nt):
                    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.int8(m * nt + n), c.access_ptr(
                        "w", offset=m * AMX_ROWS * c.strides[0] + n * AMX_ROWS), c.strides[0] * i64(4)))

    TensorIntrin.register(name, desc, impl)
    return name


def _request_amx(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` preceded by the request for AMX tile state (Linux grants it per process; without it the first
    tile instruction faults), failing with an error that says so instead. Once per call, outside the
    parallel tasks: after the first grant the syscall only confirms it. Its tile configurations are named
    for the stack (`gemm_prefetch.STACK`)."""
    granted = tirx.call_extern("int64", "syscall", *(tirx.const(v, "int64") for v in AMX_PERMISSION_SYSCALL)) == 0
    message = [tvm.ir.StringImm("this kernel uses AMX tiles and the OS refused this process their state "
                                "(arch_prctl ARCH_REQ_XCOMP_PERM); compile for a target without amx-int8")]
    # The FFI constructor directly: tirx.AssertStmt.__init__ passes (kind, condition), the constructor takes
    # (condition, kind, message).
    refused = tirx._ffi_api.AssertStmt(granted, tvm.ir.StringImm("RuntimeError"), message, None)
    stack = {str(n) for n in (func.attrs.get(gemm_prefetch.STACK, []) if func.attrs else [])}
    return func.with_body(tirx.SeqStmt([refused, func.body])).with_attr(
        gemm_prefetch.STACK, sorted(stack | set(AMX_CONFIG_BUFFERS)))


# ---------------------------------------------------------------------------------------------------------
# Block analysis


def _root_blocks(sch: s_tir.Schedule) -> list[s_tir.SBlockRV]:
    """The blocks directly under the PrimFunc's root block, in program order."""
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _is_reduction(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> bool:
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def _extent(sch: s_tir.Schedule, loop: s_tir.LoopRV) -> int:
    return int(sch.get(loop).extent)


def _kinds(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> str:
    """The block's iteration kinds, e.g. "SSSR" for a GEMM over [b, m, n] reducing k."""
    return "".join("R" if iv.iter_type == tirx.IterVar.CommReduce else "S" for iv in sch.get(block).iter_vars)


def _vnni_gemm(sch: s_tir.Schedule, steps: dict[DotKey, str]) -> tuple[s_tir.SBlockRV, DotKey] | None:
    """(block, step) of the packed accumulation that relay_passes' x86 rewrites emit: a last-axis reduction
    reading a [..., lanes, group] packed operand and an activation of the dtypes of one of `steps`."""
    for block in _root_blocks(sch):
        kinds = _kinds(sch, block)
        if not (kinds.endswith("SR") and kinds.count("R") == 1):
            continue
        reads = [r.source for r in sch.get(block).reads]
        for key in steps:
            lanes, group, a_dtype, b_dtype = key
            packed = [b for b in reads if b.dtype == b_dtype and len(b.shape) >= 4
                      and [int(d) for d in b.shape[-2:]] == [lanes, group]]
            if packed and any(b.dtype == a_dtype and len(b.shape) >= 2 and not any(b.same_as(p) for p in packed)
                              for b in reads):
                return block, key
    return None


def _plain_gemm(sch: s_tir.Schedule) -> s_tir.SBlockRV | None:
    """The only reduction block of the function, when it is a multiply-accumulate over its last axis."""
    reductions = [b for b in _root_blocks(sch) if _is_reduction(sch, b)]
    if len(reductions) != 1:
        return None
    stmt = sch.get(reductions[0])
    kinds = "".join("R" if iv.iter_type == tirx.IterVar.CommReduce else "S" for iv in stmt.iter_vars)
    body = stmt.body
    is_mac = isinstance(body, tirx.BufferStore) and isinstance(body.value, tirx.Add) and isinstance(body.value.b, tirx.Mul)
    return reductions[0] if kinds.endswith("SSR") and kinds.count("R") == 1 and is_mac else None


# ---------------------------------------------------------------------------------------------------------
# Loop helpers


def _divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of n that is <= limit (1 at worst): a split factor that needs no predicate."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _row_factors(dims: list[int], limit: int) -> list[int]:
    """Per leading dim, an inner factor dividing it, innermost dim first, with a product <= limit.

    Tiling each leading dim on its own (not their fused product) keeps every block's bindings affine, so
    epilogues can be computed per tile and the inner step tensorized (fused-index bindings allow neither).
    """
    factors = []
    for dim in reversed(dims):
        factors.append(_divisor_at_most(dim, max(limit // max(1, _product(factors)), 1)))
    return factors[::-1]


def _product(values: list[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _register_tile(dims: list[int], blocks: int, registers: int, temporaries: int = 0,
                   preferred_rows: int = MAX_ROWS) -> tuple[list[int], int]:
    """(row factors, NR): MR = prod(row factors) rows x NR column blocks of accumulators, fitting
    MR*NR accumulators + NR operands + 1 broadcast + the step's `temporaries` in `registers`: most MACs per
    step, then at most `preferred_rows` rows, then most rows (each B vector loaded then serves more rows; the
    A broadcasts hit L1, and a narrower B panel stays in cache)."""
    options = []
    for limit, nr in itertools.product(range(1, MAX_ROWS + 1), range(1, MAX_COLUMN_BLOCKS + 1)):
        factors = _row_factors(dims, limit)
        mr = _product(factors)
        if blocks % nr == 0 and mr * nr + nr + 1 + temporaries <= registers:
            options.append((mr * nr, mr <= preferred_rows, mr, factors, nr))
    best = max(options, key=lambda o: o[:3])
    return best[3], best[4]


def _vectorize_inner(sch: s_tir.Schedule, block: s_tir.SBlockRV, lanes: int) -> None:
    """Vectorize the block's innermost loop in `lanes`-wide pieces (a divisor, so no tail predicate)."""
    inner = sch.get_loops(block)[-1]
    extent = sch.get(inner).extent
    if not isinstance(extent, tirx.IntImm):
        return
    width = _divisor_at_most(int(extent), lanes)
    if width > 1:
        sch.vectorize(sch.split(inner, [None, width])[1] if width < int(extent) else inner)


def _lanes_of(sch: s_tir.Schedule, block: s_tir.SBlockRV, vbytes: int) -> int:
    """Vector lanes for the widest buffer the block touches, at the target's vector width (one register
    per value: an int8 output computed in int64 gets 8 lanes on AVX-512, not 64 that spill). A block that
    touches a bool buffer (the imported graph's mask logic) gets 1: TVM's vectorizer stores bool vectors as int8."""
    stmt = sch.get(block)
    if any(str(r.source.dtype) == "bool" for r in [*stmt.reads, *stmt.writes]):
        return 1
    bits = max(tvm.DataType(r.source.dtype).bits for r in [*stmt.reads, *stmt.writes])
    return max(vbytes * 8 // bits, 1)


def _epilogue_lanes(sch: s_tir.Schedule, block: s_tir.SBlockRV, vbytes: int) -> int:
    """Lanes of a GEMM tile's epilogue stage: at least one int32 register, so an int64 stage (i-GELU, its
    requantize) takes two registers per value and its int32 parts fill whole ones: the FFN-in kernel of
    BERT-base ran 5 % faster so than with one int64 register (8 lanes) on AVX-512."""
    return max(_lanes_of(sch, block, vbytes), vbytes // 4)


def _parallel_vectorize(sch: s_tir.Schedule, block: s_tir.SBlockRV, vbytes: int) -> None:
    """Schedule a root-level block on its own: the innermost axis vectorized in register-wide pieces, the
    other spatial loops fused and parallel (all fused where the innermost is narrower than a register);
    a reduction's loop stays inside, serial, under its parallel spatial loops."""
    loops = sch.get_loops(block)
    kinds = _kinds(sch, block)
    spatial = len(kinds) - len(kinds.lstrip("S"))
    if not loops or spatial == 0 or len(loops) != len(kinds):
        return
    if spatial < len(kinds):
        sch.parallel(sch.fuse(*loops[:spatial]) if spatial > 1 else loops[0])
        return
    lanes = _lanes_of(sch, block, vbytes)
    if len(loops) > 1 and _extent(sch, loops[-1]) < lanes:
        loops = [sch.fuse(*loops)]
    width = _divisor_at_most(_extent(sch, loops[-1]), lanes)
    outer, inner = sch.split(loops[-1], [None, width])
    if width > 1:
        sch.vectorize(inner)
    outer = sch.fuse(*loops[:-1], outer) if len(loops) > 1 else outer
    if _extent(sch, outer) > 1:
        sch.parallel(outer)


def _is_copy(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> bool:
    """Whether the block only moves (or casts) one element: a layout op, free to inline into its consumer."""
    body = sch.get(block).body
    value = body.value if isinstance(body, tirx.BufferStore) else None
    value = value.value if isinstance(value, tirx.Cast) else value
    return isinstance(value, tvm.ir.expr.TensorLoad)


def _kept(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> bool:
    """Whether the block asks not to be inlined (the operand packings of `relay_passes/te_packing.py`)."""
    return str(sch.get(block).annotations.get("meta_schedule.inline_rule", "")) == "disable"


# ---------------------------------------------------------------------------------------------------------
# GEMM schedules


def _tile_gemm(sch: s_tir.Schedule, gemm: s_tir.SBlockRV, width: int, k_step: int, vbytes: int, batch: int = 0,
               tile: tuple[list[int], int] | None = None, prefetch: bool = False, weight_steps: int = 0,
               weight_row_tiles: int | None = None, step_registers: tuple[int, int] = (0, MAX_ROWS)
               ) -> tuple[s_tir.LoopRV, list[s_tir.LoopRV], s_tir.LoopRV, s_tir.LoopRV, s_tir.LoopRV]:
    """Tile a [batch..., rows..., N, K] GEMM into register tiles of MR rows x NR `width`-wide column
    blocks, each accumulating over the whole k range, and parallel tasks over the tiles.

    - No batch dims (a linear layer: one weight for every row): the tasks are (leading row dims, column
      tile, row tile of the last row dim): within one sequence the column tiles are outermost, so that one
      weight panel stays in cache while the row tiles run through it, and one sequence's rows (e.g.
      128 x 3072 bytes) stay in L2 while the weights stream past (all of a batch's rows would not: 8 x 128
      rows at K = 3072 are 3 MB, streamed once per column tile); each task computes its epilogue right
      after its tile.
    - `batch` leading dims of B (an activation x activation matmul, B packed per batch at run time): the
      tasks are (batch, column tile), the row tiles a serial loop inside, so that the packed B panel
      and its per-column terms (the prologue, computed per task) serve every row; the epilogue follows
      the task's row loop.

    `tile` (row factors, NR) overrides the vector-register tile (`_register_tile` with `step_registers`: the
    step's temporaries and the tile's preferred most rows). With `prefetch`, a linear layer's tasks
    prefetch their output lines (`gemm_prefetch.py`) and, where a panel has more than one row tile (and at
    most `weight_row_tiles`, if given), the next panel's weights, the k loop split in chunks of `weight_steps`
    for them (0: none); a batched GEMM's row tiles prefetch their rows' output lines (the VNNI and AVX2
    GEMMs: BERT-base 1.5 to 6 % faster on both; the AMX tile blocks ran 2 to 4 % slower with the output
    prefetches, so they go without).
    Returns (k outer loop, row loops, column-block loop, `width` loop, k inner loop), the inner ones in
    that order under the k outer loop (the k outer loop is the chunk loop where weights are prefetched).
    """
    loops = sch.get_loops(gemm)
    outer_batch, lead, cols, red = loops[:batch], loops[batch:-2], loops[-2], loops[-1]
    factors, nr = tile or _register_tile([_extent(sch, l) for l in lead], _extent(sch, cols) // width,
                                         VECTOR_REGISTERS[vbytes], *step_registers)
    accumulator = sch.get(gemm).writes[0].source
    padded = bool(batch) and not _reads_every_column(sch, gemm)  # asked before the copies are inlined
    row_splits = [sch.split(l, [None, f]) for l, f in zip(lead, factors)]
    no, ni, nl = sch.split(cols, [None, nr, width])
    ko, kg = sch.split(red, [None, k_step]) if k_step > 1 else (red, None)
    rows_outer, rows_inner = [o for o, _ in row_splits], [i for _, i in row_splits]
    chunks = [] if batch else rows_outer[:-1]  # leading row dims (the batch of a linear layer) outermost
    row_tiles = _product([_extent(sch, l) for l in rows_outer[len(chunks):]])  # tasks per column panel
    sch.reorder(*outer_batch, *chunks, no, *rows_outer[len(chunks):], ko, *rows_inner, ni, nl, *([kg] if kg else []))
    tile = sch.fuse(*outer_batch, no) if batch else sch.fuse(*chunks, no, *rows_outer[len(chunks):])
    for block in _after(sch, gemm)[:-1]:
        if _is_copy(sch, block):
            sch.compute_inline(block)
    for block in _before(sch, gemm) if batch else ():  # layout copies fused in front (the heads split)
        if _is_copy(sch, block) and not _kept(sch, block):
            sch.compute_inline(block)
    prologue = _before(sch, gemm)
    for block in reversed(prologue) if batch else ():
        sch.compute_at(block, tile)
    epilogue = _after(sch, gemm)
    per_tile = (all(_follows_tile(sch, block, gemm, exact=not batch) for block in epilogue)
                and not (padded and _maps_columns(sch, epilogue, accumulator)))
    for block in epilogue if per_tile else ():
        sch.reverse_compute_at(block, tile)
    sch.parallel(tile)
    if prefetch and not batch:
        weights = row_tiles > 1 and (weight_row_tiles is None or row_tiles <= weight_row_tiles)
        ko = _mark_prefetches(sch, tile, ko, row_tiles, per_tile, weight_steps if weights else 0,
                              sch.get(gemm).writes[0].source.name)
    if prefetch and batch and per_tile and len(lead) == 1 and OUTPUT_PREFETCH_TASKS > 0:  # row tiles: their rows
        sch.annotate(rows_outer[0], gemm_prefetch.ROWS, factors[0])
    for block in epilogue if per_tile else ():
        _vectorize_inner(sch, block, _epilogue_lanes(sch, block, vbytes))
    for block in prologue if batch else ():
        _vectorize_inner(sch, block, _lanes_of(sch, block, vbytes))
    for block in [*(() if batch else prologue), *(() if per_tile else epilogue)]:
        _parallel_vectorize(sch, block, vbytes)
    return ko, rows_inner, ni, nl, kg


def _mark_prefetches(sch: s_tir.Schedule, tile: s_tir.LoopRV, ko: s_tir.LoopRV, row_tiles: int, outputs: bool,
                     weight_steps: int, accumulator: str) -> s_tir.LoopRV:
    """Mark a linear layer's task loop for `gemm_prefetch.add_prefetches`: with `outputs`, its output lines
    (the epilogue runs per task); with `weight_steps` > 0, the next panel's weights at the top of each chunk
    of that many steps of the k loop (split here; where K/group has no divisor of at least half the chunk,
    no split and no weight prefetch), the task's `accumulator` then kept on the stack
    (`gemm_prefetch.STACK`). Returns the k outer loop."""
    if outputs and OUTPUT_PREFETCH_TASKS > 0:
        sch.annotate(tile, gemm_prefetch.OUTPUT, OUTPUT_PREFETCH_TASKS)
    chunk = _divisor_at_most(_extent(sch, ko), weight_steps) if weight_steps > 0 else 0
    if chunk and chunk >= weight_steps // 2:
        sch.annotate(tile, gemm_prefetch.WEIGHTS, row_tiles)
        ko = sch.split(ko, [None, chunk])[0]
        sch.annotate(ko, gemm_prefetch.WEIGHT_STEP, 1)
        sch.annotate(tile, gemm_prefetch.STACK, accumulator)
    return ko


def _reads_every_column(sch: s_tir.Schedule, gemm: s_tir.SBlockRV) -> bool:
    """Whether the GEMM's consumers read every column of its accumulator at a plain iteration variable, i.e.
    the accumulator has no padding columns (N rounded up to the vector width)."""
    acc = sch.get(gemm).writes[0].source
    for consumer in sch.get_consumers(gemm):
        block = sch.get(consumer)
        extents = {iv.var.name: int(iv.dom.extent) for iv in block.iter_vars}
        for region in block.reads:
            last = region.region[-1].min
            if region.source.same_as(acc) and not (isinstance(last, tirx.Var)
                                                   and extents.get(last.name) == int(acc.shape[-1])):
                return False
    return True


def _maps_columns(sch: s_tir.Schedule, blocks: list[s_tir.SBlockRV], accumulator: tirx.Buffer) -> bool:
    """Whether any of `blocks` reads the accumulator's columns through an index other than a plain iteration
    variable: P V's epilogue merging the heads (`(c // D, c % D)` of the context's column c). Over a padded
    accumulator such an epilogue maps a task's column tile to more than the columns it produced (with D = 8 in
    16-wide tiles, head h's task also computed head h + 1's outputs, from an accumulator another task had not
    yet written), so it runs after the GEMM; Q K^T's, which reads its columns as they are, stays per task."""
    return any(region.source.same_as(accumulator) and not isinstance(region.region[-1].min, tirx.Var)
               for block in blocks for region in sch.get(block).reads)


def _follows_tile(sch: s_tir.Schedule, block: s_tir.SBlockRV, gemm: s_tir.SBlockRV, exact: bool) -> bool:
    """Whether epilogue `block` can run inside the GEMM's tile loop (`reverse_compute_at`): it must read a
    buffer computed in this function (the GEMM's or an earlier epilogue's; FuseOps also pulls in independent
    stages, e.g. the regrid of a residual, whose region no tile determines), and with `exact` read every such
    buffer at plain iteration variables (a reshape inlined into it, `(i * L + j) % M`, maps a row tile to no
    box). Otherwise TVM would leave elements uncomputed or read values no task has written yet, so the
    epilogue then runs after the GEMM, parallel on its own."""
    produced = {w.source.name for b in [gemm, *_after(sch, gemm)] for w in sch.get(b).writes}
    regions = [region for region in sch.get(block).reads if region.source.name in produced]
    return bool(regions) and (not exact or all(isinstance(r.min, tirx.Var) and int(r.extent) == 1
                                               for region in regions for r in region.region))


def _batch_dims(sch: s_tir.Schedule, gemm: s_tir.SBlockRV, lanes: int, group: int) -> int:
    """Leading dims of the packed operand before its [N/lanes, K/group, lanes, group] (0 for a weight)."""
    packed = [r.source for r in sch.get(gemm).reads if [int(d) for d in r.source.shape[-2:]] == [lanes, group]
              and len(r.source.shape) >= 4]
    return len(packed[0].shape) - 4


def _schedule_vnni_gemm(sch: s_tir.Schedule, gemm: s_tir.SBlockRV, lanes: int, group: int, vbytes: int,
                        intrinsic: str) -> None:
    """Register-tiled, parallel packed GEMM tensorized with the dot-product step `intrinsic` (VNNI, or its
    AVX2 form), with its epilogue computed per task."""
    steps = WEIGHT_PREFETCH_K_STEPS if VECTOR_REGISTERS[vbytes] >= 32 else NARROW_WEIGHT_PREFETCH_K_STEPS
    avx2_options = ({"weight_row_tiles": AVX2_WEIGHT_PREFETCH_ROW_TILES,
                     "step_registers": (AVX2_STEP_TEMPORARIES, AVX2_PREFERRED_ROWS)}
                    if intrinsic in AVX2_INTRINSICS.values() else {})
    ko, rows, ni, nl, _ = _tile_gemm(sch, gemm, lanes, group, vbytes, _batch_dims(sch, gemm, lanes, group),
                                     prefetch=True, weight_steps=steps, **avx2_options)
    init = sch.decompose_reduction(gemm, ko)
    _vectorize_inner(sch, init, lanes)
    sch.tensorize(nl, intrinsic)
    for loop in [*rows, ni]:
        sch.unroll(loop)


def _amx_tile(sch: s_tir.Schedule, gemm: s_tir.SBlockRV) -> tuple[list[int], int, int] | None:
    """(row factors, column tiles, K) of the AMX tile of a linear layer's packed u8 x s8 GEMM: 32 (else 16)
    rows of its innermost row dim by 32 (else 16) columns over the whole K. None where the shape does not
    fill tiles (rows not in 16s, K not in 64s: e.g. Q K^T's extra compensation row) or B is not a weight."""
    if _batch_dims(sch, gemm, 16, 4):
        return None
    *lead, cols, red = (_extent(sch, l) for l in sch.get_loops(gemm))
    if not lead or lead[-1] % AMX_ROWS or red % AMX_BYTES or cols % AMX_ROWS:
        return None
    rows = 2 * AMX_ROWS if lead[-1] % (2 * AMX_ROWS) == 0 else AMX_ROWS
    return [1] * (len(lead) - 1) + [rows], 2 if cols % (2 * AMX_ROWS) == 0 else 1, red


def _schedule_amx_gemm(sch: s_tir.Schedule, gemm: s_tir.SBlockRV, factors: list[int], nr: int, k: int,
                       vbytes: int) -> None:
    """The linear-layer tiling of `_tile_gemm` with one AMX tile block (whole k) per parallel task; the task's
    accumulator (the tiles stored for the epilogue, 4 KB at most) on the stack (`gemm_prefetch.STACK`: BERT-base
    1 x 128 19.02 -> 18.63 ms, 1 x 256 38.16 -> 37.45 ms against the workspace pool, a probe as for
    `AMX_CONFIG_BUFFERS`)."""
    accumulator = sch.get(gemm).writes[0].source.name
    ko, rows, ni, nl, _ = _tile_gemm(sch, gemm, AMX_ROWS, 1, vbytes, tile=(factors, nr))
    sch.annotate(sch.get_loops(gemm)[0], gemm_prefetch.STACK, accumulator)
    sch.reorder(*rows, sch.fuse(ni, nl), ko)
    sch.tensorize(rows[-1], _amx_intrinsic(factors[-1], nr * AMX_ROWS, k))


def _schedule_plain_gemm(sch: s_tir.Schedule, gemm: s_tir.SBlockRV, vbytes: int) -> None:
    """The same tiling with int32 accumulators vectorized over the columns (LLVM's widening multiply-adds)."""
    cols = _extent(sch, sch.get_loops(gemm)[-2])
    width = _divisor_at_most(cols, _lanes_of(sch, gemm, vbytes))
    ko, rows, ni, nl, _ = _tile_gemm(sch, gemm, width, 1, vbytes)
    sch.vectorize(nl)  # before decompose_reduction: vectorizing needs the block's init still inside it
    for loop in [*rows, ni]:
        sch.unroll(loop)
    sch.decompose_reduction(gemm, ko)


def _after(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> list[s_tir.SBlockRV]:
    """The root blocks after `block` (its epilogue), in order."""
    blocks = _root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    return blocks[names.index(sch.get(block).name_hint) + 1:]


def _before(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> list[s_tir.SBlockRV]:
    """The root blocks before `block` (its prologue), in order."""
    blocks = _root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    return blocks[:names.index(sch.get(block).name_hint)]


# ---------------------------------------------------------------------------------------------------------
# Per-function dispatch


def _schedule_elementwise(sch: s_tir.Schedule, vbytes: int) -> None:
    """Layout copies inlined into their consumers, then every remaining root block parallel and vectorized."""
    for block in _root_blocks(sch)[:-1]:
        if _is_copy(sch, block):
            sch.compute_inline(block)
    for block in _root_blocks(sch):
        _parallel_vectorize(sch, block, vbytes)


def _schedule_rows(sch: s_tir.Schedule, vbytes: int) -> bool:
    """Row reductions (softmax, layernorm): rows parallel, every stage computed per row, elementwise stages
    vectorized at the width of their widest type, reductions over the last axis as one vector of partial
    results (`_partial_reduction`). Returns False where the function is not made of stages
    over the same leading rows with a reduction among them (dlight's CPU `Reduction` rule has the same
    structure but sizes vectors by the output type: 32 lanes of int16 softmax output mean 4 registers
    per int64 intermediate, and spills)."""
    blocks = _root_blocks(sch)
    kinds = [_kinds(sch, b) for b in blocks]
    if len(blocks) < 2 or not any("R" in k for k in kinds) or "R" in kinds[-1]:
        return False
    rows = min(len(k) - len(k.lstrip("S")) for k in kinds)
    if rows == 0 or rows == len(kinds[-1]):
        return False
    partials = [_partial_reduction(sch, b, _lanes_of(sch, b, vbytes)) for b, k in zip(blocks, kinds)
                if k == "S" * rows + "R"]
    blocks = _root_blocks(sch)
    loops = sch.get_loops(blocks[-1])
    row = sch.fuse(*loops[:rows]) if rows > 1 else loops[0]
    sch.parallel(row)
    for block in reversed(blocks[:-1]):
        sch.compute_at(block, row, preserve_unit_loops=True)
    for block in blocks:
        if "R" not in _kinds(sch, block):
            _vectorize_inner(sch, block, _lanes_of(sch, block, vbytes))
    for partial in filter(None, partials):  # loops: row, lane, the unit row loops, outer
        loops = sch.get_loops(partial)
        lane, outer = loops[-rows - 2], loops[-1]
        sch.reorder(outer, lane)
        sch.vectorize(lane)
    return True


def _partial_reduction(sch: s_tir.Schedule, block: s_tir.SBlockRV, lanes: int) -> s_tir.SBlockRV | None:
    """Split a row reduction over its last axis into `lanes` partial results (rfactor), which the caller
    vectorizes into one register, and their combination: softmax's and layernorm's row sums and maxima,
    otherwise one scalar dependency chain per row. None where the extent is symbolic or rfactor does not know
    the combiner (the reduction then stays scalar)."""
    inner = sch.get_loops(block)[-1]
    extent = sch.get(inner).extent
    width = _divisor_at_most(int(extent), lanes) if isinstance(extent, tirx.IntImm) else 1
    if width < 2:
        return None
    lane = sch.split(inner, [None, width])[1]
    try:
        return sch.rfactor(lane, factor_axis=0)
    except (RuntimeError, ValueError):
        return None


def _strategies(target: Target) -> list[tuple[str, Callable[[tirx.PrimFunc], s_tir.Schedule | None]]]:
    """The schedules tried on each PrimFunc, in order: the first that applies without error wins."""
    lanes, vbytes, intrinsics = packed_lanes(target), vector_bytes(target), dot_intrinsics(target)

    def amx(func: tirx.PrimFunc) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        found = _vnni_gemm(sch, intrinsics) if has_amx(target) else None
        tile = _amx_tile(sch, found[0]) if found and found[1][1] == 4 else None
        return None if tile is None else (_schedule_amx_gemm(sch, found[0], *tile, vbytes) or sch)

    def packed_gemm(func: tirx.PrimFunc) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        found = _vnni_gemm(sch, intrinsics) if intrinsics else None
        return None if found is None else (
            _schedule_vnni_gemm(sch, found[0], lanes, found[1][1], vbytes, intrinsics[found[1]]) or sch)

    def plain(func: tirx.PrimFunc) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        gemm = _plain_gemm(sch)
        return None if gemm is None else (_schedule_plain_gemm(sch, gemm, vbytes) or sch)

    def elementwise(func: tirx.PrimFunc) -> s_tir.Schedule:
        sch = s_tir.Schedule(func)
        _schedule_elementwise(sch, vbytes)
        return sch

    def rows(func: tirx.PrimFunc) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        return sch if _schedule_rows(sch, vbytes) else None

    packed = "vnni_gemm" if vnni_lanes(target) else "avx2_gemm"  # one strategy, named by the step it uses
    return [("amx_gemm", amx), (packed, packed_gemm), ("gemm", plain), ("rows", rows), ("elementwise", elementwise)]


def schedule_prim_func(func: tirx.PrimFunc, target: Target) -> tuple[tirx.PrimFunc, str]:
    """(`func` scheduled for `target`, the strategy used); unscheduled ("none") if no strategy applies."""
    for name, strategy in _strategies(target):
        try:
            sch = strategy(func)
        except (RuntimeError, ValueError):  # ScheduleError, or a failed check inside TVM's analyses
            continue
        if sch is not None:
            scheduled = gemm_prefetch.add_prefetches(sch.mod["main"]).with_attr("tirx.is_scheduled", True)
            return (_request_amx(scheduled) if name == "amx_gemm" else scheduled), name
    return func, "none"


def apply_default_schedule(mod: tvm.IRModule, target: Target, **options: object) -> tvm.IRModule:
    """Schedule every PrimFunc not already scheduled (by a tuning database) for the x86 `target`."""
    if options:
        raise TypeError(f"x86 default schedules take no options, got {', '.join(options)}")
    out = mod.clone()
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and not func.attrs.get("tirx.is_scheduled", False):
            out[gvar] = schedule_prim_func(func, target)[0]
    return out


def tuning_space(target: Target) -> dict:
    """MetaSchedule's space for `target`: on VNNI and AVX2 targets TVM's CPU rules with multi-level tiling
    tensorized by the defaults' dot-product intrinsics (the u8 x s8 and s16 x s16 blocks of the packed GEMMs;
    the rest tiled plainly), as TVM's VNNI tests set them up; MetaSchedule's default CPU space on SSE2 (TVM
    picks `dot_16x4_vnni` for VNNI targets by itself, which does not build with LLVM 22)."""
    intrinsics = dot_intrinsics(target)
    if not intrinsics:
        return {"space": "post-order-apply"}
    rules = [
        ms.schedule_rule.ApplyCustomRule(),
        ms.schedule_rule.AutoInline(into_producer=False, into_consumer=True, inline_const_tensor=True,
                                    disallow_if_then_else=True, require_injective=True, require_ordered=True,
                                    disallow_op=["tirx.exp"]),
        ms.schedule_rule.AddRFactor(max_jobs_per_core=16, max_innermost_factor=64),
        *(ms.schedule_rule.MultiLevelTilingWithIntrin(
            intrin, structure="SSRSRS", tile_binds=None, max_innermost_factor=64,
            vector_load_lens=None, reuse_read=None,
            reuse_write=ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global"))
          for intrin in intrinsics.values()),
        ms.schedule_rule.MultiLevelTiling(
            structure="SSRSRS", tile_binds=None, max_innermost_factor=64, vector_load_lens=None, reuse_read=None,
            reuse_write=ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global")),
        ms.schedule_rule.ParallelizeVectorizeUnroll(max_jobs_per_core=16, max_vectorize_extent=64,
                                                    unroll_max_steps=[0, 16, 64, 512], unroll_explicit=True),
        ms.schedule_rule.RandomComputeLocation(),
    ]
    postprocs = [
        KeepIntrinsicsUnvectorized(),
        ms.postproc.DisallowDynamicLoop(),
        ms.postproc.RewriteParallelVectorizeUnroll(),
        ms.postproc.RewriteReductionBlock(),
        TensorizeOrReject(),
    ]
    return {"space": ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs, mutator_probs="llvm")}
