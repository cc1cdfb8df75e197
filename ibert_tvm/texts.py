"""Sentences, sentence pairs and their token types, as the tokenizer and the programs take them (the runtime's
texts and calibration's alike)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Text", "id_problem", "is_text", "mask_problem", "token_type_problem", "tokenizer_args"]

#: one sentence, or a sentence pair (tokenized as the model's pair input, the second text's tokens of type 1)
Text = str | tuple[str, str]


def is_text(item: object) -> bool:
    """Whether `item` is a sentence or a sentence pair (a 2-tuple of strings)."""
    return isinstance(item, str) or (isinstance(item, tuple) and len(item) == 2
                                     and all(isinstance(s, str) for s in item))


def id_problem(ids: np.ndarray, vocab: int) -> str | None:
    """What is wrong with integer token ids for a model of `vocab` tokens (None: nothing): an id outside it."""
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab:
        return f"input_ids must lie in [0, {vocab}) (the vocabulary), found {low if low < 0 else high}"
    return None


def mask_problem(mask: np.ndarray, shape: tuple[int, ...]) -> str | None:
    """What is wrong with an attention mask (integer, bool or float) for token ids of `shape` (None: nothing): its
    shape, a value other than 0 and 1, or a row without a real token."""
    if tuple(mask.shape) != tuple(shape):
        return f"attention_mask shape {list(mask.shape)} differs from input_ids shape {list(shape)}"
    # two reductions for integers: np.isin took 10x their time per call
    if mask.min() < 0 or mask.max() > 1 or (mask.dtype.kind == "f" and not np.all((mask == 0) | (mask == 1))):
        return f"attention_mask values must be 0 or 1, found {sorted(set(np.unique(mask).tolist()) - {0, 1})[:3]}"
    empty = np.flatnonzero(mask.sum(1) == 0)
    if empty.size:
        return f"attention_mask row {int(empty[0])} has no 1: every sequence needs a real token"
    return None


def token_type_problem(types: np.ndarray, shape: tuple[int, ...], segments: int) -> str | None:
    """What is wrong with integer token types for token ids of `shape` and a model of `segments` token types
    (None: nothing): their shape, or a value outside [0, segments) (for a one-segment model: that its pairs have
    no token types)."""
    if tuple(types.shape) != tuple(shape):
        return f"token_type_ids shape {list(types.shape)} differs from input_ids shape {list(shape)}"
    low, high = int(types.min()), int(types.max())
    if segments == 1 and low >= 0 and high >= 1:
        return (f"token_type_ids must all be 0: the model has one segment embedding (type_vocab_size 1), found "
                f"{high}; its sentence pairs are told apart by separator tokens alone, and its own tokenizer gives "
                "no token types (is the tokenizer another model's?)")
    if low < 0 or high >= segments:
        return (f"token_type_ids must lie in [0, {segments}) (the model's type_vocab_size), found "
                f"{low if low < 0 else high}")
    return None


def tokenizer_args(texts: Sequence[Text]) -> tuple[list[str], ...]:
    """The tokenizer's positional arguments for `texts`: ([texts],) for sentences, ([firsts], [seconds]) for
    2-tuples of strings; a TypeError for one string, a mix or anything else."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got one string (wrap it in a list)")
    try:
        items = list(texts)
    except TypeError as err:
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}") from err
    if all(isinstance(t, str) for t in items):
        return ([str(t) for t in items],)  # numpy's strings as str
    if all(isinstance(t, tuple) and is_text(t) for t in items):
        return [a for a, _ in items], [b for _, b in items]
    raise TypeError("texts must be all strings (sentences) or all 2-tuples of strings (sentence pairs)")
