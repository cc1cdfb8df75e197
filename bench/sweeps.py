"""What the accuracy sweeps of bench/ share: one configuration of the bundled sentiment classifier scored on the
test split against FP32's logits, and the report (JSON, Markdown, PNG) written with the command and the machine."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np

from ibert_tvm.classifier import IntegerClassifier, SentenceHead
from ibert_tvm.evaluate import accuracy, macro_f1, report
from ibert_tvm.model import QuantizedModel
from ibert_tvm.reports import stamped, write_results
from ibert_tvm.sentiment_data import Labelled


def fp32_scores(test: Labelled, fp32: np.ndarray) -> dict:
    """FP32's accuracy and macro-F1 on `test`, from its logits."""
    predicted = fp32.argmax(1)
    return {"accuracy": accuracy(test.targets, predicted),
            "macro_f1": macro_f1(test.targets, predicted, len(test.labels))}


def scored(test: Labelled, fp32: np.ndarray, qm: QuantizedModel, head: SentenceHead, name: str,
           progress: bool = True) -> tuple[dict, IntegerClassifier]:
    """The integer classifier of `qm` and `head` on `test`: accuracy, macro-F1, agreement with FP32's predictions,
    mean logit cosine (`evaluate.report`'s) and the seconds its compilation and run took; and the classifier."""
    started = time.perf_counter()
    clf = IntegerClassifier(qm, head)
    logits = clf.logits(test.texts, progress, name) * clf.logit_scale
    result = report(test, name, (fp32, 0.0), (logits, time.perf_counter() - started), None)
    return {"accuracy": result.integer.accuracy, "macro_f1": result.integer.macro_f1,
            "agreement": result.agreement, "cosine": result.logit_cosine,
            "seconds": round(result.integer.seconds, 1)}, clf


def publish(script: str, argv: list[str] | None, out: str, name: str, context: dict, fp32: dict, rows: list[dict],
            markdown: Callable[[dict, list[dict], dict], str], draw: Callable[[dict, list[dict], object], None]
            ) -> None:
    """Print the sweep's table and write `name`.{json,md,png} to `out`, with the command line and the machine."""
    command = " ".join([f"bench/{script}", *(sys.argv[1:] if argv is None else argv)])
    context = stamped({"command": command, **context})
    text = markdown(fp32, rows, context)
    print(text)
    write_results(out, name, {"context": context, "fp32": fp32, "rows": rows}, text,
                  lambda path: draw(fp32, rows, path))
