"""Running a compiled integer-only model: input validation, shape buckets, dequantized outputs, `classify`.

`IntegerModel` wraps a Relax VM over the compiled functions (one per (batch, seq) bucket, see
`QuantizedModel.programs`). Inputs are checked at this boundary — dtype, rank, sequence length within the
compiled range, token ids within the vocabulary, mask values — so that nothing wrong reaches TVM. A batch is
padded up to the smallest compiled sequence bucket (masked positions change nothing for the real tokens:
the integer Softmax treats them as -inf) and split over the compiled batch sizes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import relax

from .artifact import (MULTI_LABEL, REGRESSION, ArtifactError, bucket_function, check_runnable_here, is_json_int,
                       is_json_number, library_suffix_problem, meta_problem_type, read_metadata)
from .texts import Text, id_problem, mask_problem, token_type_problem, tokenizer_args

__all__ = ["InputError", "IntegerModel", "Prediction", "load"]


class InputError(ValueError):
    """An input the compiled model cannot take; the message names the input and the problem."""


@dataclass(frozen=True)
class Prediction:
    """One classified text: its top-scoring label, that label's index, the (dequantized) logits, and every label
    the model assigns: the top one for a single-label classifier; for a multi-label one each whose logit is
    positive (sigmoid > 0.5), perhaps none."""

    label: str
    index: int
    logits: np.ndarray
    labels: tuple[str, ...]


class IntegerModel:
    """A compiled integer-only model, callable on token ids: `m(input_ids, attention_mask, token_type_ids)`.

    Threads may share it: calls run one at a time (a Relax VM is not for concurrent calls, and each call already
    spreads over every core); for calls that overlap, load one per thread.
    """

    def __init__(self, executable: tvm.runtime.Module | relax.VMExecutable, meta: dict[str, Any],
                 device: tvm.runtime.Device | None = None) -> None:
        self.meta = meta
        self.device = device or (tvm.cuda(0) if meta["target"]["family"] == "cuda" else tvm.cpu())
        try:
            self._vm = relax.VirtualMachine(executable, self.device)
        except Exception as err:  # a module without the VM's entry point (not a Relax library), or one it refuses
            raise ArtifactError(f"the Relax VM cannot run this library ({_first_line(err)})") from err
        self._tokenizer = None
        self._running = threading.Lock()  # the VM, its input tensors and its output, one call at a time
        self._tokenizing = threading.RLock()  # a fast tokenizer's settings change per call (padding, truncation)
        self._check_metadata()
        buckets = meta["buckets"]
        self._batch_sizes, self._seq_lengths = sorted(buckets["batch_sizes"]), sorted(buckets["seq_lengths"])
        self._functions = {}  # "BxL" -> the VM function and its input tensors (`_function`)
        self._on_cpu = self.device.dlpack_device_type() == tvm.cpu().dlpack_device_type()

    def __repr__(self) -> str:
        model, output = self.meta["model"], self.meta["output"]
        kind = self.problem_type or output["kind"]
        out = f"{kind} {self.labels}" if self.labels and kind != REGRESSION else kind
        return (f"IntegerModel({model.get('source_type', model['model_type'])}, target {self.meta['target']['name']}, "
                f"batch {self.batch_sizes} x seq {self.seq_lengths}, {out})")

    def _check_metadata(self) -> None:
        """What a call reads from the metadata, checked here (a hand-edited entry would fail deep in TVM or numpy
        at the first call): the buckets, each naming its own function of the library, and the output scale."""
        buckets = self.meta["buckets"]
        for entry in ("batch_sizes", "seq_lengths"):
            sizes = buckets[entry]
            if not isinstance(sizes, list) or not sizes or not all(is_json_int(v) and v > 0 for v in sizes):
                raise ArtifactError(f"the metadata's buckets.{entry} must be a non-empty list of positive integers, "
                                    f"got {sizes!r}; re-export the artifact")
        functions = buckets["functions"]
        expected = {f"{b}x{s}": bucket_function(b, s) for b in buckets["batch_sizes"] for s in buckets["seq_lengths"]}
        if not isinstance(functions, dict):
            raise ArtifactError(f"the metadata's buckets.functions must map buckets to functions, got "
                                f"{type(functions).__name__}; re-export the artifact")
        for bucket, function in expected.items():
            name = functions.get(bucket)
            if not self._holds(name):
                raise ArtifactError(f"the metadata's bucket {bucket} names no function of the library ({name!r}); "
                                    "re-export the artifact")
            if name != function:
                raise ArtifactError(f"the metadata's bucket {bucket} names the library's function {name!r}, "
                                    f"compiled for another shape (its own is {function!r}); re-export the artifact")
        if extra := sorted(set(functions) - set(expected)):
            raise ArtifactError(f"the metadata's bucket {extra[0]} is not one of buckets.batch_sizes x "
                                "buckets.seq_lengths; re-export the artifact")
        self._check_scale()

    def _holds(self, name: Any) -> bool:
        """Whether the library holds a VM function `name`."""
        try:
            return isinstance(name, str) and self._vm[name] is not None
        except AttributeError:  # the VM's answer for a function it does not hold
            return False

    def _check_scale(self) -> None:
        """The output scale: a number, or for logits one number per label (`dequantize` multiplies by it)."""
        labels, scale = self.meta["model"].get("labels"), self.meta["output"]["scale"]
        logits = self.meta["output"]["kind"] == "logits"
        if isinstance(scale, list) and logits and scale and all(map(is_json_number, scale)):
            if labels and len(labels) != len(scale):
                raise ArtifactError(f"the metadata names {len(labels)} labels for {len(scale)} logits; re-export "
                                    "the artifact")
        elif not is_json_number(scale):
            what = "a number or a list of numbers, one per logit" if logits else "a number"
            raise ArtifactError(f"the metadata's output.scale must be {what}, got {scale!r}; re-export the artifact")

    # ---- what the artifact is
    @property
    def batch_sizes(self) -> list[int]:
        return list(self._batch_sizes)

    @property
    def seq_lengths(self) -> list[int]:
        return list(self._seq_lengths)

    @property
    def labels(self) -> list[str] | None:
        return self.meta["model"].get("labels")

    # ---- running
    def __call__(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None, *,
                 integer: bool = False) -> np.ndarray:
        """Logits [B, labels] or hidden states [B, L, H] for token ids [B, L] (numpy, torch or lists), their
        mask (None: every token real) and, for sentence pairs, their token types (None: all 0, one sentence).

        Outputs are dequantized to float32 with the compiled scales; `integer=True` returns the program's own
        integers (int8 hidden states or int32 logits) instead.
        """
        out = self._run_buckets(*self.validate(input_ids, attention_mask, token_type_ids))
        return out if integer else self.dequantize(out)

    def dequantize(self, out: np.ndarray) -> np.ndarray:
        """Program integers -> real values (hidden-state scale, or per-class logit scales)."""
        spec = self.meta["output"]
        if spec["dtype"].startswith("float"):
            return out.astype(np.float32)
        return (out.astype(np.float64) * np.asarray(spec["scale"], np.float64)).astype(np.float32)

    def validate(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(int64 ids, int32 mask, int32 token types) [B, L] after every boundary check, or InputError naming
        the problem."""
        ids = _as_int_array(input_ids, "input_ids")
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2:
            raise InputError(f"input_ids must have shape [batch, seq], got {list(ids.shape)}")
        longest = self._seq_lengths[-1]
        if ids.shape[1] > longest:
            raise InputError(f"sequence length {ids.shape[1]} exceeds the longest compiled length {longest} "
                             f"(compiled: {self.seq_lengths}); truncate, or compile with longer sequence lengths")
        if problem := id_problem(ids, self.meta["model"]["vocab_size"]):
            raise InputError(problem)
        if attention_mask is None:
            mask = np.ones(ids.shape, np.int32)
        else:
            mask = _as_int_array(attention_mask, "attention_mask", mask=True)
            if mask.ndim == 1:
                mask = mask[None]
            if problem := mask_problem(mask, ids.shape):
                raise InputError(problem)
        return ids.astype(np.int64, copy=False), mask.astype(np.int32, copy=False), self._types(token_type_ids,
                                                                                                 ids.shape)

    def _types(self, token_type_ids: Any, shape: tuple[int, ...]) -> np.ndarray:
        """Checked int32 token types of `shape` (zeros where None): ids of the model's segment embeddings."""
        if token_type_ids is None:
            return np.zeros(shape, np.int32)
        types = _as_int_array(token_type_ids, "token_type_ids")
        if types.ndim == 1:
            types = types[None]
        if problem := token_type_problem(types, shape, self.meta["model"]["type_vocab_size"]):
            raise InputError(problem)
        return types.astype(np.int32, copy=False)

    def _run_buckets(self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        """Pad to the sequence bucket, run batch chunks of compiled sizes, trim back to [B, L(, H)]."""
        batch, seq = ids.shape
        bucket = next(s for s in self._seq_lengths if s >= seq)
        pad_id = self.meta["model"]["pad_token_id"]
        if bucket > seq:  # np.pad costs as much as a small model's VM overhead, so only where it pads
            ids = np.pad(ids, ((0, 0), (0, bucket - seq)), constant_values=pad_id)
            mask, types = (np.pad(a, ((0, 0), (0, bucket - seq))) for a in (mask, types))
        with self._running:
            out = self._run_chunks(ids, mask, types, pad_id, bucket)
        return out[:, :seq] if out.ndim == 3 and bucket > seq else out

    def _run_chunks(self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray, pad_id: int, bucket: int
                    ) -> np.ndarray:
        """Run batch chunks of compiled sizes on ids, mask and types of length `bucket`: the outputs, copied out
        of the VM's memory."""
        batch, outs = ids.shape[0], []
        for start, size in _chunks(batch, self._batch_sizes):
            rows = slice(start, min(start + size, batch))
            # padded rows attend to one pad token (no empty rows), of type 0
            chunk = (_pad_rows(ids[rows], size, pad_id), _pad_rows(mask[rows], size, 1),
                     _pad_rows(types[rows], size, 0))
            fn, *tensors = self._function(size, bucket)
            for tensor, array in zip(tensors, chunk):
                tensor.copyfrom(array)
            res = fn(*tensors)
            outs.append((np.from_dlpack(res) if self._on_cpu else res.numpy())[: rows.stop - rows.start])
        # One copy out of the VM's output (on CPU a view of its memory, which a kept view would keep alive).
        return outs[0].copy() if len(outs) == 1 else np.concatenate(outs)

    def _function(self, batch: int, seq: int) -> tuple[Any, tvm.runtime.Tensor, ...]:
        """The VM function of the compiled shape `batch` x `seq` and its three input tensors, made once: a fresh
        input tensor per call cost 45 us and `numpy()` of the output 45 us (MiniLM 1 x 32 on a VM of
        bench/RESULTS.md, caches cold after the model), against 7 us for `copyfrom` and 13 us for `from_dlpack`
        and a copy."""
        key = f"{batch}x{seq}"
        if key not in self._functions:
            self._functions[key] = (self._vm[self.meta["buckets"]["functions"][key]],
                                    tvm.runtime.empty((batch, seq), "int64", self.device),
                                    *(tvm.runtime.empty((batch, seq), "int32", self.device) for _ in range(2)))
        return self._functions[key]

    # ---- texts
    def tokenizer(self):
        """The tokenizer bundled at export (transformers is imported only here)."""
        with self._tokenizing:
            if self._tokenizer is None:
                files = self.meta.get("tokenizer") or {}
                if not files:
                    raise InputError("this artifact has no tokenizer (the model was compiled without one); pass "
                                     "token ids instead")
                from transformers import AutoTokenizer

                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        for name, text in files.items():
                            (Path(tmp) / name).write_text(text, encoding="utf-8")
                        self._tokenizer = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
                    except ImportError:  # a package the tokenizer needs (sentencepiece, ...): its own message says
                        raise
                    except Exception as err:  # files edited by hand: transformers' error names a temporary folder
                        raise ArtifactError(f"the artifact's tokenizer files cannot be read as a tokenizer "
                                            f"({_first_line(err)}); re-export the artifact") from err
            return self._tokenizer

    def encode_texts(self, texts: Sequence[Text]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids, mask and token types for `texts` (sentences, or 2-tuples of sentence pairs), truncated to
        the longest compiled length (with a warning)."""
        return self._encode(_texts(texts))

    def _encode(self, texts: tuple[list[str], ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`encode_texts` of checked texts (the tokenizer's arguments); its truncation warning names the caller
        of the public method."""
        if not texts[0]:
            raise InputError("texts is empty: give at least one text")
        longest = self.seq_lengths[-1]
        enc = self._tokenize(texts, longest + 1)
        if enc["input_ids"].shape[1] > longest:  # some text needs more tokens than the longest bucket holds
            warnings.warn(f"texts longer than the longest compiled length ({longest} tokens) were truncated to it",
                          UserWarning, stacklevel=3)
            enc = self._tokenize(texts, longest)
            if enc["input_ids"].shape[1] > longest:  # the tokenizer could not truncate (a pair's special tokens)
                raise InputError(f"the longest compiled length ({longest} tokens) cannot hold these texts' special "
                                 "tokens; compile with longer sequence lengths")
        types = enc.get("token_type_ids")
        return (enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int32),
                np.zeros(enc["input_ids"].shape, np.int32) if types is None else types.astype(np.int32))

    def _tokenize(self, texts: tuple[list[str], ...], max_length: int) -> Any:
        """The tokenizer's padded, truncated numpy encoding, one thread at a time (a fast tokenizer shared by
        threads fails with 'Already borrowed' where their padding or truncation settings differ)."""
        with self._tokenizing:
            return self.tokenizer()(*texts, padding=True, truncation=True, max_length=max_length,
                                    return_tensors="np")

    def classify(self, texts: Sequence[Text]) -> list[Prediction]:
        """Label each text (a sentence, or a 2-tuple: a sentence pair) with the compiled classification head
        (needs a model compiled with one)."""
        self._check_classifier()
        texts = _texts(texts)
        return self.classify_ids(*self._encode(texts)) if texts[0] else []

    def classify_ids(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None
                     ) -> list[Prediction]:
        """`classify` of token ids [B, L] (and their mask and token types, as `__call__` takes them)."""
        self._check_classifier()
        logits = self(input_ids, attention_mask, token_type_ids)
        labels = self.labels or [str(i) for i in range(logits.shape[1])]
        multi = self.problem_type == MULTI_LABEL
        return [Prediction(labels[int(i)], int(i), row, tuple(labels[j] for j in np.flatnonzero(row > 0)) if multi
                           else (labels[int(i)],)) for row, i in zip(logits, logits.argmax(1))]

    @property
    def problem_type(self) -> str | None:
        """A classifier's HF problem type (`REGRESSION`, `SINGLE_LABEL`, `MULTI_LABEL`); None for an encoder."""
        return meta_problem_type(self.meta)

    def _check_classifier(self) -> None:
        """An InputError where the artifact has no classification head, or a regression head (no labels)."""
        if self.meta["output"]["kind"] != "logits":
            raise InputError("classify needs a model with a classification head; this artifact outputs hidden "
                             "states (call it on token ids instead)")
        if self.problem_type == REGRESSION:
            raise InputError("this model's head is a regression (problem_type 'regression'): it has values, not "
                             "labels: call the model on token ids for them")


def _texts(texts: Sequence[Text]) -> tuple[list[str], ...]:
    """`texts` (a list, tuple, numpy array or other iterable of strings or of 2-tuples of strings) as the
    tokenizer's arguments, or InputError."""
    try:
        return tokenizer_args(texts)
    except TypeError as err:
        raise InputError(str(err)) from None


def _as_int_array(value: Any, name: str, mask: bool = False) -> np.ndarray:
    """numpy / torch / nested lists of any integer dtype (for a `mask` also bool, or float holding 0 and 1 only, as
    HF takes it) -> a non-empty int64 numpy array, or InputError naming the problem (an empty one first: numpy makes
    an empty list float64)."""
    given = None  # a torch dtype that numpy lacks (bfloat16), read as float32, named as given
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.is_floating_point():
            given, value = str(value.dtype).removeprefix("torch."), value.float()
        value = value.numpy()
    try:
        arr = np.asarray(value)
    except ValueError as err:  # rows of unequal lengths
        raise InputError(f"{name} must be an array of integers with rows of equal length ({err})") from err
    if arr.size == 0:
        raise InputError(f"{name} is empty (shape {list(arr.shape)}): give at least one token")
    if not mask and isinstance(value, (list, tuple)) and _holds_bool(value):  # numpy read them as 1 and 0
        raise InputError(f"{name} must hold integers, got bool (True or False among the lists' values)")
    if arr.dtype == object and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in arr.ravel()):
        try:
            arr = arr.astype(np.int64)
        except OverflowError:
            raise InputError(f"{name} holds integers outside int64") from None
    if mask and (arr.dtype == np.bool_ or (arr.dtype.kind == "f" and np.all((arr == 0) | (arr == 1)))):
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        text = " (texts: classify() or encode_texts() tokenizes them)" if arr.dtype.kind in "US" and \
            name == "input_ids" else ""
        what = "integers, bool, or floats of 0 and 1 only" if mask else "integers"
        raise InputError(f"{name} must hold {what}, got {given or arr.dtype}{text}")
    if arr.dtype == np.uint64 and int(arr.max()) > np.iinfo(np.int64).max:
        raise InputError(f"{name} holds integers outside int64")
    return arr.astype(np.int64, copy=False)


