"""`ibert-tvm demo`: one integer-only encoder block (RoBERTa-base sized) compiled for the host CPU.

Builds an HF `IBertLayer` with seeded random weights, calibrates its activation ranges on random hidden
states (HF's own running min/max, momentum 0.95), emits the integer-only Relax program with `layers`,
compiles it with TVM for `llvm`, runs it, and compares with HF's simulated-integer layer and the float layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import tvm
from tqdm import tqdm
from transformers import IBertConfig, IBertModel
from transformers.models.ibert.modeling_ibert import IBertLayer
from transformers.models.ibert.quant_modules import QuantAct
from tvm import relax

from . import layers
from .build_util import host_vm, run_timed


@dataclass(frozen=True)
class DemoShape:
    batch: int = 1
    seq: int = 128
    hidden: int = 768
    heads: int = 12
    ffn: int = 3072
    init_range: float = 0.02  # std of HF's weight initialisation (IBertConfig.initializer_range)


def _hf_layer(shape: DemoShape, seed: int) -> tuple[IBertLayer, IBertLayer]:
    """(quantized layer, float twin) with identical seeded weights and no dropout."""
    torch.manual_seed(seed)
    cfg = dict(hidden_size=shape.hidden, num_attention_heads=shape.heads, intermediate_size=shape.ffn,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=shape.init_range)
    # Built inside a one-layer IBertModel so that HF's own weight initialisation (post_init) runs.
    q_layer = IBertModel(IBertConfig(quant_mode=True, num_hidden_layers=1, **cfg)).encoder.layer[0]
    f_layer = IBertModel(IBertConfig(quant_mode=False, num_hidden_layers=1, **cfg)).encoder.layer[0]
    f_layer.load_state_dict(q_layer.state_dict())
    return q_layer, f_layer.eval()


def _hidden_states(shape: DemoShape, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape.batch, shape.seq, shape.hidden, generator=gen)


def calibrate(q_layer: IBertLayer, input_act: QuantAct, shape: DemoShape, batches: int, seed: int) -> None:
    """HF's own calibration: train-mode forward passes update every QuantAct's EMA range (spec §1.5)."""
    gen = torch.Generator().manual_seed(seed)
    q_layer.train()
    input_act.train()
    with torch.no_grad():
        for _ in tqdm(range(batches), desc="calibrating", unit="batch"):
            x, s = input_act(_hidden_states(shape, gen))
            q_layer(x, s)
    q_layer.eval()
    input_act.eval()


def build_program(q_layer: IBertLayer, in_scale: np.ndarray, shape: DemoShape) -> tvm.IRModule:
    """The integer-only Relax program: int8 hidden states + int32 mask -> int8 hidden states."""
    x = relax.Var("hidden_int8", relax.TensorType((shape.batch, shape.seq, shape.hidden), "int8"))
    mask = relax.Var("attention_mask", relax.TensorType((shape.batch, 1, 1, shape.seq), "int32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, mask]):
        with bb.dataflow():
            out = layers.encoder_layer(bb, layers.QTensor(x, in_scale), q_layer, mask)
            result = bb.emit_output(out.value)
        bb.emit_func_output(result)
    return bb.get()


def run_demo(shape: DemoShape = DemoShape(), seed: int = 0, calib_batches: int = 4, repeats: int = 3) -> dict:
    """Run the demo end to end and return what it measured (also printed)."""
    print(f"ibert-tvm demo: one integer-only encoder block, hidden {shape.hidden}, {shape.heads} heads, "
          f"FFN {shape.ffn}, batch {shape.batch}, sequence {shape.seq}, target llvm (host CPU)")
    q_layer, f_layer = _hf_layer(shape, seed)
    input_act = QuantAct(8, quant_mode=True)
    calibrate(q_layer, input_act, shape, calib_batches, seed + 1)
    in_scale = layers.act_scale(input_act)

    gen = torch.Generator().manual_seed(seed + 2)
    x_float = _hidden_states(shape, gen)
    mask = np.ones((shape.batch, 1, 1, shape.seq), dtype=np.int32)
    mask[..., shape.seq - shape.seq // 4:] = 0  # the last quarter is padding
    with torch.no_grad():
        x_hf, _ = input_act(x_float)
        x_int8 = torch.round(x_hf / torch.tensor(in_scale)).numpy().astype(np.int8)
        ext_mask = torch.from_numpy((1 - mask).astype(np.float32)) * torch.finfo(torch.float32).min
        hf_out = q_layer(x_hf, torch.tensor([in_scale]), ext_mask)[0]
        float_out = f_layer(x_hf, None, ext_mask)[0]

    mod = build_program(q_layer, np.asarray(in_scale), shape)
    n_ops = sum(1 for _ in _ibert_calls(mod))
    vm, compile_s = host_vm(mod)
    out, latency_ms = run_timed(vm["main"], [tvm.runtime.tensor(x_int8), tvm.runtime.tensor(mask)], repeats)
    out = out.numpy()

    out_scale = layers.act_scale(q_layer.output.output_activation)
    hf_int = torch.round(hf_out / torch.tensor(out_scale)).numpy().astype(np.int64)
    diff = np.abs(out.astype(np.int64) - hf_int)
    ours_real = out.astype(np.float32) * out_scale
    ref = float_out.numpy()
    cos = np.sum(ours_real * ref, -1) / (np.linalg.norm(ours_real, axis=-1) * np.linalg.norm(ref, axis=-1))
    result = {"ibert_ops": n_ops, "compile_s": compile_s, "latency_ms": latency_ms,
              "identical_to_hf": float(np.mean(diff == 0)), "max_lsb_diff_vs_hf": int(diff.max()),
              "min_token_cosine_vs_float": float(cos.min()), "mean_token_cosine_vs_float": float(cos.mean())}
    print(f"integer program: {n_ops} ibert.* operators, int8 in -> int8 out, compiled in {compile_s:.1f} s")
    print(f"latency (untuned default schedules for this CPU, median of {repeats}): {result['latency_ms']:.1f} ms")
    print(f"vs HF IBertLayer (simulated integers): {100 * result['identical_to_hf']:.3f}% of int8 outputs "
          f"identical, max difference {result['max_lsb_diff_vs_hf']} LSB")
    print(f"vs the float layer: per-token cosine similarity min {result['min_token_cosine_vs_float']:.4f}, "
          f"mean {result['mean_token_cosine_vs_float']:.4f}")
    return result


def _ibert_calls(mod: tvm.IRModule):
    """Yield every ibert.* call in the module's Relax functions."""
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name.startswith("ibert."):
            found.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found
