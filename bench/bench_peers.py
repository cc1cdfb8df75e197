"""Integer-only ibert-tvm against the peers a user would pick, in one process, on the same inputs.

    .venv/bin/python bench/bench_peers.py [--models bert-base,minilm] [--tuning-logs DIR | --tune TRIALS]
                                          [--out bench/results]
    .venv/bin/python bench/bench_peers.py --profile bert-base:1x128     # per-kernel times (VM instrument)
    .venv/bin/python bench/bench_peers.py --profile-ort bert-base:1x128 # ONNX Runtime int8 per operator type
    .venv/bin/python bench/bench_peers.py --as-cpu avx2                 # every runner as on an AVX2-only CPU
    python3 bench/bench_peers.py --device cuda --models bert-base,minilm-random  # on a GPU (bench/gpu_kit.py)

Runs, per model and shape: ibert-tvm integer-only (untuned; tuned with --tuning-logs, or with --tune TRIALS,
which first tunes the program that runner compiles), TVM's own float32 build
of the same model (untuned), PyTorch FP32 eager, PyTorch dynamic int8 (`quantize_dynamic`, Linear layers),
ONNX Runtime FP32 and ONNX Runtime dynamic int8 (`onnxruntime.quantization.quantize_dynamic`). Shapes: seq 128
at batch 1 and 8, seq 32 and 256 at batch 1. Each shape's runners are timed in rounds (all built
first; per round each in turn after its own warm-up, the order rotating), so that a shared host's drift hits
all alike: median of the rounds' medians; ratios against PyTorch FP32 and ONNX Runtime int8 taken round by
round, their median and range; the host's CPU flags beside the results. Writes peers.json, peers.md, peers.png.
BERT-base uses seeded random weights (speed only); MiniLM is the real all-MiniLM-L6-v2, `minilm-random` its
architecture with seeded random weights (where its weights package is not installed).
`--device cuda` runs on the GPU instead: ibert-tvm's CUDA build for the GPU's arch against PyTorch FP32 and
FP16 on the same GPU, every runner from host arrays to host arrays.
`--as-cpu LEVEL` re-runs the script with CPUID masked to that level (`bench/mask_cpuid.c`), so the peers pick
the kernels of a narrower CPU on this host's cores and memory; ours is then built for `x86-LEVEL`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import torch

import ibert_tvm
from ibert_tvm.latency import time_calls
from ibert_tvm.classifier import default_model_dir

SHAPES = ((1, 128), (8, 128), (1, 32), (1, 256))
#: all-MiniLM-L6-v2's architecture (its config.json; BERT's vocabulary and 512 positions)
MINILM_ARCHITECTURE = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}
#: per device, the ratio columns: (row key, the runner each row is compared with)
REFERENCES = {"cpu": (("x_vs_torch_fp32", "PyTorch FP32"), ("x_vs_ort_int8", "ONNX Runtime dynamic int8")),
              "cuda": (("x_vs_torch_fp32", "PyTorch FP32 (CUDA)"), ("x_vs_torch_fp16", "PyTorch FP16 (CUDA)"))}
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "avx512bw", "avx2", "amx_int8")


def cpu_summary() -> dict:
    """Model name and the int8-relevant flags of /proc/cpuinfo."""
    from ibert_tvm.targets import host_cpu_flags, host_cpu_name

    flags = host_cpu_flags()
    return {"cpu": host_cpu_name(), "cores": os.cpu_count(), "int8_flags": [f for f in INT8_FLAGS if f in flags]}


def _check_cuda(args) -> None:
    """--device cuda needs a GPU that TVM sees, and a CUDA build of PyTorch for its runners; --as-cpu,
    --target and the profiles are CPU options."""
    import tvm

    if args.as_cpu or args.target or args.profile or args.profile_ort:
        raise SystemExit("bench_peers: --as-cpu, --target, --profile and --profile-ort are for the CPU; "
                         "--device cuda builds for the GPU present")
    if not tvm.cuda(0).exist:
        raise SystemExit("bench_peers: --device cuda needs a CUDA GPU, and TVM finds none here (tvm.cuda(0))")
    if not torch.cuda.is_available() and any(r.startswith("PyTorch") for r in (args.only or {"PyTorch"})):
        raise SystemExit(f"bench_peers: this PyTorch ({torch.__version__}) has no CUDA device, so its GPU runners "
                         "cannot run; install a CUDA build of PyTorch, or leave them out with --only")


def gpu_summary(gemm: str | None) -> dict:
    """The GPU's name and arch as TVM sees them, and the integer GEMM variant built for it."""
    import tvm

    from ibert_tvm.schedules.cuda import default_gemm
    from ibert_tvm.targets import resolve_target

    dev = tvm.cuda(0)
    return {"gpu": dev.device_name, "gpu_arch": "sm_" + dev.compute_version.replace(".", ""),
            "gemm": gemm or default_gemm(resolve_target("cuda").target), "torch": torch.__version__}


