"""Build CUDA libraries holding real cubins on a machine without a GPU, and read their SASS.

TVM's CUDA code generator embeds a compiled binary in the module only when its CUDA runtime library
(`libtvm_runtime_cuda.so`) is loaded, and that library links `libcuda.so.1`, the CUDA driver. Without a
driver `import tvm` skips it silently and `tvm.compile` keeps the kernels as CUDA source. Compiling needs
none of the driver's functions, so `cuda_build_environment` makes the runtime loadable:

- where TVM's CUDA runtime is loaded (a driver is installed), it leaves it alone: the stub below is never
  built or loaded there; where a `libcuda.so.1` loads but the runtime was not loaded, it loads the runtime;
- otherwise it loads a stand-in driver built from `_STUB_SOURCE` with the system C compiler (cached in
  `~/.cache/ibert_tvm/`): the nine driver entry points the runtime links, each failing with
  CUDA_ERROR_NO_DEVICE. It stays loaded for the rest of the process (a loaded library cannot be taken
  back): `tvm.cuda(0).exist` still answers False, and every later CUDA build of the process compiles its
  kernels, so `TVM_CUDA_COMPILE_MODE` defaults to nvcc from then on.

Inside it `TVM_CUDA_COMPILE_MODE=nvcc` (TVM's default, NVRTC, needs the `cuda-bindings` package) and
`NVCC_APPEND_FLAGS=--no-compress` are set and the target is in scope (nvcc's `-arch` comes from it), so
`tvm.compile` embeds a fatbin with the target's SASS, uncompressed, and `export_library` writes it into
TVM's module blob; `extract_cubins` cuts the CUDA ELFs out of that library and `sass` disassembles one.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tvm
from tvm.target import Target

__all__ = ["CudaToolchainError", "build_cubin", "cuda_build_environment", "extract_cubins", "find_cuobjdump",
           "find_nvcc", "sass"]

EM_CUDA = 190  # e_machine of a CUDA ELF (cubin)
SHT_NOBITS = 8  # a section with no bytes in the file (.bss, .nv.shared.*)
_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ibert_tvm"
#: The driver entry points libtvm_runtime_cuda.so links (`nm -D --undefined-only`, TVM 0.27), none called
#: while compiling.
_STUB_SOURCE = """\
/* libcuda.so.1 stand-in (ibert_tvm.cuda_toolchain): lets TVM's CUDA runtime load without a driver. */
#define CUDA_ERROR_NO_DEVICE 100
int cuDeviceGetName(void) { return CUDA_ERROR_NO_DEVICE; }
int cuFuncSetAttribute(void) { return CUDA_ERROR_NO_DEVICE; }
int cuGetErrorName(int e, const char **s) { *s = "CUDA_ERROR_NO_DEVICE"; return 0; }
int cuGetErrorString(int e, const char **s) { *s = "no CUDA driver (ibert_tvm build stub)"; return 0; }
int cuLaunchKernelEx(void) { return CUDA_ERROR_NO_DEVICE; }
int cuModuleGetFunction(void) { return CUDA_ERROR_NO_DEVICE; }
int cuModuleLoadData(void) { return CUDA_ERROR_NO_DEVICE; }
int cuModuleUnload(void) { return CUDA_ERROR_NO_DEVICE; }
int cuTensorMapEncodeTiled(void) { return CUDA_ERROR_NO_DEVICE; }
"""


class CudaToolchainError(RuntimeError):
    """A tool or library the CUDA build needs is missing (the message names it and how to get it)."""


def find_nvcc() -> str:
    """The path of nvcc on PATH; raises CudaToolchainError naming it when it is missing."""
    path = shutil.which("nvcc")
    if path is None:
        raise CudaToolchainError("nvcc, the CUDA toolkit's compiler, is not on PATH; it compiles the CUDA "
                                 "kernels to a cubin (install the CUDA toolkit and add its bin/ to PATH)")
    return path


def find_cuobjdump() -> str:
    """cuobjdump from PATH, else from the `nvidia-cuda-cuobjdump` wheel; CudaToolchainError when neither has it."""
    path = shutil.which("cuobjdump")
    spec = importlib.util.find_spec("nvidia")
    wheels = [Path(p) for p in spec.submodule_search_locations] if spec and spec.submodule_search_locations else []
    found = [path] if path else [str(p) for d in wheels for p in sorted(d.glob("*/bin/cuobjdump"))]
    if not found:
        raise CudaToolchainError("cuobjdump is not on PATH and the nvidia-cuda-cuobjdump package is not "
                                 "installed (pip install nvidia-cuda-cuobjdump); it disassembles cubins to SASS")
    return found[0]


def _cuda_runtime_loaded() -> bool:
    """Whether TVM's CUDA runtime library is loaded in this process (what makes codegen emit binaries)."""
    return "tvm_runtime_cuda" in tvm.base._LOADED_LIBS


