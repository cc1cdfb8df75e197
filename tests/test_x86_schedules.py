"""x86 default schedules (schedules/x86.py) and the VNNI rewrites (relay_passes/shift_activations_u8.py,
pack_probabilities_i16.py): the scheduled build equals the unscheduled one on every element (single ops
with odd shapes, a tiny 2-layer BERT), the GEMM kernels hold `vpdpbusd` / `vpdpwssd` on a VNNI host, and a
target without any int8 dot product still builds and computes the same."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
import tvm
from tvm import relax, tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target
from transformers import BertConfig, BertModel

from ibert_tvm import ops, quant, tuning
from ibert_tvm.build_util import single_op_module
from ibert_tvm.model import Batch, from_pretrained
from ibert_tvm.ops.linear import reference as linear_reference
from ibert_tvm.relay_passes.pipeline import build, tunable_module
from ibert_tvm.relay_passes.shift_activations_u8 import compensated_bias, pack_weight
from ibert_tvm.schedules import x86
from ibert_tvm.targets import resolve_target
from test_model import COMMON, batches, program_inputs, tiny

HOST = resolve_target("llvm").target
PLAIN = Target({"kind": "llvm", "mcpu": "x86-64"})  # SSE2 only: no VNNI, no AVX
HAS_VNNI = x86.vnni_lanes(HOST) > 0
HAS_AMX = x86.has_amx(HOST)
SAPPHIRE_RAPIDS = Target({"kind": "llvm", "mcpu": "sapphirerapids"})  # AMX int8 + AVX-512 VNNI (compiled, not run)
HASWELL = Target({"kind": "llvm", "mcpu": "haswell"})  # AVX2 only: the vpmaddwd form of the dot products
RUNS_AVX2 = pytest.mark.skipif("avx2" not in x86.int8_features(HOST), reason="host CPU has no AVX2")
NEEDS_VNNI = pytest.mark.skipif(not HAS_VNNI, reason=f"host CPU ({HOST.attrs.get('mcpu')}) has neither avx512vnni "
                                                     "nor avxvnni")
RNG = np.random.default_rng(7)


def _ints(dtype: str, shape: tuple, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """Random integers over the dtype's whole range (or [lo, hi]), the extremes planted at the first places."""
    info = np.iinfo(dtype)
    lo, hi = info.min if lo is None else lo, info.max if hi is None else hi
    out = RNG.integers(lo, hi, shape, endpoint=True).astype(dtype)
    out.flat[:2] = [lo, hi]
    return out


def _unscheduled(mod: tvm.IRModule, inputs: list[np.ndarray]) -> np.ndarray:
    """The reference: LegalizeOps + tvm.compile for plain llvm (no fusion, no rewrite, no schedule)."""
    exe = tvm.compile(relax.transform.LegalizeOps()(mod), "llvm")
    return relax.VirtualMachine(exe, tvm.cpu())["main"](*map(tvm.runtime.tensor, inputs)).numpy()


def _run(exe: tvm.runtime.Executable, inputs: list[np.ndarray]) -> np.ndarray:
    return relax.VirtualMachine(exe, tvm.cpu())["main"](*map(tvm.runtime.tensor, inputs)).numpy()


def _asm(exe: tvm.runtime.Executable) -> str:
    """The x86 assembly of every llvm module the executable holds."""

    def tree(mod: tvm.runtime.Module) -> Iterator[tvm.runtime.Module]:
        yield mod
        for sub in mod.imports:
            yield from tree(sub)

    return "\n".join(m.inspect_source("asm") for m in tree(exe.mod) if m.kind == "llvm")


# ------------------------------------------------------------------------------------------------ single ops

W_ODD = _ints("int8", (19, 13))  # N = 19, K = 13: neither a multiple of 16 nor of 4
B_ODD = _ints("int32", (19,), -10**6, 10**6)
W_64 = _ints("int8", (48, 64))
W_128 = _ints("int8", (64, 128))
REQ = quant.requant_dyadic(0.01, 0.05)
RES = quant.requant_dyadic(0.02, 0.05)
SOFTMAX = quant.softmax_constants(np.float32(0.05), quant.symmetric_scale(16, 0, quant.softmax_exp_range(np.float32(0.05))))

