"""`eval --model`: a user's sequence-classification checkpoint scored on a labelled CSV, sentences or pairs, its
reference and integer-only modes checked against logits computed here without the evaluation's code."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

import ibert_tvm
from ibert_tvm.evaluate import row_cosines
from ibert_tvm.evaluate_checkpoint import _batches, checkpoint_labels, evaluate_checkpoint
from ibert_tvm.model import UnsupportedModelError
from ibert_tvm.model_demo import sentences
from ibert_tvm.sentiment_data import read_labelled_csv
from test_cli import assert_one_line_error, cli
from tiny_models import LABELS, held_out_texts, save_tiny_classifier

SEQ = 64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("eval") / "model")


def pairs() -> list[tuple[str, str]]:
    """Held-out sentences, each paired with another of the bundled sentences."""
    held = held_out_texts()
    return [(text, sentences()[i]) for i, text in enumerate(held)]


def independent_logits(model_dir: Path, texts: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoint's PyTorch logits and its integer-only program's (compiled here for one bucket, all texts in
    one batch) on the texts as its tokenizer encodes them."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    enc = tokenizer([a for a, _ in texts], [b for _, b in texts], padding=True, truncation=True, max_length=SEQ,
                    return_tensors="pt")
    with torch.no_grad():
        reference = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()(**enc).logits.numpy()
    qm = ibert_tvm.from_pretrained(model_dir, calibration=sentences())
    lib = ibert_tvm.compile(qm, "llvm", batch_sizes=(len(texts),), seq_lengths=(SEQ,), tuning_logs=False)
    integer = lib(enc["input_ids"].numpy(), enc["attention_mask"].numpy(), enc["token_type_ids"].numpy())
    return reference.astype(np.float64), integer.astype(np.float64)


def write_csv(path: Path, texts: list[tuple[str, str]], labels: list[str]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["premise", "hypothesis", "gold"])
        writer.writerows((a, b, label) for (a, b), label in zip(texts, labels))
    return path


@pytest.mark.parametrize("side", ["right", "left"])
def test_each_batch_is_what_the_tokenizer_gives_its_texts_alone(model_dir, side):
    """Texts are tokenized once and cut into batches of similar length: each batch equals the tokenizer's
    encoding of its texts alone, on either padding side (with left padding, texts lost their last tokens)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side=side)

    class Encoder:  # the artifact's encode_texts, with this tokenizer
        def encode_texts(self, texts):
            enc = tokenizer(texts, padding=True, return_tensors="np")
            return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]

    texts = held_out_texts()[:7] + ["a", "one two three four five six seven eight nine ten eleven twelve"]
    batches = _batches(Encoder(), texts, 3)
    assert sorted(int(i) for rows, _ in batches for i in rows) == list(range(len(texts)))
    for rows, (ids, mask, types) in batches:
        alone = tokenizer([texts[i] for i in rows], padding=True, return_tensors="np")
        for got, key in zip((ids, mask, types), ("input_ids", "attention_mask", "token_type_ids")):
            np.testing.assert_array_equal(got, alone[key])


