"""bench/bench_peers.py's figures: ratios are taken round by round (their median and range, not the ratio of
two medians), the Markdown shows the range, and a runner's timed calls follow at least the asked warm-up
time."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from ibert_tvm.latency import time_calls

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
bench_peers = pytest.importorskip("bench_peers")


def _rows() -> list[dict]:
    # Ours is fast when ONNX Runtime is slow in the same round (a host slowing both alike would not do this):
    # rounds' ratios 2.0, 1.0, 3.0 -> median 2.0, range 1.0-3.0; the ratio of the medians would be 1.0.
    shape = {"model": "bert-base", "batch": 1, "seq": 32}
    rounds = {"ibert-tvm int (untuned)": [10.0, 20.0, 30.0], "ONNX Runtime dynamic int8": [20.0, 20.0, 90.0],
              "PyTorch FP32": [100.0, 100.0, 100.0]}
    return [{**shape, "runner": r, "median_ms": sorted(t)[1], "round_ms": t} for r, t in rounds.items()]


def test_ratios_are_the_median_of_the_rounds_ratios_with_their_range():
    ours, ort, torch_fp32 = bench_peers.with_ratios(_rows())
    assert ours["x_vs_ort_int8"] == 2.0 and ours["x_vs_ort_int8_range"] == [1.0, 3.0]
    assert ours["x_vs_torch_fp32"] == 5.0 and ours["x_vs_torch_fp32_range"] == [3.333, 10.0]
    assert ort["x_vs_ort_int8"] == 1.0 and torch_fp32["x_vs_torch_fp32"] == 1.0


def test_markdown_shows_each_ratio_with_its_range(tmp_path):
    bench_peers.write(bench_peers.with_ratios(_rows()), tmp_path, {"date": "2026-12-05"})
    table = (tmp_path / "peers.md").read_text()
    assert "| bert-base | 1 | 32 | ibert-tvm int (untuned) | 20.0 | 5.00 (3.33-10.00) | 2.00 (1.00-3.00) |" in table
    assert "| bert-base | 1 | 32 | ONNX Runtime dynamic int8 | 20.0 | 5.00 (1.11-5.00) | 1.00 |" in table


def test_timed_calls_follow_the_warm_up_time():
    calls = []

    def fn() -> None:
        calls.append(time.perf_counter())
        time.sleep(0.01)

    start = time.perf_counter()
    times = time_calls(fn, warmup=1, repeats=3, warmup_seconds=0.15)
    assert len(times) == 3 and all(t >= 10 for t in times)  # milliseconds
    assert len(calls) - 3 >= 10  # warm-up calls of 10 ms each filling 0.15 s
    assert calls[-4] - start < 0.15 <= calls[-3] - start  # the last warm-up began before it, the first timed after