#: name -> (builder of the op graph, inputs)
CASES: dict[str, tuple[Callable, dict[str, np.ndarray]]] = {
    "linear_odd_bias": (lambda x: ops.linear(x, W_ODD, B_ODD), {"x": _ints("int8", (2, 7, 13))}),
    "linear_no_bias": (lambda x: ops.linear(x, W_64), {"x": _ints("int8", (5, 64))}),
    "linear_requantize_residual": (
        lambda x, r: ops.requantize(ops.linear(x, W_64), REQ.multiplier, REQ.shift, bits=22, residual=r,
                                    residual_multiplier=RES.multiplier, residual_shift=RES.shift),
        {"x": _ints("int8", (3, 5, 64)), "r": _ints("int8", (3, 5, 48))}),
    # AMX tiles (rows in 16s, K in 64s): 2 x 2 tiles of 16 x 16 over K = 128; 1 x 1 tiles with a residual epilogue
    "linear_amx_2x2_tiles": (lambda x: ops.linear(x, W_128, _ints("int32", (64,), -10**6, 10**6)),
                             {"x": _ints("int8", (2, 64, 128))}),
    "linear_amx_1x1_tiles_residual": (
        lambda x, r: ops.requantize(ops.linear(x, W_64), REQ.multiplier, REQ.shift, bits=22, residual=r,
                                    residual_multiplier=RES.multiplier, residual_shift=RES.shift),
        {"x": _ints("int8", (3, 16, 64)), "r": _ints("int8", (3, 16, 48))}),
    "linear_runtime_weight": (lambda x, w: ops.linear(x, w), {"x": _ints("int8", (6, 20)), "w": _ints("int8", (24, 20))}),
    "qk_transposed_odd": (lambda a, b: ops.matmul(a, b, transpose_b=True),
                          {"a": _ints("int8", (2, 3, 7, 13)), "b": _ints("int8", (2, 3, 19, 13))}),
    "matmul_int8": (lambda a, b: ops.matmul(a, b), {"a": _ints("int8", (2, 5, 12)), "b": _ints("int8", (2, 12, 17))}),
    "pv_int16_odd": (lambda a, b: ops.matmul(a, b),
                     {"a": _ints("int16", (2, 3, 7, 19), 0, 256), "b": _ints("int8", (2, 3, 19, 13))}),
    "softmax": (lambda x: ops.int_softmax(x, SOFTMAX.x0_int, SOFTMAX.b_int, SOFTMAX.c_int, SOFTMAX.exp_multiplier,
                                          SOFTMAX.exp_shift), {"x": _ints("int32", (2, 3, 5, 11), -300, 300)}),
    "layernorm_requantize": (lambda x: ops.requantize(ops.int_layernorm(x, np.int64(12345)), REQ.multiplier,
                                                      REQ.shift), {"x": _ints("int32", (3, 7, 24), -2**21, 2**21 - 1)}),
}


def _ops_module() -> tvm.IRModule:
    """One Relax function per case, named after it, so that each target compiles them all in one build."""
    bb = relax.BlockBuilder()
    for name, (make, inputs) in CASES.items():
        params = [relax.Var(k, relax.TensorType(v.shape, str(v.dtype))) for k, v in inputs.items()]
        with bb.function(name, params):
            with bb.dataflow():
                out = bb.emit_output(make(*params))
            bb.emit_func_output(out)
    return bb.get()


@pytest.fixture(scope="module")
def op_builds() -> dict[str, relax.VirtualMachine]:
    """The single-op module unscheduled (the reference) and built for the host and for plain x86-64."""
    mod = _ops_module()
    exes = {"unscheduled": tvm.compile(relax.transform.LegalizeOps()(mod), "llvm"),
            "host": build(mod, HOST), "x86-64": build(mod, PLAIN)}
    if "avx2" in x86.int8_features(HOST):
        exes["haswell"] = build(mod, HASWELL)
    return {k: relax.VirtualMachine(e, tvm.cpu()) for k, e in exes.items()}


