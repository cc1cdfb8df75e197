"""Each fused kernel of the integer program built alone and timed, hot and with cold weights; A/B against a save.

    .venv/bin/python bench/kernel_ab.py --shape 1x128 --target x86-avx512vnni --match linear --save /tmp/kab
    (change the code)
    .venv/bin/python bench/kernel_ab.py --shape 1x128 --target x86-avx512vnni --match linear --against /tmp/kab

The kernels are the PrimFuncs of `pipeline.tunable_module` (the state tuning sees), scheduled by the target
family's default schedule and compiled one by one for a CPU target that runs here. Their constant arguments
(weights, biases, requantize constants) are the graph's own; other inputs are seeded random integers in
[0, 100), which are valid token ids and in range for every activation dtype (the kernels have no
data-dependent branches). Times are the median over rounds of the mean of a Python loop of calls (the call
overhead, a few microseconds, is in every column alike):
- hot: the same arguments every call, so the weights stay in cache, as in a tight benchmark loop;
- cold: each call takes the next of enough copies of the constants and the outputs to exceed `--cold-bytes`,
  so the weights come from the shared cache and the output lines must be fetched before they are written, as
  in a model run, where eleven other layers pass between two calls of a kernel and the output buffers were
  last used by other kernels.
By default one kernel per kind and shapes stands for its copies in the other layers (its "calls" are theirs
too); `--all` times every kernel.
`--save DIR` keeps each kernel's library and arguments; `--against DIR` times the saved build (A) and this one
(B) alternately in one process, round by round, so that a host's drift hits both alike (hot, or with
`--cold` cold). The two sides are not built and placed alike (A loaded from its library and arrays, B fresh):
the same code timed against itself moved by -5 to +8 % per kernel at 1 x 32 on the VM of bench/RESULTS.md, so take a
difference of a few percent as an indication and decide with `pass_ab.py`, which builds both sides alike.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tvm
from tvm import relax, tirx

from bench_peers import kernel_kind, load_model, quantized
from ibert_tvm.relay_passes.pipeline import tunable_module
from ibert_tvm.schedules import gemm_prefetch, schedules_for
from ibert_tvm.targets import resolve_target
from ibert_tvm.threads import configure_threads

Kernel = tuple[Callable, list, list[int]]  # (function, arguments, indices of the arguments "cold" rotates)


def _call_sites(mod: tvm.IRModule) -> tuple[dict[str, list], Counter]:
    """Per PrimFunc name: the constant arguments of its first call (None where an argument is computed); and
    how many times the Relax functions call it."""
    constants: dict[str, list] = {}
    calls: Counter = Counter()
    for _, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        for block in func.body.blocks:
            for binding in block.bindings:
                call = binding.value
                if isinstance(call, relax.Call) and getattr(call.op, "name", "") == "relax.call_tir":
                    name = call.args[0].name_hint
                    calls[name] += 1
                    constants.setdefault(name, [a.value.numpy() if isinstance(a, tvm.ir.expr.Constant) else None
                                                for a in call.args[1].fields])
    return constants, calls


def _arguments(func: tirx.PrimFunc, constants: list, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """Arrays for every parameter of `func` (the inputs, then the outputs): the graph's constants where it has
    them, seeded random integers in [0, 100) elsewhere; and the indices of the constants and the outputs."""
    rng = np.random.default_rng(seed)
    arrays, rotated = [], []
    for i, param in enumerate(func.params):
        value = constants[i] if i < len(constants) else None
        if value is not None or i >= len(constants):
            rotated.append(i)
        arrays.append(np.ascontiguousarray(value) if value is not None else
                      rng.integers(0, 100, [int(d) for d in param.ty.shape]).astype(str(param.ty.dtype)))
    return arrays, rotated


def _build(func: tirx.PrimFunc, target: tvm.target.Target) -> tvm.runtime.Module:
    """`func` scheduled by the target family's default schedule and compiled for `target`."""
    mod = schedules_for(target).apply_default_schedule(tvm.IRModule({"main": func}), target)
    return tvm.compile(tvm.IRModule({"main": mod["main"].with_attr("global_symbol", "main")}), target=target,
                       tir_pipeline=gemm_prefetch.TIR_PIPELINE)