def _stub_library() -> Path:
    """The stub libcuda.so.1, compiled with the system C compiler on first use, cached by its source."""
    digest = hashlib.sha256(_STUB_SOURCE.encode()).hexdigest()[:12]
    lib = _CACHE / f"cuda-stub-{digest}" / "libcuda.so.1"
    if lib.exists():
        return lib
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise CudaToolchainError("no CUDA driver here, and no C compiler (cc or gcc on PATH) to build the "
                                 "libcuda.so.1 stand-in that lets TVM embed cubins without one")
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        src, out = Path(tmp) / "stub.c", Path(tmp) / "libcuda.so.1"
        src.write_text(_STUB_SOURCE)
        subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(out), str(src)],
                       check=True, capture_output=True)
        out.replace(lib)  # atomic: a concurrent build leaves one complete file
    return lib


def _load_cuda_runtime() -> None:
    """Load libtvm_runtime_cuda.so, preceded by the driver stub only when no libcuda.so.1 loads."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        ctypes.CDLL(str(_stub_library()), mode=ctypes.RTLD_GLOBAL)  # satisfies the runtime's DT_NEEDED by soname
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    runtime_dir = Path(tvm.base._LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    try:
        from tvm_ffi.libinfo import load_lib_ctypes

        tvm.base._LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")
    except (OSError, RuntimeError) as err:
        raise CudaToolchainError(f"TVM's CUDA runtime (libtvm_runtime_cuda.so) does not load: {err}; it needs "
                                 "the CUDA runtime library libcudart.so.13 (CUDA toolkit 13) on the loader's "
                                 "path") from err


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextlib.contextmanager
def cuda_build_environment(target: Target | str) -> Iterator[Target]:
    """Inside it, `tvm.compile` for the CUDA `target` embeds real cubins (for its `arch`), GPU or not.

    Yields the target (in scope). Raises CudaToolchainError naming nvcc, the C compiler or libcudart when
    one is missing.
    """
    target = Target(target) if isinstance(target, str) else target
    if target.kind.name != "cuda" or not str(target.attrs.get("arch", "")).startswith("sm_"):
        raise ValueError(f"a CUDA target with an sm_XX arch is needed, got {target}")
    find_nvcc()
    if not _cuda_runtime_loaded():
        _load_cuda_runtime()
    flags = " ".join(filter(None, [os.environ.get("NVCC_APPEND_FLAGS"), "--no-compress"]))
    with _environ(TVM_CUDA_COMPILE_MODE="nvcc", NVCC_APPEND_FLAGS=flags), target:
        yield target


def _elf_size(data: bytes, start: int) -> int:
    """The byte length of the 64-bit little-endian ELF at `start`: the end of its last header table or section."""
    phoff, shoff = struct.unpack_from("<QQ", data, start + 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, start + 0x36)
    ends = [phoff + phentsize * phnum, shoff + shentsize * shnum]
    for i in range(shnum):
        sh_type, = struct.unpack_from("<I", data, start + shoff + i * shentsize + 4)
        offset, size = struct.unpack_from("<QQ", data, start + shoff + i * shentsize + 0x18)
        ends.append(offset + (0 if sh_type == SHT_NOBITS else size))
    return max(ends)


def extract_cubins(library: str | os.PathLike | bytes) -> list[bytes]:
    """The CUDA ELFs (cubins, e_machine 190) embedded in an exported library (a path or its bytes), in order."""
    data = bytes(library) if isinstance(library, (bytes, bytearray)) else Path(library).read_bytes()
    cubins, pos = [], data.find(b"\x7fELF", 1)  # skip the host library's own header
    while pos >= 0:
        try:
            is_cuda = data[pos + 4:pos + 6] == b"\x02\x01" and struct.unpack_from("<H", data, pos + 0x12)[0] == EM_CUDA
            size = _elf_size(data, pos) if is_cuda else 0
        except struct.error:  # the magic bytes inside other data, headers running past the end
            is_cuda, size = False, 0
        if is_cuda and pos + size <= len(data):
            cubins.append(data[pos:pos + size])
        pos = data.find(b"\x7fELF", pos + max(size, 1))
    return cubins


def sass(cubin: bytes) -> str:
    """The SASS listing of a cubin (`cuobjdump -sass`; begins with the arch, e.g. 'code for sm_75')."""
    tool = find_cuobjdump()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernels.cubin"
        path.write_bytes(cubin)
        done = subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def build_cubin(mod: tvm.IRModule, target: Target | str, **schedule_options: Any) -> bytes:
    """Compile an ibert program with the integer pipeline for a CUDA target; return its kernels' one cubin.

    The library is exported to a temporary file and the cubin cut out of it, exactly what a deployed
    `model.so` carries. Needs nvcc; no GPU, no CUDA driver.
    """
    from ibert_tvm.relay_passes.pipeline import build  # lazily: the pipeline imports the compiler passes

    with cuda_build_environment(target) as target, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lib.so"
        build(mod, target, **schedule_options).export_library(str(path))
        cubins = extract_cubins(path)
    if len(cubins) != 1:
        raise RuntimeError(f"expected one cubin in the exported library, found {len(cubins)}")
    return cubins[0]
