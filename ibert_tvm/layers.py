"""Emit integer-only Relax for the I-BERT building blocks, from HF `IBert` modules holding calibrated ranges.

The quantization points and bit widths are those of the spec's §5 tables (HF `modeling_ibert.py`): every
`QuantAct` becomes an `ibert.requantize` whose (M, E) come from `quant.requant_dyadic`, every `QuantLinear`
an `ibert.linear` with its integer weights, `IntSoftmax` / `IntGELU` / `IntLayerNorm` the matching ops.
Scales travel beside the values as float32 arrays and are consumed here, at build time, only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm import relax

from . import ops, quant
from .ops.intmath import as_pyint, ref_rne_div_pow2
from .ops.linear import ACC_LIMIT, accumulator_bound

F32 = np.float32


@dataclass(frozen=True)
class QTensor:
    """An integer Relax value and its real scale (scalar or per-channel float32); scale None: a float value.

    Float values only occur in Q8BERT mode, around the nonlinearities HF's `force_dequant` keeps in float.

    `assumed` is the scale HF's IBertModel *believes* the value has, where that differs (it hands the
    embedding scale to every layer, spec §5.3); None means the true scale is used ("ibert" semantics).
    """

    value: relax.Expr
    scale: np.ndarray
    assumed: np.ndarray | None = None


def regrid(bb: relax.BlockBuilder, x: QTensor) -> QTensor:
    """HF's `x / S_assumed` on an integer grid: rne(x * S / S_assumed), exact dyadic, 32-bit."""
    if x.assumed is None or float(x.assumed) == float(x.scale):
        return QTensor(x.value, x.scale)
    d = quant.requant_dyadic(x.scale, float(x.assumed))
    return QTensor(bb.emit(ops.requantize(x.value, d.multiplier, d.shift, bits=32)), np.asarray(x.assumed))


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def act_scale(quant_act) -> np.ndarray:
    """The scale of an HF `QuantAct` from its calibrated (x_min, x_max) buffers (spec §1.5)."""
    return quant.symmetric_scale(quant_act.activation_bit, _np(quant_act.x_min)[0], _np(quant_act.x_max)[0])


def dequantize(bb: relax.BlockBuilder, x: QTensor) -> relax.Expr:
    """Real values q * S in float32 (Q8BERT mode only)."""
    return bb.emit(relax.op.multiply(relax.op.astype(x.value, "float32"), relax.const(np.asarray(x.scale, F32))))


def quantize_direct(bb: relax.BlockBuilder, x: relax.Expr, scale: np.ndarray, bits: int) -> relax.Expr:
    """HF's direct quantization of a float value: clamp(rne((1/S) x), -n, n-1) (spec §1.2)."""
    n = 2 ** (bits - 1) - 1
    q = relax.op.round(relax.op.multiply(relax.const(F32(1.0) / F32(scale), "float32"), x))
    return bb.emit(relax.op.astype(relax.op.clip(q, -n, n - 1), ops.requantize_dtype(bits)))


def requantize_act(bb: relax.BlockBuilder, x: QTensor, quant_act, identity: QTensor | None = None) -> QTensor:
    """HF QuantAct: FixedPointMul (optionally with identity) -> ibert.requantize; a float input (scale
    None, after a force-dequantized nonlinearity) is quantized directly, as HF does."""
    out_scale = act_scale(quant_act)
    if x.scale is None:
        return QTensor(quantize_direct(bb, x.value, out_scale, quant_act.activation_bit), out_scale)
    d = quant.requant_dyadic(x.scale, float(out_scale))
    kwargs = {}
    if identity is not None:
        identity = regrid(bb, identity)
        d1 = quant.requant_dyadic(identity.scale, float(out_scale))
        kwargs = {"residual": identity.value, "residual_multiplier": d1.multiplier, "residual_shift": d1.shift}
    value = bb.emit(ops.requantize(x.value, d.multiplier, d.shift, bits=quant_act.activation_bit, **kwargs))
    return QTensor(value, out_scale)


