"""The int8 GEMMs of an exported T4 library run on INT8 tensor cores (IMMA) or dp4a, checked in its SASS.

No GPU is needed: `cuda_build_environment` makes `tvm.compile` embed an sm_75 cubin (nvcc, and a stand-in
for the CUDA driver library where none is installed), `extract_cubins` cuts it out of the exported library
and `cuobjdump` disassembles it. What a GPU would add, running the kernels, is replaced here by replaying
each GEMM schedule on the CPU without its GPU-only steps (thread bindings, tensorization, fragment scopes)
and comparing with the unscheduled build: that checks the tiling, the padding of shapes the tiles do not
divide and the fused epilogue, not the WMMA / dp4a instructions themselves (TVM proves each tensorized tile
equal to the intrinsic's description when it tensorizes) nor the barriers between threads. Where a GPU is
present, `test_gemm_kernels_match_the_cpu_on_the_gpu` runs the kernels (built for that GPU's arch).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax, s_tir, tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
from tvm.s_tir import dlight as dl
from tvm.s_tir.schedule import Instruction, Trace

from ibert_tvm import cuda_toolchain, ops, quant
from ibert_tvm.build_util import single_op_module
from ibert_tvm.relay_passes.pipeline import build, tunable_module
from ibert_tvm.schedules import cuda, cuda_gemm
from ibert_tvm.targets import resolve_target

try:
    cuda_toolchain.find_nvcc()
except cuda_toolchain.CudaToolchainError as err:
    pytest.skip(str(err), allow_module_level=True)

T4 = resolve_target("t4").target
RNG = np.random.default_rng(7)
# Shapes no tile divides: linear M = 2 * 20, N = 72, K = 48; attention 2 x 2 heads, 20 tokens, head dim 24.
B, S, H, N, HEADS, D = 2, 20, 48, 72, 2, 24
INPUTS = {"x": RNG.integers(-128, 128, (B, S, H), dtype=np.int8),
          "q": RNG.integers(-128, 128, (B, HEADS, S, D), dtype=np.int8),
          "k": RNG.integers(-128, 128, (B, HEADS, S, D), dtype=np.int8),
          "p": RNG.integers(0, 257, (B, HEADS, S, S), dtype=np.int16),
          "v": RNG.integers(-128, 128, (B, HEADS, S, D), dtype=np.int8)}


def _program() -> tvm.IRModule:
    """main(x, q, k, p, v) = (requantize(linear(x) + bias), Q.K^T, P.V): the three GEMM kinds of a layer."""
    w = RNG.integers(-128, 128, (N, H), dtype=np.int8)
    bias = RNG.integers(-5000, 5000, N, dtype=np.int32)
    dq = quant.requant_dyadic(RNG.uniform(2e-5, 1e-4, N).astype(np.float32), 0.05)

    def gemms(x, q, k, p, v):
        linear = ops.requantize(ops.linear(x, w, bias), dq.multiplier, dq.shift, 8)
        return relax.Tuple([linear, ops.matmul(q, k, transpose_b=True), ops.matmul(p, v)])

    return single_op_module(gemms, INPUTS)


PROGRAM = _program()


def _kernels() -> dict[str, str]:
    """role ('linear', 'qk', 'pv') -> name of its PrimFunc after the pipeline's fusion, for reading the SASS."""
    roles = {}
    for binding in tunable_module(PROGRAM, T4)["main"].body.blocks[0].bindings:
        call = binding.value
        if isinstance(call, relax.Call) and call.op.same_as(tvm.ir.Op.get("relax.call_tir")):
            args = {a.name for a in call.args[1].fields if isinstance(a, relax.Var)}
            role = "linear" if "x" in args else "pv" if "p" in args else "qk"
            roles[role] = call.args[0].name_hint
    return roles


KERNELS = _kernels()


@dataclass(frozen=True)
class Library:
    """An exported T4 library and the CUDA source its kernels were compiled from (kept by the built module)."""

    path: Path
    cuda_source: str

    def sass(self) -> dict[str, str]:
        """{GEMM role: the SASS of its kernel}, from the one cubin in the library."""
        (cubin,) = cuda_toolchain.extract_cubins(self.path)
        listing = {part.split()[0]: part for part in cuda_toolchain.sass(cubin).split("Function : ")[1:]}
        return {role: listing[f"{name}_kernel"] for role, name in KERNELS.items()}


@pytest.fixture(scope="module")
def libraries(tmp_path_factory) -> dict[str, Library]:
    """The program built for the T4 with each tensorized GEMM variant and exported: {gemm: Library}."""
    out = {}
    with cuda_toolchain.cuda_build_environment(T4) as target:
        for gemm in ("imma", "dp4a"):
            path = tmp_path_factory.mktemp(gemm) / "lib.so"
            exe = build(PROGRAM, target, gemm=gemm)
            exe.export_library(str(path))
            out[gemm] = Library(path, next(m for m in _module_tree(exe.mod) if m.kind == "cuda").inspect_source())
    return out


def _module_tree(mod: tvm.runtime.Module) -> Iterator[tvm.runtime.Module]:
    """`mod` and every module it imports, depth first."""
    yield mod
    for sub in mod.imports:
        yield from _module_tree(sub)


