"""The GPU checks of the project, packed to run in one call on a lent GPU machine that cannot reach a registry.

    .venv/bin/python bench/gpu_kit.py pack                 # here: TVM for the GPU machine's Python -> .gpu/
    python3 bench/gpu_kit.py install                       # there: unpack .gpu/ and this checkout -> /tmp/site
    PYTHONPATH=/tmp/site python3 bench/gpu_kit.py run --out "$OUT" --budget-s 480   # there: tests, then bench

That machine has CUDA, PyTorch, transformers and pytest for its own Python (3.12), not TVM, and takes at most
64 MiB of files per call; `.gpu/` is git-ignored, so the call must take it along with the checkout. `pack`
downloads the TVM wheels this checkout pins, for that Python, and writes their contents as one xz archive
without what no build or run there reads (TVM's C++ sources, third-party headers and web runtime); it refuses
a kit that would not fit beside the checkout. `install` unpacks it and installs this checkout beside it (no
dependencies: the machine has them). `run` does the GPU checks in order and writes each one's log under
`--out` as it finishes: the GPU tests (whole models and every operator on the GPU against their CPU builds,
bit for bit; at most `TESTS_SHARE` of `--budget-s`, and a skip counts as a failure there), then
`bench_peers.py --device cuda` (BERT-base and MiniLM's architecture against PyTorch FP32 and FP16, its tables
written after each model) in what is left.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / ".gpu"
ARCHIVE = "site.tar.xz"
#: what one call to the GPU machine carries at most: the checkout's files and the kit together
CARRY_LIMIT = 64 * 2**20
#: the kit's size as packed for CPython 3.12 on 2026-12-05 (60.8 MiB), rounded up: the checkout gets the rest
KIT_BYTES = 61 * 2**20
#: wheel members no build or run on the GPU machine reads (about 30 MB unpacked)
LEFT_OUT = ("tvm/3rdparty/", "tvm/src/", "tvm/web/", "tvm_ffi/3rdparty/")
WHEELS = ("apache-tvm", "apache-tvm-ffi")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")
#: the share of `run`'s budget the GPU tests may take, so that the benchmark keeps the rest
TESTS_SHARE = 0.45
#: the GPU tests (they skip where no GPU is present)
GPU_TESTS = ("tests/test_gpu_model.py", "tests/test_cuda_build.py::test_op_on_the_gpu_equals_the_cpu",
             "tests/test_cuda_sass.py::test_gemm_kernels_match_the_cpu_on_the_gpu")


class KitError(RuntimeError):
    """A kit that cannot be made or used; the message names the problem."""


def kept(name: str) -> bool:
    """Whether a wheel member goes into the kit."""
    return not name.startswith(LEFT_OUT) and not name.endswith(".pyc")


def pack_wheels(wheels: list[Path], archive: Path) -> int:
    """Write the kept members of `wheels` as one tar.xz (their install layout); returns its size in bytes."""
    with lzma.open(archive, "wb", preset=9) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                for info in zf.infolist():
                    if info.is_dir() or not kept(info.filename):
                        continue
                    member = tarfile.TarInfo(info.filename)
                    member.size, member.mode = info.file_size, 0o755 if info.filename.endswith(".so") else 0o644
                    tar.addfile(member, io.BytesIO(zf.read(info)))
    return archive.stat().st_size


def checkout_bytes(root: Path = ROOT) -> int:
    """The size of what a call carries besides the kit: tracked and untracked, not ignored, files."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                           check=True, capture_output=True).stdout.decode().split("\0")
    return sum((root / n).stat().st_size for n in names if n and (root / n).is_file())


def check_fits(kit_bytes: int, rest_bytes: int, limit: int = CARRY_LIMIT) -> None:
    if kit_bytes + rest_bytes > limit:
        raise KitError(f"the kit ({kit_bytes / 2**20:.1f} MiB) and the checkout ({rest_bytes / 2**20:.1f} MiB) "
                       f"are {(kit_bytes + rest_bytes) / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB one call "
                       "carries")


