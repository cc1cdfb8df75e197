"""GEMM prefetches (schedules/gemm_prefetch.py, marked by schedules/x86.py): a VNNI linear layer's tasks
prefetch their output lines and, where a column panel has more than one row tile, the next panel's weights,
with the accumulator on the stack; a batched GEMM's row tiles their rows' output lines; AMX tile blocks
nothing; every prefetch address stays inside its buffer for every task and k step (the last tasks clamp to
their own); the results are those of the unscheduled build; the assembly holds `prefetchw` (VNNI targets
carry +prfchw) and the k loop keeps its accumulators in registers."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax, s_tir, tirx
from tvm.sym.analyzer import Analyzer

from ibert_tvm import ops, quant
from ibert_tvm.relay_passes.pipeline import build, tunable_module
from ibert_tvm.schedules import gemm_prefetch, x86
from ibert_tvm.targets import host_cpu_features, resolve_target

VNNI = resolve_target("x86-avx512vnni").target
RUNS_VNNI = pytest.mark.skipif("avx512vnni" not in host_cpu_features(), reason="host CPU has no AVX-512 VNNI")
RNG = np.random.default_rng(11)
WEIGHTS = {n: RNG.integers(-127, 128, (n, 128)).astype(np.int8) for n in (96, 148)}  # 148: padded vectors
BIASES = {n: RNG.integers(-10**5, 10**5, (n,)).astype(np.int32) for n in (96, 148)}
REQ = quant.requant_dyadic(0.003, 0.05)


def _linear_module(rows: int, batch: int = 2, outputs: int = 96) -> tvm.IRModule:
    """x int8 [batch, rows, 128] -> linear -> requantize: one kernel with a per-task epilogue."""
    x = relax.Var("x", relax.TensorType((batch, rows, 128), "int8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(ops.requantize(ops.linear(x, WEIGHTS[outputs], BIASES[outputs]), REQ.multiplier,
                                                REQ.shift))
        bb.emit_func_output(out)
    return bb.get()


def _qk_module() -> tvm.IRModule:
    """Q K^T of 2 heads, 24 queries x 32 keys x 64: a batched GEMM whose tasks run their row tiles in a loop."""
    a = relax.Var("a", relax.TensorType((1, 2, 24, 64), "int8"))
    b = relax.Var("b", relax.TensorType((1, 2, 32, 64), "int8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [a, b]):
        with bb.dataflow():
            out = bb.emit_output(ops.matmul(a, b, transpose_b=True))
        bb.emit_func_output(out)
    return bb.get()


def _qk_kernel() -> tirx.PrimFunc:
    [func] = [f for _, f in tunable_module(_qk_module(), VNNI).functions_items() if isinstance(f, tirx.PrimFunc)]
    scheduled, used = x86.schedule_prim_func(func, VNNI)
    assert used == "vnni_gemm"
    return scheduled


def _linear_kernel(rows: int, batch: int = 2, target: tvm.target.Target = VNNI, strategy: str = "vnni_gemm",
                   outputs: int = 96) -> tirx.PrimFunc:
    """The linear layer's PrimFunc scheduled for `target` (x86-avx512vnni: with its prefetches)."""
    mod = tunable_module(_linear_module(rows, batch, outputs), target)
    [func] = [f for g, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) and "linear" in g.name_hint]
    scheduled, used = x86.schedule_prim_func(func, target)
    assert used == strategy
    return scheduled


def _prefetch_sites(func: tirx.PrimFunc) -> list[tuple[tirx.Call, list[tirx.For], list[tirx.Expr]]]:
    """Every `llvm.prefetch` call, with the loops around it and the conditions of the ifs that guard it."""
    found = []

    def walk(stmt, loops: list[tirx.For], guards: list[tirx.Expr]) -> None:
        if isinstance(stmt, tirx.For):
            walk(stmt.body, [*loops, stmt], guards)
        elif isinstance(stmt, tirx.SeqStmt):
            for s in stmt:
                walk(s, loops, guards)
        elif isinstance(stmt, tirx.IfThenElse):
            walk(stmt.then_case, loops, [*guards, stmt.condition])
        elif isinstance(stmt, s_tir.SBlockRealize):
            walk(stmt.block.body, loops, guards)
        elif isinstance(stmt, tirx.Evaluate) and "prefetch" in str(stmt.value):
            found.append((stmt.value, loops, guards))

    walk(func.body, [], [])
    return found


def _prefetches(func: tirx.PrimFunc) -> list[tuple[tirx.Call, Analyzer, list[tirx.For]]]:
    """Every `llvm.prefetch` call with an analyzer that knows the ranges of the loops around it, and those."""
    found = []
    for call, loops, _ in _prefetch_sites(func):
        analyzer = Analyzer()
        for loop in loops:
            analyzer.bind(loop.loop_var, tvm.ir.Range.from_min_extent(loop.min, loop.extent))
        found.append((call, analyzer, loops))
    return found


