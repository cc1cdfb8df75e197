"""Auto-tuning of the integer program with MetaSchedule (xgb cost model): one resumable database per target.

`tune(model, target, trials, work_dir)` extracts the kernels of the integer program as tasks, one per kernel
shape (`shared_workloads`: every layer's kernels that differ only in their constants share a task and its
records; the module state of `pipeline.tunable_module`, which `pipeline.build(..., database=...)` matches
records against),
searches the target family's space (`schedules/<family>.tuning_space`), measures on this machine or on the
devices of a TVM RPC tracker, and leaves a MetaSchedule JSON database in `work_dir` with `ibert_tuning.json`
beside it (target, versions, shapes, trials). A second call on the same folder continues: the records
already there count against `trials`, seed the search, and the xgb model is reloaded. After the search each
task's best record is run on the arguments that the untuned program passes its kernels (`record_check`) and
timed beside its default schedule: the metadata lists those that write other integers or lose, and
`open_database` leaves them out.

MetaSchedule databases are not keyed by target, so `open_database(path, target)` refuses a folder made for
another target or TVM version, one missing its files, and a corrupt log (every line is parsed, each record's
own target checked; of the records, TVM reads each kernel shape's best only, `tune` all of them), each with a
`TuningLogError` naming the problem; a folder edited since `tune` wrote it is read in a child process first,
where a damaged record that kills TVM's reader is named by its line (`record_replay`).
`shipped_database(target)` finds the database that ships for a target in `tuning_logs/<log_name(target)>/`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import numbers
import shutil
import socket
import struct
import sys
import tempfile
import time
import types
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tvm
from tqdm.auto import tqdm
from tvm import relax
from tvm.ir.utils import derived_object
from tvm.rpc.base import RPC_TRACKER_MAGIC
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from . import record_check
from .artifact import why_not_runnable_here
from .ir_graph_check import graph_problem, workload_graph
from .record_replay import files_digest, replay_problem
from .relay_passes import pipeline
from .reports import folder_problem
from .schedules import schedules_for
from .shared_workloads import (FAILED_SECS, SharedDatabase, kernel_module, key_scheme, mean_of, mean_secs,
                               record_digest, workload_key)
from .targets import HOST_TARGETS, TargetSpec, host_cpu_name, resolve_target
from .threads import physical_cores
from .worker_interrupts import workers_spared_from_sigint

if TYPE_CHECKING:
    from .model import QuantizedModel

__all__ = ["META_FILE", "RECORD_FILE", "WORKLOAD_FILE", "TuningLogError", "TuningResult", "log_name",
           "check_measured_here", "check_not_being_tuned", "check_tracker", "check_work_dir", "open_database",
           "shipped_database", "tune", "tuned_shapes", "unchecked_records"]

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
_FILES = (WORKLOAD_FILE, RECORD_FILE)  # MetaSchedule's two files, in the order its reader reads them
#: ibert-tvm's metadata beside MetaSchedule's two files: what the records were tuned for and how.
META_FILE = "ibert_tuning.json"
#: the lock file a `tune` holds while it writes the folder (`_sole_writer`)
LOCK_FILE = ".ibert_tune.lock"
#: the metadata's lists of kernels whose records `open_database` leaves out (workload key -> task name), and why
_LEFT_OUT = {"default_wins": "slower than the default schedule", "wrong_integers": "write other integers",
             "not_called": "not called: the program runs the kernel as a view"}
#: the metadata's format, and why each older one is refused
_FORMAT = 3
_OLDER_FORMATS = {
    1: "its dot-product steps read non-compact tiles (its records may write wrong integers)",
    2: "its records are filed per kernel, not per kernel shape shared by the layers",
}
#: The xgb model and its training data, kept so that a resumed call does not start the model from scratch.
COST_MODEL_FILE = "cost_model.tar"
_BUILD_TIMEOUT_S = 120.0
_RUN_TIMEOUT_S = 60.0
_TRACKER_TIMEOUT_S = 5.0  # `check_tracker`'s wait for the RPC tracker to answer
_LISTED = 5  # tasks a TuningResult names per list (untried; untunable for one reason)
_WARMUP_MS = 100  # untimed calls before each candidate is timed (`_f_run_evaluator`)
_REPO_LOGS = Path(__file__).resolve().parent.parent / "tuning_logs"  # a source checkout / editable install
_PACKAGE_LOGS = Path(__file__).resolve().parent / "tuning_logs"  # a wheel carrying the logs as package data


class TuningLogError(ValueError):
    """A tuning database that cannot be used: another target or TVM version, files missing, or corrupt."""


@dataclass
class TuningResult:
    """What one `tune` call did: its tasks, the trials it ran and those that failed, estimated latencies."""

    target: str
    work_dir: Path
    tasks: dict[str, int]  # task name -> weight (call sites in the program of the kernels it stands for)
    kernels: int  # the program's distinct kernels: a task stands for those that differ only in their constants
    trials_run: int  # measured in this call
    trials_total: int  # records of these tasks in the database, earlier calls included
    build_errors: int
    run_errors: int
    errors: dict[str, int] = field(default_factory=dict)  # one-line message -> candidates (this call)
    untunable: dict[str, str] = field(default_factory=dict)  # task -> why MetaSchedule cannot tune it
    untried: tuple[str, ...] = ()  # tunable tasks with no record yet: the budget ran out before their turn
    latency_before_ms: float | None = None  # sum over tasks of weight x default-schedule latency
    latency_after_ms: float | None = None  # the same with what compile applies: a task's best record, if faster
    slower_than_default: tuple[str, ...] = ()  # tasks whose best record loses to their default schedule
    wrong_integers: tuple[str, ...] = ()  # tasks whose best record does not write the untuned program's integers
    records_checked: int = 0  # best records run on the untuned program's kernel arguments (`record_check`)
    not_checked: tuple[str, ...] = ()  # tasks with a best record whose kernel the untuned program does not call
    check_seconds: float = 0.0  # of `seconds`: the check's untuned build and run, and the records' builds
    kernels_checked: int = 0  # kernels run with their task's best record (each task's, every layer's)
    unchecked: str = ""  # why no best record was checked ("" where they were, or with `check=False`)
    seconds: float = 0.0
    check_only: bool = False  # no search and no timing: the folder's records checked on this program's kernels
    recorded: tuple[str, ...] = ()  # tasks with a best record in the folder
    left_out: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per `_LEFT_OUT` list, the recorded tasks
    # it names, earlier calls' entries included: `compile` applies none of their records
    untimed: dict[str, str] = field(default_factory=dict)  # task -> why its default schedule or best record could
    # not be timed (the build's or run's error): a task whose default was not timed is not compared with its record

    @property
    def applied(self) -> tuple[str, ...]:
        """The recorded tasks whose best record `compile` applies."""
        out = {name for names in self.left_out.values() for name in names}
        return tuple(name for name in self.recorded if name not in out)

    @property
    def failed(self) -> int:
        """Candidates of this call that did not build or did not run."""
        return self.build_errors + self.run_errors

    @property
    def failed_share(self) -> float:
        """The failed candidates' share of this call's trials (0 when none ran)."""
        return self.failed / self.trials_run if self.trials_run else 0.0

    def __str__(self) -> str:
        tasks = (f"{len(self.tasks)} tasks ({self.kernels} kernels; a task stands for those that differ only in "
                 f"their constants) for {self.target}")
        if self.check_only:
            out = ", ".join(f"{len(names)} {_LEFT_OUT[name]}" for name, names in self.left_out.items() if names)
            lines = [f"checked the records of {self.work_dir} on {tasks} ({self.seconds:.0f} s): "
                     f"{len(self.recorded)} have a best record ({self.trials_total} trials), of which compile "
                     f"applies {len(self.applied)}{f' (left out: {out})' if out else ''}; the rest keep their "
                     "default schedule"
                     + ("" if self.recorded else ". None of this program's kernel shapes has a record there "
                        "(another batch x seq or architecture?)")]
        else:
            lines = [f"tuning {tasks}: {self.trials_run} trials in this call, {self.trials_total} in {self.work_dir} "
                     f"({self.seconds:.0f} s); {len(self.recorded)} of the tasks "
                     f"{'has' if len(self.recorded) == 1 else 'have'} a best record there",
                     f"failed candidates: {self.failed} ({self.failed_share:.0%}; {self.build_errors} build, "
                     f"{self.run_errors} run errors)"]
        lines += [f"  {n} x {message}" for message, n in sorted(self.errors.items(), key=lambda kv: -kv[1])]
        reasons: dict[str, list[str]] = {}  # one line per reason: BERT-base's 12 Softmax tasks share theirs
        for name, why in self.untunable.items():
            reasons.setdefault(why, []).append(name)
        for why, names in reasons.items():
            lines += [f"not tunable (default schedule): {len(names)} task{'s' * (len(names) > 1)}: {why}",
                      *_listed(names)]
        if self.untried:
            lines.append(f"no trial yet for {len(self.untried)} of {len(self.tasks) - len(self.untunable)} tunable "
                         f"tasks (the heaviest go first, a batch of trials each): more trials reach them")
            lines += _listed(self.untried)
        if self.latency_before_ms is not None and self.latency_after_ms is not None:
            lines.append(f"estimated latency (sum of task latencies): {self.latency_before_ms:.3f} ms untuned, "
                         f"{self.latency_after_ms:.3f} ms tuned")
        if self.slower_than_default:
            lines.append(f"best record slower than the default schedule (compile keeps the default): "
                         f"{', '.join(self.slower_than_default)}")
        if self.records_checked:
            lines.append(f"best records checked against the untuned program's integers: {self.records_checked} "
                         f"(on {self.kernels_checked} kernel{'s' * (self.kernels_checked != 1)}), "
                         f"{len(self.wrong_integers)} differ "
                         f"({self.check_seconds:.0f} s)"
                         + (f"; {len(self.not_checked)} not checked (their kernels are not called: views; "
                            "compile leaves their records out)" if self.not_checked else ""))
        if self.wrong_integers:
            lines += ["best record does not write the untuned program's integers (other integers, or it fails to "
                      "build or run there; compile never applies it):", *_listed(self.wrong_integers)]
        if self.unchecked:
            lines.append(f"best records not checked against the untuned program's integers: {self.unchecked}")
        if self.untimed:
            lines.append("could not be timed (a default schedule that failed leaves its task's record uncompared):")
            lines += [f"  {name}: {why}" for name, why in self.untimed.items()]
        return "\n".join(lines)


def _listed(names: Sequence[str]) -> list[str]:
    """The first `_LISTED` names, one indented line each, and how many more there are."""
    more = [f"  ... and {len(names) - _LISTED} more"] if len(names) > _LISTED else []
    return [f"  {name}" for name in names[:_LISTED]] + more


# ---- where databases live and what their metadata says

def log_name(target: str | TargetSpec) -> str:
    """The folder name of a target's database under `tuning_logs/`: the target's name, with the CPU for the
    x86 host targets (hosts differ between machines) and the arch for a CUDA GPU named by arch."""
    spec = resolve_target(target)
    if spec.name in HOST_TARGETS:
        return f"{spec.name}-{spec.target.attrs.get('mcpu', 'generic')}"
    if spec.name.startswith("cuda"):
        return f"cuda-{spec.target.attrs['arch']}"
    return spec.name


def shipped_database(target: str | TargetSpec) -> Path | None:
    """The database folder that ships for `target` (repo `tuning_logs/`, or the installed package's), if any."""
    name = log_name(target)
    for root in (_REPO_LOGS, _PACKAGE_LOGS):
        if (root / name / META_FILE).is_file():
            return root / name
    return None


def _target_record(spec: TargetSpec) -> dict[str, Any]:
    """How the metadata names a target: user-facing name, the TVM target string, its int8 features."""
    return {"name": spec.name, "target": str(spec.target), "features": list(spec.features)}


def _hardware(spec: TargetSpec, rpc: tuple[str, int, str] | None) -> str:
    """Where the candidates were measured, for the metadata: the RPC device key, or this machine's device."""
    if rpc is not None:
        return f"RPC tracker {rpc[0]}:{rpc[1]}, device key '{rpc[2]}'"
    if spec.is_gpu:
        return tvm.cuda(0).device_name
    return f"{host_cpu_name()}, {physical_cores()} cores ({spec.target.attrs.get('mcpu', 'generic')})"


def _utf8_text(path: Path) -> str:
    """A database file's text, or a TuningLogError naming it where it is not UTF-8 (MetaSchedule writes JSON)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TuningLogError(f"{path} is corrupt: not UTF-8 text (byte {err.start})") from None


def _read_meta(folder: Path) -> dict[str, Any]:
    """The folder's metadata file, or a TuningLogError saying that it is missing or unreadable."""
    path = folder / META_FILE
    if not path.is_file():
        raise TuningLogError(f"{folder} has no {META_FILE}: not a database written by `ibert-tvm tune`")
    try:
        meta = json.loads(_utf8_text(path))
    except json.JSONDecodeError as err:
        raise TuningLogError(f"{path} is corrupt: {err}") from err
    if not (isinstance(meta, dict) and isinstance(meta.get("target"), dict) and "target" in meta["target"]
            and "tvm" in meta):
        raise TuningLogError(f"{path} is corrupt: it lacks the target or the TVM version")
    if not all(isinstance(meta.get(key, {}), dict) for key in _LEFT_OUT):
        raise TuningLogError(f"{path} is corrupt: its {' / '.join(_LEFT_OUT)} lists are not mappings")
    checked = meta.get("checked", {})
    if not (isinstance(checked, dict) and all(
            isinstance(e, dict) and isinstance(e.get("record"), str) and isinstance(e.get("programs"), list)
            and all(isinstance(p, str) for p in e["programs"]) for e in checked.values())):
        raise TuningLogError(f"{path} is corrupt: its checked list does not map workload keys to a record and "
                             "its programs")
    shapes = meta.get("shapes", [])  # [batch, seq] of a model's program; an IRModule's first input's whole shape
    if not (isinstance(shapes, list) and all(isinstance(s, list) and s and all(type(v) is int and v > 0 for v in s)
                                              for s in shapes)):
        raise TuningLogError(f"{path} is corrupt: its shapes are not lists of positive integers")
    return meta


def _check_meta(folder: Path, meta: dict[str, Any], spec: TargetSpec) -> None:
    """Refuse records made for another target or another TVM (their traces and workloads would not apply). The
    targets are compared by `_codegen_fields`, as each record's is: a CUDA target's host, which TVM fills in from
    the machine (its triple), builds no kernel."""
    made_for = meta["target"]
    if _codegen_fields(_json_or_none(made_for["target"])) != _codegen_fields(json.loads(str(spec.target))):
        raise TuningLogError(f"tuning database {folder} was made for target '{made_for.get('name')}' "
                             f"({made_for['target']}), not for '{spec.name}' ({spec.target})")
    made = meta.get("format", 1)
    older = _OLDER_FORMATS.get(made) if isinstance(made, int) else None  # (a list or a mapping cannot be looked up)
    why = "" if made == _FORMAT else older or f"format {made!r}, which this ibert-tvm does not know"
    if not why and meta.get("key_scheme") != key_scheme():
        why = ("its records are filed under workload keys that this ibert-tvm computes otherwise (what a key "
               "masks changed)" if "key_scheme" in meta else "its workload keys' scheme is not recorded")
    if why:
        raise TuningLogError(f"tuning database {folder} was made by another ibert-tvm ({why}): re-tune into a new "
                             "folder")
    if meta["tvm"] != tvm.__version__:
        raise TuningLogError(f"tuning database {folder} was made with TVM {meta['tvm']}, this is TVM "
                             f"{tvm.__version__}: re-tune")


@dataclass(frozen=True)
class _RecordLine:
    """A line of the records file: its text, its number, its workload's index and its mean run time."""

    text: str
    number: int
    workload: int
    secs: float


def _check_lines(folder: Path, spec: TargetSpec) -> tuple[set[str], list[_RecordLine]]:
    """Parse both JSON-lines files, so that a truncated or garbage line is refused rather than skipped, and a
    blank one too (MetaSchedule's reader crashed the process with SIGSEGV on a blank line of the records, and
    named no line for one among the workloads), and a record tuned for another target than `spec`'s (one copied
    in from another database: MetaSchedule would apply it); returns the tensor intrinsics the records' traces
    name, and each record line (its run time `mean_of` its times)."""
    workloads, intrinsics, records = 0, set(), []
    wanted = _codegen_fields(json.loads(str(spec.target)))
    for name in _FILES:
        path = folder / name
        if not path.is_file():
            raise TuningLogError(f"tuning database {folder} is missing {name}")
        for number, line in enumerate(_utf8_text(path).splitlines(), 1):
            if not line.strip():
                raise TuningLogError(f"tuning database {folder} is corrupt: {name} line {number} is blank "
                                     "(MetaSchedule cannot read a blank line: delete it)")
            try:
                row = json.loads(line)
                ok = isinstance(row, list) and len(row) == 2
                ok = ok and (all(isinstance(v, str) for v in row) if name == WORKLOAD_FILE else
                             (type(row[0]) is int and 0 <= row[0] < workloads  # (a bool is an int to isinstance)
                              and isinstance(row[1], list) and len(row[1]) == 4 and _run_secs_ok(row[1][1])))
            except ValueError:  # (JSONDecodeError, and an integer of more digits than Python converts)
                ok = False
            if not ok:
                raise TuningLogError(f"tuning database {folder} is corrupt: {name} line {number} is not a "
                                     f"MetaSchedule {'workload' if name == WORKLOAD_FILE else 'record'}")
            if name == WORKLOAD_FILE and (problem := _workload_problem(row[1])):
                raise TuningLogError(f"tuning database {folder} is corrupt: {name} line {number}: {problem}")
            if name == RECORD_FILE and (fields := _codegen_fields(row[1][2])) != wanted:
                made_for = json.dumps({k: v for k, v in fields.items() if v is not None} if fields else row[1][2])
                raise TuningLogError(f"tuning database {folder} is corrupt: {name} line {number} is a record for "
                                     f"target {made_for[:200]}, not for {spec.name} ({spec.target})")
            workloads += name == WORKLOAD_FILE
            if name == RECORD_FILE:
                intrinsics |= _tensorized_with(row[1][0])
                records.append(_RecordLine(line, number, row[0], mean_of(row[1][1])))
    return intrinsics, records


def _workload_problem(encoded: str) -> str | None:
    """What in a workload's module TVM's reader would crash on (SIGSEGV: `ir_graph_check.graph_problem`), or
    None."""
    try:
        graph = workload_graph(encoded)
    except ValueError:  # (binascii.Error and JSONDecodeError are ValueErrors)
        return "its module is not an IR graph in base64"
    return None if (problem := graph_problem(graph)) is None else f"its module's {problem}"


def _json_or_none(text: str) -> Any:
    """`text` parsed as JSON, or None where it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def _codegen_fields(target: Any) -> dict[str, Any] | None:
    """What of a target (as exported to JSON) decides the kernels built for it: its kind, CPU, features, triple
    and GPU arch; None where it is not a target object. The rest may differ between records of one target
    (`num-cores` is the tuning machine's, `_tuning_target`; a CUDA target's host builds no kernel)."""
    return {key: target.get(key) for key in ("kind", "mcpu", "mattr", "mtriple", "arch")} \
        if isinstance(target, dict) else None


def _run_secs_ok(secs: Any) -> bool:
    """Whether a JSON record's run times are what MetaSchedule writes: null, or a list of times in seconds from 0
    to FAILED_SECS, a failed candidate's (NaN, inf and integers past a float fail the comparison)."""
    return secs is None or isinstance(secs, list) and all(
        type(s) in (int, float) and 0 <= s <= FAILED_SECS for s in secs)


def _best_lines(records: list[_RecordLine]) -> list[_RecordLine]:
    """The record lines that may be their workload's best: those whose mean run time is within a millionth of its
    least (ties and near-ties: `SharedDatabase` picks among them as it would among all, the same record), failed
    ones never. `compile` loads only these: MetaSchedule replays every record's trace as it reads it (75 s for
    4,400 records of BERT-base), and a build applies one record per kernel shape."""
    least: dict[int, float] = {}
    for record in records:
        least[record.workload] = min(record.secs, least.get(record.workload, record.secs))
    return [r for r in records if r.secs < FAILED_SECS and r.secs <= least[r.workload] * (1 + 1e-6)]


def _tensorized_with(trace: Any) -> set[str]:
    """The intrinsic names of a JSON trace's Tensorize instructions ([kind, inputs, [intrinsic, ...], outputs])."""
    insts = trace[0] if isinstance(trace, list) and trace and isinstance(trace[0], list) else []
    return {inst[2][0] for inst in insts if isinstance(inst, list) and len(inst) == 4 and inst[0] == "Tensorize"
            and isinstance(inst[2], list) and inst[2] and isinstance(inst[2][0], str)}


def _register_intrinsics(folder: Path, spec: TargetSpec, names: set[str]) -> None:
    """Register the intrinsics the records tensorize with (applying a trace looks them up by name): the
    project's come with the family's schedules, TVM's from its module for the family (imported only when
    needed: TVM's CUDA one takes a minute)."""
    from tvm.s_tir import TensorIntrin

    schedules_for(spec.target)
    missing = {n for n in names if TensorIntrin.get(n, allow_missing=True) is None}
    if missing:
        with _family_intrinsics_only(spec):
            missing = {n for n in missing if TensorIntrin.get(n, allow_missing=True) is None}
    if missing:
        raise TuningLogError(f"tuning database {folder} tensorizes with {', '.join(sorted(missing))}, which "
                             f"neither schedules/{spec.family}.py nor TVM registers")


def open_database(path: str | Path, target: str | TargetSpec, *, keep_slower: bool = False) -> SharedDatabase:
    """The database in folder `path` for `target`; a TuningLogError (one line) if it was made for another
    target or TVM version, misses a file, or has a corrupt line.

    Records of the kernels whose best candidate measured slower than their default schedule, wrote other
    integers than the untuned program, or whose kernel the program runs as a view (listed by `tune` in the
    metadata) are left out, so that the database
    applies only records that beat the default as `tune` measured them and passed its check; of the others,
    only each kernel shape's best candidates are loaded (`_best_lines`). `keep_slower=True` (tuning itself)
    returns the database as it is on disk, every record loaded.

    A folder whose files are not those that `tune` wrote (the digests in its metadata) is read in a child process
    first (`record_replay`): a line that kills TVM's reader there is refused, by its number."""
    spec, folder = resolve_target(target), Path(path)
    if not folder.is_dir():
        check_work_dir(folder, writing=False)
        raise TuningLogError(f"no tuning database at {folder} (folder not found)")
    meta = _read_meta(folder)
    _check_meta(folder, meta, spec)
    intrinsics, records = _check_lines(folder, spec)
    _register_intrinsics(folder, spec, intrinsics)
    read = _Reading(folder, spec, intrinsics, meta.get("files") != files_digest(folder, _FILES))
    if keep_slower:
        return SharedDatabase(_json_database(folder, read))
    left_out = {key for name in _LEFT_OUT for key in meta.get(name, {})}
    best = _best_lines(records)
    with tempfile.TemporaryDirectory(prefix="ibert-tvm-records-") as tmp:
        shutil.copyfile(folder / WORKLOAD_FILE, Path(tmp) / WORKLOAD_FILE)
        (Path(tmp) / RECORD_FILE).write_text("".join(f"{r.text}\n" for r in best), encoding="utf-8")
        return SharedDatabase(_without_workloads(_json_database(Path(tmp), read, [r.number for r in best]), left_out))


@dataclass(frozen=True)
class _Reading:
    """How `open_database` reads a folder: its target and the intrinsics its records name, and whether TVM's
    reader is first run in a child process (`record_replay`), as for a folder whose files are not those that
    `tune` wrote (their digests in the metadata)."""

    folder: Path
    spec: TargetSpec
    intrinsics: set[str]
    in_a_child_first: bool


def _json_database(files: Path, read: _Reading, numbers: list[int] | None = None) -> ms.database.JSONDatabase:
    """MetaSchedule's database of the two files in `files`, or a TuningLogError naming the folder where TVM cannot
    read a line (`numbers`: the folder's line number of each record line in `files`, where they differ)."""
    folder = read.folder
    if read.in_a_child_first and (
            problem := replay_problem(files, _FILES, read.spec, read.intrinsics, str(folder), numbers)):
        raise TuningLogError(f"tuning database {folder} is corrupt: {problem}")
    try:
        return ms.database.JSONDatabase(work_dir=str(files), allow_missing=False)
    except (RuntimeError, ValueError, TypeError, LookupError, AttributeError) as err:  # what TVM raises for a line
        # it cannot parse (a KeyError for an IR node without its fields, an AttributeError for an unknown operator)
        raise TuningLogError(f"tuning database {folder} is corrupt: {_one_line(str(err) or type(err).__name__)}") \
            from err


def _without_workloads(database: ms.database.Database, keys: set[str]) -> ms.database.MemoryDatabase:
    """An in-memory copy of `database` without the records of the workloads whose key is in `keys`."""
    kept = ms.database.MemoryDatabase()
    for record in database.get_all_tuning_records():
        if workload_key(record.workload.mod) not in keys:
            workload = kept.commit_workload(record.workload.mod)
            kept.commit_tuning_record(ms.database.TuningRecord(record.trace, workload, record.run_secs,
                                                               record.target, record.args_info))
    return kept


def _write_meta(folder: Path, spec: TargetSpec, shapes: list[list[int]], trials: int, hardware: str,
                decided: set[str] = frozenset(), left_out: dict[str, dict[str, str]] | None = None,
                passed: _Passed | None = None) -> dict[str, Any]:
    """Write (or update after a resumed call) the metadata file beside the two JSON files, and return it.
    `left_out` names, for lists of `_LEFT_OUT`, the kernel shapes (workload key -> task name) whose best record
    loses to the default schedule, does not write the untuned integers or is never called, among the shapes
    `decided` (this call's). Their `default_wins` entries replace the old ones for those shapes; those of other shapes
    stay. The other lists only grow: a record that wrote other integers for one model's kernels stays out even
    when another model or calibration tuned into the folder finds it right for its own (its check never ran
    the first's).
    `passed` adds the records that this call's check found right to `checked` (`_with_passed`)."""
    old = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
    lists = {}
    for name in _LEFT_OUT:
        lists[name] = old.get(name, {})
        if left_out and name in left_out:
            kept = (lists[name] if name != "default_wins"
                    else {k: v for k, v in lists[name].items() if k not in decided})
            lists[name] = kept | left_out[name]
    meta = {"target": _target_record(spec), "tvm": tvm.__version__,
            "apache_tvm_ffi": importlib.metadata.version("apache-tvm-ffi"),
            "shapes": sorted({tuple(s) for s in old.get("shapes", []) + shapes}),
            "trials": trials, "hardware": hardware, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "format": _FORMAT, "key_scheme": key_scheme(), **lists,
            "checked": _with_passed(old.get("checked", {}), passed)}
    return _save_meta(folder, meta)


def _add_check(folder: Path, found: dict[str, dict[str, str]], passed: _Passed) -> dict[str, Any]:
    """Add a check's findings to the folder's metadata, changing nothing else (a check-only call tuned
    nothing, so the trials, shapes, hardware and date stay those of the tuning): kernel shapes (workload key
    -> task name) to the lists of `found` (`wrong_integers`, `not_called`), the records found right to
    `checked`; return the metadata."""
    meta = _read_meta(folder)
    lists = {name: meta.get(name, {}) | keys for name, keys in found.items()}
    return _save_meta(folder, {**meta, **lists, "checked": _with_passed(meta.get("checked", {}), passed)})


@dataclass(frozen=True)
class _Passed:
    """Best records that a check found right (workload key -> `record_digest`) on one program (its
    `record_check.function_fingerprint`)."""

    records: dict[str, str]
    program: str


def _passed(found: dict[str, tuple[ms.ExtractedTask, tuple[ms.database.TuningRecord, tvm.IRModule]]],
            checked: _Checked, keys: dict[str, str], mod: tvm.IRModule) -> _Passed:
    """The best records (`found`: task name -> task, (record, scheduled kernel)) that the check ran and found
    right, on program `mod`'s `main`."""
    return _Passed({keys[name]: record_digest(record) for name, (_, (record, _)) in found.items()
                    if name not in checked.wrong and name not in checked.not_called},
                   record_check.function_fingerprint(mod, "main"))


def _with_passed(checked: dict[str, Any], passed: _Passed | None) -> dict[str, Any]:
    """`checked` (workload key -> {"record": digest, "programs": [fingerprint, ...]}) with `passed` added: a
    key's programs grow while its best record stays the one they were checked with, and restart with the
    program that checked a new one."""
    out = dict(checked)
    for key, digest in (passed.records.items() if passed else ()):
        old = out.get(key, {})
        programs = set(old.get("programs", [])) if old.get("record") == digest else set()
        out[key] = {"record": digest, "programs": sorted(programs | {passed.program})}
    return out


def unchecked_records(folder: str | Path, applied: dict[str, str], programs: set[str]) -> set[str]:
    """The workload keys among `applied` (key -> digest of the record a build applied) whose record the
    folder's metadata does not list as checked on any of `programs` (`record_check.function_fingerprint`s):
    tuned or checked on another model, calibration or shape only, or tuned again since."""
    checked = _read_meta(Path(folder)).get("checked", {})
    return {key for key, digest in applied.items()
            if checked.get(key, {}).get("record") != digest or not programs & set(checked[key]["programs"])}


def tuned_shapes(folder: str | Path) -> set[tuple[int, int]]:
    """The (batch, seq) shapes tuned into the folder (its metadata's `shapes`)."""
    return {tuple(shape) for shape in _read_meta(Path(folder)).get("shapes", []) if len(shape) == 2}


def _save_meta(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write the metadata with the digests of the files as they are now (`tune` wrote or read them): a folder
    whose files match is not read in a child process first (`_Reading`)."""
    meta = {**meta, "files": files_digest(folder, _FILES)}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def check_work_dir(folder: str | Path, writing: bool = True) -> None:
    """A TuningLogError where the tuning database's folder is a file or, where it is to be written (tuning), one
    that cannot be made or written."""
    if Path(folder).is_file():
        raise TuningLogError(f"{folder} is a file, not a tuning database folder")
    if writing and (problem := folder_problem(folder)):
        raise TuningLogError(problem)


def check_not_being_tuned(folder: str | Path) -> None:
    """A TuningLogError where a tune holds the folder's lock now (the CLI asks before calibrating); makes nothing."""
    if (Path(folder) / LOCK_FILE).is_file():
        with _locked(Path(folder)):
            pass


@contextlib.contextmanager
def _sole_writer(folder: Path) -> Iterator[None]:
    """Hold the folder's lock file (made with the folder where there is none) for the block, or a TuningLogError
    where another process holds it: MetaSchedule's JSON database numbers workloads as it read them at its start,
    so two tunes appending to one folder file each other's records under the wrong workloads, without an error."""
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        yield


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """The folder's lock file held exclusively for the block (made if missing), or a TuningLogError naming the
    folder where another process holds it."""
    with open(folder / LOCK_FILE, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TuningLogError(f"another ibert-tvm tune is writing {folder}: wait for it to finish, or tune into "
                                 "another --work-dir") from None
        yield


def _database_for_tuning(folder: Path, spec: TargetSpec) -> SharedDatabase:
    """The work_dir's database: the existing one, checked as `open_database` does, or a new empty one."""
    if (folder / WORKLOAD_FILE).exists() or (folder / RECORD_FILE).exists() or (folder / META_FILE).exists():
        return open_database(folder, spec, keep_slower=True)
    folder.mkdir(parents=True, exist_ok=True)
    return SharedDatabase(ms.database.JSONDatabase(work_dir=str(folder), allow_missing=True))


# ---- what is measured and how

def _program(model: QuantizedModel | tvm.IRModule, batch: int, seq: int) -> tvm.IRModule:
    """The integer program: an IRModule as given, or the model's program at (batch, seq)."""
    return model if isinstance(model, tvm.IRModule) else model.program(batch, seq)


def _shapes(mod: tvm.IRModule) -> list[list[int]]:
    """The (batch, seq) of each Relax function of the program (from its first parameter, the token ids)."""
    return [[int(d) for d in f.params[0].ty.shape] for _, f in mod.functions_items()
            if isinstance(f, relax.Function) and f.params]


def _tuning_target(target: Target) -> Target:
    """`target` with `num-cores`, which MetaSchedule's CPU rules require (the local count: boards behind RPC
    should name theirs in the target)."""
    if target.kind.name != "llvm" or "num-cores" in target.attrs:
        return target
    return Target({**target.export(), "num-cores": physical_cores()})


def _f_build() -> Callable[[tvm.IRModule, Target, Any], tvm.runtime.Module]:
    """MetaSchedule's default build, through the TIR pipeline `compile` uses (`gemm_prefetch.TIR_PIPELINE`:
    the accumulators it names on the stack), so that candidates and default schedules are measured as the
    model will run them; TVM's default pipeline takes those accumulators from the workspace pool, which made
    every default GEMM look slower than in the model and its tuned records look like wins. It skips
    MetaSchedule's `import tvm.s_tir.tensor_intrin` (about a minute per build worker, and the pool is new for
    every batch): nested, so cloudpickle ships it by value, and the candidates arrive already tensorized."""

    def build(mod: tvm.IRModule, target: Target, _params: Any) -> tvm.runtime.Module:
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        from ibert_tvm.schedules.gemm_prefetch import TIR_PIPELINE  # registers it in this worker

        return tvm.tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target,
                              pipeline=TIR_PIPELINE)

    return build


def _f_export(cross_compiler: str) -> Callable[[tvm.runtime.Module], str]:
    """Export a candidate as a shared library linked here by `cross_compiler` (a board needs no compiler)."""

    def export(mod: tvm.runtime.Module) -> str:
        import tempfile

        from tvm.support import cc

        path = str(Path(tempfile.mkdtemp()) / "tvm_tmp_mod.so")
        mod.export_library(path, fcompile=cc.cross_compiler(cross_compiler))
        return path

    return export


def _builder(spec: TargetSpec) -> ms.builder.LocalBuilder:
    """Candidates are built here, in a process pool; cross-compiled targets are linked here too, and CUDA
    candidates are compiled to cubins with nvcc as `compile` does (no GPU needed to build)."""
    export = _f_export(spec.cross_compiler) if spec.cross_compiler else None
    f_build = schedules_for(spec.target).build_candidate if spec.family == "cuda" else _f_build()
    return ms.builder.LocalBuilder(f_build=f_build, f_export=export, timeout_sec=_BUILD_TIMEOUT_S)


def _evaluator(spec: TargetSpec) -> ms.runner.EvaluatorConfig:
    """How a candidate is timed. On a CPU each of 10 runs starts with every argument but the first (the
    activations, which the previous kernel leaves in cache) flushed from the caches, as in the model, where
    a kernel's weights arrive cold (BERT-base's 85 MB pass the cache between two calls of a kernel);
    MetaSchedule's default times back-to-back runs with the weights hot. GPUs: the default."""
    if spec.is_gpu:
        return ms.runner.EvaluatorConfig()
    return ms.runner.EvaluatorConfig(number=1, repeat=10, min_repeat_ms=0, enable_cpu_cache_flush=True)


def _f_run_evaluator(warmup_ms: int = _WARMUP_MS, rpc: bool = False) -> Callable[..., list[float]]:
    """MetaSchedule's evaluator after `warmup_ms` of untimed calls (for an RPC runner, with its session as
    the first argument). A fresh measuring process runs its first kernels slowly for about 100 ms (a
    BERT-base QKV kernel: 477 us a call over its first 30 calls, 230-260 after), and the one warm-up call of
    MetaSchedule's own evaluator did not cover it: each kernel's default schedule, measured first, came out
    slower than it runs, so records that lose in the model were applied. Nested, so that cloudpickle ships it
    by value to the measuring process."""

    def run_evaluator(rt_mod: Any, device: Any, evaluator_config: Any, repeated_args: list) -> list[float]:
        from tvm.s_tir.meta_schedule.runner.utils import run_evaluator_common

        rt_mod.time_evaluator(rt_mod.entry_name, dev=device, number=1, repeat=1,
                              min_repeat_ms=warmup_ms)(*repeated_args[0])
        return run_evaluator_common(rt_mod, device, evaluator_config, repeated_args)

    def run_evaluator_rpc(_session: Any, *args: Any) -> list[float]:
        return run_evaluator(*args)

    return run_evaluator_rpc if rpc else run_evaluator


def check_tracker(rpc: tuple[str, int, str]) -> None:
    """A ValueError within seconds where nothing answers at the RPC tracker's address (TVM's client retries for
    a minute, then raises a message of several lines), or where what answers does not return a TVM tracker's
    handshake (another service at that port: TVM's client failed after the calibration and the folder were made,
    its message's first line, which the CLI shows, naming neither the address nor the cause)."""
    host, port, _key = rpc
    magic = struct.pack("<i", RPC_TRACKER_MAGIC)
    try:
        sock = socket.create_connection((host, int(port)), timeout=_TRACKER_TIMEOUT_S)
    except OSError as err:
        raise ValueError(f"cannot reach the RPC tracker at {host}:{port} ({err.strerror or err})") from None
    reply = b""
    with sock:
        try:
            sock.sendall(magic)
            while len(reply) < len(magic) and (chunk := sock.recv(len(magic) - len(reply))):
                reply += chunk
        except OSError:  # (a timeout: it accepted, and said nothing)
            pass
    if reply != magic:
        raise ValueError(f"{host}:{port} answers, but not as a TVM RPC tracker (it did not return the tracker's "
                         f"handshake within {_TRACKER_TIMEOUT_S:g} s): check the address")


def check_measured_here(target: str | TargetSpec, rpc: tuple[str, int, str] | None) -> None:
    """A ValueError where `tune` would measure on this machine (no RPC tracker) and it cannot run the target's
    code: an aarch64 target on x86 had every candidate fail to load, each failure listed on a line of its own,
    and a CUDA target without a GPU stopped with TVM's traceback after writing a folder that later tunes refused."""
    spec = resolve_target(target)
    if rpc is None and (why := why_not_runnable_here(spec)):
        raise ValueError(f"cannot tune for '{spec.name}' on this machine ({why}): candidates are measured where the "
                         "target runs; measure on its devices through a TVM RPC tracker (--rpc HOST:PORT:KEY)")


def _runner(spec: TargetSpec, rpc: tuple[str, int, str] | None) -> ms.runner.Runner:
    """Measure on this machine (after a warm-up), or on the devices registered with a TVM RPC tracker."""
    if rpc is None:
        return ms.runner.LocalRunner(timeout_sec=_RUN_TIMEOUT_S, evaluator_config=_evaluator(spec),
                                     f_run_evaluator=_f_run_evaluator())
    host, port, key = rpc
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=key,
                                 session_timeout_sec=int(_RUN_TIMEOUT_S))
    servers = config.count_num_servers(allow_missing=False)  # raises naming tracker and key when none
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=_evaluator(spec),
                               f_run_evaluator=_f_run_evaluator(rpc=True), max_workers=servers)


