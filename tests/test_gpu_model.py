"""A whole integer-only model on a CUDA GPU gives the integers of its CPU build, bit for bit, for every GEMM
variant the GPU has, through the user's path (compile, export, load, call with padding and batch chunks).

Skipped where no CUDA GPU is present (CI has none): `bench/gpu_kit.py` runs it on a lent GPU. The CPU build
is the reference because every CPU kernel is checked against the exact integer reference elsewhere
(`test_ops_exact.py`, `test_model.py`), so a difference here is a GPU kernel's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from transformers import BertConfig, BertModel

import ibert_tvm
from ibert_tvm.schedules import cuda
from ibert_tvm.targets import resolve_target

pytestmark = pytest.mark.skipif(not tvm.cuda(0).exist, reason="needs a CUDA GPU")

BATCHES, SEQS = (1, 4), (16, 32)
RNG = np.random.default_rng(11)


def _ids(batch: int, seq: int) -> tuple[np.ndarray, np.ndarray]:
    ids = RNG.integers(1000, 30522, (batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), np.int64)
    mask[1::2, seq - seq // 3:] = 0  # every other row padded by a third
    return ids, mask


@pytest.fixture(scope="module")
def quantized() -> ibert_tvm.QuantizedModel:
    """A seeded 2-layer BERT (hidden 64, 4 heads) calibrated on random token ids: no tokenizer needed."""
    torch.manual_seed(0)
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        max_position_embeddings=64, initializer_range=0.1)
    model = BertModel(config, add_pooling_layer=False).eval()
    calibration = [ibert_tvm.Batch(*map(torch.from_numpy, _ids(2, 32))) for _ in range(2)]
    return ibert_tvm.from_pretrained(model, calibration=calibration)


@pytest.fixture(scope="module")
def cpu(quantized) -> ibert_tvm.IntegerModel:
    return ibert_tvm.compile(quantized, "llvm", tuning_logs=False, batch_sizes=BATCHES, seq_lengths=SEQS).runner()


def _variants() -> list[str]:
    """The GEMM variants this GPU's arch supports (IMMA from sm_72, dp4a from sm_61, SIMT always)."""
    if not tvm.cuda(0).exist:
        return ["simt"]
    arch = int(tvm.cuda(0).compute_version.replace(".", ""))
    return [v for v, least in cuda.GEMM_VARIANTS.items() if arch >= least]


@pytest.mark.parametrize("gemm", _variants())
def test_gpu_build_equals_the_cpu_build(quantized, cpu, gemm, tmp_path):
    target = resolve_target("cuda")
    assert cuda.default_gemm(target.target) in _variants()
    path = ibert_tvm.compile(quantized, "cuda", tuning_logs=False, batch_sizes=BATCHES, seq_lengths=SEQS,
                             gemm=gemm).export(tmp_path / f"tiny_{gemm}.so")
    gpu = ibert_tvm.load(path)
    assert gpu.device.dlpack_device_type() == tvm.cuda(0).dlpack_device_type()
    # exact buckets, a padded sequence (11 -> 16), and 7 rows split into chunks of 4 + 1 + 1 + 1
    for batch, seq in ((1, 16), (4, 32), (2, 11), (7, 20)):
        ids, mask = _ids(batch, seq)
        want = cpu(ids, mask, integer=True)
        got = gpu(ids, mask, integer=True)
        assert got.dtype == want.dtype and got.shape == want.shape == (batch, seq, 64)
        np.testing.assert_array_equal(got, want, err_msg=f"gemm={gemm}, {batch} x {seq}")
        assert np.abs(want).max() > 0  # not a trivially equal all-zero output
