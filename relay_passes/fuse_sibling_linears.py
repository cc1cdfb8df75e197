"""Fuse linear layers that read the same input (attention's Q, K and V) into one GEMM over their stacked weights.

    ibert.requantize(ibert.linear(x, W_i, b_i), M_i, E_i, bits)    for i = 1..n, same x
    ->  y = ibert.requantize(ibert.linear(x, [W_1; ..; W_n], [b_1; ..; b_n]), [M_1; ..; M_n], [E_1; ..; E_n], bits)
        and sibling i = y's columns of W_i (a strided slice, fused later into its consumer's copy)

Each output channel is computed by the same products, bias and rounding as before (per-tensor M, E become
per-channel vectors), so the integers are identical. One GEMM with n times the columns streams the shared
input once, fills more parallel tasks and makes one call instead of n: at 32 tokens, BERT-base's Q, K and V
took 1.17 ms as 36 calls and 0.81 ms as 12 (see bench/RESULTS.md). Runs on the `ibert.*` ops, before legalization.

Fused: siblings whose weights, biases, multipliers and shifts are constants, whose linear output feeds only
their requantize (no residual), with the same K, bias presence and output bits. Others stay as they are.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ibert_tvm import ops

__all__ = ["FuseSiblingLinears"]

_LINEAR, _REQUANTIZE = tvm.ir.Op.get("ibert.linear"), tvm.ir.Op.get("ibert.requantize")


@dataclass(frozen=True)
class _Sibling:
    """One linear + requantize pair: its output var and its constants as numpy arrays."""

    output: relax.Var
    weight: np.ndarray
    bias: np.ndarray | None
    multiplier: np.ndarray
    shift: np.ndarray
    bits: int


def _const(expr: relax.Expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


def _siblings(func: relax.Function) -> list[list[_Sibling]]:
    """Groups of two or more fusable linear + requantize pairs reading the same input var, in binding order."""
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    users: dict[relax.Var, int] = defaultdict(int)
    for value in bindings.values():
        for var in relax.analysis.free_vars(value):
            users[var] += 1
    for var in relax.analysis.free_vars(func.body.body):
        users[var] += 1
    groups: dict[tuple, list[_Sibling]] = defaultdict(list)
    for var, value in bindings.items():
        if not (isinstance(value, relax.Call) and value.op.same_as(_REQUANTIZE) and len(value.args) == 3):
            continue
        lin = value.args[0]
        call = bindings.get(lin) if isinstance(lin, relax.Var) else None
        if not (isinstance(call, relax.Call) and call.op.same_as(_LINEAR) and users[lin] == 1
                and isinstance(call.args[0], relax.Var)):
            continue
        consts = [_const(a) for a in (*call.args[1:], *value.args[1:])]
        if any(c is None for c in consts):
            continue
        weight, *rest = consts
        bias = rest[0] if len(call.args) == 3 else None
        m, e = rest[-2:]
        sib = _Sibling(var, weight, bias, m, e, int(value.attrs["bits"]))
        groups[call.args[0], weight.shape[1], bias is None, sib.bits].append(sib)
    return [g for g in groups.values() if len(g) > 1]


def _fused(x: relax.Expr, group: list[_Sibling]) -> relax.Expr:
    """The one linear + requantize over the stacked constants (the siblings' outputs side by side)."""
    widths = [s.weight.shape[0] for s in group]
    stack = lambda arrays: np.concatenate([np.broadcast_to(a, (w,)) for a, w in zip(arrays, widths)])  # noqa: E731
    bias = None if group[0].bias is None else stack([s.bias for s in group])
    return ops.requantize(ops.linear(x, np.concatenate([s.weight for s in group]), bias),
                          stack([s.multiplier for s in group]), stack([s.shift for s in group]), bits=group[0].bits)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    """Emit each group's fused GEMM at its first requantize and bind every sibling to its slice of it."""

    def __init__(self, mod: tvm.IRModule, groups: list[list[_Sibling]]) -> None:
        super().__init__(mod)
        self.groups = groups
        self.part = {s.output: (g, i) for g, group in enumerate(groups) for i, s in enumerate(group)}
        self.fused: dict[int, relax.Var] = {}

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var not in self.part:
            return super().visit_var_binding_(binding)
        g, i = self.part[binding.var]
        if g not in self.fused:
            x = self.visit_expr(binding.value.args[0])  # the linear's var: its input is the group's input
            linear = self.lookup_binding(x)
            self.fused[g] = self.builder_.emit(_fused(linear.args[0], self.groups[g]))
        begin = sum(s.weight.shape[0] for s in self.groups[g][:i])
        part = relax.op.strided_slice(self.fused[g], axes=[len(binding.var.ty.shape) - 1], begin=[begin],
                                      end=[begin + self.groups[g][i].weight.shape[0]])
        self.set_var_remap(binding.var, self.builder_.emit(part))


@tvm.transform.module_pass(opt_level=0, name="FuseSiblingLinears")
class FuseSiblingLinears:
    """Fuse the linear layers sharing an input (Q, K, V) into one GEMM; dead single linears are removed."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            groups = _siblings(func) if isinstance(func, relax.Function) else []
            if groups:
                updates[gvar] = _Rewriter(mod, groups).visit_expr(func)
        if not updates:
            return mod
        mod = mod.clone()
        for gvar, func in updates.items():
            mod[gvar] = func
        return relax.transform.DeadCodeElimination()(mod)
