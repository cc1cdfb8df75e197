"""`VerifyIntegerOnly`: the integer encoder layer passes; any float op, in Relax or inside a TIR PrimFunc, is
rejected with FloatOpError naming it; a final int8 -> float32 dequantization passes only when allowed."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import tvm
from tvm import relax, te, tirx
from transformers.models.ibert.quant_modules import QuantAct

from ibert_tvm import demo, layers, ops, quant
from ibert_tvm.relay_passes.verify_integer_only import FloatOpError, VerifyIntegerOnly, verify_integer_only

SHAPE = demo.DemoShape(batch=1, seq=8, hidden=32, heads=2, ffn=64, init_range=0.1)
RNG = np.random.default_rng(0)
W = RNG.integers(-128, 128, (16, 16), dtype=np.int8)
B = RNG.integers(-1000, 1000, 16, dtype=np.int32)
DYADIC = quant.requant_dyadic(np.full(16, 1e-4, np.float32), 0.05)

Step = Callable[[relax.BlockBuilder, relax.Expr], relax.Expr]


def _legalized(*steps: Step) -> tvm.IRModule:
    """main(x: int8[2, 5, 16]) applying `steps` in order (each emitted), after LegalizeOps."""
    x = relax.Var("x", relax.TensorType((2, 5, 16), "int8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            v: relax.Expr = x
            for step in steps:
                out = step(bb, v)
                v = out if isinstance(out, relax.Var) else bb.emit(out)  # emit_te steps emit themselves
            result = bb.emit_output(v)
        bb.emit_func_output(result)
    return relax.transform.LegalizeOps()(bb.get())


def _zero(mod: tvm.IRModule) -> tvm.IRModule:
    """The "zero" pipeline (legalize, fold, FuseOps, FuseTIR)."""
    return relax.get_pipeline("zero")(mod)


def _prim_names(mod: tvm.IRModule) -> list[str]:
    return sorted(gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc))


def _rejected_prim_funcs(mod: tvm.IRModule, **kw: bool) -> dict[str, str]:
    """{PrimFunc name: its findings} from the FloatOpError that `mod` must raise."""
    with pytest.raises(FloatOpError) as err:
        verify_integer_only(mod, **kw)
    found = {k.split("'")[1]: ", ".join(v) for k, v in err.value.findings.items() if k.startswith("PrimFunc")}
    assert all(name in str(err.value) for name in found)
    return found


# Integer steps, then float steps.
linear: Step = lambda bb, v: ops.linear(v, W, B)  # noqa: E731
requant: Step = lambda bb, v: ops.requantize(v, DYADIC.multiplier, DYADIC.shift, 8)  # noqa: E731
to_f32: Step = lambda bb, v: relax.op.astype(v, "float32")  # noqa: E731
scale: Step = lambda bb, v: relax.op.multiply(v, relax.const(0.05, "float32"))  # noqa: E731
to_i8: Step = lambda bb, v: relax.op.astype(v, "int8")  # noqa: E731


def _exp_via_float(x: te.Tensor) -> te.Tensor:
    """An otherwise-integer op with one float32 intermediate: int8 -> float32 exp -> int32."""
    e = te.compute(x.shape, lambda *i: tirx.exp(x(*i).astype("float32") * tirx.const(0.01, "float32")), name="e_f32")
    return te.compute(x.shape, lambda *i: e(*i).astype("int32") + 1, name="e_int")


exp_via_float: Step = lambda bb, v: bb.emit_te(_exp_via_float, v, primfunc_name_hint="exp_via_float")  # noqa: E731


@pytest.fixture(scope="module")
def encoder_layer() -> tvm.IRModule:
    """The whole integer encoder layer (tiny, calibrated HF IBertLayer), after LegalizeOps."""
    q_layer, _ = demo._hf_layer(SHAPE, seed=0)
    input_act = QuantAct(8, quant_mode=True)
    demo.calibrate(q_layer, input_act, SHAPE, batches=2, seed=1)
    mod = demo.build_program(q_layer, np.asarray(layers.act_scale(input_act)), SHAPE)
    return relax.transform.LegalizeOps()(mod)


def test_encoder_layer_is_integer_only(encoder_layer):
    report = verify_integer_only(encoder_layer)
    assert report.prim_funcs == tuple(_prim_names(encoder_layer))
    assert {"ibert_int_softmax", "ibert_int_gelu", "ibert_int_layernorm", "ibert_linear"} <= set(report.prim_funcs)
    assert report.relax_funcs == ("main",) and report.float_outputs == ()


def test_encoder_layer_passes_as_a_pipeline_pass_after_fusion(encoder_layer):
    check = VerifyIntegerOnly()
    fused = _zero(encoder_layer)
    out = tvm.transform.Sequential([check])(fused)
    assert out.same_as(fused)  # returned as is, not rebuilt
    assert check.report.prim_funcs == tuple(_prim_names(fused))
    assert any(name.startswith("fused_") for name in check.report.prim_funcs)


def test_relax_float_round_trip_is_rejected_naming_its_prim_funcs():
    mod = _legalized(linear, requant, to_f32, scale, to_i8)
    found = _rejected_prim_funcs(mod)
    assert set(found) == {"cast", "multiply", "cast1"}  # the integer linear/requantize are not named
    assert "cast int8 -> float32" in found["cast"] and "cast float32 -> int8" in found["cast1"]
    assert "float immediate 0.05" in found["multiply"]
    with pytest.raises(FloatOpError, match="Relax function 'main'.*call_tir\\(cast\\) is float32"):
        tvm.transform.Sequential([VerifyIntegerOnly()])(mod)  # the exception class survives the C++ pass runner


@pytest.mark.parametrize("fuse", [False, True], ids=["legalized", "fused"])
def test_float_intermediate_inside_a_prim_func_is_rejected(fuse):
    mod = _legalized(linear, requant, exp_via_float)
    mod = _zero(mod) if fuse else mod
    for allow in (False, True):
        found = _rejected_prim_funcs(mod, allow_float_outputs=allow)
        (name,) = found  # only the PrimFunc holding the float
        assert "exp_via_float" in name and "tirx.exp" in found[name] and "cast float32 -> int32" in found[name]
    assert "float32 buffer 'e_f32" in _rejected_prim_funcs(mod)[name]


@pytest.mark.parametrize("fuse", [False, True], ids=["legalized", "fused"])
def test_final_dequantization_is_allowed_only_on_request(fuse):
    mod = _legalized(linear, requant, to_f32, scale)
    mod = _zero(mod) if fuse else mod
    dequant = tuple(n for n in _prim_names(mod) if "cast" in n or "multiply" in n)
    assert set(_rejected_prim_funcs(mod)) == set(dequant)
    report = verify_integer_only(mod, allow_float_outputs=True)
    assert report.float_outputs == dequant and report.prim_funcs == tuple(_prim_names(mod))


@pytest.mark.parametrize("fuse", [False, True], ids=["legalized", "fused"])
def test_float_in_the_middle_is_rejected_even_when_float_outputs_are_allowed(fuse):
    mod = _legalized(linear, requant, to_f32, scale, to_i8, linear)
    mod = _zero(mod) if fuse else mod
    found = _rejected_prim_funcs(mod, allow_float_outputs=True)
    (name,) = [n for n in found if "cast" in n]
    assert "cast float32 -> int8" in found[name]
    with pytest.raises(FloatOpError):
        tvm.transform.Sequential([VerifyIntegerOnly(allow_float_outputs=True)])(mod)


def test_float_parameter_is_rejected_even_when_float_outputs_are_allowed():
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        bb.emit_func_output(x)
    with pytest.raises(FloatOpError, match="float32 parameter 'x'"):
        verify_integer_only(bb.get(), allow_float_outputs=True)


def test_float_input_prim_func_without_a_relax_caller_is_rejected_even_when_allowed():
    a = te.placeholder((4,), "float32", name="a_f32")
    scaled = te.compute((4,), lambda i: a[i] * tirx.const(0.5, "float32"), name="scaled")
    mod = tvm.IRModule({"scale_only": te.create_prim_func([a, scaled]).with_attr("global_symbol", "scale_only")})
    assert "load from float32 input buffer 'a_f32'" in _rejected_prim_funcs(mod, allow_float_outputs=True)["scale_only"]
