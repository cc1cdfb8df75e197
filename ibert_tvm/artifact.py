"""The deployable artifact: one shared library (weights inside) and its metadata JSON beside it.

`model.so` + `model.json`: the JSON holds the model config, the program's input/output spec and shape
buckets, the target and the TVM versions it was built with, the quantization scales needed to read the
outputs, the tokenizer files, and the SHA-256 of the library. `load` checks all of it before anything runs:
a truncated or replaced library, metadata from another model, another TVM, or a target this machine cannot
run are refused with a one-line reason (`ArtifactError`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from importlib import metadata as pkg_metadata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import tvm

from .reports import folder_problem
from .targets import TargetSpec, UnknownTargetError, host_cpu_features, parse_cuda_arch, x86_levels_for

__all__ = ["ARTIFACT_FORMAT", "ArtifactError", "bucket_function", "check_library_path", "check_runnable_here",
           "library_sha256", "library_suffix_problem", "metadata_path", "read_metadata", "runtime_versions",
           "why_not_runnable_here", "write_metadata"]

#: 2: the programs take token types (sentence pairs) as a third input; a format-1 library takes two
ARTIFACT_FORMAT = "ibert-tvm-artifact/2"
#: The metadata's sections -> the entries of each that `load`, `IntegerModel` and the CLI's `run`, `bench` and
#: `inspect` read (optional ones, read with a default, aside)
_REQUIRED = {
    "format": (),
    "versions": ("tvm", "tvm_ffi", "ibert_tvm"),
    "target": ("name", "family", "features", "schedule_options", "tuned"),
    "model": ("model_type", "semantics", "vocab_size", "type_vocab_size", "hidden_size", "num_hidden_layers",
              "pad_token_id", "force_dequant"),
    "inputs": (),
    "output": ("kind", "dtype", "shape", "scale"),
    "buckets": ("batch_sizes", "seq_lengths", "functions"),
    "library": ("sha256",),
}
#: (section, entry) -> what `load` and `IntegerModel` need each entry they read to be, and a test of it: a
#: hand-edited entry of another type failed deep in numpy or Python at the first call, or ran a wrong program
_ENTRY_KINDS: dict[tuple[str, str], tuple[str, Callable[[Any], bool]]] = {
    ("target", "name"): ("a string", lambda v: isinstance(v, str)),
    ("target", "family"): ("one of 'x86', 'arm', 'cuda'", lambda v: v in ("x86", "arm", "cuda")),
    ("target", "features"): ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(f, str) for f in v)),
    ("model", "model_type"): ("a string", lambda v: isinstance(v, str)),
    **{("model", entry): ("a positive integer", lambda v: is_json_int(v) and v > 0)
       for entry in ("vocab_size", "type_vocab_size", "hidden_size", "num_hidden_layers")},
    ("model", "pad_token_id"): ("an integer of at least 0", lambda v: is_json_int(v) and v >= 0),
    ("model", "labels"): ("a list of strings (or null)",
                          lambda v: v is None or isinstance(v, list) and all(isinstance(x, str) for x in v)),
    ("model", "float_layers"): ("a list of layer indices", lambda v: isinstance(v, list) and all(
        is_json_int(i) and i >= 0 for i in v)),
    ("model", "problem_type"): ("one of HF's problem types (or null)",
                                lambda v: v is None or v in (REGRESSION, SINGLE_LABEL, MULTI_LABEL)),
    ("output", "kind"): ("'logits' or 'hidden_states'", lambda v: v in _OUTPUT_DTYPES),
    ("output", "shape"): ("a list", lambda v: isinstance(v, list)),
}
#: an output kind -> the dtypes a program of it returns (int8 hidden states; int32 logits, float32 for a float head)
_OUTPUT_DTYPES = {"hidden_states": ("int8",), "logits": ("int32", "float32")}
#: The suffix of a library: the TVM runtime relinks a .o or .tar into a new .so beside it before loading it,
#: and export writes an ELF shared object under any name (one that .dylib or .dll would misname; both load)
_LIBRARY_SUFFIX = ".so"
#: suffixes of libraries or objects that a suggested name replaces (other suffixes stay part of the name: bert.base)
_LIBRARY_SUFFIXES_ELSEWHERE = (".o", ".tar", ".dylib", ".dll", ".SO")


class ArtifactError(RuntimeError):
    """An artifact that cannot be loaded or run here; the message says why and what to do."""


def metadata_path(library: str | Path) -> Path:
    """The metadata JSON that belongs to a library: `model.so` -> `model.json`."""
    return Path(library).with_suffix(".json")


#: HF's problem types of a sequence classifier (config `problem_type`).
REGRESSION, SINGLE_LABEL, MULTI_LABEL = "regression", "single_label_classification", "multi_label_classification"


def problem_type(num_labels: int, given: str | None) -> str:
    """A classifier's problem type: `given` (its config's), else as HF's forward reads a config without one (one
    output: a regression; more: a single-label classification)."""
    return given or (REGRESSION if num_labels == 1 else SINGLE_LABEL)


def meta_problem_type(meta: dict[str, Any]) -> str | None:
    """An artifact's problem type (None for an encoder), also of one exported before the metadata recorded it."""
    if meta["output"]["kind"] != "logits":
        return None
    return problem_type(len(meta["model"].get("labels") or ()), meta["model"].get("problem_type"))


