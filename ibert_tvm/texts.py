"""Sentences and sentence pairs as a tokenizer takes them (the runtime's texts and calibration's alike)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["Text", "tokenizer_args"]

#: one sentence, or a sentence pair (tokenized as the model's pair input, the second text's tokens of type 1)
Text = str | tuple[str, str]


def tokenizer_args(texts: Sequence[Text]) -> tuple[list[str], ...]:
    """The tokenizer's positional arguments for `texts`: ([texts],) for sentences, ([firsts], [seconds]) for
    2-tuples of strings; a TypeError for one string, a mix or anything else."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got one string (wrap it in a list)")
    try:
        items = list(texts)
    except TypeError as err:
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}") from err
    items = [str(t) if type(t).__name__ == "str_" else t for t in items]  # numpy strings
    if all(isinstance(t, str) for t in items):
        return (items,)
    if all(isinstance(t, tuple) and len(t) == 2 and all(isinstance(s, str) for s in t) for t in items):
        return [a for a, _ in items], [b for _, b in items]
    raise TypeError("texts must be all strings (sentences) or all 2-tuples of strings (sentence pairs)")
