"""From a HuggingFace BERT-family encoder (BERT, DistilBERT, RoBERTa, XLM-RoBERTa, CamemBERT, IBert) to a calibrated,
integer-only Relax program.

The float model's weights are carried into HF's own `IBertModel` (quant_mode=True): its `QuantAct` modules
hold the activation ranges — trained ones for an IBert checkpoint, or calibrated here with HF's running
min/max (momentum 0.95, spec §1.5) for a float BERT/RoBERTa — and `layers` emits the integer program at
exactly the quantization points of the spec's §5 tables. Scales are propagated between layers ("ibert"
semantics), which equals HF's computation for the first layer (HF reuses the embedding scale, spec §5.3).
"""

from __future__ import annotations

import copy
import numbers
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tvm
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer, IBertConfig, IBertModel, PreTrainedModel
from transformers.models.ibert.modeling_ibert import IBertLayer
from transformers.models.ibert.quant_modules import IntLayerNorm, QuantAct
from tvm import relax

from . import layers, quant
from .artifact import bucket_function as function_name  # the Relax function of one shape bucket
from .artifact import problem_type
from .head import HEAD_MODES, ClassifierHead, calibrate_head, float_head, head_of, integer_head
from .calibration import Batch, batches_from_texts, calibrate, position_ids, quant_acts
from .texts import Text, id_problem, is_text, mask_problem, token_type_problem


__all__ = ["Batch", "MIN_SEQ_LENGTH", "QuantizedModel", "UnsupportedModelError", "UnusedCalibrationWarning",
           "as_float32", "from_onnx", "from_pretrained", "check_bucket_tokens", "check_seq_lengths", "function_name",
           "load_float32", "max_seq_length", "position_ids", "position_limit", "shape_buckets", "to_ibert",
           "tokenizer_from", "tokenizer_in"]


class UnsupportedModelError(ValueError):
    """The model uses a feature the integer-only compiler does not support; the message names it."""


class UnusedCalibrationWarning(UserWarning):
    """Calibration was given for a model that needs none (a trained IBert checkpoint without an integer head)."""


#: Each supported model type's family, whose integer program it runs: BERT's (positions from 0; DistilBERT is a
#: BERT without segment embeddings) or RoBERTa's (positions from the padding index + 1; XLM-RoBERTa and CamemBERT
#: are RoBERTa with other vocabularies, IBert RoBERTa with HF's integer simulation).
FAMILIES = {"bert": "bert", "distilbert": "bert", "roberta": "roberta", "xlm-roberta": "roberta",
            "camembert": "roberta", "ibert": "roberta"}
SUPPORTED_TYPES = tuple(FAMILIES)


def family(model_type: str) -> str:
    """The family ("bert" or "roberta") of a supported model type."""
    return FAMILIES[model_type]


#: transformers' names of the erf GELU, the function i-GELU approximates ("gelu_python" computes it in Python).
ERF_GELU = ("gelu", "gelu_python")


def _activation(config) -> str:
    """The feed-forward activation (DistilBERT's config calls it `activation`)."""
    return getattr(config, "hidden_act", None) or getattr(config, "activation", "gelu")


def _check_supported(config) -> None:
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED_TYPES:
        raise UnsupportedModelError(f"model type '{kind}' is not supported (supported: {', '.join(SUPPORTED_TYPES)})")
    if _activation(config) not in ERF_GELU:
        raise UnsupportedModelError(f"activation '{_activation(config)}' is not supported: I-BERT has an integer "
                                    "GELU only")
    if getattr(config, "num_hidden_layers", 1) < 1:
        raise UnsupportedModelError("a model without encoder layers (num_hidden_layers 0) is not supported")
    if getattr(config, "hidden_size", 2) < 2:
        raise UnsupportedModelError("a hidden size of 1 is not supported: a LayerNorm over one channel has no "
                                    "variance (HF's integer LayerNorm divides by it)")
    pos = getattr(config, "position_embedding_type", "absolute")
    if pos not in (None, "absolute"):
        raise UnsupportedModelError(f"position_embedding_type '{pos}' is not supported: only absolute "
                                    "position embeddings have an integer lookup")
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise UnsupportedModelError("decoder / cross-attention models are not supported (encoders only)")


#: Heads whose output is not the encoder's or one label per sequence: compiling their encoder alone would drop
#: what the checkpoint was trained to output. (...ForMaskedLM / ...ForPreTraining checkpoints are the usual
#: source of an encoder, so their heads are dropped without a word.)
_DROPPED_HEADS = ("ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice", "ForNextSentencePrediction",
                  "ForCausalLM", "LMHeadModel")
#: The shortest sequence bucket: a real input holds [CLS] and [SEP] at least (length 1 does not build).
MIN_SEQ_LENGTH = 2
#: The most tokens (batch x sequence length) one shape bucket holds: calls are split over the compiled batch sizes,
#: so a larger bucket gains nothing, and one of 2^63 failed in Relax and one of 2^31 in numpy, with tracebacks
MAX_BUCKET_TOKENS = 1 << 24
#: Files one of which a tokenizer directory holds (fast, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model")


