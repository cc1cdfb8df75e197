"""compile / export / load on a tiny BERT classifier with a real tokenizer: identical integers in another
process and across shape buckets, `classify`, and a clear error for each kind of bad input or artifact."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

import ibert_tvm
from ibert_tvm import artifact, targets
from ibert_tvm.relay_passes.pipeline import build
from test_cpp_example import compiled
from tiny_models import LABELS, calibration_texts, held_out_texts, save_tiny_classifier

BATCHES, SEQS = (1, 2), (8, 16)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def quantized(tiny_dir):
    return ibert_tvm.from_pretrained(str(tiny_dir), calibration=calibration_texts())


@pytest.fixture(scope="module")
def compiled_model(quantized):
    return ibert_tvm.compile(quantized, "llvm", tuning_logs=False, batch_sizes=BATCHES, seq_lengths=SEQS)


@pytest.fixture(scope="module")
def exported(compiled_model, tmp_path_factory):
    return compiled_model.export(tmp_path_factory.mktemp("artifact") / "model.so")


@pytest.fixture(scope="module")
def loaded(exported):
    return ibert_tvm.load(exported)


def _inputs(model, texts):
    """(ids, mask) of single sentences (their token types are all 0)."""
    ids, mask, types = model.encode_texts(texts)
    assert not types.any()
    return ids, mask


def test_export_writes_library_and_metadata(exported):
    meta = json.loads(exported.with_suffix(".json").read_text())
    assert meta["target"]["name"] == "llvm" and meta["target"]["family"] == "x86"
    assert meta["versions"]["tvm"] == tvm.__version__
    assert meta["buckets"]["batch_sizes"] == list(BATCHES) and meta["buckets"]["seq_lengths"] == list(SEQS)
    assert meta["model"]["labels"] == list(LABELS.values())
    assert meta["output"]["kind"] == "logits" and meta["output"]["dtype"] == "int32"
    assert len(meta["output"]["scale"]) == 3
    assert "vocab.txt" in meta["tokenizer"] or "tokenizer.json" in meta["tokenizer"]


def test_buckets_and_batch_chunks_equal_the_exact_shape_program(quantized, loaded):
    """5 texts (chunks 2+2+1) padded to the 16-token bucket give the integers of a [5, L] program."""
    ids, mask = (a[:, :11] for a in _inputs(loaded, held_out_texts()[:5]))
    ours = loaded(ids, mask, integer=True)
    vm = relax.VirtualMachine(build(quantized.program(*ids.shape), "llvm"), tvm.cpu())
    exact = vm["main"](*map(tvm.runtime.tensor, (ids, mask, np.zeros_like(mask)))).numpy()
    assert ours.dtype == np.int32
    np.testing.assert_array_equal(ours, exact)


@pytest.mark.parametrize("options", [{"force_dequant": "gelu"}, {"head": "float"}], ids=["q8bert-gelu", "float-head"])
def test_compile_exports_q8bert_mode_and_a_float_head(options, tmp_path):
    """A model with float parts (Q8BERT mode, HF's float head) compiles and exports, without the no-float check
    that integer-only models pass, and runs as TVM's unscheduled build of its program does; its metadata says
    which parts are float."""
    path = save_tiny_classifier(tmp_path / "model")
    qm = ibert_tvm.from_pretrained(str(path), calibration=calibration_texts(), **options)
    assert not qm.integer_only
    loaded = ibert_tvm.load(ibert_tvm.compile(qm, "llvm", tuning_logs=False, batch_sizes=(2,),
                                              seq_lengths=(16,)).export(tmp_path / "m.so"))
    ids, mask = _inputs(loaded, held_out_texts()[:2])
    ours = loaded(ids, mask, integer=True)
    vm = relax.VirtualMachine(tvm.compile(relax.transform.LegalizeOps()(qm.program(*ids.shape)), "llvm"), tvm.cpu())
    plain = vm["main"](*map(tvm.runtime.tensor, (ids, mask, np.zeros_like(mask)))).numpy()
    np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-5 * float(np.abs(plain).max()))
    model_meta = loaded.meta["model"]
    assert (model_meta["force_dequant"], model_meta["head"]) == (options.get("force_dequant", "none"),
                                                                options.get("head", "integer"))


def test_another_process_gives_identical_outputs(exported, loaded, tmp_path):
    """The artifact loaded and run on token ids in a new process: the same integers, and neither transformers
    nor the compiler imported (`ibert_tvm.load` is the TVM runtime's side)."""
    ids, mask = _inputs(loaded, held_out_texts()[:4])
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    script = ("import sys, numpy as np, ibert_tvm; m = ibert_tvm.load(sys.argv[1]); "
              "np.save(sys.argv[4], m(np.load(sys.argv[2]), np.load(sys.argv[3]), integer=True)); "
              "heavy = {'transformers', 'ibert_tvm.model', 'ibert_tvm.compiler', 'ibert_tvm.relay_passes'}; "
              "assert not heavy & set(sys.modules), heavy & set(sys.modules)")
    subprocess.run([sys.executable, "-c", script, str(exported), str(tmp_path / "ids.npy"),
                    str(tmp_path / "mask.npy"), str(tmp_path / "out.npy")], check=True, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), loaded(ids, mask, integer=True))


def test_texts_past_the_longest_bucket_are_truncated_with_a_warning(loaded):
    """A text longer than the longest compiled length is cut to it (ending in [SEP], as the tokenizer
    truncates), and a warning says so; texts that fit are tokenized as they are, without one."""
    long = " ".join(["word"] * 40)
    with pytest.warns(UserWarning, match="longer than the longest compiled length \\(16 tokens\\) were truncated"):
        ids, mask, _ = loaded.encode_texts([long, "short"])
    assert ids.shape == (2, 16) and ids[0, -1] == loaded.tokenizer().sep_token_id and mask[0].all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids, _, _ = loaded.encode_texts(["short", "a little longer text"])
    assert ids.shape[1] < 16


def test_no_texts_classify_to_no_predictions(loaded):
    assert loaded.classify([]) == [] and loaded.classify(np.array([], dtype=str)) == []
    with pytest.raises(ibert_tvm.InputError, match="texts is empty"):
        loaded.encode_texts([])


def test_classify_uses_the_bundled_tokenizer_and_labels(loaded):
    texts = held_out_texts()[:3]
    predictions = loaded.classify(texts)
    logits = loaded(*_inputs(loaded, texts))
    assert [p.label for p in predictions] == [LABELS[int(i)] for i in logits.argmax(1)]
    np.testing.assert_allclose(np.stack([p.logits for p in predictions]), logits)
    # texts as a numpy array or a tuple: the same predictions
    for given in (np.array(texts), tuple(texts)):
        assert [p.label for p in loaded.classify(given)] == [p.label for p in predictions]
        np.testing.assert_array_equal(loaded.encode_texts(given)[0], _inputs(loaded, texts)[0])


def test_torch_and_int32_inputs_are_accepted(loaded):
    import torch

    ids, mask = _inputs(loaded, held_out_texts()[:2])
    ref = loaded(ids, mask, integer=True)
    np.testing.assert_array_equal(loaded(torch.from_numpy(ids), torch.from_numpy(mask), integer=True), ref)
    np.testing.assert_array_equal(loaded(ids.astype(np.int32), mask.astype(bool), integer=True), ref)


def test_threads_sharing_a_loaded_model_get_the_answers_of_sequential_calls(exported):
    """One loaded model called from 4 threads at once (ids of every bucket, and texts through the shared fast
    tokenizer, whose per-call settings clash): each answer equals its sequential one. Until 2026-12-07 every
    overlapping call failed inside the Relax VM ('Check failed: reg < frame->register_file.size()')."""
    from concurrent.futures import ThreadPoolExecutor

    model = ibert_tvm.load(exported)  # its own: no bucket function made yet, so the threads also make them
    rng = np.random.default_rng(7)
    ids = [rng.integers(1000, 30000, (int(rng.integers(1, 4)), int(rng.integers(2, 17)))) for _ in range(48)]
    texts = [held_out_texts()[i % 5: i % 5 + 1 + i % 3] for i in range(24)]
    with ThreadPoolExecutor(4) as pool:
        parallel_ids = list(pool.map(lambda x: model(x, integer=True), ids))
        parallel_texts = list(pool.map(lambda t: [p.logits for p in model.classify(t)], texts))
    for x, got in zip(ids, parallel_ids):
        np.testing.assert_array_equal(got, model(x, integer=True))
    for t, got in zip(texts, parallel_texts):
        np.testing.assert_array_equal(np.stack(got), np.stack([p.logits for p in model.classify(t)]))


def test_outputs_are_the_callers_own(loaded):
    """A call reuses its bucket's input tensors and hands back a copy of the VM's output (not a view, which
    would keep the VM's memory alive for as long as the caller keeps the array): a later call leaves an earlier
    output as it was, and Fortran-ordered inputs are taken by value."""
    ids, mask = _inputs(loaded, held_out_texts()[:2])
    first = loaded(ids, mask, integer=True)
    assert first.base is None and not np.array_equal(first[0], first[1])
    kept = first.copy()
    swapped = loaded(ids[::-1].copy(), mask[::-1].copy(), integer=True)
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(swapped, first[::-1])
    np.testing.assert_array_equal(loaded(np.asfortranarray(ids), np.asfortranarray(mask), integer=True), first)


@pytest.mark.parametrize("make, message", [
    (lambda ids, m: (ids.astype(np.float32), m), "input_ids must hold integers, got float32"),
    (lambda ids, m: (__import__("torch").from_numpy(ids).half(), m), "input_ids must hold integers, got float16"),
    (lambda ids, m: (ids, __import__("torch").from_numpy(m * 0.5).bfloat16()), "attention_mask must hold integers, "
                                                                               "bool, or floats of 0 and 1 only, got "
                                                                               "bfloat16"),
    (lambda ids, m: (ids[:, :, None], m), "shape [batch, seq]"),
    (lambda ids, m: (np.ones((1, 17), np.int64), None), "exceeds the longest compiled length 16"),
    (lambda ids, m: (np.full_like(ids, 30522), m), "[0, 30522)"),
    (lambda ids, m: (np.full_like(ids, -1), m), "[0, 30522)"),
    (lambda ids, m: (ids, m * 2), "values must be 0 or 1"),
    (lambda ids, m: (ids, m[:, :-1]), "differs from input_ids shape"),
    (lambda ids, m: (ids, np.zeros_like(m)), "row 0 has no 1"),
    (lambda ids, m: (ids, m * 0.5), "attention_mask must hold integers, bool, or floats of 0 and 1 only"),
    (lambda ids, m: (np.full_like(ids, 1 << 63, dtype=np.uint64), m), "outside int64"),
    (lambda ids, m: ([[101, 2023], [101, 2023, 102]], None), "rows of equal length"),
    (lambda ids, m: ([[1 << 70, 1]], None), "outside int64"),
    (lambda ids, m: ([[101, True, 102]], None), "input_ids must hold integers, got bool (True or False among"),
    (lambda ids, m: ([[101, 2023, 102], (101, np.False_, 102)], None), "input_ids must hold integers, got bool"),
    (lambda ids, m: (["a sentence"], None), "got <U10 (texts: classify() or encode_texts() tokenizes them)"),
    (lambda ids, m: ([], None), "input_ids is empty (shape [0])"),
    (lambda ids, m: (ids[:, :0], None), "input_ids is empty (shape [2, 0])"),
    (lambda ids, m: (ids, []), "attention_mask is empty"),
])
def test_bad_inputs_are_named(loaded, make, message):
    ids, mask = _inputs(loaded, held_out_texts()[:2])
    with pytest.raises(ibert_tvm.InputError) as err:
        loaded(*make(ids, mask))
    assert message in str(err.value)


def test_inputs_of_any_integer_dtype_and_masks_as_hf_takes_them_give_the_same_integers(loaded):
    """ids of any integer dtype (an object array of Python ints too), masks of bool (lists of bools too), any
    integer dtype or float 0/1 (torch's float masks, as HF takes them): the same integers as int64 ids and an int32
    mask."""
    import torch

    ids, mask = _inputs(loaded, held_out_texts()[:2])
    expected = loaded(ids, mask, integer=True)
    for given_ids, given_mask in ((ids.astype(np.uint16), mask.astype(np.uint8)), (ids.astype(object), mask > 0),
                                  (torch.from_numpy(ids).int(), torch.from_numpy(mask).float()),
                                  (ids, mask.astype(np.int8)), (ids.astype(np.uint64), mask.astype(np.float16)),
                                  (ids, torch.from_numpy(mask).bfloat16()),  # (numpy has no bfloat16)
                                  (ids.tolist(), [[bool(v) for v in row] for row in mask.tolist()])):
        np.testing.assert_array_equal(loaded(given_ids, given_mask, integer=True), expected)


@pytest.mark.parametrize("make, message", [
    (lambda t: t[:, :-1], "token_type_ids shape"),
    (lambda t: t + 2, "token_type_ids must lie in [0, 2) (the model's type_vocab_size), found 2"),
    (lambda t: t - 1, "found -1"),
    (lambda t: t.astype(np.float32), "token_type_ids must hold integers, got float32"),
    (lambda t: [[True, *row[1:]] for row in t.tolist()], "token_type_ids must hold integers, got bool"),
])
def test_bad_token_types_are_named(loaded, make, message):
    ids, mask = _inputs(loaded, held_out_texts()[:2])
    with pytest.raises(ibert_tvm.InputError) as err:
        loaded(ids, mask, make(np.zeros_like(mask)))
    assert message in str(err.value)
    with pytest.raises(ibert_tvm.InputError, match="all strings .sentences. or all 2-tuples"):
        loaded.classify([("a", "pair"), "a sentence"])


def test_calling_the_compiled_model_keeps_one_runner(compiled_model, loaded):
    """A CompiledModel makes its runner (and VM) on its first call only, and gives what the exported library
    gives."""
    ids, mask = _inputs(loaded, held_out_texts()[:2])
    first = compiled_model(ids, mask, integer=True)
    runner = compiled_model._runner
    second = compiled_model(ids, mask, integer=True)
    assert runner is not None and compiled_model._runner is runner
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, loaded(ids, mask, integer=True))


