"""TE computes of the integer GEMMs in the operand layouts of x86's VNNI dot products (not a pass).

`vpdpbusd` adds, per int32 lane, four u8 x s8 products; `vpdpwssd` two s16 x s16 products. Both read one
operand as a broadcast group (4 bytes / 2 words of a row of A) and the other as a `lanes`-wide vector of
such groups (one per output column). So B is packed `[..., N/lanes, K/group, lanes, group]` and the
accumulation indexes it as `packed[..., n // lanes, k // group, n % lanes, k % group]`, which the schedule
splits into a tensorized `lanes x group` step. Padding (N to a multiple of `lanes`, K of `group`) is zeros
in both operands, so padded products add nothing; padded output columns are dropped.

Shapes are int64 throughout, as Relax types carry them (FuseTIR compares buffer types exactly).
Used by `shift_activations_u8.py` (u8 x s8), `pack_probabilities_i16.py` (s16 x s16) and, on AVX2 without
VNNI, `widen_activations_i16.py` (s16 x s8: `vpmaddwd` on int16 pairs, the int8 operand packed in pairs).
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import te, tirx

__all__ = ["SHIFT", "U8_GROUP", "I16_GROUP", "ceil_to", "int64_shape", "linear_i16", "linear_u8", "matmul_i16",
           "matmul_u8"]

U8_GROUP = 4  # u8 x s8 products per int32 lane of vpdpbusd
I16_GROUP = 2  # s16 x s16 products per int32 lane of vpdpwssd
SHIFT = 128  # int8 + 128 -> uint8
#: Block annotation keeping MetaSchedule's AutoInline from folding a stage into the GEMM: inlined, the
#: shifted or padded operand would no longer be a plain load, and the VNNI tensor intrinsic would not match.
_KEEP = {"meta_schedule.inline_rule": "disable"}


def int64_shape(shape) -> list[tirx.IntImm]:
    """A static shape with int64 dims."""
    return [tirx.IntImm("int64", int(d)) for d in shape]


def ceil_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _reduce(extent: int, name: str) -> tirx.IterVar:
    return te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", extent)), name=name)


def _operand(x: te.Tensor, k_pad: int, value: Callable, dtype: str, name: str) -> te.Tensor:
    """value(x) in `dtype` over x's last axis, zero-padded to `k_pad`: a packed GEMM's activation operand."""
    k_in = int(x.shape[-1])

    def at(*i):
        v = value(x[i])
        return v if k_pad == k_in else tirx.if_then_else(i[-1] < k_in, v, tirx.const(0, dtype))

    return te.compute(list(x.shape[:-1]) + int64_shape([k_pad]), at, name=name, attrs=_KEEP)


def _shifted_u8(x: te.Tensor, k_pad: int) -> te.Tensor:
    """u8(x + 128) over x's last axis, zero-padded to `k_pad` (the activation operand of vpdpbusd)."""
    return _operand(x, k_pad, lambda v: (v.astype("int32") + SHIFT).astype("uint8"), "uint8", "x_u8")


def _as_i16(a: te.Tensor, k_pad: int, name: str) -> te.Tensor:
    """a as int16 over its last axis zero-padded to `k_pad`; `a` itself where it already is both."""
    if a.dtype == "int16" and k_pad == int(a.shape[-1]):
        return a
    return _operand(a, k_pad, lambda v: v.astype("int16"), "int16", name)