def _space(spec: TargetSpec) -> dict[str, Any]:
    """The family's space as TuneContext arguments: `space` (and `strategy`) as given, or rules, postprocs
    and mutators assembled into MetaSchedule's post-order-apply space."""
    given = dict(schedules_for(spec.target).tuning_space(spec.target))
    unknown = set(given) - {"space", "strategy", "sch_rules", "postprocs", "mutators"}
    if unknown:
        raise ValueError(f"schedules/{spec.family}.tuning_space returned unknown keys: {', '.join(sorted(unknown))}")
    rules = {k: given.pop(k) for k in ("sch_rules", "postprocs", "mutators") if k in given}
    if rules:
        if "space" in given:
            raise ValueError(f"schedules/{spec.family}.tuning_space gives both a space object and rules")
        given["space"] = ms.space_generator.PostOrderApply(
            sch_rules=rules.get("sch_rules", "from-target"), postprocs=rules.get("postprocs", "from-target"),
            mutator_probs=rules.get("mutators", "from-target"))
    return given


# ---- trial accounting over calls

def _records_per_task(database: SharedDatabase, tasks: list[ms.ExtractedTask]) -> dict[str, list[float]]:
    """Task name -> the mean run time (s) of each of its records in `database` (failures at FAILED_SECS)."""
    return {t.task_name: [mean_secs(r) for r in database.records_of(t.dispatched[0])] for t in tasks}


