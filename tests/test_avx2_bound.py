"""bench/avx2_bound.py's pair counts: its rule for a weight pair that a saturating `vpmaddubsw` may not take
exactly agrees with the pair sums themselves, and a group counts as fixed-up work only when no pairing of
its 4 bytes is safe in every column of its block."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import avx2_bound  # noqa: E402  (bench/ is not a package)

INT16_MAX = 2 ** 15 - 1


def test_unsafe_pairs_are_those_whose_sum_can_leave_int16():
    """Every weight pair in [-127, 126]^2 (I-BERT's int8 range); u0 w0 + u1 w1 is linear in (u0, u1), so its
    extremes over u in [0, 255]^2 lie at the corners."""
    w0, w1 = (a.ravel() for a in np.meshgrid(np.arange(-127, 127), np.arange(-127, 127)))
    sums = np.stack([u0 * w0 + u1 * w1 for u0, u1 in itertools.product((0, 255), repeat=2)])
    overflows = (sums > INT16_MAX) | (sums < -INT16_MAX - 1)
    rule = avx2_bound._unsafe(np.stack([w0, w1], axis=-1), 0, 1)
    np.testing.assert_array_equal(rule, overflows.any(0))
    assert rule.any() and not rule.all()


def test_a_group_needs_fixing_only_when_all_three_pairings_fail():
    w = np.zeros((8, 12), np.int8)
    w[3, 0:2] = 100  # group 0: bytes 0, 1 unsafe together in column 3; pairing (0, 2), (1, 3) is safe
    w[5, 4:8] = [100, 100, -100, 100]  # group 1: 3 same-sign bytes in column 5, every pairing meets two
    pairs, blocks, none_safe = avx2_bound.pair_stats(w)
    assert none_safe.tolist() == [[False, True, False]]
    # Unsafe pairs (bytes 0-1, 2-3): group 0's (0, 1) in column 3; group 1's (0, 1) in column 5.
    assert pairs == 2 / (8 * 3 * 2)
    assert blocks == 2 / (3 * 2)
