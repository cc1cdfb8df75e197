"""Every `ibert.*` operator builds for CUDA sm_75 (NVIDIA T4) with the default schedule, into a real cubin.

The integer pipeline builds each op inside `cuda_build_environment`, and the cubin is cut out of the
exported library (`cuda_toolchain.build_cubin`). Needs nvcc only (no GPU, no CUDA driver library); skipped
when nvcc is not on PATH. The cubin is checked by reading its ELF header and symbol table here,
independently of TVM and of nvcc's own tools.
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax, tirx

from ibert_tvm import cuda_toolchain, ops, quant
from ibert_tvm.build_util import single_op_module
from ibert_tvm.schedules import cuda
from ibert_tvm.targets import UnknownTargetError, resolve_target

try:
    NVCC = cuda_toolchain.find_nvcc()
except cuda_toolchain.CudaToolchainError as err:
    pytest.skip(f"nvcc not found: {err}", allow_module_level=True)

EM_CUDA = 190
# EI_ABIVERSION of a CUDA ELF: V1 keeps the SM number in e_flags bits 0-7, V2 (CUDA 12.8+ for
# Blackwell, and every cubin of CUDA 13) in bits 8-15 (LLVM BinaryFormat/ELF.h: EF_CUDA_SM,
# EF_CUDA_SM_MASK / EF_CUDA_SM_OFFSET; ELFObjectFileBase::getNVPTXCPUName reads it so).
ELFABIVERSION_CUDA_V1 = 7
STT_FUNC, SHT_SYMTAB = 2, 2


# ------------------------------------------------------------------ CUDA ELF reading


def cuda_sm(elf: bytes) -> int:
    """The SM number (75 for sm_75) of a 64-bit little-endian CUDA ELF; fails on anything else."""
    assert elf[:4] == b"\x7fELF", "not an ELF file"
    assert elf[4] == 2 and elf[5] == 1, "not a 64-bit little-endian ELF"
    (e_machine,) = struct.unpack_from("<H", elf, 0x12)
    assert e_machine == EM_CUDA, f"e_machine is {e_machine}, not {EM_CUDA} (EM_CUDA)"
    (e_flags,) = struct.unpack_from("<I", elf, 0x30)
    return e_flags & 0xFF if elf[8] == ELFABIVERSION_CUDA_V1 else (e_flags >> 8) & 0xFF


def function_symbols(elf: bytes) -> set[str]:
    """Names of the STT_FUNC symbols in the ELF's symbol table (the kernels of a cubin)."""
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    names = set()
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type != SHT_SYMTAB:
            continue
        strtab_offset = sections[link][4]
        for pos in range(offset, offset + size, entsize):
            st_name, st_info = struct.unpack_from("<IB", elf, pos)
            if st_info & 0xF == STT_FUNC:
                end = elf.index(b"\0", strtab_offset + st_name)
                names.add(elf[strtab_offset + st_name:end].decode())
    return names


def test_sm_decoding_matches_nvcc(tmp_path: Path) -> None:
    """The e_flags decoding above gives 75 and 80 for trivial kernels nvcc compiles for sm_75 and sm_80."""
    src = tmp_path / "k.cu"
    src.write_text('extern "C" __global__ void trivial(int* p) { p[threadIdx.x] += 1; }\n')
    for sm in (75, 80):
        out = tmp_path / f"k{sm}.cubin"
        subprocess.run([NVCC, "--cubin", f"-arch=sm_{sm}", "-o", str(out), str(src)], check=True,
                       capture_output=True)
        elf = out.read_bytes()
        assert cuda_sm(elf) == sm
        assert "trivial" in function_symbols(elf)


# ------------------------------------------------------------------ one small BERT-layer-like case per op

B, S, H, FF, HEADS, D = 2, 16, 64, 128, 4, 16  # batch, sequence, hidden, intermediate, heads, head dim
RNG = np.random.default_rng(0)


@dataclass(frozen=True)
class Case:
    op: str  # the ibert.* operator it exercises
    build: Callable[..., relax.Expr]
    inputs: dict[str, np.ndarray]

    @property
    def kernel(self) -> str:
        """TVM names the kernel after the legalized PrimFunc: `ibert_<op>_kernel`."""
        return self.op.replace(".", "_") + "_kernel"