def _kinds(func: tirx.PrimFunc) -> dict[str, int]:
    """Prefetch calls by kind: 'write' (rw = 1) and 'read'."""
    kinds = {"write": 0, "read": 0}
    for call, _, _ in _prefetches(func):
        kinds["write" if int(call.args[-3]) == 1 else "read"] += 1
    return kinds


@pytest.fixture(scope="module")
def few_row_tiles() -> tirx.PrimFunc:
    return _linear_kernel(32)  # 4 row tiles of 8 per column panel (per sequence)


def test_few_row_tiles_prefetch_outputs_and_the_next_panels_weights(few_row_tiles):
    kinds = _kinds(few_row_tiles)
    assert kinds["write"] > 0 and kinds["read"] > 0
    assert gemm_prefetch.WEIGHTS not in few_row_tiles.script()  # the marks are consumed


def _at_task(call: tirx.Call, loops: list[tirx.For], task: tirx.For, value: int) -> list[int]:
    """The prefetched element's indices with the task loop at `value` and every other loop at its start."""
    values = {loop.loop_var: loop.min for loop in loops}
    values[task.loop_var] = tirx.const(value, "int64")
    indices = tvm_ffi.structural_map(list(call.args[-4].args[0].indices),
                                     (tirx.Var, lambda var: values.get(var, var)), order="post")
    return [int(Analyzer().simplify(i)) for i in indices]


def test_prefetches_ask_for_the_task_ahead_and_the_next_panel(few_row_tiles):
    """The 2 x 32 x 96 layer: tasks are (sequence, column tile of 48, row tile of 8), row tiles inner.
    Task 0's output prefetches are the rows of task OUTPUT_PREFETCH_TASKS (row tile 2: rows 16-23) in column
    tile 0; panel 0's weight prefetches are the next panel's column blocks 3-5, not its own 0-2."""
    calls = _prefetches(few_row_tiles)
    task = next(loop for loop in calls[0][2] if loop.kind == tirx.ForKind.PARALLEL)
    blocks = set()
    for call, _, loops in calls:
        if int(call.args[-3]) == 1:  # output [sequence, row, column]
            sequence, row, column = _at_task(call, loops, task, 0)
            assert (sequence, row // 8, column // 48) == (0, x86.OUTPUT_PREFETCH_TASKS, 0)
        else:  # weight [column block, k, lane, group]; each block's prefetch runs in one row tile (its guard)
            blocks.add(_at_task(call, loops, task, 1)[0])
    assert blocks == {3, 4, 5}


def test_one_row_tile_per_panel_prefetches_only_outputs():  # no other row tile to share the next panel with
    kinds = _kinds(_linear_kernel(8))
    assert kinds["write"] > 0 and kinds["read"] == 0


def test_amx_tile_blocks_prefetch_nothing():  # measured slower with the output prefetches
    assert _kinds(_linear_kernel(32, target=resolve_target("x86-amx").target, strategy="amx_gemm")) == \
        {"write": 0, "read": 0}


def test_batched_gemm_row_tiles_prefetch_their_output_rows():
    kernel = _qk_kernel()
    kinds = _kinds(kernel)
    assert kinds["write"] > 0 and kinds["read"] == 0 and gemm_prefetch.ROWS not in kernel.script()


# one sequence: the last panel's "next" would lie past the weights; the batched GEMM's last rows past the output
@pytest.mark.parametrize("kernel", [lambda: _linear_kernel(32, 1), lambda: _linear_kernel(32, 2),
                                    lambda: _linear_kernel(32, 2, outputs=148), _qk_kernel],
                         ids=["linear-1-sequence", "linear-2-sequences", "linear-padded-columns", "batched-qk"])
def test_every_prefetch_address_is_inside_its_buffer(kernel):
    calls = _prefetches(kernel())
    assert calls
    for call, analyzer, _ in calls:
        load = call.args[-4].args[0]  # address_of(buffer[indices])
        for index, extent in zip(load.indices, load.source.ty.shape):
            bound = analyzer.const_int_bound(index)
            assert 0 <= bound.min_value and bound.max_value < int(extent), (call, bound)


def test_unmarked_functions_are_unchanged():
    func = tunable_module(_linear_module(32), VNNI)
    for _, f in func.functions_items():
        if isinstance(f, tirx.PrimFunc):
            tvm.ir.assert_structural_equal(gemm_prefetch.add_prefetches(f), f)


@RUNS_VNNI
@pytest.mark.parametrize("rows, outputs", [(32, 96), (8, 96), (32, 148), (0, 0)],
                         ids=["32", "8", "padded-columns", "batched-qk"])
def test_prefetching_build_is_bit_identical(rows, outputs):
    mod = _linear_module(rows, outputs=outputs) if rows else _qk_module()
    inputs = [RNG.integers(-128, 128, [int(d) for d in p.ty.shape]).astype(np.int8) for p in mod["main"].params]
    ref = relax.VirtualMachine(tvm.compile(relax.transform.LegalizeOps()(mod), "llvm"), tvm.cpu())["main"]
    got = relax.VirtualMachine(build(mod, VNNI), tvm.cpu())["main"]
    np.testing.assert_array_equal(got(*map(tvm.runtime.tensor, inputs)).numpy(),
                                  ref(*map(tvm.runtime.tensor, inputs)).numpy())


def _k_loops(asm: str, instruction: str = "vpdpbusd") -> list[str]:
    """The assembly of each innermost loop holding `instruction` (from a label to the branch back to it; a
    loop may hold the branches around a chunk's prefetches, but no inner loop holding the instruction)."""
    loops = {}
    for match in re.finditer(r"^(\.LBB\w+):$", asm, re.M):
        back = re.search(rf"^\s+j\w+\s+{re.escape(match.group(1))}$", asm[match.end():], re.M)
        if back and instruction in asm[match.end():match.end() + back.start()]:
            loops[match.group(1)] = asm[match.end():match.end() + back.start()]
    return [body for body in loops.values()
            if not any(re.search(rf"^{re.escape(label)}:$", body, re.M) for label in loops)]


def _source(func: tirx.PrimFunc, kind: str, target: tvm.target.Target = VNNI,
            pipeline: str = gemm_prefetch.TIR_PIPELINE) -> str:
    """`func` compiled alone for `target` through the TIR `pipeline` (by default the project's, as
    `pipeline.build` compiles), as "asm" or "ll"."""
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target,
                       tir_pipeline=pipeline).mod.inspect_source(kind)


