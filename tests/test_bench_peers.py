"""bench/bench_peers.py's figures: ratios are taken round by round (their median and range, not the ratio of
two medians) and the Markdown shows the range; and `latency.time_calls`, which times its runners, starts its
timed calls only after the asked warm-up time."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from ibert_tvm.latency import time_calls

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_peers  # noqa: E402  (bench/ is not a package)


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


def test_timed_calls_follow_the_warm_up_time(monkeypatch):
    """`latency.time_calls`: with a clock that advances 10 ms per call, 0.15 s of warm-up is 15 calls (more
    than the 1 asked), and only then come the 3 timed ones."""
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    calls = []

    def fn() -> None:
        calls.append(clock[0])
        clock[0] += 0.01

    times = time_calls(fn, warmup=1, repeats=3, warmup_seconds=0.15)
    assert times == pytest.approx([10.0] * 3) and len(calls) == 15 + 3
    assert calls[-4] < 0.15 <= calls[-3]  # the last warm-up call began before 0.15 s, the first timed one after