@pytest.mark.parametrize("target", ["host", "x86-64", pytest.param("haswell", marks=RUNS_AVX2)])
@pytest.mark.parametrize("case", list(CASES))
def test_single_op_scheduled_build_is_bit_identical(op_builds, case, target):
    args = [tvm.runtime.tensor(v) for v in CASES[case][1].values()]
    np.testing.assert_array_equal(op_builds[target][case](*args).numpy(), op_builds["unscheduled"][case](*args).numpy())


def test_compensated_bias_and_packing_reproduce_the_signed_product():
    x = _ints("int8", (4, 13))
    packed = pack_weight(W_ODD, 16)
    assert packed.shape == (2, 4, 16, 4)
    unpacked = packed.transpose(0, 2, 1, 3).reshape(32, 16)[:19, :13]
    shifted = (x.astype(np.int64) + 128) @ unpacked.astype(np.int64).T + compensated_bias(W_ODD, B_ODD)
    np.testing.assert_array_equal(shifted, linear_reference(x, W_ODD, B_ODD))


def test_compensation_refuses_a_reduction_that_could_overflow_int32():
    assert compensated_bias(np.ones((2, 70000), np.int8), None) is None


# ------------------------------------------------------------------------------------------------ whole model


@pytest.fixture(scope="module")
def host_build(tiny_bert):
    """The session's tiny 2-layer BERT program (conftest.py) built for the host."""
    return build(tiny_bert.mod, HOST)


def test_tiny_model_scheduled_build_is_bit_identical(tiny_bert, host_build, report):
    mod, inputs, ref = tiny_bert  # ref: the unscheduled build's outputs
    np.testing.assert_array_equal(_run(host_build, inputs), ref)
    np.testing.assert_array_equal(_run(build(mod, PLAIN), inputs), ref)
    if "avx2" in x86.int8_features(HOST):
        np.testing.assert_array_equal(_run(build(mod, HASWELL), inputs), ref)
    report(f"x86 schedules, tiny 2-layer BERT: bit-identical to the unscheduled build on {HOST.attrs.get('mcpu')} "
           f"({', '.join(x86.int8_features(HOST)) or 'no int8 features'}), on AVX2 (Haswell, vpmaddwd) where the "
           "host runs it, and on plain x86-64")


def test_epilogue_with_an_independent_stage_is_not_computed_per_tile():
    """"hf" semantics regrids the residual inside the output dense's fused GEMM (a stage that reads no
    accumulator). Computed inside the GEMM's tiles, its rows were read before any task wrote them: right on
    fresh (zeroed) memory, wrong after another program had run. So the reference runs first here, and the
    scheduled build's first run must equal it."""
    qm = from_pretrained(tiny("bert"), calibration=batches(0, 2, 3, 20, seed=1), semantics="hf")
    b = batches(0, 1, 3, 20, seed=5)[0]
    mod, inputs = qm.program(3, 20), program_inputs(b)
    ref = _unscheduled(mod, inputs)
    np.testing.assert_array_equal(_run(build(mod, HOST), inputs), ref)


def test_heads_narrower_than_a_vector_are_bit_identical():
    """Head size 12 (hidden 48, 4 heads): P V's accumulator is padded to the vector width (8 or 16 columns per
    block), so its epilogue, which merges the heads into the context's columns, maps a task's column tile to
    more than that head's columns. Computed per task it read the next head's accumulator before that head's
    task wrote it (batch 1: right on the first call, wrong from the second on), and at batch 2 TVM refused the
    loop nest. Each build is called three times after the reference ran."""
    torch.manual_seed(0)
    config = {**COMMON, "hidden_size": 48, "num_attention_heads": 4, "num_hidden_layers": 1, "intermediate_size": 64}
    qm = from_pretrained(BertModel(BertConfig(pad_token_id=0, **config), add_pooling_layer=False).eval(),
                         calibration=batches(0, 1, 2, 24, seed=1))
    targets = [HOST, HASWELL] if "avx2" in x86.int8_features(HOST) else [HOST]
    pair = batches(0, 1, 2, 17, seed=5)[0]
    for b in (Batch(pair.input_ids[:1], pair.attention_mask[:1]), pair):
        mod, inputs = qm.program(*b.input_ids.shape), program_inputs(b)
        ref = _unscheduled(mod, inputs)
        for target in targets:
            vm = relax.VirtualMachine(build(mod, target), tvm.cpu())
            for _ in range(3):
                np.testing.assert_array_equal(vm["main"](*map(tvm.runtime.tensor, inputs)).numpy(), ref)


