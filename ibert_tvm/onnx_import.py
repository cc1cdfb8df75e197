"""BERT / RoBERTa encoders from ONNX files: the HF model rebuilt from the graph, or the float graph in Relax.

`model_from_onnx` reads an export of a HF `BertModel` / `RobertaModel` (``torch.onnx.export(...,
dynamo=True)``, or the TorchScript exporter's ``dynamo=False`` at opset 17 or later; last hidden state as
output) and rebuilds the HF model with the file's weights, ready for
`ibert_tvm.model.from_pretrained`. It works from the graph's structure, not from initializer names, because
the exporter's default optimizer (``optimize=True``) keeps only some names: embedding tables, LayerNorm
parameters and biases keep their PyTorch names, but every projection weight is constant-folded into its
transpose under a generated name (``val_56``, shape [in, out]); a static-shape export folds BERT's position
embedding lookup into a [1, L, H] constant (named ``embedding_2``); and identical tensors (the zero biases
and unit LayerNorm weights of a freshly initialized model) are merged into one initializer under one of
their names. Float32, float16 and bfloat16 files are read, the weights upcast to float32 exactly;
the TorchScript exporter writes a float16 BERT with SDPA attention (transformers' default) in float32 after the
first layer's attention (Casts on its residual and scores, the later weights float32). What is read, and from
where:

- vocabulary and hidden size: the [vocab, hidden] table gathered by the integer token-id input;
- token-type and position tables: the two terms HF adds to the word embedding, in HF's order (token types
  first); RoBERTa vs BERT: RoBERTa's position ids are computed from the token ids by the padding-offset
  cumulative sum (a CumSum in the position lookup's index), BERT's come from its position-id buffer; the
  padding id from the ``Equal(input_ids, pad)`` of that computation (BERT's is not in the graph: 0 is used);
- layers: each LayerNorm output that feeds three projections opens a layer; query / key / value are told
  apart by where they meet (query and key: left and right operand of the score MatMul; value: right operand of
  the MatMul after the Softmax); then the attention output projection, residual and LayerNorm, the
  intermediate projection, activation, output projection, residual and LayerNorm;
- heads: the head size is the last entry of the shape the query is reshaped to ([B, L, heads or -1,
  head_size]), heads = hidden / head size;
- activation: the nodes between intermediate and output projection must be ONNX ``Gelu`` (exact) or its Erf
  form (opset < 20; run in float64 on [-6, 6] against x * Phi(x), within a tolerance set by the rounding of
  its constants' float type, so a float16 or bfloat16 export's passes: see `_Reader.erf_gelu_error`); anything
  else (Relu, a Tanh approximation, ...) is refused with its ops named;
- layer_norm_eps: the LayerNormalization epsilon (a float32 in the file, read back as the shortest decimal).
- attention mask: each layer's Softmax input, run with onnx's reference evaluator on the scores 0 and every
  token real, must be 0: a mask of the graph's own (a decoder's causal mask, whether a constant lower triangle
  in a static-shape export or computed from positions) would be dropped by the rebuilt encoder, so it is refused;
  with one token padded it must be large negative (<= -5e3) exactly at that key, for every head and query of its
  row, and 0 elsewhere: HF's key masking, which the rebuilt encoder applies (a graph that masks the padded
  query instead, or masks otherwise, is refused).

Every float initializer with more than one element must end up in the model (else the file holds something
this reader does not understand: a pooler, a task head, relative position tables, ...), every model weight must
be found, and every shape must match.

`import_onnx_float` is TVM's own import of the float graph (`relax.frontend.onnx.from_onnx`).
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from pathlib import Path

import numpy as np
import onnx
import tvm
from onnx import numpy_helper
from transformers import BertConfig, BertModel, PreTrainedModel, RobertaConfig, RobertaModel

from .model import UnsupportedModelError

__all__ = ["OnnxImportError", "import_onnx_float", "model_from_onnx"]


class OnnxImportError(UnsupportedModelError):
    """The ONNX file is not an encoder export this reader understands; the message names the problem."""


# Ops the dynamo exporter emits for BertModel / RobertaModel (optimized or not, static or dynamic shapes,
# eager or SDPA attention, opset 17 Erf-GELU or opset 20 Gelu), and the TorchScript exporter at opset 17 (its
# Flatten is on the attention mask's path, which check_attention_masks runs).
_KNOWN_OPS = frozenset("""
    Add And Cast CastLike Concat Constant ConstantOfShape CumSum Div Equal Erf Expand Flatten Gather
    GatherElements GatherND Gelu Greater GreaterOrEqual Identity IsNaN LayerNormalization Less LessOrEqual MatMul
    Max Min Mul Neg Not Or Range Reshape Shape Slice Softmax Sqrt Squeeze Sub Transpose Unsqueeze Where
""".split())
_ERF_GELU_OPS = frozenset({"Div", "Mul", "Add", "Erf", "Sqrt", "Cast", "CastLike", "Constant", "Reciprocal"})
_PASS_THROUGH = frozenset({"Reshape", "Transpose", "Cast", "Squeeze", "Unsqueeze", "Expand"})
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
_EPS = {onnx.TensorProto.DOUBLE: 2.0**-52, onnx.TensorProto.FLOAT: 2.0**-23, onnx.TensorProto.FLOAT16: 2.0**-10,
        onnx.TensorProto.BFLOAT16: 2.0**-7}  # machine epsilon (1 to the next float up)


def _to_array(tensor: onnx.TensorProto) -> np.ndarray:
    """A tensor's values; bfloat16 (an `ml_dtypes` array to onnx, not a numpy float) upcast to float32, exactly."""
    value = numpy_helper.to_array(tensor)
    return value.astype(np.float32) if tensor.data_type == onnx.TensorProto.BFLOAT16 else value


def _first_line(e: Exception) -> str:
    """An exception's message, first line only (the reference evaluator's run to several), for a one-line error."""
    return str(e).splitlines()[0] if str(e).strip() else repr(e)


_erf = np.vectorize(math.erf, otypes=[np.float64])