def test_eval_of_a_pair_classifier_scores_the_checkpoint_and_its_integer_program(model_dir, tmp_path):
    """Labels chosen so that the reference is right on exactly 12 of 16 pairs; the report's reference and
    integer-only scores, agreement and mean logit cosine are those of logits computed independently, in file
    order (the evaluation batches by length and feeds the token types of each pair)."""
    texts = pairs()
    reference, integer = independent_logits(model_dir, texts)
    truth = reference.argmax(1)
    truth[:4] = (truth[:4] + 1) % 3  # four wrong on purpose
    path = write_csv(tmp_path / "pairs.csv", texts, [LABELS[int(t)].upper() for t in truth])
    data = read_labelled_csv(path, checkpoint_labels(model_dir), "premise", "gold", "hypothesis")
    report = evaluate_checkpoint(model_dir, data, batch_size=5, seq_lengths=(16, SEQ), q8bert=False, progress=False)
    assert report.examples == 16 and report.reference == "FP32 (PyTorch)" and report.q8bert is None
    assert report.fp32.accuracy == 12 / 16
    assert report.integer.accuracy == np.mean(integer.argmax(1) == truth)
    assert report.agreement == np.mean(integer.argmax(1) == reference.argmax(1))
    assert report.logit_cosine == pytest.approx(row_cosines(reference, integer).mean(), abs=1e-6)
    singles = read_labelled_csv(path, tuple(LABELS.values()), "premise", "gold")  # the same rows as single sentences
    alone = evaluate_checkpoint(model_dir, singles, batch_size=5, seq_lengths=(16, SEQ), q8bert=False, progress=False)
    assert alone.logit_cosine != pytest.approx(report.logit_cosine, abs=1e-6)  # the second sentences were read


def test_eval_model_through_the_cli_writes_all_four_modes(model_dir, tmp_path):
    """The command line with Q8BERT mode and a float layer: one table of four modes and the report files."""
    texts = pairs()[:6]
    path = write_csv(tmp_path / "six.csv", texts, ["negative", "1", "positive", "0", "neutral", "2"])
    proc = cli("eval", "--model", str(model_dir), "--csv", str(path), "--text-column", "premise", "--label-column",
               "gold", "--pair-column", "hypothesis", "--seq-lengths", "32,64", "--float-layers", "0", "--out",
               str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert f"6 labelled texts from {path}" in proc.stdout
    for mode in ("| FP32 (PyTorch) |", "| integer-only (I-BERT, TVM) |", "| Q8BERT mode",
                 "| integer, float layers 0 (TVM) |"):
        assert mode in proc.stdout
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())["report"]
    assert saved["labels"] == list(LABELS.values()) and saved["q8bert"] is not None
    assert saved["float_layers"] == [0] and np.array(saved["mixed"]["confusion"]).sum() == 6
    assert np.array(saved["integer"]["confusion"]).sum(1).tolist() == [2, 2, 2]


def test_eval_model_refusals_come_before_any_work(model_dir, tmp_path):
    """Each wrong use of `eval --model` is one line naming the problem."""
    texts = pairs()[:3]
    path = write_csv(tmp_path / "three.csv", texts, ["negative", "neutral", "happy"])
    common = ("--csv", str(path), "--text-column", "premise", "--label-column", "gold", "--seq-lengths", "32")
    assert_one_line_error(cli("eval", "--model", str(model_dir)), "eval --model needs --csv FILE")
    assert_one_line_error(cli("eval", "--model", str(model_dir), *common), "label 'happy' is not one of")
    assert_one_line_error(cli("eval", "--model", str(model_dir), *common, "--pair-column", "second"),
                          "missing column(s) ['second']")
    assert_one_line_error(cli("eval", "--model", str(model_dir), "--csv", str(path), "--text-column", "premise",
                              "--label-column", "gold"), "give a shorter --seq-lengths")
    assert_one_line_error(cli("eval", "--csv", str(path), "--pair-column", "hypothesis"),
                          "--pair-column: for a checkpoint given with --model")
    assert_one_line_error(cli("eval", "--text-column", "premise"), "name the columns of a --csv or --search-csv file")
    assert_one_line_error(cli("eval", "--model", str(tmp_path / "nowhere"), *common), "is not a local model directory")
    assert_one_line_error(cli("eval", "--model", str(model_dir), *common[:-2], "--pair-column", "hypothesis",
                              "--seq-lengths", "32,64", "--float-layers", "7"), "float_layers: 7 is not a layer")
    encoder = tmp_path / "encoder"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(encoder)
    assert_one_line_error(cli("eval", "--model", str(encoder), *common), "is not a sequence-classification checkpoint")
    with pytest.raises(UnsupportedModelError, match="is not a sequence-classification checkpoint"):
        checkpoint_labels(encoder)
