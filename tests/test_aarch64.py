"""The aarch64 targets end to end, on a tiny 2-layer RoBERTa: the `aarch64` export is an aarch64 ELF whose int8
GEMM kernels use `sdot`; the C++ driver (examples/cpp), cross-built against the aarch64 TVM runtime, runs it
under qemu-aarch64 with outputs identical to the host build; a CPU without the dot product (Cortex-A53) stops
it with an illegal instruction, while the `aarch64-neon` export runs there, without `sdot`, and agrees.

Needs the Debian packages gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu and qemu-user (the Makefile installs
them): without them these tests fail naming the packages.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ibert_tvm import cross
from test_cpp_example import build_driver, compiled, parse_output, python_vm_output, tiny_case, write_inputs

EM_AARCH64 = 183  # ELF e_machine
#: The int8 GEMM kernels of the tiny program: every linear (with its fused epilogue) and Q.K^T.
GEMM_KERNEL = re.compile(r"ibert_linear|^ibert_matmul$")


@pytest.fixture(scope="module")
def toolchain() -> dict[str, str]:
    """The cross compiler, objdump and qemu; missing ones fail the tests with the Debian package names."""
    return {tool: cross.require_tool(tool) for tool in
            ("aarch64-linux-gnu-g++", "aarch64-linux-gnu-objdump", "qemu-aarch64")}


@pytest.fixture(scope="module")
def device(toolchain, tmp_path_factory) -> dict[str, Path]:
    """The cross-built driver, the input file, and the tiny program exported for aarch64 and aarch64-neon."""
    folder = tmp_path_factory.mktemp("aarch64")
    _, ids, mask = tiny_case()
    out = {"driver": build_driver("aarch64", folder / "build"), "inputs": write_inputs(folder / "in.txt", ids, mask)}
    for name in ("aarch64", "aarch64-neon"):
        out[name] = compiled(name).export(folder / f"tiny_{name}.so")
    return out


def _run(device: dict[str, Path], library: str, cpu: str | None = None) -> subprocess.CompletedProcess:
    return cross.run_aarch64([device["driver"], device[library], device["inputs"], "5"], cpu=cpu)


def _sdot_per_kernel(disassembly: str) -> dict[str, int]:
    """{PrimFunc: number of sdot instructions} from `objdump -d` output, over all symbols TVM makes of it
    (`__tvm_ffi_<name>` the packed wrapper, `<name>_compute_...` the body)."""
    counts: dict[str, int] = {}
    kernel = None
    for line in disassembly.splitlines():
        if header := re.match(r"^[0-9a-f]+ <(.+)>:$", line):
            kernel = re.sub(r"^__tvm_ffi_|_compute_.*$", "", header.group(1))
            counts.setdefault(kernel, 0)
        elif kernel is not None and re.search(r"\tsdot\t", line):
            counts[kernel] += 1
    return counts


def test_export_is_aarch64_elf_with_sdot_in_every_gemm_kernel(device, toolchain):
    header = device["aarch64"].read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == EM_AARCH64
    counts = _sdot_per_kernel(subprocess.run([toolchain["aarch64-linux-gnu-objdump"], "-d", device["aarch64"]],
                                               capture_output=True, text=True, check=True).stdout)
    gemms = {f: n for f, n in counts.items() if GEMM_KERNEL.search(f)}
    assert len(gemms) >= 5 and all(gemms.values()), f"GEMM kernels without sdot: {gemms}"


def test_runs_under_qemu_identical_to_host(device, report):
    done = _run(device, "aarch64")
    assert done.returncode == 0, done.stderr
    out, ms = parse_output(done.stdout)
    np.testing.assert_array_equal(out, python_vm_output())
    report(f"aarch64 (sdot) build of the tiny 2-layer RoBERTa under qemu-aarch64 via examples/cpp: identical to the "
           f"host build on all {out.size} outputs; {ms:.1f} ms per call (emulated, not a device timing)")


def test_dot_product_build_needs_a_dotprod_cpu_and_neon_build_does_not(device, toolchain):
    """Cortex-A53 (ARMv8.0) has no sdot: the aarch64 build dies with SIGILL, the aarch64-neon one runs and agrees."""
    dies = _run(device, "aarch64", cpu="cortex-a53")
    assert dies.returncode != 0 and "Illegal instruction" in dies.stderr, (dies.returncode, dies.stderr)
    runs = _run(device, "aarch64-neon", cpu="cortex-a53")
    assert runs.returncode == 0, runs.stderr
    np.testing.assert_array_equal(parse_output(runs.stdout)[0], python_vm_output())
    disassembly = subprocess.run([toolchain["aarch64-linux-gnu-objdump"], "-d", device["aarch64-neon"]],
                                 capture_output=True, text=True, check=True).stdout
    assert not any(_sdot_per_kernel(disassembly).values())