def pack(python: str, kit: Path = KIT) -> Path:
    """Download the pinned TVM wheels for CPython `python` (e.g. "3.12") and write the kit into `kit`."""
    versions = {name: metadata.version(name) for name in WHEELS}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", python, "--implementation", "cp", "-d", tmp,
               *(a for p in PLATFORMS for a in ("--platform", p)), *(f"{n}=={v}" for n, v in versions.items())]
        print("downloading", ", ".join(f"{n}=={v}" for n, v in versions.items()), f"for CPython {python}", flush=True)
        subprocess.run(cmd, check=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != len(WHEELS):
            raise KitError(f"pip downloaded {[w.name for w in wheels]}, expected one wheel each of {WHEELS}")
        kit.mkdir(exist_ok=True)
        print(f"compressing {', '.join(w.name for w in wheels)} (xz -9, a few minutes)", flush=True)
        size = pack_wheels(wheels, kit / ARCHIVE)
    rest = checkout_bytes()
    try:
        check_fits(size, rest)
    except KitError:
        (kit / ARCHIVE).unlink()
        raise
    manifest = {"python": python, "versions": versions, "archive": ARCHIVE, "bytes": size}
    (kit / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {kit / ARCHIVE}: {size / 2**20:.1f} MiB; with the checkout {(size + rest) / 2**20:.1f} of "
          f"{CARRY_LIMIT / 2**20:.0f} MiB a call carries")
    return kit / ARCHIVE


def install(site: Path, kit: Path = KIT) -> None:
    """Unpack the kit into `site` and install this checkout there (dependencies: the machine's own)."""
    manifest = json.loads((kit / "manifest.json").read_text())
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python"] != here:
        raise KitError(f"the kit holds TVM for CPython {manifest['python']}, this is {here}: "
                       f"pack it with --python {here}")
    site.mkdir(parents=True, exist_ok=True)
    with tarfile.open(kit / manifest["archive"], "r:xz") as tar:
        tar.extractall(site, filter="data")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "--upgrade", "--ignore-requires-python", "--no-compile",
                    "--target", str(site), str(ROOT)], check=True)
    print(f"installed TVM {manifest['versions']['apache-tvm']} and ibert-tvm into {site}")


def cuda_environment(environ: dict[str, str], links: Path) -> dict[str, str]:
    """`environ` with the CUDA toolkit's nvcc on PATH and a libcudart.so.13 on the loader's path, where either is
    found but not there: without libcudart, `import tvm` skips its CUDA runtime silently and sees no GPU.
    libcudart goes on the path alone, as a link in `links` (a toolkit's lib folder would also put its cuBLAS
    before the one PyTorch was built with): PyTorch's own copy (the `nvidia` wheels) first, else the toolkit's."""
    env = dict(environ)
    homes = [Path(h) for h in (env.get("CUDA_HOME"), env.get("CUDA_PATH")) if h]
    homes += sorted(Path("/usr/local").glob("cuda*"))
    on_path = shutil.which("nvcc", path=env.get("PATH"))
    nvcc = on_path or next((str(h / "bin/nvcc") for h in homes if (h / "bin/nvcc").is_file()), None)
    if nvcc and not on_path:
        env["PATH"] = f"{Path(nvcc).parent}{os.pathsep}{env.get('PATH', '')}"
    spec = importlib.util.find_spec("nvidia")
    wheels = [Path(d) for d in spec.submodule_search_locations] if spec and spec.submodule_search_locations else []
    dirs = [*(d for w in wheels for d in sorted(w.glob("*/lib"))),
            *(Path(nvcc).resolve().parents[1] / sub for sub in ("lib64", "lib") if nvcc),
            *(h / sub for h in homes for sub in ("lib64", "lib"))]
    found = next((d / "libcudart.so.13" for d in dirs if (d / "libcudart.so.13").exists()), None)
    if found:
        links.mkdir(parents=True, exist_ok=True)
        (links / found.name).unlink(missing_ok=True)
        (links / found.name).symlink_to(found.resolve())
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(links), env.get("LD_LIBRARY_PATH")]))
    return env


