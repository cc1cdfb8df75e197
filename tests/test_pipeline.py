"""`integer_pipeline` / `build` on a tiny 2-layer RoBERTa program: bit-identical to the unfused LegalizeOps +
compile path, requantize fused into the GEMMs producing it (only where the accumulator has no other
consumer), numbered IR dumps, the verify phase stopping a float, and the untuned llvm latency of both."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax, tirx

from ibert_tvm import ops, quant
from ibert_tvm.model import from_pretrained
from ibert_tvm.relay_passes.fuse_requantize import FuseRequantize
from ibert_tvm.relay_passes.pipeline import PHASES, build, integer_pipeline, tunable_module
from ibert_tvm.relay_passes.verify_integer_only import FloatOpError
from test_model import batches, program_inputs, tiny

BATCH, SEQ = 2, 16
GEMM = re.compile(r"ibert_(linear|matmul)\d*$")  # a GEMM PrimFunc that nothing was fused into


@pytest.fixture(scope="module")
def tiny_program():
    """(program, its [ids, mask, types] inputs) of a calibrated 2-layer RoBERTa; the batch has padding."""
    qm = from_pretrained(tiny("roberta"), calibration=batches(1, 2, 2, SEQ, seed=1))
    b = batches(1, 1, BATCH, SEQ, seed=5)[0]
    return qm.program(BATCH, SEQ), program_inputs(b)


@pytest.fixture(scope="module")
def built(tiny_program, tmp_path_factory):
    """The program compiled both ways, and the fused build's dump folder."""
    mod, _ = tiny_program
    dump = tmp_path_factory.mktemp("ir")
    unfused = tvm.compile(relax.transform.LegalizeOps()(mod), "llvm")
    return {"unfused": unfused, "fused": build(mod, "llvm", dump_dir=str(dump)), "dump": dump}


def _calls(mod: tvm.IRModule) -> list[tuple[relax.Var, str, list[relax.Expr]]]:
    """(bound var, callee PrimFunc name, args) of each call_tir in `main`, in program order."""
    out = []
    for block in mod["main"].body.blocks:
        for bind in block.bindings:
            v = bind.value
            if isinstance(v, relax.Call) and v.op.same_as(tvm.ir.Op.get("relax.call_tir")):
                out.append((bind.var, v.args[0].name_hint, list(v.args[1].fields)))
    return out


def _standalone_gemm_consumers(mod: tvm.IRModule) -> dict[str, list[str]]:
    """{'lv = GEMM PrimFunc': [PrimFuncs reading lv]} for every GEMM call not fused with its consumer."""
    calls = _calls(mod)
    return {f"{var.name} = {name}": [c for _, c, args in calls if any(a.same_as(var) for a in args)]
            for var, name, _ in calls if GEMM.match(name)}


def _prim_funcs(mod: tvm.IRModule) -> list[str]:
    return sorted(g.name_hint for g, f in mod.functions_items() if isinstance(f, tirx.PrimFunc))


def test_fused_build_is_bit_identical_to_unfused(tiny_program, built):
    _, inputs = tiny_program
    args = [tvm.runtime.tensor(a) for a in inputs]
    ref = relax.VirtualMachine(built["unfused"], tvm.cpu())["main"](*args).numpy()
    out = relax.VirtualMachine(built["fused"], tvm.cpu())["main"](*args).numpy()
    assert out.dtype == np.int8 and out.shape == (BATCH, SEQ, 64)
    np.testing.assert_array_equal(out, ref)