def _check_head(architecture: str) -> None:
    """Refuse an architecture whose task head the integer program would drop."""
    if architecture.endswith(_DROPPED_HEADS):
        raise UnsupportedModelError(f"architecture {architecture} is not supported: its head would be dropped "
                                    "(ibert-tvm compiles an encoder, or a ...ForSequenceClassification model; for "
                                    "this checkpoint's encoder alone, pass transformers' AutoModel of it)")


def as_float32(model: PreTrainedModel) -> PreTrainedModel:
    """`model` itself where its floating weights and buffers are all float32, else a float32 copy (a float16 /
    bfloat16 / float64 checkpoint): calibration, the checks, heads and float references all compute in float32,
    and the caller's module keeps its dtype."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.dtype == torch.float32 for t in tensors if t.is_floating_point()):
        return model
    return copy.deepcopy(model).float()


def load_float32(auto_class: type, path: str | os.PathLike, **options) -> PreTrainedModel:
    """`auto_class.from_pretrained` of a local directory in float32, whatever dtype it was saved in (transformers 5
    loads a checkpoint in its saved dtype; see `as_float32`)."""
    return auto_class.from_pretrained(path, local_files_only=True, dtype=torch.float32, **options)


def _load(model_or_dir: PreTrainedModel | str | Path) -> PreTrainedModel:
    """The model to quantize, in float32 (`as_float32`): the caller's object or a local directory's checkpoint, a
    task head the program would drop refused by name."""
    if isinstance(model_or_dir, PreTrainedModel):
        _check_head(type(model_or_dir).__name__)
        return as_float32(model_or_dir)
    if not isinstance(model_or_dir, (str, os.PathLike)):
        raise TypeError(f"from_pretrained takes a model directory or a transformers PreTrainedModel, got "
                        f"{type(model_or_dir).__name__}")
    path = Path(model_or_dir)
    config = local_config(path)
    for architecture in config.architectures or []:
        _check_head(architecture)
    if any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])):
        return load_float32(AutoModelForSequenceClassification, path)
    return load_float32(AutoModel, path)


def local_config(path: Path):
    """A local model directory's config (no weights read), checked as a supported model."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a local model directory (no download is attempted)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a HuggingFace model directory (save_pretrained "
                                "writes one)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    _check_supported(config)
    return config


def max_seq_length(model_dir: str | os.PathLike) -> int:
    """The longest sequence a local model directory's position embeddings cover, from its config alone (the
    `QuantizedModel.max_seq_length` it would have, known before loading weights or calibrating)."""
    config = local_config(Path(model_dir))
    return position_limit(config, config.model_type)


def _encoder_of(model: PreTrainedModel) -> PreTrainedModel:
    """The bare encoder of a `...Model` or `...ForSequenceClassification`."""
    for attr in ("ibert", "roberta", "bert", "distilbert"):
        if hasattr(model, attr) and isinstance(getattr(model, attr), PreTrainedModel):
            return getattr(model, attr)
    return model


#: HF's Q8BERT switch: which nonlinearities stay float ("none": integer-only; "nonlinear": all three).
FORCE_DEQUANT = ("none", "gelu", "softmax", "layernorm", "nonlinear")
#: HF's test of an untouched QuantAct range (its buffers start at -1e-5 / +1e-5; quant_modules.QuantAct).
_UNTOUCHED_RANGE = 1.1e-5


def _quant_mode_ibert(encoder: PreTrainedModel) -> bool:
    """Whether `encoder` is an IBert checkpoint with quant_mode=True (HF's simulation of the integers)."""
    return encoder.config.model_type == "ibert" and bool(encoder.config.quant_mode)


def _touched(act: QuantAct) -> bool:
    """Whether a QuantAct holds a range (trained or calibrated), not HF's initial one."""
    return float(act.x_min.min()) <= -_UNTOUCHED_RANGE or float(act.x_max.max()) >= _UNTOUCHED_RANGE


def _has_trained_ranges(encoder: PreTrainedModel) -> bool:
    """Whether `encoder` is a quant-mode IBert whose QuantActs hold ranges (trained or calibrated), which are kept;
    one whose ranges are all still untouched is calibrated as a float model is."""
    return _quant_mode_ibert(encoder) and any(_touched(a) for a in quant_acts(encoder).values())