#: the largest value a masked key's entry of the Softmax input may have (HF writes its dtype's lowest finite value;
#: torch's TorchScript exporter -inf; BERT's original code -10000, which bfloat16 rounds to -9984)
_MASKED = -5e3


def _key_mask_problem(bias: np.ndarray, shape: tuple[int, int, int, int]) -> str | None:
    """How a Softmax input of `shape` [B, heads, L, L], with the scores 0 and key L-1 of row 0 padded, differs from
    HF's padding mask (<= _MASKED at that key for every head and query of row 0, 0 elsewhere), or None."""
    if bias.shape != shape:
        return f"the Softmax input has shape {list(bias.shape)}, not [batch, heads, L, L] = {list(shape)}"
    want = np.zeros(shape, bool)
    want[0, :, :, -1] = True
    masked = bias <= _MASKED
    if np.array_equal(masked, want) and not bias[~want].any():
        return None
    if np.array_equal(masked, np.swapaxes(want, -1, -2)):
        return (f"it masks query {shape[-1] - 1} of row 0 from every key (a [B, 1, L, 1] mask) instead of key "
                f"{shape[-1] - 1} from every query")
    return (f"{int((masked & want).sum())} of the {int(want.sum())} entries at the padded key are <= {_MASKED:g} (the "
            f"largest {float(bias[want].max()):.3g}), and {int((bias[~want] != 0).sum())} other entries are nonzero")


