"""Small helpers to wrap `ibert.*` calls into a Relax function, compile it and run it (tests, demo)."""

from __future__ import annotations

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
    mod = relax.transform.LegalizeOps()(mod)
    exe = tvm.compile(mod, target=target)
    vm = relax.VirtualMachine(exe, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in inputs]).numpy()