def test_truncated_library_is_refused(exported, tmp_path):
    bad = tmp_path / "model.so"
    bad.write_bytes(exported.read_bytes()[: exported.stat().st_size // 2])
    shutil.copy(exported.with_suffix(".json"), bad.with_suffix(".json"))
    with pytest.raises(ibert_tvm.ArtifactError, match="truncated or replaced"):
        ibert_tvm.load(bad)


def test_metadata_of_another_model_is_refused(exported, tmp_path):
    other = tmp_path / "model.so"
    shutil.copy(exported, other)
    meta = json.loads(exported.with_suffix(".json").read_text())
    meta["library"]["sha256"] = "0" * 64
    other.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ibert_tvm.ArtifactError, match="belongs to another model"):
        ibert_tvm.load(other)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["versions"].update(tvm="0.26.0"), "built with TVM 0.26.0"),
    (lambda m: m["target"].update(name="aarch64", family="arm"), "built for target 'aarch64' (aarch64)"),
    (lambda m: m["target"].update(features=["avx512vnni", "amx-fp8"]), "amx-fp8, which this CPU lacks"),
    (lambda m: m.update(format="something-else"), "not an ibert-tvm artifact"),
    (lambda m: m.update(format="ibert-tvm-artifact/1"), "format 1, whose programs take no token types); recompile"),
    (lambda m: m.pop("buckets"), "the metadata lacks buckets; re-export"),
    (lambda m: m.update(target="llvm"), "the metadata lacks target.name, target.family"),
    (lambda m: m["buckets"].update(seq_lengths=[8, 16, 32]), "bucket 1x32 names no function of the library (None)"),
    (lambda m: m["buckets"]["functions"].update({"1x8": "absent"}), "bucket 1x8 names no function of the library"),
    (lambda m: m["model"].update(labels=["neg", "pos"]), "names 2 labels for 3 logits"),
    # hand edits that load took and a call then failed on, deep in TVM or numpy
    (lambda m: m["buckets"].update(batch_sizes=[]), "buckets.batch_sizes must be a non-empty list of positive "
                                                    "integers, got []"),
    (lambda m: m["buckets"].update(seq_lengths=[8, "16"]), "buckets.seq_lengths must be a non-empty list"),
    (lambda m: m["buckets"].update(batch_sizes=[0, 1, 2]), "buckets.batch_sizes must be a non-empty list"),
    (lambda m: m["buckets"].update(seq_lengths=[8, 40]) or m["buckets"]["functions"].update(
        {"1x40": "main_b1_s16", "2x40": "main_b2_s16"}),
     "bucket 1x40 names the library's function 'main_b1_s16', compiled for another shape (its own is 'main_b1_s40')"),
    (lambda m: m["buckets"]["functions"].update({"1x16": "main_b1_s8"}), "bucket 1x16 names the library's function "
                                                                          "'main_b1_s8', compiled for another shape"),
    (lambda m: m["buckets"]["functions"].update({"4x8": "main_b1_s8"}), "bucket 4x8 is not one of "
                                                                         "buckets.batch_sizes x buckets.seq_lengths"),
    (lambda m: m["buckets"].update(functions=["main_b1_s8"]), "buckets.functions must map buckets to functions, got "
                                                              "list"),
    (lambda m: m["output"].update(scale="x"), "output.scale must be a number or a list of numbers, one per logit, "
                                              "got 'x'"),
    (lambda m: m["output"]["scale"].__setitem__(1, "x"), "output.scale must be a number or a list of numbers"),
    (lambda m: m["output"].update(scale=float("nan")), "output.scale must be a number or a list of numbers, one per "
                                                       "logit, got nan"),
    (lambda m: m["output"].update(kind="hidden_states"), "output.dtype of hidden_states must be one of int8, got "
                                                         "'int32'"),
    (lambda m: m["output"].update(kind="hidden_states", dtype="int8"), "output.scale must be a number, got ["),
    # entries of another type, which failed at the first call (a KeyError, numpy's TypeError) or ran as edited
    (lambda m: m["model"].update(labels={"0": "a", "1": "b", "2": "c"}), "model.labels must be a list of strings "
                                                                          "(or null), got {"),
    (lambda m: m["model"].update(pad_token_id=None), "model.pad_token_id must be an integer of at least 0, got None"),
    (lambda m: m["model"].update(vocab_size="30522"), "model.vocab_size must be a positive integer, got '30522'"),
    (lambda m: m["model"].update(type_vocab_size=True), "model.type_vocab_size must be a positive integer, got True"),
    (lambda m: m["output"].update(dtype=5), "output.dtype of logits must be one of int32, float32, got 5"),
    (lambda m: m["output"].update(kind="scores"), "output.kind must be 'logits' or 'hidden_states', got 'scores'"),
    (lambda m: m["target"].update(features=None), "target.features must be a list of strings, got None"),
    (lambda m: m["target"].update(features="avx2"), "target.features must be a list of strings, got 'avx2'"),
    (lambda m: m["model"].update(problem_type="weird"), "model.problem_type must be one of HF's problem types (or "
                                                         "null), got 'weird'"),
    (lambda m: m["model"].update(problem_type=5), "model.problem_type must be one of HF's problem types"),
    (lambda m: m["target"].update(family="bogus"), "target.family must be one of 'x86', 'arm', 'cuda', got 'bogus'"),
    # entries that `inspect` printed with a traceback, and the tokenizer files, which `tokenizer()` wrote with one
    (lambda m: m.update(inputs=5), "inputs must be a list of {name, dtype, shape} entries, got 5"),
    (lambda m: m["inputs"][0].pop("name"), "inputs must be a list of {name, dtype, shape} entries"),
    (lambda m: m["output"].update(shape=5), "output.shape must be a list, got 5"),
    (lambda m: m["model"].update(float_layers=5), "model.float_layers must be a list of layer indices, got 5"),
    (lambda m: m.update(tokenizer=["tokenizer.json"]), "tokenizer must map the tokenizer's file names"),
    (lambda m: m["tokenizer"].update({"tokenizer.json": 5}), "tokenizer must map the tokenizer's file names"),
    (lambda m: m["tokenizer"].update({"sub/tokenizer.json": "{}"}), "tokenizer must map the tokenizer's file names"),
])
def test_mismatched_metadata_is_refused(exported, tmp_path, edit, message):
    copy = tmp_path / "model.so"
    shutil.copy(exported, copy)
    meta = json.loads(exported.with_suffix(".json").read_text())
    edit(meta)
    copy.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ibert_tvm.ArtifactError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        ibert_tvm.load(copy)