def _timer(kernel: Kernel, cold_bytes: int, cold: bool) -> Callable[[int], float]:
    """A function of a call count that returns the mean seconds per call: hot, or `cold` over rotating
    copies of the constants and outputs."""
    fn, arrays, rotated = kernel
    base = [tvm.runtime.tensor(a) for a in arrays]
    copies = [base]
    if cold and rotated:
        size = sum(arrays[i].nbytes for i in rotated)
        for _ in range(max(1, -(-cold_bytes // size))):
            args = list(base)
            for i in rotated:
                args[i] = tvm.runtime.tensor(arrays[i])
            copies.append(args)

    position = [0]  # the rotation goes on across rounds, so that a round never starts on copies still in cache

    def run(calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn(*copies[position[0]])
            position[0] = (position[0] + 1) % len(copies)
        return (time.perf_counter() - start) / calls

    return run


def _calls_for(seconds: float) -> int:
    """Calls per round: about 20 ms of work, at least 3."""
    return max(3, int(0.02 / max(seconds, 1e-7)))


def _median_times(timers: list[Callable[[int], float]], rounds: int) -> list[float]:
    """Each timer's median over `rounds`, the timers alternating within each round, the same number of calls
    each (the slower one's count)."""
    count = min(_calls_for(t(1)) for t in timers)
    samples: list[list[float]] = [[] for _ in timers]
    for _ in range(rounds):
        for timer, out in zip(timers, samples):
            out.append(timer(count))
    return [float(np.median(s)) for s in samples]


def _save(directory: Path, name: str, lib: tvm.runtime.Module, arrays: list, rotated: list[int]) -> None:
    lib.export_library(str(directory / f"{name}.so"))
    np.savez(directory / f"{name}.npz", *arrays, rotated=np.asarray(rotated, np.int64))


def _load(directory: Path, name: str) -> Kernel:
    data = np.load(directory / f"{name}.npz")
    arrays = [data[f"arr_{i}"] for i in range(len(data.files) - 1)]
    return tvm.runtime.load_module(str(directory / f"{name}.so"))["main"], arrays, [int(i) for i in data["rotated"]]


def _selected(funcs: dict[str, tirx.PrimFunc], calls: Counter, match: str, every: bool
              ) -> list[tuple[str, int]]:
    """(name, calls it stands for) of the kernels whose name contains `match`: every one, or one per kind and
    parameter shapes (the layers' copies of a kernel), standing for the calls of all its copies."""
    groups: dict[tuple, list[str]] = {}
    for name in sorted(n for n in funcs if match in n):
        shapes = tuple((tuple(int(d) for d in p.ty.shape), str(p.ty.dtype)) for p in funcs[name].params)
        groups.setdefault((name,) if every else (kernel_kind(name), shapes), []).append(name)
    return [(names[0], sum(calls[n] for n in names)) for names in groups.values()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bert-base")
    parser.add_argument("--shape", default="1x128", help="BATCHxSEQ")
    parser.add_argument("--target", default="llvm", help="a CPU target of `ibert-tvm targets` that runs here")
    parser.add_argument("--match", default="", help="only kernels whose name contains this")
    parser.add_argument("--all", action="store_true", help="every kernel, not one per kind")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--cold-bytes", type=int, default=96 << 20, help="bytes of argument copies for 'cold'")
    parser.add_argument("--cold", action="store_true", help="with --against: both sides with cold arguments")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--save", type=Path, help="keep each kernel's library and arguments in this directory")
    group.add_argument("--against", type=Path, help="time a --save directory's kernels (A) against these (B)")
    args = parser.parse_args()
    if args.cold and not args.against:
        parser.error("--cold goes with --against (without it, both hot and cold are timed)")

    configure_threads()  # one TVM thread per core, as a compiled model runs
    spec = resolve_target(args.target)
    if spec.family != "x86":
        raise SystemExit(f"kernel_ab times kernels on this host; target {spec.name!r} is {spec.family}, not x86")
    batch, seq = map(int, args.shape.split("x"))
    context = {"model": args.model, "shape": args.shape, "target": spec.name}
    if args.against:
        saved = json.loads((args.against / "kernels.json").read_text())
        if {k: saved.get(k) for k in context} != context:
            raise SystemExit(f"{args.against} holds {saved}, not {context}")

    fused = tunable_module(quantized(load_model(args.model), seq).program(batch, seq), spec.target)
    funcs = {g.name_hint: f for g, f in fused.functions_items() if isinstance(f, tirx.PrimFunc)}
    constants, calls = _call_sites(fused)
    selected = _selected(funcs, calls, args.match, args.all)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (name, count) in enumerate(selected, 1):
        lib = _build(funcs[name], spec.target)
        arrays, rotated = _arguments(funcs[name], constants.get(name, []), seed=n)
        kernel = (lib["main"], arrays, rotated)
        if args.save:
            _save(args.save, name, lib, arrays, rotated)
        if args.against:
            if not (args.against / f"{name}.so").exists():
                print(f"[{n}/{len(selected)}] {name}: not in {args.against}, skipped", flush=True)
                continue
            timers = [_timer(_load(args.against, name), args.cold_bytes, args.cold),
                      _timer(kernel, args.cold_bytes, args.cold)]
        else:
            timers = [_timer(kernel, args.cold_bytes, False), _timer(kernel, args.cold_bytes, True)]
        a, b = _median_times(timers, args.rounds)
        row = {"kernel": name, "calls": count, "a_us": 1e6 * a, "b_us": 1e6 * b}
        rows.append(row)
        print(f"[{n}/{len(selected)}] {name[:60]:60s} {row['a_us']:9.1f} {row['b_us']:9.1f} us", flush=True)

    a_name, b_name = ("A (saved)", "B (this)") if args.against else ("hot", "cold")
    how = f", {'cold' if args.cold else 'hot'}" if args.against else ""
    print(f"\n{args.model} {args.shape} on {spec.name}: microseconds per call, median of {args.rounds} rounds{how}")
    print(f"{'kernel':60s} {'calls':>5s} {a_name:>10s} {b_name:>10s} {'B/A' if args.against else 'cold/hot':>8s}")
    for row in sorted(rows, key=lambda r: -r["a_us"] * r["calls"]):
        print(f"{row['kernel'][:60]:60s} {row['calls']:5d} {row['a_us']:10.1f} {row['b_us']:10.1f} "
              f"{row['b_us'] / row['a_us']:8.3f}")
    if args.save:
        (args.save / "kernels.json").write_text(json.dumps({**context, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
