"""Shared harness of the operator tests: op modules, integer limits, compile-once VMs, exact comparison."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx

from ibert_tvm.build_util import compile_and_run, single_op_module
from ibert_tvm.ops import OPERATORS

LINEAR = OPERATORS["ibert.linear"]
MATMUL = OPERATORS["ibert.matmul"]
REQUANT = OPERATORS["ibert.requantize"]
GELU = OPERATORS["ibert.int_gelu"]
SOFTMAX = OPERATORS["ibert.int_softmax"]
LAYERNORM = OPERATORS["ibert.int_layernorm"]
EMBEDDING = OPERATORS["ibert.embedding"]
LOOKUP = OPERATORS["ibert.lookup"]

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
LN_MIN, LN_MAX = -(1 << 21), (1 << 21) - 1  # the 22-bit QuantAct output range (requantize bits=22)


# ----------------------------------------------------------------------------------------- helpers


def tvar(name: str, shape, dtype: str) -> relax.Var:
    return relax.Var(name, relax.TensorType(list(shape), dtype))


def sym(*names: str) -> list[tirx.Var]:
    return [tirx.Var(n, "int64") for n in names]


def compile_vm(params: list[relax.Var], build):
    """Compile `main(*params) = build(*params)` once; return a callable numpy -> numpy."""
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(*params))
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps()(bb.get())
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    fn = vm["main"]

    def run(*arrays):
        return fn(*[tvm.runtime.tensor(np.array(a, order="C")) for a in arrays]).numpy()

    run.vm = vm
    return run


def run_static(build, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The project's own path: single_op_module + compile_and_run (static shapes, numpy constants)."""
    return compile_and_run(single_op_module(build, inputs), list(inputs.values()))


def describe_mismatch(out: np.ndarray, ref: np.ndarray, labels=None) -> str:
    o, r = out.astype(object), np.asarray(ref).astype(object)
    bad = np.argwhere(o != r)
    if bad.size == 0:
        return ""
    i = tuple(int(v) for v in bad[0])
    extra = "" if labels is None else f" ({labels(i)})"
    return f"{len(bad)}/{out.size} elements differ; first at {i}{extra}: got {o[i]}, reference {r[i]}"


def assert_exact(out: np.ndarray, ref, dtype: str | None = None, what: str = "", labels=None) -> None:
    ref = np.asarray(ref)
    if dtype is not None:
        assert out.dtype == np.dtype(dtype), f"{what}: output dtype {out.dtype}, expected {dtype}"
    assert out.shape == ref.shape, f"{what}: output shape {out.shape}, expected {ref.shape}"
    msg = describe_mismatch(out, ref, labels)
    assert not msg, f"{what}: {msg}"

def _f32_bits(f) -> int:
    return int(np.float32(f).view(np.int32))


def _f32(bits: int) -> np.float32:
    return np.int32(bits).view(np.float32)


def boundary_scale(accepts, lo: float, hi: float) -> np.float32:
    """The float32 scale in [lo, hi] where `accepts` flips (bisection on the float32 bit patterns):
    the smallest accepted one if `accepts(hi)`, else the largest accepted one."""
    a, b = _f32_bits(lo), _f32_bits(hi)
    hi_ok = accepts(_f32(b))
    assert accepts(_f32(a)) != hi_ok
    while b - a > 1:
        mid = (a + b) // 2
        if accepts(_f32(mid)) == hi_ok:
            b = mid
        else:
            a = mid
    return _f32(b if hi_ok else a)