def to_ibert(model: PreTrainedModel, force_dequant: str | None = None) -> IBertModel:
    """An `IBertModel(quant_mode=True)` with the float model's weights, or an IBert checkpoint's trained encoder.

    `force_dequant` is HF's switch for Q8BERT mode: the named nonlinearities ("nonlinear" = all three) stay
    float, between int8 GEMMs; None: the checkpoint's own setting ("none" for a float model). A trained IBert
    encoder is returned as is where that is its own setting, else as a copy (weights and ranges) with it; a model not
    in float32 is read as its float32 copy (`as_float32`).
    """
    model = as_float32(model)
    encoder = _encoder_of(model)
    _check_supported(encoder.config)
    own = encoder.config.force_dequant if _quant_mode_ibert(encoder) else "none"
    force_dequant = own if force_dequant is None else force_dequant
    if force_dequant not in FORCE_DEQUANT:
        raise ValueError(f"force_dequant must be one of {FORCE_DEQUANT} or None, got {force_dequant!r}")
    if _has_trained_ranges(encoder):
        return encoder if force_dequant == own else _with_force_dequant(encoder, force_dequant)
    src = encoder.config
    distilbert = src.model_type == "distilbert"
    cfg = IBertConfig(vocab_size=src.vocab_size, hidden_size=src.hidden_size, num_hidden_layers=src.num_hidden_layers,
                      num_attention_heads=src.num_attention_heads,
                      intermediate_size=src.hidden_dim if distilbert else src.intermediate_size,
                      max_position_embeddings=src.max_position_embeddings,
                      type_vocab_size=2 if distilbert else src.type_vocab_size,
                      pad_token_id=src.pad_token_id if src.pad_token_id is not None else 0,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, quant_mode=True,
                      force_dequant=force_dequant, layer_norm_eps=DISTILBERT_LAYER_NORM_EPS if distilbert
                      else src.layer_norm_eps,
                      id2label=dict(model.config.id2label))  # the labels of a classifier's head
    pad = cfg.pad_token_id
    if family(src.model_type) == "bert" and pad >= cfg.max_position_embeddings:
        cfg.pad_token_id = 0  # IBert's position table pads at the pad id, which BERT's positions never use
    target = IBertModel(cfg, add_pooling_layer=False)
    target.config.pad_token_id = pad
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
    if distilbert:
        state = distilbert_as_bert(state, src.hidden_size)
    missing, unexpected = target.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.endswith("position_ids") and not k.endswith("token_type_ids")]
    if unexpected:
        raise UnsupportedModelError(f"weights with no I-BERT counterpart: {', '.join(unexpected[:5])}")
    weights_missing = [k for k in missing if k.endswith(".weight") or k.endswith(".bias")]
    if weights_missing:
        raise UnsupportedModelError(f"weights the I-BERT model needs but the model lacks: {weights_missing[:5]}")
    return target.eval()


#: DistilBERT's LayerNorms' epsilon, fixed in its modules (its config has none).
DISTILBERT_LAYER_NORM_EPS = 1e-12
#: DistilBERT's names of a layer's modules -> BERT's (`distilbert_as_bert`).
_DISTILBERT_LAYER = {"attention.q_lin": "attention.self.query", "attention.k_lin": "attention.self.key",
                     "attention.v_lin": "attention.self.value", "attention.out_lin": "attention.output.dense",
                     "sa_layer_norm": "attention.output.LayerNorm", "ffn.lin1": "intermediate.dense",
                     "ffn.lin2": "output.dense", "output_layer_norm": "output.LayerNorm"}


def distilbert_as_bert(state: Mapping[str, torch.Tensor], hidden: int) -> dict[str, torch.Tensor]:
    """A DistilBERT encoder's weights under BERT's names, with a segment table of two zero rows: its layers are
    BERT's post-LayerNorm layers, and an embedding sum without segments is BERT's with a zero segment embedding
    (two rows: a BERT tokenizer, which transformers may pick for a DistilBERT, marks a pair's second sentence
    with type 1, which HF's DistilBERT ignores, as a zero row does)."""
    out = {"embeddings.token_type_embeddings.weight": torch.zeros(2, hidden)}
    for key, value in state.items():
        if key.startswith("transformer.layer."):
            index, module = key[len("transformer.layer."):].split(".", 1)
            name, param = module.rsplit(".", 1)
            key = f"encoder.layer.{index}.{_DISTILBERT_LAYER.get(name, name)}.{param}"
        out[key] = value
    return out


def _with_force_dequant(encoder: IBertModel, force_dequant: str) -> IBertModel:
    """A copy of a quant-mode IBert encoder (every weight and range) with another force_dequant: the caller's model
    is left as it is."""
    config = copy.deepcopy(encoder.config)
    config.force_dequant = force_dequant
    target = IBertModel(config, add_pooling_layer=encoder.pooler is not None)
    target.load_state_dict(encoder.state_dict(), strict=True)
    if encoder.config.force_dequant != "nonlinear":  # the layers in Q8BERT mode of their own stay so
        with_float_layers(target, float_layers_of(encoder))
    return target.eval()


