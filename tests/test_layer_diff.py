"""Per-layer diff (`ibert_tvm.layer_diff`): every stage of tiny models agrees with HF and the float model, a broken
range is found at its layer, and the report holds one row per stage."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import tvm

from ibert_tvm.layer_diff import _float_states, compare_layers, layer_program, write_report
from ibert_tvm.model import from_pretrained
from test_model import batches, tiny

STAGES = ["embeddings", "layer 0", "layer 1"]  # numbered as encoder.layer.N


def calibrated(kind: str):
    """`tiny(kind)` calibrated with "hf" semantics, and a batch (row 1 padded) of another shape than calibration's."""
    fm = tiny(kind)
    pad = fm.config.pad_token_id
    return (from_pretrained(fm, calibration=batches(pad, 3, 4, 24, seed=1), semantics="hf"),
            batches(pad, 1, 3, 20, seed=2)[0])


@pytest.fixture(scope="module")
def bert():
    return calibrated("bert")


def measured(diff, report, what: str = "") -> None:
    """Report each stage's figures."""
    for s in diff.stages:
        report(f"layer diff {diff.model}{what} {s.name}: cosine min {s.cosine_min:.4f} mean {s.cosine_mean:.4f}, "
               f"max rel. error {s.max_rel_error:.4f}, {100 * s.identical:.2f} % identical to IBertModel")


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_every_stage_matches_hf_and_the_float_model(kind, bert, report):
    qm, b = bert if kind == "bert" else calibrated(kind)
    diff = compare_layers(qm, b.input_ids, b.attention_mask)
    if kind == "bert":  # no mask: every token real
        whole = compare_layers(qm, b.input_ids, None)
        assert whole.tokens == b.input_ids.numel()
    measured(diff, report)
    assert [s.name for s in diff.stages] == STAGES
    assert diff.tokens == int(b.attention_mask.sum())
    for s in diff.stages:
        assert s.identical == 1.0
        assert s.cosine_min >= 0.98 and s.cosine_mean >= s.cosine_min


def test_a_saturating_layer_is_localised(bert, report, tmp_path):
    """Layer 1's output range shrunk 1000-fold saturates it: its cosine drops, the stages before it keep theirs;
    HF's simulation saturates alike (the same ranges), so the identical share stays 100 %."""
    qm, b = bert
    broken = dataclasses.replace(qm, ibert=copy.deepcopy(qm.ibert))
    act = broken.ibert.encoder.layer[1].output.output_activation
    act.x_max *= 1e-3
    act.x_min *= 1e-3
    diff = compare_layers(broken, b.input_ids, b.attention_mask)
    measured(diff, report, " (layer 1's range x 1e-3)")
    emb, first, second = diff.stages
    assert emb.cosine_min >= 0.98 and first.cosine_min >= 0.98
    assert second.cosine_mean < 0.9 and second.max_rel_error > 0.5
    assert second.identical == 1.0

    paths = write_report(diff, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["layers.json", "layers.md", "layers.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    rows = json.loads((tmp_path / "out" / "layers.json").read_text())["diff"]["stages"]
    assert [r["name"] for r in rows] == STAGES and rows[2]["cosine_min"] == second.cosine_min
    table = [line for line in (tmp_path / "out" / "layers.md").read_text().splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == [f"| {name}" for name in STAGES]


def test_a_quant_mode_ibert_is_compared_with_its_weights_in_float(bert):
    """A quant-mode IBert source is compared with its own weights run in float, which give the float model's
    hidden states (no compile needed to tell)."""
    qm, b = bert
    ours, name = _float_states(dataclasses.replace(qm, source=qm.ibert), b)
    ref, _ = _float_states(qm, b)
    assert "quant_mode=False" in name and len(ours) == len(ref) == 3
    real = b.attention_mask.numpy().astype(bool)
    for mine, theirs in zip(ours, ref):
        np.testing.assert_allclose(mine[real], theirs[real], atol=1e-4)


def test_graph_importer_models_and_bad_tokens(bert):
    """A graph-imported model's stages are the modules importer's program; tokens outside the vocabulary are named
    before anything is compiled."""
    qm, b = bert
    tvm.ir.assert_structural_equal(layer_program(dataclasses.replace(qm, importer="graph"), 3, 20),
                                   layer_program(qm, 3, 20))
    with pytest.raises(ValueError, match="the vocabulary"):
        compare_layers(qm, b.input_ids + 1000, b.attention_mask)
    with pytest.raises(ValueError, match="at least 2 tokens, got length 1"):  # (TVM failed to build it)
        compare_layers(qm, [[5]], [[1]])
