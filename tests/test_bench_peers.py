"""bench/bench_peers.py's figures: ratios are taken round by round (their median and range, not the ratio of
two medians) and the Markdown shows the range; and `latency.time_calls`, which times its runners, starts its
timed calls only after the asked warm-up time."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import tvm_ffi

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


def test_minilm_random_has_the_real_models_architecture():
    """`minilm-random` (for a GPU machine without the weights package) is all-MiniLM-L6-v2's shape exactly."""
    real, seeded = bench_peers.load_model("minilm"), bench_peers.load_model("minilm-random")
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
            "max_position_embeddings", "type_vocab_size", "hidden_act", "layer_norm_eps")
    assert {k: getattr(seeded.config, k) for k in keys} == {k: getattr(real.config, k) for k in keys}
    def encoder(model):  # the real model keeps a pooler the benchmark does not run (it times last_hidden_state)
        return {n: p.shape for n, p in model.named_parameters() if not n.startswith("pooler.")}
    assert encoder(seeded) == encoder(real)


def test_gpu_table_compares_with_pytorch_fp32_and_fp16(tmp_path):
    shape = {"model": "bert-base", "batch": 1, "seq": 128}
    rounds = {"ibert-tvm int CUDA (untuned)": [0.5, 0.4], "PyTorch FP32 (CUDA)": [2.0, 2.0],
              "PyTorch FP16 (CUDA)": [1.0, 1.2]}
    rows = [{**shape, "runner": r, "median_ms": sum(t) / 2, "round_ms": t} for r, t in rounds.items()]
    references = bench_peers.REFERENCES["cuda"]
    bench_peers.write(bench_peers.with_ratios(rows, references), tmp_path, {"date": "2026-12-05"}, references)
    table = (tmp_path / "peers.md").read_text()
    assert "| median ms | x vs PyTorch FP32 (CUDA) | x vs PyTorch FP16 (CUDA) |" in table
    ours = "| bert-base | 1 | 128 | ibert-tvm int CUDA (untuned) | 0.45 |"
    assert f"{ours} 4.50 (4.00-5.00) | 2.50 (2.00-3.00) |" in table


@pytest.mark.skipif(__import__("tvm").cuda(0).exist, reason="checks the message given where no GPU is present")
@pytest.mark.parametrize("argv, message", [
    (["--device", "cuda"], "needs a CUDA GPU, and TVM finds none here"),
    (["--device", "cuda", "--as-cpu", "avx2"], "are for the CPU; --device cuda builds for the GPU present"),
    (["--gemm", "dp4a"], "--gemm picks the CUDA GEMM variant; it needs --device cuda"),
])
def test_gpu_options_are_refused_where_they_cannot_run(monkeypatch, argv, message):
    monkeypatch.setattr(sys, "argv", ["bench_peers.py", *argv])
    with pytest.raises(SystemExit, match=message):
        bench_peers.main()


def test_tune_tunes_the_program_the_tuned_runner_times(monkeypatch, tmp_path):
    """`--tune N` tunes, before the tuned runner compiles, the very program it compiles (same calibration,
    constants and shape: a database's records are per kernel, constants included) into <out>/tuning/, and
    hands that folder to the runner. `--tuning-logs` with it is refused."""
    from ibert_tvm import tuning

    calls = {}

    def fake_tune(model, target, trials, folder, *, batch, seq):
        calls["tune"] = (model, target, trials, folder, batch, seq)
        return "tuned"

    def fake_runner(model, batch, seq, tuning_logs, target="llvm", **options):
        calls.setdefault("runners", []).append((tuning_logs, target))
        return lambda ids, mask: None

    monkeypatch.setattr(tuning, "tune", fake_tune)
    monkeypatch.setattr(bench_peers, "ibert_runner", fake_runner)
    monkeypatch.setattr(sys, "argv", ["bench_peers.py", "--models", "minilm-random", "--shapes", "1x8", "--only",
                                      "ibert-tvm int (untuned),ibert-tvm int (tuned)", "--tune", "4", "--rounds",
                                      "1", "--repeats", "1", "--warmup", "0", "--warmup-seconds", "0", "--out",
                                      str(tmp_path)])
    assert bench_peers.main() == 0
    model, target, trials, folder, batch, seq = calls["tune"]
    assert (target, trials, batch, seq) == ("llvm", 4, 1, 8)
    assert folder == tmp_path / "tuning" / "minilm-random_llvm_1x8"
    assert sorted(calls["runners"], key=str) == sorted([(False, "llvm"), (str(folder), "llvm")], key=str)
    timed = bench_peers.quantized(bench_peers.load_model("minilm-random"), 8)
    assert tvm_ffi.structural_equal(model.program(1, 8), timed.program(1, 8), map_free_vars=True)
    monkeypatch.setattr(sys, "argv", ["bench_peers.py", "--tune", "4", "--tuning-logs", str(folder)])
    with pytest.raises(SystemExit):
        bench_peers.main()
    monkeypatch.setattr(sys, "argv", ["bench_peers.py", "--tune", "0"])
    with pytest.raises(SystemExit, match="--tune takes a number of trials of at least 1, got 0"):
        bench_peers.main()