def quant_linear(bb: relax.BlockBuilder, x: QTensor, linear) -> QTensor:
    """HF QuantLinear (8-bit per-channel weights, 32-bit bias) -> ibert.linear; scale S_w * S_in per channel.

    With an assumed input scale (HF semantics) the bias is quantized at S_w * S_assumed and the accumulator,
    which HF forms from the non-integer x / S_assumed, is regridded before the bias is added.
    """
    bias = None if linear.bias is None else _np(linear.bias)
    in_scale = x.scale if x.assumed is None else x.assumed
    q = quant.quantize_linear(_np(linear.weight), bias, float(in_scale))
    if x.assumed is None or float(x.assumed) == float(x.scale):
        return QTensor(bb.emit(ops.linear(x.value, q.weight, q.bias)), q.acc_scale)
    _check_regridded_accumulator(q, x)
    acc = bb.emit(ops.linear(x.value, q.weight))
    acc = regrid(bb, QTensor(acc, np.asarray(x.scale), np.asarray(in_scale))).value
    if q.bias is not None:
        acc = bb.emit(relax.op.add(acc, relax.const(q.bias, "int32")))
    return QTensor(acc, q.acc_scale)


def _check_regridded_accumulator(q: quant.QuantizedLinear, x: QTensor) -> None:
    """A QuantizationRangeError where the accumulator regridded to the assumed scale, plus the bias, can leave int32:
    the regrid saturates there and the int32 bias add wraps, where HF's float32 sum does neither (a fuzz found a
    layer output 318 times the embedding scale whose next value projection then matched HF on 0 % of its outputs)."""
    d = quant.requant_dyadic(x.scale, float(x.assumed))
    reach = as_pyint(accumulator_bound(q.weight, None)) * int(d.multiplier)  # Python ints: no int64 overflow
    worst = ref_rne_div_pow2(reach, int(d.shift)) + (0 if q.bias is None else as_pyint(np.abs(q.bias.astype(np.int64))))
    if worst.max() > ACC_LIMIT:
        n = int(np.argmax(worst))
        raise quant.QuantizationRangeError(
            f"'hf' semantics: a linear layer's accumulator, regridded from its input's scale {float(x.scale):.4g} to "
            f"the embedding scale {float(x.assumed):.4g} ({float(x.scale) / float(x.assumed):.4g} times), plus its "
            f"bias can reach {int(worst[n])} at output channel {n}, past int32 (2^31 - 1); semantics='ibert' has no "
            "regrid")


def int_layernorm(bb: relax.BlockBuilder, x: QTensor, layer_norm) -> QTensor:
    """HF IntLayerNorm -> ibert.int_layernorm with its calibrated `shift`; per-channel output scale.

    Force-dequantized (Q8BERT): a float LayerNorm with eps on the dequantized input.
    """
    if not layer_norm.quant_mode:
        out = relax.op.nn.layer_norm(dequantize(bb, x), relax.const(_np(layer_norm.weight)),
                                     relax.const(_np(layer_norm.bias)), axes=[-1], epsilon=float(layer_norm.eps))
        return QTensor(bb.emit(out), None)
    c = quant.layernorm_constants(_np(layer_norm.weight), _np(layer_norm.bias))
    shift = int(_np(layer_norm.shift).reshape(-1)[0])
    return QTensor(bb.emit(ops.int_layernorm(x.value, c.bias_int, shift)), c.out_scale)


def int_gelu(bb: relax.BlockBuilder, x: QTensor, gelu) -> QTensor:
    """HF IntGELU -> ibert.int_gelu; the output scale is negative per channel (spec §2.3 step 6).

    Force-dequantized (Q8BERT): exact (erf) GELU in float on the dequantized input.
    """
    if not gelu.quant_mode:
        return QTensor(bb.emit(relax.op.nn.gelu(dequantize(bb, x))), None)
    c = quant.gelu_constants(x.scale)
    return QTensor(bb.emit(ops.int_gelu(x.value, c.b_int, c.c_int, c.q1)), c.out_scale)