@derived_object
class _CappedSearch(ms.search_strategy.PySearchStrategy):
    """A task's search strategy whose trial cap is lowered by the records it already has (resumed calls)."""

    def __init__(self, inner: ms.search_strategy.SearchStrategy, done: int) -> None:
        self.inner, self.done = inner, done

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        self.inner._initialize_with_tune_context(context)  # noqa: SLF001 (MetaSchedule's own protocol)

    def pre_tuning(self, max_trials: int, num_trials_per_iter: int, design_spaces: list, database: Any = None,
                   cost_model: Any = None) -> None:
        self.inner.pre_tuning(max_trials - self.done, num_trials_per_iter, design_spaces, database, cost_model)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self) -> list | None:
        return self.inner.generate_measure_candidates()

    def notify_runner_results(self, measure_candidates: list, results: list) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self) -> ms.search_strategy.SearchStrategy:
        return _CappedSearch(self.inner.clone(), self.done)


#: The module of `tvm.s_tir.tensor_intrin` with TVM's own intrinsics for each family's default spaces.
_FAMILY_INTRINSICS = {"x86": "x86", "arm": "arm_cpu", "cuda": "cuda"}


@contextlib.contextmanager
def _family_intrinsics_only(spec: TargetSpec) -> Iterator[None]:
    """Let TuneContext's `import tvm.s_tir.tensor_intrin` (every target's intrinsics: 1 min of CPU, 220 s on
    this loaded 2-core machine) import only the family's module (1 s): a stand-in package with the real path
    answers for the package while the contexts are made. Later full imports of the package still work."""
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        yield
        return
    stand_in = types.ModuleType(name)
    stand_in.__path__ = list(importlib.util.find_spec(name).submodule_search_locations)
    sys.modules[name] = stand_in
    try:
        importlib.import_module(f"{name}.{_FAMILY_INTRINSICS[spec.family]}")
        yield
    finally:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]