def test_tokenizer_file_names_leading_out_of_the_folder_are_refused(exported, tmp_path):
    """A tokenizer file name edited into '../NAME' is refused at load: `tokenizer()` writes the bundled files into
    a temporary folder, and wrote that one beside the folder, wherever the name led."""
    copy = tmp_path / "model.so"
    shutil.copy(exported, copy)
    meta = json.loads(exported.with_suffix(".json").read_text())
    escaped = Path(tempfile.gettempdir()) / f"ibert-tvm-escaped-{os.getpid()}.json"
    meta["tokenizer"][f"../{escaped.name}"] = "{}"
    copy.with_suffix(".json").write_text(json.dumps(meta))
    try:
        with pytest.raises(ibert_tvm.ArtifactError, match="tokenizer must map the tokenizer's file names"):
            ibert_tvm.load(copy).classify(["a sentence"])
        assert not escaped.exists()
    finally:
        escaped.unlink(missing_ok=True)


def test_tokenizer_files_that_are_no_tokenizer_are_refused_by_name(exported, tmp_path):
    """Bundled tokenizer files edited into something else: an ArtifactError at the first text, not transformers'
    JSONDecodeError."""
    copy = tmp_path / "model.so"
    shutil.copy(exported, copy)
    meta = json.loads(exported.with_suffix(".json").read_text())
    meta["tokenizer"] = {name: "garbage" for name in meta["tokenizer"]}
    copy.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ibert_tvm.ArtifactError, match="tokenizer files cannot be read as a tokenizer"):
        ibert_tvm.load(copy).classify(["a sentence"])
    # a text no file can hold (a lone surrogate, which JSON allows) and a name too long for the file system
    for files in ({name: "\ud800" for name in meta["tokenizer"]}, {"x" * 300: "{}"}):
        copy.with_suffix(".json").write_text(json.dumps({**meta, "tokenizer": files}))
        with pytest.raises(ibert_tvm.ArtifactError, match="tokenizer files cannot be read as a tokenizer"):
            ibert_tvm.load(copy).classify(["a sentence"])


