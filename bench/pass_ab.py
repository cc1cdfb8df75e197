"""A/B of one pipeline pass: the integer program built with and without it, timed alternately in one process.

    .venv/bin/python bench/pass_ab.py --pass FuseSiblingLinears --model bert-base --shape 1x32 --rounds 20
    .venv/bin/python bench/pass_ab.py --pass DropIdentityRequantize --shape 1x128 --target x86-avx512vnni

Run-to-run spread on a shared host is larger than a few-percent change, so both builds run in the same process,
on the same inputs, alternating: each round times 10 calls of each and keeps their median; the figure is the
median over rounds. "Without" replaces the pass named in `relay_passes/pipeline.py` by a no-op.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tvm

from bench_peers import ibert_compiled, inputs, load_model
from ibert_tvm.relay_passes import pipeline


def _runner(model, batch: int, seq: int, target: str):
    m = ibert_compiled(model, batch, seq, False, target).runner()
    ids, mask = inputs(model, batch, seq)
    return lambda: m(ids, mask.astype(np.int32), integer=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pass", dest="name", required=True, help="a pass class named in relay_passes/pipeline.py")
    parser.add_argument("--model", default="bert-base")
    parser.add_argument("--shape", default="1x32", help="BATCHxSEQ")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--target", default="llvm", help="a target name of `ibert-tvm targets` (default: this host)")
    args = parser.parse_args()
    if not isinstance(getattr(pipeline, args.name, None), type):
        raise SystemExit(f"relay_passes/pipeline.py names no pass {args.name!r}")
    batch, seq = map(int, args.shape.split("x"))
    model = load_model(args.model)
    runs = {"with": _runner(model, batch, seq, args.target)}
    noop = tvm.transform.module_pass(lambda mod, _ctx: mod, opt_level=0, name=f"No{args.name}")
    original, pipeline.__dict__[args.name] = pipeline.__dict__[args.name], lambda *a, **k: noop
    try:
        runs["without"] = _runner(model, batch, seq, args.target)
    finally:
        pipeline.__dict__[args.name] = original
    medians: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            run()
            times = []
            for _ in range(10):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            medians[name].append(1e3 * float(np.median(times)))
    for name, values in medians.items():
        print(f"{args.model} {args.shape} {name:7s} {args.name}: median {np.median(values):.2f} ms "
              f"(rounds {len(values)}, min {min(values):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
