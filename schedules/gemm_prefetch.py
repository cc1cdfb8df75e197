"""Software prefetches for the x86 linear-layer GEMMs: what a task will need, asked for while it computes.

In a model run a linear layer's weights come from the shared cache (eleven other layers pass between two
calls of it), and so do the lines of a kernel's output buffer (last touched by other kernels, on either core).
The tasks of one column panel run in a row on one core: the first reads the panel from the shared cache,
stalling on every k step, the others find it in L2; each task stores its output tile at its end, and each
store waits for its line. `schedules/x86.py` marks the loops, and `add_prefetches` writes:

- at the top of each task, a write prefetch (`prefetchw`) of every output line of the task a few tasks on
  (`OUTPUT`: how many), at the addresses the final epilogue stage will store to;
- at the top of each chunk of the k loop (`WEIGHT_STEP`), prefetches into L2 of the same k steps of the next
  column panel's weights, so that the next panel streams in while this one is computed from cache. Its
  (chunk, column block) pieces are shared out in turn among this panel's row tiles but the first (`WEIGHTS`:
  row tiles per panel), whose own weights are still arriving; spread over all of them, the stream asks less
  of memory at any one time (BERT-base 1 x 128, 16 row tiles: 28.50 -> 27.03 ms against each block's pieces
  all from one row tile). The task's accumulator (`STACK`) then lives on the stack (the TIR
  pipeline `TIR_PIPELINE`, which `relay_passes/pipeline.build` uses): from TVM's workspace pool, LLVM
  cannot tell that the prefetch calls leave it alone and stores the accumulators around every chunk;
- in a batched GEMM (Q K^T, P V: one task per head and column tile, its row tiles a loop inside, the epilogue
  after that loop), at the top of each row tile (`ROWS`: its rows), write prefetches of those rows' output
  lines, which the epilogue then finds owned: Q K^T's int32 scores are 0.8 MB per layer.

Prefetches never change a result. What they bought on BERT-base is in bench/RESULTS.md (`bench/kernel_ab.py`).
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import s_tir, tirx

__all__ = ["OUTPUT", "ROWS", "STACK", "TIR_PIPELINE", "WEIGHTS", "WEIGHT_STEP", "add_prefetches"]

OUTPUT = "ibert.prefetch_output_tasks_ahead"  # on the task loop: tasks ahead
WEIGHTS = "ibert.prefetch_weights_row_tiles"  # on the task loop: consecutive tasks that share a column panel
WEIGHT_STEP = "ibert.prefetch_weights_here"  # on the outer loop of a k split
STACK = "ibert.stack_buffers"  # on the task loop: the accumulator's name; then on the PrimFunc: all of them
TIR_PIPELINE = "ibert_s_tir"  # TVM's s_tir pipeline, the accumulators named by STACK kept on the stack
ROWS = "ibert.prefetch_output_rows"  # on the serial row-tile loop of a batched task: rows per row tile
LINE_BYTES = 64


def _substitute(node, values: dict):
    return tvm_ffi.structural_map(node, (tirx.Var, lambda var: values.get(var, var)), order="post")


def _loop_nest(stmt: tirx.Stmt) -> tuple[list[tirx.For], tirx.Stmt]:
    """The perfectly nested loops at `stmt` and what they enclose."""
    loops = []
    while isinstance(stmt, tirx.For):
        loops.append(stmt)
        stmt = stmt.body
    return loops, stmt


def _first_indices(realize: s_tir.SBlockRealize, region) -> list[tirx.Expr]:
    """The first index of each dimension of a block's buffer region, in the enclosing loops' variables."""
    values = {v.var: value for v, value in zip(realize.block.iter_vars, realize.iter_values)}
    return [_substitute(r.min, values) for r in region.region]


def _prefetch(buffer: tirx.Var, indices: list[tirx.Expr], write: bool, locality: int) -> tirx.Stmt:
    """One prefetch of `buffer[indices]`, each index clamped to its dimension (a vector padded past the
    buffer's end, under its block's predicate, asks for the last line instead of a line beyond)."""
    indices = [tirx.min(i, int(extent) - 1) for i, extent in zip(indices, buffer.ty.shape)]
    address = tirx.call_intrin("handle", "tirx.address_of", tirx.BufferLoad(buffer, indices))
    return tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0", address, int(write), locality, 1))


def _rebuilt(loop: tirx.For, body: tirx.Stmt | None = None, drop: tuple[str, ...] = ()) -> tirx.For:
    """`loop` with `body` (default: its own) and without the annotations named in `drop`."""
    return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, loop.body if body is None else body,
                    loop.thread_binding, {k: v for k, v in loop.annotations.items() if k not in drop})


def _seq(stmts: list[tirx.Stmt]) -> tirx.Stmt:
    return stmts[0] if len(stmts) == 1 else tirx.SeqStmt(stmts)


def _is_param(buffer: tirx.Var, params: list[tirx.Var]) -> bool:
    return any(buffer.same_as(p) for p in params)


def _bytes(buffer: tirx.Var, elements: int = 1) -> int:
    return max(1, elements * tvm.DataType(buffer.ty.dtype).bits // 8)


def _output_prefetches(stage: tirx.Stmt, params: list[tirx.Var], at: dict, rows: int = 0,
                       first_row: tirx.Expr | None = None) -> tirx.Stmt | None:
    """Write prefetches of the lines that `stage` (loops around one spatial block that writes a function
    parameter) stores to, with the variables that `at` maps replaced; None for any other stage. The innermost
    (vector) loop becomes its first and last element and one element per line between. With `rows`, the
    stage's outermost loop (its rows) becomes that many rows from `first_row` on (clamped to its range)."""
    loops, realize = _loop_nest(stage)
    if len(loops) < 1 + bool(rows) or not isinstance(realize, s_tir.SBlockRealize) or len(realize.block.writes) != 1:
        return None
    written = realize.block.writes[0]
    if any(int(v.iter_type) != 0 for v in realize.block.iter_vars) or not _is_param(written.source, params):
        return None  # a reduction (the GEMM's own update), or a store to a buffer of this function
    indices = [_substitute(i, at) for i in _first_indices(realize, written)]
    inner, extent = loops[-1], int(loops[-1].extent)
    per_line = max(1, LINE_BYTES // _bytes(written.source))
    offsets = sorted({*range(0, extent, per_line), extent - 1})
    first = loops[0]
    row_values = [tirx.min(first_row + r, first.min + first.extent - 1) for r in range(rows)] or [None]
    body = _seq([_prefetch(written.source, [_substitute(i, {inner.loop_var: inner.min + offset,
                                                            **({first.loop_var: row} if rows else {})})
                                            for i in indices], True, 3)
                 for row in row_values for offset in offsets])
    for loop in reversed(loops[bool(rows):-1]):
        body = tirx.For(loop.loop_var, loop.min, loop.extent, tirx.ForKind.SERIAL, body)
    return body


def _weight_prefetches(chunk: tirx.For, params: list[tirx.Var], task: tirx.Var, row_tiles: int,
                       last_task: tirx.Expr) -> tirx.Stmt | None:
    """L2 prefetches, for the k steps of `chunk` (the outer loop of a k split around [k inner, row loops...,
    column blocks] and the dot-product step), of the next panel's packed weight [N/lanes, K/group, lanes,
    group] (a function parameter): its piece (chunk c, column block b) by the panel's row tile
    1 + (c NR + b) % (row tiles - 1), NR column blocks."""
    loops, realize = _loop_nest(chunk.body)
    if len(loops) < 2 or not isinstance(realize, s_tir.SBlockRealize):
        return None
    weight = next((r for r in realize.block.reads if _is_param(r.source, params) and len(r.region) == 4), None)
    if weight is None:
        return None
    k_inner, blocks = loops[0], loops[-1]
    indices = _first_indices(realize, weight)
    step_bytes = _bytes(weight.source, int(weight.source.ty.shape[-2]) * int(weight.source.ty.shape[-1]))
    # (chunk c, block b) of the next panel goes to row tile 1 + (c NR + b) % (row tiles - 1), NR blocks: spread
    # over the panel's row tiles, which are more than the blocks at 128 tokens (where row tiles - 1 divides NR,
    # TVM's simplifier folds the condition to 1 + b % (row tiles - 1), free of the chunk)
    turn = tirx.floormod(task, row_tiles) - 1
    nr = int(blocks.extent)
    first_unit = (chunk.loop_var - chunk.min) * nr
    prefetches = []
    for b in range(nr):
        at = {task: tirx.min(task + row_tiles, last_task), blocks.loop_var: blocks.min + b,
              **{loop.loop_var: loop.min for loop in loops[1:-1]}}
        lines = [_prefetch(weight.source, [_substitute(i, {**at, k_inner.loop_var: k_inner.min + k}) for i in indices],
                           False, 2) for k in range(0, int(k_inner.extent), max(1, LINE_BYTES // step_bytes))]
        prefetches.append(tirx.IfThenElse(tirx.floormod(first_unit + b, row_tiles - 1) == turn,
                                          _seq(lines), None))
    return _seq(prefetches)


def add_prefetches(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with the prefetches its marked loops ask for (and the marks removed); the accumulators that
    task loops name (weight-prefetching tasks, AMX tile blocks) in its STACK attribute."""
    params = list(func.params)
    stack: list[str] = []

    def rewrite_task(loop: tirx.For) -> tirx.For:
        if STACK in loop.annotations:
            stack.append(str(loop.annotations[STACK]))
        if OUTPUT not in loop.annotations and WEIGHTS not in loop.annotations:
            return _rebuilt(loop, drop=(STACK,)) if STACK in loop.annotations else loop
        last = loop.min + loop.extent - 1
        row_tiles = int(loop.annotations.get(WEIGHTS, 1))

        def rewrite_chunk(chunk: tirx.For) -> tirx.For:
            if WEIGHT_STEP not in chunk.annotations:
                return chunk
            found = _weight_prefetches(chunk, params, loop.loop_var, row_tiles, last) if row_tiles > 1 else None
            return _rebuilt(chunk, None if found is None else tirx.SeqStmt([found, chunk.body]), (WEIGHT_STEP,))

        body = tvm_ffi.structural_map(loop.body, (tirx.For, rewrite_chunk), order="post")
        if OUTPUT in loop.annotations:
            stages = list(body) if isinstance(body, tirx.SeqStmt) else [body]
            ahead = tirx.min(loop.loop_var + int(loop.annotations[OUTPUT]), last)
            found = _output_prefetches(stages[-1], params, {loop.loop_var: ahead})
            body = body if found is None else tirx.SeqStmt([found, *stages])
        return _rebuilt(loop, body, (OUTPUT, WEIGHTS, STACK))

    def rewrite_rows(task: tirx.For) -> tirx.For:
        stages = list(task.body) if isinstance(task.body, tirx.SeqStmt) else [task.body]
        marked = [i for i, stage in enumerate(stages) if isinstance(stage, tirx.For) and ROWS in stage.annotations]
        if not marked:
            return task
        row_loop = stages[marked[0]]
        rows = int(row_loop.annotations[ROWS])
        found = _output_prefetches(stages[-1], params, {}, rows, row_loop.loop_var * rows) if len(stages) > 1 else None
        stages[marked[0]] = _rebuilt(row_loop, None if found is None else tirx.SeqStmt([found, row_loop.body]),
                                     (ROWS,))
        return _rebuilt(task, tirx.SeqStmt(stages))

    body = tvm_ffi.structural_map(func.body, (tirx.For, rewrite_task), order="post")
    out = func.with_body(tvm_ffi.structural_map(body, (tirx.For, rewrite_rows), order="post"))
    return out.with_attr(STACK, sorted(set(stack))) if stack else out


@tvm.transform.module_pass(opt_level=0, name="IBertKeepAccumulatorsOnStack")
def _keep_on_stack(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Allocate the buffers a PrimFunc names in its STACK attribute on the stack (`disable_lower_builtin`),
    not from TVM's workspace pool: a GEMM task's register-tile accumulator (at most a few KB) and the AMX
    step's tile configurations (`x86.AMX_CONFIG_BUFFERS`). A workspace pointer may alias anything as far as
    LLVM knows, so a prefetch call inside the k loop made it store the accumulators at every chunk; a stack
    array that never escapes it can prove untouched. The tile configurations cost an allocation and a free
    per tile block."""
    out = mod.clone()
    for gvar, func in mod.functions_items():
        names = {str(n) for n in func.attrs.get(STACK, [])} if isinstance(func, tirx.PrimFunc) and func.attrs else set()

        def mark(alloc: tirx.AllocBuffer, names=names) -> tirx.AllocBuffer:
            if alloc.buffer.name not in names:
                return alloc
            return tirx.AllocBuffer(alloc.buffer, annotations={**alloc.annotations,
                                                                "disable_lower_builtin": tirx.IntImm("bool", 1)})

        if names:
            out[gvar] = func.with_body(tvm_ffi.structural_map(func.body, (tirx.AllocBuffer, mark), order="post"))
    return out


def _tir_pipeline(**kwargs):
    pipeline, finalize_host, finalize_device = tvm.tirx.get_tir_pipeline("s_tir", **kwargs)
    return pipeline, lambda: tvm.transform.Sequential([_keep_on_stack, finalize_host()]), finalize_device


tvm.tirx.register_tir_pipeline(TIR_PIPELINE, _tir_pipeline)