#: Every metadata entry that `load`, `IntegerModel` and the CLI's `run`, `bench` and `inspect` read as it is
READ_ENTRIES = ("versions.tvm", "versions.tvm_ffi", "versions.ibert_tvm", "target.name", "target.family",
                "target.features", "target.schedule_options", "target.tuned", "model.model_type", "model.semantics",
                "model.vocab_size", "model.type_vocab_size", "model.hidden_size", "model.num_hidden_layers",
                "model.pad_token_id", "model.force_dequant", "output.kind", "output.dtype", "output.shape",
                "output.scale", "buckets.batch_sizes", "buckets.seq_lengths", "buckets.functions", "library.sha256")


def test_metadata_lacking_an_entry_is_refused_by_name(exported, tmp_path):
    """Each entry that a reader of the artifact takes, deleted in turn from a real artifact's metadata: `load`
    (and `read_metadata`, which `inspect` uses) name it, not a KeyError."""
    copy = tmp_path / "model.so"
    shutil.copy(exported, copy)
    meta = json.loads(exported.with_suffix(".json").read_text())
    for entry in READ_ENTRIES:
        section, key = entry.split(".")
        edited = {**meta, section: {k: v for k, v in meta[section].items() if k != key}}
        copy.with_suffix(".json").write_text(json.dumps(edited))
        with pytest.raises(ibert_tvm.ArtifactError) as err:
            ibert_tvm.load(copy)
        assert str(err.value) == f"{copy.with_suffix('.json')}: the metadata lacks {entry}; re-export the artifact"


