"""The graph rewrite (relay_passes/rewrite_to_ibert.py): TVM's import of the float model's torch.export graph,
rewritten into ibert.* ops, computes exactly the integers of the program emitted from the HF modules (which
tests/test_model.py checks against HF's IBertModel), compiles integer-only, and refuses what it cannot
rewrite by name."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm_ffi import structural_equal

from ibert_tvm.float_reference import float_program
from ibert_tvm.model import UnsupportedModelError, from_pretrained
from ibert_tvm.relay_passes.pipeline import build
from ibert_tvm.relay_passes.rewrite_to_ibert import rewrite_to_ibert
from transformers import BertConfig, BertModel

from test_model import COMMON, batches, program_inputs, tiny, with_segments

BATCH, SEQ = 3, 20


def _inputs(pad: int) -> list[np.ndarray]:
    b = batches(pad, 1, BATCH, SEQ, seed=5)[0]
    return program_inputs(b)


def _run(mod: tvm.IRModule, inputs: list[np.ndarray], exe=None) -> np.ndarray:
    exe = exe or tvm.compile(relax.transform.LegalizeOps()(mod), "llvm")
    return relax.VirtualMachine(exe, tvm.cpu())["main"](*map(tvm.runtime.tensor, inputs)).numpy()


def _unscheduled(mod: tvm.IRModule, inputs: list[np.ndarray], tiny_bert) -> np.ndarray:
    """`_run(mod, inputs)`, taken from conftest's `tiny_bert` (compiled once a session) when `mod` is structurally
    its program, constants included, and `inputs` are its inputs."""
    same = structural_equal(mod, tiny_bert.mod) and all(map(np.array_equal, inputs, tiny_bert.inputs))
    return tiny_bert.reference if same else _run(mod, inputs)


def _quantized(kind: str, **options):
    pad = 1 if kind == "roberta" else 0
    return from_pretrained(tiny(kind), calibration=batches(pad, 2, 4, 16, seed=1), **options), pad


@pytest.mark.parametrize("kind, semantics, pipeline", [("bert", "ibert", False), ("roberta", "hf", True)])
def test_rewritten_graph_equals_the_emitted_program(kind, semantics, pipeline, report, tiny_bert):
    """Every int8 output identical, padding and a batch/length unlike calibration included; built by the
    integer pipeline (phase 2 verifies that no float survived) or plainly."""
    qm, pad = _quantized(kind, semantics=semantics, importer="graph")
    rewritten = qm.program(BATCH, SEQ)
    ops = {c.op.name for c in _calls(rewritten)}
    assert {"ibert.embedding", "ibert.linear", "ibert.matmul", "ibert.int_softmax", "ibert.int_gelu",
            "ibert.int_layernorm", "ibert.requantize"} <= ops
    assert not {"relax.nn.softmax", "relax.nn.gelu", "relax.nn.layer_norm", "relax.matmul"} & ops
    inputs = _inputs(pad)
    ours = _run(rewritten, inputs, build(rewritten, "llvm") if pipeline else None)
    emitted = dataclasses.replace(qm, importer="modules").program(BATCH, SEQ)
    np.testing.assert_array_equal(ours, _unscheduled(emitted, inputs, tiny_bert))
    if kind == "bert":  # sentence pairs: the graph's token-type lookup reads the program's input
        pairs = program_inputs(with_segments(batches(pad, 1, BATCH, SEQ, seed=5)[0], seed=3))
        paired = _run(rewritten, pairs)
        np.testing.assert_array_equal(paired, _run(emitted, pairs))
        assert not np.array_equal(paired, ours)
    report(f"graph rewrite, {kind} '{semantics}': int8 outputs identical to the module-emitted program "
           f"({'integer pipeline' if pipeline else 'plain'} build)")


def test_the_written_out_erf_gelu_is_the_integer_gelu(tiny_bert):
    """hidden_act="gelu_python" (HF's x * 0.5 * (1 + erf(x / sqrt(2))), the function the modules importer runs as
    the erf GELU): its graph's GELU becomes ibert.int_gelu, every int8 output identical to the module-emitted
    program's (it was refused at program time, after calibration, as 'relax.multiply' outside BERT)."""
    torch.manual_seed(0)  # tiny("bert")'s weights
    model = BertModel(BertConfig(pad_token_id=0, hidden_act="gelu_python", **COMMON), add_pooling_layer=False).eval()
    qm = from_pretrained(model, calibration=batches(0, 2, 4, 16, seed=1), importer="graph")
    rewritten = qm.program(BATCH, SEQ)
    ops = {c.op.name for c in _calls(rewritten)}
    assert "ibert.int_gelu" in ops and not {"relax.erf", "relax.multiply"} & ops
    inputs = _inputs(0)
    emitted = dataclasses.replace(qm, importer="modules").program(BATCH, SEQ)
    np.testing.assert_array_equal(_run(rewritten, inputs), _unscheduled(emitted, inputs, tiny_bert))