def test_exported_library_embeds_an_sm75_cubin_not_source(libraries):
    for gemm, library in libraries.items():
        data = library.path.read_bytes()
        cubins = cuda_toolchain.extract_cubins(data)
        assert len(cubins) == 1, f"{gemm}: {len(cubins)} cubins in the exported library"
        assert cuda_toolchain.extract_cubins(library.path) == cubins  # a path reads the same
        listing = cuda_toolchain.sass(cubins[0])
        assert "code for sm_75" in listing
        assert sorted(re.findall(r"Function : (\S+)", listing)) == sorted(f"{n}_kernel" for n in KERNELS.values())
        assert b"__global__" not in data, "the library carries CUDA source"


def test_imma_gemms_run_on_int8_tensor_cores(libraries, report):
    sass = libraries["imma"].sass()
    for role in ("linear", "qk"):
        assert "IMMA.8816.S8.S8" in sass[role], f"{role}: no IMMA in its SASS"
    assert "IMMA" not in sass["pv"]  # int16 probabilities: SIMT
    count = sum(len(re.findall(r"\bIMMA\.", sass[r])) for r in ("linear", "qk"))
    report(f"gemm='imma', T4 cubin: {count} IMMA.8816.S8.S8 in the linear and Q.K^T kernels; P.V (int16) SIMT")


def test_dp4a_gemms_use_dp4a(libraries):
    sass = libraries["dp4a"].sass()
    for role in ("linear", "qk"):
        assert "IDP.4A.S8.S8" in sass[role], f"{role}: no IDP.4A.S8.S8 in its SASS"
        assert "IMMA" not in sass[role]
    # ptxas also forms IDP.4A from plain int8 multiply-adds: the source shows the schedule asked for dp4a
    assert libraries["dp4a"].cuda_source.count("__dp4a(") > libraries["imma"].cuda_source.count("__dp4a(")


# ------------------------------------------------------------------ the schedules' arithmetic, on the CPU


def _first_schedule(func: tirx.PrimFunc, gemm: str) -> tuple[dl.ScheduleRule, s_tir.Schedule] | None:
    """(rule, schedule) of the first default rule that schedules `func` (as ApplyDefaultSchedule picks)."""
    for rule in cuda.default_rules(T4, gemm):
        sch = rule.apply(func, T4, False)
        if sch is not None:
            return rule, sch
    return None


def _cpu_replay(func: tirx.PrimFunc, trace: Trace) -> tirx.PrimFunc:
    """`trace` replayed on `func` without thread bindings and tensorization, WMMA fragments as local buffers."""
    insts = []
    for inst in trace.insts:
        name = inst.kind.name
        if name in ("Bind", "Tensorize"):
            continue
        attrs = list(inst.attrs)
        if name in ("CacheRead", "CacheWrite") and str(attrs[1]).startswith("wmma."):
            inst = Instruction(inst.kind, inst.inputs, [attrs[0], "local", *attrs[2:]], inst.outputs)
        insts.append(inst)
    sch = s_tir.Schedule(func)
    Trace(insts, {}).apply_to_schedule(sch, remove_postproc=True)
    return sch.mod["main"]


def _run_on_cpu(mod: tvm.IRModule) -> list[np.ndarray]:
    """Lower (no scheduling), compile for llvm and run `main` on INPUTS."""
    llvm = tvm.target.Target("llvm")
    with llvm:
        lowered = tvm.transform.Sequential([*cpu_pipeline.dataflow_lower_passes(llvm),
                                            *cpu_pipeline.finalize_passes(llvm)])(mod)
    vm = relax.VirtualMachine(tvm.compile(lowered, target=llvm, relax_pipeline=None), tvm.cpu())
    return [t.numpy() for t in vm["main"](*[tvm.runtime.tensor(a) for a in INPUTS.values()])]


@pytest.mark.parametrize("gemm", ["imma", "dp4a"])
def test_gemm_schedules_compute_the_unscheduled_result(gemm):
    """Each GEMM PrimFunc replaced by its schedule (replayed for the CPU) gives the same bits as unscheduled."""
    fused = tunable_module(PROGRAM, T4)
    replayed, rules = fused.clone(), {}
    for gvar, func in fused.functions_items():
        if isinstance(func, tirx.PrimFunc) and (picked := _first_schedule(func, gemm)) is not None:
            rules[gvar.name_hint] = type(picked[0]).__name__
            replayed[gvar] = _cpu_replay(func, picked[1].trace)
    expected = {"imma": "TensorCoreMatmul", "dp4a": "Dp4aMatmul"}[gemm]
    assert rules == {KERNELS["linear"]: expected, KERNELS["qk"]: expected, KERNELS["pv"]: "SimtMatmul"}
    for got, want in zip(_run_on_cpu(replayed), _run_on_cpu(fused)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not tvm.cuda(0).exist, reason="needs a CUDA GPU")
