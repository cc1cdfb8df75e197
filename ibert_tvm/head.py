"""Sequence-classification heads: dense -> tanh (ReLU for DistilBERT) -> linear on the first token, integer-only
or float.

BERT's pooler + classifier, RoBERTa/IBert's classification head and DistilBERT's pre-classifier + classifier have
the same shape. HF's IBert runs its head in float; here it is integer by default: `ibert.linear` (int8 weights per
channel), a requantization to int8 at a calibrated scale, the activation as an exact int8 -> int8 table
(`ibert.lookup`: tanh to the scale 1/127, ReLU at its input's scale), and a final `ibert.linear` giving int32
logits with a per-class scale. `head="float"` keeps HF's float head instead
(the program then ends with a dequantization, reported as such by `verify_integer_only`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers.models.ibert.quant_modules import QuantAct
from tvm import relax

from . import layers, ops, quant
from .calibration import Batch, finite_ranges, position_ids

HEAD_MODES = ("integer", "float")
#: The head's activation between its two linear layers, as a float function of real values.
ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}


@dataclass
class ClassifierHead:
    """The head's float layers, its activation and the calibrated 8-bit range of the activation's input."""

    dense: nn.Linear
    out: nn.Linear
    pre_activation: QuantAct
    activation: str = "tanh"

    @property
    def num_labels(self) -> int:
        return self.out.out_features

    def activation_scale(self) -> np.float32:
        """The int8 scale of the activation's output: tanh's (-1, 1) at 1/127; ReLU's at its input's (exact)."""
        return quant.TANH_OUT_SCALE if self.activation == "tanh" else np.float32(layers.act_scale(self.pre_activation))


def head_of(model: nn.Module) -> ClassifierHead | None:
    """The classification head of a `...ForSequenceClassification`, or None for a bare encoder."""
    classifier = getattr(model, "classifier", None)
    if classifier is None:
        return None
    if hasattr(classifier, "dense") and hasattr(classifier, "out_proj"):  # RoBERTa / IBert
        return ClassifierHead(classifier.dense, classifier.out_proj, QuantAct(8, quant_mode=True))
    pooler = getattr(getattr(model, "bert", None), "pooler", None)
    if isinstance(classifier, nn.Linear) and pooler is not None:  # BERT: pooler dense + tanh, classifier
        return ClassifierHead(pooler.dense, classifier, QuantAct(8, quant_mode=True))
    pre_classifier = getattr(model, "pre_classifier", None)
    if isinstance(classifier, nn.Linear) and isinstance(pre_classifier, nn.Linear):  # DistilBERT: ReLU between
        return ClassifierHead(pre_classifier, classifier, QuantAct(8, quant_mode=True), "relu")
    raise ValueError(f"classification head {type(classifier).__name__} is not supported "
                     "(expected dense -> tanh or ReLU -> linear on the first token)")


def calibrate_head(head: ClassifierHead, qmodel, model_type: str, batches: Iterable[Batch]) -> None:
    """EMA range (momentum 0.95) of the dense output on the calibrated encoder's first-token features; the encoder
    runs in eval mode, so its ranges (a trained IBert checkpoint's) stay as they are."""
    was_training = qmodel.training
    qmodel.eval()
    head.pre_activation.train()
    try:
        with torch.no_grad(), finite_ranges({"head.pre_activation": head.pre_activation}):
            for batch in batches:
                hidden = qmodel(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                token_type_ids=batch.token_type_ids,
                                position_ids=position_ids(model_type, batch.input_ids, qmodel.config.pad_token_id)
                                ).last_hidden_state
                head.pre_activation(head.dense(hidden[:, 0, :]))
    finally:
        head.pre_activation.eval()
        qmodel.train(was_training)


def first_token(bb: relax.BlockBuilder, h: layers.QTensor) -> layers.QTensor:
    """[B, L, H] -> [B, H] at position 0 (the CLS / <s> token). Mode "clip": the same element for this index,
    without TVM's "fast mode segfaults" warning at every build."""
    return layers.QTensor(bb.emit(relax.op.take(h.value, relax.const(0, "int64"), axis=1, mode="clip")), h.scale)


def integer_head(bb: relax.BlockBuilder, h: layers.QTensor, head: ClassifierHead) -> layers.QTensor:
    """int8 hidden states -> int32 logits (per-class scale), integer-only."""
    x = layers.quant_linear(bb, first_token(bb, h), head.dense)
    x = layers.requantize_act(bb, x, head.pre_activation)
    out_scale = head.activation_scale()
    table = quant.lookup_table(ACTIVATIONS[head.activation], float(x.scale), float(out_scale))
    t = layers.QTensor(bb.emit(ops.lookup(x.value, table)), np.asarray(out_scale))
    return layers.quant_linear(bb, t, head.out)


def float_head(bb: relax.BlockBuilder, h: layers.QTensor, head: ClassifierHead) -> relax.Expr:
    """HF's float head on the dequantized first token: float32 logits."""
    def dense(x: relax.Expr, lin: nn.Linear) -> relax.Expr:
        w = relax.const(lin.weight.detach().numpy().T.copy())
        return bb.emit(relax.op.add(relax.op.matmul(x, w), relax.const(lin.bias.detach().numpy())))

    x = layers.dequantize(bb, first_token(bb, h))
    activation = relax.op.tanh if head.activation == "tanh" else relax.op.nn.relu
    return dense(bb.emit(activation(dense(x, head.dense))), head.out)
