"""Fail compilation if any float type or float arithmetic survives in a legalized (optionally fused) IRModule.

Run it after `relax.transform.LegalizeOps()` (and, if wanted, after fusion: `relax.get_pipeline("zero")`
or `FuseOps` + `FuseTIR`). It walks every Relax function and every TIR PrimFunc with
`tvm_ffi.structural_walk` (TVM 0.27 has no `tir.stmt_functor.post_order_visit`) and checks the type
(`.ty`) of every expression: float params, constants and call results in Relax; float buffers, loads,
casts to/from float, float immediates, float arithmetic and float intrinsics in TIR.

`allow_float_outputs=True` lets one thing through: a *final dequantization*. Its PrimFuncs hold no float
but casts of integers to float, float immediates, multiplies of those and loads of float buffers, and
write a float output; in Relax their float results may only feed further such PrimFuncs or be returned.
So `astype(x_int8, "float32") * scale` as the last op passes (fused or not); a float that flows back
into integers, or any other float op, still raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tvm
import tvm_ffi
from tvm import relax, tirx

__all__ = ["FloatOpError", "IntegerOnlyReport", "VerifyIntegerOnly", "verify_integer_only"]

_MAX_SHOWN = 6  # findings listed per function in the error message


@tvm_ffi.register_error  # so that it keeps its class when raised inside a pass run from C++
class FloatOpError(Exception):
    """Floats remain in a program meant to be integer-only; `findings` maps 'PrimFunc ...' -> what float."""

    def __init__(self, message: str, findings: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.findings = findings or {}


@dataclass(frozen=True)
class IntegerOnlyReport:
    """What was checked: PrimFunc and Relax function names, and the PrimFuncs allowed as final dequantization."""

    prim_funcs: tuple[str, ...]
    relax_funcs: tuple[str, ...]
    float_outputs: tuple[str, ...] = ()


def _float_dtype(ty: Any) -> str | None:
    """The float dtype inside a type (PrimType, TensorType, BufferType, PointerType, TupleType), else None."""
    if isinstance(ty, relax.TupleType):
        return next(filter(None, map(_float_dtype, ty.fields)), None)
    while ty is not None and not isinstance(ty, tvm_ffi.dtype):
        ty = getattr(ty, "dtype", None) or getattr(ty, "element_type", None)
    return str(ty) if ty is not None and ty.is_float else None


def _fdt(expr: Any) -> str | None:
    """The float dtype of an expression's type, else None."""
    return _float_dtype(getattr(expr, "ty", None))


def _nodes(root: Any) -> list[Any]:
    """Every node under `root`, pre-order (structural_walk only takes callbacks)."""
    nodes: list[Any] = []
    tvm_ffi.structural_walk(root, nodes.append, order="pre")
    return nodes


def _name(node: Any) -> str:
    """A short name for a Relax/TIR var, global var or op."""
    return str(getattr(node, "name_hint", None) or getattr(node, "name", None) or type(node).__name__)


def _callee(call: Any) -> str | None:
    """The GlobalVar name a Relax call_tir-style call targets, else None."""
    ok = isinstance(call, tvm.ir.Call) and call.args and isinstance(call.args[0], tvm.ir.GlobalVar)
    return _name(call.args[0]) if ok else None


def _tir_floats(func: tirx.PrimFunc) -> tuple[dict[str, bool], bool, bool]:
    """Float findings of a PrimFunc as {description: allowed in a final dequantization}, and whether it
    writes a float parameter (an output) and reads one (an input: allowed only within a dequantization chain)."""
    is_param = lambda buf: any(buf.same_as(p) for p in func.params)  # noqa: E731
    found: dict[str, bool] = {f"{_fdt(p)} buffer '{_name(p)}'": True for p in func.params if _fdt(p)}
    writes_float_param = reads_float_param = False
    for node in _nodes(func.body):
        dt = _fdt(node)
        if isinstance(node, tirx.BufferStore):
            writes_float_param |= bool(_fdt(node.buffer)) and is_param(node.buffer)
            continue
        reads_float_param |= isinstance(node, tvm.ir.TensorLoad) and bool(dt) and is_param(node.source)
        if isinstance(node, tirx.Cast) and (dt or _fdt(node.value)):  # int -> float ok, float -> anything not
            desc, ok = f"cast {node.value.ty.dtype} -> {node.ty.dtype}", dt is not None and not _fdt(node.value)
        elif dt is None or isinstance(node, tvm.ir.Type):
            continue
        elif isinstance(node, tvm.ir.Var):
            is_buf = isinstance(node.ty, tirx.BufferType)
            desc, ok = f"{dt} {'buffer' if is_buf else 'variable'} '{_name(node)}'", is_buf
        elif isinstance(node, tvm.ir.TensorLoad):
            where = "input buffer" if is_param(node.source) else "buffer"
            desc, ok = f"load from {dt} {where} '{_name(node.source)}'", True
        elif isinstance(node, tirx.FloatImm):
            desc, ok = f"float immediate {node.value:g}", True
        elif isinstance(node, tvm.ir.Call):
            desc, ok = f"float intrinsic {_name(node.op)} ({dt})", False
        else:
            desc, ok = f"{dt} {type(node).__name__.lower()}", isinstance(node, tirx.Mul)
        found[desc] = found.get(desc, True) and ok
    return found, writes_float_param, reads_float_param