def bucket_function(batch: int, seq: int) -> str:
    """The function of the program compiled for exactly batch B and length L (`QuantizedModel.programs` names
    its functions so), which the metadata's bucket "BxL" names."""
    return f"main_b{batch}_s{seq}"


def library_suffix_problem(path: str | Path) -> str | None:
    """Why `path` cannot name a library that `load` runs as it is (None where it can): it must end in .so."""
    path = Path(path)
    if path.name == _LIBRARY_SUFFIX:  # (a dot file, to Path: no suffix)
        return f"{path}: the library's name is empty before {_LIBRARY_SUFFIX} (e.g. {path.with_name('model.so')})"
    if path.suffix == _LIBRARY_SUFFIX:
        return None
    renamed = path.with_suffix(_LIBRARY_SUFFIX) if path.suffix in _LIBRARY_SUFFIXES_ELSEWHERE else \
        path.with_name(path.name + _LIBRARY_SUFFIX)
    return f"{path}: the library must end in {_LIBRARY_SUFFIX} (e.g. {renamed})"


def check_library_path(path: str | Path) -> Path:
    """Where a library can be exported (checked before compiling, as the CLI does): a file path ending in .so
    (its metadata goes beside it as .json), not a folder, under folders rather than a file, in a folder (or, if
    it is to be made, under the nearest existing one) that this user can write: PermissionError if not."""
    text, out = os.fspath(path), Path(path)
    if not text:
        raise ValueError("the library path is empty; give the library's file path (e.g. model.so)")
    if text.endswith(tuple(filter(None, (os.sep, os.altsep)))):  # Path() drops the separator
        raise ValueError(f"{path} names a folder; give the library's file path (e.g. {out / 'model.so'})")
    if out.suffix.lower() == ".json":
        raise ValueError(f"{path}: the library must not end in .json (its metadata is written beside it as "
                         f"{out.name})")
    if out.is_dir():
        raise ValueError(f"{path} is a folder; give the library's file path (e.g. {out / 'model.so'})")
    if problem := library_suffix_problem(out):
        raise ValueError(problem)
    if metadata_path(out).is_dir():
        raise ValueError(f"{path}: its metadata's path {metadata_path(out)} is a folder")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{path}: {parent} is a file, not a folder")
    if problem := folder_problem(out.parent):  # else the linker fails only after calibrating and compiling
        raise PermissionError(f"{problem}; export to a folder of yours")
    if metadata_path(out).exists() and not os.access(metadata_path(out), os.W_OK):
        raise PermissionError(f"{path}: its metadata {metadata_path(out)} cannot be written")
    return out


