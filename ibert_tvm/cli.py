"""The `ibert-tvm` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoShape, run_demo

    run_demo(DemoShape(batch=args.batch, seq=args.seq), seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ibert-tvm", description="Integer-only BERT-family models through TVM.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compile and run one integer-only encoder block on the host CPU",
                          description="Compile one RoBERTa-base-sized integer-only encoder block (seeded random "
                                      "weights, calibrated ranges) for the host CPU, run it, and compare it with "
                                      "HF's IBertLayer and the float layer.")
    demo.add_argument("--batch", type=int, default=1)
    demo.add_argument("--seq", type=int, default=128)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