def test_assembly_prefetches_for_write_and_keeps_the_accumulators_in_registers(few_row_tiles):
    """Built as `pipeline.build` builds (the project's TIR pipeline, the accumulator on the stack), the k loop
    with its chunk's prefetches stores no accumulator: with TVM's default pipeline (the accumulator in the
    workspace pool) LLVM stores all 24 around every chunk."""
    asm = _source(few_row_tiles, "asm")
    assert "prefetchw" in asm and "prefetcht1" in asm
    k_loops = _k_loops(asm)
    assert k_loops
    for body in k_loops:
        assert "prefetcht1" in body and not re.search(r"vmov\w+\s+%zmm\d+, \S*\(", body), body


def test_k_loop_broadcasts_activations_straight_from_memory(few_row_tiles):
    """Each row's 4 activation bytes reach `vpdpbusd` by a `vpbroadcastd` from memory (a load-port uop), none
    through a general register: a broadcast from a register takes port 5, which the second `vpdpbusd` unit
    needs (the dot-product step once kept the last row's word in a local buffer, so LLVM loaded it into a
    register to store it after the loop: FFN-in, QKV and attention-out 3 to 6 % slower, `bench/kernel_ab.py`)."""
    asm = _source(few_row_tiles, "asm")
    k_loops = _k_loops(asm)
    assert k_loops
    for body in k_loops:  # the 8 x 3 tile: one broadcast per row and k step, for 3 vpdpbusd
        assert not re.search(r"vpbroadcastd\s+%[re]?[a-z0-9]+d?,", body), body
        assert 3 * len(re.findall(r"vpbroadcastd\s+-?\w*\(", body)) == body.count("vpdpbusd"), body


def _workspace_allocations(func: tirx.PrimFunc, tir_pipeline: str) -> int:
    ll = _source(func, "ll", pipeline=tir_pipeline)
    return ll.count("load ptr, ptr @__TVMBackendAllocWorkspace")


def test_weight_prefetching_tasks_keep_their_accumulator_on_the_stack(few_row_tiles):
    """The accumulator a task's k chunks prefetch around is named in the PrimFunc's STACK attribute, and the
    project's TIR pipeline (which `pipeline.build` uses) allocates it on the stack, not from the workspace."""
    assert [str(n) for n in few_row_tiles.attrs[gemm_prefetch.STACK]] == ["acc"]
    assert _workspace_allocations(few_row_tiles, gemm_prefetch.TIR_PIPELINE) == \
        _workspace_allocations(few_row_tiles, "default") - 1
    assert gemm_prefetch.STACK not in (_qk_kernel().attrs or {})  # batched GEMMs: no weight prefetch


def _workspace_buffers(func: tirx.PrimFunc, target: tvm.target.Target, pipeline: str) -> set[str]:
    """The buffers of `func` that its library takes from TVM's workspace pool."""
    ll = _source(func, "ll", target, pipeline)
    return set(re.findall(r"%([a-z_]+?)\d* = (?:tail )?call ptr %\S+\(i32 1, i32 %dev_id, i64 \d+,", ll))


