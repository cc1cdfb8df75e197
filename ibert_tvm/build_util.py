"""Small helpers to wrap `ibert.*` calls into a Relax function, compile it and run it (tests, demo)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax


def single_op_module(build: Callable[..., relax.Expr], inputs: dict[str, np.ndarray]) -> tvm.IRModule:
    """A module whose `main` takes one parameter per input array and returns `build(*params)`."""
    params = [relax.Var(name, relax.TensorType(arr.shape, str(arr.dtype))) for name, arr in inputs.items()]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(*params))
        bb.emit_func_output(out)
    return bb.get()


def compile_and_run(mod: tvm.IRModule, inputs: list[np.ndarray], target: str = "llvm") -> np.ndarray:
    """Legalize the ibert ops, compile for a CPU target and run `main` on numpy inputs."""
    vm, _ = compile_vm(mod, target)
    return vm["main"](*[tvm.runtime.tensor(a) for a in inputs]).numpy()


def compile_vm(mod: tvm.IRModule, target: str = "llvm") -> tuple[relax.VirtualMachine, float]:
    """Legalize, compile for a CPU target and load into a Relax VM; returns (vm, compile seconds)."""
    t0 = time.perf_counter()
    exe = tvm.compile(relax.transform.LegalizeOps()(mod), target=target)
    return relax.VirtualMachine(exe, tvm.cpu()), time.perf_counter() - t0


def host_vm(mod: tvm.IRModule, integer_only: bool = True) -> tuple[relax.VirtualMachine, float]:
    """`mod` through the project pipeline and default schedules for this CPU (its int8 features detected),
    loaded into a Relax VM; returns (vm, compile seconds). `integer_only=False` lets float through (Q8BERT)."""
    from .relay_passes.pipeline import build  # lazily: the pipeline imports the schedules
    from .targets import resolve_target

    t0 = time.perf_counter()
    exe = build(mod, resolve_target("llvm").target, integer_only=integer_only)
    return relax.VirtualMachine(exe, tvm.cpu()), time.perf_counter() - t0


def run_timed(fn: Callable, args: list, repeats: int) -> tuple[object, float]:
    """Call `fn(*args)` once for its result, then `repeats` more times; returns (result, median ms)."""
    result = fn(*args)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return result, 1e3 * float(np.median(times))
