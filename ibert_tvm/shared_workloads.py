"""Tuning records shared by kernels that differ only in their constants, such as the same layer type in
every encoder layer.

A layer's requantize multipliers and shifts are immediates inside its kernels, so MetaSchedule, which files
a record under the kernel's structural hash, saw each layer's QKV, output, FFN and LayerNorm kernels as
distinct workloads: 79 tasks at BERT-base 1 x 128, and a database that only applied to the calibration it
was tuned with. A trace names blocks and loops, not constants, so a record tuned on one layer's kernel
schedules the others too. `workload_key` hashes a kernel with the integer immediates of its stored values
masked (indices, loop bounds, shapes, types and reduction inits are kept): BERT-base's 79 kernels become 12 keys.
`SharedDatabase` files and finds records under that key, and replays a record on the kernel asked for.
MetaSchedule's own query replays it on the kernel it was tuned on, which holds another layer's constants.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import tvm
import tvm_ffi
from tvm import te
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.tune_context import _normalize_mod
from tvm.target import Target

__all__ = ["FAILED_SECS", "SharedDatabase", "kernel_module", "key_scheme", "mean_of", "mean_secs", "record_digest",
           "workload_key"]

#: MetaSchedule records a failed candidate (build or run error) with this run time.
FAILED_SECS = 1e10
#: Fields below which every immediate is structure (an index, a bound, a shape or a type), even inside a
#: value. Changing what is masked changes every key, and so `key_scheme`, which databases record.
_STRUCTURE_FIELDS = frozenset({"indices", "source", "buffer", "region", "ty", "min", "extent", "dom"})
_LEAVES = frozenset({"int", "float", "bool", "None", "ffi.String"})


def kernel_module(func: tvm.tirx.PrimFunc) -> tvm.IRModule:
    """A kernel as MetaSchedule's task extraction files it: alone in a module, as `main`."""
    return _normalize_mod(func)


def workload_key(mod: tvm.IRModule) -> str:
    """The structural hash of `mod` with the integer immediates of its stored values (a requantize
    multiplier, a shift, a clamp bound) set to 0; those of indices, bounds, shapes, types and a reduction's
    init are kept. Kernels with the same key differ in those constants at most, so one trace schedules them
    all. Memoized by `mod`'s structural hash: MetaSchedule asks for each measured candidate's workload, and
    masking a BERT-base kernel takes about 10 ms."""
    shash = tvm_ffi.structural_hash(mod)
    if shash not in _KEYS:
        _KEYS[shash] = _masked_hash(mod)
    return _KEYS[shash]


_KEYS: dict[int, str] = {}


def key_scheme() -> str:
    """A fingerprint of `workload_key` itself: the key of a fixed kernel with immediates in its stored values
    (masked), its indices and bounds (kept) and a reduction's init (kept). A tuning database records it; one
    filed under another scheme (what a key masks changed since) would serve records to the wrong kernels."""
    a = te.placeholder((8, 6), "int32", name="a")
    k = te.reduce_axis((0, 4), name="k")
    acc = te.compute((8,), lambda i: te.sum(a[i, k + 2] * 3, axis=k), name="acc")
    out = te.compute((8,), lambda i: (acc[i] + 7) >> 2, name="out")
    return workload_key(kernel_module(te.create_prim_func([a, out])))


def _masked_hash(mod: tvm.IRModule) -> str:
    """`workload_key` computed on the module's JSON graph: each stored value (not a block's `init`, the
    reducer's identity, which schedule rules match on) is replaced by a copy whose integer immediates are 0,
    copied per occurrence, as the graph shares nodes (an immediate may also sit in an index); then loaded and
    hashed."""
    graph = json.loads(tvm.ir.save_json(mod))
    nodes = graph["nodes"]
    nodes.append({"type": "int", "data": 0})
    zero, copies = len(nodes) - 1, {}

    def masked(index: int) -> int:
        """A copy of the value expression at `index` with its immediates 0 (structure fields and variables shared)."""
        node = nodes[index]
        if node["type"] in _LEAVES or node["type"] == "ir.Var" or not isinstance(node.get("data"), (dict, list)):
            return index
        if index not in copies:
            data = node["data"]
            if node["type"] == "ir.IntImm":
                data = {**data, "value": zero}
            elif isinstance(data, dict):
                data = {k: c if k == "span" or k in _STRUCTURE_FIELDS or not isinstance(c, int) else masked(c)
                        for k, c in data.items()}
            else:
                data = [masked(c) if isinstance(c, int) else c for c in data]
            nodes.append({**node, "data": data})
            copies[index] = len(nodes) - 1
        return copies[index]

    stack, seen = [graph["root_index"]], set()
    while stack:
        index = stack.pop()
        node = nodes[index]
        if index in seen or node["type"] in _LEAVES:
            continue
        seen.add(index)
        data = node.get("data")
        if node["type"] == "tirx.BufferStore":
            data["value"] = masked(data["value"])
        children = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
        stack += [c for k, c in children if isinstance(c, int) and k not in ("span", "init")]
    return str(tvm_ffi.structural_hash(tvm.ir.load_json(json.dumps(graph))))