def _reference_evaluator(model: onnx.ModelProto):
    """onnx's reference evaluator, with an exact GatherElements: onnx's uses np.choose, which takes at most 64
    choices (the legacy exporter gathers BERT's token-type buffer, 512 wide in BERT-base, on the mask's path);
    and an Erf in float64 (onnx's rounds to float32 whatever the input type)."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    class GatherElements(OpRun):
        op_domain = ""

        def _run(self, data, indices, axis=0):
            data = data[tuple(slice(None) if d == axis % data.ndim else slice(n) for d, n in enumerate(indices.shape))]
            return (np.take_along_axis(data, np.where(indices < 0, indices + data.shape[axis], indices), axis),)

    class Erf(OpRun):
        op_domain = ""

        def _run(self, x):
            return (_erf(x).astype(x.dtype),)

    return ReferenceEvaluator(model, new_ops=[GatherElements, Erf])


def _load(path: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(path, onnx.ModelProto):
        return path
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file")
    try:
        return onnx.load(str(path))  # external weights (`model.onnx.data`) are read from the same folder
    except Exception as e:  # noqa: BLE001 (protobuf raises several types)
        raise OnnxImportError(f"{path} is not a readable ONNX model: {e}") from e


class _Graph:
    """An ONNX graph with producer / consumer maps (Identity nodes removed) and constant evaluation."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.model = model
        self.init = {t.name: t for t in g.initializer}
        self.inputs = {i.name: i for i in g.input if i.name not in self.init}
        self.alias: dict[str, str] = {}
        for n in g.node:
            if n.op_type == "Identity":
                self.alias[n.output[0]] = self.canon(n.input[0])
        self.nodes = [n for n in g.node if n.op_type != "Identity"]
        self.producer = {self.canon(o): n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in dict.fromkeys(self.canon(x) for x in n.input if x):
                self.consumers.setdefault(i, []).append(n)
        self.outputs = [self.canon(o.name) for o in g.output]
        self.used: set[str] = set()  # initializers loaded into the model
        self._arrays: dict[str, np.ndarray] = {}
        self._consts: dict[str, tuple[np.ndarray | None, frozenset[str]]] = {}

    def canon(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def ins(self, node: onnx.NodeProto) -> list[str]:
        return [self.canon(x) for x in node.input]

    def out(self, node: onnx.NodeProto) -> str:
        return self.canon(node.output[0])

    def uncast(self, name: str) -> str:
        """`name` before the Casts to a float type that compute it."""
        while ((node := self.producer.get(name)) is not None and node.op_type == "Cast"
               and next(a.i for a in node.attribute if a.name == "to") in _FLOAT_TYPES):
            name = self.canon(node.input[0])
        return name

    def value_users(self, name: str) -> list[onnx.NodeProto]:
        """Consumers that read the values of `name` (not Shape, nor CastLike taking only its type)."""
        return [n for n in self.consumers.get(name, []) if n.op_type != "Shape"
                and not (n.op_type == "CastLike" and self.canon(n.input[0]) != name)]

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = _to_array(self.init[name])
        return self._arrays[name]

    def const(self, name: str, _sources: set[str] | None = None) -> np.ndarray | None:
        """The value of `name` if it is computed from constants only (a small evaluator), else None.

        `_sources` collects the initializers it is computed from. Memoized: without, asking about a computed
        value walks all its ancestors on every path to them (seconds per layer in a legacy export's shape logic).
        """
        name = self.canon(name)
        if name not in self._consts:
            sources: set[str] = set()
            value = self._fold(name, sources)
            self._consts[name] = value, frozenset(sources)
        value, sources = self._consts[name]
        if _sources is not None and value is not None:
            _sources |= sources
        return value

    def _fold(self, name: str, sources: set[str]) -> np.ndarray | None:
        """`const`'s evaluation of `name`, uncached."""
        if name in self.init:
            sources.add(name)
            return self.array(name)
        node = self.producer.get(name)
        if node is None:
            return None
        op = node.op_type
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if op == "Constant":
            if "value" in attrs:
                return _to_array(attrs["value"])
            for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                               ("value_ints", np.int64)):
                if key in attrs:
                    return np.asarray(attrs[key], dtype)
            return None
        if op == "CastLike":  # only the first operand's values matter; the second may be computed
            value, like = self.const(node.input[0], sources), self.const(node.input[1])
            if value is None:
                return None
            return value.astype(like.dtype if like is not None else np.float32)
        args = [self.const(x, sources) if x else None for x in node.input]
        if any(a is None for a, x in zip(args, node.input) if x):
            return None
        try:
            if op == "Transpose":
                return np.transpose(args[0], attrs.get("perm"))
            if op == "Cast":  # to bfloat16: rounded there, held as float32 (as initializers are)
                out = args[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))
                return out.astype(np.float32) if attrs["to"] == onnx.TensorProto.BFLOAT16 else out
            if op == "Sqrt":
                return np.sqrt(args[0])
            if op == "Reciprocal":
                return 1 / args[0]
            if op == "Neg":
                return -args[0]
            if op in ("Add", "Sub", "Mul", "Div"):
                f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op]
                return f(args[0], args[1]).astype(args[0].dtype)
            if op == "Concat":
                return np.concatenate(args, axis=attrs["axis"])
            if op == "Unsqueeze":
                out = args[0]
                for ax in sorted(int(a) % (out.ndim + len(args[1])) for a in args[1]):
                    out = np.expand_dims(out, ax)
                return out
            if op == "Squeeze":
                return np.squeeze(args[0], tuple(int(a) for a in args[1]) if len(args) > 1 else None)
            if op == "Reshape":
                shape = [d if d != 0 or attrs.get("allowzero", 0) else args[0].shape[i]
                         for i, d in enumerate(args[1].tolist())]
                return args[0].reshape(shape)
        except Exception:  # noqa: BLE001 (malformed constants: not constant for our purposes)
            return None
        return None

    def param(self, name: str, what: str) -> np.ndarray:
        """A weight computed from initializers; records them as used."""
        sources: set[str] = set()
        value = self.const(name, sources)
        if value is None or not sources:
            raise OnnxImportError(f"{what}: '{name}' is not a constant weight")
        self.used |= sources
        return np.asarray(value, np.float32)

    def depends_on(self, name: str, pred, limit: int = 400) -> list[onnx.NodeProto]:
        """Nodes among the ancestors of `name` satisfying `pred` (breadth-first, bounded)."""
        seen, found, todo = set(), [], deque([self.canon(name)])
        while todo and len(seen) < limit:
            x = todo.popleft()
            if x in seen:
                continue
            seen.add(x)
            node = self.producer.get(x)
            if node is None:
                continue
            if pred(node):
                found.append(node)
            todo.extend(self.ins(node))
        return found

    def stored_type(self, name: str) -> int | None:
        """The element type (onnx.TensorProto) an initializer or a Constant node's output is stored in."""
        if name in self.init:
            return self.init[name].data_type
        node = self.producer.get(name)
        if node is None or node.op_type != "Constant" or not node.attribute:
            return None
        attr = node.attribute[0]
        if attr.name == "value":
            return attr.t.data_type
        return onnx.TensorProto.FLOAT if attr.name in ("value_float", "value_floats") else None

    def ancestors(self, outputs: list[str], feeds) -> tuple[list[onnx.NodeProto], list[str]]:
        """The nodes computing `outputs` from `feeds` and constants (in the graph's order), and those constants
        (initializers and Constant nodes' outputs)."""
        nodes, consts, todo, seen = {}, [], deque(self.canon(o) for o in outputs), set()
        while todo:
            x = todo.popleft()
            if not x or x in seen or x in feeds:
                continue
            seen.add(x)
            node = self.producer.get(x)
            if x in self.init or (node is not None and node.op_type == "Constant"):
                consts.append(x)
            elif node is not None:
                nodes[id(node)] = node
                todo.extend(self.ins(node))
            else:
                raise ValueError(f"'{x}' is a graph input that was not given")
        return [n for n in self.nodes if id(n) in nodes], consts  # the graph's (topological) order

    def evaluate(self, outputs: list[str], feeds: dict[str, np.ndarray], upcast: bool = False) -> list[np.ndarray]:
        """Run the nodes computing `outputs` from `feeds` and constants with onnx's reference evaluator.

        Only the ancestors of `outputs` are run, down to `feeds`, initializers and Constant nodes. bfloat16 is
        computed in float32, as the weights are read (casts to bfloat16 become casts to float32). With `upcast`,
        every float is float64: float constants are upcast (exactly) and casts to a float type cast to float64.
        """
        order, names = self.ancestors(outputs, feeds)
        consts = {x: np.asarray(self.const(x)) for x in names}
        if upcast:
            consts = {x: v.astype(np.float64) if v.dtype.kind == "f" else v for x, v in consts.items()}
        clones = []
        for n in order:
            clone = onnx.NodeProto()
            clone.CopyFrom(n)
            del clone.input[:], clone.output[:]
            clone.input.extend(self.ins(n))
            clone.output.extend(self.canon(o) for o in n.output)
            for a in clone.attribute:
                if n.op_type == "Cast" and a.name == "to" and upcast and a.i in _FLOAT_TYPES:
                    a.i = onnx.TensorProto.DOUBLE
                elif n.op_type == "Cast" and a.name == "to" and a.i == onnx.TensorProto.BFLOAT16:
                    a.i = onnx.TensorProto.FLOAT
            clones.append(clone)
        graph = onnx.helper.make_graph(
            clones, "part", [onnx.helper.make_tensor_value_info(
                k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in feeds.items()],
            [onnx.ValueInfoProto(name=self.canon(o)) for o in outputs],
            [numpy_helper.from_array(v, name=k) for k, v in consts.items()])
        model = onnx.helper.make_model(graph, opset_imports=self.default_opset())
        return _reference_evaluator(model).run(None, feeds)

    def default_opset(self) -> list[onnx.OperatorSetIdProto]:
        """The file's opset import of the default (ai.onnx) domain, the one its standard ops follow: one, or none."""
        return [o for o in self.model.opset_import if o.domain in ("", "ai.onnx")]

    def unsupported_ops(self) -> list[str]:
        return sorted({f"{n.domain + '.' if n.domain not in ('', 'ai.onnx') else ''}{n.op_type}" for n in self.nodes
                       if n.op_type not in _KNOWN_OPS or n.domain not in ("", "ai.onnx")})


class _Reader:
    """Walks an encoder graph from the token embedding to the last LayerNorm, collecting weights."""

    def __init__(self, model: onnx.ModelProto):
        self.g = _Graph(model)
        self.state: dict[str, np.ndarray] = {}
        self.warnings: list[str] = []

    # -- errors -------------------------------------------------------------------------------------------

    def fail(self, message: str):
        extra = self.g.unsupported_ops()
        if extra:
            message += f" (the graph contains ops this reader does not support: {', '.join(extra)})"
        raise OnnxImportError(message)

    # -- building blocks ----------------------------------------------------------------------------------

    def only_consumer(self, name: str, what: str) -> onnx.NodeProto:
        users = self.g.value_users(name)
        if len(users) != 1:
            ops = ", ".join(n.op_type for n in users) or "nothing"
            self.fail(f"{what}: expected one consumer of '{name}', found {ops}")
        return users[0]

    def linear_weight(self, node: onnx.NodeProto) -> str | None:
        """If `node` is MatMul(x, constant 2-D weight^T), the weight's tensor name."""
        if node.op_type != "MatMul":
            return None
        w = self.g.const(node.input[1])
        return self.g.canon(node.input[1]) if w is not None and w.ndim == 2 and w.dtype.kind == "f" else None

    def linear(self, node: onnx.NodeProto, prefix: str) -> str:
        """Read `MatMul(x, W^T) + b` at `node` into `prefix.weight` / `prefix.bias`; returns the output."""
        w_name = self.linear_weight(node)
        if w_name is None:
            self.fail(f"{prefix}: expected a MatMul by a constant weight, found {node.op_type} '{node.name}'")
        weight = self.g.param(w_name, f"{prefix}.weight").T
        add = self.only_consumer(self.g.out(node), f"{prefix} (bias)")
        if add.op_type != "Add":
            self.fail(f"{prefix}: expected a bias Add after the MatMul, found {add.op_type} '{add.name}'")
        a, b = self.g.ins(add)
        other = b if a == self.g.out(node) else a
        bias = self.g.param(other, f"{prefix}.bias")
        if bias.shape != (weight.shape[0],):
            self.fail(f"{prefix}: bias shape {bias.shape} does not match the weight's {weight.shape}")
        self.state[f"{prefix}.weight"], self.state[f"{prefix}.bias"] = weight, bias
        return self.g.out(add)

    def layer_norm(self, node: onnx.NodeProto, prefix: str, hidden: int) -> str:
        if node.op_type != "LayerNormalization":
            self.fail(f"{prefix}: expected a LayerNormalization, found {node.op_type} '{node.name}'")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("axis", -1) not in (-1, 2):
            self.fail(f"{prefix}: LayerNormalization over axis {attrs['axis']}, expected the last")
        ins = self.g.ins(node)
        if len(ins) < 3 or not ins[2]:
            self.fail(f"{prefix}: LayerNormalization without a bias")
        self.state[f"{prefix}.weight"] = self.g.param(ins[1], f"{prefix}.weight")
        self.state[f"{prefix}.bias"] = self.g.param(ins[2], f"{prefix}.bias")
        for k in ("weight", "bias"):
            if self.state[f"{prefix}.{k}"].shape != (hidden,):
                self.fail(f"{prefix}.{k} has shape {self.state[f'{prefix}.{k}'].shape}, expected ({hidden},)")
        self.eps.add(float(np.float32(attrs.get("epsilon", 1e-5))))
        return self.g.out(node)

    def residual_norm(self, x: str, residual: str, prefix: str, hidden: int) -> str:
        """`LayerNorm(x + residual)`; returns the LayerNorm output."""
        add = self.only_consumer(x, f"{prefix} (residual)")
        if add.op_type != "Add" or residual not in [self.g.uncast(i) for i in self.g.ins(add)]:
            self.fail(f"{prefix}: expected the residual Add with '{residual}', found {add.op_type} '{add.name}'")
        return self.layer_norm(self.only_consumer(self.g.out(add), prefix), prefix, hidden)

    def follow(self, name: str) -> tuple[onnx.NodeProto, int, list[onnx.NodeProto]]:
        """From a projection's output through reshapes / transposes / constant scalings to the next MatMul.

        Returns that MatMul, the operand slot reached, and the nodes passed.
        """
        passed = []
        for _ in range(32):
            node = self.only_consumer(name, "attention")
            ins = self.g.ins(node)
            if node.op_type == "MatMul":
                return node, ins.index(name), passed
            if node.op_type in ("Mul", "Div") and len(ins) == 2:
                other = ins[1] if ins[0] == name else ins[0]
                c = self.g.const(other)
                if c is None or c.size != 1:
                    break
            elif node.op_type not in _PASS_THROUGH or ins[0] != name:
                break
            passed.append(node)
            name = self.g.out(node)
        self.fail(f"attention: projection output does not reach a MatMul through reshapes / transposes / "
                  f"scalings (stopped at {node.op_type} '{node.name}')")

    def head_size(self, passed: list[onnx.NodeProto]) -> int:
        """The last entry of the first reshape's target shape: [B, L, heads or -1, head_size]."""
        reshape = next((n for n in passed if n.op_type == "Reshape"), None)
        if reshape is None:
            self.fail("attention: the query is not reshaped into heads")
        shape_name = self.g.ins(reshape)[1]
        shape = self.g.const(shape_name)
        if shape is not None:
            entries = [int(v) for v in np.asarray(shape).reshape(-1)]
        else:  # dynamic shapes: Concat(batch, seq, [-1], [head_size]) with the first two computed
            prod = self.g.producer.get(shape_name)
            entries = []
            for part in (self.g.ins(prod) if prod is not None and prod.op_type == "Concat" else [None]):
                value = self.g.const(part) if part else None
                entries += [None] if value is None else [int(v) for v in np.asarray(value).reshape(-1)]
        if len(entries) != 4 or entries[-1] is None or entries[-1] <= 0:
            self.fail(f"attention: cannot read the head size from the query's reshape '{reshape.name}' "
                      f"(target shape {entries})")
        return entries[-1]

    def activation(self, start: str, stop: str, layer: int) -> None:
        """The nodes between the intermediate projection's output `start` and `stop` must be an exact GELU."""
        region, todo, seen = [], deque([stop]), set()
        while todo:
            x = todo.popleft()
            if x == start or x in seen:
                continue
            seen.add(x)
            node = self.g.producer.get(x)
            if node is None:
                self.fail(f"layer {layer}: the feed-forward activation does not come from the intermediate "
                          "projection")
            region.append(node)
            todo.extend(i for i in self.g.ins(node) if self.g.const(i) is None)
        ops = sorted({n.op_type for n in region})
        where = f"layer {layer}'s feed-forward activation"
        hint = "I-BERT has an integer GELU only (ONNX Gelu or its Erf form)"
        if ops == ["Gelu"]:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in region[0].attribute}
            approx = attrs.get("approximate", b"none")
            approx = approx.decode() if isinstance(approx, bytes) else approx
            if approx != "none":
                raise OnnxImportError(f"{where} is Gelu(approximate='{approx}'), not supported: {hint}")
            return
        if "Erf" in ops and set(ops) <= _ERF_GELU_OPS:
            err, tol = self.erf_gelu_error(start, stop)
            if not err <= tol:
                raise OnnxImportError(f"{where} is an Erf expression ({'+'.join(ops)}) that is not GELU (max "
                                      f"deviation {err:.3g} on [-6, 6], tolerance {tol:.3g}): {hint}")
            return
        if not region:
            raise OnnxImportError(f"{where} is missing (the projections are joined directly): {hint}")
        raise OnnxImportError(f"{where} is {'+'.join(ops)}, not supported: {hint}")

    def erf_gelu_error(self, start: str, stop: str) -> tuple[float, float]:
        """Max |f(x) - x * Phi(x)| on [-6, 6] for the subgraph f computing `stop` from `start`, and the tolerance
        for it: the largest deviation allowed a GELU written with constants of the subgraph's float types.

        The check identifies the function: the integer GELU that replaces it has I-BERT's own constants, so how
        the export rounded its constants does not matter for the result. f is run in float64 with its constants
        as stored (upcast exactly; casts to a float type cast to float64, Erf exact): the arithmetic adds about
        1e-15, and a GELU deviates by its constants' rounding alone. In GELU's Erf form x * 0.5 * (1 + erf(k x)),
        0.5 and 1 are exact in every float type; the scale k = 1/sqrt(2) (or sqrt(2) divided by) is stored as
        k (1 + d), |d| <= u = eps / 2 of its type, which moves f by x/2 |erf(t (1 + d)) - erf(t)| (t = k x) <=
        sqrt(2/pi) t^2 exp(-t^2) |d| (1 + O(d t^2)) <= sqrt(2/pi) / e u = 0.294 u (0.295 u at bfloat16's u,
        measured). The tolerance is eps / 4 = u / 2 for the coarsest float type among the constants, 1.7 times
        that bound (float16: 2.4e-4, bfloat16: 2e-3), and at least 1e-5 (float32's and float64's, as before: a
        hand-typed 1.41421 passes). Erf expressions that are not GELU are far off in every type: a scale of 0.6
        for 1/sqrt(2) deviates by 0.05, a missing + 1 by 3, x * erf(x) or a missing 0.5 by 6 (tests/test_import.py
        measures them), and so is a scale 1 % off (0.003): refused in every type.
        """
        x = np.linspace(-6, 6, 241, dtype=np.float64)
        try:
            _, consts = self.g.ancestors([stop], {start: x})
            y = self.g.evaluate([stop], {start: x}, upcast=True)[0]
        except Exception as e:  # noqa: BLE001 (the evaluator raises many types)
            self.fail(f"cannot evaluate the feed-forward activation ({_first_line(e)})")
        eps = max((_EPS[t] for t in map(self.g.stored_type, consts) if t in _EPS), default=0.0)
        ref = x * 0.5 * (1 + _erf(x / math.sqrt(2)))
        return float(np.max(np.abs(np.asarray(y, np.float64) - ref))), max(eps / 4, 1e-5)

    # -- the walk -----------------------------------------------------------------------------------------

    def word_lookup(self) -> onnx.NodeProto:
        int_inputs = [n for n, i in self.g.inputs.items() if i.type.tensor_type.elem_type not in _FLOAT_TYPES]
        lookups = []
        for n in self.g.nodes:
            if n.op_type != "Gather" or self.g.canon(n.input[1]) not in int_inputs:
                continue
            table = self.g.const(n.input[0])
            axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
            if table is not None and table.ndim == 2 and table.dtype.kind == "f" and axis == 0:
                lookups.append(n)
        if not lookups:
            inputs = ", ".join(self.g.inputs) or "none"
            self.fail("not a BERT / RoBERTa encoder export: no token-embedding lookup (a Gather of a [vocab, hidden] "
                      f"table by an integer graph input; graph inputs: {inputs})")
        # token ids before token types: by name, else the larger table
        lookups.sort(key=lambda n: (self.g.canon(n.input[1]) != "input_ids", -self.g.const(n.input[0]).shape[0]))
        return lookups[0]

    def embeddings(self) -> tuple[str, int, str, int]:
        """Returns (embedding output, hidden, model type, pad id)."""
        word = self.word_lookup()
        self.ids = self.g.canon(word.input[1])
        table = self.g.param(word.input[0], "embeddings.word_embeddings.weight")
        vocab, hidden = table.shape
        self.state["embeddings.word_embeddings.weight"] = table
        x, terms = self.g.out(word), []
        while True:
            node = self.only_consumer(x, "embeddings")
            if node.op_type != "Add":
                break
            a, b = self.g.ins(node)
            terms.append(b if a == x else a)
            x = self.g.out(node)
        if len(terms) != 2:
            self.fail(f"embeddings: expected word + token-type + position embeddings, found the word embedding "
                      f"plus {len(terms)} term(s) before {node.op_type} '{node.name}'"
                      + ("; a DistilBERT export (no token-type embedding) is not read from ONNX: pass the model to "
                         "from_pretrained" if len(terms) == 1 else ""))
        types, positions = (self.g.producer.get(t) for t in terms)
        if types is None or types.op_type != "Gather" or self.g.const(types.input[0]) is None:
            folded = self.g.const(terms[0]) is not None
            self.fail("embeddings: the token-type embedding is not a table lookup ("
                      + ("folded into a constant by the exporter, as a static-shape export without token_type_ids "
                         "among its inputs may be where the lookup is small: export with token_type_ids as an input, "
                         "or with a dynamic sequence axis)" if folded else "missing)"))
        self.types = self.g.canon(types.input[1])
        self.state["embeddings.token_type_embeddings.weight"] = self.g.param(
            types.input[0], "embeddings.token_type_embeddings.weight")
        model_type, pad = "bert", 0
        if positions is not None and positions.op_type == "Gather" and self.g.const(positions.input[0]) is not None:
            pos_table = self.g.param(positions.input[0], "embeddings.position_embeddings.weight")
            index = self.g.canon(positions.input[1])
            if self.g.depends_on(index, lambda n: n.op_type == "CumSum"):
                model_type = "roberta"
                equal = self.g.depends_on(index, lambda n: n.op_type in ("Equal", "Sub") and self.ids in self.g.ins(n))
                pads = {int(np.asarray(v).reshape(-1)[0]) for n in equal for i in self.g.ins(n)
                        if i != self.ids and (v := self.g.const(i)) is not None and np.asarray(v).size == 1}
                if len(pads) != 1:
                    self.fail("embeddings: RoBERTa-style position ids without a readable padding id "
                              "(expected Equal(input_ids, pad))")
                pad = pads.pop()
        else:
            folded = self.g.const(terms[1])
            if folded is None or folded.dtype.kind != "f" or folded.shape[-1] != hidden or folded.ndim not in (2, 3) \
                    or (folded.ndim == 3 and folded.shape[0] != 1):
                self.fail("embeddings: the position embedding is neither a table lookup nor a [1, L, hidden] "
                          "constant")
            pos_table = self.g.param(terms[1], "embeddings.position_embeddings.weight").reshape(-1, hidden)
            self.warnings.append(
                f"the export folded BERT's position embeddings into a constant (a static-shape export): only the "
                f"first {pos_table.shape[0]} rows are in the file, so the rebuilt model has "
                f"max_position_embeddings={pos_table.shape[0]}, and the table's int8 scale is taken over those rows "
                "alone: other integers than the whole model's (on a tiny BERT 59 % of the outputs equal, up to 3 "
                "LSB apart); export with dynamic_shapes on the sequence axis to keep the whole table")
        self.state["embeddings.position_embeddings.weight"] = pos_table
        for k in ("token_type_embeddings", "position_embeddings"):
            if self.state[f"embeddings.{k}.weight"].shape[1] != hidden:
                self.fail(f"embeddings.{k}.weight has width {self.state[f'embeddings.{k}.weight'].shape[1]}, "
                          f"the word embeddings {hidden}")
        self.vocab = vocab
        return self.layer_norm(node, "embeddings.LayerNorm", hidden), hidden, model_type, pad

    def layer(self, h: str, i: int, hidden: int, projections: list[onnx.NodeProto]) -> str:
        p = f"encoder.layer.{i}"
        ends, dtypes = {}, {}
        for node in projections:
            tmp = f"{p}.attention.self.proj{len(ends)}"
            out = self.linear(node, tmp)
            ends[tmp] = (out, *self.follow(out))
            dtypes[tmp] = self.g.const(self.linear_weight(node)).dtype
        by_matmul: dict[str, dict[int, str]] = {}
        for tmp, (_, mm, slot, _) in ends.items():
            by_matmul.setdefault(self.g.out(mm), {})[slot] = tmp
        scores = [k for k, v in by_matmul.items() if set(v) == {0, 1}]
        context = [k for k, v in by_matmul.items() if set(v) == {1}]
        if len(scores) != 1 or len(context) != 1:
            self.fail(f"{p}: the three projections do not form query @ key^T and softmax @ value")
        roles = {by_matmul[scores[0]][0]: "query", by_matmul[scores[0]][1]: "key", by_matmul[context[0]][1]: "value"}
        ctx_node = self.g.producer[context[0]]
        softmax = self.g.depends_on(self.g.ins(ctx_node)[0], lambda n: n.op_type == "Softmax", limit=40)
        if not softmax or not self.g.depends_on(self.g.ins(ctx_node)[0],
                                                 lambda n: self.g.out(n) == scores[0], limit=40):
            self.fail(f"{p}: no Softmax between the attention scores and the value product")
        # the scores' float type is the query weight's (as evaluated: bfloat16 as float32); not always the word
        # table's: torch's TorchScript exporter writes a float16 model's layers after the first in float32
        query = by_matmul[scores[0]][0]
        self.attention.append((p, scores[0], self.g.ins(softmax[0])[0], dtypes[query]))
        head_size = self.head_size(ends[next(k for k, r in roles.items() if r == "query")][3])
        self.head_sizes.add(head_size)
        for tmp, role in roles.items():
            for k in ("weight", "bias"):
                self.state[f"{p}.attention.self.{role}.{k}"] = self.state.pop(f"{tmp}.{k}")
            if self.state[f"{p}.attention.self.{role}.weight"].shape != (hidden, hidden):
                self.fail(f"{p}.attention.self.{role}.weight has shape "
                          f"{self.state[f'{p}.attention.self.{role}.weight'].shape}, expected ({hidden}, {hidden})")
        # context -> [B, L, hidden] -> output projection -> residual -> LayerNorm
        x = self.linear(self.follow_to_linear(context[0], p), f"{p}.attention.output.dense")
        h1 = self.residual_norm(x, h, f"{p}.attention.output.LayerNorm", hidden)
        ffn = [n for n in self.g.consumers.get(h1, []) if self.linear_weight(n)]
        if len(ffn) != 1:
            self.fail(f"{p}: expected one intermediate projection after the attention block, found {len(ffn)}")
        inter = self.linear(ffn[0], f"{p}.intermediate.dense")
        down = self.find_down_projection(inter, p)
        self.activation(inter, self.g.ins(down)[0], i)
        x = self.linear(down, f"{p}.output.dense")
        self.intermediate.add(self.state[f"{p}.intermediate.dense.weight"].shape)
        if self.state[f"{p}.output.dense.weight"].shape[::-1] != self.state[f"{p}.intermediate.dense.weight"].shape:
            self.fail(f"{p}: output projection {self.state[f'{p}.output.dense.weight'].shape} does not invert the "
                      f"intermediate {self.state[f'{p}.intermediate.dense.weight'].shape}")
        return self.residual_norm(x, h1, f"{p}.output.LayerNorm", hidden)

    def check_attention_masks(self, heads: int) -> None:
        """Refuse attention that attention_mask alone does not mask as BERT / RoBERTa do: run each layer's Softmax
        input with the scores 0, (1) with every token real: anything but 0 there is a mask of the graph's own (a
        decoder's causal mask: a constant lower triangle, or computed from the positions) that the rebuilt encoder
        would drop; (2) with the last token of the first row padded: it must be large negative (<= _MASKED) at that
        key for every head and query of that row and 0 elsewhere, HF's key masking, which the rebuilt encoder
        applies (a graph masking the padded query instead, or masking otherwise, is another model)."""
        dims = [d.dim_value or None for d in self.g.inputs[self.ids].type.tensor_type.shape.dim]
        batch, seq = (dims[0] or 2, dims[1] or 8) if len(dims) == 2 else (2, 8)  # padded, a row of real tokens
        feeds = {name: (np.zeros if name in (self.ids, self.types) else np.ones)(
            (batch, seq), onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
            for name, i in self.g.inputs.items()}  # ones: the attention mask, every token real
        padded = {name: feeds[name].copy() for name in self.g.inputs if name not in (self.ids, self.types)}
        for mask in padded.values():
            mask[0, -1] = 0
        causal = np.triu(np.ones((seq, seq), bool), 1)
        # one layer at a time (a static export's [B, heads, L, L] scores take GB at large B and L); a layer whose
        # Softmax reads the scores themselves has no mask
        for p, scores, x, dtype in self.attention:
            if x == scores:
                continue
            zeros = {scores: np.zeros((batch, heads, seq, seq), dtype)}
            off = np.asarray(self.softmax_input(x, feeds | zeros), np.float32) != 0
            if off.any() and off.shape[-2:] == (seq, seq) and np.array_equal(np.broadcast_to(causal, off.shape), off):
                self.fail(f"{p}: a causal (decoder) attention mask: with every token real, each position is masked "
                          "from the ones after it; decoder models are not supported (encoders only)")
            if off.any():
                self.fail(f"{p}: the attention scores are masked or biased by more than attention_mask "
                          f"({int(off.sum())} of {off.size} entries of the Softmax input nonzero with every token "
                          "real and the scores 0): BERT / RoBERTa padding masks only (encoders only)")
            if not padded:  # no mask input (ids only): the graph builds HF's all-ones mask; no token can be padded
                continue
            bias = np.asarray(self.softmax_input(x, feeds | padded | zeros), np.float64)
            if problem := _key_mask_problem(bias, (batch, heads, seq, seq)):
                self.fail(f"{p}: attention_mask does not mask the padded key as BERT / RoBERTa do (token {seq - 1} "
                          f"of row 0 padded, the scores 0): {problem}")

    def softmax_input(self, output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The Softmax input `output` evaluated on `feeds`; an evaluation that fails is refused, naming why."""
        try:
            return self.g.evaluate([output], feeds)[0]
        except Exception as e:  # noqa: BLE001 (the evaluator raises many types)
            self.fail(f"cannot evaluate the attention mask ({_first_line(e)})")

    def follow_to_linear(self, name: str, p: str) -> onnx.NodeProto:
        """From the attention context through transposes / reshapes to the output projection's MatMul."""
        for _ in range(8):
            node = self.only_consumer(name, f"{p} (attention output)")
            if self.linear_weight(node):
                return node
            if node.op_type not in _PASS_THROUGH:
                break
            name = self.g.out(node)
        self.fail(f"{p}: the attention context does not reach the output projection (stopped at {node.op_type} "
                  f"'{node.name}')")

    def find_down_projection(self, start: str, p: str) -> onnx.NodeProto:
        """The first constant-weight MatMul downstream of the intermediate projection."""
        todo, seen = deque([start]), set()
        while todo and len(seen) < 64:
            x = todo.popleft()
            if x in seen:
                continue
            seen.add(x)
            for n in self.g.consumers.get(x, []):
                if self.linear_weight(n):
                    return n
                todo.append(self.g.out(n))
        self.fail(f"{p}: no output projection after the intermediate projection")

    def read(self) -> tuple[PreTrainedModel, list[str]]:
        self.eps, self.head_sizes, self.intermediate = set(), set(), set()
        self.attention: list[tuple[str, str, str, np.dtype]] = []  # (layer, scores, Softmax input, scores' type)
        ops = {n.op_type for n in self.g.nodes}
        if "ReduceMean" in ops and "LayerNormalization" not in ops:
            raise OnnxImportError(_decomposed_layer_norm([o.version for o in self.g.default_opset()]))
        h, hidden, model_type, pad = self.embeddings()
        n_layers = 0
        while True:
            projections = [n for n in self.g.consumers.get(h, []) if self.linear_weight(n)]
            if not projections:
                break
            if len(projections) != 3:
                self.fail(f"encoder.layer.{n_layers}: expected query, key and value projections of the layer input, "
                          f"found {len(projections)} projection(s)")
            h = self.layer(h, n_layers, hidden, projections)
            n_layers += 1
        if n_layers == 0:
            self.fail("not a BERT / RoBERTa encoder export: no attention layer after the embeddings")
        if h not in self.g.outputs:
            users = ", ".join(f"{n.op_type} '{n.name}'" for n in self.g.consumers.get(h, []))
            self.fail(f"the last layer's output is not a graph output (used by {users or 'nothing'}): export the "
                      "encoder's last_hidden_state")
        if len(self.head_sizes) != 1 or hidden % next(iter(self.head_sizes)):
            self.fail(f"head sizes {sorted(self.head_sizes)} do not divide the hidden size {hidden}")
        if len(self.intermediate) != 1:
            self.fail(f"intermediate sizes differ between layers: {sorted(self.intermediate)}")
        if len(self.eps) != 1:
            self.fail(f"LayerNorm epsilons differ: {sorted(self.eps)}")
        unused = [f"'{name}' {list(t.dims)}" for name, t in self.g.init.items()
                  if name not in self.g.used and t.data_type in _FLOAT_TYPES and int(np.prod(t.dims)) > 1]
        if unused:
            self.fail(f"initializers not used by the rebuilt {model_type} encoder: {', '.join(unused[:8])}"
                      f"{' ...' if len(unused) > 8 else ''} (a pooler, a task head or an unsupported feature?)")
        unsupported = self.g.unsupported_ops()
        if unsupported:
            raise OnnxImportError(f"unsupported ops in the graph: {', '.join(unsupported)}")
        heads = hidden // self.head_sizes.pop()
        self.check_attention_masks(heads)
        common = dict(vocab_size=self.vocab, hidden_size=hidden, num_hidden_layers=n_layers,
                      num_attention_heads=heads,
                      intermediate_size=self.intermediate.pop()[0], hidden_act="gelu",
                      max_position_embeddings=self.state["embeddings.position_embeddings.weight"].shape[0],
                      type_vocab_size=self.state["embeddings.token_type_embeddings.weight"].shape[0],
                      layer_norm_eps=float(str(np.float32(self.eps.pop()))), pad_token_id=pad,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        if model_type == "roberta":
            model = RobertaModel(RobertaConfig(**common), add_pooling_layer=False)
        else:
            model = BertModel(BertConfig(**common), add_pooling_layer=False)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(self.state))
        extra = sorted(set(self.state) - set(expected))
        if missing or extra:
            self.fail(f"weights missing from the file: {missing[:5]}; read but unknown to {type(model).__name__}: "
                      f"{extra[:5]}")
        for k, v in self.state.items():
            if tuple(expected[k].shape) != v.shape:
                self.fail(f"{k}: shape {v.shape} in the file, {tuple(expected[k].shape)} in the rebuilt model")
        import torch

        model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in self.state.items()},
                              strict=True)
        return model.eval(), self.warnings