def _check_trained_softmax(encoder: IBertModel, trained_with: str) -> None:
    """A ValueError naming the first integer Softmax of a checkpoint kept with its trained ranges whose input range
    was never trained (the checkpoint ran it in float): its program failed to build with an exp-shift error."""
    for index, layer in enumerate(encoder.encoder.layer):
        softmax = layer.attention.self.softmax
        if softmax.quant_mode and not _touched(softmax.act):
            raise ValueError(f"this IBert checkpoint (force_dequant={trained_with!r}) never trained the range of "
                             f"encoder.layer.{index}.attention.self.softmax.act: that Softmax ran in float, so it must "
                             f"stay float (force_dequant 'softmax' or 'nonlinear', or float_layers=[{index}])")


def check_float_layers(float_layers: Iterable[int], layers: int) -> tuple[int, ...]:
    """`float_layers` as sorted, distinct encoder layer indices, or a ValueError naming the first entry that is
    not one of 0 .. `layers` - 1."""
    if isinstance(float_layers, (str, bytes)) or not isinstance(float_layers, Iterable):
        raise TypeError(f"float_layers must be a list of encoder layer indices, got {type(float_layers).__name__}")
    indices = list(float_layers)
    for index in indices:
        if not isinstance(index, numbers.Integral) or isinstance(index, bool) or not 0 <= index < layers:
            raise ValueError(f"float_layers: {index!r} is not a layer of this encoder (its layers are 0 .. "
                             f"{layers - 1})")
    return tuple(sorted({int(i) for i in indices}))


def check_float_layers_in(model_dir: str | os.PathLike, float_layers: Iterable[int]) -> tuple[int, ...]:
    """`check_float_layers` against a local model directory's layers, read from its config alone (no weights):
    the checks that callers make before calibrating or scoring."""
    return check_float_layers(float_layers, local_config(Path(model_dir)).num_hidden_layers)


