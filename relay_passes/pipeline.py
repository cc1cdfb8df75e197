"""The integer-only compilation pipeline in numbered phases, with optional IR dumps between them.

Phase 0 removes requantizations that are the identity on their input dtype (`DropIdentityRequantize`), fuses
the linear layers that share an input (Q, K, V) into one GEMM (`FuseSiblingLinears`), legalizes
the `ibert.*` ops (after the target's library dispatch, which lowers `cumsum`; on CPUs the float Softmax and
GELU of Q8BERT mode with `ops/float_math.py`'s vectorized exp and erf) and folds constants. Phase 1
rewrites the GEMMs into the operand forms of the target's x86 dot products (VNNI: `ShiftActivationsU8`; AVX2
without VNNI: `WidenActivationsI16`; both: `PackProbabilitiesI16`; no-ops elsewhere) and fuses requantize
epilogues into their GEMMs (`FuseRequantize`; on CUDA with requantize chains split, see there). Phase 2
verifies that no float survived (`VerifyIntegerOnly`), phase 3 applies a tuning database where given, then
the target family's default schedule (`schedules/<family>.py`), and lowers to VM form.
Layout after MLC-LLM's `compiler_pass/pipeline.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
from tvm.relax.backend.cuda import pipeline as cuda_pipeline
from tvm.target import Target

from ibert_tvm.ops.float_math import CPU_LEGALIZATIONS

from .apply_tuning_records import ApplyTuningRecords
from .drop_identity_requantize import DropIdentityRequantize
from .fuse_requantize import FuseRequantize
from .fuse_sibling_linears import FuseSiblingLinears
from .pack_probabilities_i16 import PackProbabilitiesI16
from .shift_activations_u8 import ShiftActivationsU8
from .verify_integer_only import VerifyIntegerOnly
from .widen_activations_i16 import WidenActivationsI16

__all__ = ["PHASES", "build", "integer_pipeline", "tunable_module"]

#: Phase names in order; phase i dumps to `dump_dir/{i:02d}_{name}.py`.
PHASES = ("legalize", "fuse", "verify", "lower")


def _dump_folder(dump_dir: str | Path | None) -> Path | None:
    """`dump_dir` checked before any pass runs (`reports.folder_problem`: under a file, or a folder where no file
    can be made), so that it is refused by name up front instead of failing inside the pipeline."""
    if not dump_dir:
        return None
    from ibert_tvm.reports import folder_problem

    if problem := folder_problem(dump_dir):
        raise ValueError(f"dump_dir: {problem}")
    return Path(dump_dir)


@tvm.transform.module_pass(opt_level=0, name="IBertDumpIR")
class _DumpIR:
    """Write the module as TVMScript to `path` (constants omitted) and pass it on unchanged."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(mod.script(show_meta=False), encoding="utf-8")
        return mod