def _decomposed_layer_norm(opsets: list[int]) -> str:
    """Why a graph whose LayerNorm is ReduceMean / Pow / Sqrt is refused: its opset where that explains it (below
    17, which has no LayerNormalization op), else the decomposition itself (a file at opset 17 or later)."""
    if opsets and opsets[0] >= 17:
        return (f"LayerNorm is decomposed into ReduceMean / Pow / Sqrt although the file's opset is {opsets[0]}, "
                "which has LayerNormalization: a decomposed LayerNorm is not supported (export LayerNorm as one "
                "LayerNormalization op, as torch.onnx.export does at opset_version=17 or later)")
    where = f"an export at opset {opsets[0]}, which has no LayerNormalization op" if opsets else \
        "the file names no default-domain opset"
    return f"LayerNorm is decomposed into ReduceMean / Pow / Sqrt ({where}): export with opset_version=17 or later"


def model_from_onnx(path: str | Path | onnx.ModelProto) -> PreTrainedModel:
    """Rebuild the HF `BertModel` / `RobertaModel` (no pooler) of an ONNX encoder export, with its weights.

    The architecture (vocabulary, hidden size, layers, heads, intermediate size, positions, token types,
    LayerNorm epsilon, BERT vs RoBERTa and RoBERTa's padding id) is read from the graph and its initializers
    (see the module docstring); errors (`OnnxImportError`, a `ValueError`) name what is missing or
    unsupported. A static-shape BERT export keeps only the first L position embeddings, whose int8 scale then
    differs from the whole table's (a warning says so).
    """
    model, notes = _Reader(_load(path)).read()
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return model