@pytest.mark.parametrize("path, message", [
    ("", "the library path is empty"),
    ("out3" + os.sep, "out3/ names a folder; give the library's file path (e.g. out3/model.so)"),
    ("newdir", "newdir: the library must end in .so (e.g. newdir.so)"),
    ("x.o", "x.o: the library must end in .so (e.g. x.so)"),
    ("x.tar", "x.tar: the library must end in .so"),
    ("x.dylib", "x.dylib: the library must end in .so"),
    ("x.SO", "x.SO: the library must end in .so"),
    ("x.json", "x.json: the library must not end in .json"),
])
def test_library_paths_that_load_cannot_run_are_refused(path, message, tmp_path, monkeypatch):
    """`-o` and `export` take only a path that `load` runs as it is: TVM's loader would fail on a name without a
    suffix (a folder's, given with a separator), relink a .o or .tar into a .so beside it, and knows no .SO."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as err:
        artifact.check_library_path(path)
    assert str(err.value).startswith(message)
    assert not any(tmp_path.iterdir())


def test_artifacts_load_cannot_run_as_they_are_are_refused(exported, tmp_path):
    """A folder, an empty path (not read as the current folder), a library under a suffix the TVM runtime would
    relink (writing beside it), and a library that holds no Relax VM program are each refused in one line naming
    the file."""
    with pytest.raises(ibert_tvm.ArtifactError, match=f"{re.escape(str(tmp_path))} is a folder; pass the library"):
        ibert_tvm.load(tmp_path)
    with pytest.raises(ibert_tvm.ArtifactError, match="the artifact path is empty"):
        ibert_tvm.load("")
    lib_o = tmp_path / "lib.o"
    shutil.copy(exported, lib_o)
    shutil.copy(exported.with_suffix(".json"), tmp_path / "lib.json")
    with pytest.raises(ibert_tvm.ArtifactError, match=r"lib.o: the library must end in .so \(e.g. .*lib.so\); "
                                                      "re-export"):
        ibert_tvm.load(lib_o)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib.json", "lib.o"]  # no relinked lib.o.so

    plain = tmp_path / "plain.so"  # a TVM library of one TIR function, without the Relax VM's entry points
    x = tvm.te.placeholder((4,), "int32")
    tvm.compile(tvm.te.create_prim_func([x, tvm.te.compute((4,), lambda i: x[i] + 1)]), "llvm").export_library(plain)
    meta = json.loads(exported.with_suffix(".json").read_text())
    meta["library"]["sha256"] = artifact.library_sha256(plain)
    plain.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ibert_tvm.ArtifactError, match=r"plain.so: the Relax VM cannot run this library \(Module has "
                                                      r"no function 'vm_load_executable'\)"):
        ibert_tvm.load(plain)


class _GPU:
    """A stand-in for `tvm.cuda(0)`: a present GPU of the given compute capability."""

    exist = True

    def __init__(self, compute_version: str) -> None:
        self.compute_version = compute_version


@pytest.mark.parametrize("arch, gpu, runs", [
    ("sm_75", "7.5", True), ("sm_80", "8.6", True), ("sm_86", "8.0", False), ("sm_75", "8.0", False),
    ("sm_90a", "9.0", True), ("sm_90", "9.0", True), ("sm_90a", "10.0", False), ("sm_86", "9.0", False),
    ("sm_100a", "10.0", True), ("sm_100a", "10.3", False), ("sm_100", "10.3", True), ("sm_121", "12.1", True),
    ("", "8.6", False),
])
def test_cuda_library_runs_on_the_gpus_its_cubin_fits(arch, gpu, runs, monkeypatch):
    """A cubin for sm_XY runs on compute capability X.Z with Z >= Y; one for sm_XYa on exactly X.Y."""
    monkeypatch.setattr(artifact.tvm, "cuda", lambda _index=0: _GPU(gpu))
    meta = {"target": {"family": "cuda", "name": "cuda", "features": [arch] if arch else []}}
    if runs:
        artifact.check_runnable_here(meta, "m.so")
    else:
        have = "sm_" + gpu.replace(".", "")
        with pytest.raises(ibert_tvm.ArtifactError, match=f"m.so: holds kernels for {arch or 'no CUDA arch'}, this "
                                                          f"GPU is {have}; compile for target 'cuda'"):
            artifact.check_runnable_here(meta, "m.so")


def test_cuda_arch_older_than_cuda_13_builds_is_refused_without_nvcc(quantized, monkeypatch):
    """Where no nvcc says what it compiles, an arch older than sm_75 (the oldest of CUDA 13, which TVM's CUDA
    runtime links) is refused before compiling, as are 'a' variants before sm_90."""
    monkeypatch.setenv("PATH", "")  # the answer of an nvcc is kept per nvcc: none here, and no cache to clear
    for name in ("cuda:sm_10", "cuda:sm_70", "cuda:sm_89a"):
        arch = name.split(":")[1]
        with pytest.raises(ibert_tvm.UnknownTargetError, match=f"CUDA arch '{arch}' is not supported: TVM's "
                                                               "CUDA 13 runtime builds for sm_75 and newer"):
            ibert_tvm.compile(quantized, name)
    assert targets.resolve_target("cuda:sm_90a").features == ("sm_90a",)


def test_missing_files_are_named(exported, tmp_path):
    with pytest.raises(ibert_tvm.ArtifactError, match="no such library"):
        ibert_tvm.load(tmp_path / "absent.so")
    lone = tmp_path / "lone.so"
    shutil.copy(exported, lone)
    with pytest.raises(ibert_tvm.ArtifactError, match="metadata lone.json is missing"):
        ibert_tvm.load(lone)


def test_compile_refuses_bad_arguments(quantized, exported, tmp_path):
    with pytest.raises(ibert_tvm.UnknownTargetError, match="unknown target 'tpu'"):
        ibert_tvm.compile(quantized, "tpu")
    for seq_lengths, error, message in ((8, TypeError, "seq_lengths must be a sequence of integers, got int 8"),
                                        ("8,16", TypeError, "seq_lengths must be a sequence of integers, got str"),
                                        ((8.5,), TypeError, "seq_lengths must hold integers, got \\[8.5\\]"),
                                        ((1, 8), ValueError, "integers of at least 2, got \\[1, 8\\]")):
        with pytest.raises(error, match=message):
            ibert_tvm.compile(quantized, "llvm", tuning_logs=False, seq_lengths=seq_lengths)
    with pytest.raises(TypeError, match="tuning_logs must be a folder path, None or False, got int"):
        ibert_tvm.compile(quantized, "llvm", tuning_logs=123, seq_lengths=SEQS)
    with pytest.raises(ValueError, match="trials must be an integer of at least 0, got -1"):
        ibert_tvm.tune(quantized, "llvm", -1, tmp_path / "db")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ibert_tvm.TuningLogError, match="a_file is a file, not a tuning database folder"):
        ibert_tvm.tune(quantized, "llvm", 0, tmp_path / "a_file", seq=8)
    with pytest.raises(ValueError, match="sequence length 100 exceeds what the model's position embeddings"):
        ibert_tvm.tune(quantized, "llvm", 0, tmp_path / "db", seq=100)
    assert not (tmp_path / "db").exists()
    with pytest.raises(TypeError, match="an artifact is a library path, got NoneType"):
        ibert_tvm.load(None)
    with pytest.raises(ibert_tvm.ArtifactError, match="is an artifact's metadata: pass its library"):
        ibert_tvm.load(exported.with_suffix(".json"))
    with pytest.raises(ValueError, match="exceeds what the model's position embeddings cover \\(64\\)$"):
        ibert_tvm.compile(quantized, "llvm", tuning_logs=False, seq_lengths=(128,))
    with pytest.raises(ValueError, match=r"the default seq_lengths \(32, 128\) pass what this model's position "
                                         r"embeddings cover \(64\): give seq_lengths"):
        ibert_tvm.compile(quantized, "llvm", tuning_logs=False)
    with pytest.raises(ValueError, match=r"batch_sizes .*at least 1.*got \[0\]$"):
        ibert_tvm.compile(quantized, "llvm", tuning_logs=False, batch_sizes=[0], seq_lengths=SEQS)
    for batch in (2 ** 63, 2 ** 31):  # a TypeError of Relax's (a BigInt shape), numpy's MemoryError
        with pytest.raises(ValueError, match=f"batch size {batch} x sequence length 16 is {batch * 16} tokens in one "
                                             "bucket, more than the 16777216 compiled at most"):
            ibert_tvm.compile(quantized, "llvm", tuning_logs=False, batch_sizes=[1, batch], seq_lengths=SEQS)
    with pytest.raises(TypeError, match="takes a QuantizedModel"):
        ibert_tvm.compile("model-dir", "llvm")


def test_artifact_for_another_target_is_refused(tmp_path):
    """A real aarch64 export (cross-compiled) cannot be loaded on this x86 machine: the reason says so. The
    library is the tiny RoBERTa of tests/test_cpp_example.py, whose aarch64 build tests/test_aarch64.py makes
    (cached per process)."""
    path = compiled("aarch64").export(tmp_path / "arm.so")
    assert path.read_bytes()[18] == 183  # ELF e_machine EM_AARCH64
    with pytest.raises(ibert_tvm.ArtifactError, match="built for target 'aarch64' \\(aarch64\\), this machine is x86_64"):
        ibert_tvm.load(path)


def _resolve(dotted: str) -> object:
    """`ibert_tvm.a.b` as Python would reach it: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            value = getattr(value, name)
        return value
    raise ModuleNotFoundError(dotted)