def _cases() -> dict[str, Case]:
    ints = RNG.integers
    x = ints(-128, 128, (B, S, H), dtype=np.int8)
    w = ints(-128, 128, (FF, H), dtype=np.int8)
    bias = ints(-1000, 1000, FF, dtype=np.int32)
    q = ints(-128, 128, (B, HEADS, S, D), dtype=np.int8)
    k = ints(-128, 128, (B, HEADS, S, D), dtype=np.int8)
    probs = ints(0, 257, (B, HEADS, S, S), dtype=np.int16)
    acc = ints(-2**20, 2**20, (B, S, H), dtype=np.int32)
    dq = quant.requant_dyadic(RNG.uniform(1e-5, 1e-4, H).astype(np.float32), 0.05)  # per-channel
    dres = quant.requant_dyadic(0.1, 0.05)
    gelu = quant.gelu_constants(RNG.uniform(5e-6, 2e-5, FF).astype(np.float32))
    s_in = np.float32(2e-3)
    sm = quant.softmax_constants(s_in, quant.symmetric_scale(16, 0, quant.softmax_exp_range(s_in)))
    mask = np.ones((B, 1, 1, S), np.int32)
    mask[0, ..., S // 2:] = 0
    ln = quant.layernorm_constants(RNG.uniform(0.5, 1.5, H), RNG.normal(0, 0.1, H))
    table = ints(-128, 128, (50, H), dtype=np.int8)
    tanh_table = quant.lookup_table(np.tanh, 0.02, float(quant.TANH_OUT_SCALE))
    return {
        "linear": Case("ibert.linear", lambda v: ops.linear(v, w, bias), {"x": x}),
        "matmul_qk": Case("ibert.matmul", lambda a, b: ops.matmul(a, b, transpose_b=True), {"q": q, "k": k}),
        "matmul_pv": Case("ibert.matmul", lambda a, b: ops.matmul(a, b), {"p": probs, "v": k}),
        "requantize_residual": Case(
            "ibert.requantize",
            lambda v, r: ops.requantize(v, dq.multiplier, dq.shift, 22, r, dres.multiplier, dres.shift),
            {"acc": acc, "residual": x}),
        "int_gelu": Case("ibert.int_gelu", lambda v: ops.int_gelu(v, gelu.b_int, gelu.c_int, gelu.q1),
                         {"x": ints(-2**20, 2**20, (B, S, FF), dtype=np.int32)}),
        "int_softmax_mask": Case(
            "ibert.int_softmax",
            lambda v, m: ops.int_softmax(v, sm.x0_int, sm.b_int, sm.c_int, sm.exp_multiplier, sm.exp_shift,
                                         mask=m),
            {"scores": ints(-3000, 3000, (B, HEADS, S, S), dtype=np.int32), "mask": mask}),
        "int_layernorm": Case("ibert.int_layernorm", lambda v: ops.int_layernorm(v, ln.bias_int, 2),
                              {"x": ints(-2**21, 2**21, (B, S, H), dtype=np.int32)}),
        "embedding": Case("ibert.embedding", lambda i: ops.embedding(i, table),
                          {"ids": ints(0, 50, (B, S)).astype(np.int64)}),
        "lookup": Case("ibert.lookup", lambda v: ops.lookup(v, tanh_table),
                       {"x": ints(-128, 128, (B, H), dtype=np.int8)}),
    }


CASES = _cases()


def test_arch_the_installed_nvcc_cannot_compile_is_refused() -> None:
    """`cuda:sm_XX` is refused at resolve_target, in one line naming the archs nvcc lists, where nvcc would fail
    only after code generation (printing the whole CUDA source); an arch it lists resolves, sm_90a included."""
    listed = subprocess.run([NVCC, "--list-gpu-code"], capture_output=True, text=True, check=True).stdout.split()
    sms = sorted(int(code.removeprefix("sm_")) for code in listed if code.startswith("sm_"))
    for arch in ("sm_10", f"sm_{sms[0] - 1}", f"sm_{sms[-1] + 1}", "sm_89a"):
        with pytest.raises(UnknownTargetError) as err:
            resolve_target(f"cuda:{arch}")
        assert str(err.value).startswith(f"CUDA arch '{arch}' is not supported: the installed nvcc compiles "
                                         f"sm_{sms[0]} to sm_{sms[-1]} (")
        assert "\n" not in str(err.value)
    for arch in (f"sm_{sms[0]}", f"sm_{sms[-1]}", *(["sm_90a"] if 90 in sms else [])):
        assert resolve_target(f"cuda:{arch}").features == (arch,)


def test_every_operator_has_a_case() -> None:
    assert {c.op for c in CASES.values()} == set(ops.OPERATORS)


@pytest.mark.parametrize("name", list(CASES))
def test_op_builds_sm75_cubin(name: str) -> None:
    case = CASES[name]
    cubin = cuda_toolchain.build_cubin(single_op_module(case.build, case.inputs), cuda.T4)
    assert cuda_sm(cubin) == 75
    kernels = function_symbols(cubin)
    assert case.kernel in kernels, f"{case.kernel} not among the cubin's functions {sorted(kernels)}"


@pytest.mark.skipif(not tvm.cuda(0).exist, reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(CASES))
def test_op_on_the_gpu_equals_the_cpu(name: str) -> None:
    """Each op built by the integer pipeline for the GPU present runs there to the CPU build's integers (the
    CPU kernels are checked against the exact reference in test_ops_exact.py)."""
    from ibert_tvm.relay_passes.pipeline import build  # lazily, as cuda_toolchain.build_cubin does

    case = CASES[name]
    mod = single_op_module(case.build, case.inputs)
    dev = tvm.cuda(0)
    with cuda_toolchain.cuda_build_environment(resolve_target("cuda").target) as target:
        exe = build(mod, target)
    got = relax.VirtualMachine(exe, dev)["main"](*[tvm.runtime.tensor(a, dev) for a in case.inputs.values()])
    want = relax.VirtualMachine(build(mod, "llvm"), tvm.cpu())["main"](
        *[tvm.runtime.tensor(a) for a in case.inputs.values()])
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_bert_base_linear_builds() -> None:
    """A BERT-base FFN GEMM (M=128, N=3072, K=768) on tensor cores: dlight's own int8 tensor-core branch
    crashes TVM here, the project's schedule (`schedules/cuda_gemm.py`) takes it."""
    x = RNG.integers(-128, 128, (1, 128, 768), dtype=np.int8)
    w = RNG.integers(-128, 128, (3072, 768), dtype=np.int8)
    cubin = cuda_toolchain.build_cubin(single_op_module(lambda v: ops.linear(v, w), {"x": x}), cuda.T4)
    assert cuda_sm(cubin) == 75
    assert "ibert_linear_kernel" in function_symbols(cubin)


def test_schedule_covers_every_primfunc_and_leaves_input_alone() -> None:
    case = CASES["int_layernorm"]
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_75"})
    with target:
        legalized = relax.transform.LegalizeOps()(single_op_module(case.build, case.inputs))
    scheduled = cuda.apply_default_schedule(legalized, target)
    prim = {g.name_hint: f for g, f in scheduled.functions_items() if isinstance(f, tirx.PrimFunc)}
    assert prim and all(f.attrs.get("tirx.is_scheduled", False) for f in prim.values())
    assert not legalized["ibert_int_layernorm"].attrs.get("tirx.is_scheduled", False)
    with pytest.raises(ValueError, match="CUDA target"):
        cuda.apply_default_schedule(legalized, "llvm")


def test_schedule_refuses_a_module_legalized_for_a_cpu() -> None:
    """A LayerNorm legalized without a CUDA target keeps its square root's stages apart, which dlight would
    inline into one another (3^7 terms, a build that does not end): refused, saying how to legalize."""
    case = CASES["int_layernorm"]
    legalized = relax.transform.LegalizeOps()(single_op_module(case.build, case.inputs))
    with pytest.raises(ValueError, match="ibert_int_layernorm was legalized for a CPU.*legalize under the CUDA"):
        cuda.apply_default_schedule(legalized, tvm.target.Target({"kind": "cuda", "arch": "sm_75"}))
