"""The accuracy-driven float-layer search (`eval --max-loss`): its order of trials and its choice on scripted
accuracies, and on a real checkpoint that int8 quantizes badly, each trial equal to `eval --float-layers`'s run of
the same layers."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from ibert_tvm.evaluate import Scoring, check_layer_choice, float_layers_mode
from ibert_tvm.evaluate_checkpoint import evaluate_checkpoint
from ibert_tvm.float_layer_search import check_max_loss, search_float_layers
from ibert_tvm.model_demo import sentences
from ibert_tvm.sentiment_data import Labelled
from test_cli import assert_one_line_error, cli
from tiny_models import LABELS, save_tiny_classifier

TEXTS = 100


def scripted(correct: dict[tuple[int, ...], int], calls: list):
    """A run whose configuration (its float layers) classifies correctly the first `correct[layers]` of TEXTS
    texts of class 0 (the rest as class 1), recording each call."""

    def run(layers: tuple[int, ...]) -> tuple[np.ndarray, float]:
        calls.append(layers)
        logits = np.zeros((TEXTS, 3))
        logits[: correct[layers], 0] = 1
        logits[correct[layers]:, 1] = 1
        return logits, 1.0

    return run


def search(correct: dict[tuple[int, ...], int], layers: int, max_loss: float):
    """`search_float_layers` over scripted runs, the reference right on every text; (search, chosen run, calls)."""
    calls: list = []
    run = scripted(correct, calls)
    reference = np.eye(3)[np.zeros(TEXTS, int)]
    found, chosen = search_float_layers(layers, np.zeros(TEXTS, int), reference, run(()), run, max_loss, False)
    return found, chosen, calls[1:]


def test_the_integer_program_is_chosen_where_it_meets_the_target():
    found, chosen, calls = search({(): 99}, 4, 1.0)
    assert found.chosen == () and chosen is None and calls == [] and len(found.trials) == 1
    assert found.target == pytest.approx(0.99) and "the integer-only program meets the target" in found.table()
    assert "within 1 point of the reference's 100.00 %" in found.table()


def test_the_best_single_layer_is_chosen_where_one_meets_the_target():
    """Every layer is tried alone before choosing: the most accurate that meets it wins (not the first)."""
    correct = {(): 90, (0,): 93, (1,): 96, (2,): 95}
    found, chosen, calls = search(correct, 3, 5.0)
    assert calls == [(0,), (1,), (2,)] and found.chosen == (1,)
    assert chosen[0][:, 0].sum() == 96  # the chosen configuration's own logits
    assert "`--float-layers 1`" in found.table()


def test_the_most_helpful_layers_are_added_in_order_until_the_target_is_met():
    """Single layers ordered by accuracy, ties by agreement then index: 2, then 0 (tied with 3), then 3."""
    correct = {(): 80, (0,): 84, (1,): 81, (2,): 86, (3,): 84, (0, 2): 89, (0, 2, 3): 95}
    found, chosen, calls = search(correct, 4, 5.0)
    assert calls == [(0,), (1,), (2,), (3,), (0, 2), (0, 2, 3)]
    assert found.chosen == (0, 2, 3) and chosen[0][:, 0].sum() == 95
    assert [t.float_layers for t in found.trials] == [(), *calls]
    assert [t.accuracy for t in found.trials] == [correct[c] / TEXTS for c in [(), *calls]]


def test_no_choice_where_every_layer_in_float_misses_the_target():
    correct = {(): 80, (0,): 82, (1,): 81, (0, 1): 84}
    found, chosen, calls = search(correct, 2, 10.0)
    assert found.chosen is None and chosen is None and calls == [(0,), (1,), (0, 1)]
    assert "no configuration met the target; the most accurate tried, float layers 0,1, is 16.00 points" \
        in found.table()


@pytest.mark.parametrize("max_loss, met", [(2.0, True), (1.99, False), (0.0, False)])
def test_the_target_is_decided_on_counts(max_loss, met):
    """A loss of exactly 2 points meets a max_loss of 2 (0.98 would be 1 ulp short of 1 - 0.02 in floats)."""
    found, _, _ = search({(): 98, (0,): 98}, 1, max_loss)
    assert (found.chosen == ()) == met


def test_a_max_loss_in_decimals_meets_the_same_loss():
    """69 misses of 3,000 texts are 2.3 points, though 2.3 x 3,000 is 6899.999999999999 in floats."""
    predicted = np.zeros(3000, int)
    predicted[:69] = 1
    run = lambda layers: (np.eye(3)[predicted], 1.0)  # noqa: E731
    found, _ = search_float_layers(1, np.zeros(3000, int), np.eye(3)[np.zeros(3000, int)], run(()), run, 2.3, False)
    assert found.chosen == () and 2.3 * 3000 < 6900


def test_a_third_of_the_texts_is_a_third_of_the_points():
    calls: list = []
    run = scripted({(): 2}, calls)
    found, _ = search_float_layers(1, np.zeros(3, int), np.eye(3)[[0, 0, 0]], (run(())[0][:3], 1.0), run,
                                   100 / 3, False)
    assert found.chosen == ()


@pytest.mark.parametrize("bad", [-1, 100.5, math.nan, math.inf, True, "1", None])
def test_max_loss_must_be_points_in_0_to_100(bad):
    with pytest.raises(ValueError, match="max_loss must be a number of accuracy points in \\[0, 100\\]"):
        check_max_loss(bad)


def test_max_loss_takes_numpy_numbers_and_a_model_needs_layers():
    assert check_max_loss(np.float32(1.5)) == 1.5 and check_max_loss(np.int64(2)) == 2.0
    with pytest.raises(ValueError, match="needs a model with encoder layers, got 0"):
        search_float_layers(0, np.zeros(3, int), np.eye(3), (np.eye(3), 0.0), None, 1.0, False)


def test_no_texts_is_refused():
    with pytest.raises(ValueError, match="needs at least one labelled text"):
        search_float_layers(1, np.zeros(0, int), np.zeros((0, 3)), (np.zeros((0, 3)), 0.0), None, 1.0, False)


def scoring(name: str, correct: dict[tuple[int, ...], int], calls: list) -> Scoring:
    """`scripted` runs over TEXTS texts of class 0 as a `Scoring` (the reference right on every text)."""
    run = scripted(correct, calls)
    data = Labelled([f"text {i}" for i in range(TEXTS)], np.zeros(TEXTS, int), tuple(LABELS.values()))
    return Scoring(data, name, np.eye(3)[np.zeros(TEXTS, int)], lambda _dequant, _desc, layers: run(layers))


def test_a_search_on_texts_of_its_own_is_reported_on_the_evaluated_ones(tmp_path):
    """With search texts (`--search-csv`), the trials score only those and the table names them; the chosen layers
    are then compiled and scored on the evaluated texts, which would have chosen otherwise."""
    BertConfig(num_hidden_layers=2).save_pretrained(tmp_path)
    on_search, on_evaluated = [], []
    search_on = scoring("dev.csv", {(): 90, (0,): 92, (1,): 97}, on_search)
    evaluated = scoring("test.csv", {(): 90, (0,): 99, (1,): 91}, on_evaluated)
    mixed, layers, found = float_layers_mode(tmp_path, evaluated, evaluated.quantized("none", "", ()), (), 5.0,
                                             False, search_on)
    assert on_search == [(), (0,), (1,)] and on_evaluated == [(), (1,)]
    assert found.chosen == layers == (1,) and mixed[0][:, 0].sum() == 91  # the evaluated texts' run of layer 1
    assert [t.accuracy for t in found.trials] == [0.90, 0.92, 0.97]
    assert "float-layer search on 100 labelled texts from dev.csv: within 5 points" in found.table()
    mixed, layers, found = float_layers_mode(tmp_path, evaluated, evaluated.quantized("none", "", ()), (), 5.0, False)
    assert layers == (0,) and "float-layer search on the evaluated texts" in found.table()


def test_search_texts_need_max_loss_and_the_evaluated_texts_labels(tmp_path):
    BertConfig(num_hidden_layers=2).save_pretrained(tmp_path)
    texts = scoring("dev.csv", {}, []).data
    with pytest.raises(ValueError, match="need max_loss"):
        check_layer_choice(tmp_path, (), None, texts, texts)
    other = Labelled(texts.texts, texts.targets, ("a", "b", "c"))
    with pytest.raises(ValueError, match="the search texts' labels .* differ from the evaluated texts' .'a', 'b'"):
        check_layer_choice(tmp_path, (), 1.0, other, texts)
    with pytest.raises(ValueError, match="differ from the evaluated texts' None"):
        check_layer_choice(tmp_path, (), 1.0, None, texts)
    assert check_layer_choice(tmp_path, (), 1.0, texts, texts) == ()


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory) -> tuple[Path, Labelled]:
    """The tiny 2-layer classifier with two outlier channels after layer 0 (LayerNorm gain 60), which per-tensor
    int8 quantizes coarsely, and the bundled sentences labelled with its own PyTorch predictions (so that its
    reference is right on all of them and the integer program is not)."""
    path = save_tiny_classifier(tmp_path_factory.mktemp("search") / "model")
    model = BertForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        model.bert.encoder.layer[0].output.LayerNorm.weight[:2] = 60.0
        model.save_pretrained(path)
        enc = AutoTokenizer.from_pretrained(path)(sentences(), padding=True, return_tensors="pt")
        truth = model(**enc).logits.argmax(1).numpy()
    return path, Labelled(sentences(), truth, tuple(LABELS.values()))


def test_search_on_a_checkpoint_runs_each_configuration_as_eval_float_layers_does(outlier_model):
    """With max_loss 0 nothing meets the target: integer-only, each layer alone, then both, in that order; each
    trial's accuracy is that of `evaluate_checkpoint(float_layers=...)`'s own run of the same layers. With the
    integer-only program's loss as max_loss, it is chosen after one trial, also on search texts of their own."""
    path, data = outlier_model
    options = {"batch_size": 8, "seq_lengths": (32,), "q8bert": False, "progress": False}
    report = evaluate_checkpoint(path, data, max_loss=0.0, **options)
    trials = report.search.trials
    assert report.fp32.accuracy == 1.0 and report.integer.accuracy < 1.0  # the checkpoint is as hard as meant
    assert report.search.chosen is None and report.mixed is None and report.float_layers == ()
    assert [t.float_layers for t in trials][:3] == [(), (0,), (1,)] and len(trials) == 4
    assert set(trials[3].float_layers) == {0, 1} and trials[0].accuracy == report.integer.accuracy
    for layers, trial in zip([(0,), (1,)], trials[1:3]):
        alone = evaluate_checkpoint(path, data, float_layers=layers, **options)
        assert alone.mixed.accuracy == trial.accuracy and alone.mixed_agreement == trial.agreement
    loss = 100 * round(len(data.texts) * (1 - report.integer.accuracy)) / len(data.texts)
    # on search texts of their own (here the same sentences, compiled and scored again), named in the table
    chosen = evaluate_checkpoint(path, data, max_loss=loss, search_data=data, search_name="the same sentences",
                                 **options)
    assert chosen.search.chosen == () and len(chosen.search.trials) == 1 and chosen.mixed is None
    assert chosen.search.trials[0].accuracy == report.integer.accuracy
    assert chosen.search.texts == f"{len(data)} labelled texts from the same sentences"