def test_requantize_is_fused_into_every_linear_and_matmul(tiny_program, report):
    """No requantize (or other elementwise) PrimFunc is left right after a linear or matmul: every linear
    and the P.V matmul carry their epilogue; only Q.K^T stays standalone (its consumer is int_softmax)."""
    legalized = relax.transform.LegalizeOps()(tiny_program[0])
    fused = FuseRequantize()(legalized)
    before, after = _prim_funcs(legalized), _prim_funcs(fused)
    left = _standalone_gemm_consumers(fused)
    epilogued = [n for n in after if n.startswith(("fused_ibert_linear", "fused_ibert_matmul"))]
    report(f"FuseRequantize, tiny 2-layer program: {len(before)} PrimFuncs ({len(_calls(legalized))} calls) -> "
           f"{len(after)} ({len(_calls(fused))} calls); GEMM calls without epilogue "
           f"{len(_standalone_gemm_consumers(legalized))} -> {len(left)}; GEMMs with epilogue: {', '.join(epilogued)}")
    not_fused = {g: c for g, c in left.items() if any("requantize" in n or "gelu" in n for n in c)}
    assert not not_fused, f"requantize still a PrimFunc of its own after a GEMM: {not_fused}; PrimFuncs: {after}"
    assert all(c and all(n.startswith("ibert_int_softmax") for n in c) for c in left.values()), \
        f"standalone GEMMs left: {left}; PrimFuncs: {after}"

    def count(mod: tvm.IRModule, pattern: str) -> int:
        return sum(bool(re.match(pattern, name)) for _, name, _ in _calls(mod))

    linear, matmul = count(legalized, r"ibert_linear\d*$"), count(legalized, r"ibert_matmul\d*$")
    assert (linear, matmul) == (12, 4), before  # 6 linears and Q.K^T, P.V per layer
    assert count(fused, r"fused_ibert_linear") == linear, f"linear calls in fused PrimFuncs; PrimFuncs: {after}"
    assert count(fused, r"fused_ibert_matmul\d*_transpose\d*_reshape\d*_ibert_requantize") == 2, after  # P.V
    assert len(left) == 2 and any("int_gelu" in n for n in epilogued), after


def test_gpu_fusion_keeps_requantize_chains_apart(tiny_program):
    """For GPU targets no PrimFunc holds two requantizes (dlight would inline them into one huge expression)."""
    fused = FuseRequantize(split_requantize_chains=True)(relax.transform.LegalizeOps()(tiny_program[0]))
    names = _prim_funcs(fused)
    assert not [n for n in names if n.count("requantize") > 1], names
    assert any(n.endswith("_unfused") for n in names) and any(n.startswith("fused_ibert_linear") for n in names)
    left = _standalone_gemm_consumers(fused)
    assert all(all(n.startswith("ibert_int_softmax") for n in c) for c in left.values()), left


def test_x86_fuses_the_heads_split_into_the_attention_matmuls(tiny_program):
    """`layout_prologues` (x86): the reshape -> transpose (after FuseSiblingLinears also a strided slice) that
    splits Q, K and V into heads leaves no PrimFunc of its own: Q K^T takes both operands' splits, P V the one
    of V; without it (ARM, CUDA) the splits stay layout PrimFuncs. The x86 build is bit-identical
    (`test_fused_build_is_bit_identical_to_unfused`)."""
    legalized = relax.transform.LegalizeOps()(tiny_program[0])
    layout_only = re.compile(r"(fused_)?(strided_slice\d*_)?reshape\d*_transpose\d*$")
    plain = [n for _, n, _ in _calls(FuseRequantize()(legalized)) if layout_only.match(n)]
    fused = [n for _, n, _ in _calls(FuseRequantize(layout_prologues=True)(legalized))]
    assert len(plain) == 6, plain  # Q, K, V per layer
    assert not [n for n in fused if layout_only.match(n)], fused
    matmuls = [n for n in fused if "ibert_matmul" in n]
    splits = sorted(n.split("ibert_matmul")[0].count("transpose") for n in matmuls)
    assert splits == [1, 1, 2, 2], matmuls  # per layer: Q K^T both operands, P V its V


def test_no_cpu_kernel_holds_a_let(tiny_program):
    """No CPU kernel binds a Let, and MetaSchedule can estimate every kernel's FLOPs (tuning needs it; it has
    no rule for Let). Let chains also cost exponential build time: TVM's analyzers (buffer compaction, LLVM
    codegen) substitute each bound value into the next, and the Let-chained Newton isqrt made each BERT-base
    LayerNorm kernel take 0.36 s to build (now 0.04 s), 10 of the 13 s that a 1 x 128 program's kernels took.
    (CUDA keeps that Let form, whose schedule would inline the stages: `intmath.isqrt`.)"""
    from tvm.s_tir.analysis import estimate_tir_flops

    fused = tunable_module(tiny_program[0], "llvm")
    kernels = {gv.name_hint: f for gv, f in fused.functions_items() if isinstance(f, tirx.PrimFunc)}
    assert any("layernorm" in name for name in kernels) and any("gelu" in name for name in kernels)
    assert not [name for name, f in kernels.items() if "T.Let(" in f.script()]
    assert all(estimate_tir_flops(tvm.IRModule({"main": f})) >= 0 for f in kernels.values())


