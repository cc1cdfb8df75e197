"""Rewrite the int8 GEMMs into the form x86 VNNI multiplies: u8 activations x packed s8 operands.

x86's int8 dot product `vpdpbusd` (AVX512-VNNI, AVX-VNNI) multiplies *unsigned* bytes by signed bytes. Our
activations are signed, so, as oneDNN and ONNX Runtime do, they are shifted by +128 into u8 and the shift
is taken back out of the result, exactly:

    sum_k x[k] w[n, k] = sum_k (x[k] + 128) w[n, k] - 128 sum_k w[n, k]

- Linear layers with constant weights (`ibert_linear...` PrimFuncs, ops/linear.py): the weight-sum term is
  folded into the bias at compile time (`bias'[n] = bias[n] - 128 sum_k w[n, k]`), and the weights are
  packed at compile time into the instruction's operand layout `[N/lanes, K/4, lanes, 4]` (te_packing.py).
- int8 x int8 matmuls (`ibert_matmul...` with int8 `a`: Q K^T): both operands are activations, so `b` is
  packed at run time, and its column sums come from one more row of the same GEMM (te_packing.matmul_u8).

Runs on a legalized module (after `relax.transform.LegalizeOps()`), before `FuseRequantize`. Each PrimFunc
is replaced (under the same name, so fusion and its names stay as before) by the TE compute of
`te_packing.linear_u8` / `matmul_u8`; a linear's calls then pass the packed weight and folded bias.
Exactness: each vpdpbusd lane sums four u8 x s8 products (|p| <= 255 * 128) into int32 without saturation;
the u8 accumulator stays below K_pad * 255 * 128, which fits int32 for K <= 65792 (a larger K is left as
is); the compensated result equals the original accumulator, whose range the ops already check.

Left as they were: linear layers whose weight or bias is a run-time value, and int16 x int8 matmuls (P V,
see pack_probabilities_i16.py). The pass is a no-op for targets without VNNI (AVX2 ones take
widen_activations_i16.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, s_tir, te, tirx
from tvm.target import Target

from .te_packing import SHIFT, U8_GROUP, ceil_to, int64_shape, linear_u8, matmul_u8

__all__ = ["LINEAR", "MATMUL", "ShiftActivationsU8", "calls_of", "compensated_bias", "constant_of", "linear_constants",
           "matmul_layout", "pack_weight", "replace_prim_funcs", "rewrite_linears", "rewrite_matmuls", "without_symbol"]

LINEAR = "ibert_linear"  # LegalizeOps' names for the ops' PrimFuncs (ops/registry.py)
MATMUL = "ibert_matmul"
_ACC_MAX = (1 << 31) - 1
_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


def pack_weight(weight: np.ndarray, lanes: int, group: int = U8_GROUP) -> np.ndarray:
    """int8 [N, K] -> [ceil(N/lanes), ceil(K/group), lanes, group], zero padded: the vpdpbusd operand layout
    (group 4), or AVX2's `vpmaddwd` pairs (group 2)."""
    n, k = weight.shape
    padded = np.pad(weight, ((0, ceil_to(n, lanes) - n), (0, ceil_to(k, group) - k)))
    blocks, groups = padded.shape[0] // lanes, padded.shape[1] // group
    return np.ascontiguousarray(padded.reshape(blocks, lanes, groups, group).transpose(0, 2, 1, 3))


def _fits_u8_accumulator(k: int) -> bool:
    """Whether sum over K (padded) of (x + 128) * w stays inside int32 for every int8 x and w."""
    return ceil_to(k, U8_GROUP) * 255 * SHIFT <= _ACC_MAX