#: printed first on the GPU machine: what TVM sees there (a run whose TVM sees no GPU fails here)
_PROBE = """import shutil, torch, tvm
print("nvcc:", shutil.which("nvcc"), "| torch", torch.__version__, "cuda", torch.cuda.is_available())
dev = tvm.cuda(0)
print("tvm", tvm.__version__, "from", tvm.__file__, "sees a GPU:", dev.exist,
      dev.exist and (dev.device_name, dev.compute_version))
assert dev.exist, "TVM sees no CUDA GPU (is libcudart.so.13 on LD_LIBRARY_PATH? see above)"
assert shutil.which("nvcc"), "no nvcc on PATH: the CUDA build tests would skip, and nothing could be compiled"
"""


def _step(name: str, cmd: list[str], out: Path, deadline: float, env: dict[str, str]) -> int:
    """Run one check until `deadline`; its output goes to out/NAME.log as it comes. At the deadline its whole
    process group is stopped (pytest's xdist workers too)."""
    left = deadline - time.monotonic()
    log = out / f"{name}.log"
    if left < 30:
        log.write_text(f"not run: {left:.0f} s of the budget left\n")
        return -1
    print(f"== {name} ({left:.0f} s left): {' '.join(cmd)}", flush=True)
    started = time.monotonic()
    with log.open("w") as f:
        try:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**env, "PYTHONUNBUFFERED": "1"})
        except FileNotFoundError as err:
            f.write(f"{err}\n")
            proc = None
        try:
            rc = proc.wait(timeout=left) if proc else 127
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
            f.write(f"\nstopped at the budget ({left:.0f} s)\n")
    print(f"   rc {rc} in {time.monotonic() - started:.0f} s; last lines:", flush=True)
    print("".join(log.read_text().splitlines(keepends=True)[-8:]), flush=True)
    return rc


def run(out: Path, budget_s: float, models: str, workers: int) -> int:
    """The GPU checks in order, within `budget_s`: the GPU tests, then the peers benchmark on the GPU."""
    start = time.monotonic()
    deadline = start + budget_s
    out.mkdir(parents=True, exist_ok=True)
    # -P: the checkout's own ibert_tvm/ (without relay_passes/ and schedules/ inside) must not shadow the install
    py = [sys.executable, "-P"]
    env = cuda_environment(dict(os.environ), Path(tempfile.gettempdir()) / "ibert_gpu_kit_libs")
    print("PATH", env.get("PATH"), "\nLD_LIBRARY_PATH", env.get("LD_LIBRARY_PATH"), flush=True)
    _step("nvidia-smi", ["nvidia-smi"], out, deadline, env)
    if _step("environment", [*py, "-c", _PROBE], out, deadline, env):
        return 1
    tests = _step("gpu-tests", [*py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-n", str(workers),
                                "--dist", "loadfile", *GPU_TESTS], out, start + TESTS_SHARE * budget_s, env)
    if not tests and "SKIPPED" in (out / "gpu-tests.log").read_text():
        print("   a GPU test skipped on the GPU machine: counted as a failure", flush=True)
        tests = 1
    bench = _step("gpu-bench", [*py, "bench/bench_peers.py", "--device", "cuda", "--models", models,
                                "--rounds", "3", "--repeats", "20", "--out", str(out)], out, deadline, env)
    return tests or bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: the kit for the GPU machine's Python, into .gpu/")
    p.add_argument("--python", default="3.12", help="the GPU machine's CPython version")
    i = sub.add_parser("install", help="there: unpack the kit and install this checkout")
    for command in (p, i):
        command.add_argument("--kit", type=Path, default=KIT,
                             help="the kit's folder (default: .gpu/; git ignores it, so a copy of the "
                                  "checkout for the GPU machine must take it along)")
    i.add_argument("--site", type=Path, default=Path("/tmp/site"))
    r = sub.add_parser("run", help="there: the GPU tests, then the benchmark")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--budget-s", type=float, default=480,
                   help="seconds for all the checks (the device call's limit is 600 s; install comes before)")
    r.add_argument("--models", default="bert-base,minilm-random")
    r.add_argument("--workers", type=int, default=4, help="pytest-xdist workers for the tests (one per file)")
    args = parser.parse_args()
    try:
        if args.command == "pack":
            pack(args.python, args.kit)
        elif args.command == "install":
            install(args.site, args.kit)
        else:
            return run(args.out, args.budget_s, args.models, args.workers)
    except (KitError, FileNotFoundError) as err:
        raise SystemExit(f"gpu_kit: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
