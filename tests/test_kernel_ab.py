"""bench/kernel_ab.py, the kernel-level timing tool the kernel figures of bench/RESULTS.md come from: it
times a kernel hot and cold, keeps what it built with --save, times that against a fresh build with
--against, and refuses a saved directory of another shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--model", "minilm", "--target", "llvm", "--match", "softmax", "--rounds", "2", "--cold-bytes", str(1 << 20)]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench/kernel_ab.py"), *ARGS, *args], cwd=ROOT / "bench",
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("kab")
    return out, _run("--shape", "1x16", "--save", str(out))


def test_save_times_the_kernel_hot_and_cold(saved):
    out, run = saved
    assert run.returncode == 0, run.stderr[-2000:]
    record = json.loads((out / "kernels.json").read_text())
    assert record["shape"] == "1x16" and record["rows"]
    for row in record["rows"]:
        assert "softmax" in row["kernel"] and row["a_us"] > 0 and row["b_us"] > 0 and row["calls"] == 6  # 6 layers
        assert (out / f"{row['kernel']}.so").exists() and (out / f"{row['kernel']}.npz").exists()
    assert "cold/hot" in run.stdout


def test_against_times_the_saved_build_beside_this_one(saved):
    out, _ = saved
    run = _run("--shape", "1x16", "--against", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "B/A" in run.stdout and "softmax" in run.stdout.split("B/A", 1)[1]


def test_against_refuses_another_shape(saved):
    out, _ = saved
    run = _run("--shape", "1x8", "--against", str(out))
    assert run.returncode != 0 and "1x16" in run.stderr
