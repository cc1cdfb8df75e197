"""`DropIdentityRequantize` (relay_passes/drop_identity_requantize.py): a requantize that maps every value of its
int8 / int16 input dtype to itself is removed, with identical integers; any other requantize stays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import relax

from ibert_tvm import ops
from ibert_tvm.relay_passes.drop_identity_requantize import DropIdentityRequantize, is_identity

from op_harness import REQUANT

from test_fuse_sibling_linears import _count, _run

ONE = (1 << 30, 30)  # M / 2^E = 1 exactly
NEAR_ONE = (2147251030, 31)  # 0.99989: the FFN's second 8-bit QuantAct in BERT-base


def _exhaustive(m: np.ndarray, e: np.ndarray, bits: int) -> bool:
    """is_identity from the exact Python-integer requantize reference (an independent derivation)."""
    k = np.arange(-(1 << (bits - 1)), 1 << (bits - 1), dtype=np.int64)[:, None].repeat(np.size(m), axis=1)
    return bool(np.all(REQUANT.reference(k, m, e, bits) == k))


TIE = 2139095040  # 127.5 / 128 * 2^31: -128 maps to -127.5 exactly, which rounds to the even -128


@pytest.mark.parametrize("m, e, expected", [
    (*ONE, True), (*NEAR_ONE, True),
    (TIE, 31, True), (TIE - 1, 31, False),  # one unit less: -128 -> -127.4999.. -> -127
    (((1 << 30) * 101) // 100, 30, False),  # 1.01: 60 -> 60.6 -> 61
    (((1 << 30) * 10039) // 10000, 30, True),  # 1.0039: below 1 + 0.5 / 126 (126 -> 126.49); 127 up clamp
    (1 << 29, 30, False), (0, 0, False)])
def test_is_identity_matches_the_exact_reference(m, e, expected):
    assert is_identity(np.array(m), np.array(e), 8) == expected
    assert _exhaustive(np.array([m]), np.array([e]), 8) == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers((1 << 30) - (1 << 24), (1 << 31)), st.integers(29, 32)), min_size=1,
                max_size=4), st.sampled_from([8, 16]))
def test_is_identity_hypothesis(pairs, bits):
    """Multipliers near one (where identity and non-identity neighbour each other), per channel, both widths."""
    m, e = (np.array(v, np.int64) for v in zip(*pairs))
    assert is_identity(m, e, bits) == _exhaustive(m, e, bits)


def _chain(m, e, x_dtype: str = "int8", bits: int = 8, residual: bool = False, as_output: bool = False):
    """main(x, r) = requantize(requantize(x, M, E) ...): the candidate either feeds one more requantize (a
    plain non-identity one) or is the function's output itself."""
    x = relax.Var("x", relax.TensorType((3, 6), x_dtype))
    r = relax.Var("r", relax.TensorType((3, 6), "int8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, r]):
        with bb.dataflow():
            extra = {"residual": r, "residual_multiplier": 1 << 29, "residual_shift": 30} if residual else {}
            y = bb.emit(ops.requantize(x, m, e, bits=bits, **extra))
            out = bb.emit_output(y if as_output else bb.emit(ops.requantize(y, 3 << 28, 30, bits=bits)))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("as_output", [False, True])
@pytest.mark.parametrize("m, e", [ONE, NEAR_ONE])
def test_identity_requantize_is_dropped_with_identical_integers(m, e, as_output):
    mod = _chain(np.array([m] * 6), np.array([e] * 6), as_output=as_output)
    dropped = DropIdentityRequantize()(mod)
    relax.analysis.well_formed(dropped)  # raises on the first violation
    assert _count(dropped, "ibert.requantize") == _count(mod, "ibert.requantize") - 1
    x = np.arange(-128, 128, 14, dtype=np.int8)[:18].reshape(3, 6)
    r = np.zeros((3, 6), np.int8)
    np.testing.assert_array_equal(_run(dropped, [x, r])[0], _run(mod, [x, r])[0])


@pytest.mark.parametrize("kwargs", [
    dict(m=np.array([1 << 30] * 5 + [(1 << 30) + (1 << 24)]), e=np.array([30] * 6)),  # one channel is not
    dict(m=np.array(1 << 30), e=np.array(30), x_dtype="int32", bits=32),  # an int32 input: 2^32 values, kept
    dict(m=np.array(1 << 30), e=np.array(30), x_dtype="int8", bits=16),  # widens: a cast, not an identity
    dict(m=np.array(1 << 30), e=np.array(30), residual=True),  # adds the residual
])
def test_other_requantizes_stay(kwargs):
    mod = _chain(**kwargs)
    assert _count(DropIdentityRequantize()(mod), "ibert.requantize") == _count(mod, "ibert.requantize")


def test_tiny_bert_drops_the_ffn_double_quantization(tiny_bert):
    """Each layer's `output_activation` -> `pre_output_act` pair leaves one requantize; integers unchanged."""
    mod, inputs, ref = tiny_bert  # conftest.py: ref is the program's unscheduled build without project passes
    dropped = DropIdentityRequantize()(mod)
    assert _count(mod, "ibert.requantize") - _count(dropped, "ibert.requantize") >= 2
    np.testing.assert_array_equal(_run(dropped, inputs)[0], ref)
