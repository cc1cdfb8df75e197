"""Rewrite an imported float BERT / RoBERTa graph into `ibert.*` operators at I-BERT's quantization points.

The input is the `main` that `tvm.relax.frontend.torch` imports from `torch.export` of a HF encoder, with the
weights kept as named parameters (`float_reference.float_program(..., keep_params=True)`). Each float op is
recognised by what it computes and, through its parameters' names, by the HF module it belongs to; the
calibrated `IBertModel` twin supplies the activation ranges (its `QuantAct`s). Integer ops (position ids, the
mask's boolean logic) are kept as they are; every float op becomes the integer ops of the spec's §5 tables via
`ibert_tvm.layers`, or, in Q8BERT mode (HF's `force_dequant`), stays float between the int8 GEMMs. An op with
no integer form here is refused with an `UnsupportedModelError` that names it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import tvm
from torch import nn
from tvm import relax

from ibert_tvm import layers, ops, quant
from ibert_tvm.model import UnsupportedModelError

__all__ = ["PARAM_PREFIX", "RewriteToIBert", "emit_encoder", "rewrite_to_ibert"]

#: The importer names a parameter `p_` + its path in the exported module (`float_program` wraps the encoder
#: as `encoder`), dots as underscores, lower case.
PARAM_PREFIX = "p_encoder_"
_QKV = ("query", "key", "value")
_LAYOUT_OPS = ("relax.reshape", "relax.permute_dims", "relax.broadcast_to", "relax.expand_dims", "relax.squeeze")


@dataclass(frozen=True)
class _Param:
    """A weight or bias parameter of the float graph, its HF module and its value."""

    module_path: str
    module: nn.Module
    field: str
    transposed: bool = False


@dataclass(frozen=True)
class _Quant:
    """A quantized value; `stage` says what it is waiting for, `path` the HF module (block) that produced it.

    Stages: emb (an embedding lookup or sum), linear (x . W^T, bias pending), acc (a dense layer's int32
    accumulator), act (an activation quantized by a QuantAct), ln_input (22-bit residual sum), scores (Q.K^T),
    scaled (scores with 1/sqrt(d) in their scale, optionally masked), probs (Softmax output).
    """

    qt: layers.QTensor
    stage: str
    path: str
    mask: relax.Expr | None = None


@dataclass(frozen=True)
class _Lazy:
    """A float value computed from constants and integers only, emitted only if an integer op needs it."""

    expr: relax.Expr


@dataclass(frozen=True)
class _Mask:
    """The additive attention mask `where(keep, 0, -inf)`: its boolean `keep` feeds `ibert.int_softmax`."""

    keep: relax.Expr


#: The factors of the erf GELU written out, `x * 0.5 * (1 + erf(x / sqrt(2)))` (HF's "gelu_python"), in any order.
_GELU_FACTORS = frozenset({"x", "0.5", "1+erf"})


@dataclass(frozen=True)
class _ErfGelu:
    """A part of the written-out erf GELU of a feed-forward accumulator `x`: a product of some of `_GELU_FACTORS`,
    or a step towards `1 + erf`: `x / sqrt(2)` ("arg"), its "erf"; the whole product becomes `ibert.int_gelu`."""

    x: _Quant
    parts: frozenset[str]


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0]


def _scalar(value) -> float | None:
    """The value of a scalar float constant (bare or lazy), or of `full(shape, constant)`; None otherwise."""
    expr = value.expr if isinstance(value, _Lazy) else value
    if isinstance(expr, tvm.ir.GenericConst) and expr.value.numpy().size == 1:
        return float(expr.value.numpy().reshape(-1)[0])
    if isinstance(expr, relax.Call) and expr.op.name == "relax.full":
        return _scalar(expr.args[1])
    return None


def _is_float(expr: relax.Expr) -> bool:
    ty = expr.ty
    return isinstance(ty, relax.TensorType) and str(ty.dtype).startswith(("float", "bfloat"))


def _shape(expr: relax.Expr) -> list[int]:
    return [int(d) for d in expr.ty.shape.values]


class _Rewriter:
    """Walk the float dataflow in order, building the integer program with a BlockBuilder."""

    def __init__(self, ibert: nn.Module, semantics: str, params: dict[str, np.ndarray], bb: relax.BlockBuilder):
        self.ibert = ibert
        self.semantics = semantics
        self.params = params
        self.modules = {name.replace(".", "_").lower(): (name, m) for name, m in ibert.named_modules()}
        self.env: dict[relax.Var, object] = {}
        self.embedding_scale: np.ndarray | None = None
        self.bb = bb

    # -- values -----------------------------------------------------------------------------------------
    def param(self, var: relax.Var) -> _Param:
        """A weight parameter -> its HF module, checked to hold the very same values."""
        name = var.name
        stem, _, field = name[len(PARAM_PREFIX):].rpartition("_") if name.startswith(PARAM_PREFIX) else ("", "", "")
        if stem not in self.modules or field not in ("weight", "bias"):
            raise UnsupportedModelError(f"rewrite_to_ibert: graph parameter '{name}' has no counterpart in the "
                                        "calibrated I-BERT model")
        path, module = self.modules[stem]
        mine = getattr(module, field).detach().cpu().numpy()
        if mine.shape != self.params[name].shape or not np.array_equal(mine, self.params[name]):
            raise UnsupportedModelError(f"rewrite_to_ibert: graph parameter '{name}' differs from the calibrated "
                                        f"model's {path}.{field} (not the same weights)")
        return _Param(path, module, field)

    def arg(self, expr: relax.Expr):
        """The rewritten value of an argument (an env entry for a variable; constants and shapes as they are)."""
        return self.env[expr] if isinstance(expr, relax.Var) else expr

    def plain(self, expr: relax.Expr) -> relax.Expr:
        """An argument as an expression of the new program; it must not be a quantized value or a weight."""
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self.plain(f) for f in expr.fields])
        value = self.arg(expr)
        if isinstance(value, _Lazy):
            value = self.bb.emit(value.expr)
            self.env[expr] = value
        if not isinstance(value, relax.Expr):
            raise UnsupportedModelError(f"rewrite_to_ibert: '{expr}' ({type(value).__name__.strip('_')}) is used "
                                        "where an integer value is expected")
        return value

    @staticmethod
    def refuse(call: relax.Call, why: str = "") -> UnsupportedModelError:
        return UnsupportedModelError(f"rewrite_to_ibert: no integer form for '{call.op.name}'"
                                     f"{' (' + why + ')' if why else ''}; the model is outside the BERT / RoBERTa "
                                     "encoders this pass rewrites")

    # -- the walk ---------------------------------------------------------------------------------------
    def emit(self, func: relax.Function, inputs: list[relax.Expr]) -> layers.QTensor:
        """Emit `func`'s rewritten body into the builder's open dataflow block, its inputs bound to `inputs`."""
        num_input = int(func.attrs["num_input"])
        if len(inputs) != num_input:
            raise ValueError(f"rewrite_to_ibert: the graph takes {num_input} inputs, {len(inputs)} given")
        used = set(relax.analysis.free_vars(func.body))  # a classifier's pooler is a parameter the graph never reads
        for var in func.params[num_input:]:
            if var in used:
                self.env[var] = self.param(var)
        for var, value in zip(func.params[:num_input], inputs):
            if value.ty.dtype != var.ty.dtype or _shape(value) != _shape(var):
                raise ValueError(f"rewrite_to_ibert: input '{var.name}' of the graph is {var.ty}, bound to {value.ty}")
            self.env[var] = value
        for block in func.body.blocks:
            for binding in block.bindings:
                self.env[binding.var] = self.visit(binding.value)
        result = self.arg(func.body.body)
        if not isinstance(result, _Quant) or result.stage != "act":
            raise UnsupportedModelError("rewrite_to_ibert: the graph's output is not the encoder's quantized "
                                        "hidden states")
        return result.qt

    def visit(self, value: relax.Expr):
        if isinstance(value, relax.Var):
            return self.env[value]
        if isinstance(value, tvm.ir.GenericConst):
            return _Lazy(value) if _is_float(value) else value
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            raise UnsupportedModelError(f"rewrite_to_ibert: unexpected binding '{value}'")
        args = [self.arg(a) for a in value.args]
        if not any(isinstance(a, (_Quant, _Param, _Mask, _ErfGelu)) for a in args):
            return self.integer_op(value, args)
        name = value.op.name
        if name in _LAYOUT_OPS:
            return self.layout(value, args[0])
        handler = getattr(self, "on_" + name.rsplit(".", 1)[1], None)
        if handler is None:
            raise self.refuse(value)
        return handler(value, *args)

    def integer_op(self, call: relax.Call, args: list):
        """Ops on integers and constants only: copied; float results (the mask's 0 / -inf) stay lazy."""
        if call.op.name == "relax.where" and isinstance(args[0], relax.Expr) and not _is_float(args[0]):
            keep, drop = _scalar(args[1]), _scalar(args[2])
            if keep == 0.0 and drop is not None and drop <= -1e30:
                return _Mask(self.plain(call.args[0]))
        new = relax.Call(call.op, [self.plain(a) for a in call.args], call.attrs, call.ty_args)
        return _Lazy(new) if _is_float(call) else self.bb.emit(new)

    def layout(self, call: relax.Call, src):
        """Reshape / permute / broadcast of a quantized value (its scale must survive it), or W^T of a weight."""
        if isinstance(src, _Param):
            if call.op.name == "relax.permute_dims" and src.field == "weight" and not src.transposed:
                return dataclasses.replace(src, transposed=True)
            raise self.refuse(call, f"on parameter {src.module_path}.{src.field}")
        if not isinstance(src, _Quant):
            raise self.refuse(call, f"on a {type(src).__name__.strip('_')} value")
        if call.op.name == "relax.broadcast_to" and _shape(call) == _shape(src.qt.value):
            return src
        scale = src.qt.scale
        if scale is not None and np.size(scale) > 1:
            moved = call.op.name == "relax.permute_dims" and int(call.attrs.axes[-1]) != len(call.attrs.axes) - 1
            if moved or _shape(call)[-1] != _shape(src.qt.value)[-1]:
                raise self.refuse(call, "it would move a per-channel scale off the last axis")
        value = self.bb.emit(relax.Call(call.op, [src.qt.value, *call.args[1:]], call.attrs, call.ty_args))
        return dataclasses.replace(src, qt=dataclasses.replace(src.qt, value=value))

    # -- one handler per float op ------------------------------------------------------------------------
    def on_take(self, call: relax.Call, table, _ids):
        if not isinstance(table, _Param) or int(call.attrs.axis) != 0:
            raise self.refuse(call, "only embedding-table lookups")
        value = layers.quant_embedding(self.bb, self.plain(call.args[1]), table.module)
        return _Quant(value, "emb", _parent(table.module_path))

    def on_matmul(self, call: relax.Call, a, b):
        if isinstance(a, _Quant) and isinstance(b, _Param) and b.transposed:
            return _Quant(a.qt, "linear", b.module_path)
        if not (isinstance(a, _Quant) and isinstance(b, _Quant) and b.stage == "act" and a.path == b.path):
            raise self.refuse(call, "neither a linear layer nor an attention product")
        attention = self.ibert.get_submodule(b.path)
        if a.stage == "act":  # Q . K^T
            scale = np.asarray(a.qt.scale * b.qt.scale, dtype=layers.F32)
            return _Quant(layers.QTensor(self.bb.emit(ops.matmul(a.qt.value, b.qt.value)), scale), "scores", b.path)
        if a.stage != "probs":
            raise self.refuse(call, f"a product of a {a.stage} value and an activation")
        if a.qt.scale is None:  # Q8BERT: float probabilities . dequantized V
            context = layers.QTensor(self.bb.emit(relax.op.matmul(a.qt.value, layers.dequantize(self.bb, b.qt))), None)
        else:
            value = self.bb.emit(ops.matmul(a.qt.value, b.qt.value))
            context = layers.QTensor(value, np.asarray(a.qt.scale * b.qt.scale, dtype=layers.F32))
        return _Quant(layers.requantize_act(self.bb, context, attention.output_activation), "act", b.path)

    def on_add(self, call: relax.Call, a, b):
        if isinstance(b, _ErfGelu):
            a, b = b, a
        if isinstance(a, _ErfGelu) and a.parts == {"erf"} and _scalar(b) == 1.0:
            return _ErfGelu(a.x, frozenset({"1+erf"}))
        if isinstance(a, (_Param, _Mask)) or (isinstance(b, _Quant) and b.stage == "acc"):
            a, b = b, a
        if isinstance(a, _Quant) and a.stage == "linear" and isinstance(b, _Param) and b.field == "bias":
            return self.linear(a, b)
        if isinstance(a, _Quant) and a.stage == "scaled" and a.mask is None and isinstance(b, _Mask):
            return dataclasses.replace(a, mask=b.keep)
        if isinstance(a, _Quant) and isinstance(b, _Quant):
            if a.stage == "acc" and b.stage == "act":  # dense + residual -> the 22-bit LayerNorm input
                block = _parent(a.path)
                act = self.ibert.get_submodule(block).ln_input_act
                return _Quant(layers.requantize_act(self.bb, a.qt, act, identity=b.qt), "ln_input", block)
            if a.stage == b.stage == "emb" and a.path == b.path:  # word + token type, + position (16 bits)
                act = self.ibert.get_submodule(a.path).embeddings_act1
                x, identity = (self.broadcast(t.qt, call) for t in (a, b))
                return _Quant(layers.requantize_act(self.bb, x, act, identity=identity), "emb", a.path)
        raise self.refuse(call, "an addition outside the embeddings, biases, residuals and attention mask")

    def broadcast(self, qt: layers.QTensor, call: relax.Call) -> layers.QTensor:
        """`qt` broadcast to the shape of `call` (an integer broadcast before a requantization with residual)."""
        if _shape(qt.value) == _shape(call):
            return qt
        return dataclasses.replace(qt, value=self.bb.emit(relax.op.broadcast_to(qt.value, call.ty.shape)))

    def linear(self, x: _Quant, bias: _Param) -> _Quant:
        """`x . W^T + b` -> ibert.linear; Q/K/V are requantized at once, other accumulators wait for their use."""
        if bias.module_path != x.path:
            raise UnsupportedModelError(f"rewrite_to_ibert: bias {bias.module_path}.bias added to the product of "
                                        f"{x.path}")
        with quant.range_errors_of(x.path):
            acc = layers.quant_linear(self.bb, x.qt, bias.module)
        owner, _, name = x.path.rpartition(".")
        if name in _QKV:
            act = getattr(self.ibert.get_submodule(owner), f"{name}_activation")
            return _Quant(layers.requantize_act(self.bb, acc, act), "act", owner)
        return _Quant(acc, "acc", x.path)

    def on_multiply(self, call: relax.Call, scores, factor):
        if (gelu := self.erf_gelu_product(call, scores, factor)) is not None:
            return gelu
        if not (isinstance(scores, _Quant) and scores.stage == "scores" and _scalar(factor) is not None):
            raise self.refuse(call, "a product other than the attention scores' 1/sqrt(d)")
        head_size = self.ibert.get_submodule(scores.path).attention_head_size
        if not math.isclose(_scalar(factor), 1.0 / math.sqrt(head_size), rel_tol=1e-6):
            raise self.refuse(call, f"scores scaled by {_scalar(factor)}, not 1/sqrt({head_size})")
        return _Quant(layers.QTensor(scores.qt.value, layers.score_scale(scores.qt.scale, head_size)), "scaled",
                      scores.path)

    def on_divide(self, call: relax.Call, scores, divisor):
        if not _scalar(divisor):
            raise self.refuse(call, "a division other than the attention scores' by sqrt(d)")
        return self.on_multiply(call, scores, relax.const(1.0 / _scalar(divisor), "float32"))

    def on_softmax(self, call: relax.Call, scores):
        rank = len(_shape(call))
        if not (isinstance(scores, _Quant) and scores.stage == "scaled") or int(call.attrs.axis) not in (-1, rank - 1):
            raise self.refuse(call, "a softmax other than the attention's over the keys")
        softmax = self.ibert.get_submodule(scores.path).softmax
        mask = None if scores.mask is None else self.bb.emit(relax.op.astype(scores.mask, "int32"))
        if softmax.quant_mode:
            with quant.range_errors_of(scores.path):
                return _Quant(layers.int_softmax(self.bb, scores.qt, softmax, mask), "probs", scores.path)
        return _Quant(layers.QTensor(layers.float_softmax(self.bb, scores.qt, mask), None), "probs", scores.path)

    def on_layer_norm(self, call: relax.Call, x, gamma, beta):
        if not (isinstance(x, _Quant) and isinstance(gamma, _Param) and isinstance(beta, _Param)
                and gamma.module is beta.module):
            raise self.refuse(call, "a LayerNorm without its own weight and bias")
        block_path = _parent(gamma.module_path)
        block = self.ibert.get_submodule(block_path)
        expected = "emb" if block_path == "embeddings" else "ln_input"
        if x.stage != expected or x.path != block_path or gamma.module is not getattr(block, "LayerNorm", None):
            raise self.refuse(call, f"a LayerNorm of {block_path} on a {x.stage} value of {x.path}")
        h = layers.requantize_act(self.bb, layers.int_layernorm(self.bb, x.qt, gamma.module), block.output_activation)
        if block_path.endswith("attention.output"):  # the feed-forward block's input act (HF IBertLayer)
            layer = self.ibert.get_submodule(_parent(_parent(block_path)))
            return _Quant(layers.requantize_act(self.bb, h, layer.pre_intermediate_act), "act", block_path)
        if self.embedding_scale is None:
            self.embedding_scale = h.scale
        if self.semantics == "hf":  # every layer believes its input has the embedding scale (spec §5.3)
            h = layers.QTensor(h.value, h.scale, self.embedding_scale)
        return _Quant(h, "act", block_path)

    def erf_gelu_product(self, call: relax.Call, a, b) -> _Quant | _ErfGelu | None:
        """A product within the written-out erf GELU (`_ErfGelu`; the whole GELU once every factor is in, emitted
        as `on_gelu` emits `relax.nn.gelu`), or None for any other product."""
        if _scalar(a) is not None:
            a, b = b, a
        if _is_ffn_acc(a) and _scalar(b) is not None and math.isclose(_scalar(b), 1 / math.sqrt(2), rel_tol=1e-6):
            return _ErfGelu(a, frozenset({"arg"}))  # x / sqrt(2), which on_divide passes on as x * (1 / sqrt(2))
        factors = [_gelu_factors(v) for v in (a, b)]
        if None in factors:
            return None
        (x, mine), (y, theirs) = factors
        if (x is not None and y is not None and x is not y) or mine & theirs:
            raise self.refuse(call, "a product in a GELU of something other than x * 0.5 * (1 + erf(x / sqrt(2)))")
        x = x if x is not None else y
        if mine | theirs == _GELU_FACTORS:
            return self.on_gelu(call, x)
        return _ErfGelu(x, mine | theirs)

    def on_erf(self, call: relax.Call, x):
        if not (isinstance(x, _ErfGelu) and x.parts == {"arg"}):
            raise self.refuse(call, "an erf outside the GELU x * 0.5 * (1 + erf(x / sqrt(2)))")
        return _ErfGelu(x.x, frozenset({"erf"}))

    def on_gelu(self, call: relax.Call, x):
        if not _is_ffn_acc(x):
            raise self.refuse(call, "a GELU outside the feed-forward block")
        intermediate = self.ibert.get_submodule(_parent(x.path))
        layer = self.ibert.get_submodule(_parent(_parent(x.path)))
        with quant.range_errors_of(_parent(x.path)):
            h = layers.int_gelu(self.bb, x.qt, intermediate.intermediate_act_fn)
        h = layers.requantize_act(self.bb, h, intermediate.output_activation)
        return _Quant(layers.requantize_act(self.bb, h, layer.pre_output_act), "act", x.path)


def _is_ffn_acc(value) -> bool:
    """Whether `value` is the feed-forward block's first dense accumulator, the GELU's input."""
    return isinstance(value, _Quant) and value.stage == "acc" and value.path.endswith("intermediate.dense")


def _gelu_factors(value) -> tuple[_Quant | None, frozenset[str]] | None:
    """Which of `_GELU_FACTORS` `value` is a product of, and of which accumulator (None: the constant 0.5 alone);
    None where it is none of them."""
    if _is_ffn_acc(value):
        return value, frozenset({"x"})
    if isinstance(value, _ErfGelu) and value.parts <= _GELU_FACTORS:
        return value.x, value.parts
    if _scalar(value) == 0.5:
        return None, frozenset({"0.5"})
    return None


def _params(func: relax.Function) -> dict[str, np.ndarray]:
    num_input = int(func.attrs["num_input"])
    return {v.name: t.numpy() for v, t in zip(func.params[num_input:], func.attrs["params"])}


def emit_encoder(bb: relax.BlockBuilder, mod: tvm.IRModule, ibert: nn.Module, semantics: str,
                 inputs: list[relax.Expr]) -> layers.QTensor:
    """Rewrite `mod["main"]` into `bb`'s open dataflow block with `inputs` (ids, mask, token types) as its
    inputs: the int8 hidden states and their scale, for a caller that goes on (a classification head)."""
    return _Rewriter(ibert, semantics, _params(mod["main"]), bb).emit(mod["main"], inputs)


def rewrite_to_ibert(mod: tvm.IRModule, ibert: nn.Module, semantics: str = "ibert") -> tvm.IRModule:
    """`mod["main"]` (float, weights as parameters) -> an integer-only `main` of the same inputs (input_ids,
    attention_mask, token_type_ids for `float_program`'s graphs)."""
    func = mod["main"]
    bb = relax.BlockBuilder()
    inputs = [relax.Var(v.name, v.ty) for v in func.params[:int(func.attrs["num_input"])]]
    with bb.function("main", inputs):
        with bb.dataflow():
            out = bb.emit_output(emit_encoder(bb, mod, ibert, semantics, inputs).value)
        bb.emit_func_output(out)
    return bb.get()


@tvm.transform.module_pass(opt_level=0, name="IBertRewriteToIBert")
class RewriteToIBert:
    """The module pass form of `rewrite_to_ibert`, for pipelines."""

    def __init__(self, ibert: nn.Module, semantics: str = "ibert") -> None:
        self.ibert = ibert
        self.semantics = semantics

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_to_ibert(mod, self.ibert, self.semantics)