def masked_cpuid_env(level: str) -> dict[str, str]:
    """This process's environment plus the CPUID-masking shim (built here from bench/mask_cpuid.c) at `level`."""
    if "cpuid_fault" not in Path("/proc/cpuinfo").read_text():
        raise SystemExit("bench_peers: --as-cpu needs CPUID faulting, and /proc/cpuinfo lists no cpuid_fault")
    source = Path(__file__).with_name("mask_cpuid.c")
    shim = Path(tempfile.gettempdir()) / f"ibert_mask_cpuid_{os.getuid()}.so"
    if not shim.exists() or shim.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(shim), str(source), "-ldl"], check=True)
    return {**os.environ, "IBERT_MASK_CPUID": level, "LD_PRELOAD": str(shim)}


def load_model(name: str) -> torch.nn.Module:
    """The float encoder: seeded random BERT-base, the real MiniLM, or MiniLM's architecture seeded."""
    from transformers import AutoModel, BertConfig, BertModel

    random = {"bert-base": {}, "minilm-random": MINILM_ARCHITECTURE}
    if name in random:
        torch.manual_seed(0)
        return BertModel(BertConfig(**random[name]), add_pooling_layer=False).eval()
    if name == "minilm":
        return AutoModel.from_pretrained(default_model_dir(), local_files_only=True).eval()
    raise SystemExit(f"unknown model {name!r} (bert-base, minilm, minilm-random)")


def inputs(model: torch.nn.Module, batch: int, seq: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(batch * 1000 + seq)
    ids = rng.integers(1000, model.config.vocab_size, (batch, seq), dtype=np.int64)
    return ids, np.ones((batch, seq), np.int64)


def quantized(model, seq: int, float_layers: tuple[int, ...] = ()) -> ibert_tvm.QuantizedModel:
    """The I-BERT model of `model` (with `float_layers` in Q8BERT mode), calibrated on random batches of length
    `seq` from its vocabulary."""
    calibration = [ibert_tvm.Batch(*map(torch.from_numpy, inputs(model, 2, seq))) for _ in range(2)]
    return ibert_tvm.from_pretrained(model, calibration=calibration, float_layers=float_layers)


def ibert_compiled(model, batch: int, seq: int, tuning_logs: str | bool, target: str = "llvm",
                   float_layers: tuple[int, ...] = (), **schedule_options) -> ibert_tvm.CompiledModel:
    """The integer-only program (but for `float_layers`) for one shape, calibrated as in `quantized`."""
    return ibert_tvm.compile(quantized(model, seq, float_layers), target, tuning_logs=tuning_logs,
                             batch_sizes=(batch,), seq_lengths=(seq,), **schedule_options)


def ibert_runner(model, batch: int, seq: int, tuning_logs: str | bool, target: str = "llvm", **schedule_options):
    m = ibert_compiled(model, batch, seq, tuning_logs, target, **schedule_options).runner()
    return lambda ids, mask: m(ids, mask.astype(np.int32), integer=True)


def profile(name: str, batch: int, seq: int, out: Path, target: str = "llvm", repeats: int = 5) -> Path:
    """Per-kernel times of the untuned integer program, written to profile_*.txt: the Relax VM's instrument
    hook times every call (this TVM's VM has no built-in profiler), summed by kernel over `repeats` runs."""
    import time
    from collections import Counter

    import tvm
    from tvm import relax
    from tvm.runtime.vm import VMInstrumentReturnKind

    from ibert_tvm.model import function_name

    model = load_model(name)
    vm = relax.VirtualMachine(ibert_compiled(model, batch, seq, False, target).executable, tvm.cpu())
    ids, mask = inputs(model, batch, seq)
    args = [tvm.runtime.tensor(ids), tvm.runtime.tensor(mask.astype(np.int32)),
            tvm.runtime.tensor(np.zeros(ids.shape, np.int32))]
    main = vm[function_name(batch, seq)]
    main(*args)  # warm-up
    seconds, calls, started = Counter(), Counter(), {}

    def instrument(_func, symbol, before, _ret, *_args):
        if before:
            started[symbol] = time.perf_counter()
        else:
            seconds[symbol] += time.perf_counter() - started[symbol]
            calls[symbol] += 1
        return VMInstrumentReturnKind.NO_OP

    vm.set_instrument(instrument)
    for _ in range(repeats):
        main(*args)
    total = sum(seconds.values())
    kinds, kind_calls = Counter(), Counter()
    for k, v in seconds.items():
        kind = kernel_kind(k)
        kinds[kind] += v
        kind_calls[kind] += calls[k]
    lines = [f"{name} batch {batch} seq {seq}: {1e3 * total / repeats:.2f} ms per run in kernels (VM instrument)",
             *_time_table("kind", kinds, kind_calls, repeats, total), "",
             *_time_table("kernel", seconds, calls, repeats, total)]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"profile_{name}_b{batch}_s{seq}.txt"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())
    return path