def test_every_api_name_the_docs_use_exists():
    """Each `ibert_tvm.X` that the READMEs and the package docstring show a user resolves, `ibert_tvm.tune`
    included (the tuning API the README names beside `ibert-tvm tune`)."""
    root = Path(__file__).resolve().parents[1]
    text = "\n".join((root / doc).read_text() for doc in ("README.md", "tuning_logs/README.md", "bench/RESULTS.md"))
    text += ibert_tvm.__doc__
    names = set(re.findall(r"\bibert_tvm\.[A-Za-z_][A-Za-z_0-9]*(?:\.[A-Za-z_][A-Za-z_0-9]*)*", text))
    assert {"ibert_tvm.tune", "ibert_tvm.compile", "ibert_tvm.load"} <= names
    missing = []
    for name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"documented but not importable: {missing}"
    assert ibert_tvm.tune is _resolve("ibert_tvm.tuning.tune")


def test_a_library_exported_over_a_loaded_one_is_loaded_anew(tiny_dir, quantized, tmp_path):
    """Another model exported to a path this process loaded from, then loaded: the new library runs (dlopen would
    hand back the old one, held under that file name), as in a fresh process; the first library exported there
    again loads as it did."""
    ids = np.array([[101, 2023, 2003, 1037, 102]])
    path = tmp_path / "model.so"
    first = ibert_tvm.compile(quantized, "llvm", tuning_logs=False, batch_sizes=(1,), seq_lengths=(8,))
    first.export(path)
    old = ibert_tvm.load(path)(ids, integer=True)
    other = ibert_tvm.from_pretrained(str(tiny_dir), calibration=held_out_texts())  # other scales and integers
    second = ibert_tvm.compile(other, "llvm", tuning_logs=False, batch_sizes=(1,), seq_lengths=(8,))
    second.export(path)
    new = ibert_tvm.load(path)(ids, integer=True)
    assert not np.array_equal(old, new)
    np.testing.assert_array_equal(new, second(ids, integer=True))
    np.testing.assert_array_equal(ibert_tvm.load(path)(ids, integer=True), new)  # the copy, loaded again
    first.export(path)
    np.testing.assert_array_equal(ibert_tvm.load(path)(ids, integer=True), old)