def compensated_bias(weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray | None:
    """`bias - 128 * sum_k weight[n, k]` as int32, or None where the u8 accumulator could leave int32."""
    if not _fits_u8_accumulator(weight.shape[1]):
        return None
    base = np.zeros(weight.shape[0], np.int64) if bias is None else bias.astype(np.int64)
    folded = base - SHIFT * weight.astype(np.int64).sum(1)
    return folded.astype(np.int32) if np.abs(folded).max(initial=0) <= _ACC_MAX else None


def matmul_layout(func: tirx.PrimFunc) -> bool | None:
    """`transpose_b` of a legalized ibert.matmul PrimFunc (whether b's last index is the reduced one),
    or None if the PrimFunc is not one multiply-accumulate block."""
    blocks: list[s_tir.SBlock] = []
    tvm_ffi.structural_walk(func.body, lambda n: blocks.append(n) if isinstance(n, s_tir.SBlock) else None)
    reducing = [b for b in blocks if any(iv.iter_type == tirx.IterVar.CommReduce for iv in b.iter_vars)]
    if len(reducing) != 1 or not isinstance(reducing[0].body, tirx.BufferStore):
        return None
    value = reducing[0].body.value
    if not (isinstance(value, tirx.Add) and isinstance(value.b, tirx.Mul) and isinstance(value.b.b, tirx.Cast)):
        return None
    return value.b.b.value.indices[-1].same_as(reducing[0].iter_vars[-1].var)


def constant_of(expr: relax.Expr, dtype: str, ndim: int) -> np.ndarray | None:
    """The value of a constant (`tvm.ir.Constant`) of `dtype` and rank `ndim`, else None."""
    if not isinstance(expr, tvm.ir.Constant):
        return None
    value = expr.value.numpy()
    return value if value.dtype == np.dtype(dtype) and value.ndim == ndim else None


def without_symbol(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """No global symbol, as LegalizeOps makes its PrimFuncs (an exported one would be kept unused)."""
    return func.with_attr("tirx.noalias", True).without_attr("global_symbol")


def linear_constants(call: relax.Call) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(int8 weight, int32 bias or None) of a call of a linear PrimFunc on an int8 input of static shape,
    where both are constants; None otherwise (a run-time weight or bias stays as it is)."""
    x, weight, *rest = call.args[1].fields
    w = constant_of(weight, "int8", 2)
    bias = constant_of(rest[0], "int32", 1) if rest else None
    if w is None or (rest and bias is None) or getattr(x.ty, "dtype", None) != "int8" or x.ty.shape is None:
        return None
    return w, bias


def _linear_plan(call: relax.Call, lanes: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(packed weight, folded bias) for a call of a linear PrimFunc that can take the u8 form, else None."""
    constants = linear_constants(call)
    if constants is None:
        return None
    w, bias = constants
    folded = compensated_bias(w, bias)
    return None if folded is None else (pack_weight(w, lanes), folded)


def _linear_func(call: relax.Call, packed: np.ndarray, bias: np.ndarray, compute: Callable) -> tirx.PrimFunc:
    """The packed form of the linear PrimFunc `call` calls: (x, packed int8 weight, bias) -> int32 through
    `compute` (te_packing.linear_u8 or linear_i16)."""
    x, weight = call.args[1].fields[:2]
    x_te = te.placeholder(int64_shape(x.ty.shape), "int8", name="x")
    w_te = te.placeholder(int64_shape(packed.shape), "int8", name="weight")
    b_te = te.placeholder(int64_shape(bias.shape), "int32", name="bias")
    return without_symbol(te.create_prim_func([x_te, w_te, b_te, compute(x_te, w_te, b_te, int(weight.ty.shape[0]))]))


def rewrite_linears(mod: tvm.IRModule, plan: Callable[[relax.Call], tuple[np.ndarray, np.ndarray] | None],
                    compute: Callable) -> tvm.IRModule:
    """Replace each linear PrimFunc all of whose calls have a `plan` (packed weight, bias) by its packed
    form through `compute`, and its calls by calls with the planned constants."""
    calls = calls_of(mod, LINEAR)
    plans = {name: [plan(c) for c in cs] for name, cs in calls.items()}
    funcs = {name: _linear_func(calls[name][0], *p[0], compute) for name, p in plans.items()
             if all(q is not None for q in p)}

    def new_args(call: relax.Call) -> list[relax.Expr]:
        packed, bias = plan(call)
        return [call.args[1].fields[0], relax.const(packed, "int8"), relax.const(bias, "int32")]

    return replace_prim_funcs(mod, funcs, new_args)


def rewrite_matmuls(mod: tvm.IRModule, dtypes: tuple[str, str],
                    compute: Callable[[te.Tensor, te.Tensor, bool], te.Tensor | None]) -> tvm.IRModule:
    """Replace each matmul PrimFunc whose (a, b) have `dtypes` and static shapes by the packed form that
    `compute(a, b, transpose_b)` builds (same parameters); None from `compute` leaves it as it is."""
    funcs = {}
    for name, calls in calls_of(mod, MATMUL).items():
        a, b = calls[0].args[1].fields
        transpose_b = matmul_layout(mod[name])
        if transpose_b is None or tuple(getattr(v.ty, "dtype", None) for v in (a, b)) != dtypes \
                or a.ty.shape is None or b.ty.shape is None:
            continue
        a_te = te.placeholder(int64_shape(a.ty.shape), dtypes[0], name="a")
        b_te = te.placeholder(int64_shape(b.ty.shape), dtypes[1], name="b")
        out = compute(a_te, b_te, transpose_b)
        if out is not None:
            funcs[name] = without_symbol(te.create_prim_func([a_te, b_te, out]))
    return replace_prim_funcs(mod, funcs)


def calls_of(mod: tvm.IRModule, prefix: str) -> dict[str, list[relax.Call]]:
    """PrimFunc name -> its call_tir calls, for the PrimFuncs named `prefix...` that Relax functions call."""
    calls: dict[str, list[relax.Call]] = {}

    def visit(node: object) -> None:
        if isinstance(node, relax.Call) and node.op.same_as(_CALL_TIR) and node.args[0].name_hint.startswith(prefix):
            calls.setdefault(node.args[0].name_hint, []).append(node)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return calls


@relax.expr_functor.mutator
class _Recall(relax.PyExprMutator):
    """Point each call of a replaced PrimFunc at its replacement (a new GlobalVar: Relax types a call by
    its callee GlobalVar's signature, so the old one cannot be reused), with `new_args(call)` as arguments."""

    def __init__(self, mod: tvm.IRModule, funcs: dict[str, tirx.PrimFunc],
                 new_args: Callable[[relax.Call], list[relax.Expr]] | None) -> None:
        super().__init__(mod)
        self.new_args = new_args
        self.gvars = {name: self.builder_.add_func(func, name) for name, func in funcs.items()}

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (call.op.same_as(_CALL_TIR) and call.args[0].name_hint in self.gvars):
            return call
        args = list(call.args[1].fields) if self.new_args is None else self.new_args(call)
        return relax.call_tir(self.gvars[call.args[0].name_hint], args, call.ty_args[0])


def replace_prim_funcs(mod: tvm.IRModule, funcs: dict[str, tirx.PrimFunc],
                       new_args: Callable[[relax.Call], list[relax.Expr]] | None = None) -> tvm.IRModule:
    """`mod` with each PrimFunc named in `funcs` replaced (same name) and its calls redirected to it."""
    if not funcs:
        return mod
    out = mod.clone()
    for name in funcs:
        del out[name]
    recall = _Recall(out, funcs, new_args)
    for gvar, func in out.functions_items():
        if isinstance(func, relax.Function):
            recall.builder_.update_func(gvar, recall.visit_expr(func))
    return recall.builder_.get()


@tvm.transform.module_pass(opt_level=0, name="ShiftActivationsU8")
class ShiftActivationsU8:
    """Shift the int8 activations of linear layers and Q K^T to u8 for x86 VNNI; no-op on other targets."""

    def __init__(self, target: Target) -> None:
        """`target`: the compilation target; the rewrite happens only where it has a VNNI instruction."""
        from ibert_tvm.schedules.x86 import vnni_lanes  # lazily: relay_passes must not need schedules at import

        self.lanes = vnni_lanes(target)

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Rewrite linear PrimFuncs all of whose calls qualify (and those calls), then int8 matmuls."""
        if not self.lanes:
            return mod
        return self._matmuls(self._linears(mod))

    def _linears(self, mod: tvm.IRModule) -> tvm.IRModule:
        return rewrite_linears(mod, lambda call: _linear_plan(call, self.lanes), linear_u8)

    def _matmuls(self, mod: tvm.IRModule) -> tvm.IRModule:
        return rewrite_matmuls(mod, ("int8", "int8"), lambda a, b, transpose_b: matmul_u8(
            a, b, transpose_b, self.lanes) if _fits_u8_accumulator(int(a.shape[-1])) else None)
