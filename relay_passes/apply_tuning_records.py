"""Schedule each kernel by the tuning record its database holds for it, replayed on that kernel itself.

A database of `ibert_tvm.shared_workloads` files a record under a key that every layer's kernel of one
shape shares, each kernel with its own requantize constants. Relax's `MetaScheduleApplyDatabase` cannot
apply such a record: it replays the trace on the kernel the record was tuned on (another layer's
constants), or, where that kernel is not structurally equal to the one asked for, through MetaSchedule's
anchor-trace heuristics, which stop on our kernels. Here the database's own `query_scheduled` schedules the
kernel that was asked for (`SharedDatabase` replays the trace on it), and the kernel keeps its attributes.
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.target import Target

from ibert_tvm.shared_workloads import SharedDatabase, kernel_module, record_digest, workload_key

__all__ = ["ApplyTuningRecords"]


@tvm.transform.module_pass(opt_level=0, name="IBertApplyTuningRecords")
class ApplyTuningRecords:
    """Replace each unscheduled PrimFunc that `database` has a record for by its scheduled form, marked
    `tirx.is_scheduled` (so that the default schedule leaves it alone). `applied`, where given, receives the
    workload key of each kernel scheduled and the `record_digest` of the record that scheduled it."""

    def __init__(self, database: SharedDatabase, target: Target, applied: dict[str, str] | None = None) -> None:
        self.database, self.target, self.applied = database, target, applied

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        scheduled = {}
        for gv, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and not (func.attrs and func.attrs.get("tirx.is_scheduled", False)):
                kernel = kernel_module(func)
                found = self.database.query_scheduled(kernel, self.target, gv.name_hint)
                if found is not None:  # the kernel's own attributes, not the `main` symbol of the record's module
                    record, tuned = found
                    scheduled[gv] = tuned["main"].without_attr("global_symbol").with_attrs(
                        dict(func.attrs or {})).with_attr("tirx.is_scheduled", True)
                    if self.applied is not None:
                        self.applied[workload_key(kernel)] = record_digest(record)
        if not scheduled:
            return mod
        out = tvm.IRModule(dict(mod.functions_items()), mod.attrs, mod.global_infos)
        for gv, func in scheduled.items():
            out[gv] = func
        return out