@pytest.mark.parametrize("gemm", ["imma", "dp4a"])
def test_gemm_kernels_match_the_cpu_on_the_gpu(gemm):
    dev = tvm.cuda(0)
    with cuda_toolchain.cuda_build_environment(resolve_target("cuda").target) as target:
        exe = build(PROGRAM, target, gemm=gemm)
    got = relax.VirtualMachine(exe, dev)["main"](*[tvm.runtime.tensor(a, dev) for a in INPUTS.values()])
    for out, want in zip(got, _run_on_cpu(tunable_module(PROGRAM, T4))):
        np.testing.assert_array_equal(out.numpy(), want)


# ------------------------------------------------------------------ variants, build environment, tuning space


def test_gemm_variant_follows_the_arch():
    assert [cuda.default_gemm(tvm.target.Target({"kind": "cuda", "arch": a})) for a in ("sm_75", "sm_86", "sm_61",
                                                                                          "sm_52")] == \
        ["imma", "imma", "dp4a", "simt"]
    legalized = tunable_module(PROGRAM, T4)
    with pytest.raises(ValueError, match="gemm='imma' needs sm_72"):
        cuda.apply_default_schedule(legalized, tvm.target.Target({"kind": "cuda", "arch": "sm_61"}), gemm="imma")
    with pytest.raises(ValueError, match="unknown gemm variant 'wmma'"):
        cuda.apply_default_schedule(legalized, T4, gemm="wmma")


def test_small_wmma_tiles_build():
    """Tiles where TVM's StorageRewrite would give the int32 accumulator tile an int8 tile's shared memory
    (then failing on the WMMA store) when both are staged in one scope: built by the tuning builder."""

    class SmallTiles(cuda_gemm.TensorCoreMatmul):
        warps, fragments, k_fragments = (1, 1), (1, 1), 4

    w = np.ones((32, 128), np.int8)  # 16x64 int8 operand tiles (1 KiB) beside a 16x16 int32 tile (1 KiB)
    fused = tunable_module(single_op_module(lambda v: ops.linear(v, w), {"x": np.zeros((32, 128), np.int8)}), T4)
    gemm = next(f for f in fused.functions.values() if isinstance(f, tirx.PrimFunc))
    mod = tvm.IRModule({"main": SmallTiles().apply(gemm, T4, False).mod["main"].with_attr("global_symbol", "main")})
    assert "IMMA" in cuda_toolchain.sass(_cubin_of(cuda.build_candidate(mod, T4)))


def _cubin_of(module: tvm.runtime.Module) -> bytes:
    """The one cubin of a built module with CUDA kernels, through an exported library."""
    with tempfile.TemporaryDirectory() as tmp:
        module.export_library(f"{tmp}/lib.so")
        (cubin,) = cuda_toolchain.extract_cubins(f"{tmp}/lib.so")
    return cubin


def test_driver_stub_is_not_used_where_a_driver_loads(tmp_path):
    """With a libcuda.so.1 on the loader path (a stand-in 'driver' here) the stub is neither built nor loaded."""
    driver = tmp_path / "driver"
    driver.mkdir()
    (driver / "driver.c").write_text(cuda_toolchain._STUB_SOURCE)
    subprocess.run([shutil.which("cc") or "gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1",
                    "-o", str(driver / "libcuda.so.1"), str(driver / "driver.c")], check=True)
    script = ("import importlib.util, sys\n"  # the module alone: the package would import torch too
              f"spec = importlib.util.spec_from_file_location('cuda_toolchain', {cuda_toolchain.__file__!r})\n"
              "cuda_toolchain = importlib.util.module_from_spec(spec)\n"
              "spec.loader.exec_module(cuda_toolchain)\n"
              "with cuda_toolchain.cuda_build_environment('nvidia/nvidia-t4'):\n"
              "    print([l.split()[-1] for l in open('/proc/self/maps') if 'libcuda.so' in l][0])\n")
    env = {**os.environ, "LD_LIBRARY_PATH": str(driver), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(driver / "libcuda.so.1")
    assert not (tmp_path / "cache").exists()


def test_extract_cubins_finds_none_in_a_host_library(tmp_path):
    path = tmp_path / "host.so"
    mod = single_op_module(lambda v: ops.linear(v, INPUTS["x"][0, :16]), {"x": INPUTS["x"]})
    tvm.compile(relax.transform.LegalizeOps()(mod), "llvm").export_library(str(path))
    assert cuda_toolchain.extract_cubins(path) == []


def test_missing_cuobjdump_is_named(monkeypatch):
    monkeypatch.setattr(cuda_toolchain.shutil, "which", lambda _name: None)
    monkeypatch.setattr(cuda_toolchain.importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(cuda_toolchain.CudaToolchainError, match="nvidia-cuda-cuobjdump"):
        cuda_toolchain.sass(b"")


def test_tuning_space_is_a_union_of_tensor_core_and_dp4a_spaces():
    from tvm.s_tir import meta_schedule as ms

    space = cuda.tuning_space(T4)
    assert set(space) == {"space"} and isinstance(space["space"], ms.space_generator.SpaceGeneratorUnion)
    older = cuda.tuning_space(tvm.target.Target({"kind": "cuda", "arch": "sm_61"}))["space"]
    assert isinstance(older, ms.space_generator.SpaceGeneratorUnion)