def _weighted_flops(task: ms.ExtractedTask, context: ms.TuneContext) -> float:
    """The task's FLOPs x weight (the heaviest are tuned first); raises RuntimeError where MetaSchedule's task
    scheduler would die on the task and stop the whole run: a FLOP estimate that fails (it has no rule for
    `Let`, which no CPU kernel holds any more), or a space that cannot be generated (a rule failing on the
    blocks, as on int_softmax)."""
    from tvm.s_tir.analysis import estimate_tir_flops

    flops = estimate_tir_flops(task.dispatched[0])
    context.generate_design_space()
    return flops * task.weight


def _evolutionary(per_iter: int) -> ms.search_strategy.EvolutionarySearch:
    """MetaSchedule's evolutionary search with its population scaled to the batch as its defaults are (512
    for 64 candidates a batch): a batch of 4 then costs seconds of search, not minutes."""
    population = min(512, 8 * per_iter)
    return ms.search_strategy.EvolutionarySearch(population_size=population,
                                                 init_min_unmeasured=min(50, population))


def _contexts(tasks: list[ms.ExtractedTask], work_dir: Path, spec: TargetSpec, done: dict[str, int],
              cap: int | None, per_iter: int) -> tuple[list[tuple[ms.ExtractedTask, ms.TuneContext]], dict[str, str]]:
    """(task, TuneContext) for each task MetaSchedule can tune, heaviest first, and why each other task
    cannot be. As MetaSchedule's `extracted_tasks_to_tune_contexts`, with a strategy whose cap counts earlier
    records where a per-task cap is given, and the thread count given rather than asked of the target."""
    from tvm.s_tir.meta_schedule.utils import fork_seed

    space = _space(spec)
    loggers = _task_loggers(work_dir, [t.task_name for t in tasks])
    tunable, untunable = [], {}
    with _family_intrinsics_only(spec):
        for task, logger, seed in zip(tasks, loggers, fork_seed(None, n=len(tasks))):
            strategy = space.get("strategy") or _evolutionary(per_iter)
            if isinstance(strategy, str):
                strategy = ms.search_strategy.SearchStrategy.create(strategy)
            if cap is not None and done[task.task_name]:
                strategy = _CappedSearch(strategy, done[task.task_name])
            context = ms.TuneContext(mod=task.dispatched[0], target=task.target,
                                     space_generator=space.get("space", "post-order-apply"), search_strategy=strategy,
                                     task_name=task.task_name, logger=logger, rand_state=seed,
                                     num_threads=physical_cores()).clone()
            try:
                tunable.append((_weighted_flops(task, context), task, context))
            except RuntimeError as err:  # tvm.error.InternalError, ScheduleError
                why = _one_line(str(err)).removeprefix("Error message: ")  # a ScheduleError's own heading
                untunable[task.task_name] = f"MetaSchedule cannot set it up: {why}"
    return [(task, context) for _, task, context in sorted(tunable, key=lambda item: -item[0])], untunable


