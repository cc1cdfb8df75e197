"""Accuracy of a user's sequence-classification checkpoint on a labelled CSV: the HF model in PyTorch against its
integer-only and Q8BERT-mode builds for this CPU, on the same token ids, scored as `evaluate` scores the bundled
sentiment classifier (sentences or sentence pairs)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoModelForSequenceClassification

from .artifact import SINGLE_LABEL, problem_type
from .classifier import length_batches
from .compiler import compile
from .evaluate import FP32, EvalReport, Scoring, check_layer_choice, float_layers_mode, report
from .model import UnsupportedModelError, UnusedCalibrationWarning, from_pretrained, load_float32, local_config
from .model_demo import sentences
from .runtime import IntegerModel
from .sentiment_data import Labelled
from .texts import Text, tokenizer_args

#: the sequence buckets a checkpoint is compiled for unless told otherwise (`compile`'s default)
SEQ_LENGTHS = (32, 128)


def checkpoint_labels(model_dir: str | Path) -> tuple[str, ...]:
    """The class names (config `id2label`, in class order) of a local `...ForSequenceClassification` checkpoint;
    an UnsupportedModelError for any other checkpoint, whose classes eval could not score."""
    config = local_config(Path(model_dir))
    if not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        raise UnsupportedModelError(f"{model_dir} is not a sequence-classification checkpoint (architectures: "
                                    f"{config.architectures}): eval scores a classifier's labels")
    kind = problem_type(config.num_labels, config.problem_type)
    if kind != SINGLE_LABEL:
        raise UnsupportedModelError(f"{model_dir} is a {kind.replace('_', '-')} checkpoint (problem_type {kind!r}): "
                                    "eval scores single-label classifiers, one label per text")
    return tuple(config.id2label[i] for i in range(config.num_labels))


def _reference_name(config) -> str:
    """What running the checkpoint in PyTorch computes: float, or HF's float simulation of I-BERT's integers."""
    if config.model_type == "ibert" and getattr(config, "quant_mode", False):
        return "HF IBert simulation (PyTorch)"
    return FP32


def _integer_model(model_dir: Path, calibration: Sequence[Text] | None, force_dequant: str, batch_size: int,
                   seq_lengths: Sequence[int], float_layers: Sequence[int] = ()) -> IntegerModel:
    """The checkpoint calibrated (default: the bundled sentences, as `ibert-tvm compile` does), compiled for this
    CPU with `force_dequant` and `float_layers`, as a runner."""
    with warnings.catch_warnings():
        if calibration is None:  # the bundled sentences, which a trained IBert checkpoint need not read
            warnings.simplefilter("ignore", UnusedCalibrationWarning)
        qm = from_pretrained(model_dir, calibration=list(calibration or sentences()), force_dequant=force_dequant,
                             float_layers=float_layers)
    return compile(qm, "llvm", batch_sizes=(batch_size,), seq_lengths=seq_lengths).runner()


def _batches(model: IntegerModel, texts: list[Text], batch_size: int
             ) -> list[tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """(rows, (ids, mask, types)) per batch of texts of similar length, for every mode to run: the texts tokenized
    once by the artifact's own tokenizer (truncated to the longest compiled length, with a warning), each batch
    cut to the columns its texts' tokens span, as the tokenizer pads a batch of them alone, on its side (a
    tokenizer that pads on the left had its texts cut)."""
    ids, mask, types = model.encode_texts(texts)
    out = []
    for rows in length_batches(mask.sum(1), batch_size):
        real = np.flatnonzero(mask[rows].any(0))
        out.append((rows, tuple(a[rows, real[0]:real[-1] + 1] for a in (ids, mask, types))))
    return out


def _logits(run, batches: list, count: int, progress: bool, desc: str, since: float | None = None
            ) -> tuple[np.ndarray, float]:
    """Real-valued logits [count, C] of `run(ids, mask, types)` over the batches, in text order, and the seconds
    since `since` (a `time.perf_counter()`; default: since this call)."""
    t0, out = time.perf_counter() if since is None else since, None
    for rows, inputs in tqdm(batches, desc=desc, unit="batch", disable=not progress):
        logits = np.asarray(run(*inputs), np.float64)
        out = np.zeros((count, logits.shape[1])) if out is None else out
        out[rows] = logits
    return out, time.perf_counter() - t0


def evaluate_checkpoint(model_dir: str | Path, data: Labelled, calibration: Sequence[Text] | None = None,
                        seq_lengths: Sequence[int] = SEQ_LENGTHS, batch_size: int = 32, q8bert: bool = True,
                        progress: bool = True, name: str = "the given texts", float_layers: Sequence[int] = (),
                        max_loss: float | None = None, search_data: Labelled | None = None,
                        search_name: str = "the search texts") -> EvalReport:
    """Classify `data` with the checkpoint in PyTorch, as the integer-only program, (with `q8bert`) in Q8BERT
    mode and (with `float_layers`) in Q8BERT mode in those layers only, or (with `max_loss`) in the layers
    `search_float_layers` chooses on `search_data` where given (else on `data`), all on the same token ids; score.
    The programs are calibrated on `calibration` and compiled for this CPU over `seq_lengths` (their times include
    that); texts longer than the longest are truncated to it."""
    model_dir = Path(model_dir)
    labels = checkpoint_labels(model_dir)
    if tuple(data.labels) != labels:
        raise ValueError(f"the data's labels {data.labels} differ from the checkpoint's {labels}")
    float_layers = check_layer_choice(model_dir, float_layers, max_loss, data, search_data)
    for texts in (data,) if search_data is None else (data, search_data):
        tokenizer_args(texts.texts)  # all sentences or all pairs, before anything is compiled
    t0 = time.perf_counter()
    integer_model = _integer_model(model_dir, calibration, "none", batch_size, seq_lengths)
    batches = _batches(integer_model, data.texts, batch_size)
    integer = _logits(integer_model, batches, len(data), progress, "integer-only", since=t0)
    hf_model = load_float32(AutoModelForSequenceClassification, model_dir).eval()

    def float_logits(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return hf_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask).long(),
                            token_type_ids=torch.from_numpy(types).long()).logits.float().numpy()

    def scoring(on: Labelled, on_name: str, on_batches: list, reference: np.ndarray) -> Scoring:
        def quantized(force_dequant: str, desc: str, layers: Sequence[int] = ()) -> tuple[np.ndarray, float]:
            t0 = time.perf_counter()
            model = _integer_model(model_dir, calibration, force_dequant, batch_size, seq_lengths, layers)
            return _logits(model, on_batches, len(on), progress, desc, since=t0)

        return Scoring(on, on_name, reference, quantized)

    reference = _logits(float_logits, batches, len(data), progress, "PyTorch")
    evaluated = scoring(data, name, batches, reference[0])
    search_on = None
    if search_data is not None:
        search_batches = _batches(integer_model, search_data.texts, batch_size)
        search_on = scoring(search_data, search_name, search_batches, _logits(
            float_logits, search_batches, len(search_data), progress, "PyTorch (search texts)")[0])
    mixed = float_layers_mode(model_dir, evaluated, integer, float_layers, max_loss, progress, search_on)
    q8bert_run = evaluated.quantized("nonlinear", "Q8BERT mode", ()) if q8bert else None
    return report(data, name, reference, integer, q8bert_run, _reference_name(hf_model.config), *mixed)