def library_sha256(library: str | Path) -> str:
    """The SHA-256 of the library file, recorded at export and checked at load."""
    digest = hashlib.sha256()
    with open(library, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def runtime_versions() -> dict[str, str]:
    """The versions an artifact depends on at load: TVM, its FFI, and this package."""
    return {"tvm": tvm.__version__, "tvm_ffi": pkg_metadata.version("apache-tvm-ffi"),
            "ibert_tvm": pkg_metadata.version("ibert-tvm")}


def write_metadata(library: str | Path, meta: dict[str, Any]) -> Path:
    """Write `meta` (plus format, versions and the library's hash) beside the exported library."""
    library = Path(library)
    meta = {**meta, "format": ARTIFACT_FORMAT, "versions": runtime_versions(),
            "library": {"file": library.name, "sha256": library_sha256(library)}}
    path = metadata_path(library)
    path.write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
    return path


def read_metadata(library: str | Path) -> dict[str, Any]:
    """The metadata of an artifact, checked against its library (presence, format, hash, TVM version)."""
    if not isinstance(library, (str, os.PathLike)):
        raise TypeError(f"an artifact is a library path, got {type(library).__name__}")
    if not os.fspath(library):  # Path('') is the current folder
        raise ArtifactError("the artifact path is empty; give the library's file path (e.g. model.so)")
    library = Path(library)
    if library.suffix == ".json":
        raise ArtifactError(f"{library} is an artifact's metadata: pass its library (the file beside it that its "
                            "'library' entry names)")
    if library.is_dir():
        raise ArtifactError(f"{library} is a folder; pass the library file in it (e.g. {library / 'model.so'})")
    if not library.is_file():
        raise ArtifactError(f"{library}: no such library file")
    path = metadata_path(library)
    if not path.is_file() and library.is_symlink():  # a link to a versioned library (current.so -> model-v3.so)
        path = metadata_path(library.resolve())
    if not path.is_file():
        raise ArtifactError(f"{library}: its metadata {path.name} is missing (export writes both; copy them together)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: not valid JSON ({err}); re-export the artifact") from err
    if isinstance(meta, dict) and meta.get("format") == "ibert-tvm-artifact/1":
        raise ArtifactError(f"{path}: made by an older ibert-tvm (format 1, whose programs take no token types); "
                            "recompile the model")
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path}: not an ibert-tvm artifact metadata file (format "
                            f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {ARTIFACT_FORMAT})")
    if missing := _missing_entries(meta):
        raise ArtifactError(f"{path}: the metadata lacks {', '.join(missing)}; re-export the artifact")
    if problem := _entry_problem(meta):
        raise ArtifactError(f"{path}: the metadata's {problem}; re-export the artifact")
    if library_sha256(library) != meta["library"]["sha256"]:
        raise ArtifactError(f"{library}: the library does not match its metadata {path.name} (SHA-256 differs: "
                            "the file is truncated or replaced, or the JSON belongs to another model); re-export")
    built, here = meta["versions"].get("tvm"), tvm.__version__
    if built != here:
        raise ArtifactError(f"{library}: built with TVM {built}, this runtime is TVM {here}; recompile it with "
                            "this TVM (the VM bytecode and ABI are tied to the version)")
    return meta


def _missing_entries(meta: dict[str, Any]) -> list[str]:
    """The required sections and entries (`_REQUIRED`) that `meta` lacks, as 'section' or 'section.entry'."""
    missing = []
    for section, entries in _REQUIRED.items():
        if section not in meta:
            missing.append(section)
        elif entries:
            found = meta[section] if isinstance(meta[section], dict) else {}
            missing += [f"{section}.{entry}" for entry in entries if entry not in found]
    return missing


def _entry_problem(meta: dict[str, Any]) -> str | None:
    """The first entry of `meta` that is not of its kind (`_ENTRY_KINDS`), or an output dtype that its kind's
    program does not return, said as 'entry must be ..., got ...'."""
    for (section, entry), (what, holds) in _ENTRY_KINDS.items():
        if entry in meta[section] and not holds(meta[section][entry]):
            return f"{section}.{entry} must be {what}, got {meta[section][entry]!r}"
    inputs = meta["inputs"]
    if not (isinstance(inputs, list) and all(isinstance(i, dict) and isinstance(i.get("name"), str)
                                             and isinstance(i.get("dtype"), str) and isinstance(i.get("shape"), list)
                                             for i in inputs)):
        return f"inputs must be a list of {{name, dtype, shape}} entries, got {inputs!r}"
    tokenizer = meta.get("tokenizer")
    if tokenizer is not None and not _is_tokenizer_files(tokenizer):
        return "tokenizer must map the tokenizer's file names (no folders) to their text"
    output = meta["output"]
    if output["dtype"] not in _OUTPUT_DTYPES[output["kind"]]:
        return f"output.dtype of {output['kind']} must be one of {', '.join(_OUTPUT_DTYPES[output['kind']])}, got " \
               f"{output['dtype']!r}"
    return None