def int_softmax(bb: relax.BlockBuilder, scores: QTensor, softmax, mask: relax.Expr | None) -> QTensor:
    """HF IntSoftmax (with its calibrated QuantAct(16)) -> ibert.int_softmax; output scale 2^-8."""
    c = quant.softmax_constants(float(scores.scale), float(act_scale(softmax.act)))
    value = bb.emit(ops.int_softmax(scores.value, c.x0_int, c.b_int, c.c_int, c.exp_multiplier, c.exp_shift,
                                    mask=mask))
    return QTensor(value, np.asarray(F32(1.0 / 2**quant.SOFTMAX_OUT_BITS)))


def _heads(bb: relax.BlockBuilder, x: relax.Expr, num_heads: int) -> relax.Expr:
    """[B, L, H] -> [B, heads, L, H/heads]."""
    b, length, hidden = x.ty.shape.values
    split = bb.emit(relax.op.reshape(x, (b, length, num_heads, hidden // num_heads)))
    return bb.emit(relax.op.permute_dims(split, [0, 2, 1, 3]))


def _merge_heads(bb: relax.BlockBuilder, x: relax.Expr) -> relax.Expr:
    """[B, heads, L, D] -> [B, L, heads * D]."""
    b, heads, length, d = x.ty.shape.values
    merged = bb.emit(relax.op.permute_dims(x, [0, 2, 1, 3]))
    return bb.emit(relax.op.reshape(merged, (b, length, heads * d)))


def self_attention(bb: relax.BlockBuilder, x: QTensor, attn, mask: relax.Expr | None) -> QTensor:
    """IBertSelfAttention (spec §5.2 A1-A7): Q/K/V, integer scores, IntSoftmax, P.V, 8-bit context."""
    num_heads = attn.num_attention_heads
    q = requantize_act(bb, quant_linear(bb, x, attn.query), attn.query_activation)
    k = requantize_act(bb, quant_linear(bb, x, attn.key), attn.key_activation)
    v = requantize_act(bb, quant_linear(bb, x, attn.value), attn.value_activation)
    qh, kh, vh = (_heads(bb, t.value, num_heads) for t in (q, k, v))
    scores = QTensor(bb.emit(ops.matmul(qh, kh, transpose_b=True)),
                     score_scale(q.scale * k.scale, attn.attention_head_size))
    if not attn.softmax.quant_mode:
        context = float_attention(bb, scores, QTensor(vh, v.scale), mask)
        return requantize_act(bb, QTensor(_merge_heads(bb, context), None), attn.output_activation)
    probs = int_softmax(bb, scores, attn.softmax, mask)
    context = bb.emit(ops.matmul(probs.value, vh))
    context = QTensor(_merge_heads(bb, context), np.asarray(probs.scale * v.scale, dtype=F32))
    return requantize_act(bb, context, attn.output_activation)


def score_scale(qk_scale: np.ndarray, head_size: int) -> np.ndarray:
    """The attention scores' scale: HF folds 1/sqrt(d) into S_q * S_k in float32, S_q * S_k / sqrt(d)."""
    return np.asarray(qk_scale / F32(math.sqrt(head_size)), dtype=F32)


def float_softmax(bb: relax.BlockBuilder, scores: QTensor, mask: relax.Expr | None) -> relax.Expr:
    """Q8BERT's float Softmax (HF with force_dequant="softmax") of dequantized scores, additive finfo.min mask."""
    logits = dequantize(bb, scores)
    if mask is not None:
        blocked = relax.op.equal(mask, relax.const(0, mask.ty.dtype))
        bias = relax.op.where(blocked, relax.const(np.finfo(np.float32).min, "float32"), relax.const(0.0, "float32"))
        logits = bb.emit(relax.op.add(logits, bias))
    return bb.emit(relax.op.nn.softmax(logits, axis=-1))


def float_attention(bb: relax.BlockBuilder, scores: QTensor, values: QTensor, mask: relax.Expr | None) -> relax.Expr:
    """Q8BERT's float Softmax and P.V: `float_softmax`, then a float matmul with the dequantized values."""
    return bb.emit(relax.op.matmul(float_softmax(bb, scores, mask), dequantize(bb, values)))


def dense_residual_norm(bb: relax.BlockBuilder, x: QTensor, residual: QTensor, block) -> QTensor:
    """IBertSelfOutput / IBertOutput: dense, 22-bit add of the residual, IntLayerNorm, 8-bit output."""
    h = quant_linear(bb, x, block.dense)
    h = requantize_act(bb, h, block.ln_input_act, identity=residual)
    return requantize_act(bb, int_layernorm(bb, h, block.LayerNorm), block.output_activation)


def encoder_layer(bb: relax.BlockBuilder, x: QTensor, layer, mask: relax.Expr | None) -> QTensor:
    """One IBertLayer (spec §5.2 A1-F9): int8 hidden states in, int8 hidden states out."""
    attention = self_attention(bb, x, layer.attention.self, mask)
    attention = dense_residual_norm(bb, attention, x, layer.attention.output)
    h = requantize_act(bb, attention, layer.pre_intermediate_act)
    inter = int_gelu(bb, quant_linear(bb, h, layer.intermediate.dense), layer.intermediate.intermediate_act_fn)
    inter = requantize_act(bb, inter, layer.intermediate.output_activation)
    inter = requantize_act(bb, inter, layer.pre_output_act)
    return dense_residual_norm(bb, inter, h, layer.output)


def quant_embedding(bb: relax.BlockBuilder, ids: relax.Expr, emb) -> QTensor:
    """HF QuantEmbedding (8-bit, one per-tensor scale over the table) -> ibert.embedding."""
    table = _np(emb.weight)
    scale = quant.symmetric_scale(emb.weight_bit, table.min(), table.max())
    table_int = quant.quantize_symmetric(table, scale, emb.weight_bit).astype(np.int8)
    return QTensor(bb.emit(ops.embedding(ids, table_int)), scale)


def roberta_position_ids(bb: relax.BlockBuilder, ids: relax.Expr, pad: int) -> relax.Expr:
    """RoBERTa/IBert position ids: pad + cumsum(ids != pad) on real tokens, pad on padding (integer ops)."""
    real = bb.emit(relax.op.astype(relax.op.not_equal(ids, relax.const(pad, ids.ty.dtype)), "int32"))
    count = bb.emit(relax.op.cumsum(real, axis=1, dtype="int32"))
    return bb.emit(relax.op.add(relax.op.multiply(count, real), relax.const(pad, "int32")))


def embeddings(bb: relax.BlockBuilder, ids: relax.Expr, position_ids: relax.Expr, token_type_ids: relax.Expr,
               emb) -> QTensor:
    """IBertEmbeddings (spec §5.1 E1-E7): three int8 lookups merged at 16 bits, IntLayerNorm, int8 output.

    HF applies the *same* `embeddings_act1` twice (E3 and E5), so both merges share one 16-bit scale.
    """
    word = quant_embedding(bb, ids, emb.word_embeddings)
    token_type = quant_embedding(bb, token_type_ids, emb.token_type_embeddings)
    merged = requantize_act(bb, word, emb.embeddings_act1, identity=token_type)
    position = quant_embedding(bb, position_ids, emb.position_embeddings)
    merged = requantize_act(bb, merged, emb.embeddings_act1, identity=position)
    return requantize_act(bb, int_layernorm(bb, merged, emb.LayerNorm), emb.output_activation)
