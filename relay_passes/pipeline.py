"""The integer-only compilation pipeline in numbered phases, with optional IR dumps between them.

Phase 0 legalizes the `ibert.*` ops (after the target's library dispatch, which lowers `cumsum`), phase 1
fuses requantize epilogues into their GEMMs, phase 2 verifies that no float survived, phase 3 is the
target's default scheduling and lowering to VM form (CUDA: `schedules.cuda.apply_default_schedule`; llvm:
no scheduling). `build` runs it and compiles with `tvm.compile(..., relax_pipeline=None)`.
"""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
from tvm.relax.backend.cuda import pipeline as cuda_pipeline
from tvm.target import Target

from .fuse_requantize import FuseRequantize
from .verify_integer_only import VerifyIntegerOnly

__all__ = ["PHASES", "build", "integer_pipeline"]

#: Phase names in order; phase i dumps to `dump_dir/{i:02d}_{name}.py`.
PHASES = ("legalize", "fuse", "verify", "lower")


@tvm.transform.module_pass(opt_level=0, name="IBertDumpIR")
class _DumpIR:
    """Write the module as TVMScript to `path` (constants omitted) and pass it on unchanged."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(mod.script(show_meta=False), encoding="utf-8")
        return mod


def _cuda_schedule(target: Target) -> tvm.transform.Pass:
    """`apply_default_schedule` as a pass (imported here: it loads dlight and nvcc support)."""
    from ibert_tvm.schedules.cuda import apply_default_schedule

    return tvm.transform.module_pass(lambda mod, _ctx: apply_default_schedule(mod, target), opt_level=0,
                                     name="IBertCudaDefaultSchedule")


def _phases(target: Target) -> list[list[tvm.transform.Pass]]:
    """The passes of each phase in PHASES order, for `target` (CUDA or a CPU kind)."""
    if target.kind.name == "cuda":
        backend, schedule = cuda_pipeline, [_cuda_schedule(target)]
    elif "cpu" in target.keys:
        backend, schedule = cpu_pipeline, []
    else:
        raise ValueError(f"integer_pipeline supports CUDA and CPU (llvm) targets, got {target}")
    return [
        [*backend.library_dispatch_passes(target), relax.transform.LegalizeOps(), relax.transform.FoldConstant()],
        [FuseRequantize()],
        [VerifyIntegerOnly()],
        [*schedule, *backend.dataflow_lower_passes(target), *backend.finalize_passes(target)],
    ]


def integer_pipeline(target: Target | str = "llvm", dump_dir: str | None = None) -> tvm.transform.Pass:
    """Legalize, fuse, verify integer-only and lower an ibert program for `target`, dumping IR per phase."""
    target = Target(target) if isinstance(target, str) else target
    passes: list[tvm.transform.Pass] = []
    for index, (name, phase) in enumerate(zip(PHASES, _phases(target))):
        passes += phase + ([_DumpIR(Path(dump_dir) / f"{index:02d}_{name}.py")] if dump_dir else [])

    @tvm.transform.module_pass(opt_level=0, name="IBertIntegerPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def build(mod: tvm.IRModule, target: Target | str = "llvm", dump_dir: str | None = None) -> tvm.runtime.Executable:
    """Run `integer_pipeline` on `mod` and compile the result for `target` (a Relax VM executable)."""
    target = Target(target) if isinstance(target, str) else target
    return tvm.compile(integer_pipeline(target, dump_dir)(mod), target=target, relax_pipeline=None)