def mean_secs(record: ms.database.TuningRecord) -> float:
    """A record's mean run time (s); failed candidates at FAILED_SECS."""
    return mean_of([float(s) for s in record.run_secs] if record.run_secs else None)


def mean_of(run_secs: Sequence[float] | None) -> float:
    """The mean of a record's run times (s), as the database or its JSON line holds them; FAILED_SECS without any."""
    return sum(run_secs) / len(run_secs) if run_secs else FAILED_SECS


def record_digest(record: ms.database.TuningRecord) -> str:
    """A fingerprint of what a record schedules: its trace (not its times), the same from process to process.
    The trace's text, not its structural hash: a trace read back from the JSON file holds other integer
    types than the one tuning committed, so the two hash differently."""
    return hashlib.sha256(str(record.trace.as_json()).encode()).hexdigest()[:20]


@derived_object
class SharedDatabase(ms.database.PyDatabase):
    """`inner` (a MetaSchedule database) with its workloads filed under `workload_key`: a kernel has a
    workload if any kernel of its key has one, a record of one serves all, and a queried schedule is the
    record's trace replayed on the kernel that was asked for."""

    def __init__(self, inner: ms.database.Database) -> None:
        super().__init__()
        self.inner = inner
        self.workloads: dict[str, ms.database.Workload] = {}  # key -> the workload its records are filed under
        self.records: dict[str, list[ms.database.TuningRecord]] = {}  # key -> every record, failed ones too
        for record in inner.get_all_tuning_records():
            key = workload_key(record.workload.mod)
            self.workloads.setdefault(key, record.workload)
            self.records.setdefault(key, []).append(record)

    def has_workload(self, mod: tvm.IRModule) -> bool:
        return workload_key(mod) in self.workloads or self.inner.has_workload(mod)

    def commit_workload(self, mod: tvm.IRModule) -> ms.database.Workload:
        key = workload_key(mod)
        if key not in self.workloads:
            self.workloads[key] = self.inner.commit_workload(mod)
        return self.workloads[key]

    def commit_tuning_record(self, record: ms.database.TuningRecord) -> None:
        self.inner.commit_tuning_record(record)
        self.records.setdefault(workload_key(record.workload.mod), []).append(record)

    def get_top_k(self, workload: ms.database.Workload, top_k: int) -> list[ms.database.TuningRecord]:
        measured = [r for r in self.records.get(workload_key(workload.mod), []) if mean_secs(r) < FAILED_SECS]
        return sorted(measured, key=mean_secs)[:top_k]

    def get_all_tuning_records(self) -> list[ms.database.TuningRecord]:
        return self.inner.get_all_tuning_records()

    def records_of(self, mod: tvm.IRModule) -> list[ms.database.TuningRecord]:
        """Every record filed under `mod`'s key, failed ones included."""
        return list(self.records.get(workload_key(mod), []))

    def query_schedule(self, mod: tvm.IRModule, target: Target, workload_name: str | None = None
                       ) -> tvm.s_tir.Schedule | None:
        record = self.query_tuning_record(mod, target, workload_name)
        return None if record is None else _replayed(record, mod)

    def query_ir_module(self, mod: tvm.IRModule, target: Target, workload_name: str | None = None
                        ) -> tvm.IRModule | None:
        sch = self.query_schedule(mod, target, workload_name)
        return None if sch is None else sch.mod

    def query_scheduled(self, mod: tvm.IRModule, target: Target, workload_name: str | None = None
                        ) -> tuple[ms.database.TuningRecord, tvm.IRModule] | None:
        """The best record of `mod`'s key and `mod` scheduled by it (None without one, or where its trace does
        not apply), for a caller that files which record it applied."""
        record = self.query_tuning_record(mod, target, workload_name)
        sch = None if record is None else _replayed(record, mod)
        return None if sch is None else (record, sch.mod)

    def __len__(self) -> int:
        return len(self.inner)


def _replayed(record: ms.database.TuningRecord, mod: tvm.IRModule) -> tvm.s_tir.Schedule | None:
    """`record`'s trace replayed on `mod`; None where it does not apply (the kernel keeps its default schedule)."""
    sch = tvm.s_tir.Schedule(mod)
    try:
        record.trace.apply_to_schedule(sch, remove_postproc=False)
    except (RuntimeError, ValueError):  # TVM's ScheduleError
        return None
    return sch
