"""The CPU int8 dot-product steps (x86 VNNI and AVX2, ARM sdot and NEON) load B's tile as one vector, so they
take it only as a compact tile: tensorized over a tile whose rows lie apart, the build is refused instead of
reading the wrong bytes. MetaSchedule records that inlined the packing of B (the attention GEMMs' head split,
2026-12-06) built and computed wrong integers before the intrinsics declared their strides."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from ibert_tvm import record_check
from ibert_tvm.schedules import arm, x86
from ibert_tvm.targets import host_cpu_features, resolve_target


@dataclass(frozen=True)
class Step:
    intrinsic: str
    lanes: int
    group: int
    a_dtype: str
    b_dtype: str
    target: str  # a target name of `resolve_target`
    feature: str | None  # the host feature that runs it here (None: aarch64, built only)
    scope: str = "global"  # the accumulators' scope the description asks for


_X86_TARGETS = {16: ("x86-avx512vnni", "avx512vnni"), 8: ("x86-avxvnni", "avxvnni")}
STEPS = ([Step(name, lanes, group, a, b, *_X86_TARGETS[lanes]) for (lanes, group), (name, _, a, b)
          in x86.VNNI_INTRINSICS.items()]
         + [Step(name, 8, 2, "int16", b, "x86-avx2", "avx2") for b, name in x86.AVX2_INTRINSICS.items()]
         + [Step(name, 4, 4, "int8", "int8", "aarch64", None, "local") for name in arm.INTRINSICS.values()])


def _tensorized(step: Step, b_row: int) -> tvm.IRModule:
    """out[i] = sum_k a[k] b[i, k] over one step's tile, with b's rows `b_row` elements apart, tensorized."""
    lanes, group, scope = step.lanes, step.group, step.scope

    @T.prim_func(s_tir=True)
    def main(a: T.Buffer((group,), step.a_dtype), b: T.Buffer((lanes, b_row), step.b_dtype),
             out: T.Buffer((lanes,), "int32")) -> None:
        acc = T.sblock_alloc_buffer((lanes,), "int32", scope=scope)
        for i in range(lanes):
            with T.sblock("zero"):
                vi = T.axis.remap("S", [i])
                acc[vi] = 0
        for i, k in T.grid(lanes, group):
            with T.sblock("update"):
                vi, vk = T.axis.remap("SR", [i, k])
                acc[vi] = acc[vi] + T.Cast("int32", a[vk]) * T.Cast("int32", b[vi, vk])
        for i in range(lanes):
            with T.sblock("store"):
                vi = T.axis.remap("S", [i])
                out[vi] = acc[vi]

    sch = tvm.s_tir.Schedule(main)
    sch.tensorize(sch.get_loops(sch.get_sblock("update"))[0], step.intrinsic)
    return sch.mod


@pytest.mark.parametrize("step", STEPS, ids=[s.intrinsic for s in STEPS])
def test_dot_step_takes_only_a_compact_tile(step):
    target = resolve_target(step.target).target
    if step.target == "aarch64":
        arm._register_intrinsics()
    kernel = tvm.tirx.build(_tensorized(step, step.group), target=target)
    if step.feature in host_cpu_features():
        rng = np.random.default_rng(0)
        a = record_check._full_range(rng, step.a_dtype, [step.group])
        b = record_check._full_range(rng, step.b_dtype, [step.lanes, step.group])
        out = tvm.runtime.tensor(np.zeros(step.lanes, np.int32))
        kernel(tvm.runtime.tensor(a), tvm.runtime.tensor(b), out)
        np.testing.assert_array_equal(out.numpy(), b.astype(np.int64) @ a.astype(np.int64))
    with pytest.raises(tvm.error.InternalError, match=r"(?i)buffer match constraint for b\.strides_0 unmet"):
        tvm.tirx.build(_tensorized(step, 2 * step.group), target=target)


def _amx_tensorized(group_bytes: int) -> tvm.IRModule:
    """C[16, 16] = A[16, 64] . B over one AMX tile block, B's 4-byte groups `group_bytes` apart, tensorized."""

    @T.prim_func(s_tir=True)
    def main(a: T.Buffer((16, 64), "uint8"), b: T.Buffer((1, 16, 16, group_bytes), "int8"),
             c: T.Buffer((16, 16), "int32")) -> None:
        for i, j, k in T.grid(T.int64(16), T.int64(16), T.int64(64)):
            with T.sblock("update"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    c[vi, vj] = 0
                c[vi, vj] = c[vi, vj] + T.Cast("int32", a[vi, vk]) * T.Cast(
                    "int32", b[vj // T.int64(16), vk // T.int64(4), vj % T.int64(16), vk % T.int64(4)])

    sch = tvm.s_tir.Schedule(main)
    sch.tensorize(sch.get_loops(sch.get_sblock("update"))[0], x86._amx_intrinsic(16, 16, 64))
    return sch.mod


def test_amx_tile_block_takes_only_a_compact_b_block():
    """The AMX step loads B's 16 x 64-byte block as tile rows 64 bytes apart: a block whose 4-byte groups lie
    apart is refused (built only: this host has no AMX; the tile block's integers are tested where it has)."""
    target = resolve_target("x86-amx").target
    tvm.tirx.build(_amx_tensorized(4), target=target)
    with pytest.raises(tvm.error.InternalError, match=r"(?i)buffer match constraint for b\.strides_2 unmet"):
        tvm.tirx.build(_amx_tensorized(8), target=target)