def _pin_shapes(model: onnx.ModelProto, batch: int | None, seq: int | None) -> onnx.ModelProto:
    """Fix symbolic input dimensions ([batch, seq]) and fold the shape computations they feed."""
    symbolic = [(i, d) for i in model.graph.input for d in i.type.tensor_type.shape.dim if not d.HasField("dim_value")]
    if not symbolic:
        for i in model.graph.input:
            dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
            if len(dims) == 2 and (batch, seq) != (None, None) and [batch or dims[0], seq or dims[1]] != dims:
                raise ValueError(f"the graph's input {i.name} has the static shape {dims}; asked for "
                                 f"[{batch}, {seq}] (export with dynamic_shapes for other shapes)")
        return model
    if batch is None or seq is None:
        names = sorted({f"{i.name}[{d.dim_param or '?'}]" for i, d in symbolic})
        raise ValueError(f"the graph has symbolic input dimensions ({', '.join(names)}): pass batch= and seq=")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for i in model.graph.input:
        dims = i.type.tensor_type.shape.dim
        if len(dims) != 2:
            continue
        for d, v in zip(dims, (batch, seq)):
            if not d.HasField("dim_value"):
                d.ClearField("dim_param")
                d.dim_value = v
    # TVM's ONNX importer loses the static shapes through the exporter's dynamic-shape mask computation (its
    # Reshape then fails); constant-folding with the pinned shapes removes those computations first.
    import onnxscript.optimizer

    return onnxscript.optimizer.optimize(model)


def import_onnx_float(path: str | Path | onnx.ModelProto, batch: int | None = None,
                      seq: int | None = None) -> tvm.IRModule:
    """TVM's own import of the float ONNX graph (`relax.frontend.onnx.from_onnx`), weights as constants.

    `main` takes the graph's inputs (input_ids / attention_mask, and token_type_ids where exported, int64
    [B, L] for the exporter's encoder graphs) and returns its output. A graph exported with dynamic shapes needs `batch` and `seq`: they are pinned and
    the shape computations folded (onnxscript's optimizer) before TVM imports it.
    """
    from tvm.relax.frontend.onnx import from_onnx

    model = _pin_shapes(_load(path), batch, seq)
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input
              if i.name not in {t.name for t in model.graph.initializer}}
    return from_onnx(model, shape_dict=shapes)