def test_export_writes_the_same_library_after_a_call(quantized, tmp_path, capfd):
    """Calling a CompiledModel (its runner's VM) leaves the executable it exports as compiled: the library is
    byte for byte the one exported before the call, without TVM's 'Scope Saving' warnings (whose library warned
    'Scope Loaded' at every load)."""
    lib = ibert_tvm.compile(quantized, "llvm", tuning_logs=False, batch_sizes=(1,), seq_lengths=(8,))
    before, after = lib.export(tmp_path / "before.so"), tmp_path / "after.so"
    ids = np.array([[101, 2023, 102]])
    called = lib(ids, integer=True)
    capfd.readouterr()
    lib.export(after)
    assert "Scope" not in capfd.readouterr().err
    assert before.read_bytes() == after.read_bytes()
    np.testing.assert_array_equal(ibert_tvm.load(after)(ids, integer=True), called)


def test_runners_share_the_weights(tmp_path):
    """Every runner of a CompiledModel runs its one executable: 8 runners of a model whose embedding table is 8 MB
    add far less than a table each to this process (each copied the executable, weights and all, until
    2026-12-07: about a table's size per runner)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    vocab, hidden = 131072, 64
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16)
    ids = np.random.default_rng(0).integers(0, vocab, size=(2, 8))
    qm = ibert_tvm.from_pretrained(BertModel(config, add_pooling_layer=False).eval(),
                                   calibration=[ibert_tvm.Batch(ids, np.ones_like(ids))])
    lib = ibert_tvm.compile(qm, "llvm", tuning_logs=False, batch_sizes=(1,), seq_lengths=(8,))
    expected = lib(ids[:1], integer=True)
    before, runners = _resident_bytes(), [lib.runner() for _ in range(8)]
    for runner in runners:
        np.testing.assert_array_equal(runner(ids[:1], integer=True), expected)
    assert _resident_bytes() - before < len(runners) * vocab * hidden / 4


def _resident_bytes() -> int:
    """This process's resident memory (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("problem_type", ["regression", "multi_label_classification"])
