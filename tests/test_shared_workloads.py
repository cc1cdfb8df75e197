"""`shared_workloads.workload_key`: kernels that differ only in the integer constants of their stored values
share a key (and so a tuning record); a difference in an index, a bound, a shape or a dtype does not."""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm.script import tirx as T

from ibert_tvm.shared_workloads import kernel_module, workload_key


def _scaled(multiplier: int, shift: int, offset: int = 0, rows: int = 16) -> tvm.IRModule:
    """out[i] = (x[i + offset] * multiplier) >> shift, as a requantize epilogue stores it."""

    @T.prim_func(s_tir=True)
    def main(x: T.Buffer((rows + 1,), "int64"), out: T.Buffer((rows,), "int64")) -> None:
        for i in range(rows):
            with T.sblock("scale"):
                vi = T.axis.remap("S", [i])
                out[vi] = T.shift_right(x[vi + offset] * T.int64(multiplier), T.int64(shift))

    return kernel_module(main)


def test_constants_of_stored_values_do_not_change_the_key():
    a, b = _scaled(1 << 30, 40), _scaled(1533331, 31)
    assert not tvm_ffi.structural_equal(a, b)
    assert workload_key(a) == workload_key(b)


def test_indices_and_bounds_change_the_key():
    base = workload_key(_scaled(3, 1, offset=1))
    assert workload_key(_scaled(5, 2, offset=1)) == base
    assert workload_key(_scaled(3, 1, offset=2)) != base  # another element read (an immediate in an index)
    assert workload_key(_scaled(3, 1, offset=1, rows=32)) != base  # another loop bound and buffer shape


def test_the_key_leaves_the_kernel_as_it_was():
    mod = _scaled(7, 2)
    before = mod.script()
    workload_key(mod)
    assert mod.script() == before and "T.int64(7)" in before
