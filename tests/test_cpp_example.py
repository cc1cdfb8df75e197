"""examples/cpp: the C++ driver, built with g++ against the installed TVM runtime, loads a tiny encoder exported
by `ibert_tvm.compile(...).export(...)` for the host and prints exactly the integers `ibert_tvm.load` computes,
with no Python in the process.

The tiny model and its builds are cached per process (`tiny_case`, `compiled`): tests/test_aarch64.py reuses
the host build as its reference.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import ibert_tvm
from ibert_tvm.compiler import CompiledModel
from test_model import batches, program_inputs, tiny, with_segments

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cpp"
BATCH, SEQ = 2, 16


@functools.cache
def tiny_case() -> tuple[ibert_tvm.QuantizedModel, np.ndarray, np.ndarray]:
    """(model, int64 ids [B, L], int32 mask [B, L]) of a calibrated 2-layer RoBERTa; row 1 is padded."""
    qm = ibert_tvm.from_pretrained(tiny("roberta"), calibration=batches(1, 2, 2, SEQ, seed=1))
    b = batches(1, 1, BATCH, SEQ, seed=5)[0]
    return qm, b.input_ids.numpy(), b.attention_mask.numpy().astype(np.int32)


@functools.cache
def compiled(target_name: str) -> CompiledModel:
    """The tiny model compiled for a registry target ('llvm', 'aarch64', ...), one (B, L) bucket, untuned."""
    return ibert_tvm.compile(tiny_case()[0], target_name, tuning_logs=False, batch_sizes=(BATCH,), seq_lengths=(SEQ,))


@functools.cache
def python_vm_output() -> np.ndarray:
    """The host build exported and loaded back by `ibert_tvm.load`: the reference every driver run must equal."""
    _, ids, mask = tiny_case()
    with tempfile.TemporaryDirectory() as tmp:
        return ibert_tvm.load(compiled("llvm").export(Path(tmp) / "tiny.so"))(ids, mask, integer=True)


def write_inputs(path: Path, ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None = None) -> Path:
    """The driver's input file: 'B L', the ids, the mask and, where given, the token types."""
    rows = [f"{ids.shape[0]} {ids.shape[1]}", *(" ".join(map(str, a.ravel())) for a in (ids, mask, types)
                                                 if a is not None)]
    path.write_text("\n".join(rows) + "\n")
    return path


def parse_output(stdout: str) -> tuple[np.ndarray, float | None]:
    """(output tensor, median ms or None) from the driver's 'shape: / dtype: / values: / time_ms:' lines."""
    fields = dict(line.split(": ", 1) for line in stdout.strip().splitlines() if ": " in line)
    shape = tuple(int(d) for d in fields["shape"].split())
    values = np.array(fields["values"].split(), dtype=np.int64).astype(fields["dtype"]).reshape(shape)
    return values, float(fields["time_ms"]) if "time_ms" in fields else None


def build_driver(kind: str, build_dir: Path) -> Path:
    """`make -C examples/cpp <kind>` ('host' or 'aarch64') into build_dir; raises with make's output on failure."""
    done = subprocess.run(["make", "-C", str(EXAMPLE), kind, f"BUILD={build_dir}", f"PYTHON={sys.executable}"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"building the {kind} driver failed:\n{done.stdout}\n{done.stderr}"
    return build_dir / kind / "ibert_run"


@pytest.fixture(scope="module")
def host_driver(tmp_path_factory) -> Path:
    """The host driver, built once for this module's tests."""
    return build_driver("host", tmp_path_factory.mktemp("build"))


def test_host_driver_matches_python_vm(host_driver, tmp_path, report):
    _, ids, mask = tiny_case()
    library = compiled("llvm").export(tmp_path / "tiny_llvm.so")
    done = subprocess.run([host_driver, library, write_inputs(tmp_path / "in.txt", ids, mask), "20"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out, ms = parse_output(done.stdout)
    ref = python_vm_output()
    assert out.dtype == ref.dtype == np.int8 and out.shape == ref.shape == (BATCH, SEQ, 64)
    np.testing.assert_array_equal(out, ref)
    report(f"examples/cpp host driver, tiny 2-layer RoBERTa ({BATCH}x{SEQ}), llvm build: identical to Python's VM "
           f"on all {out.size} int8 outputs; median {ms:.3f} ms per call")


def test_host_driver_passes_sentence_pair_token_types(host_driver, tmp_path):
    """A tiny BERT's sentence pairs: the token types in the input file reach the program (the driver prints
    what `ibert_tvm.load` computes with them, which differs from all types 0)."""
    qm = ibert_tvm.from_pretrained(tiny("bert"), calibration=[with_segments(b, 1) for b in batches(0, 2, 2, SEQ, 1)])
    lib = ibert_tvm.compile(qm, "llvm", tuning_logs=False, batch_sizes=(BATCH,), seq_lengths=(SEQ,))
    library = lib.export(tmp_path / "pairs.so")
    b = with_segments(batches(0, 1, BATCH, SEQ, seed=5)[0], seed=2)
    ids, mask, types = program_inputs(b)
    done = subprocess.run([host_driver, library, write_inputs(tmp_path / "in.txt", ids, mask, types)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    loaded = ibert_tvm.load(library)
    want = loaded(ids, mask, types, integer=True)
    np.testing.assert_array_equal(parse_output(done.stdout)[0], want)
    np.testing.assert_array_equal(lib(ids, mask, types, integer=True), want)  # the in-process model, positionally
    assert not np.array_equal(want, loaded(ids, mask, integer=True))


def test_driver_names_a_bad_input_file(host_driver, tmp_path):
    (tmp_path / "short.txt").write_text("2 16\n1 2 3\n")
    done = subprocess.run([host_driver, tmp_path / "missing.so", tmp_path / "short.txt"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1 and "expected 64 integers after 'B L'" in done.stderr, done.stderr
    ones = " ".join(["1"] * 32)
    for tail, reason in (("0 1 0", "expected 32 token types after the mask, or none (found 3 more values)"),
                         (f"{' '.join(['0'] * 32)} 7", "(found 33 more values)"),
                         (f"types: {' '.join(['0'] * 31)}", "token type 'types:' is not an integer in [0, 2^31)"),
                         (f"{' '.join(['0'] * 31)} -1", "token type '-1' is not")):
        (tmp_path / "types.txt").write_text(f"2 16\n{ones}\n{ones}\n{tail}\n")
        done = subprocess.run([host_driver, tmp_path / "missing.so", tmp_path / "types.txt"], capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 1 and reason in done.stderr, done.stderr
