"""Drop requantizations that map every value of their input dtype to itself.

    y = ibert.requantize(x, M, E, bits)   with x int8 (or int16), bits the same width, no residual
    ->  y = x                             when clamp(rne(k M / 2^E)) == k for every k the dtype holds

The reference model quantizes some activations twice in a row (BERT's FFN: `output_activation` then
`pre_output_act`, both 8-bit, whose calibrated scales differ by a few parts in 10^4). The second one is then
the identity on all 256 (or 65536) inputs, checked exhaustively per channel against the constants, so the
integers are the same and a whole elementwise stage (an int64 product per element) leaves the kernel.
Runs on the `ibert.*` ops, before legalization.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ibert_tvm.ops.requantize import requantize_dtype

__all__ = ["DropIdentityRequantize", "is_identity"]

_REQUANTIZE = tvm.ir.Op.get("ibert.requantize")
_WIDTH = {"int8": 8, "int16": 16}


def is_identity(multiplier: np.ndarray, shift: np.ndarray, bits: int) -> bool:
    """Whether clamp(round_half_even(k M / 2^E), `bits`) == k for every k of a `bits`-wide integer and every
    channel's (M, E), checked once per distinct pair (so 2^16 values at a time for int16, whatever the channel
    count). |k M| <= 2^46 and E <= 62 keep the int64 arithmetic exact."""
    k = np.arange(-(1 << (bits - 1)), 1 << (bits - 1), dtype=np.int64)
    ms, es = np.broadcast_arrays(np.atleast_1d(multiplier), np.atleast_1d(shift))
    pairs = set(zip(ms.astype(np.int64).tolist(), es.astype(np.int64).tolist()))
    for m, e in pairs:
        if abs(m) > 1 << 31 or not 0 <= e <= 62:
            return False
        unit = np.int64(1 << e)
        q, r = np.divmod(k * m, unit)
        rounded = q + ((2 * r > unit) | ((2 * r == unit) & (q % 2 == 1)))
        if not np.array_equal(np.clip(rounded, k[0], k[-1]), k):
            return False
    return True


def _identity_call(call: relax.Expr) -> bool:
    if not (isinstance(call, relax.Call) and call.op.same_as(_REQUANTIZE) and len(call.args) == 3):
        return False
    dtype = str(call.args[0].ty.dtype)
    bits = _WIDTH.get(dtype)
    consts = [a.value.numpy() if isinstance(a, tvm.ir.GenericConst) else None for a in call.args[1:]]
    return (bits is not None and requantize_dtype(int(call.attrs["bits"])) == dtype
            and all(c is not None for c in consts) and is_identity(*consts, bits))


@relax.expr_functor.mutator
class _Dropper(relax.PyExprMutator):
    """Bind each identity requantize's output var to its (already rewritten) input, an alias that
    CanonicalizeBindings then removes (also where the var leaves a dataflow block)."""

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if not _identity_call(binding.value):
            return super().visit_var_binding_(binding)
        self.builder_.emit_normalized(relax.VarBinding(binding.var, self.visit_expr(binding.value.args[0])))


@tvm.transform.module_pass(opt_level=0, name="DropIdentityRequantize")
class DropIdentityRequantize:
    """Replace every requantize that is the identity on its whole input dtype by its input."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {gvar: _Dropper(mod).visit_expr(func) for gvar, func in mod.functions_items()
                   if isinstance(func, relax.Function)}
        mod = mod.clone()
        for gvar, func in updates.items():
            mod[gvar] = func
        return relax.transform.CanonicalizeBindings()(mod)