# ---- progress and outcome

@dataclass
class _Tally:
    """What the measure callback saw: trials, failures by message, each task's best latency."""

    trials: int = 0
    build_errors: int = 0
    run_errors: int = 0
    errors: Counter = field(default_factory=Counter)
    best: dict[str, float] = field(default_factory=dict)  # task -> seconds


def _one_line(message: str) -> str:
    """The line of a MetaSchedule error message (often a whole traceback) that says what went wrong, cut after
    its last whole sentence within 200 characters where that keeps at least half of them (a ScheduleError goes
    on to list IR objects), else at 199 characters and an ellipsis."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    said = [ln for ln in lines if "Error" in ln.split(":", 1)[0] or "Check failed" in ln]
    line = (said or lines or ["(no message)"])[-1]
    if len(line) <= 200:
        return line
    end = line.rfind(". ", 0, 201)
    return line[:end + 1] if end >= 100 else line[:199] + "…"


@derived_object
class _Progress(ms.measure_callback.PyMeasureCallback):
    """Counts each measured batch into the tally and moves the progress bar, which shows the estimated
    latency of the program with each task's best candidate so far (untuned tasks at their default)."""

    def __init__(self, tally: _Tally, bar: Any, estimate: Callable[[], float | None]) -> None:
        self.tally, self.bar, self.estimate = tally, bar, estimate

    def apply(self, task_scheduler: Any, task_id: int, measure_candidates: list, builder_results: list,
              runner_results: list) -> None:
        name = task_scheduler.tasks_[task_id].ctx.task_name
        for built, ran in zip(builder_results, runner_results):
            if built.error_msg:
                self.tally.build_errors += 1
                self.tally.errors["build: " + _one_line(built.error_msg)] += 1
            elif ran.error_msg:
                self.tally.run_errors += 1
                self.tally.errors["run: " + _one_line(ran.error_msg)] += 1
            else:
                secs = sum(float(s) for s in ran.run_secs) / len(ran.run_secs)
                self.tally.best[name] = min(secs, self.tally.best.get(name, math.inf))
        self.tally.trials += len(measure_candidates)
        estimate = self.estimate()
        self.bar.set_postfix_str(("" if estimate is None else f"est {estimate:.3f} ms, ")
                                 + f"failed {self.tally.build_errors + self.tally.run_errors}")
        self.bar.update(len(measure_candidates))


