"""x86 row reductions (softmax, layernorm): each reduction over the last axis runs as one vector of partial
results per row (rfactor), and the scheduled build keeps the unscheduled integers."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, s_tir, tirx

from ibert_tvm import ops
from ibert_tvm.build_util import single_op_module
from ibert_tvm.relay_passes.pipeline import build, tunable_module
from ibert_tvm.schedules import x86
from ibert_tvm.targets import resolve_target
from test_x86_schedules import SOFTMAX

HOST = resolve_target("llvm").target
RNG = np.random.default_rng(7)


def _softmax(x: relax.Expr) -> relax.Expr:
    return ops.int_softmax(x, SOFTMAX.x0_int, SOFTMAX.b_int, SOFTMAX.c_int, SOFTMAX.exp_multiplier, SOFTMAX.exp_shift)


# Last axes: 128 (every reduction split), 24 (int64 sums in 8s, int32 in 24), 11 (prime: the softmax's int32 max
# and sum each as one vector of 11 partial results; LayerNorm's int64 sums stay scalar).
CASES = {
    "softmax_128": (_softmax, RNG.integers(-300, 300, (2, 3, 4, 128), dtype=np.int32)),
    "softmax_11": (_softmax, RNG.integers(-300, 300, (2, 3, 5, 11), dtype=np.int32)),
    "layernorm_24": (lambda x: ops.int_layernorm(x, np.int64(12345)),
                     RNG.integers(-2**21, 2**21, (3, 7, 24), dtype=np.int32)),
    "layernorm_11": (lambda x: ops.int_layernorm(x, np.int64(12345)),
                     RNG.integers(-2**21, 2**21, (3, 7, 11), dtype=np.int32)),
}


def _vectorized(func: tirx.PrimFunc, names: set[str]) -> set[str]:
    """Those of the block `names` that exist in `func` with their innermost loop vectorized."""
    sch = s_tir.Schedule(func)
    out = set()
    for name in names:
        try:
            block = sch.get_sblock(name)
        except (RuntimeError, ValueError):
            continue
        if sch.get(sch.get_loops(block)[-1]).kind == tirx.ForKind.VECTORIZED:
            out.add(name)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_row_reductions_run_as_vectors_of_partial_results(case):
    make, x = CASES[case]
    mod = single_op_module(make, {"x": x})
    with HOST:
        fused = tunable_module(mod, HOST)
    (func,) = [f for f in fused.functions.values() if isinstance(f, tirx.PrimFunc)]
    scheduled, strategy = x86.schedule_prim_func(func, HOST)
    assert strategy == "rows"
    partial = _vectorized(scheduled, {"row_max_rf", "exp_sum_rf", "row_sum_rf", "row_var_rf"})
    expected = {"softmax_128": {"row_max_rf", "exp_sum_rf"}, "softmax_11": {"row_max_rf", "exp_sum_rf"},
                "layernorm_24": {"row_sum_rf", "row_var_rf"}, "layernorm_11": set()}[case]
    assert expected <= partial, partial
    if case == "layernorm_11":
        assert not partial & {"row_sum_rf", "row_var_rf"}  # int64 sums of 11: no divisor fits 8 lanes
    vm = relax.VirtualMachine(build(mod, HOST), tvm.cpu())
    reference = relax.VirtualMachine(tvm.compile(relax.transform.LegalizeOps()(mod), "llvm"), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(),
                                  reference["main"](tvm.runtime.tensor(x)).numpy())