def kernel_kind(name: str) -> str:
    """A kernel's kind: its name without the numbers that tell one layer's copy from another's."""
    return re.sub(r"\d+", "", name)


def _time_table(what: str, seconds, calls, repeats: int, total: float) -> list[str]:
    """Rows of (name, calls per run, ms per run, share of `total`), longest first."""
    return [f"{what:70s} {'calls':>6s} {'ms/run':>9s} {'share':>7s}"] + [
        f"{k[:70]:70s} {calls[k] // repeats:6d} {1e3 * v / repeats:9.3f} {100 * v / total:6.1f}%"
        for k, v in seconds.most_common()]


def tvm_float_runner(model, batch: int, seq: int):
    import tvm
    from tvm import relax

    from ibert_tvm.float_reference import float_program

    vm = relax.VirtualMachine(tvm.compile(float_program(model, batch, seq), "llvm"), tvm.cpu())
    types = tvm.runtime.tensor(np.zeros((batch, seq), np.int32))
    return lambda ids, mask: vm["main"](tvm.runtime.tensor(ids), tvm.runtime.tensor(mask), types)


def torch_cuda_runner(model, half: bool):
    """PyTorch eager on the GPU, FP32 or FP16 weights and activations; returns host memory, as ours does."""
    net = copy.deepcopy(model).to("cuda", torch.float16 if half else torch.float32)

    def run(ids, mask):
        with torch.inference_mode():
            out = net(input_ids=torch.from_numpy(ids).cuda(), attention_mask=torch.from_numpy(mask).cuda())
            return out.last_hidden_state.cpu()  # the copy to the host waits for the GPU
    return run


def torch_runner(model, int8: bool):
    net = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8) if int8 else model

    def run(ids, mask):
        with torch.inference_mode():
            return net(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    return run


def ort_runner(name: str, model, batch: int, seq: int, int8: bool, workdir: Path, profile_prefix: str = ""):
    """ONNX Runtime FP32 or dynamic int8 on both cores; with `profile_prefix`, its own profiler records every node."""
    import onnxruntime as ort

    path = workdir / f"{name}_{batch}x{seq}.onnx"  # one export per model and shape
    if not path.exists():
        ids, mask = inputs(model, batch, seq)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Hidden(model), (torch.from_numpy(ids), torch.from_numpy(mask)), str(path),
                              dynamo=True, input_names=["input_ids", "attention_mask"], external_data=False)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q = path.with_name(f"{path.stem}_int8.onnx")
        quantize_dynamic(str(path), str(q), weight_type=QuantType.QInt8)
        path = q
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    run = lambda ids, mask: session.run(None, {"input_ids": ids, "attention_mask": mask})  # noqa: E731
    run.session = session
    return run


