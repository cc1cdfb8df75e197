"""Untuned default CUDA schedules for the `ibert.*` operators, and a cubin build that needs no GPU.

`apply_default_schedule` schedules every PrimFunc of a legalized module with `tvm.s_tir.dlight`'s GPU rules,
tried in this order (the first that applies wins):

- `Matmul`: `ibert.linear` (the int32 bias add is inlined into its epilogue) and `ibert.matmul` (Q K^T,
  and P V with int16 probabilities), always with its SIMT schedule (shared-memory tiles, int32 accumulation
  in registers). Its int8 tensor-core branch (`MatmulInt8Tensorization`, taken on sm_70+ when M, N and K all
  exceed 64, as in every BERT-base linear layer) crashes TVM 0.27 while lowering (`GetWmmaFragmentSize`, in
  InjectSoftwarePipeline), and merely entering it imports `tvm.s_tir.tensor_intrin.cuda`, about a minute of
  TVMScript parsing, even when the PrimFunc carries `dlight.do_not_tensorize`. So the rule is shown the
  target with a pre-Volta arch (its only use of `arch` is that branch); the kernels are still built for the
  real target.
- `GEMV`: `ibert.linear` on a single token (M = 1), where `Matmul` declines.
- `Reduction`: kept from TVM's default list; no `ibert.*` op at BERT shapes needs it.
- `GeneralReduction`: `ibert.int_softmax` and `ibert.int_layernorm` (one thread block per row; the row
  reductions and the elementwise stages fused into one kernel).
- `Fallback`: elementwise and gather ops: `ibert.requantize`, `ibert.int_gelu`, `ibert.embedding`.

`build_cubin` compiles a module for a CUDA target and returns its kernels as one cubin for the target's `arch`.
TVM's CUDA code generator registers binary CUDA modules only where the CUDA driver library loads; without it
`tvm.compile` keeps the kernels as CUDA source (no error). So the source is taken from the built module and
compiled with nvcc (`tvm.support.nvcc.compile_cuda`, TVM's own nvcc flags), which needs neither a GPU nor the
driver. The host side of the module is not part of the result.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import tvm
from tvm import relax, s_tir, tirx
from tvm.relax.backend.cuda import pipeline as cuda_pipeline
from tvm.s_tir import dlight as dl
from tvm.support import nvcc
from tvm.target import Target

#: The NVIDIA T4 (sm_75), the data-centre GPU the project targets first.
T4 = "nvidia/nvidia-t4"


class NvccNotFoundError(RuntimeError):
    """nvcc, the CUDA toolkit's compiler, is not on PATH."""


def find_nvcc() -> str:
    """The path of nvcc on PATH; raises NvccNotFoundError naming it when it is missing."""
    path = shutil.which("nvcc")
    if path is None:
        raise NvccNotFoundError("nvcc, the CUDA toolkit's compiler, is not on PATH; it compiles the CUDA "
                                "kernels to a cubin (add e.g. /usr/local/cuda/bin to PATH)")
    return path


class SimtMatmul(dl.gpu.Matmul):
    """dlight's `Matmul` rule without its (crashing) tensor-core branch: it sees the target as pre-Volta."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if target.kind.name == "cuda":
            target = Target({**dict(target.export()), "arch": "sm_50"})
        return super().apply(func, target, tunable)


def default_rules() -> list[dl.ScheduleRule]:
    """The dlight GPU rules in the order they are tried (the CUDA backend's default list, SIMT matmul)."""
    return [SimtMatmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def apply_default_schedule(mod: tvm.IRModule, target: Target | str = T4, **options) -> tvm.IRModule:
    """Schedule every unscheduled PrimFunc of a legalized module (after `relax.transform.LegalizeOps()`).

    Raises ValueError for a non-CUDA target, and RuntimeError naming any PrimFunc no rule could schedule
    (an unscheduled kernel would otherwise fail later with unbound threads).
    """
    target = _cuda_target(target)
    with target:  # the pass edits the module it is given in place: give it a copy
        mod = dl.ApplyDefaultSchedule(*default_rules())(mod.clone())
    missed = [g.name_hint for g, f in mod.functions_items()
              if isinstance(f, tirx.PrimFunc) and not f.attrs.get("tirx.is_scheduled", False)]
    if missed:
        raise RuntimeError(f"no dlight GPU rule scheduled {', '.join(missed)} for {target.attrs.get('arch')}")
    return mod


def relax_pipeline(target: Target | str = T4) -> tvm.transform.Pass:
    """TVM's default CUDA Relax pipeline with `apply_default_schedule` in place of its dlight step."""
    target = _cuda_target(target)
    schedule = tvm.transform.module_pass(lambda m, _ctx: apply_default_schedule(m, target), opt_level=0,
                                         name="IBertCudaDefaultSchedule")
    legalize = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR(), schedule]
    passes = (cuda_pipeline.library_dispatch_passes(target) + legalize
              + cuda_pipeline.dataflow_lower_passes(target) + cuda_pipeline.finalize_passes(target))

    @tvm.transform.module_pass(opt_level=0, name="IBertCudaPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def build_cubin(mod: tvm.IRModule, target: Target | str = T4) -> bytes:
    """Compile a Relax module (legalized or not) for `target` and return its CUDA kernels as one cubin.

    The cubin is a CUDA ELF (e_machine 190) for the target's `arch` (sm_75 for the T4), holding one
    `<primfunc>_kernel` symbol per kernel. Needs nvcc on PATH; no GPU, no CUDA driver library.
    """
    find_nvcc()
    target = _cuda_target(target)
    exe = tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target))
    sources = [m.inspect_source("cuda") for m in _module_tree(exe.mod) if m.kind == "cuda"]
    if len(sources) != 1:
        raise RuntimeError(f"expected one CUDA module in the build, found {len(sources)}")
    with target:  # compile_cuda reads the target in scope even when arch is given
        return bytes(nvcc.compile_cuda(sources[0], target_format="cubin", arch=str(target.attrs["arch"]),
                                       compiler="nvcc"))


def _module_tree(mod: tvm.runtime.Module) -> Iterator[tvm.runtime.Module]:
    yield mod
    for sub in mod.imports:
        yield from _module_tree(sub)


def _cuda_target(target: Target | str) -> Target:
    target = Target(target) if isinstance(target, str) else target
    arch = str(target.attrs.get("arch", ""))
    if target.kind.name != "cuda" or not arch.startswith("sm_"):
        raise ValueError(f"a CUDA target with an sm_XX arch is needed, got {target}")
    return target


def tuning_space(target: Target) -> dict:
    """MetaSchedule's default CUDA space (placeholder until the dp4a / tensor-core space lands)."""
    return {"space": "post-order-apply"}
