"""What exactness costs on AVX2-only hosts: the integer program with ONNX Runtime's saturating step, and how
many weight pairs an exact form of that step would have to fix up.

    .venv/bin/python bench/avx2_bound.py time --shape 1x128
    .venv/bin/python bench/avx2_bound.py pairs

`time` builds BERT-base for `x86-avx2` twice and times both alternately: as shipped (exact: s16 activations x
sign-extended s8 weights, `vpmaddwd` + `vpaddd` per 16 multiply-adds), and with the VNNI packing (u8
activations, s8 weights in groups of 4) driven by ONNX Runtime's AVX2 step (`vpmaddubsw` + `vpmaddwd` with
ones + `vpaddd` per 32), whose u8 x s8 pair sums saturate at 2^15: its integers are NOT the model's (the script
prints how far they are off). Its register tile follows the exact build's rules with 2 registers left for the
step's product and ones (4 x 2 for BERT's shapes, as the exact build's). It bounds what the exact form
forgoes; it is not a build anyone should ship.

`pairs` counts, over the linear layers' int8 weights (BERT-base as `bench_peers.py` seeds it, and the real
MiniLM), the pairs the saturating step cannot take exactly: for u8 activations in [0, 255] the pair sum
u0 w0 + u1 w1 stays within int16 for any activations unless w0, w1 have the same sign and |w0| + |w1| > 128.
An exact fast path would fix those up: per 8-column block (one ymm of outputs) and per group of 4 k, the
best of the three pairings of the group's bytes leaves the groups in which all three fail.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from bench_peers import ibert_compiled, inputs, load_model
from ibert_tvm.latency import time_calls
from ibert_tvm.quant import quantize_linear
from ibert_tvm.schedules import x86
from ibert_tvm.threads import configure_threads

PAIRINGS = (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2)))
SATURATING_TEMPORARIES = 2  # registers of the step besides the tile's: its product and its vector of ones


def _saturating_u8s8_step():
    """ONNX Runtime's AVX2 u8 x s8 step for 8 int32 lanes x 4 bytes (`vpmaddubsw` pair sums saturate)."""

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((8, 4), "int8", offset_factor=1),
             c: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:8], a[0:4], b[0:8, 0:4])
            T.writes(c[0:8])
            aw = T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"), 8),
                               dtype="int8x32")
            pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), aw,
                                            b.vload([0, 0], dtype="int8x32"), dtype="int16x16")
            c[T.ramp(T.int32(0), 1, 8)] = c.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs, T.broadcast(T.int16(1), 16),
                dtype="int32x8")

    return x86._dot_desc(8, 4, "uint8", "int8"), impl


def time_saturating(shape: str, rounds: int) -> None:
    """Median ms of the exact `x86-avx2` build and of the saturating one, timed alternately."""
    configure_threads()
    batch, seq = map(int, shape.split("x"))
    model = load_model("bert-base")
    ids, mask = inputs(model, batch, seq)
    mask = mask.astype(np.int32)
    exact = ibert_compiled(model, batch, seq, False, "x86-avx2").runner()
    # The AVX-VNNI ymm path (u8 packing, 8 lanes) with its two VNNI steps replaced, built for AVX2 only.
    x86.vnni_lanes = lambda target, lanes=x86.vnni_lanes: 8 if "avx2" in x86.int8_features(target) else lanes(target)
    tile = x86._register_tile  # the exact build's tile rules, with the saturating step's two temporaries
    x86._register_tile = lambda dims, blocks, registers, *_: tile(dims, blocks, registers, SATURATING_TEMPORARIES,
                                                                  x86.AVX2_PREFERRED_ROWS)
    (u8s8, _, _, _), (s16, _, _, _) = x86.VNNI_INTRINSICS[(8, 4)], x86.VNNI_INTRINSICS[(8, 2)]
    TensorIntrin.register(u8s8, *_saturating_u8s8_step(), override=True)
    TensorIntrin.register(s16, *x86._avx2_intrinsic("int16"), override=True)  # the exact s16 x s16 step
    saturating = ibert_compiled(model, batch, seq, False, "x86-avx2").runner()
    a, b = (np.asarray(f(ids, mask, integer=True), np.int64) for f in (exact, saturating))
    print(f"saturating build: {np.mean(a != b):.1%} of the outputs differ from the exact ones, "
          f"by up to {np.abs(a - b).max()}")
    times = {"exact": [], "saturating": []}
    for _ in range(rounds):
        for name, f in (("exact", exact), ("saturating", saturating)):
            times[name].append(np.median(time_calls(lambda f=f: f(ids, mask, integer=True), 3, 10, 1.0)))
    for name, t in times.items():
        print(f"BERT-base {shape} x86-avx2 {name:10s} {np.median(t):7.2f} ms (median of {rounds} rounds)")


def _unsafe(w: np.ndarray, i: int, j: int) -> np.ndarray:
    """Where bytes i, j of each 4-group of `w` [..., 4] may saturate a `vpmaddubsw` pair for u8 in [0, 255]."""
    return (w[..., i] * w[..., j] > 0) & (np.abs(w[..., i]) + np.abs(w[..., j]) > 128)


def pair_stats(w: np.ndarray) -> tuple[float, float, np.ndarray]:
    """For int8 weights `w` [N, K] (N % 8 == 0, K % 4 == 0): the share of unsafe pairs (bytes 0-1 and 2-3 of
    each 4-group), the share of (8-column block, pair) holding one, and per (block, 4-group) whether none of
    the three pairings of the group's bytes is safe in all 8 columns."""
    n, k = w.shape
    g = w.astype(np.int32).reshape(n // 8, 8, k // 4, 4)  # block, lane, group, byte
    low, high = _unsafe(g, 0, 1), _unsafe(g, 2, 3)
    none_safe = np.stack([(_unsafe(g, *p) | _unsafe(g, *q)).any(1) for p, q in PAIRINGS]).all(0)
    return (low.mean() + high.mean()) / 2, (low.any(1).mean() + high.any(1).mean()) / 2, none_safe


def count_pairs() -> None:
    """Per model, averaged over its linear layers: `pair_stats`, and the most groups without a safe pairing
    in one block."""
    for name in ("bert-base", "minilm"):
        stats = [pair_stats(quantize_linear(m.weight.detach().numpy(), None, 1.0).weight)
                 for m in load_model(name).modules() if isinstance(m, torch.nn.Linear)]
        pairs, blocks = (np.mean([s[i] for s in stats]) for i in (0, 1))
        groups, worst = np.mean([s[2].mean() for s in stats]), max(s[2].mean(1).max() for s in stats)
        print(f"{name}: {pairs:.1%} of weight pairs unsafe; {blocks:.1%} of (8-column block, pair) hold one; "
              f"{groups:.1%} of (block, 4-group) have no safe pairing of the three (at most {worst:.1%} of "
              f"one block's groups)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    timing = sub.add_parser("time", help="the exact and the saturating x86-avx2 builds, timed alternately")
    timing.add_argument("--shape", default="1x128", help="BATCHxSEQ")
    timing.add_argument("--rounds", type=int, default=8)
    sub.add_parser("pairs", help="weight pairs an exact vpmaddubsw step would have to fix up")
    args = parser.parse_args()
    if args.what == "time":
        time_saturating(args.shape, args.rounds)
    else:
        count_pairs()
    return 0


if __name__ == "__main__":
    sys.exit(main())