@dataclass(frozen=True)
class _Run:
    """Where one `tune` call measures and records: target, work dir, database, builder and runner."""

    spec: TargetSpec
    folder: Path
    database: ms.database.Database
    builder: ms.builder.Builder
    runner: ms.runner.Runner
    untimed: dict[str, str] = field(default_factory=dict)  # task -> why a kernel of it did not build or run (`_measure`)


def _measure(run: _Run, kernels: list[tuple[ms.ExtractedTask, tvm.IRModule]]) -> list[float | None]:
    """The run time (s) of each scheduled kernel, built and timed in one batch as the candidates are; None
    where it did not build or run (why, in `run.untimed` under its task's name)."""
    built = run.builder.build([ms.builder.BuilderInput(m, t.target) for t, m in kernels])
    device = "cuda" if run.spec.is_gpu else "cpu"
    ok = [i for i, b in enumerate(built) if not b.error_msg]
    for (task, _), b in zip(kernels, built):
        if b.error_msg:
            run.untimed[task.task_name] = "build: " + _one_line(b.error_msg)
    futures = run.runner.run([ms.runner.RunnerInput(built[i].artifact_path, device,
                                                    ms.arg_info.ArgInfo.from_prim_func(kernels[i][1]["main"]))
                              for i in ok])
    out: list[float | None] = [None] * len(kernels)
    for i, future in zip(ok, futures):
        result = future.result()
        if not result.error_msg:
            out[i] = sum(float(s) for s in result.run_secs) / len(result.run_secs)
        else:
            run.untimed[kernels[i][0].task_name] = "run: " + _one_line(result.error_msg)
    return out


def _default_latencies(run: _Run, tasks: list[ms.ExtractedTask]) -> dict[str, float]:
    """Each task's run time (s) under the family's default schedule, measured as the candidates are (one
    build and one run per task: what `compile` gives a task that has no record)."""
    family = schedules_for(run.spec.target)
    secs = _measure(run, [(t, family.apply_default_schedule(t.dispatched[0], run.spec.target)) for t in tasks])
    return {t.task_name: s for t, s in zip(tasks, secs) if s is not None}


def _best(database: SharedDatabase, mod: tvm.IRModule, target: Target
          ) -> tuple[ms.database.TuningRecord, tvm.IRModule] | None:
    """The best measured record of kernel `mod`'s key and `mod` scheduled by it, as `compile` schedules it;
    None without one or where its trace does not apply."""
    return database.query_scheduled(mod, target, "main")


def _head_to_head(run: _Run, best: dict[str, tuple[ms.ExtractedTask, tvm.IRModule]]
                  ) -> dict[str, tuple[float, float]]:
    """(default, best record) run times (s) of each task in `best` (name -> task, its kernel scheduled by its
    best record), both measured again in one batch. A record is the best of many noisy candidates while the
    default was measured once, before the search: compared only here, a record wins a task only by beating
    the default measured beside it. A record that does not build or run counts as losing (infinite time)."""
    family = schedules_for(run.spec.target)
    kernels = [kernel for task, scheduled in best.values()
               for kernel in ((task, family.apply_default_schedule(task.dispatched[0], run.spec.target)),
                              (task, scheduled))]
    secs = _measure(run, kernels)
    return {name: (d, math.inf if r is None else r) for name, d, r in zip(best, secs[0::2], secs[1::2])
            if d is not None}


