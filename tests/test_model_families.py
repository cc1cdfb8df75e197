"""The model types run through a family's program: DistilBERT as BERT (no segments; a ReLU head), XLM-RoBERTa and
CamemBERT as RoBERTa. Each is checked against HF's IBertModel on the same weights and against the float model."""

import copy

import numpy as np
import pytest
import torch
from transformers import (DistilBertConfig, DistilBertForSequenceClassification, DistilBertModel, IBertModel,
                          XLMRobertaConfig, XLMRobertaForSequenceClassification)

import ibert_tvm
from ibert_tvm.model import UnsupportedModelError, distilbert_as_bert, from_pretrained, position_ids
from ibert_tvm.runtime import InputError
from test_model import DISTIL, ROBERTA_LIKE, batches, run, tiny

def tiny_classifier(kind: str):
    torch.manual_seed(0)
    if kind == "distilbert":
        return DistilBertForSequenceClassification(DistilBertConfig(num_labels=3, **DISTIL)).eval()
    return XLMRobertaForSequenceClassification(XLMRobertaConfig(num_labels=3, **ROBERTA_LIKE)).eval()


def float_hidden(model, b) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=b.input_ids, attention_mask=b.attention_mask).last_hidden_state.numpy()


@pytest.mark.parametrize("kind", ["distilbert", "xlm-roberta", "camembert"])
def test_family_weights_compute_the_float_model(kind, report):
    """The weights carried into HF's IBertModel compute the float model's hidden states (run in float: the mapping
    of names, positions and segments is right), and with "ibert" semantics each real token's integer state points
    where the float model's does. (That the program equals that IBertModel in quant mode, layer by layer, is
    `test_model.py::test_hf_semantics_matches_ibert_model`.)"""
    fm = tiny(kind)
    pad = fm.config.pad_token_id
    qm = from_pretrained(fm, calibration=batches(pad, 3, 4, 24, seed=1))
    b = batches(pad, 1, 3, 20, seed=2)[0]
    real = b.attention_mask.numpy().astype(bool)
    reference = float_hidden(fm, b)

    config = copy.deepcopy(qm.ibert.config)
    config.quant_mode = False
    float_ibert = IBertModel(config, add_pooling_layer=False).eval()
    state = fm.state_dict()
    float_ibert.load_state_dict(distilbert_as_bert(state, config.hidden_size) if kind == "distilbert" else state,
                                strict=False)
    with torch.no_grad():
        carried = float_ibert(input_ids=b.input_ids, attention_mask=b.attention_mask,
                              position_ids=position_ids(qm.model_type, b.input_ids, pad)).last_hidden_state.numpy()
    np.testing.assert_allclose(carried[real], reference[real], atol=1e-5)

    ours = run(qm, b).astype(np.float32) * qm.hidden_scale
    cos = np.sum(ours * reference, -1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(reference, axis=-1)
    report(f"{kind}, 'ibert' semantics vs the float model: per-token cosine min {cos[real].min():.4f}")
    assert cos[real].min() >= 0.98
    assert qm.source_type == kind and qm.model_type == ("bert" if kind == "distilbert" else "roberta")


@pytest.mark.parametrize("kind", ["distilbert", "xlm-roberta"])
def test_family_classification_head(kind, report):
    """The integer head (DistilBERT's: pre-classifier, ReLU, classifier) vs the float model's own head modules on
    HF IBertModel's hidden states."""
    fm = tiny_classifier(kind)
    pad = fm.config.pad_token_id
    qm = from_pretrained(fm, calibration=batches(pad, 3, 4, 24, seed=1), semantics="hf")
    b = batches(pad, 1, 6, 20, seed=2)[0]
    ours = run(qm, b).astype(np.float32) * qm.output_scale
    with torch.no_grad():
        hidden = qm.ibert(input_ids=b.input_ids, attention_mask=b.attention_mask,
                          position_ids=position_ids(qm.model_type, b.input_ids, pad)).last_hidden_state
        if kind == "distilbert":
            ref = fm.classifier(torch.relu(fm.pre_classifier(hidden[:, 0]))).numpy()
        else:
            ref = fm.classifier(hidden).numpy()  # RoBERTa's head: dense, tanh, out_proj on the first token
    worst = float(np.abs(ours - ref).max() / np.abs(ref).max())
    report(f"{kind} integer classification head vs the model's float head: max |logit diff| {100 * worst:.2f}% of "
           "the largest logit")
    assert qm.head.activation == ("relu" if kind == "distilbert" else "tanh")
    assert worst <= 0.05
    np.testing.assert_array_equal(ours.argmax(1), ref.argmax(1))


def test_distilbert_classifier_compiles_exports_and_ignores_segments(tmp_path):
    """A DistilBERT classifier through compile (default schedules), export and load: the library's integers are the
    unscheduled program's; it has no segment embedding, so a pair's type-1 tokens (a BERT tokenizer marks them)
    change nothing, as HF's DistilBERT ignores token types, and types past 1 are refused by name."""
    fm = tiny_classifier("distilbert")
    qm = from_pretrained(fm, calibration=batches(0, 2, 4, 16, seed=1))
    b = batches(0, 1, 2, 16, seed=3)[0]
    path = ibert_tvm.compile(qm, "llvm", tuning_logs=False, batch_sizes=(2,), seq_lengths=(16,)).export(
        tmp_path / "distilbert.so")
    m = ibert_tvm.load(path)
    ids, mask = b.input_ids.numpy(), b.attention_mask.numpy()
    single = m(ids, mask, integer=True)
    np.testing.assert_array_equal(single, run(qm, b))
    np.testing.assert_array_equal(m(ids, mask, (np.arange(16) >= 8).astype(np.int64)[None].repeat(2, 0),
                                    integer=True), single)
    assert (m.meta["model"]["source_type"], m.meta["model"]["type_vocab_size"]) == ("distilbert", 2)
    with pytest.raises(InputError, match="token_type_ids must lie in"):
        m(ids, mask, np.full_like(ids, 2))


def test_distilbert_refusals_name_the_feature():
    fm = tiny("distilbert")
    with pytest.raises(UnsupportedModelError, match="importer='graph'.*DistilBERT"):
        from_pretrained(fm, calibration=batches(0, 1, 2, 8, seed=1), importer="graph")
    torch.manual_seed(0)
    relu = DistilBertModel(DistilBertConfig(activation="relu", **DISTIL)).eval()
    with pytest.raises(UnsupportedModelError, match="activation 'relu'"):
        from_pretrained(relu, calibration=batches(0, 1, 2, 8, seed=1))