def profile_ort(name: str, batch: int, seq: int, out: Path, repeats: int = 5) -> Path:
    """ONNX Runtime dynamic int8's time per operator type (its own profiler), summed over `repeats` runs after
    one warm-up, written to profile_ort_*.txt: where its time goes next to ours (`profile`)."""
    model = load_model(name)
    ids, mask = inputs(model, batch, seq)
    with tempfile.TemporaryDirectory() as tmp:
        run = ort_runner(name, model, batch, seq, True, Path(tmp), profile_prefix=str(Path(tmp) / "ort"))
        for _ in range(1 + repeats):
            run(ids, mask)
        events = json.loads(Path(run.session.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    warm = sorted(e["ts"] for e in events if e.get("name") == "model_run")[1]  # the second run's start
    by_op: dict[str, float] = {}
    for e in nodes:
        if e["ts"] >= warm:
            by_op[e["args"]["op_name"]] = by_op.get(e["args"]["op_name"], 0.0) + e["dur"]
    total = sum(by_op.values())
    lines = [f"{name} batch {batch} seq {seq}: ONNX Runtime dynamic int8, {total / 1e3 / repeats:.2f} ms per run in "
             f"operators (its profiler)", f"{'operator':40s} {'ms/run':>9s} {'share':>7s}"]
    lines += [f"{op:40s} {us / 1e3 / repeats:9.3f} {100 * us / total:6.1f}%"
              for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"profile_ort_{name}_b{batch}_s{seq}.txt"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())
    return path


class _Hidden(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def bench_model(name: str, args, workdir: Path) -> list[dict]:
    """Median latency of every runner on every shape of one model, over `args.rounds` rounds per shape
    (`time_in_rounds`). A row's `median_ms` is the median of its rounds' medians, `round_ms` those medians."""
    model = load_model(name)
    rows = []
    for batch, seq in args.shapes:
        if seq > model.config.max_position_embeddings:
            continue
        ids, mask = inputs(model, batch, seq)
        makers = (_cuda_makers(name, model, batch, seq, args) if args.device == "cuda" else
                  _cpu_makers(name, model, batch, seq, args, workdir))
        unknown = sorted((args.only or set()) - set(makers))
        if unknown:
            raise SystemExit(f"bench_peers: --only names no runner of this run: {unknown}; the runners: "
                             f"{list(makers)} (the tuned one needs --tuning-logs or --tune)")
        runners = {runner: make() for runner, make in makers.items() if not args.only or runner in args.only}
        rounds = time_in_rounds(runners, lambda fn: fn(ids, mask), args, f"{name:9s} b{batch} s{seq:<4d}")
        rows += [{"model": name, "batch": batch, "seq": seq, "runner": runner,
                  "median_ms": float(np.median(medians)), "round_ms": medians} for runner, medians in rounds.items()]
    return rows


def tuned_logs(name: str, model, batch: int, seq: int, args) -> str:
    """The database the tuned runner applies: --tuning-logs as given, or (--tune N) N trials of tuning of
    the very program that runner compiles (same calibration, shape and target), kept in
    <out>/tuning/<model>_<target>_<batch>x<seq>, which a later run resumes."""
    if args.tuning_logs:
        return args.tuning_logs
    from ibert_tvm.tuning import tune

    folder = Path(args.out) / "tuning" / f"{name}_{args.target}_{batch}x{seq}"
    print(tune(quantized(model, seq), args.target, args.tune, folder, batch=batch, seq=seq), flush=True)
    return str(folder)


def _cpu_makers(name: str, model, batch: int, seq: int, args, workdir: Path) -> dict[str, Callable]:
    """The CPU runners of one shape, by name (made only where --only keeps them)."""
    makers = {"ibert-tvm int (untuned)": lambda: ibert_runner(model, batch, seq, False, args.target),
              "TVM float32 (untuned)": lambda: tvm_float_runner(model, batch, seq),
              "PyTorch FP32": lambda: torch_runner(model, False),
              "PyTorch dynamic int8": lambda: torch_runner(model, True),
              "ONNX Runtime FP32": lambda: ort_runner(name, model, batch, seq, False, workdir),
              "ONNX Runtime dynamic int8": lambda: ort_runner(name, model, batch, seq, True, workdir)}
    if args.tuning_logs or args.tune is not None:
        makers["ibert-tvm int (tuned)"] = lambda: ibert_runner(model, batch, seq,
                                                               tuned_logs(name, model, batch, seq, args), args.target)
    return makers


def _cuda_makers(name: str, model, batch: int, seq: int, args) -> dict[str, Callable]:
    """The GPU runners of one shape, by name: ours built for the GPU's arch (`--gemm`: its GEMM variant)."""
    options = {"gemm": args.gemm} if args.gemm else {}
    makers = {"ibert-tvm int CUDA (untuned)": lambda: ibert_runner(model, batch, seq, False, "cuda", **options),
              "PyTorch FP32 (CUDA)": lambda: torch_cuda_runner(model, False),
              "PyTorch FP16 (CUDA)": lambda: torch_cuda_runner(model, True)}
    if args.tuning_logs or args.tune is not None:
        makers["ibert-tvm int CUDA (tuned)"] = lambda: ibert_runner(
            model, batch, seq, tuned_logs(name, model, batch, seq, args), "cuda", **options)
    return makers


def time_in_rounds(runners: dict[str, Callable], call: Callable[[Callable], object], args, label: str
                    ) -> dict[str, list[float]]:
    """Per runner, the median milliseconds of `args.repeats` calls in each of `args.rounds` rounds: every
    round times every runner in turn (the order rotating round by round), each after its own warm-up
    (`args.warmup` calls and `args.warmup_seconds`), so that the host's drift over minutes hits all alike."""
    names = list(runners)
    medians: dict[str, list[float]] = {runner: [] for runner in names}
    for r in range(args.rounds if names else 0):
        for runner in names[r % len(names):] + names[:r % len(names)]:
            fn = runners[runner]
            medians[runner].append(float(np.median(time_calls(lambda: call(fn), args.warmup, args.repeats,
                                                              args.warmup_seconds))))
            print(f"{label} round {r + 1}/{args.rounds} {runner:28s} {medians[runner][-1]:9.2f} ms", flush=True)
    return medians


def with_ratios(rows: list[dict], references=REFERENCES["cpu"]) -> list[dict]:
    """Each row's speed-up over each reference runner (CPU: PyTorch FP32 and ONNX Runtime int8) on the same
    model and shape: the median of the rounds' ratios, with their lowest and highest (`*_range`)."""
    def ref(row, runner):
        match = [r["round_ms"] for r in rows if r["runner"] == runner
                 and (r["model"], r["batch"], r["seq"]) == (row["model"], row["batch"], row["seq"])]
        return match[0] if match else None

    for row in rows:
        for key, runner in references:
            base = ref(row, runner)
            ratios = [b / ours for b, ours in zip(base, row["round_ms"], strict=True)] if base else []
            row[key] = round(float(np.median(ratios)), 3) if ratios else None
            row[f"{key}_range"] = [round(min(ratios), 3), round(max(ratios), 3)] if ratios else None
    return rows


def write(rows: list[dict], out: Path, context: dict, references=REFERENCES["cpu"]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps({"context": context, "rows": rows}, indent=1))
    lines = [f"# ibert-tvm vs peers ({context['date']})", "", *(f"- {k}: {v}" for k, v in context.items()), "",
             "| model | batch | seq | runner | median ms | " + " | ".join(f"x vs {r}" for _, r in references) + " |",
             "| --- | ---: | ---: | --- | ---: |" + " ---: |" * len(references)]
    lines += [f"| {r['model']} | {r['batch']} | {r['seq']} | {r['runner']} | {_ms(r['median_ms'])} | "
              + " | ".join(_ratio(r, key) for key, _ in references) + " |" for r in rows]
    (out / "peers.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / "peers.png")
    print("\n".join(lines))


def _ms(value: float) -> str:
    """Milliseconds with one decimal, two below 10 ms (GPU times)."""
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ratio(row: dict, key: str) -> str:
    """A ratio with its rounds' range: '1.52 (1.48-1.55)'; the range left out where it is one value."""
    if row[key] is None:
        return "-"
    low, high = row[f"{key}_range"]
    return f"{row[key]:.2f}" if low == high else f"{row[key]:.2f} ({low:.2f}-{high:.2f})"


def _plot(rows: list[dict], path: Path) -> None:
    """Grouped bars: median latency per runner for each (model, batch, seq)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["batch"], r["seq"]) for r in rows})
    runners = list(dict.fromkeys(r["runner"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 2 * len(groups)), 4.5))
    width = 0.8 / max(1, len(runners))
    for i, runner in enumerate(runners):
        values = [next((r["median_ms"] for r in rows if (r["model"], r["batch"], r["seq"]) == g
                        and r["runner"] == runner), 0) for g in groups]
        ax.bar(np.arange(len(groups)) + i * width, values, width, label=runner)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, [f"{m}\nb{b} s{s}" for m, b, s in groups])
    ax.set_ylabel("median latency (ms, log)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _model_shape(spec: str) -> tuple[str, int, int]:
    """MODEL:BATCHxSEQ -> (model, batch, seq)."""
    name, shape = spec.split(":")
    batch, seq = map(int, shape.split("x"))
    return name, batch, seq


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="bert-base,minilm")
    parser.add_argument("--shapes", default=",".join(f"{b}x{s}" for b, s in SHAPES),
                        help="comma-separated BATCHxSEQ (default: 1x128,8x128,1x32,1x256)")
    parser.add_argument("--only", help="comma-separated runner names to run (default: all)")
    tuned = parser.add_mutually_exclusive_group()
    tuned.add_argument("--tuning-logs", help="a tuning database folder for the tuned integer build")
    tuned.add_argument("--tune", type=int, metavar="TRIALS", help="tune each shape's integer program for "
                       "TRIALS trials first (into <out>/tuning/, resumed by a later run) for the tuned build")
    parser.add_argument("--target", help="the integer build's target (default llvm: this CPU, or x86-LEVEL with "
                        "--as-cpu; e.g. x86-avx2 to measure the AVX2 kernels on a wider CPU)")
    parser.add_argument("--as-cpu", choices=("avx2", "avxvnni", "avx512vnni"),
                        help="run every runner as on a CPU of that level: CPUID masked, ours built for x86-LEVEL")
    parser.add_argument("--device", choices=tuple(REFERENCES), default="cpu",
                        help="cuda: ours built for the GPU present against PyTorch FP32 and FP16 on it")
    parser.add_argument("--gemm", choices=("imma", "dp4a", "simt"),
                        help="with --device cuda: the integer GEMM variant (default: the arch's best)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before each runner's timed ones")
    parser.add_argument("--warmup-seconds", type=float, default=1.0,
                        help="... and at least this long (a model runs slower for its first calls after others)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per runner and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all runners of a shape (order rotating)")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--profile", metavar="MODEL:BATCHxSEQ",
                        help="instead of comparing: per-kernel times of the integer program, e.g. bert-base:1x128")
    parser.add_argument("--profile-ort", metavar="MODEL:BATCHxSEQ",
                        help="instead of comparing: ONNX Runtime dynamic int8's time per operator type")
    args = parser.parse_args()
    args.only = set(args.only.split(",")) if args.only else None
    if args.tune is not None and args.tune < 1:
        raise SystemExit(f"bench_peers: --tune takes a number of trials of at least 1, got {args.tune}")
    if args.device == "cuda":
        _check_cuda(args)
    elif args.gemm:
        raise SystemExit("bench_peers: --gemm picks the CUDA GEMM variant; it needs --device cuda")
    if args.as_cpu and os.environ.get("IBERT_MASK_CPUID") != args.as_cpu:
        os.execve(sys.executable, [sys.executable, *sys.argv], masked_cpuid_env(args.as_cpu))
    args.target = args.target or ("cuda" if args.device == "cuda" else f"x86-{args.as_cpu}" if args.as_cpu else "llvm")
    if args.profile:
        profile(*_model_shape(args.profile), Path(args.out), args.target)
        return 0
    if args.profile_ort:
        profile_ort(*_model_shape(args.profile_ort), Path(args.out))
        return 0
    if args.device == "cpu" and any(r.startswith("ONNX Runtime") for r in (args.only or {"ONNX Runtime"})):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise SystemExit("bench_peers: ONNX Runtime is not installed; `make bench` installs it "
                             "(pip install -e '.[bench]'), or leave its runners out with --only")
    args.shapes = [tuple(map(int, s.split("x"))) for s in args.shapes.split(",")]
    torch.set_num_threads(os.cpu_count() or 1)
    cpu_only = {"cpuid_masked_to": args.as_cpu or "none (the host's own)",
                "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    context = {**cpu_summary(), **(gpu_summary(args.gemm) if args.device == "cuda" else cpu_only),
               "target": args.target,
               "date": date.today().isoformat(), "python": platform.python_version(), "command": " ".join(sys.argv)}
    print(context)
    references, rows = REFERENCES[args.device], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):  # written after each model: a run cut short keeps what it measured
            rows += bench_model(name, args, Path(tmp))
            write(with_ratios(rows, references), Path(args.out), context, references)
    return 0


if __name__ == "__main__":
    sys.exit(main())
