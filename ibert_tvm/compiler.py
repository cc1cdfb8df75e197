"""`compile` and `CompiledModel.export`: from a QuantizedModel to a deployable library (`runtime.load` reads it
back).

Sequence lengths are compiled as a set of static buckets (default 32 and 128), not as a symbolic length:
MetaSchedule tunes per static shape and the tuned records apply to exactly these shapes, the integer kernels
keep constant trip counts (tensorization needs them), and padding up to a bucket is exact for the real tokens
(masked keys are -inf to the integer Softmax). Each (batch, seq) bucket is one Relax function of one library.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import relax

from . import cross
from .artifact import check_library_path, check_runnable_here, runtime_versions, write_metadata
from .model import QuantizedModel, function_name, shape_buckets
from .relay_passes.pipeline import build
from .runtime import IntegerModel
from .schedules import check_options
from .targets import TargetSpec, resolve_target

__all__ = ["CompiledModel", "DEFAULT_BATCH_SIZES", "DEFAULT_SEQ_LENGTHS", "compile"]

DEFAULT_BATCH_SIZES = (1, 8)
DEFAULT_SEQ_LENGTHS = (32, 128)
#: how TVM's `tvm.support.cc` begins the RuntimeError of a compiler or linker that exited with an error
_LINK_FAILED = "Compilation error"


class CompiledModel:
    """A compiled integer-only program for one target: export it, or (host targets) run it in-process.

    Calling it runs one kept runner, so, like `IntegerModel`, it is not for concurrent calls from several
    threads: give each thread its own `runner()`.
    """

    def __init__(self, executable: Any, spec: TargetSpec, meta: dict[str, Any]) -> None:
        self.executable = executable
        self.spec = spec
        self.meta = meta
        self._runner: IntegerModel | None = None  # the one `__call__` runs, made on its first call
        self._as_compiled_file: Path | None = None  # the executable saved before a VM first ran it (`_runnable`)
        self._making_runner = threading.Lock()

    def export(self, path: str | Path) -> Path:
        """Write the library (cross-compiled where the target needs it) and its metadata JSON beside it; a linker
        that fails is reported as an OSError naming the path and the linker's first line, not TVM's traceback."""
        path = check_library_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._making_runner, _build_environment(self.spec):  # not while a runner's VM starts on the executable
            try:
                cross.export(self._as_compiled(), path, self.spec)
            except RuntimeError as err:
                if not str(err).startswith(_LINK_FAILED):
                    raise
                raise OSError(f"{path}: the linker could not write the library ({_linker_reason(err)})") from err
        write_metadata(path, self.meta)
        return path

    def runner(self) -> IntegerModel:
        """A new in-process runner (host CPU or a present GPU); refuses a target this machine cannot run. Every
        runner runs the one executable, so they share its constants (the weights); runners are made one at a time,
        as a VM's start writes into the executable."""
        check_runnable_here({**self.meta, "versions": runtime_versions()}, f"target {self.spec.name}")
        with self._making_runner:
            return IntegerModel(self._runnable(), self.meta)

    def _runnable(self) -> tvm.runtime.Module:
        """The executable's module for a VM to run. A Relax VM writes an empty memory scope per constant into the
        executable it runs (TVM 0.27, `VirtualMachineImpl::Init`), which export would save, warning 'Scope Saving'
        per constant, and every load of that library would warn 'Scope Loaded': so before its first run the
        executable is saved to a temporary file (weights and all; removed with this object), and export writes
        the library from that file (`_as_compiled`)."""
        runnable = self.executable.jit()  # kernels that cannot run as they are: a linked module of its own (cached)
        if runnable is self.executable.mod and self._as_compiled_file is None:
            folder = tempfile.mkdtemp(prefix="ibert-tvm-executable-")
            weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
            saved = Path(folder) / "executable.bin"
            runnable.write_to_file(str(saved))
            self._as_compiled_file = saved
        return runnable

    def _as_compiled(self) -> Any:
        """The executable as compiled: the kept one if no VM ran it, else the copy saved before its first run."""
        if self._as_compiled_file is None:
            return self.executable
        copy = tvm.get_global_func("ffi.Module.load_from_file.relax.VMExecutable")(str(self._as_compiled_file))
        for kernels in self.executable.mod.imports:
            copy.import_module(kernels)
        return relax.VMExecutable(copy)

    def __call__(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None,
                 **kwargs: Any) -> np.ndarray:
        """`IntegerModel.__call__` on a runner made on the first call and kept: a new one per call cost 3.07 ms a
        call against 0.164 ms (the tiny test classifier on 2 x 16 tokens, 2-core AMD EPYC Zen 5 VM, 2026-12-07),
        most of it making the VM."""
        if self._runner is None:
            self._runner = self.runner()
        return self._runner(input_ids, attention_mask, token_type_ids, **kwargs)


