"""Per-target schedules: one module per target family (`cuda`, `arm`, `x86`), each with the same two hooks.

- `apply_default_schedule(mod, target) -> IRModule`: the untuned schedule of every PrimFunc a tuning
  database did not already schedule (tensorized where the target has an int8 dot product).
- `tuning_space(target) -> dict`: the MetaSchedule space for `ms.tune_tir` / `ms.relax_integration.tune_relax`
  (`space`, and where the family needs them, `postprocs`, `mutators`).

A family that takes options for `apply_default_schedule` (CUDA's `gemm`) names them in `OPTIONS` and checks
their values in `check_options(target, **options)`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tvm.target import Target

__all__ = ["FAMILIES", "check_options", "family_of", "schedules_for"]

FAMILIES = ("cuda", "arm", "x86")


def family_of(target: Target) -> str:
    """The schedule family of a TVM target: CUDA, an aarch64 CPU, or an x86 CPU."""
    if target.kind.name == "cuda":
        return "cuda"
    if target.kind.name == "llvm":
        return "arm" if "arm_cpu" in target.keys or "aarch64" in str(target.attrs.get("mtriple", "")) else "x86"
    raise ValueError(f"no schedules for target kind '{target.kind.name}' (supported: cuda, llvm)")


def schedules_for(target: Target) -> ModuleType:
    """The `schedules/<family>.py` module for `target` (imported lazily: the CUDA one loads dlight)."""
    return importlib.import_module(f"{__name__}.{family_of(target)}")


def check_options(target: Target, options: dict[str, object]) -> None:
    """A ValueError naming a schedule option that `target`'s family does not take, or a value it refuses: asked
    before anything is calibrated or built (`compile`'s keyword arguments, the CLI's --gemm)."""
    family = schedules_for(target)
    taken = getattr(family, "OPTIONS", ())
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise ValueError(f"the {family_of(target)} schedules take no option {', '.join(unknown)} (they take "
                         f"{', '.join(taken) or 'none'}; gemm is an option of CUDA targets)")
    if options:
        family.check_options(target, **options)
