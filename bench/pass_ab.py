"""A/B of one pipeline pass or schedule constant: the integer program built both ways, timed alternately.

    .venv/bin/python bench/pass_ab.py --pass FuseSiblingLinears --model bert-base --shape 1x32 --rounds 20
    .venv/bin/python bench/pass_ab.py --pass DropIdentityRequantize --shape 1x128 --target x86-avx512vnni
    .venv/bin/python bench/pass_ab.py --constant x86.WEIGHT_PREFETCH_K_STEPS=0 --shape 1x32 --target x86-avx512vnni
    .venv/bin/python bench/pass_ab.py --legalizations --model minilm --float-layers 0,1,2,3,4,5 --shape 1x128

Run-to-run spread on a shared host is larger than a few-percent change, so both builds run in the same process,
on the same inputs, alternating (`bench_peers.time_in_rounds`, the order rotating): each round times 10 calls of
each and keeps their median; the figure is the median over rounds. With `--pass`, "without" replaces the pass
named in `relay_passes/pipeline.py` by a no-op; with `--constant MODULE.NAME=VALUE`, "without" is built with
that integer constant of `schedules/MODULE.py`; with `--legalizations`, "without" legalizes the float Softmax
and GELU as TVM does (libm's exp and erf) rather than with `ops/float_math.py` (give `--float-layers`, or both
builds are the same integer program).
"""

from __future__ import annotations

import argparse
import importlib
import re

import numpy as np
import tvm

from bench_peers import ibert_compiled, inputs, load_model, time_in_rounds
from ibert_tvm.relay_passes import pipeline


def _runner(model, batch: int, seq: int, target: str, float_layers: tuple[int, ...]):
    m = ibert_compiled(model, batch, seq, False, target, float_layers).runner()
    ids, mask = inputs(model, batch, seq)
    return lambda: m(ids, mask.astype(np.int32), integer=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--pass", dest="name", help="a pass class named in relay_passes/pipeline.py")
    what.add_argument("--constant", help="MODULE.NAME=VALUE: an integer constant of schedules/MODULE.py")
    what.add_argument("--legalizations", action="store_true",
                      help="ops/float_math.py's CPU legalizations of the float Softmax and GELU against TVM's own")
    parser.add_argument("--float-layers", type=lambda text: tuple(int(i) for i in text.split(",")), default=(),
                        metavar="I,J", help="encoder layers in Q8BERT mode (float Softmax, GELU, LayerNorm)")
    parser.add_argument("--model", default="bert-base")
    parser.add_argument("--shape", default="1x32", help="BATCHxSEQ")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--target", default="llvm", help="a target name of `ibert-tvm targets` (default: this host)")
    args = parser.parse_args()
    if args.legalizations:
        owner, attribute, changed = pipeline, "CPU_LEGALIZATIONS", None
    elif args.name:
        if not isinstance(getattr(pipeline, args.name, None), type):
            raise SystemExit(f"relay_passes/pipeline.py names no pass {args.name!r}")
        noop = tvm.transform.module_pass(lambda mod, _ctx: mod, opt_level=0, name=f"No{args.name}")
        owner, attribute, changed = pipeline, args.name, lambda *a, **k: noop
    else:
        match = re.fullmatch(r"(\w+)\.(\w+)=(-?\d+)", args.constant)
        try:
            owner = importlib.import_module(f"ibert_tvm.schedules.{match.group(1)}") if match else None
        except ModuleNotFoundError:
            owner = None
        if owner is None or not isinstance(getattr(owner, match.group(2), None), int):
            raise SystemExit(f"--constant {args.constant!r}: not MODULE.NAME=INTEGER for an int constant in schedules/")
        attribute, changed = match.group(2), int(match.group(3))
    batch, seq = map(int, args.shape.split("x"))
    model = load_model(args.model)
    original = getattr(owner, attribute)
    if args.constant is not None and changed == original:
        raise SystemExit(f"--constant {args.constant!r}: that is its value already; name another")
    labels = (("float_math legalizations", "TVM's legalizations") if args.legalizations else
              (f"with {args.name}", f"without {args.name}") if args.constant is None else
              (f"{args.constant.split('=')[0]}={original}", args.constant))
    runs = {labels[0]: _runner(model, batch, seq, args.target, args.float_layers)}
    setattr(owner, attribute, changed)
    try:
        runs[labels[1]] = _runner(model, batch, seq, args.target, args.float_layers)
    finally:
        setattr(owner, attribute, original)
    timing = argparse.Namespace(rounds=args.rounds, repeats=10, warmup=1, warmup_seconds=0.0)
    medians = time_in_rounds(runs, lambda run: run(), timing, f"{args.model} {args.shape}")
    for name, values in medians.items():
        print(f"{args.model} {args.shape} {name}: median {np.median(values):.2f} ms "
              f"(rounds {len(values)}, min {min(values):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
