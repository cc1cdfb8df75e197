"""A/B of two whole builds: the integer program of another commit (A) against this working tree's (B).

    .venv/bin/python bench/commit_ab.py --against HEAD~1 --model bert-base --shape 1x128 --target x86-avxvnni

Each side is compiled and exported in a subprocess of its own source tree (A from `git archive REV`, B from this
tree), on the same model, calibration and target, exactly as `bench_peers.py` builds ours. The two libraries are
then loaded into one process and timed alternately on the same inputs, in `bench_peers`'s rounds (the order
rotating), so that a host's drift hits both alike (`pass_ab.py` does the same for one pass or schedule constant
of this tree). It also says whether the two builds' integer outputs are identical, which a change that claims
the same integers must show.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
# Folders the installed package maps under ibert_tvm (pyproject's package-dir); an archived tree links them.
SUBPACKAGES = ("relay_passes", "schedules")


def archived_tree(rev: str, dest: Path) -> Path:
    """`rev`'s files under `dest`, importable as `ibert_tvm` from `dest` (its subpackage folders linked in)."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], check=True,
                                 capture_output=True).stdout
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"--against {rev!r}: git archive failed: {err.stderr.decode().strip()}") from None
    dest.mkdir(parents=True)
    tar = dest / "tree.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    tar.unlink()
    for name in SUBPACKAGES:
        link = dest / "ibert_tvm" / name
        if (dest / name).is_dir() and not link.exists():
            link.symlink_to(dest / name, target_is_directory=True)
    return dest


def export_in(tree: Path, out: Path, args: argparse.Namespace) -> None:
    """Run this script's `--export` in a subprocess that imports `ibert_tvm` and `bench_peers` from `tree`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), str(tree / "bench")]))
    cmd = [sys.executable, str(HERE), "--export", str(out), "--expect-tree", str(tree), "--model", args.model,
           "--shape", args.shape, "--target", args.target]
    run = subprocess.run(cmd, cwd=tree / "bench", env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"building in {tree} failed:\n{run.stderr[-3000:]}")


def export(out: Path, expect_tree: Path, model_name: str, shape: str, target: str) -> None:
    """Compile the model with the `ibert_tvm` on the path (checked to come from `expect_tree`) and export it."""
    import ibert_tvm
    from bench_peers import ibert_compiled, load_model

    source = Path(ibert_tvm.__file__).resolve()
    if expect_tree.resolve() not in source.parents:
        raise SystemExit(f"ibert_tvm was imported from {source}, not from {expect_tree}")
    batch, seq = map(int, shape.split("x"))
    ibert_compiled(load_model(model_name), batch, seq, False, target).export(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="the commit (any git revision) to build as A")
    parser.add_argument("--model", default="bert-base")
    parser.add_argument("--shape", default="1x128", help="BATCHxSEQ")
    parser.add_argument("--target", default="llvm", help="a target name of `ibert-tvm targets` (default: this host)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=7, help="calls per side per round (their median is kept)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before each side's timed ones")
    parser.add_argument("--warmup-seconds", type=float, default=0.0, help="... and at least this long")
    parser.add_argument("--export", type=Path, help=argparse.SUPPRESS)  # the subprocess's task
    parser.add_argument("--expect-tree", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export:
        export(args.export, args.expect_tree, args.model, args.shape, args.target)
        return 0
    if not args.against:
        parser.error("--against REV is required")
    import ibert_tvm
    from bench_peers import inputs, load_model, time_in_rounds
    from ibert_tvm.threads import configure_threads

    batch, seq = map(int, args.shape.split("x"))
    with tempfile.TemporaryDirectory(prefix="commit_ab_") as tmp:
        tmp = Path(tmp)
        libs = {f"A ({args.against})": tmp / "a" / "model.so", "B (this tree)": tmp / "b" / "model.so"}
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        print(f"building A from {args.against} and B from {ROOT} ({args.model} {args.shape}, {args.target})",
              flush=True)
        export_in(archived_tree(args.against, tmp / "a" / "tree"), libs[f"A ({args.against})"], args)
        export_in(ROOT, libs["B (this tree)"], args)
        configure_threads()
        ids, mask = inputs(load_model(args.model), batch, seq)
        models = {label: ibert_tvm.load(lib) for label, lib in libs.items()}
        run = lambda model: model(ids, mask.astype(np.int32), integer=True)  # noqa: E731
        outputs = {label: run(model) for label, model in models.items()}
        medians = time_in_rounds(models, run, args, f"{args.model} {args.shape}")
    a, b = (np.median(v) for v in medians.values())
    for label, values in medians.items():
        print(f"{args.model} {args.shape} {args.target} {label}: median {np.median(values):.2f} ms "
              f"(rounds {len(values)}, min {min(values):.2f})")
    same = np.array_equal(*outputs.values())
    print(f"B / A: {b / a:.3f}; integer outputs {'identical' if same else 'DIFFER'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