def _runs_elsewhere(spec: TargetSpec, rpc: tuple[str, int, str] | None) -> str:
    """Why the target's kernels do not run on this machine ("" where they do): RPC, cross-compiled, or a CPU
    or GPU this machine lacks."""
    if rpc is not None or spec.cross_compiler is not None:
        return "the target runs elsewhere (RPC or cross-compiled), and the untuned program runs here only"
    return why_not_runnable_here(spec)


def database_to_check(work_dir: str | Path, target: str | TargetSpec, rpc: tuple[str, int, str] | None = None,
                      *, every_record: bool = True) -> SharedDatabase:
    """The database that `tune(..., check_only=True)` checks: a TuningLogError where `work_dir` holds none
    usable for `target`, a ValueError where the records cannot run here. `every_record=False` reads the records
    as `compile` does (`open_database`: each kernel shape's best), in seconds however many the folder holds:
    the CLI's check before calibrating, after which `tune` reads them all (and refuses there a slower record
    whose trace TVM cannot read)."""
    spec, folder = resolve_target(target), Path(work_dir)
    if why := _runs_elsewhere(spec, rpc):
        raise ValueError(f"cannot check the records of {folder}: {why}")
    return open_database(folder, spec, keep_slower=every_record)


def _check_plan(spec: TargetSpec, rpc: tuple[str, int, str] | None, mod: tvm.IRModule,
                inputs: Sequence[np.ndarray] | None) -> str:
    """Why `tune` cannot check the best records against the untuned program here ("" where it can); a
    ValueError for `check_inputs` that do not fit the program's `main`."""
    if why := _runs_elsewhere(spec, rpc):
        return why
    if "main" not in mod:
        return "the program has no `main` function to run"
    params = [p.ty for p in mod["main"].params]
    if inputs is None:
        return "no inputs for the program (an IRModule with inputs other than int8 / uint8 / int16): pass check_inputs"
    if len(inputs) != len(params):
        raise ValueError(f"check_inputs holds {len(inputs)} arrays, the program's main takes {len(params)}")
    for i, (array, ty) in enumerate(zip(inputs, params)):
        want = ([int(d) for d in ty.shape.values], str(ty.dtype))
        if (list(np.shape(array)), str(np.asarray(array).dtype)) != tuple(want):
            raise ValueError(f"check_inputs[{i}] is {np.asarray(array).dtype} {list(np.shape(array))}, the program's "
                             f"main takes {want[1]} {want[0]}")
    return ""


@dataclass(frozen=True)
class _Checked:
    """What `_check_records` found: tasks whose best record does not write the untuned integers, the records
    compared, tasks with a record whose kernel the run does not call (a reshape runs as a view), and why
    nothing could be checked ("" where the untuned program ran)."""

    wrong: tuple[str, ...] = ()
    compared: int = 0
    not_called: tuple[str, ...] = ()
    failed: str = ""
    seconds: float = 0.0  # the untuned build, its run and the records' builds
    kernels: int = 0  # kernels run with a record (a task's record schedules every kernel of its key)


def _check_records(spec: TargetSpec, best: dict[str, ms.ExtractedTask], database: SharedDatabase,
                   mod: tvm.IRModule, tunable: tvm.IRModule, inputs: Sequence[np.ndarray], integer_only: bool = True
                   ) -> _Checked:
    """Run the best record of each task in `best` (name -> task) on the arguments that the untuned program
    passed each of the task's kernels for `inputs` (`record_check`; every layer's, as the record schedules
    them all): it must write the same integers. A record that fails to build or run there counts as wrong too
    (`compile` would fail on it)."""
    if not best:
        return _Checked()
    started = time.monotonic()
    by_key = {workload_key(t.dispatched[0]): name for name, t in best.items()}
    kernels = {gv.name_hint: kernel_module(f) for gv, f in tunable.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc)}
    symbols = {symbol: name for symbol, kernel in kernels.items() if (name := by_key.get(workload_key(kernel)))}
    device = tvm.cuda(0) if spec.is_gpu else tvm.cpu(0)
    build, wrong, compared, faults = _f_build(), [], Counter(), []

    def check(symbol: str, call: record_check.KernelCall) -> None:
        name = symbols[symbol]
        compared[name] += 1
        try:
            found = _best(database, kernels[symbol], best[name].target)
            same = found is not None and record_check.writes_the_same(
                build(found[1], best[name].target, None), call, device)
        except (RuntimeError, ValueError):  # TVM's errors: the record does not build or run
            same = False
        # A fault of ours is raised after the run: from inside the VM's callback it would come back as a
        # RuntimeError, read as the untuned program failing (and the records left unchecked).
        except Exception as err:  # noqa: BLE001
            faults.append(err)
            return
        if not same and name not in wrong:
            wrong.append(name)

    try:
        record_check.visit_kernel_calls(mod, spec.target, device, inputs, set(symbols), check, integer_only)
    except (RuntimeError, ValueError) as err:  # TVM's errors
        return _Checked(failed=f"the untuned program did not run on the inputs: {_one_line(str(err))}")
    if faults:
        raise faults[0]
    return _Checked(tuple(wrong), len(compared), tuple(sorted(set(best) - set(compared))),
                    seconds=time.monotonic() - started, kernels=sum(compared.values()))


def _estimate_ms(weights: dict[str, int], default: dict[str, float], best: dict[str, float]) -> float | None:
    """Sum over tasks of weight x latency, each task at the faster of its best record (if it has one) and its
    default schedule, as compile applies them (a record slower than the default is left out)."""
    secs = [w * (default.get(n, math.nan) if n not in best else min(best[n], default.get(n, math.inf)))
            for n, w in weights.items()]
    total = sum(secs)
    return None if math.isnan(total) else total * 1e3


_LOG_FORMAT = logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S")


def _file_logger(name: str, path: Path) -> logging.Logger:
    """A logger writing INFO and above to `path` only (its handler replaced if it had one)."""
    logger = logging.getLogger(name)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_LOG_FORMAT)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def _task_loggers(folder: Path, names: list[str]) -> list[logging.Logger]:
    """A logger per task into work_dir/logs/. MetaSchedule's `get_loggers_from_work_dir` is not used: it
    reconfigures logging process-wide and fails on a handler without a name (pytest's, for one)."""
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    return [_file_logger(f"ibert_tvm.tuning.task_{i:02d}", folder / "logs" / f"task_{i:02d}_{name[:100]}.log")
            for i, name in enumerate(names)]


