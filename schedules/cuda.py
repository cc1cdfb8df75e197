"""Untuned default CUDA schedules for the `ibert.*` operators, and the MetaSchedule space for tuning them.

`apply_default_schedule` schedules every PrimFunc of a legalized module with these rules, tried in this
order (the first that applies wins):

- the int8 GEMM rule of the chosen variant (`gemm=`, see `default_rules`; `schedules/cuda_gemm.py`):
  `ibert.linear` with its fused epilogue (bias, requantize, GELU) and the Q.K^T `ibert.matmul`, on INT8
  tensor cores (`imma`, WMMA) or with `__dp4a` (`dp4a`).
- `SimtMatmul`: dlight's `Matmul` SIMT schedule (shared-memory tiles, int32 accumulation in registers) for
  what the GEMM rules leave: the P.V `ibert.matmul`, whose int16 probabilities no int8 intrinsic takes,
  and every GEMM when `gemm="simt"`. Its own int8 tensor-core branch (`MatmulInt8Tensorization`, taken on
  sm_70+ when M, N and K all exceed 64) crashes TVM 0.27 while lowering (`GetWmmaFragmentSize`, in
  InjectSoftwarePipeline), and merely entering it imports `tvm.s_tir.tensor_intrin.cuda`, about a minute
  of TVMScript parsing. So the rule is shown the target with a pre-Volta arch (its only use of `arch` is
  that branch); the kernels are still built for the real target.
- `GEMV`: a GEMM on a single row (M = 1) under `gemm="simt"`.
- `Reduction`: kept from TVM's default list; no `ibert.*` op at BERT shapes needs it.
- `GeneralReduction`: `ibert.int_softmax` and `ibert.int_layernorm` (one thread block per row; the row
  reductions and the elementwise stages fused into one kernel).
- `Fallback`: elementwise and gather ops: `ibert.requantize`, `ibert.int_gelu`, `ibert.embedding`.

`tuning_space` is the MetaSchedule space for tuning these tasks on CUDA: TVM's CUDA rules, with the int8
GEMMs offered both on tensor cores (WMMA, `shared` staging) and with dp4a; `build_candidate` builds its
candidates as `compile` will (`ibert_tvm.cuda_toolchain`: nvcc, a real cubin, the pass config they need).
The exported cubins and their SASS are read with `ibert_tvm.cuda_toolchain` (`extract_cubins`, `sass`).
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.target import Target

from ibert_tvm.targets import parse_cuda_arch

from . import cuda_intrin

__all__ = ["GEMM_VARIANTS", "T4", "SimtMatmul", "apply_default_schedule", "build_candidate", "default_gemm",
           "default_rules", "tuning_space"]

#: The NVIDIA T4 (sm_75), the data-centre GPU the project targets first.
T4 = "nvidia/nvidia-t4"
#: The int8 GEMM variants of `apply_default_schedule(..., gemm=...)`, each with the oldest SM that has it.
GEMM_VARIANTS = {"imma": 72, "dp4a": 61, "simt": 0}
#: the keyword options `apply_default_schedule` takes (`schedules.check_options`)
OPTIONS = ("gemm",)


class SimtMatmul(dl.gpu.Matmul):
    """dlight's `Matmul` rule without its (crashing) tensor-core branch: it sees the target as pre-Volta."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if target.kind.name == "cuda":
            target = Target({**dict(target.export()), "arch": "sm_50"})
        return super().apply(func, target, tunable)


def _check_no_kept_stages(mod: tvm.IRModule) -> None:
    """Refuse PrimFuncs with stages that a CPU legalization keeps apart (`intmath.KEEP_STAGE`): dlight would
    inline them into one another."""
    from ibert_tvm.ops.intmath import KEEP_STAGE

    for gvar, func in mod.functions_items():
        if (not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", False)
                or not isinstance(func.body, s_tir.SBlockRealize)):  # not schedulable (e.g. a library's scan)
            continue
        sch = s_tir.Schedule(func)
        if any(all(sch.get(b).annotations.get(k) == v for k, v in KEEP_STAGE.items())
               for b in sch.get_child_blocks(get_root_block(sch))):
            raise ValueError(f"{gvar.name_hint} was legalized for a CPU (its stages are kept apart for the CPU "
                             "schedules); legalize under the CUDA target: `with target: LegalizeOps()(mod)`")


