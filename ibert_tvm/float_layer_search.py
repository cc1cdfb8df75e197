"""Accuracy-driven float layers: the fewest encoder layers kept in Q8BERT mode (float Softmax, GELU and LayerNorm)
that bring a classifier within `max_loss` accuracy points of its reference on labelled texts.

Neural Compressor's accuracy-driven fallback, per encoder layer: the integer-only program is tried first; then
each layer alone in float, which measures how much accuracy each one buys back; then the most helpful layers
together, two, three and so on, until a configuration meets the target or every layer is float. At most
2 x layers programs are compiled and scored. The search chooses on the texts it scores: `eval` scores it on
texts of their own (`--search-csv`; the bundled classifier's tweets the head was not trained on), so that the
reported accuracy of the choice is on texts the choice did not see.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["EVALUATED_TEXTS", "LayerSearch", "Trial", "check_max_loss", "points", "search_float_layers"]

#: what `LayerSearch.texts` says where the search scored the texts the evaluation reports
EVALUATED_TEXTS = "the evaluated texts"
#: a configuration's run: its float layers -> (real-valued logits [N, C], seconds its compilation and run took)
Run = Callable[[tuple[int, ...]], tuple[np.ndarray, float]]


@dataclass(frozen=True)
class Trial:
    """One configuration tried: its float layers, accuracy, agreement with the reference's predictions, seconds."""

    float_layers: tuple[int, ...]
    accuracy: float
    agreement: float
    seconds: float

    @property
    def name(self) -> str:
        """The float layers as `--float-layers` takes them, or "none (integer-only)"."""
        return ",".join(map(str, self.float_layers)) or "none (integer-only)"


@dataclass(frozen=True)
class LayerSearch:
    """The search's trials in the order tried (integer-only first) and its choice: the float layers of the first
    configuration within `max_loss` points of the reference (among the single layers, the most accurate), or
    None where none was."""

    reference_accuracy: float
    max_loss: float  # accuracy points (percent) below the reference's
    trials: tuple[Trial, ...]
    chosen: tuple[int, ...] | None
    texts: str = EVALUATED_TEXTS  # the labelled texts the trials scored

    @property
    def target(self) -> float:
        """The least accuracy that meets the target (a fraction)."""
        return self.reference_accuracy - self.max_loss / 100

    def table(self) -> str:
        """The trials as a Markdown table and the outcome in a sentence."""
        lines = [f"float-layer search on {self.texts}: within {points(self.max_loss)} of the reference's "
                 f"{100 * self.reference_accuracy:.2f} %, so at least {100 * self.target:.2f} %", "",
                 "| float layers | accuracy | vs reference (points) | agreement | time |", "|---|---|---|---|---|"]
        lines += [f"| {t.name} | {100 * t.accuracy:.2f} % | {100 * (t.accuracy - self.reference_accuracy):+.2f} | "
                  f"{100 * t.agreement:.2f} % | {t.seconds:.0f} s |" for t in self.trials]
        if self.chosen is None:
            best = max(self.trials, key=lambda t: t.accuracy)
            outcome = (f"no configuration met the target; the most accurate tried, float layers {best.name}, is "
                       f"{100 * (self.reference_accuracy - best.accuracy):.2f} points below the reference")
        elif self.chosen:
            outcome = f"chosen: float layers {', '.join(map(str, self.chosen))} (`--float-layers " \
                      f"{','.join(map(str, self.chosen))}`)"
        else:
            outcome = "chosen: none, the integer-only program meets the target"
        return "\n".join([*lines, "", outcome])


def points(value: float) -> str:
    """'1 point', '0.5 points'."""
    return f"{value:g} point" + ("" if value == 1 else "s")


def check_max_loss(max_loss: float) -> float:
    """`max_loss` as a float: a finite number of accuracy points in [0, 100]; a ValueError naming it otherwise."""
    if isinstance(max_loss, bool) or not isinstance(max_loss, numbers.Real) or not math.isfinite(max_loss) \
            or not 0 <= max_loss <= 100:
        raise ValueError(f"max_loss must be a number of accuracy points in [0, 100], got {max_loss!r}")
    return float(max_loss)


def search_float_layers(layers: int, targets: np.ndarray, reference: np.ndarray, integer: tuple[np.ndarray, float],
                        run: Run, max_loss: float, progress: bool = True, texts: str = EVALUATED_TEXTS
                        ) -> tuple[LayerSearch, tuple[np.ndarray, float] | None]:
    """Search the float layers of a model of `layers` encoder layers for the least within `max_loss` points of the
    reference's accuracy on `targets` (class indices [N]): `reference` is its logits [N, C], `integer` the
    integer-only program's (logits, seconds), `run` compiles and scores a configuration; `texts` names them in the
    report. Returns the search and the chosen configuration's run (None where the integer-only program was chosen
    or nothing met the target). Meeting the target is decided on counts of correct texts (to a relative 1e-12 of
    `max_loss`)."""
    max_loss = check_max_loss(max_loss)
    if layers < 1:
        raise ValueError(f"the float-layer search needs a model with encoder layers, got {layers}")
    if len(targets) == 0:
        raise ValueError("the float-layer search needs at least one labelled text")
    targets, wanted = np.asarray(targets), np.asarray(reference).argmax(1)
    reference_correct = int(np.sum(wanted == targets))
    runs: dict[tuple[int, ...], tuple[np.ndarray, float]] = {}
    trials: list[Trial] = []

    def trial(config: tuple[int, ...], result: tuple[np.ndarray, float] | None = None) -> Trial:
        runs[config] = result if result is not None else run(config)
        predicted = runs[config][0].argmax(1)
        trials.append(Trial(config, float(np.mean(predicted == targets)), float(np.mean(predicted == wanted)),
                            float(runs[config][1])))
        if progress:
            print(f"float-layer search: {trials[-1].name}: accuracy {100 * trials[-1].accuracy:.2f} %",
                  file=sys.stderr, flush=True)
        return trials[-1]

    def meets(t: Trial) -> bool:  # (1 + 1e-12: a max_loss given in decimals, 2.3 x 3000 = 6899.999999999999)
        return 100 * (reference_correct - round(t.accuracy * len(targets))) <= max_loss * len(targets) * (1 + 1e-12)

    def done(chosen: tuple[int, ...] | None) -> tuple[LayerSearch, tuple[np.ndarray, float] | None]:
        search = LayerSearch(reference_correct / len(targets), max_loss, tuple(trials), chosen, texts)
        return search, (runs[chosen] if chosen else None)

    if meets(trial((), integer)):
        return done(())
    singles = sorted((trial((i,)) for i in range(layers)), key=lambda t: (-t.accuracy, -t.agreement, t.float_layers))
    if meets(singles[0]):
        return done(singles[0].float_layers)
    for count in range(2, layers + 1):
        config = tuple(sorted(t.float_layers[0] for t in singles[:count]))
        if meets(trial(config)):
            return done(config)
    return done(None)
