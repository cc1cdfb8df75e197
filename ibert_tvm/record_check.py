"""Tuned kernels checked against the untuned program's own integers: a kernel scheduled by a tuning record is
run on the arguments that the untuned program passed that kernel for one input, and must write what it wrote.

Schedule primitives should keep a kernel's results, but a MetaSchedule record of a tiny BERT's attention GEMM
gave wrong integers (2026-12-06). The random arguments that MetaSchedule's runner times candidates on cannot
check them: random shift amounts and multipliers make the integer kernels shift past their width or overflow,
undefined behaviour that two schedules may resolve differently. The program's own arguments are in range.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from .relay_passes import pipeline

if TYPE_CHECKING:
    from .model import QuantizedModel

_RANDOM_DTYPES = ("int8", "uint8", "int16")  # inputs whose every value is valid: drawn over their whole range


@dataclass(frozen=True)
class KernelCall:
    """One call of a kernel in the untuned program: its arguments before and after the call (outputs written)."""

    before: list[Any]
    after: list[Any]


def sample_inputs(model: QuantizedModel | tvm.IRModule, batch: int, seq: int, seed: int = 0
                  ) -> list[np.ndarray] | None:
    """Seeded inputs for the program's `main`: token ids over the vocabulary, the last row's last quarter
    padded and masked (the masked Softmax path too), token types over the model's segments; for an IRModule
    whose inputs are all int8, uint8 or int16, values over their whole range; None for other IRModules (their
    valid values are unknown)."""
    rng = np.random.default_rng(seed)
    if not isinstance(model, tvm.IRModule):
        config = model.ibert.config
        ids = rng.integers(0, config.vocab_size, (batch, seq), dtype=np.int64)
        mask = np.ones((batch, seq), np.int32)
        types = rng.integers(0, config.type_vocab_size, (batch, seq), dtype=np.int32)
        ids[-1, seq - seq // 4:], mask[-1, seq - seq // 4:], types[-1, seq - seq // 4:] = config.pad_token_id, 0, 0
        return [ids, mask, types]
    types = [p.ty for p in model["main"].params] if "main" in model else []
    if not types or not all(isinstance(t, relax.TensorType) and str(t.dtype) in _RANDOM_DTYPES for t in types):
        return None
    return [_full_range(rng, str(t.dtype), [int(d) for d in t.shape.values]) for t in types]


def _full_range(rng: np.random.Generator, dtype: str, shape: list[int]) -> np.ndarray:
    """Seeded integers of `dtype` over its whole range."""
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape, dtype=dtype)


def visit_kernel_calls(mod: tvm.IRModule, target: tvm.target.Target, device: tvm.runtime.Device,
                       inputs: Sequence[np.ndarray], symbols: set[str],
                       visit: Callable[[str, KernelCall], None], integer_only: bool = True) -> None:
    """Build `mod` untuned for `target`, run its `main` on `inputs`, and hand the first call of each kernel
    named in `symbols` to `visit` as soon as it returns (a kernel the run does not call is not visited). One
    call's copies are held at a time: a whole program's, at a large batch x sequence, would be gigabytes."""
    vm = relax.VirtualMachine(pipeline.build(mod, target, integer_only=integer_only), device)
    visited: set[str] = set()
    pending: dict[str, list[Any]] = {}

    def instrument(_func: Any, symbol: str, before_run: bool, _ret: Any, *args: Any) -> int:
        if symbol in symbols and symbol not in visited:
            snapshot = [_host_copy(a) for a in args]  # now: the planner reuses this memory for later calls
            if before_run:
                pending[symbol] = snapshot
            else:
                visited.add(symbol)
                visit(symbol, KernelCall(pending.pop(symbol), snapshot))
        return 0  # VMInstrumentReturnKind.NO_OP

    vm.set_instrument(instrument)
    vm["main"](*[tvm.runtime.tensor(a, device) for a in inputs])


def writes_the_same(kernel: tvm.runtime.Module, call: KernelCall, device: tvm.runtime.Device) -> bool:
    """Whether `kernel` (built from the called kernel's workload, function `main`), given the call's arguments
    as they were before it, leaves every tensor argument as the call left it."""
    args = [tvm.runtime.tensor(a, device) if isinstance(a, np.ndarray) else a for a in call.before]
    kernel["main"](*args)
    return all(np.array_equal(_host_copy(a), b) for a, b in zip(args, call.after) if isinstance(b, np.ndarray))


def _host_copy(value: Any) -> Any:
    """A tensor as a numpy copy on the host; anything else as it is."""
    return value.numpy() if isinstance(value, tvm.runtime.Tensor) else value


def function_fingerprint(mod: tvm.IRModule, name: str) -> str:
    """A fingerprint of Relax function `name` of `mod` as a program to check records on: its body with every
    constant's value, and the functions it calls in the order it calls them, but no function's name. `tune`
    files the records it checked under the fingerprint of the program's `main`; `compile` finds the same one
    for that shape's function of its multi-shape module, and another wherever a weight, a calibrated scale or
    the shape differs."""
    func = mod[name]
    called = [_content_hash(mod[gv]) for gv in relax.analysis.all_global_vars(func) if gv.name_hint != name]
    return hashlib.sha256(" ".join([_content_hash(func), *called]).encode()).hexdigest()[:20]


def _content_hash(func: tvm.ir.BaseFunc) -> str:
    """The structural hash of a function without its symbol, constants hashed by value and the functions it
    names (GlobalVars, otherwise hashed by address) by where they occur."""
    return str(tvm_ffi.structural_hash(func.without_attr("global_symbol"), map_free_vars=True))