def compile(model: QuantizedModel, target: str | TargetSpec = "llvm", *, tuning_logs: str | Path | bool | None = None,
            batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, seq_lengths: Sequence[int] = DEFAULT_SEQ_LENGTHS,
            dump_dir: str | None = None, **schedule_options: Any) -> CompiledModel:
    """Compile a quantized model for `target` ("llvm", "t4", "aarch64", ...) over the given shape buckets.

    `tuning_logs`: None uses the database shipped for the target if there is one, a path uses that database
    (refused when made for another target or TVM), False compiles with the untuned default schedules only.
    A warning counts the applied records that were never checked against this program's own integers
    (`ibert-tvm tune --check-only` checks them).
    `schedule_options` go to the target family's default schedule (e.g. `gemm="dp4a"` on CUDA).
    """
    if not isinstance(model, QuantizedModel):
        raise TypeError(f"compile takes a QuantizedModel (from ibert_tvm.from_pretrained / from_onnx), got "
                        f"{type(model).__name__}")
    spec = resolve_target(target)
    check_options(spec.target, schedule_options)
    if seq_lengths is DEFAULT_SEQ_LENGTHS and max(seq_lengths) > model.max_seq_length:  # lengths never given
        raise ValueError(f"the default seq_lengths {DEFAULT_SEQ_LENGTHS} pass what this model's position embeddings "
                         f"cover ({model.max_seq_length}): give seq_lengths")
    batch_sizes, seq_lengths = shape_buckets(model, batch_sizes, seq_lengths)
    shapes = [(b, s) for b in batch_sizes for s in seq_lengths]
    folder, database = _database(tuning_logs, spec)
    program = model.programs(shapes)
    tally: dict[str, Any] = {}
    with _build_environment(spec):
        exe = build(program, spec.target, dump_dir=dump_dir, database=database,
                    tally=None if database is None else tally, integer_only=model.integer_only, **schedule_options)
    if tuning_logs not in (None, True, False) and not tally["tuned"]:  # a database the caller named
        warnings.warn(f"the tuning database {tuning_logs} gives none of this program's {tally['kernels']} kernels "
                      f"a record (its records lost to the default schedules, or are for another model, "
                      f"calibration or shape): compiled with the default schedules", UserWarning, stacklevel=2)
    meta = _metadata(model, spec, batch_sizes, seq_lengths, schedule_options, tuning_logs=bool(tally.get("tuned")))
    if tally:
        meta["target"]["tuned_kernels"] = [tally["tuned"], tally["kernels"]]
    if tally.get("records"):
        meta["target"]["unchecked_records"] = _warn_unchecked(folder, tally["records"], program, shapes,
                                                              shipped=_is_shipped(folder, spec))
    return CompiledModel(exe, spec, meta)


def _database(tuning_logs: str | Path | bool | None, spec: TargetSpec) -> tuple[Path | None, Any | None]:
    """The folder and MetaSchedule database to apply: the shipped one, a given folder, or none."""
    if tuning_logs is False:
        return None, None
    from . import tuning

    if not isinstance(tuning_logs, (str, Path, bool, type(None))):
        raise TypeError(f"tuning_logs must be a folder path, None or False, got {type(tuning_logs).__name__}")
    folder = tuning.shipped_database(spec) if tuning_logs is None or tuning_logs is True else Path(tuning_logs)
    return folder, None if folder is None else tuning.open_database(folder, spec)


def _is_shipped(folder: Path, spec: TargetSpec) -> bool:
    """Whether `folder` is the tuning database shipped with ibert-tvm for the target."""
    from . import tuning

    shipped = tuning.shipped_database(spec)
    return shipped is not None and shipped.resolve() == folder.resolve()


