"""One integer-only encoder layer (ibert_tvm.layers) vs HF's IBertLayer and the float layer, and the demo CLI."""

import subprocess
import sys
from pathlib import Path

import pytest

from ibert_tvm import demo

# Weights drawn wider than HF's default 0.02 so that the tiny layer's attention-score scale is realistic
# (~1e-4): at scales below ~1e-5, HF's float32 i-exp polynomial (c' > 2^34) loses integer precision, and
# agreement with it measures HF's rounding rather than ours (our op stays exact, see test_ops_exact).
TINY = demo.DemoShape(batch=2, seq=24, hidden=64, heads=4, ffn=128, init_range=0.1)


@pytest.fixture(scope="module")
def tiny_result():
    return demo.run_demo(TINY, seed=3, calib_batches=3, repeats=1)


def test_layer_matches_hf_ibert_layer(tiny_result, report):
    report(f"encoder layer (tiny, masked) vs HF IBertLayer: {100 * tiny_result['identical_to_hf']:.3f}% identical, "
           f"max {tiny_result['max_lsb_diff_vs_hf']} LSB")
    assert tiny_result["identical_to_hf"] >= 0.999
    assert tiny_result["max_lsb_diff_vs_hf"] <= 1


def test_layer_close_to_float_layer(tiny_result):
    assert tiny_result["min_token_cosine_vs_float"] >= 0.99


def test_layer_is_integer_only(tiny_result):
    assert tiny_result["ibert_ops"] == 23


def test_block_demo_cli_runs():
    exe = Path(sys.executable).with_name("ibert-tvm")
    proc = subprocess.run([str(exe), "demo", "--block", "--seq", "16"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "identical" in proc.stdout and "cosine" in proc.stdout