def _linear_requantize(share: str) -> tvm.IRModule:
    """main(x) = requantize(linear(x)); `share`: the accumulator (or its transposed copy) is also returned."""
    rng = np.random.default_rng(0)
    w, bias = rng.integers(-128, 128, (16, 16), dtype=np.int8), rng.integers(-99, 99, 16, dtype=np.int32)
    d = quant.requant_dyadic(0.01, 0.05)
    x = relax.Var("x", relax.TensorType((2, 4, 16), "int8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            acc = bb.emit(ops.linear(x, w, bias))
            shared = bb.emit(relax.op.permute_dims(acc, [1, 0, 2])) if share == "transposed" else acc
            out = bb.emit(ops.requantize(shared, d.multiplier, d.shift, bits=8))
            result = bb.emit_output(out if share == "none" else relax.Tuple([out, shared]))
        bb.emit_func_output(result)
    return relax.transform.LegalizeOps()(bb.get())


@pytest.mark.parametrize("share", ["none", "accumulator", "transposed"])
def test_accumulator_with_another_consumer_is_not_fused(share):
    left = _standalone_gemm_consumers(FuseRequantize()(_linear_requantize(share)))
    assert bool(left) == (share != "none"), left


def test_ir_dumps_have_numbered_phase_names(built):
    dumps = sorted(p.name for p in Path(built["dump"]).iterdir())
    assert dumps == [f"{i:02d}_{name}.py" for i, name in enumerate(PHASES)]
    legalized, fused = ((Path(built["dump"]) / f).read_text() for f in ("00_legalize.py", "01_fuse.py"))
    assert "def ibert_linear(" in legalized and "def ibert_linear(" not in fused
    assert "def fused_ibert_linear_ibert_requantize" in fused


@pytest.mark.parametrize("where", ["a file", "under a file", "/proc"])
def test_a_dump_dir_that_cannot_be_a_folder_is_refused_up_front(where, tmp_path):
    """Refused by name before any pass runs, not as an OSError from inside the pipeline after phase 0 (/proc: a
    folder where no file can be made, even by root)."""
    (tmp_path / "f").write_text("x")
    path = {"a file": tmp_path / "f", "under a file": tmp_path / "f" / "ir", "/proc": Path("/proc")}[where]
    message = "is a file, not a folder" if where != "/proc" else "the folder /proc cannot be written"
    with pytest.raises(ValueError, match=f"^dump_dir: {re.escape(str(path))}.*{message}"):
        integer_pipeline("llvm", dump_dir=str(path))


def _with_float_op(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` whose main also goes through float: astype(float32) * 0.5 -> int8 on the encoder's output."""
    params = [relax.Var(p.name, p.ty) for p in mod["main"].params]
    bb = relax.BlockBuilder()
    encoder = bb.add_func(mod["main"].without_attr("global_symbol"), "encoder")
    with bb.function("main", params):
        with bb.dataflow():
            h = bb.emit(relax.Call(encoder, params))
            f = bb.emit(relax.op.multiply(relax.op.astype(h, "float32"), relax.const(0.5, "float32")))
            out = bb.emit_output(relax.op.astype(f, "int8"))
        bb.emit_func_output(out)
    return bb.get()


def test_verify_phase_rejects_a_float_op(tiny_program, tmp_path):
    with pytest.raises(FloatOpError, match="float32"):
        integer_pipeline("llvm", dump_dir=str(tmp_path))(_with_float_op(tiny_program[0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00_legalize.py", "01_fuse.py"]  # stopped in phase 2
    lenient = tmp_path / "lenient"  # integer_only=False: lowered, and no dump of a phase 2 that did not run
    integer_pipeline("llvm", dump_dir=str(lenient), integer_only=False)(_with_float_op(tiny_program[0]))
    assert sorted(p.name for p in lenient.iterdir()) == ["00_legalize.py", "01_fuse.py", "03_lower.py"]


def test_untuned_latency_unfused_vs_fused(tiny_program, built, report):
    args = [tvm.runtime.tensor(a) for a in tiny_program[1]]
    medians: dict[str, list[float]] = {"unfused": [], "fused": []}
    vms = {k: relax.VirtualMachine(built[k], tvm.cpu()) for k in medians}
    for _ in range(5):  # interleaved, so that load from elsewhere hits both alike
        for k, vm in vms.items():
            medians[k].append(vm.time_evaluator("main", tvm.cpu(), number=20, repeat=5)(*args).median * 1e3)
    unfused, fused = (float(np.median(medians[k])) for k in medians)
    report(f"tiny 2-layer RoBERTa (batch {BATCH}, seq {SEQ}), llvm untuned on the host CPU: LegalizeOps+compile "
           f"{unfused:.3f} ms, integer_pipeline build {fused:.3f} ms (x{unfused / fused:.2f})")
    assert fused > 0 and unfused > 0
