"""`shared_workloads.workload_key`: kernels that differ only in the integer constants of their stored values
share a key (and so a tuning record); a difference in an index, a bound, a shape or a dtype does not; and
`key_scheme`, the fingerprint of the key itself that databases record."""

from __future__ import annotations

import json

import pytest
import tvm
import tvm_ffi
from tvm.script import tirx as T

from ibert_tvm import shared_workloads
from ibert_tvm.shared_workloads import _masked_hash, kernel_module, key_scheme, workload_key


def _scaled(multiplier: int, shift: int, offset: int = 0, rows: int = 16) -> tvm.IRModule:
    """out[i] = (x[i + offset] * multiplier) >> shift, as a requantize epilogue stores it."""

    @T.prim_func(s_tir=True)
    def main(x: T.Buffer((rows + 1,), "int64"), out: T.Buffer((rows,), "int64")) -> None:
        for i in range(rows):
            with T.sblock("scale"):
                vi = T.axis.remap("S", [i])
                out[vi] = T.shift_right(x[vi + T.int64(offset)] * T.int64(multiplier), T.int64(shift))

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


def _row_sum(init: int) -> tvm.IRModule:
    """out[i] = init + sum_k x[i, k], the init in the reduction block's `T.init()`."""

    @T.prim_func(s_tir=True)
    def main(x: T.Buffer((16, 64), "int32"), out: T.Buffer((16,), "int32")) -> None:
        for i, k in T.grid(16, 64):
            with T.sblock("acc"):
                vi, vk = T.axis.remap("SR", [i, k])
                with T.init():
                    out[vi] = T.int32(init)
                out[vi] = out[vi] + x[vi, vk]

    return kernel_module(main)


def test_a_reduction_init_is_structure():
    """The init is the reducer's identity, which rfactor and tensorize match on: a trace that rfactors the
    sum from 0 fails on the sum from 5, so the two must not share a record."""
    assert workload_key(_row_sum(0)) != workload_key(_row_sum(5))


def test_the_key_is_the_same_however_the_graph_shares_its_immediates():
    """An immediate object that sits both in an index and in a stored value (TVM may share it) is masked
    where it is a value and kept where it is an index: the key depends on structure, not on sharing."""
    mod = _scaled(3, 5, offset=3)
    graph = json.loads(tvm.ir.save_json(mod))
    nodes = graph["nodes"]
    threes = [i for i, n in enumerate(nodes) if n["type"] == "ir.IntImm" and nodes[n["data"]["value"]]["data"] == 3]
    first, second = threes[0], threes[1]  # the index offset's 3 and the multiplier's 3: one object below
    for node in nodes:
        data = node.get("data")
        if isinstance(data, dict) and node["type"] not in ("int", "ffi.String"):
            node["data"] = {k: first if k != "span" and v == second else v for k, v in data.items()}
        elif isinstance(data, list) and node["type"] == "ffi.Array":
            node["data"] = [first if v == second else v for v in data]
    shared = tvm.ir.load_json(json.dumps(graph))
    assert tvm_ffi.structural_equal(mod, shared)
    assert _masked_hash(shared) == _masked_hash(mod) == _masked_hash(_scaled(7, 2, offset=3))


@pytest.mark.parametrize("change", ["immediates kept", "indices masked"])
def test_key_scheme_follows_what_a_key_masks(monkeypatch, change):
    """A database records `key_scheme` and is refused under another: it changes when the masking masks less
    (integer immediates of values kept) or more (index offsets masked too), and not from run to run."""
    before = key_scheme()
    assert key_scheme() == before
    monkeypatch.setattr(shared_workloads, "_KEYS", {})  # workload_key's memo holds the keys of the old masking
    if change == "immediates kept":
        monkeypatch.setattr(shared_workloads, "_LEAVES", shared_workloads._LEAVES | {"ir.IntImm"})
    else:
        monkeypatch.setattr(shared_workloads, "_STRUCTURE_FIELDS", shared_workloads._STRUCTURE_FIELDS - {"indices"})
    assert key_scheme() != before