def _packed(b_at: Callable, batch: list, n: int, k: int, lanes: int, group: int, dtype: str) -> te.Tensor:
    """B packed [*batch, N/lanes, K/group, lanes, group] in `dtype`, zero-padded; `b_at(batch, col, k)`."""
    shape = batch + int64_shape([ceil_to(n, lanes) // lanes, ceil_to(k, group) // group, lanes, group])

    def pack(*i):
        col, row = i[-4] * lanes + i[-2], i[-3] * group + i[-1]
        value = b_at(i[:-4], col, row).astype(dtype)
        if ceil_to(n, lanes) == n and ceil_to(k, group) == k:
            return value
        return tirx.if_then_else(tirx.all(col < n, row < k), value, tirx.const(0, dtype))

    return te.compute(shape, pack, name="b_packed", attrs=_KEEP)


def _packed_gemm(a: te.Tensor, packed: te.Tensor, name: str) -> te.Tensor:
    """acc[..., m, n] = sum_k int32(a[..., m, k]) * int32(packed[batch..., n//lanes, k//group, n%lanes, k%group])
    over the padded N and K (`packed` has a's batch dims, or none for a weight shared by all rows)."""
    blocks, groups, lanes, group = (int(d) for d in packed.shape[-4:])
    k = _reduce(groups * group, "k")
    batch_rank = len(packed.shape) - 4

    def mac(*i):
        batch = i[len(i) - 2 - batch_rank:-2] if batch_rank else ()
        w = packed[(*batch, i[-1] // lanes, k // group, i[-1] % lanes, k % group)]
        return te.sum(a[(*i[:-1], k)].astype("int32") * w.astype("int32"), axis=k)

    return te.compute(list(a.shape[:-1]) + int64_shape([blocks * lanes]), mac, name=name)


def _columns(acc: te.Tensor, n: int, value: Callable, name: str) -> te.Tensor:
    """out[..., n] = value(acc index) over the first `n` (unpadded) columns of `acc`."""
    return te.compute(list(acc.shape[:-1]) + int64_shape([n]), value, name=name)


def _linear(operand: te.Tensor, w_packed: te.Tensor, bias: te.Tensor, n_out: int) -> te.Tensor:
    """acc = operand x the packed weight, then `acc_bias` = acc + bias over the first `n_out` columns."""
    acc = _packed_gemm(operand, w_packed, "acc")
    return _columns(acc, n_out, lambda *i: acc[i] + bias[i[-1]], "acc_bias")


def linear_u8(x: te.Tensor, w_packed: te.Tensor, bias: te.Tensor, n_out: int) -> te.Tensor:
    """int8 x [..., K] x a weight packed for vpdpbusd -> int32 [..., N] + bias (the compensated bias).

    Stages: `x_u8` (the +128 shift), `acc` (u8 x s8), `acc_bias` (+ bias, padded columns dropped).
    """
    groups, group = int(w_packed.shape[1]), int(w_packed.shape[3])
    return _linear(_shifted_u8(x, groups * group), w_packed, bias, n_out)


def _operand_b(b: te.Tensor, transpose_b: bool) -> tuple[Callable, int, int]:
    """(b_at(batch, col, k), N, K) for a matmul's B laid out [..., K, N] or, transposed, [..., N, K]."""
    if transpose_b:
        return (lambda batch, col, row: b[(*batch, col, row)]), int(b.shape[-2]), int(b.shape[-1])
    return (lambda batch, col, row: b[(*batch, row, col)]), int(b.shape[-1]), int(b.shape[-2])


def matmul_u8(a: te.Tensor, b: te.Tensor, transpose_b: bool, lanes: int) -> te.Tensor:
    """int8 a [..., M, K] x int8 b -> int32 [..., M, N] through vpdpbusd, exactly.

    sum_k a b = sum_k (a + 128) b - 128 sum_k b, and the last term is one more row of the same GEMM: A
    gets a row M of all 128s, so acc[M, n] = 128 sum_k b[n, k]. Stages `x_u8` (M + 1 rows), `b_packed`,
    `acc`, `b_comp` (-acc[M, n]: its own stage, so that the schedule's region analysis sees two plain
    reads) and `matmul` (acc[m, n] + b_comp[n]). The correction is thus computed by the tile that uses it
    (a separate column-sum stage would have to run before every tile's epilogue, which a per-tile
    schedule cannot express); it costs 1/M more MACs.
    """
    b_at, n, k = _operand_b(b, transpose_b)
    *batch, m, _ = a.shape
    rows = int(m)
    k_pad = ceil_to(k, U8_GROUP)

    def shifted(*i):
        inside = tirx.all(i[-2] < rows, i[-1] < k) if k_pad != k else i[-2] < rows
        return tirx.if_then_else(inside, (a[i].astype("int32") + SHIFT).astype("uint8"), tirx.const(SHIFT, "uint8"))

    x_u8 = te.compute(list(batch) + int64_shape([rows + 1, k_pad]), shifted, name="x_u8", attrs=_KEEP)
    acc = _packed_gemm(x_u8, _packed(b_at, list(batch), n, k, lanes, U8_GROUP, "int8"), "acc")
    b_comp = te.compute(list(batch) + int64_shape([n]), lambda *i: -acc[(*i[:-1], tirx.IntImm("int64", rows), i[-1])],
                        name="b_comp")
    return te.compute(list(batch) + int64_shape([rows, n]), lambda *i: acc[i] + b_comp[(*i[:-2], i[-1])],
                      name="matmul")


def linear_i16(x: te.Tensor, w_packed: te.Tensor, bias: te.Tensor, n_out: int) -> te.Tensor:
    """int8 x [..., K] x an int8 weight packed in pairs [N/lanes, K/2, lanes, 2] -> int32 [..., N] + bias:
    AVX2's `vpmaddwd` form (x widened to int16, the weight sign-extended in the step), exact without any
    compensation. Stages: `x_i16`, `acc`, `acc_bias` (+ bias, padded columns dropped)."""
    groups, group = int(w_packed.shape[1]), int(w_packed.shape[3])
    return _linear(_as_i16(x, groups * group, "x_i16"), w_packed, bias, n_out)


def matmul_i16(a: te.Tensor, b: te.Tensor, transpose_b: bool, lanes: int, b_dtype: str = "int16") -> te.Tensor:
    """int16 (or int8, widened) a [..., M, K] x int8 b -> int32 [..., M, N], exactly, b packed in pairs as
    `b_dtype`: int16 for vpdpwssd (P V on VNNI), int8 for AVX2's `vpmaddwd` step (sign-extended there).

    Stages: `a_i16` (when a is int8 or K is odd), `b_packed`, `acc`, and `matmul` where N needs padding.
    """
    b_at, n, k = _operand_b(b, transpose_b)
    batch = list(a.shape[:-2])
    packed = _packed(b_at, batch, n, k, lanes, I16_GROUP, b_dtype)
    acc = _packed_gemm(_as_i16(a, ceil_to(k, I16_GROUP), "a_i16"), packed, "acc" if ceil_to(n, lanes) != n else "matmul")
    return acc if ceil_to(n, lanes) == n else _columns(acc, n, lambda *i: acc[i], "matmul")