def _warn_unchecked(folder: Path, applied: dict[str, str], program: tvm.IRModule, shapes: list[tuple[int, int]],
                    shipped: bool) -> int:
    """Warn where records applied to `program` (workload key -> record digest) were never checked against
    its own integers (`tuning.unchecked_records`), naming the check for the build's shapes that the folder was
    tuned at (on a copy, for the database shipped with ibert-tvm), and return how many."""
    from . import record_check, tuning

    fingerprints = {record_check.function_fingerprint(program, gv.name_hint)
                    for gv, func in program.functions_items() if isinstance(func, tvm.relax.Function)}
    unchecked = tuning.unchecked_records(folder, applied, fingerprints)
    if unchecked:
        done = tuning.tuned_shapes(folder)
        tuned = [f"--batch {b} --seq {s}" for b, s in shapes if (b, s) in done]
        work_dir = "COPY" if shipped else str(folder)
        check = (f"`ibert-tvm tune <model arguments> {' / '.join(tuned) or '--batch B --seq S'} --check-only "
                 f"--work-dir {work_dir}` where the target runs")
        how = (f"copy it to a folder COPY of yours, check them there with {check}, and compile with tuning_logs=COPY"
               if shipped else f"check them with {check}, then compile again")
        warnings.warn(f"{len(unchecked)} of the {len(applied)} tuning records that {folder} applied were never "
                      "checked against this program's own integers (tuned or checked on another model, "
                      "calibration or shape only, tuned again since, or filed before ibert-tvm recorded its "
                      f"checks); a record may write other integers for other constants: {how} (compile leaves "
                      "out those that write other integers)", UserWarning, stacklevel=3)
    return len(unchecked)


def _linker_reason(err: RuntimeError) -> str:
    """The linker's first line of output in TVM's 'Compilation error' message (e.g. "cannot open output file")."""
    lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    return lines[0] if lines else _LINK_FAILED


def check_toolchains(spec: TargetSpec) -> None:
    """A CudaToolchainError or ToolchainMissingError naming the program that building and exporting for `spec`
    needs and this machine lacks (nvcc; the cross compiler): the CLI asks before calibrating."""
    if spec.family == "cuda":
        from .cuda_toolchain import find_nvcc

        find_nvcc()
    if spec.cross_compiler:
        cross.require_tool(spec.cross_compiler)


def _build_environment(spec: TargetSpec) -> contextlib.AbstractContextManager:
    """CUDA: the environment in which the build embeds a real cubin (no GPU needed); CPUs: nothing."""
    if spec.family != "cuda":
        return contextlib.nullcontext()
    from .cuda_toolchain import cuda_build_environment

    return cuda_build_environment(spec.target)


def _metadata(model: QuantizedModel, spec: TargetSpec, batch_sizes: list[int], seq_lengths: list[int],
              schedule_options: dict[str, Any], tuning_logs: bool) -> dict[str, Any]:
    """Everything `load` and a reader of the artifact need besides the library itself."""
    config = model.ibert.config
    head = model.head is not None
    labels = None
    if head:
        id2label = {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}
        labels = [str(id2label.get(i, i)) for i in range(model.head.num_labels)]
    out_dtype = "float32" if head and model.head_mode == "float" else ("int32" if head else "int8")
    scale = model.output_scale
    return {
        "target": {"name": spec.name, "family": spec.family, "tvm_target": str(spec.target),
                   "features": list(spec.features), "schedule_options": schedule_options,
                   "tuned": tuning_logs},
        "model": {"model_type": model.model_type, "source_type": model.source_type, "semantics": model.semantics,
                  "importer": model.importer,
                  "vocab_size": int(config.vocab_size), "type_vocab_size": int(config.type_vocab_size),
                  "hidden_size": int(config.hidden_size),
                  "num_hidden_layers": int(config.num_hidden_layers),
                  "pad_token_id": int(config.pad_token_id), "max_seq_length": model.max_seq_length,
                  "force_dequant": getattr(config, "force_dequant", "none"), "float_layers": list(model.float_layers),
                  "head": model.head_mode if head else None,
                  "labels": labels, "problem_type": model.problem_type, "config": json.loads(config.to_json_string())},
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
                   {"name": "attention_mask", "dtype": "int32", "shape": ["batch", "seq"]},
                   {"name": "token_type_ids", "dtype": "int32", "shape": ["batch", "seq"]}],
        "output": {"kind": "logits" if head else "hidden_states", "dtype": out_dtype,
                   "shape": ["batch", "labels"] if head else ["batch", "seq", int(config.hidden_size)],
                   "scale": np.asarray(scale, np.float64).tolist()},
        "scales": {"hidden_states": model.hidden_scale},
        "buckets": {"batch_sizes": batch_sizes, "seq_lengths": seq_lengths,
                    "functions": {f"{b}x{s}": function_name(b, s) for b in batch_sizes for s in seq_lengths}},
        "tokenizer": _tokenizer_files(model.tokenizer),
    }


def _tokenizer_files(tokenizer: Any) -> dict[str, str]:
    """The tokenizer's saved files as {name: text}, bundled in the metadata (empty without a tokenizer)."""
    if tokenizer is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_text(encoding="utf-8") for p in sorted(Path(tmp).iterdir()) if p.is_file()}