def _holds_bool(value: Any) -> bool:
    """Whether nested lists or tuples hold a bool (Python's, numpy's, or an array of bools): numpy reads one among
    integers as 1 or 0, so such ids passed where an array of bools is refused."""
    if not isinstance(value, (list, tuple)):
        return getattr(value, "dtype", None) == np.bool_
    kinds = set(map(type, value))  # (a row of Python ints, the common case, needs no call per value)
    return bool in kinds or (kinds != {int} and any(map(_holds_bool, value)))


def _chunks(batch: int, sizes: list[int]) -> list[tuple[int, int]]:
    """(start, compiled batch size) covering `batch` rows: the largest size that fits, the rest padded up."""
    out, start = [], 0
    while start < batch:
        left = batch - start
        fitting = [s for s in sizes if s <= left]
        size = fitting[-1] if fitting else next(s for s in sizes if s >= left)
        out.append((start, size))
        start += size
    return out


def _pad_rows(arr: np.ndarray, rows: int, value: int) -> np.ndarray:
    """`arr` with rows appended (filled with `value`) up to `rows`."""
    return np.pad(arr, ((0, rows - arr.shape[0]), (0, 0)), constant_values=value) if arr.shape[0] < rows else arr


def load(path: str | Path) -> IntegerModel:
    """Load an exported artifact with the TVM runtime, after checking its metadata, hash, TVM and target."""
    meta = read_metadata(path)
    check_runnable_here(meta, path)
    if problem := library_suffix_problem(path):  # the TVM runtime would write a relinked copy beside it
        raise ArtifactError(f"{problem}; re-export the artifact")
    try:
        lib = _open_library(path, meta["library"]["sha256"])
    except Exception as err:  # a library that passed the hash check but that the loader refuses
        raise ArtifactError(f"{path}: the TVM runtime cannot load it ({_first_line(err)})") from err
    try:
        return IntegerModel(lib, meta)
    except ArtifactError as err:  # the Relax VM refuses the library, or the metadata names what it lacks
        raise ArtifactError(f"{path}: {err}") from err


#: resolved library path -> SHA-256 of the library this process first opened from it (`_open_library`)
_OPENED: dict[str, str] = {}
_OPENED_LOCK = threading.Lock()


def _open_library(path: str | Path, sha256: str) -> tvm.runtime.Module:
    """The library now at `path` (SHA-256 `sha256`), loaded. Where this process opened another library from the
    same path before, dlopen would hand back the handle it still holds for that name (TVM never closes one) and
    run the old library; so that one is loaded from a copy of its own, removed once loaded (the loader keeps it
    mapped). Each call copies into a folder of its own: threads may load at once."""
    resolved = os.path.realpath(path)
    with _OPENED_LOCK:
        first = _OPENED.setdefault(resolved, sha256) == sha256
    if first:
        return tvm.runtime.load_module(resolved)
    with tempfile.TemporaryDirectory(prefix="ibert-tvm-library-") as folder:
        copy = Path(folder) / Path(resolved).name
        shutil.copyfile(resolved, copy)
        return tvm.runtime.load_module(str(copy))


def _first_line(err: BaseException) -> str:
    """The first line of an error's message (TVM's carry a traceback), its type where it has none."""
    return next(iter(str(err).splitlines()), "") or type(err).__name__