def _count_tuned(tally: dict[str, Any]) -> tvm.transform.Pass:
    """Fill `tally` with the kernels (PrimFuncs) of the module and those a tuning database scheduled
    (`ApplyTuningRecords` marks them `tirx.is_scheduled`, and files their records under "records"), so that
    `compile` can say how many took one and whether those records were checked on this program."""

    def count(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        funcs = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
        tally["kernels"] = len(funcs)
        tally["tuned"] = sum(bool(f.attrs and f.attrs.get("tirx.is_scheduled", False)) for f in funcs)
        return mod

    return tvm.transform.module_pass(count, opt_level=0, name="IBertCountTuned")


def _schedule(target: Target, database: Any | None, options: dict, tally: dict[str, Any] | None = None
              ) -> list[tvm.transform.Pass]:
    """Apply a tuning database's records (where given), then the target family's default schedule to the rest."""
    from ibert_tvm.schedules import schedules_for  # lazily: the CUDA schedules import dlight (~4 s)

    family = schedules_for(target)
    default = tvm.transform.module_pass(lambda mod, _ctx: family.apply_default_schedule(mod, target, **options), opt_level=0,
                                        name="IBertDefaultSchedule")
    applied = None if tally is None else tally.setdefault("records", {})
    tuned = [] if database is None else [ApplyTuningRecords(database, target, applied)]
    counted = [] if tally is None else [_count_tuned(tally)]
    return [*tuned, *counted, default]


def _phases(target: Target, database: Any | None = None, options: dict | None = None,
            tally: dict[str, Any] | None = None, integer_only: bool = True) -> list[list[tvm.transform.Pass]]:
    """The passes of each phase in PHASES order, for `target` (CUDA or a CPU kind); without `integer_only`,
    phase 2 lets float through (Q8BERT mode's nonlinearities)."""
    from ibert_tvm.schedules import family_of  # lazily, as in `_schedule`

    gpu = target.kind.name == "cuda"
    if not gpu and "cpu" not in target.keys:
        raise ValueError(f"integer_pipeline supports CUDA and CPU (llvm) targets, got {target}")
    backend = cuda_pipeline if gpu else cpu_pipeline
    return [
        [DropIdentityRequantize(), FuseSiblingLinears(), *backend.library_dispatch_passes(target),
         relax.transform.LegalizeOps(None if gpu else CPU_LEGALIZATIONS), relax.transform.FoldConstant()],
        [*([] if gpu else [ShiftActivationsU8(target), WidenActivationsI16(target), PackProbabilitiesI16(target)]),
         FuseRequantize(split_requantize_chains=gpu, layout_prologues=family_of(target) == "x86")],
        [VerifyIntegerOnly()] if integer_only else [],
        [*_schedule(target, database, options or {}, tally), *backend.dataflow_lower_passes(target),
         *backend.finalize_passes(target)],
    ]


def integer_pipeline(target: Target | str = "llvm", dump_dir: str | None = None, database: Any | None = None,
                     tally: dict[str, Any] | None = None, integer_only: bool = True,
                     **schedule_options: Any) -> tvm.transform.Pass:
    """Legalize, fuse, verify and lower an ibert program for `target`; per-phase dumps make each step inspectable.

    `database` (a MetaSchedule Database tuned for this target) schedules the PrimFuncs it has records for;
    the target family's default schedule (`schedules/`) takes the rest, with `schedule_options` (e.g. the
    CUDA GEMM variant). A `tally` dict receives the number of kernels, of those the database scheduled, and
    ("records") the workload key and record digest of each record it applied. `integer_only=False` skips the
    check that no float survived, for Q8BERT-mode programs (float nonlinearities between the int8 GEMMs), and
    so writes no `02_verify` dump.
    """
    target = Target(target) if isinstance(target, str) else target
    folder = _dump_folder(dump_dir)
    passes: list[tvm.transform.Pass] = []
    phases = _phases(target, database, schedule_options, tally, integer_only)
    for index, (name, phase) in enumerate(zip(PHASES, phases)):
        passes += phase + ([_DumpIR(folder / f"{index:02d}_{name}.py")] if folder and phase else [])

    @tvm.transform.module_pass(opt_level=0, name="IBertIntegerPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def tunable_module(mod: tvm.IRModule, target: Target | str = "llvm", integer_only: bool = True) -> tvm.IRModule:
    """`mod` after phases legalize, fuse and verify (`integer_only`, as `build`): the PrimFuncs that tuning
    extracts as tasks and that `ApplyTuningRecords` in phase 3 matches records against (same module state,
    same hashes)."""
    target = Target(target) if isinstance(target, str) else target
    with target:
        phases = _phases(target, integer_only=integer_only)[:3]
        return tvm.transform.Sequential([p for phase in phases for p in phase])(mod)


def build(mod: tvm.IRModule, target: Target | str = "llvm", dump_dir: str | None = None,
          database: Any | None = None, tally: dict[str, Any] | None = None, integer_only: bool = True,
          **schedule_options: Any) -> tvm.runtime.Executable:
    """Compile `mod` via `integer_pipeline` to a VM executable (already lowered, hence relax_pipeline=None)."""
    from ibert_tvm.schedules.gemm_prefetch import TIR_PIPELINE  # registers the TIR pipeline it names

    target = Target(target) if isinstance(target, str) else target
    with target:
        lowered = integer_pipeline(target, dump_dir, database, tally, integer_only, **schedule_options)(mod)
        return tvm.compile(lowered, target=target, relax_pipeline=None, tir_pipeline=TIR_PIPELINE)