def _describe(value: Any) -> str:
    """How a Relax binding's value reads in a message: `call_tir(cast)`, `astype`, `Tuple`, ..."""
    if not isinstance(value, tvm.ir.Call):
        return type(value).__name__
    op = _name(value.op).removeprefix("relax.")
    return f"{op}({_callee(value)})" if _callee(value) else op


def _call_sites(func: relax.Function) -> dict[str, list[str]]:
    """The call sites of each PrimFunc a Relax function calls: {PrimFunc name: ["'lv' = call_tir(...)"]}."""
    sites: dict[str, list[str]] = {}
    for node in _nodes(func.body):
        if isinstance(node, relax.VarBinding) and _callee(node.value):
            sites.setdefault(_callee(node.value), []).append(f"'{_name(node.var)}' = {_describe(node.value)}")
    return sites


def _relax_floats(func: relax.Function, dequant: set[str]) -> list[str]:
    """Float findings of a Relax function, beyond final dequantizations through the `dequant` PrimFuncs."""
    bad = [f"{_fdt(p)} parameter '{_name(p)}'" for p in func.params if _fdt(p)]
    for node in _nodes(func.body):
        if isinstance(node, relax.VarBinding):
            plumbing = isinstance(node.value, tvm.ir.Var | tvm.ir.Tuple | tvm.ir.TupleGetItem)
            if _fdt(node.var) and not plumbing and _callee(node.value) not in dequant:
                bad.append(f"'{_name(node.var)}' = {_describe(node.value)} is {_fdt(node.var)}")
        elif isinstance(node, tvm.ir.Call) and _callee(node) not in dequant:  # floats must not feed other ops
            args = [f for a in node.args for f in (a.fields if isinstance(a, tvm.ir.Tuple) else [a])]
            bad += [f"{_fdt(a)} '{_name(a)}' passed to {_describe(node)}"
                    for a in args if isinstance(a, tvm.ir.Var) and _fdt(a)]
        elif isinstance(node, tvm.ir.Constant) and _fdt(node):
            bad.append(f"{_fdt(node)} constant")
    return list(dict.fromkeys(bad))


def verify_integer_only(mod: tvm.IRModule, allow_float_outputs: bool = False) -> IntegerOnlyReport:
    """Raise FloatOpError if `mod` (after LegalizeOps) still uses floats anywhere; else report what was checked."""
    prims = {_name(gv): f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}
    relaxes = {_name(gv): f for gv, f in mod.functions.items() if isinstance(f, relax.Function)}
    tir = {name: _tir_floats(f) for name, f in prims.items()}
    sites: dict[str, list[str]] = {}
    for name, func in relaxes.items():
        for prim, calls in _call_sites(func).items():
            sites.setdefault(prim, []).extend(f"{name}: {c}" for c in calls)
    # A float input is justified only by a Relax caller (whose float args _relax_floats then checks).
    dequant = {n for n, (found, writes, reads) in tir.items()
               if allow_float_outputs and found and writes and all(found.values()) and (n in sites or not reads)}
    findings = {f"Relax function '{name}'": bad
                for name, func in relaxes.items() if (bad := _relax_floats(func, dequant))}
    for name, (found, _, _) in tir.items():
        if found and name not in dequant:
            origin = f" (called from {'; '.join(sites[name])})" if name in sites else ""
            shown = [d for d, ok in found.items() if not (allow_float_outputs and ok)] or list(found)
            findings[f"PrimFunc '{name}'{origin}"] = shown
    if findings:
        lines = [f"  {where}: {', '.join(what[:_MAX_SHOWN])}{', ...' if len(what) > _MAX_SHOWN else ''}"
                 for where, what in sorted(findings.items(), key=lambda kv: not kv[0].startswith("PrimFunc"))]
        raise FloatOpError("float types or arithmetic remain in an integer-only program:\n" + "\n".join(lines),
                           findings)
    return IntegerOnlyReport(tuple(sorted(prims)), tuple(sorted(relaxes)), tuple(sorted(dequant)))


@tvm.transform.module_pass(opt_level=0, name="VerifyIntegerOnly")
class VerifyIntegerOnly:
    """Pipeline form of `verify_integer_only`: raises FloatOpError, or returns the module unchanged."""

    def __init__(self, allow_float_outputs: bool = False) -> None:
        """Keep the option; `report` holds the last run's IntegerOnlyReport."""
        self.allow_float_outputs = allow_float_outputs
        self.report: IntegerOnlyReport | None = None

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:  # noqa: ARG002
        """Check `mod` and hand it back untouched."""
        self.report = verify_integer_only(mod, self.allow_float_outputs)
        return mod