def test_eval_max_loss_through_the_cli(outlier_model, tmp_path):
    """Exit status 3 and a line where nothing meets --max-loss, the search in the table and in eval.json; the
    option's refusals."""
    path, data = outlier_model
    csv = tmp_path / "labelled.csv"
    csv.write_text("text,label\n" + "".join(f'"{t}",{LABELS[int(y)]}\n' for t, y in zip(data.texts, data.targets)))
    common = ("eval", "--model", str(path), "--csv", str(csv), "--seq-lengths", "32", "--no-q8bert")
    proc = cli(*common, "--max-loss", "0", "--out", str(tmp_path / "out"))
    assert proc.returncode == 3, proc.stderr
    assert "| none (integer-only) |" in proc.stdout and "no configuration met the target" in proc.stdout
    assert "ibert-tvm: no configuration of float layers is within --max-loss 0 points" in proc.stderr
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())["report"]["search"]
    assert saved["chosen"] is None and len(saved["trials"]) == 4 and saved["max_loss"] == 0
    assert (tmp_path / "out" / "eval.png").stat().st_size > 0
    for bad in ("-1", "nan", "101", "x"):
        assert_one_line_error(cli(*common, "--max-loss", bad), "--max-loss")
    proc = cli(*common, "--max-loss", "1", "--float-layers", "0")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
    dev = tmp_path / "dev.csv"
    dev.write_text("\n".join(csv.read_text().splitlines()[:11]) + "\n")  # the header and 10 texts
    proc = cli(*common, "--max-loss", "100", "--search-csv", str(dev), "--out", str(tmp_path / "dev-out"))
    assert proc.returncode == 0, proc.stderr
    assert f"float-layer search on 10 labelled texts from {dev}: within 100 points" in proc.stdout
    assert_one_line_error(cli(*common, "--search-csv", str(dev)), "need max_loss (--max-loss)")
    renamed = tmp_path / "renamed.csv"  # the bundled classifier on the test split reads its columns too
    renamed.write_text(dev.read_text().replace("text,label", "tweet,sentiment", 1))
    assert_one_line_error(cli("eval", "--search-csv", str(renamed), "--text-column", "tweet", "--label-column",
                              "sentiment"), "need max_loss (--max-loss)")