@contextlib.contextmanager
def _scheduler_log(folder: Path) -> Iterator[None]:
    """MetaSchedule's task scheduler logs a table after each batch: into work_dir/logs/task_scheduler.log,
    with only its warnings on the console (where the progress bar is)."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    handlers = [logging.FileHandler(folder / "logs" / "task_scheduler.log", encoding="utf-8"), console]
    saved = logger.level, logger.propagate
    for handler in handlers:
        handler.setFormatter(_LOG_FORMAT)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def tune(model: QuantizedModel | tvm.IRModule, target: str | TargetSpec, trials: int, work_dir: str | Path, *,
         batch: int = 1, seq: int = 128, rpc: tuple[str, int, str] | None = None, progress: bool = True,
         max_trials_per_task: int | None = None, num_trials_per_iter: int = 64, estimate: bool = True,
         check: bool = True, check_inputs: Sequence[np.ndarray] | None = None, check_only: bool = False
         ) -> TuningResult:
    """Tune the integer program of `model` (at `batch` x `seq`, or an IRModule as given) for `target` until
    `work_dir`'s database holds `trials` trials of its tasks, earlier calls included.

    MetaSchedule with the xgb cost model searches the family's `tuning_space`; candidates are built here and
    measured here or, with `rpc=(tracker host, port, device key)`, on the devices of a TVM RPC tracker.
    `max_trials_per_task` caps each task's records (earlier calls included). `estimate` measures each task's
    default schedule once to estimate the program's latency before and after (sum of task latencies).
    `check` runs each task's best record on the arguments that the untuned program passes its kernels for
    `check_inputs` (default: `record_check.sample_inputs`) where the target runs here, and leaves out those
    that write other integers (`record_check`).
    `check_only` runs no search and times nothing: it checks an existing folder's records on this program's
    kernels, as before compiling another model or calibration of the same shapes with it, and adds those that
    write other integers to the folder's `wrong_integers` (nothing else in its metadata changes). `trials`,
    `estimate`, `check`, `max_trials_per_task` and `num_trials_per_iter` are then ignored. A TuningLogError
    without a usable database there, or while another tune writes the folder (each holds its lock file); a
    ValueError where the check cannot run (`database_to_check`) or did not.
    """
    started = time.monotonic()
    spec, folder = resolve_target(target), Path(work_dir)
    if isinstance(trials, bool) or not isinstance(trials, numbers.Integral):
        raise TypeError(f"trials must be an integer, got {type(trials).__name__}")
    if trials < 0:
        raise ValueError(f"trials must be an integer of at least 0, got {trials}")
    check_work_dir(folder)
    if not check_only:  # (a check runs here only: refused below, by database_to_check)
        if rpc is not None:
            check_tracker(rpc)
        check_measured_here(spec, rpc)
    if not isinstance(model, tvm.IRModule):
        from .model import shape_buckets  # transformers, which the model module imports, only for a model

        shape_buckets(model, [batch], [seq])
    database = database_to_check(folder, spec, rpc) if check_only else None
    mod = _program(model, batch, seq)
    if check_only:
        trials, estimate, check = 0, False, True
    inputs = None
    if check:
        inputs = check_inputs if check_inputs is not None else record_check.sample_inputs(model, batch, seq)
    unchecked = _check_plan(spec, rpc, mod, inputs) if check else ""  # before the folder: bad inputs fail fast
    if check_only and unchecked:
        raise ValueError(f"cannot check the records of {folder}: {unchecked}")
    with _sole_writer(folder), workers_spared_from_sigint():  # a second tune on the folder is refused
        if database is None:
            database = _database_for_tuning(folder, spec)
        integer_only = getattr(model, "integer_only", True)  # a QuantizedModel in Q8BERT mode or with a float head: no
        tunable = pipeline.tunable_module(mod, spec.target, integer_only)
        kernels = ms.relax_integration.extract_tasks(tunable, _tuning_target(spec.target))
        tasks = _shared_tasks(kernels)
        records = _records_per_task(database, tasks)
        done = {name: len(r) for name, r in records.items()}
        if not check_only:  # a valid folder if stopped
            _write_meta(folder, spec, _shapes(mod), sum(done.values()), _hardware(spec, rpc))
        todo = [t for t in tasks if max_trials_per_task is None or done[t.task_name] < max_trials_per_task]
        remaining = trials - sum(done.values())
        searched = bool(remaining > 0 and todo)  # only a search tells the untunable tasks from the untried ones
        run = _Run(spec, folder, database, _builder(spec), _runner(spec, rpc)) if estimate or searched else None
        default = _default_latencies(run, tasks) if estimate else {}
        weights = {t.task_name: int(t.weight) for t in tasks}
        tally = _Tally(best={name: min(r) for name, r in records.items() if r and min(r) < FAILED_SECS})
        untunable: dict[str, str] = {}
        if searched:
            with _scheduler_log(folder), tqdm(total=trials, initial=trials - remaining, unit="trial",
                                                desc=f"tuning {spec.name}", disable=not progress) as bar:
                callback = _Progress(tally, bar, functools.partial(_estimate_ms, weights, default, tally.best))
                untunable = _search(run, todo, done, remaining, max_trials_per_task,
                                    min(num_trials_per_iter, remaining), callback)
        per_task = _records_per_task(database, tasks)
        total = sum(len(r) for r in per_task.values())
        found = {t.task_name: (t, f) for t in tasks if (f := _best(database, t.dispatched[0], t.target)) is not None}
        best = {name: (t, scheduled) for name, (t, (_, scheduled)) in found.items()}
        checked = (_check_records(spec, {n: t for n, (t, _) in best.items()}, database, mod, tunable, inputs,
                                  integer_only)
                   if check and not unchecked else _Checked(failed=unchecked))
        if check_only and checked.failed:
            raise ValueError(f"cannot check the records of {folder}: {checked.failed}")
        duel = _head_to_head(run, {n: b for n, b in best.items() if n not in checked.wrong}) if estimate else {}
        default.update({name: d for name, (d, _) in duel.items()})
        slower = [t for t in tasks if t.task_name in duel and duel[t.task_name][1] > duel[t.task_name][0]]
        keys = {t.task_name: workload_key(t.dispatched[0]) for t in tasks}
        left_out = {"default_wins": {keys[t.task_name]: t.task_name for t in slower}} if estimate else {}
        passed = None
        if check and not checked.failed:
            left_out |= {"wrong_integers": {keys[name]: name for name in checked.wrong},
                         "not_called": {keys[name]: name for name in checked.not_called}}
            passed = _passed(found, checked, keys, mod)
        meta = (_add_check(folder, left_out, passed) if check_only else
                _write_meta(folder, spec, _shapes(mod), total, _hardware(spec, rpc), set(keys.values()), left_out,
                            passed))
        slower_names = {t.task_name for t in slower}
        won = {n: r for n, (_, r) in duel.items() if n not in slower_names}
        before = _estimate_ms(weights, default, {})
        return TuningResult(
            target=spec.name, work_dir=folder, tasks=weights, kernels=len(kernels), trials_run=tally.trials,
            trials_total=total, build_errors=tally.build_errors, run_errors=tally.run_errors,
            errors=dict(tally.errors), untunable=untunable,
            latency_before_ms=before, latency_after_ms=None if before is None else _estimate_ms(weights, default, won),
            slower_than_default=tuple(t.task_name for t in slower), wrong_integers=checked.wrong,
            records_checked=checked.compared, not_checked=checked.not_called, unchecked=checked.failed,
            check_seconds=checked.seconds, kernels_checked=checked.kernels,
            seconds=time.monotonic() - started, check_only=check_only, recorded=tuple(best),
            left_out={name: tuple(n for n in best if keys[n] in meta.get(name, {})) for name in _LEFT_OUT},
            untried=tuple(name for name, r in per_task.items() if searched and not r and name not in untunable),
            untimed=dict(run.untimed) if run else {})


def _shared_tasks(kernels: list[ms.ExtractedTask]) -> list[ms.ExtractedTask]:
    """One task per `workload_key` (the kernels that differ only in their constants, as every layer's QKV
    kernel): its first kernel stands for all, weighted by all their call sites, as one record schedules all."""
    groups: dict[str, list[ms.ExtractedTask]] = {}
    for kernel in kernels:
        groups.setdefault(workload_key(kernel.dispatched[0]), []).append(kernel)
    return [ms.ExtractedTask(same[0].task_name, same[0].mod, same[0].target, same[0].dispatched,
                             sum(int(k.weight) for k in same)) for same in groups.values()]


def _resumed_cost_model(saved: Path) -> ms.cost_model.XGBModel:
    """The xgb model saved in the work dir by an earlier call, or a new one. A file that cannot be read (a save
    cut short: a tune killed or interrupted while `tar` wrote it) is warned about and left for this call's save to
    replace: the model only orders the candidates, and TVM's 'Tar error' stopped every later tune of the folder."""
    if saved.is_file():
        cost_model = ms.cost_model.XGBModel(num_tuning_cores=physical_cores())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # xgboost guessing the format MetaSchedule saved in
                cost_model.load(str(saved))
            return cost_model
        except (RuntimeError, ValueError, OSError, EOFError) as err:  # tar's, xgboost's and numpy's errors
            warnings.warn(f"{saved} cannot be read ({_one_line(str(err))}): the cost model starts afresh, and this "
                          "tune replaces the file", stacklevel=2)
    return ms.cost_model.XGBModel(num_tuning_cores=physical_cores())


def _search(run: _Run, tasks: list[ms.ExtractedTask], done: dict[str, int], budget: int, cap: int | None,
            per_iter: int, callback: _Progress) -> dict[str, str]:
    """Run MetaSchedule's gradient task scheduler over the tunable `tasks` for `budget` trials, the xgb model
    resumed from and saved to the work dir; returns why each task left out could not be tuned."""
    tunable, untunable = _contexts(tasks, run.folder, run.spec, done, cap, per_iter)
    if not tunable:
        return untunable
    saved = run.folder / COST_MODEL_FILE
    cost_model = _resumed_cost_model(saved)
    ms.tune_tasks(tasks=[c for _, c in tunable], task_weights=[t.weight for t, _ in tunable],
                  work_dir=str(run.folder), max_trials_global=budget, max_trials_per_task=cap,
                  num_trials_per_iter=per_iter, builder=run.builder, runner=run.runner, database=run.database,
                  cost_model=cost_model,
                  measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), callback])
    if cost_model.booster is not None:  # XGBModel.load cannot read a model saved before its first training
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # xgboost's note on its default file format
            cost_model.save(str(saved))
    return untunable