def test_q8bert_mode_through_the_rewrite():
    """force_dequant="nonlinear": float Softmax / GELU / LayerNorm between int8 GEMMs, as the emitted program."""
    qm, pad = _quantized("bert", force_dequant="nonlinear")
    rewritten = rewrite_to_ibert(float_program(qm.source, BATCH, SEQ, keep_params=True, mask_dtype="int32"),
                                 qm.ibert)  # the pass on its own, as a pipeline would call it
    assert "relax.nn.softmax" in {c.op.name for c in _calls(rewritten)}
    inputs = _inputs(pad)
    np.testing.assert_array_equal(_run(rewritten, inputs), _run(qm.program(BATCH, SEQ), inputs))


def test_an_op_without_integer_form_is_refused_by_name():
    """A ReLU feed-forward (its graph) against a GELU model's ranges: the rewrite names relu."""
    qm, _ = _quantized("bert")
    relu = copy.deepcopy(qm.source)
    for layer in relu.encoder.layer:
        layer.intermediate.intermediate_act_fn = torch.nn.ReLU()
    graph = float_program(relu, BATCH, SEQ, keep_params=True, mask_dtype="int32")
    with pytest.raises(UnsupportedModelError, match="relax.nn.relu"):
        rewrite_to_ibert(graph, qm.ibert)


def test_other_weights_are_refused():
    qm, _ = _quantized("bert")
    other = copy.deepcopy(qm.source)
    with torch.no_grad():
        other.encoder.layer[1].output.dense.weight.add_(0.01)
    graph = float_program(other, BATCH, SEQ, keep_params=True, mask_dtype="int32")
    with pytest.raises(UnsupportedModelError, match="encoder.layer.1.output.dense.weight.*not the same weights"):
        rewrite_to_ibert(graph, qm.ibert)


def test_a_half_precision_encoder_is_exported_as_its_float32_upcast():
    """importer="graph" and float_program export a float32 copy of a float16 encoder, so both give its float32
    upcast's program (TVM's import of the float16 graph failed on a float16 bias added to a float32 product)."""
    half = tiny("bert").half()
    upcast = copy.deepcopy(half).float()
    cal = batches(0, 1, 2, 8, seed=1)
    tvm.ir.assert_structural_equal(from_pretrained(half, calibration=cal, importer="graph").program(2, 8),
                                   from_pretrained(upcast, calibration=cal, importer="graph").program(2, 8))
    tvm.ir.assert_structural_equal(float_program(half, 2, 8), float_program(upcast, 2, 8))
    assert half.dtype == torch.float16


def test_graph_importer_refuses_an_ibert_checkpoint():
    qm, _ = _quantized("roberta")
    with pytest.raises(UnsupportedModelError, match="importer='graph' needs a float"):
        from_pretrained(qm.ibert, importer="graph")


def _calls(mod: tvm.IRModule) -> list[relax.Call]:
    return [b.value for block in mod["main"].body.blocks for b in block.bindings if isinstance(b.value, relax.Call)]