def test_regression_and_multi_label_heads_are_not_read_as_single_labels(problem_type, tmp_path, capsys):
    """A regression head (one output) gives values, and classify refuses it; a multi-label head's prediction holds
    every label whose logit is positive (sigmoid > 0.5), as the float model's; `run` prints values or labels, and
    the artifact records the problem type. (Both were read as single-label argmaxes until 2026-12-07.)"""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from ibert_tvm.cli import main

    torch.manual_seed(0)
    labels = 1 if problem_type == "regression" else 4
    config = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16, num_labels=labels,
                        problem_type=problem_type, initializer_range=0.2)
    model = BertForSequenceClassification(config).eval()
    ids = np.random.default_rng(0).integers(1, 200, size=(8, 8))
    qm = ibert_tvm.from_pretrained(model, calibration=[ibert_tvm.Batch(ids, np.ones_like(ids))])
    path = ibert_tvm.compile(qm, "llvm", tuning_logs=False, batch_sizes=(8,), seq_lengths=(8,)).export(
        tmp_path / "head.so")
    m = ibert_tvm.load(path)
    assert m.problem_type == m.meta["model"]["problem_type"] == problem_type
    assert repr(m).endswith("regression)" if problem_type == "regression" else f"{problem_type} {m.labels})")
    with torch.no_grad():
        reference = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    ours = m(ids)
    np.testing.assert_allclose(ours, reference, atol=0.1 * np.abs(reference).max())
    assert main(["run", str(path), "--ids", ",".join(map(str, ids[0]))]) == 0
    printed = json.loads(capsys.readouterr().out)[0]
    if problem_type == "regression":
        with pytest.raises(ibert_tvm.InputError, match="regression"):
            m.classify_ids(ids)
        assert printed["values"] == pytest.approx(ours[0].tolist(), abs=1e-3) and "label" not in printed
        return
    predictions = m.classify_ids(ids)
    names = m.labels
    clear = np.abs(reference) > 0.1 * np.abs(reference).max()  # not near the 0.5 threshold
    for p, row, ref, sure in zip(predictions, ours, reference, clear):
        assert p.labels == tuple(names[j] for j in np.flatnonzero(row > 0))
        assert {names[j] for j in np.flatnonzero(sure & (ref > 0))} <= set(p.labels)
        assert not {names[j] for j in np.flatnonzero(sure & (ref < 0))} & set(p.labels)
    assert len({len(p.labels) for p in predictions}) > 1  # rows with different numbers of labels
    assert printed["labels"] == list(predictions[0].labels)


def test_a_loaded_model_says_what_it_is(loaded):
    assert repr(loaded) == ("IntegerModel(bert, target llvm, batch [1, 2] x seq [8, 16], "
                            "single_label_classification ['negative', 'neutral', 'positive'])")


def test_a_link_to_a_library_loads_with_the_metadata_beside_its_target(exported, loaded, tmp_path):
    """current.so -> model.so, as deployments version their libraries: the metadata beside the link's target is
    read (the link has none of its own)."""
    link = tmp_path / "current.so"
    link.symlink_to(exported)
    ids = np.array([[101, 2023, 102]])
    np.testing.assert_array_equal(ibert_tvm.load(link)(ids, integer=True), loaded(ids, integer=True))
    with pytest.raises(ValueError, match=r"the library's name is empty before \.so \(e\.g\. .*model\.so\)"):
        artifact.check_library_path(tmp_path / ".so")


#: a folder that refuses new files whoever asks (CI runs as root, to whom permission bits change nothing)
UNWRITABLE = Path("/proc")


def test_a_folder_that_cannot_be_written_is_refused_before_compiling(compiled_model, tmp_path, capsys):
    """`check_library_path` (the CLI's check before calibrating, and export's) names the folder, or the nearest
    existing one of folders to be made, where no file can be made; `ibert-tvm compile` says so in one line."""
    locked = UNWRITABLE
    for path in (locked / "m.so", locked / "new" / "deeper" / "m.so"):
        with pytest.raises(PermissionError, match=f"^{re.escape(str(path.parent))}: the folder "
                                                  f"{re.escape(str(locked))} cannot be written"):
            artifact.check_library_path(path)
    with pytest.raises(PermissionError, match="cannot be written"):
        compiled_model.export(locked / "m.so")
    from ibert_tvm import cli

    args = ["compile", "--model", str(tmp_path / "not-read"), "--seq-lengths", "16", "-o", str(locked / "m.so")]
    assert cli.main(args) == 2  # refused before the model (which does not exist) is read
    err = capsys.readouterr().err
    assert err == f"ibert-tvm: error: {locked}: the folder {locked} cannot be written; export to a folder of yours\n"


def test_a_linker_failure_is_one_line_naming_the_library(compiled_model, tmp_path, monkeypatch):
    """Where the linker cannot write the library after all (here a folder in its place, past the checks), export
    raises an OSError naming the path and the linker's reason, not TVM's traceback."""
    from ibert_tvm import compiler

    monkeypatch.setattr(compiler, "check_library_path", Path)
    path = tmp_path / "m.so"
    path.mkdir()
    with pytest.raises(OSError) as err:
        compiled_model.export(path)
    assert re.fullmatch(f"{re.escape(str(path))}: the linker could not write the library \\(.*cannot open output "
                        f"file {re.escape(str(path))}: Is a directory\\)", str(err.value))
