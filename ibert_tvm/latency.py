"""Latency of a loaded artifact over batch sizes and sequence lengths: percentiles, JSON, Markdown, a plot.

What `ibert-tvm bench` runs. Inputs are random token ids within the vocabulary (every token attended), the
model is warmed up before timing, and p50 / p90 / p99 are taken over the repeated runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .reports import pyplot, stamped, write_results
from .runtime import IntegerModel

__all__ = ["LatencyRow", "latency_row", "measure_latency", "time_calls", "write_report"]


@dataclass(frozen=True)
class LatencyRow:
    """Latency percentiles (milliseconds) of one (batch, seq) input shape."""

    batch: int
    seq: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    runs: int


def measure_latency(model: IntegerModel, batch_sizes: list[int], seq_lengths: list[int], warmup: int = 3,
                    repeats: int = 100, seed: int = 0, progress: bool = True) -> list[LatencyRow]:
    """Time `model` on random ids for every (batch, seq); a progress bar over the shapes. Every shape's inputs
    are made and checked (`IntegerModel.validate`) before the first is timed, so that a shape the model
    cannot run is an error before the bar starts."""
    rng = np.random.default_rng(seed)
    vocab = model.meta["model"]["vocab_size"]
    shapes = [(b, s) for b in batch_sizes for s in seq_lengths]
    inputs = [model.validate(rng.integers(0, vocab, (b, s), dtype=np.int64), np.ones((b, s), np.int32))
              for b, s in shapes]
    rows = []
    for (batch, seq), args in tqdm(list(zip(shapes, inputs)), desc="bench", unit="shape", disable=not progress):
        rows.append(latency_row(batch, seq, time_calls(lambda: model(*args, integer=True), warmup, repeats)))
    return rows


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, warmup_seconds: float = 0.0) -> list[float]:
    """Milliseconds of `repeats` calls of `fn` after at least `warmup` untimed ones and `warmup_seconds` of them
    (a model called after other work runs slower for its first several calls: BERT-base 1 x 32 took 9.5 ms
    at its 2nd call and 8.0 ms from about its 12th on, on the 2-core VM of bench/RESULTS.md, 2026-12-05)."""
    start, done = time.perf_counter(), 0
    while done < warmup or time.perf_counter() - start < warmup_seconds:
        fn()
        done += 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return times


def latency_row(batch: int, seq: int, times_ms: list[float]) -> LatencyRow:
    """p50 / p90 / p99 of the timed calls."""
    p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
    return LatencyRow(batch, seq, float(p50), float(p90), float(p99), len(times_ms))


def write_report(rows: list[LatencyRow], out_dir: str | Path, title: str, context: dict) -> dict[str, Path]:
    """`latency.json`, `latency.md` and `latency.png` (p50 vs sequence length, one line per batch size)."""
    context = stamped(context)
    lines = [f"# {title}", "", *(f"- {k}: {v}" for k, v in context.items()), "",
             "| batch | seq | p50 ms | p90 ms | p99 ms | runs |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r.batch} | {r.seq} | {r.p50_ms:.2f} | {r.p90_ms:.2f} | {r.p99_ms:.2f} | {r.runs} |" for r in rows]
    return write_results(out_dir, "latency", {"title": title, "context": context, "rows": [asdict(r) for r in rows]},
                         "\n".join(lines), lambda path: _plot(rows, path, title))


def _plot(rows: list[LatencyRow], path: Path, title: str) -> None:
    """p50 latency against sequence length, one line per batch size, p90 as the band's upper edge."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for batch in sorted({r.batch for r in rows}):
        mine = sorted((r for r in rows if r.batch == batch), key=lambda r: r.seq)
        seqs = [r.seq for r in mine]
        ax.plot(seqs, [r.p50_ms for r in mine], marker="o", label=f"batch {batch} (p50)")
        ax.fill_between(seqs, [r.p50_ms for r in mine], [r.p90_ms for r in mine], alpha=0.2)
    ax.set_xlabel("sequence length")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
