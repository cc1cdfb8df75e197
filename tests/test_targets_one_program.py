"""One model, three targets: the tiny 2-layer RoBERTa of tests/test_cpp_example.py compiled by
`ibert_tvm.compile` for `llvm`, `t4` and `aarch64` from the same quantized model and exported. The t4 library
embeds a real sm_75 cubin whose GEMMs run on INT8 tensor cores; the aarch64 one is an aarch64 ELF (it runs,
identical to the host build, in tests/test_aarch64.py). Needs nvcc and cuobjdump (skipped naming them)."""

from __future__ import annotations

import pytest

from ibert_tvm import cuda_toolchain
from test_cpp_example import compiled

EM_AARCH64, EM_X86_64 = 183, 62

try:
    cuda_toolchain.find_nvcc()
    cuda_toolchain.find_cuobjdump()
except cuda_toolchain.CudaToolchainError as err:
    pytest.skip(str(err), allow_module_level=True)


def _machine(path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    return int.from_bytes(header[18:20], "little")


def test_one_model_exports_for_llvm_t4_and_aarch64(tmp_path, report):
    paths = {name: compiled(name).export(tmp_path / f"tiny_{name}.so") for name in ("llvm", "t4", "aarch64")}
    assert _machine(paths["llvm"]) == EM_X86_64 and _machine(paths["aarch64"]) == EM_AARCH64
    (cubin,) = cuda_toolchain.extract_cubins(paths["t4"])
    sass = cuda_toolchain.sass(cubin)
    assert "code for sm_75" in sass
    imma = sass.count("IMMA.8816.S8.S8")
    assert imma > 0, "no INT8 tensor-core instruction in the t4 build of the whole model"
    report(f"tiny 2-layer RoBERTa from one quantized model: llvm (x86-64), aarch64 and t4 libraries exported; "
           f"the t4 cubin is sm_75 with {imma} IMMA.8816.S8.S8")