def test_amx_tile_blocks_keep_their_accumulator_and_tile_configurations_on_the_stack():
    """An AMX task's accumulator and the step's two 64-byte tile configurations are named for the stack, and the
    project's TIR pipeline allocates them there; TVM's default takes them from the workspace pool (an
    allocation and a free each per tile block)."""
    amx = resolve_target("x86-amx").target
    kernel = _linear_kernel(32, target=amx, strategy="amx_gemm")
    named = {"acc", *x86.AMX_CONFIG_BUFFERS}
    assert {str(n) for n in kernel.attrs[gemm_prefetch.STACK]} == named
    assert named <= _workspace_buffers(kernel, amx, "default")
    assert not named & _workspace_buffers(kernel, amx, gemm_prefetch.TIR_PIPELINE)


def test_avx2_prefetches_weights_only_for_panels_of_few_row_tiles():  # measured slower at 16 row tiles
    avx2 = resolve_target("x86-avx2").target
    assert _kinds(_linear_kernel(32, target=avx2, strategy="avx2_gemm"))["read"] > 0
    rows = 8 * (x86.AVX2_WEIGHT_PREFETCH_ROW_TILES + 1)
    assert _kinds(_linear_kernel(rows, target=avx2, strategy="avx2_gemm"))["read"] == 0


def test_weight_prefetch_chunks_are_short_with_32_vector_registers():
    """A chunk's prefetches cover its k steps of the next panel's 3 column blocks: 4 steps of 64 bytes (one
    line each) with AVX-512's 32 registers, 16 steps of 32 bytes with AVX-VNNI's 16 (where LLVM's unrolled
    4-step chunks measured slower)."""
    assert _kinds(_linear_kernel(32))["read"] == 3 * x86.WEIGHT_PREFETCH_K_STEPS
    avxvnni = _linear_kernel(32, target=resolve_target("x86-avxvnni").target)
    assert _kinds(avxvnni)["read"] == 3 * x86.NARROW_WEIGHT_PREFETCH_K_STEPS // 2


def _weight_prefetch_pieces(func: tirx.PrimFunc, task_value: int) -> set[tuple[int, int]]:
    """(chunk, column block) of every weight piece that task `task_value` prefetches: each guarded prefetch's
    conditions evaluated at that task for every value of its chunk loop (the loop around the prefetches)."""
    sites = _prefetch_sites(func)
    task = next(loop for _, loops, _ in sites for loop in loops if loop.kind == tirx.ForKind.PARALLEL)
    pieces = set()
    for call, loops, guards in sites:
        if not guards:
            continue
        chunk = loops[-1]
        for c in range(int(chunk.extent)):
            values = {loop.loop_var: loop.min for loop in loops}
            values.update({task.loop_var: tirx.const(task_value, "int64"), chunk.loop_var: chunk.min + c})
            *conds, block = tvm_ffi.structural_map([*guards, call.args[-4].args[0].indices[0]],
                                                   (tirx.Var, lambda var: values.get(var, var)), order="post")
            if all(int(Analyzer().simplify(cond)) for cond in conds):
                pieces.add((c, int(Analyzer().simplify(block))))
    return pieces


def test_next_panels_pieces_are_spread_over_the_row_tiles():
    """16 row tiles of 8 (128 tokens) and 3 column blocks: every (chunk, block) piece of panel 1 is prefetched
    by exactly one of panel 0's row tiles 1-15, each taking a share, not the 3 row tiles of one block each."""
    kernel = _linear_kernel(128, batch=1)
    by_task = {t: _weight_prefetch_pieces(kernel, t) for t in range(16)}
    chunks = 128 // 4 // x86.WEIGHT_PREFETCH_K_STEPS
    assert not by_task[0]
    assert sorted(p for pieces in by_task.values() for p in pieces) == \
        [(c, b) for c in range(chunks) for b in range(3, 6)]
    assert sum(1 for pieces in by_task.values() if pieces) == min(15, 3 * chunks)


def test_tuning_builds_candidates_through_the_compile_pipeline(few_row_tiles):
    """`tune` measures candidates and each kernel's default schedule built as `compile` builds them: the
    accumulator on the stack, not from the workspace pool (with TVM's default pipeline the default GEMMs
    measured slower than they run in the model, so tuned records that lose in the model were applied)."""
    from ibert_tvm import tuning

    mod = tvm.IRModule({"main": few_row_tiles.with_attr("global_symbol", "main")})
    ll = tuning._f_build()(mod, VNNI, None).inspect_source("ll")
    assert ll.count("load ptr, ptr @__TVMBackendAllocWorkspace") == \
        _workspace_allocations(few_row_tiles, gemm_prefetch.TIR_PIPELINE) == \
        _workspace_allocations(few_row_tiles, "default") - 1