def test_reshape_between_gemm_and_epilogue_is_bit_identical():
    """linear [60, K] -> reshape [3, 20, N] -> requantize with residual (the imported graph's form): the
    reshape inlined into the epilogue maps a GEMM row tile to no box, so the epilogue runs after the GEMM."""
    x = relax.Var("x", relax.TensorType((60, 64), "int8"))
    res = relax.Var("res", relax.TensorType((3, 20, 48), "int8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, res]):
        with bb.dataflow():
            acc = bb.emit(ops.linear(x, W_64, _ints("int32", (48,), -10**5, 10**5)))
            acc = bb.emit(relax.op.reshape(acc, (3, 20, 48)))
            out = bb.emit_output(bb.emit(ops.requantize(acc, REQ.multiplier, REQ.shift, bits=22, residual=res,
                                                        residual_multiplier=RES.multiplier, residual_shift=RES.shift)))
        bb.emit_func_output(out)
    inputs = [_ints("int8", (60, 64)), _ints("int8", (3, 20, 48))]
    ref = _unscheduled(bb.get(), inputs)
    np.testing.assert_array_equal(_run(build(bb.get(), HOST), inputs), ref)


def test_every_prim_func_gets_a_schedule(tiny_bert):
    """Every GEMM is tensorized on a VNNI host (vectorized otherwise); nothing is left unscheduled."""
    used = _strategies_used(tiny_bert.mod, HOST)
    assert "none" not in used.values(), used
    gemms = {n: s for n, s in used.items() if "linear" in n or "matmul" in n}
    assert len(gemms) >= 6, used
    assert set(gemms.values()) == {"vnni_gemm" if HAS_VNNI else "gemm"}, gemms


def _strategies_used(mod: tvm.IRModule, target: Target) -> dict[str, str]:
    with target:
        fused = tunable_module(mod, target)
    return {g.name_hint: x86.schedule_prim_func(f, target)[1] for g, f in fused.functions_items()
            if isinstance(f, tirx.PrimFunc)}


def test_amx_target_tiles_the_linear_layers():
    """On an AMX target the linear layers whose rows come in 16s and K in 64s are AMX tile blocks (tdpbusd,
    the tile state requested from the OS in the kernel); Q K^T (one extra compensation row) keeps vpdpbusd."""
    make, inputs = CASES["linear_amx_2x2_tiles"]
    mod = single_op_module(make, inputs)
    assert set(_strategies_used(mod, SAPPHIRE_RAPIDS).values()) == {"amx_gemm"}
    asm = _asm(build(mod, SAPPHIRE_RAPIDS))
    assert all(op in asm for op in ("sttilecfg", "ldtilecfg", "tdpbusd", "syscall"))
    make, inputs = CASES["qk_transposed_odd"]
    assert "amx_gemm" not in _strategies_used(single_op_module(make, inputs), SAPPHIRE_RAPIDS).values()


@pytest.mark.skipif(not HAS_AMX, reason=f"host CPU ({HOST.attrs.get('mcpu')}) has no usable AMX int8 tiles")
def test_tiny_model_amx_build_is_bit_identical(report):
    """Batch 2 x 32 tokens of the tiny BERT (hidden 64, FFN 128): every linear layer runs on AMX tiles."""
    qm = from_pretrained(tiny("bert"), calibration=batches(0, 2, 2, 32, seed=1))
    b = batches(0, 1, 2, 32, seed=5)[0]
    mod, inputs = qm.program(2, 32), program_inputs(b)
    used = _strategies_used(mod, HOST)
    linears = {name: strategy for name, strategy in used.items() if "ibert_linear" in name}
    # QKV (one function), out, FFN in (one per requantize chain left by DropIdentityRequantize), FFN out
    assert len(linears) >= 4 and set(linears.values()) == {"amx_gemm"}, used
    np.testing.assert_array_equal(_run(build(mod, HOST), inputs), _unscheduled(mod, inputs))
    report("x86 AMX: tiny BERT 2 x 32 with every linear on AMX tiles is bit-identical to the unscheduled build")


@NEEDS_VNNI
def test_gemm_kernels_use_vnni_instructions(host_build):
    asm = _asm(host_build)
    assert asm.count("vpdpbusd") >= 4, "no vpdpbusd in the host build's assembly"
    assert "vpdpwssd" in asm, "P V (int16 probabilities) does not use vpdpwssd"


def test_target_without_vnni_gets_no_vnni_instruction():
    make, inputs = CASES["qk_transposed_odd"]
    asm = _asm(build(single_op_module(make, inputs), PLAIN))
    assert "vpdpbusd" not in asm and "zmm" not in asm


def test_avx2_target_uses_exact_vpmaddwd():
    """AVX2 without VNNI (Haswell class): the packed GEMMs' dot products are vpmaddwd on int16 pairs, the int8
    operands (weights, K, V) sign-extended in the step, never the saturating vpmaddubsw, and no VNNI instruction;
    compiled here, run by the single-op cases above."""
    assert x86.packed_lanes(HASWELL) == 8 and x86.vnni_lanes(HASWELL) == 0
    for case in ("linear_no_bias", "qk_transposed_odd", "pv_int16_odd"):
        make, inputs = CASES[case]
        mod = single_op_module(make, inputs)
        assert "avx2_gemm" in _strategies_used(mod, HASWELL).values(), case
        asm = _asm(build(mod, HASWELL))
        assert "vpmaddwd" in asm and "vpmaddubsw" not in asm and "vpdp" not in asm and "zmm" not in asm
        assert "vpmovsxbw" in asm, case  # the int8 operand (weight, K, V) sign-extended in the step


def _k_loop(asm: str, instruction: str) -> list[str]:
    """The lines of the loop around the first `instruction`: from the label before it to the jump back."""
    lines = asm.splitlines()
    first = next(i for i, line in enumerate(lines) if instruction in line)
    start = max(i for i in range(first) if re.fullmatch(r"\.LBB\w+:", lines[i].strip()))
    label = lines[start].strip()[:-1]
    end = next(i for i in range(first, len(lines)) if re.fullmatch(rf"j\w+\s+{label}", lines[i].strip()))
    return lines[start:end + 1]


def test_avx2_register_tile_keeps_every_accumulator_in_a_register():
    """The AVX2 step needs a register for `vpmaddwd`'s product: a 128 x 96 x 64 linear layer (12 column blocks,
    where 4 x 3 accumulator blocks and their step would need 17 ymm) gets 4 x 2, and its k loop moves no ymm
    to or from the stack (with 4 x 3 LLVM kept one accumulator there, loaded and stored every step)."""
    weight = _ints("int8", (96, 64))
    mod = single_op_module(lambda x: ops.linear(x, weight), {"x": _ints("int8", (128, 64))})
    avx2 = x86.AVX2_STEP_TEMPORARIES, x86.AVX2_PREFERRED_ROWS
    assert x86._register_tile([128], 12, 16, *avx2) == ([4], 2)
    # where only one column block fits the most MACs, more rows win: 8 x 1 for 5 or 3 blocks, not 1 x 5 / 2 x 3
    assert x86._register_tile([128], 5, 16, *avx2) == x86._register_tile([128], 3, 16, *avx2) == ([8], 1)
    loop = _k_loop(_asm(build(mod, HASWELL)), "vpmaddwd")
    assert sum("vpmaddwd" in line for line in loop) == 8
    assert not [line for line in loop if "ymm" in line and "(%rsp)" in line]


def test_avx_vnni_target_uses_ymm_vpdpbusd():
    """Alder Lake class (AVX-VNNI, no AVX-512): 8-lane packing, VEX vpdpbusd on ymm; compiled, not run."""
    alderlake = Target({"kind": "llvm", "mcpu": "alderlake"})
    assert x86.vnni_lanes(alderlake) == 8
    make, inputs = CASES["linear_no_bias"]
    asm = _asm(build(single_op_module(make, inputs), alderlake))
    assert any("vpdpbusd" in line and "ymm" in line for line in asm.splitlines())
    assert "zmm" not in asm


# ------------------------------------------------------------------------------------------------ tuning


def _gemm_sketches(base: Target) -> tuple[Target, list[tvm.s_tir.Schedule], list[ms.postproc.Postproc]]:
    """(the tuning target, the tuning space's sketches of a linear layer's GEMM kernel, its post-processors);
    seeded: the sketches' sampled decisions (and so which of them inline the widening) depend on the seed."""
    make, inputs = CASES["linear_no_bias"]
    with base:
        fused = tunable_module(single_op_module(make, inputs), base)
    gemm = next(f for g, f in fused.functions_items() if isinstance(f, tirx.PrimFunc) and "linear" in g.name_hint)
    target = Target({**dict(base.export()), "num-cores": 2})  # MetaSchedule needs the core count
    with tuning._family_intrinsics_only(resolve_target("llvm")):  # TVM's other targets' intrinsics take minutes
        context = ms.TuneContext(tvm.IRModule({"main": gemm}), target=target,
                                 space_generator=x86.tuning_space(target)["space"], rand_state=0)  # sketches vary
    return target, context.generate_design_space(), list(context.space_generator.postprocs)


@pytest.mark.parametrize("base", [pytest.param(HOST, marks=NEEDS_VNNI, id="host-vnni"),
                                  pytest.param(HASWELL, id="haswell-avx2")])
def test_tuning_space_tensorizes_the_u8_gemm_with_the_default_intrinsic(base):
    """The space's sketches use the dot-product step of the defaults: VNNI's vpdpbusd, or AVX2's vpmaddwd form."""
    target, sketches, _ = _gemm_sketches(base)
    lanes = x86.packed_lanes(target)
    intrin = x86.dot_intrinsics(target)[(lanes, 4, "uint8", "int8") if x86.vnni_lanes(target) else (lanes, 2, "int16", "int8")]
    assert any(intrin in str(s.trace) for s in sketches), [str(s.trace) for s in sketches]


def test_a_sketch_whose_gemm_no_longer_matches_its_intrinsic_is_rejected_quietly(capfd):
    """AutoInline can put the int16 widening into the GEMM block after it was marked for the vpmaddwd step:
    `TensorizeOrReject` rejects that sketch (TVM's `RewriteTensorize` kept it as a scalar GEMM and printed a
    C++ warning), and leaves every other sketch exactly as `RewriteTensorize` would."""
    _, sketches, postprocs = _gemm_sketches(HASWELL)
    *before, last = postprocs  # the last is `TensorizeOrReject`
    inlined, accepted = [], []
    for sketch in sketches:
        inlined.append(any(r.source.name == "x" for r in sketch.get(sketch.get_sblock("acc")).reads))
        assert all(p.apply(sketch) for p in before)
        ours, tvms = sketch.copy(), sketch.copy()
        capfd.readouterr()
        accepted.append(last.apply(ours))
        assert "Tensorize failed" not in capfd.readouterr().err
        assert ms.postproc.RewriteTensorize(vectorize_init_loop=True).apply(tvms)  # TVM's keeps every sketch
        if accepted[-1]:
            tvm.ir.assert_structural_equal(ours.mod, tvms.mod)
            assert "meta_schedule.auto_tensorize" not in ours.mod.script() and "T.call_llvm" in ours.mod.script()
        else:  # where TVM's warned and left the GEMM untensorized
            assert "Tensorize failed" in capfd.readouterr().err and "T.call_llvm" not in tvms.mod.script()
    assert any(inlined) and not all(inlined) and accepted == [not i for i in inlined]


def test_tuning_space_without_vnni_is_the_default():
    assert x86.tuning_space(PLAIN) == {"space": "post-order-apply"}