def default_gemm(target: Target) -> str:
    """The int8 GEMM variant for a CUDA target: tensor cores from sm_75 on, dp4a from sm_61, else SIMT."""
    sm = _sm(target)
    return "imma" if sm >= 75 else "dp4a" if sm >= GEMM_VARIANTS["dp4a"] else "simt"


def check_options(target: Target, gemm: str | None = None) -> str:
    """The GEMM variant to use (`default_gemm` where None), or a ValueError for one unknown or beyond the arch."""
    gemm = gemm or default_gemm(target)
    if gemm not in GEMM_VARIANTS:
        raise ValueError(f"unknown gemm variant '{gemm}' (choose from {', '.join(GEMM_VARIANTS)})")
    if _sm(target) < GEMM_VARIANTS[gemm]:
        raise ValueError(f"gemm='{gemm}' needs sm_{GEMM_VARIANTS[gemm]} or newer; the target is "
                         f"{target.attrs['arch']}")
    return gemm


def default_rules(target: Target, gemm: str | None = None) -> list[dl.ScheduleRule]:
    """The rules tried in order on each PrimFunc: the int8 GEMM variant and its fallbacks, then dlight's.

    A GEMM the chosen variant declines falls to the next rule: imma -> dp4a -> SIMT. `imma` declines M or
    N below 16 (a 16x16 fragment would be mostly padding), both decline an int16 operand (P.V).
    """
    gemm = check_options(target, gemm)
    from . import cuda_gemm  # lazily: its rules are only needed when scheduling

    gemms = {"imma": [cuda_gemm.TensorCoreMatmul(), cuda_gemm.Dp4aMatmul()], "dp4a": [cuda_gemm.Dp4aMatmul()],
             "simt": []}[gemm]
    return [*gemms, SimtMatmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def apply_default_schedule(mod: tvm.IRModule, target: Target | str = T4, gemm: str | None = None) -> tvm.IRModule:
    """Schedule every unscheduled PrimFunc of a module legalized under a CUDA target (`with target:
    relax.transform.LegalizeOps()(mod)`, as `relay_passes/pipeline.py` does).

    `gemm` picks the int8 GEMM variant: "imma", "dp4a" or "simt" (default: `default_gemm(target)`).
    Raises ValueError for a non-CUDA target, a variant its arch lacks, or a module legalized for a CPU (its
    kept stages, `intmath.KEEP_STAGE`, would be inlined into expressions of 3^7 terms), and RuntimeError
    naming any PrimFunc no rule could schedule (an unscheduled kernel would otherwise fail later with unbound
    threads).
    """
    target = _cuda_target(target)
    _check_no_kept_stages(mod)
    rules = default_rules(target, gemm)
    with target:  # the pass edits the module it is given in place: give it a copy
        mod = dl.ApplyDefaultSchedule(*rules)(mod.clone())
    missed = [g.name_hint for g, f in mod.functions_items()
              if isinstance(f, tirx.PrimFunc) and not f.attrs.get("tirx.is_scheduled", False)]
    if missed:
        raise RuntimeError(f"no dlight GPU rule scheduled {', '.join(missed)} for {target.attrs.get('arch')}")
    return mod


def tuning_space(target: Target) -> dict[str, Any]:
    """MetaSchedule's design space for tuning CUDA tasks, as the tuner's keyword arguments: {"space": ...}.

    The union of two post-order-apply spaces over TVM's CUDA rules: one tiles int8 GEMMs onto WMMA tensor
    cores (`imma`, sm_72+), the other onto dp4a; any other block gets the SIMT rules in both. Candidates
    are to be built with `build_candidate`. What differs from TVM's default tensor-core space, and why:

    - intrinsics: this project's WMMA group (`cuda_intrin`) instead of TVM's list (all dtypes, and
      mma/ldmatrix groups no int8 task matches): registering it takes 1 s where importing TVM's takes a
      minute.
    - staging: int8 operand tiles in dynamic, the int32 accumulator tile in static shared memory. With
      one scope for both (TVM's groups: `shared.dyn`), TVM's StorageRewrite lets the accumulator tile
      reuse an operand tile's memory and the WMMA store then fails to lower ("tvm_access_ptr element type
      must match").
    - dp4a as a second space, so that the search weighs dp4a against WMMA on every int8 GEMM (small or
      unaligned ones, which the tensor-core rule pads to 16x16x16 fragments, may run faster on dp4a).

    Measured on this machine (32 random candidates of a linear + requantize task, each built with nvcc):
    TVM's default space, M, N, K = 128, 256, 256: 22 failed, all on that store; this space: 0 of 32 at
    128, 256, 256 (24 WMMA, 8 dp4a) and 8 of 32 at 40, 96, 72, all WMMA candidates that load zero-padded
    tiles 8 or 16 bytes a thread (TVM's CUDA codegen writes an 8- or 16-lane int8 zero as a `make_int2`
    / `make_int4` call with one argument per byte, which nvcc rejects). Loading 4 bytes a thread
    (`vector_load_lens=[4]`) builds all 64, but gives up 16-byte loads where no padding is needed: the
    project's buckets (sequence 32 and 128, hidden and head sizes multiples of 16) need none.
    """
    target = _cuda_target(target)
    cuda_intrin.register()
    simt = ms.schedule_rule.ScheduleRule.create("cuda")
    gemm = [_dp4a_tiling()] if _sm(target) < GEMM_VARIANTS["imma"] else [_tensor_core_tiling(), _dp4a_tiling()]
    postprocs, mutators = ms.postproc.Postproc.create("cuda-tensorcore"), ms.mutator.Mutator.create("cuda-tensorcore")
    spaces = [ms.space_generator.PostOrderApply(sch_rules=[rule, *simt], postprocs=postprocs, mutator_probs=mutators)
              for rule in gemm]
    return {"space": ms.space_generator.SpaceGeneratorUnion(spaces, sch_rules=[], postprocs=postprocs,
                                                             mutator_probs=mutators)}


def _tensor_core_tiling() -> ms.schedule_rule.ScheduleRule:
    """TVM's CUDA tensor-core tiling (its default structure and sampling) on this project's int8 WMMA group."""
    rules, wmma = ms.schedule_rule, cuda_intrin.WMMA
    group = {"init": wmma["fill"], "load_a": wmma["load_a"], "load_b": wmma["load_b"], "compute": wmma["sync"],
             "store": wmma["store"]}
    return rules.MultiLevelTilingTensorCore(
        intrin_groups=[group], structure="SSSRRSRS", tile_binds=["blockIdx.y", "blockIdx.x", "threadIdx.y"],
        max_innermost_factor=4, vector_load_lens=[4, 8, 16],
        reuse_read=rules.ReuseType(req="must", levels=[4], scope=cuda_intrin.OPERAND_SCOPE),
        reuse_write=rules.ReuseType(req="must", levels=[2], scope=cuda_intrin.ACCUMULATOR_SCOPE))


def _dp4a_tiling() -> ms.schedule_rule.ScheduleRule:
    """TVM's CUDA SIMT tiling with the innermost 4 of K as one dp4a (operands staged in shared memory)."""
    rules = ms.schedule_rule
    return rules.MultiLevelTilingWithIntrin(
        cuda_intrin.DP4A, structure="SSSRRSRS", tile_binds=["blockIdx.x", "vthread.x", "threadIdx.x"],
        max_innermost_factor=64, vector_load_lens=[1, 2, 4],
        reuse_read=rules.ReuseType(req="must", levels=[4], scope="shared"),
        reuse_write=rules.ReuseType(req="must", levels=[3], scope="local"))


def build_candidate(mod: tvm.IRModule, target: Target, _params: Any = None) -> tvm.runtime.Module:
    """MetaSchedule build function for CUDA (`LocalBuilder(f_build=build_candidate)`): the candidate compiled
    to a cubin with nvcc inside `cuda_build_environment`, so that what fails here would fail in `compile`."""
    from ibert_tvm.cuda_toolchain import cuda_build_environment
    from ibert_tvm.schedules.gemm_prefetch import TIR_PIPELINE  # compile's TIR pipeline, as for CPU candidates

    with cuda_build_environment(target):
        return tvm.tirx.build(mod, target=target, pipeline=TIR_PIPELINE)


def _cuda_target(target: Target | str) -> Target:
    """`target` as a Target; ValueError unless it is CUDA with an sm_XX arch."""
    target = Target(target) if isinstance(target, str) else target
    arch = str(target.attrs.get("arch", ""))
    if target.kind.name != "cuda" or not arch.startswith("sm_"):
        raise ValueError(f"a CUDA target with an sm_XX arch is needed, got {target}")
    return target


def _sm(target: Target) -> int:
    """The SM number of a CUDA target's arch (75 for sm_75, 90 for sm_90a)."""
    return parse_cuda_arch(str(target.attrs["arch"])).sm
