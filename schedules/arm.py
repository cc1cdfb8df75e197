"""aarch64 CPU schedules (placeholder until the sdot / NEON schedules land): LLVM's own vectorization."""

from __future__ import annotations

import tvm
from tvm.target import Target


def apply_default_schedule(mod: tvm.IRModule, target: Target, **options) -> tvm.IRModule:
    """No schedule: the PrimFuncs compile as legalized, as `tvm.compile` does for llvm."""
    return mod


def tuning_space(target: Target) -> dict:
    """MetaSchedule's default CPU space."""
    return {"space": "post-order-apply"}