def _is_tokenizer_files(files: Any) -> bool:
    """Whether `files` maps plain file names to their text, as export bundles them: `load` writes each into a
    temporary folder, where a name with a folder in it ('../x') would write outside it."""
    return isinstance(files, dict) and all(
        isinstance(name, str) and name not in ("", "..") and Path(name).name == name and "\0" not in name
        and isinstance(text, str)
        for name, text in files.items())


def is_json_int(value: Any) -> bool:
    """An integer of the JSON metadata (not a bool, which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_json_number(value: Any) -> bool:
    """A finite real number of the JSON metadata (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _NotHere(NamedTuple):
    """Why this machine cannot run a target's code: as an artifact's refusal says it (`refusal`, `advice`) and as
    a clause about the target itself (`lacks`: `ibert-tvm targets`, `tune`)."""

    refusal: str
    advice: str
    lacks: str


def _not_here(family: str, name: str, features: Sequence[Any]) -> _NotHere | None:
    """What this machine lacks to run code built for the target (other ISA, CPU features, GPU), or None."""
    machine = platform.machine().lower()
    if family == "arm" and machine not in ("aarch64", "arm64"):
        return _NotHere(f"built for target '{name}' (aarch64), this machine is {machine}", "run it on an aarch64 "
                        "machine (or under qemu-aarch64 with examples/cpp), or compile for 'llvm'",
                        f"this machine is {machine}, not aarch64")
    if family == "x86" and machine not in ("x86_64", "amd64"):
        return _NotHere(f"built for an x86-64 CPU, this machine is {machine}", "compile for this machine's target",
                        f"this machine is {machine}, not x86-64")
    if family == "x86" and (lacking := sorted(set(features) - set(here := host_cpu_features()))):
        levels = x86_levels_for(here)
        fits = f", or for '{levels[0]}' to run on this CPU and every CPU with its features" if levels else ""
        return _NotHere(f"built for a CPU with {', '.join(lacking)}, which this CPU lacks",
                        f"compile it for this machine with target 'llvm'{fits}", f"this CPU lacks {', '.join(lacking)}")
    if family == "cuda":
        return _cuda_not_here(str(features[0]) if features else "")
    return None


def _cuda_not_here(arch: str) -> _NotHere | None:
    """A GPU that cannot run the library's cubin for `arch` (`CudaArch.runs_on`), or no GPU."""
    dev = tvm.cuda(0)
    if not dev.exist:
        return _NotHere(f"built for CUDA {arch}, and no CUDA GPU is present here", "", "no CUDA GPU is present here")
    major, minor = (int(v) for v in dev.compute_version.split("."))
    try:
        runs = parse_cuda_arch(arch).runs_on(major, minor)
    except UnknownTargetError:  # metadata naming no arch
        runs = False
    if runs:
        return None
    have, arch = f"sm_{major}{minor}", arch or "no CUDA arch"
    return _NotHere(f"holds kernels for {arch}, this GPU is {have}",
                    f"compile for target 'cuda' (detects {have}) or 'cuda:{have}'",
                    f"this GPU is {have}, which cannot run kernels for {arch}")


def check_runnable_here(meta: dict[str, Any], library: str | Path = "artifact") -> None:
    """Refuse an artifact whose target this machine cannot run (other ISA, missing CPU features, no GPU)."""
    target = meta["target"]
    if why := _not_here(target["family"], target["name"], target["features"]):
        raise ArtifactError(f"{library}: {why.refusal}" + (f"; {why.advice}" if why.advice else ""))


def why_not_runnable_here(spec: TargetSpec) -> str:
    """Why this machine cannot run code built for `spec` ("" where it can), said of the target, for callers that
    give advice of their own (`ibert-tvm targets`, `tune` measuring here)."""
    why = _not_here(spec.family, spec.name, spec.features)
    return why.lacks if why else ""
