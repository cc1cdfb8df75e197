"""examples/cpp: the C++ driver, built with g++ against the installed TVM runtime, loads a tiny encoder exported
by `ibert_tvm.compile(...).export(...)` for the host and prints exactly the integers `ibert_tvm.load` computes,
with no Python in the process.

The tiny model and its builds are cached per process (`tiny_case`, `compiled`): tests/test_aarch64.py reuses
the host build as its reference.
"""

from __future__ import annotations

import functools
import json
import shutil
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


@pytest.fixture(scope="module")
def tiny_library(tmp_path_factory) -> Path:
    """The tiny model's host build exported once (library and metadata JSON) for the refusal tests."""
    return compiled("llvm").export(tmp_path_factory.mktemp("library") / "tiny.so")


def run_driver(driver: Path, *args) -> subprocess.CompletedProcess:
    """The driver run on `args`, its output read as UTF-8 (what it prints of the metadata), whatever the locale."""
    return subprocess.run([driver, *args], capture_output=True, encoding="utf-8", timeout=120, check=False)


def refused(done: subprocess.CompletedProcess, reason: str, status: int = 1) -> bool:
    """Whether the driver exited with `status`, `reason` in its message and nothing on stdout."""
    return done.returncode == status and reason in done.stderr and not done.stdout


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
                         (f"types: {' '.join(['0'] * 31)}", "token type 'types:' is not an integer in [0, 2147483647]"),
                         (f"{' '.join(['0'] * 31)} -1", "token type '-1' is not")):
        (tmp_path / "types.txt").write_text(f"2 16\n{ones}\n{ones}\n{tail}\n")
        done = subprocess.run([host_driver, tmp_path / "missing.so", tmp_path / "types.txt"], capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 1 and reason in done.stderr, done.stderr


def test_driver_refuses_token_ids_and_types_outside_the_model(host_driver, tiny_library, tmp_path):
    """The compiled program clamps an id past the vocabulary (or a type past the model's last) to the last one:
    the driver reads both sizes from the metadata JSON beside the library and refuses such inputs by position,
    as `ibert_tvm.load` does; the first and last ids still run."""
    meta = json.loads(tiny_library.with_suffix(".json").read_text())["model"]
    vocab, segments = meta["vocab_size"], meta["type_vocab_size"]
    assert segments == 1  # the tiny RoBERTa: type 1 is past its last
    _, ids, mask = tiny_case()
    for row, pos, value in ((1, 3, vocab), (0, 2, -5), (0, 0, 999999)):
        bad = ids.copy()
        bad[row, pos] = value
        done = run_driver(host_driver, tiny_library, write_inputs(tmp_path / "ids.txt", bad, mask))
        assert refused(done, f"token id {value} at row {row}, position {pos} is not in [0, {vocab}), the model's "
                             "vocabulary"), done.stderr
    types = np.zeros_like(mask)
    types[1, 5] = 1
    done = run_driver(host_driver, tiny_library, write_inputs(tmp_path / "types.txt", ids, mask, types))
    assert refused(done, f"token type 1 at row 1, position 5 is not in [0, {segments})"), done.stderr
    edges = ids.copy()
    edges[0, :2] = 0, vocab - 1
    done = run_driver(host_driver, tiny_library, write_inputs(tmp_path / "edges.txt", edges, mask))
    assert done.returncode == 0 and not done.stderr, done.stderr
    np.testing.assert_array_equal(parse_output(done.stdout)[0],
                                  ibert_tvm.load(tiny_library)(edges, mask, integer=True))


def test_driver_reads_the_vocabulary_of_the_model_section_only(host_driver, tiny_library, tmp_path):
    """Only the top-level "model" object's own vocab_size counts: not one in the model config's labels nor in
    the tokenizer files quoted in the JSON, however the JSON is laid out. Without the JSON the driver warns and
    runs unchecked; a JSON without the sizes is refused."""
    meta = json.loads(tiny_library.with_suffix(".json").read_text())
    vocab = meta["model"]["vocab_size"]
    decoys = {"vocab_size": 3, "type_vocab_size": 7}
    meta["model"] = {**meta["model"], "config": {"label2id": decoys, "vocab_size": 3}, "head": [decoys]}
    meta["tokenizer"] = {"tokenizer.json": json.dumps({"model": decoys}), "model": decoys}
    meta["vocab_size"] = 3
    _, ids, mask = tiny_case()
    top = ids.copy()
    top[0, 1] = vocab - 1
    for name, text in (("sorted", json.dumps(meta, indent=1, sort_keys=True)), ("compact", json.dumps(meta))):
        library = Path(shutil.copy(tiny_library, tmp_path / f"{name}.so"))
        library.with_suffix(".json").write_text(text)
        done = run_driver(host_driver, library, write_inputs(tmp_path / "top.txt", top, mask))
        assert done.returncode == 0 and not done.stderr, (name, done.stderr)
        top[0, 1] = vocab
        done = run_driver(host_driver, library, write_inputs(tmp_path / "past.txt", top, mask))
        assert refused(done, f"token id {vocab} at row 0, position 1 is not in [0, {vocab})"), (name, done.stderr)
        top[0, 1] = vocab - 1
    bare = Path(shutil.copy(tiny_library, tmp_path / "bare.so"))
    done = run_driver(host_driver, bare, write_inputs(tmp_path / "in.txt", ids, mask))
    assert done.returncode == 0 and f"warning: no {tmp_path / 'bare.json'} beside the library" in done.stderr
    np.testing.assert_array_equal(parse_output(done.stdout)[0], python_vm_output())
    bare.with_suffix(".json").write_text(json.dumps({"model": {"config": {"vocab_size": vocab}}}))
    done = run_driver(host_driver, bare, tmp_path / "in.txt")
    assert refused(done, "bare.json: no positive model.vocab_size"), done.stderr
    bare.with_suffix(".json").write_text(json.dumps({"model": {"vocab_size": 1.5e4, "type_vocab_size": 1}}))
    done = run_driver(host_driver, bare, tmp_path / "in.txt")
    assert refused(done, "bare.json: model.vocab_size is not an integer"), done.stderr


def test_driver_decodes_the_escapes_of_json_strings_and_refuses_malformed_ones(host_driver, tiny_library, tmp_path):
    """Python's json.dumps (export's) writes a non-ASCII character as a \\uXXXX escape (an emoji as a surrogate
    pair), and escapes a quote and a backslash: the driver decodes the strings it reads, keys and values, as
    Python's json does (it read a key or value spelled with escapes verbatim, so missed it or printed the escapes),
    labels holding all of them do not disturb it, and a malformed escape is refused by name and byte offset (Python
    refuses those too; a lone surrogate, which Python keeps, has no UTF-8)."""
    meta = json.loads(tiny_library.with_suffix(".json").read_text())
    meta["model"]["labels"] = ["é", "😀", 'a "quote"', "back\\slash"]
    text = json.dumps(meta, indent=1, sort_keys=True)
    assert text.isascii() and '"\\u00e9"' in text and '"\\ud83d\\ude00"' in text and '"a \\"quote\\""' in text
    library = Path(shutil.copy(tiny_library, tmp_path / "escaped.so"))
    inputs = write_inputs(tmp_path / "in.txt", *tiny_case()[1:])

    def run_with(json_text: str) -> subprocess.CompletedProcess:
        library.with_suffix(".json").write_text(json_text)
        return run_driver(host_driver, library, inputs)

    family = meta["target"]["family"]  # this machine's, spelled as escapes below
    spelled = text.replace('"vocab_size"', '"vocab\\u005fsize"').replace(
        f'"family": "{family}"', '"family": "' + "".join(f"\\u{ord(c):04x}" for c in family) + '"')
    assert json.loads(spelled) == meta and '"vocab\\u005fsize"' in spelled and '"family": "\\u00' in spelled
    for json_text in (text, spelled):
        done = run_with(json_text)
        assert done.returncode == 0 and not done.stderr, done.stderr
        np.testing.assert_array_equal(parse_output(done.stdout)[0], python_vm_output())
    other = 'é😀 "q" \\'
    done = run_with(json.dumps({**meta, "target": {**meta["target"], "family": other}}))
    assert refused(done, f"escaped.so: built for the {other} target family"), done.stderr
    at = text.index('"\\u00e9"') + 1  # the label é's escape
    for bad, named in (("\\x41", "'\\x'"), ("\\u00g9", "'\\u00g9'"), ("\\u00e", "'\\u00e'"),
                       ("\\ud83d", "'\\ud83d'"), ("\\ud83d\\u0041", "'\\ud83d'"), ("\\ude00\\ud83d", "'\\ude00'")):
        done = run_with(text.replace('"\\u00e9"', f'"{bad}"'))
        assert refused(done, f"escaped.json: malformed JSON escape {named} at byte {at}"), (bad, done.stderr)
    done = run_with(text[:at] + "caf\\u00e9")
    assert refused(done, f"escaped.json: the JSON string at byte {at - 1} is not closed"), done.stderr


def test_driver_names_a_missing_library_another_machine_s_and_the_compiled_buckets(host_driver, tiny_library,
                                                                                     tmp_path):
    """A library that is not there is named so (TVM's loader said 'Check failed ... cannot open shared object');
    one whose metadata names another target family (an aarch64 or CUDA build) is refused before loading, naming
    the driver to use; a shape with no bucket lists the compiled ones."""
    _, ids, mask = tiny_case()
    inputs = write_inputs(tmp_path / "in.txt", ids, mask)
    assert refused(run_driver(host_driver, tmp_path / "nosuch.so", inputs), "nosuch.so: no such library file")
    meta = json.loads(tiny_library.with_suffix(".json").read_text())
    for family, reason in (("arm", "built for the arm target family, this driver for x86: run it with the driver "
                                   "built for its machine (make -C examples/cpp aarch64)"),
                           ("cuda", "built for a CUDA GPU; this driver runs CPU libraries")):
        library = Path(shutil.copy(tiny_library, tmp_path / f"{family}.so"))
        library.with_suffix(".json").write_text(json.dumps({**meta, "target": {**meta["target"], "family": family}}))
        assert refused(run_driver(host_driver, library, inputs), reason), family
    link = tmp_path / "current.so.1"  # a link without the .so extension TVM picks its loader by
    link.symlink_to(tiny_library)
    done = run_driver(host_driver, link, inputs)
    assert done.returncode == 0 and not done.stderr, done.stderr
    np.testing.assert_array_equal(parse_output(done.stdout)[0], ibert_tvm.load(tiny_library)(ids, mask, integer=True))
    assert refused(run_driver(host_driver, tiny_library.with_suffix(".json"), inputs), "is an artifact's metadata")
    done = run_driver(host_driver, tiny_library, write_inputs(tmp_path / "short.txt", ids[:, :9], mask[:, :9]))
    assert refused(done, f"nor 'main_b{BATCH}_s9' (a bucket for B={BATCH}, L=9); compiled: batch [{BATCH}] x seq "
                         f"[{SEQ}] (pad the rows"), done.stderr


def test_driver_refuses_metadata_of_another_library_by_its_sha256(host_driver, tiny_library, tmp_path):
    """The driver hashes the library (its own SHA-256) and refuses a JSON whose recorded digest differs (another
    model's, or a truncated library) before trusting its sizes, as `ibert_tvm.load` does; a JSON without the
    digest is not export's. Files of every length around SHA-256's 64-byte blocks and the driver's 1 MiB reads,
    their JSON holding hashlib's digest, pass the check (and then fail to load, being no library)."""
    import hashlib

    _, ids, mask = tiny_case()
    inputs = write_inputs(tmp_path / "in.txt", ids, mask)
    meta = json.loads(tiny_library.with_suffix(".json").read_text())
    other = Path(shutil.copy(tiny_library, tmp_path / "other.so"))
    other.with_suffix(".json").write_text(json.dumps({**meta, "library": {**meta["library"], "sha256": "0" * 64}}))
    assert refused(run_driver(host_driver, other, inputs), "other.so: the library does not match its metadata "
                                                           "other.json (SHA-256 differs")
    del meta["library"]
    other.with_suffix(".json").write_text(json.dumps(meta))
    assert refused(run_driver(host_driver, other, inputs), "other.json: no library.sha256")
    rng = np.random.default_rng(3)
    for size in (0, 1, 55, 56, 63, 64, 65, 119, 120, 128, (1 << 20) - 1, 1 << 20, (1 << 20) + 57):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        blob = tmp_path / f"blob{size}.so"
        blob.write_bytes(data)
        meta["library"] = {"sha256": hashlib.sha256(data).hexdigest()}
        blob.with_suffix(".json").write_text(json.dumps(meta))
        done = run_driver(host_driver, blob, inputs)
        assert done.returncode == 1 and "SHA-256" not in done.stderr, (size, done.stderr)


@pytest.mark.parametrize("head, reason", [
    ("99999999999 99999999999", "B '99999999999' is not an integer in [1, 1048576]"),
    ("2 0", "L '0' is not an integer in [1, 1048576]"),
    ("-1 16", "B '-1' is not"),
    ("two 16", "B 'two' is not"),
    ("2 16.0", "L '16.0' is not"),
    ("4096 8192", "B*L = 4096*8192 is more than 2^24 tokens"),
])
def test_driver_refuses_an_absurd_shape(host_driver, tmp_path, head, reason):
    """B and L are refused, by value, outside [1, 2^20] or with more than 2^24 tokens, before any allocation."""
    rows = write_inputs(tmp_path / "in.txt", *tiny_case()[1:]).read_text().splitlines()[1:]  # a good file's
    path = tmp_path / "head.txt"
    path.write_text("\n".join([head, *rows]) + "\n")
    done = run_driver(host_driver, tmp_path / "missing.so", path)
    assert refused(done, f"{path}: {reason}"), done.stderr


@pytest.mark.parametrize("repeat", ["abc", "-3", "0", "1.5", "5x", "", "1000001"])
def test_driver_refuses_a_repeat_count_that_is_not_a_positive_integer(host_driver, tiny_library, tmp_path, repeat):
    done = run_driver(host_driver, tiny_library, write_inputs(tmp_path / "in.txt", *tiny_case()[1:]), repeat)
    assert refused(done, f"REPEAT '{repeat}' is not an integer in [1, 1000000]", status=2), done.stderr
    assert "usage:" in done.stderr


def test_driver_refuses_a_row_without_a_real_token_and_a_mask_not_0_or_1(host_driver, tiny_library, tmp_path):
    """As `ibert_tvm.load` does: every row needs a real token (mask 1), and a mask holds only 0 and 1."""
    _, ids, mask = tiny_case()
    empty = mask.copy()
    empty[1] = 0
    with pytest.raises(ValueError, match="row 1 has no 1"):
        ibert_tvm.load(tiny_library)(ids, empty, integer=True)
    done = run_driver(host_driver, tiny_library, write_inputs(tmp_path / "empty.txt", ids, empty))
    assert refused(done, "mask row 1 has no 1: every row needs a real token"), done.stderr
    odd = mask.copy()
    odd[0, 4] = 2
    done = run_driver(host_driver, tiny_library, write_inputs(tmp_path / "odd.txt", ids, odd))
    assert refused(done, "mask value 2 at row 0, position 4 is not 0 or 1"), done.stderr