def _nonlinearities(layer: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    """An IBert layer's Softmax, GELU and LayerNorms: the modules Q8BERT mode keeps float."""
    return (layer.attention.self.softmax, layer.intermediate.intermediate_act_fn, layer.attention.output.LayerNorm,
            layer.output.LayerNorm)


def float_layers_of(encoder: IBertModel) -> tuple[int, ...]:
    """The layers of a quant-mode IBert encoder whose Softmax, GELU and LayerNorms are all float."""
    return tuple(i for i, layer in enumerate(encoder.encoder.layer)
                 if not any(m.quant_mode for m in _nonlinearities(layer)))


def with_float_layers(encoder: IBertModel, float_layers: tuple[int, ...]) -> IBertModel:
    """`encoder` with the layers `float_layers` rebuilt as HF builds them with force_dequant="nonlinear" (their
    Softmax, GELU and LayerNorms float between the int8 GEMMs; every weight and range kept): Q8BERT mode per
    layer, where HF's switch is model-wide. Changes `encoder` in place (the caller passes its own copy)."""
    config = copy.deepcopy(encoder.config)
    config.force_dequant = "nonlinear"
    for index in float_layers:
        layer = IBertLayer(config)
        layer.load_state_dict(encoder.encoder.layer[index].state_dict(), strict=True)
        encoder.encoder.layer[index] = layer.eval()
    return encoder


@dataclass
class QuantizedModel:
    """A calibrated I-BERT encoder ready to emit its integer-only Relax program."""

    ibert: IBertModel
    model_type: str
    semantics: str = "ibert"
    tokenizer: object | None = None
    head: ClassifierHead | None = None
    head_mode: str = "integer"
    importer: str = "modules"
    source: PreTrainedModel | None = None  # the float model, which importer="graph" exports

    @property
    def max_seq_length(self) -> int:
        """The longest sequence the model's position embeddings cover."""
        return position_limit(self.ibert.config, self.model_type)

    @property
    def source_type(self) -> str:
        """The model type it was made from (e.g. "distilbert", "xlm-roberta"); `model_type` is its family's."""
        return self.source.config.model_type if self.source is not None else self.model_type

    @property
    def problem_type(self) -> str | None:
        """A classifier's HF problem type, as its forward takes it where the config names none (one output: a
        regression; more: a single-label classification); None without a head."""
        if self.head is None:
            return None
        return problem_type(self.head.num_labels, getattr(getattr(self.source, "config", None), "problem_type", None))

    @property
    def float_layers(self) -> tuple[int, ...]:
        """The encoder layers in Q8BERT mode of their own (`from_pretrained(float_layers=...)`): () where HF's
        model-wide force_dequant="nonlinear" makes every layer so."""
        return () if self.ibert.config.force_dequant == "nonlinear" else float_layers_of(self.ibert)

    @property
    def integer_encoder(self) -> bool:
        """Whether the encoder is integer-only: no Q8BERT-mode nonlinearity in any layer."""
        return self.ibert.config.force_dequant == "none" and not self.float_layers

    @property
    def integer_only(self) -> bool:
        """Whether the program is integer from ids to output: an integer-only encoder, no float head."""
        return self.integer_encoder and not (self.head is not None and self.head_mode == "float")

    @property
    def hidden_scale(self) -> float:
        """The real scale of the int8 hidden states the encoder outputs."""
        return float(layers.act_scale(self.ibert.encoder.layer[-1].output.output_activation))

    @property
    def output_scale(self) -> float | np.ndarray:
        """Scale of the program's output: the hidden states', per-class for integer logits, 1 for float logits."""
        if self.head is None:
            return self.hidden_scale
        if self.head_mode == "float":
            return 1.0
        out = self.head.out
        return quant.quantize_linear(out.weight.detach().numpy(), None, float(self.head.activation_scale())).acc_scale

    def program(self, batch: int, seq: int) -> tvm.IRModule:
        """`main(input_ids int64 [B, L], attention_mask int32 [B, L], token_type_ids int32 [B, L])` -> int8
        hidden states [B, L, H], or with a classification head int32 logits [B, labels] (float32 logits for a
        float head). Token types are the segments of a sentence pair (all 0 for one sentence)."""
        bb = relax.BlockBuilder()
        self.emit_function(bb, "main", batch, seq)
        return bb.get()

    def programs(self, shapes: Sequence[tuple[int, int]]) -> tvm.IRModule:
        """One module with a `program` function per (batch, seq) shape, named by `function_name` (the
        shape buckets of a compiled artifact; PrimFuncs of equal shapes are shared)."""
        bb = relax.BlockBuilder()
        for batch, seq in shapes:
            self.emit_function(bb, function_name(batch, seq), batch, seq)
        return bb.get()

    def emit_function(self, bb: relax.BlockBuilder, name: str, batch: int, seq: int) -> None:
        """Emit the integer program for one static (batch, seq) shape as Relax function `name` into `bb`."""
        ids = relax.Var("input_ids", relax.TensorType((batch, seq), "int64"))
        mask = relax.Var("attention_mask", relax.TensorType((batch, seq), "int32"))
        types = relax.Var("token_type_ids", relax.TensorType((batch, seq), "int32"))
        with bb.function(name, [ids, mask, types]):
            with bb.dataflow():
                h = self.encoder_states(bb, ids, mask, types)
                if self.head is None:
                    result = h.value
                elif self.head_mode == "integer":
                    result = integer_head(bb, h, self.head).value
                else:
                    result = float_head(bb, h, self.head)
                out = bb.emit_output(result)
            bb.emit_func_output(out)

    def encoder_states(self, bb: relax.BlockBuilder, ids: relax.Var, mask: relax.Var,
                       types: relax.Var | None = None, stages: list[layers.QTensor] | None = None) -> layers.QTensor:
        """Emit the encoder into `bb`'s dataflow block: int64 ids, int32 mask and int32 token types [B, L] (None:
        one sentence, all type 0) -> int8 states [B, L, H]. `stages`, where given, receives the embeddings' int8
        output and each layer's (the modules importer's program only)."""
        batch, seq = (int(d) for d in ids.ty.shape.values)
        if types is None:
            types = bb.emit(relax.const(np.zeros((batch, seq), np.int32)))
        if self.importer == "graph":
            if stages is not None:
                raise ValueError("the per-layer stages are the modules importer's (the same integers): "
                                 "dataclasses.replace(model, importer='modules')")
            from .float_reference import float_program
            from .relay_passes.rewrite_to_ibert import emit_encoder

            graph = float_program(self.source, batch, seq, keep_params=True, mask_dtype=str(mask.ty.dtype))
            return emit_encoder(bb, graph, self.ibert, self.semantics, [ids, mask, types])
        if self.model_type == "bert":
            pos = bb.emit(relax.const(np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy()))
        else:
            pos = layers.roberta_position_ids(bb, ids, self.ibert.config.pad_token_id)
        with quant.range_errors_of("embeddings"):
            h = layers.embeddings(bb, ids, pos, types, self.ibert.embeddings)
        mask4 = bb.emit(relax.op.reshape(mask, (batch, 1, 1, seq)))
        emb_scale = h.scale
        collected = [] if stages is None else stages
        collected.append(h)
        for index, layer in enumerate(self.ibert.encoder.layer):
            if self.semantics == "hf":
                h = layers.QTensor(h.value, h.scale, emb_scale)
            with quant.range_errors_of(f"encoder.layer.{index}"):
                h = layers.encoder_layer(bb, h, layer, mask4)
            collected.append(h)
        return h


SEMANTICS = ("ibert", "hf")
IMPORTERS = ("modules", "graph")


def from_pretrained(model_or_dir: PreTrainedModel | str | Path,
                    calibration: Iterable[Batch] | Batch | Mapping | Sequence[Text] | None = None,
                    semantics: str = "ibert", tokenizer: object | str | os.PathLike | None = None,
                    method: str = "minmax", percentile: float = 99.99, force_dequant: str | None = None,
                    head: str = "integer", importer: str = "modules", float_layers: Iterable[int] = ()
                    ) -> QuantizedModel:
    """Quantize a model of `SUPPORTED_TYPES` (object or local directory) for integer-only compilation.

    A float model needs `calibration`: batches of token ids and masks (and token types, for sentence pairs; one
    Batch or tokenizer output alone is one batch), or sentences or sentence pairs as 2-tuples (tokenized with
    `tokenizer`, a tokenizer or its directory, or else the tokenizer saved in the model directory), each batch
    checked against the model, then run through HF's own range statistics (`method="minmax"`, momentum 0.95) or
    their `percentile` or `mse` variant (`method="percentile"`, `"mse"`: `calibration`'s module docstring). An
    IBert model with `quant_mode=True` keeps its trained ranges, always: calibration given with it calibrates the
    integer head only (the encoder runs in eval mode), and is not read where there is none; one whose ranges are
    all untouched (never trained or calibrated) is calibrated as a float model is.
    `force_dequant` selects Q8BERT mode per nonlinearity, as HF's config does ("none", "gelu", "softmax",
    "layernorm", "nonlinear"); None (the default) takes the checkpoint's own setting, "none" for a float model.
    `float_layers` (encoder layer indices, e.g. those `ibert-tvm layers` shows drifting most) runs Q8BERT mode in
    those layers only: their Softmax, GELU and LayerNorms in float, the rest of the program integer.
    A `...ForSequenceClassification` keeps its head: integer-only (`head="integer"`, calibrated on the same
    batches) or HF's float head (`head="float"`).
    `semantics="hf"` reproduces HF's IBertModel, which hands the embedding scale to every layer (spec §5.3),
    for checkpoints trained with it; the default "ibert" propagates each layer's true output scale.
    `importer="graph"` builds the encoder by rewriting TVM's import of the float model's `torch.export` graph
    (`relay_passes/rewrite_to_ibert.py`); the default "modules" emits the same integer program from the HF
    modules directly (no export per shape; the only way for an IBert checkpoint, whose graph is HF's float
    simulation of the integers).
    """
    if importer not in IMPORTERS:
        raise ValueError(f"importer must be one of {IMPORTERS}, got {importer!r}")
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")
    if head not in HEAD_MODES:
        raise ValueError(f"head must be one of {HEAD_MODES}, got {head!r}")
    if isinstance(calibration, (str, bytes)):  # refused even where calibration goes unread (a trained IBert)
        raise TypeError("calibration must be a list of sentences or Batches, got one string (wrap it in a list)")
    model = _load(model_or_dir)
    encoder = _encoder_of(model)
    qmodel = to_ibert(model, force_dequant)
    float_layers = check_float_layers(float_layers, qmodel.config.num_hidden_layers)
    if float_layers:
        qmodel = with_float_layers(copy.deepcopy(qmodel) if qmodel is encoder else qmodel, float_layers)
    if _has_trained_ranges(encoder):  # kept, not calibrated: each integer Softmax needs a trained range
        _check_trained_softmax(qmodel, encoder.config.force_dequant)
    if importer == "graph" and _quant_mode_ibert(encoder):
        raise UnsupportedModelError("importer='graph' needs a float BERT / RoBERTa: an IBert checkpoint's graph is "
                                    "HF's float simulation of the integers (use importer='modules')")
    if importer == "graph" and encoder.config.model_type == "distilbert":
        raise UnsupportedModelError("importer='graph' rewrites a BERT / RoBERTa graph, which a DistilBERT's is not (no "
                                    "segment embedding; use importer='modules')")
    model_type = family(encoder.config.model_type)
    tokenizer = _tokenizer(tokenizer, model_or_dir)
    _check_finite(model)
    if qmodel.config.force_dequant not in ("layernorm", "nonlinear"):  # integer LayerNorms
        _check_layer_norms(model, float_layers)
    calibrate_encoder = not _has_trained_ranges(encoder)
    classifier = head_of(model)
    calibrate_classifier = classifier is not None and head == "integer"
    if calibrate_encoder or calibrate_classifier:
        batches = [] if calibration is None else _calibration_batches(calibration, tokenizer, qmodel.config,
                                                                       position_limit(qmodel.config, model_type))
        if not batches:
            raise ValueError(_uncalibrated(encoder) if calibrate_encoder else
                             "the integer classification head needs calibration batches (or head='float')")
        if calibrate_encoder:
            calibrate(qmodel, model_type, batches, method=method, percentile=percentile)
        if calibrate_classifier:
            calibrate_head(classifier, qmodel, model_type, batches)
    elif calibration is not None:
        warnings.warn("the calibration goes unused: this IBert checkpoint keeps its trained ranges and has no integer "
                      "classification head to calibrate", UnusedCalibrationWarning, stacklevel=2)
    return QuantizedModel(qmodel, model_type, semantics, tokenizer, classifier, head, importer, model)


def _uncalibrated(encoder: PreTrainedModel) -> str:
    """Why `encoder`, which has no trained ranges, needs calibration batches."""
    if _quant_mode_ibert(encoder):
        return ("this IBert checkpoint's QuantAct ranges are untrained (HF's initial +-1e-5): it needs calibration "
                "batches, as a float model does")
    return "a float model needs calibration batches (or pass an IBert model with trained ranges)"


def _tokenizer(tokenizer: object | str | os.PathLike | None, model_or_dir: PreTrainedModel | str | Path) -> object:
    """The tokenizer for calibration texts: `tokenizer` (an object, or a directory holding one), else the model
    directory's own (None where it holds none)."""
    if isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer_from(tokenizer)
    if tokenizer is None and not isinstance(model_or_dir, PreTrainedModel):
        return tokenizer_in(model_or_dir)
    return tokenizer


def _check_finite(model: PreTrainedModel) -> None:
    """A ValueError naming the first weight of `model` that holds NaN or inf (calibration would fail deep in HF on
    it, and a program would compute garbage)."""
    for name, weight in model.named_parameters():
        if not torch.isfinite(weight).all():
            raise ValueError(f"weight {name} is not finite (it holds NaN or inf)")


def _check_layer_norms(model: PreTrainedModel, float_layers: tuple[int, ...] = ()) -> None:
    """A QuantizationRangeError naming the first LayerNorm of `model` (HF's or IBert's integer one) whose integer
    constants cannot exist (a zero gamma), before calibrating: HF's simulation would turn it into NaN activations
    further on. The LayerNorms of `float_layers` (`layer.N.` in the name, DistilBERT's `transformer.layer.N.`
    too) stay float and need none."""
    for name, module in model.named_modules():
        if (layer := re.search(r"(?:^|\.)layer\.(\d+)\.", name)) and int(layer.group(1)) in float_layers:
            continue
        if isinstance(module, (torch.nn.LayerNorm, IntLayerNorm)) and module.weight is not None:
            bias = torch.zeros_like(module.weight) if module.bias is None else module.bias
            with quant.range_errors_of(name):
                quant.layernorm_constants(module.weight.detach().numpy(), bias.detach().numpy())


def shape_buckets(model: QuantizedModel, batch_sizes: Iterable[int], seq_lengths: Iterable[int]
                  ) -> tuple[list[int], list[int]]:
    """Sorted, de-duplicated buckets, checked: integers, batch sizes >= 1, sequence lengths from MIN_SEQ_LENGTH
    up to what the model's position embeddings cover (`compile` and `tune` take the same shapes)."""
    batch_sizes = _sizes(batch_sizes, "batch_sizes", 1)
    seq_lengths = _sizes(seq_lengths, "seq_lengths", MIN_SEQ_LENGTH)
    check_seq_lengths(seq_lengths, model.max_seq_length)
    check_bucket_tokens(batch_sizes, seq_lengths)
    return batch_sizes, seq_lengths


def check_bucket_tokens(batch_sizes: Iterable[int], seq_lengths: Iterable[int]) -> None:
    """A ValueError where the largest bucket holds more than MAX_BUCKET_TOKENS tokens (the CLI asks before
    calibrating)."""
    batch, seq = max(batch_sizes), max(seq_lengths)
    if batch * seq > MAX_BUCKET_TOKENS:
        raise ValueError(f"batch size {batch} x sequence length {seq} is {batch * seq} tokens in one bucket, more "
                         f"than the {MAX_BUCKET_TOKENS} compiled at most: give smaller batch sizes (a call's larger "
                         "batch is split over the compiled batch sizes)")


def check_seq_lengths(seq_lengths: Iterable[int], limit: int) -> None:
    """A ValueError where a sequence length exceeds `limit`, what the model's position embeddings cover."""
    longest = max(seq_lengths)
    if longest > limit:
        raise ValueError(f"sequence length {longest} exceeds what the model's position embeddings cover ({limit})")


def _sizes(values: Iterable[int], name: str, minimum: int) -> list[int]:
    """`values` as a sorted list of distinct ints, each at least `minimum`, or a TypeError / ValueError naming
    `name`."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a sequence of integers, got {type(values).__name__} {values!r}")
    values = list(values)
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{name} must hold integers, got {values}")
    if not values or min(values) < minimum:
        raise ValueError(f"{name} must be a non-empty sequence of integers of at least {minimum}, got {values}")
    return sorted(set(map(int, values)))


def tokenizer_from(directory: str | os.PathLike):
    """The tokenizer saved in `directory`: a FileNotFoundError where there is no such folder, a ValueError where it
    holds no tokenizer (`tokenizer=` and the CLI's --tokenizer)."""
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"tokenizer {directory} is not a local directory (no download is attempted)")
    found = tokenizer_in(directory)
    if found is None:
        raise ValueError(f"tokenizer {directory} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    return found


def tokenizer_in(directory: str | os.PathLike):
    """The tokenizer saved in `directory`, or None where it holds none of TOKENIZER_FILES (transformers would
    build an empty five-token tokenizer there, and sentences would become [UNK]s)."""
    if not any((Path(directory) / name).is_file() for name in TOKENIZER_FILES):
        return None
    return AutoTokenizer.from_pretrained(Path(directory), local_files_only=True)


def position_limit(config, model_type: str) -> int:
    """The longest sequence the position embeddings cover (RoBERTa's and IBert's start after the padding index,
    0 where the config names none, as `to_ibert` takes it)."""
    offset = (config.pad_token_id or 0) + 1 if family(model_type) == "roberta" else 0
    return int(config.max_position_embeddings - offset)


def _calibration_batches(calibration: Iterable[Batch] | Batch | Mapping | Sequence[Text], tokenizer, config,
                         limit: int) -> list[Batch]:
    """Calibration sentences or sentence pairs (tokenized, truncated to the `limit` positions) or batches (one Batch
    or tokenizer output alone is one batch), each checked by `_batch_problem`: a TypeError for items that are
    neither (one string is refused by `from_pretrained`), a TypeError / ValueError naming the batch and its problem."""
    if isinstance(calibration, (Batch, Mapping)):  # a Mapping's keys are no sentences
        calibration = [calibration]
    if not isinstance(calibration, Iterable):
        raise _not_calibration(calibration)
    items = list(calibration)
    if items and all(is_text(t) for t in items):
        if not any(part.strip() for t in items for part in ((t,) if isinstance(t, str) else t)):
            raise ValueError(f"the {len(items)} calibration texts are all empty: their ranges would be those of the "
                             "special tokens alone")
        if tokenizer is None:
            raise ValueError("calibration texts need a tokenizer: the model directory holds none (none of "
                             f"{', '.join(TOKENIZER_FILES)}); save the model's tokenizer there, or give one "
                             "(tokenizer= in Python, --tokenizer DIR to compile, tune and layers)")
        batches = batches_from_texts(items, tokenizer, max_length=min(128, limit))
    else:
        batches = [_as_batch(t) for t in items]
    for index, batch in enumerate(batches):
        if problem := _batch_problem(batch, config, limit):
            error, message = problem
            raise error(f"calibration batch {index}: {message}")
    return batches


def _batch_problem(batch: Batch, config, limit: int) -> tuple[type[Exception], str] | None:
    """What makes `batch` no input of a model of `config` and `limit` positions, and the error to raise (None:
    nothing); torch and HF would fail deep inside on it, or take a mask of another shape silently."""
    ids, mask, types = batch.input_ids, batch.attention_mask, batch.token_type_ids
    if not _integer(ids):
        return TypeError, f"input_ids must be integers, got {ids.dtype}"
    if ids.ndim != 2 or 0 in ids.shape:
        return ValueError, f"input_ids must have shape [batch, seq] with both > 0, got {list(ids.shape)}"
    if ids.shape[1] > limit:
        return ValueError, f"{ids.shape[1]} tokens per row, more than the model's {limit} positions"
    if problem := id_problem(ids.numpy(), config.vocab_size):
        return ValueError, f"{problem}: is the tokenizer the model's own?"
    if problem := mask_problem((mask.float() if mask.dtype.is_floating_point else mask).numpy(), tuple(ids.shape)):
        return ValueError, problem
    if types is None:
        return None
    if not _integer(types):
        return TypeError, f"token_type_ids must be integers, got {types.dtype}"
    problem = token_type_problem(types.numpy(), tuple(ids.shape), config.type_vocab_size)
    return None if problem is None else (ValueError, problem)


def _integer(tensor: torch.Tensor) -> bool:
    """Whether `tensor` holds integers (ids and token types; bool, float and complex are not)."""
    return not (tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool)


def _not_calibration(item: object) -> TypeError:
    """The error for calibration, or one of its items, that is neither sentences nor batches."""
    return TypeError(f"calibration must be a list of sentences or Batches (or tokenizer outputs), got a "
                     f"{type(item).__name__}")


def _as_batch(item: object) -> Batch:
    """A Batch, or anything with input_ids and attention_mask (and optionally token_type_ids: a tokenizer's
    BatchEncoding) as one; a TypeError for other items."""
    if isinstance(item, Batch):  # its fields made tensors below, as a tokenizer output's (a Batch may hold lists)
        item = vars(item)
    try:
        types = item.get("token_type_ids") if hasattr(item, "get") else None
        return Batch(torch.as_tensor(item["input_ids"]), torch.as_tensor(item["attention_mask"]),
                     None if types is None else torch.as_tensor(types))
    except (TypeError, KeyError, IndexError):
        raise _not_calibration(item) from None


def from_onnx(path: str | Path, calibration: Iterable[Batch] | Sequence[Text] | None = None, **options
              ) -> QuantizedModel:
    """`from_pretrained` for an ONNX export of a BertModel / RobertaModel: the architecture is read from the
    graph and the weights from its initializers (`onnx_import.model_from_onnx`); same options."""
    from .onnx_import import model_from_onnx

    return from_pretrained(model_from_onnx(path), calibration=calibration, **options)
