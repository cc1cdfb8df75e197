"""Cross-compiling for the aarch64 targets: the toolchain, the aarch64 TVM runtime, and runs under qemu.

A library exported for `aarch64` / `aarch64-neon` runs on an aarch64 Linux with nothing but TVM's runtime
library (`libtvm_runtime.so` + `libtvm_ffi.so`). Those come from the aarch64 wheels of the very versions of
`apache-tvm` and `apache-tvm-ffi` installed here (`pip download`, cached under `~/.cache/ibert_tvm`), so the
runtime always matches the compiler that made the library. On this x86 machine the aarch64 program runs
under user-mode qemu with the cross toolchain's sysroot. Command line, used by `examples/cpp/Makefile`:

    python -m ibert_tvm.cross runtime-dir    # prints the folder holding the aarch64 runtime libraries
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

import tvm
from tvm.support import cc

from .targets import TargetSpec

__all__ = ["AARCH64_SYSROOT", "TOOLCHAIN_PACKAGES", "ToolchainMissingError", "aarch64_runtime", "export",
           "require_tool", "run_aarch64"]

#: The Debian packages that provide the cross compiler, binutils and user-mode qemu.
TOOLCHAIN_PACKAGES = ("gcc-aarch64-linux-gnu", "g++-aarch64-linux-gnu", "qemu-user")
#: Where Debian's cross toolchain keeps the aarch64 C/C++ runtime (qemu's -L).
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"
#: The manylinux tag of the aarch64 wheels of apache-tvm 0.27 and apache-tvm-ffi 0.1.14 (none for manylinux2014).
_WHEEL_PLATFORM = "manylinux_2_28_aarch64"
#: Distribution -> the members of its aarch64 wheel kept (flat) in the runtime folder.
_RUNTIME_FILES = {"apache-tvm": ("tvm/lib/libtvm_runtime.so",), "apache-tvm-ffi": ("tvm_ffi/lib/libtvm_ffi.so",)}


class ToolchainMissingError(RuntimeError):
    """A program of the aarch64 cross toolchain (or qemu) is not installed."""


def require_tool(name: str) -> str:
    """The path of `name` (e.g. aarch64-linux-gnu-g++, qemu-aarch64); raises naming the Debian packages."""
    path = shutil.which(name)
    if path is None:
        raise ToolchainMissingError(
            f"{name} is not installed; the aarch64 targets need the Debian packages {' '.join(TOOLCHAIN_PACKAGES)} "
            f"(`make .venv/.installed-toolchains` as root, or apt-get install {' '.join(TOOLCHAIN_PACKAGES)})")
    return path


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ibert_tvm"


def aarch64_runtime(cache_dir: str | Path | None = None) -> Path:
    """The folder holding aarch64 `libtvm_runtime.so` and `libtvm_ffi.so` matching the installed TVM.

    Downloaded once with `pip download` from the aarch64 wheels (about 100 MB, only the two libraries are
    kept) and cached per version pair; raises RuntimeError with pip's output when the download fails.
    """
    versions = {dist: metadata.version(dist) for dist in _RUNTIME_FILES}
    folder = Path(cache_dir) if cache_dir else _cache_root() / (
        f"aarch64-runtime-tvm{versions['apache-tvm']}-ffi{versions['apache-tvm-ffi']}")
    wanted = [Path(m).name for members in _RUNTIME_FILES.values() for m in members]
    if all((folder / name).is_file() for name in wanted):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        wheels, staging = Path(tmp) / "wheels", Path(tmp) / "runtime"
        staging.mkdir()
        _download_wheels(versions, wheels)
        for wheel in wheels.glob("*.whl"):
            dist = "apache-tvm-ffi" if wheel.name.startswith("apache_tvm_ffi") else "apache-tvm"
            with zipfile.ZipFile(wheel) as zf:
                for member in _RUNTIME_FILES[dist]:
                    (staging / Path(member).name).write_bytes(zf.read(member))
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)  # the folder appears complete or not at all
    return folder


def _download_wheels(versions: dict[str, str], dest: Path) -> None:
    """`pip download` the aarch64 wheels of `versions` (dist -> version) into `dest`."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform", _WHEEL_PLATFORM,
           "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}", "-d", str(dest),
           *(f"{dist}=={v}" for dist, v in versions.items())]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"downloading the aarch64 TVM runtime failed ({' '.join(cmd)}):\n{done.stdout}{done.stderr}")


def export(exe: tvm.runtime.Executable, path: str | Path, spec: TargetSpec) -> Path:
    """Write `exe` as a shared library at `path`, with the spec's cross compiler where it has one."""
    path = Path(path)
    fcompile = cc.cross_compiler(require_tool(spec.cross_compiler)) if spec.cross_compiler else None
    exe.export_library(str(path), fcompile=fcompile)
    return path


def run_aarch64(argv: list[str], cpu: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run an aarch64 Linux program under qemu-aarch64 (emulating `cpu`, e.g. cortex-a53; default: max)."""
    qemu = require_tool("qemu-aarch64")
    cmd = [qemu, *(["-cpu", cpu] if cpu else []), "-L", AARCH64_SYSROOT, *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _main(args: list[str]) -> int:
    """`runtime-dir`: fetch (if needed) and print the aarch64 runtime folder."""
    if args != ["runtime-dir"]:
        print("usage: python -m ibert_tvm.cross runtime-dir", file=sys.stderr)
        return 2
    print(aarch64_runtime())
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
