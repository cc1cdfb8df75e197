"""Sentences, sentence pairs and their token types, as the tokenizer and the programs take them (the runtime's
texts and calibration's alike)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Text", "is_text", "token_type_problem", "tokenizer_args"]

#: one sentence, or a sentence pair (tokenized as the model's pair input, the second text's tokens of type 1)
Text = str | tuple[str, str]


def is_text(item: object) -> bool:
    """Whether `item` is a sentence or a sentence pair (a 2-tuple of strings)."""
    return isinstance(item, str) or (isinstance(item, tuple) and len(item) == 2
                                     and all(isinstance(s, str) for s in item))


def token_type_problem(types: np.ndarray, shape: tuple[int, ...], segments: int) -> str | None:
    """What is wrong with integer token types for token ids of `shape` and a model of `segments` token types
    (None: nothing): their shape, or a value outside [0, segments)."""
    if tuple(types.shape) != tuple(shape):
        return f"token_type_ids shape {list(types.shape)} differs from input_ids shape {list(shape)}"
    low, high = int(types.min()), int(types.max())
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
