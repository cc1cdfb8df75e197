"""`ibert_tvm.tuning` on a tiny 1-layer RoBERTa (hidden 32, batch 1 x 8 tokens) with budgets of a few trials:
tuning for the host, the records applying in `pipeline.build` with bit-identical outputs, resuming, measuring
through a real TVM RPC tracker and server on loopback, and `open_database` refusing unusable folders."""

from __future__ import annotations

import base64
import gc
import json
import platform
import shutil
import time
import warnings
import weakref
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from transformers import RobertaConfig, RobertaModel
from tvm import relax, te, tirx
from tvm.s_tir import meta_schedule as ms

import ibert_tvm
from ibert_tvm import cli, ops, tuning
from ibert_tvm.build_util import single_op_module
from ibert_tvm.artifact import why_not_runnable_here
from ibert_tvm.model import from_pretrained
from ibert_tvm.relay_passes import pipeline
from ibert_tvm.relay_passes.apply_tuning_records import ApplyTuningRecords
from ibert_tvm.targets import resolve_target
from ibert_tvm.tuning import META_FILE, RECORD_FILE, WORKLOAD_FILE, TuningLogError, open_database, tune
from test_model import batches, program_inputs

BATCH, SEQ, TRIALS, PER_ITER = 1, 8, 8, 4
CONFIG = dict(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=40, initializer_range=0.1, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0, type_vocab_size=1, pad_token_id=1)


@pytest.fixture(scope="module")
def model():
    """A calibrated 1-layer RoBERTa, hidden 32."""
    torch.manual_seed(0)
    return from_pretrained(RobertaModel(RobertaConfig(**CONFIG), add_pooling_layer=False).eval(),
                           calibration=batches(1, 2, 2, SEQ, seed=1))


def _recalibrated():
    """The `model` fixture's RoBERTa calibrated on other batches: the same kernel shapes, other constants."""
    torch.manual_seed(0)
    return from_pretrained(RobertaModel(RobertaConfig(**CONFIG), add_pooling_layer=False).eval(),
                           calibration=batches(1, 2, 2, SEQ, seed=9))


@pytest.fixture(scope="module")
def spec():
    return resolve_target("llvm")


@pytest.fixture(scope="module")
def tuned(model, spec, tmp_path_factory):
    """(work dir, result) of TRIALS trials for the host, default latencies measured."""
    work = tmp_path_factory.mktemp("tuning") / "llvm"
    return work, tune(model, spec, TRIALS, work, batch=BATCH, seq=SEQ, num_trials_per_iter=PER_ITER, progress=False)


def _run(executable: tvm.runtime.Executable, inputs: list[np.ndarray]) -> np.ndarray:
    return relax.VirtualMachine(executable, tvm.cpu())["main"](*[tvm.runtime.tensor(a) for a in inputs]).numpy()


def test_tune_writes_a_database_with_its_metadata(model, tuned, spec, report):
    work, result = tuned
    assert result.trials_run == TRIALS and result.trials_total == TRIALS
    assert result.failed == result.build_errors + result.run_errors and 0 <= result.failed_share <= 1
    assert (work / WORKLOAD_FILE).is_file() and (work / RECORD_FILE).is_file()
    meta = json.loads((work / META_FILE).read_text())
    assert meta["target"] == {"name": "llvm", "target": str(spec.target), "features": list(spec.features)}
    assert meta["tvm"] == tvm.__version__ and meta["shapes"] == [[BATCH, SEQ]] and meta["trials"] == TRIALS
    assert meta["apache_tvm_ffi"] and meta["hardware"] and meta["date"]
    assert result.latency_before_ms > 0 and result.latency_after_ms > 0
    # a round gives one task up to PER_ITER trials, the heaviest first: the others are named as not reached
    records = tuning._records_per_task(open_database(work, spec, keep_slower=True),
                                       _kernels(model.program(BATCH, SEQ), spec.target))
    assert 0 < len(result.untried) < len(result.tasks) - len(result.untunable)
    assert all(not records[name] for name in result.untried) and not set(result.untried) & set(result.untunable)
    assert "no trial yet for" in str(result) and result.untried[0] in str(result)
    assert f"{len(result.recorded)} of the tasks have a best record there" in str(result).splitlines()[0]
    # every kernel is tunable but Softmax's: FFN-in (i-GELU) and LayerNorm too, since they hold no Let, and the
    # attention GEMMs with their head splits fused in
    assert result.untunable and all("int_softmax" in name for name in result.untunable), result.untunable
    assert all(why.startswith("MetaSchedule cannot set it up: The primitive") for why in result.untunable.values())
    # the best records were run on the untuned program's own kernel arguments (those of kernels it calls: a
    # reshape task runs as a view), and wrote its integers
    with_record = [name for name, r in records.items() if r and min(r) < tuning.FAILED_SECS]
    assert result.records_checked + len(result.not_checked) == len(with_record) and result.records_checked > 0
    assert all("reshape" in name for name in result.not_checked) and not result.wrong_integers
    # a record the check could not run (its kernel runs as a view) is left out of compile, not filed as checked
    assert set(meta["not_called"].values()) == set(result.left_out["not_called"]) == set(result.not_checked)
    keys = {t.task_name: tuning.workload_key(t.dispatched[0]) for t in _kernels(model.program(BATCH, SEQ),
                                                                                  spec.target)}
    assert set(meta["checked"]) == {keys[name] for name in result.recorded if name not in result.not_checked}
    assert not result.unchecked
    report(f"tuning (llvm, tiny RoBERTa 1x{SEQ}): {result.trials_run} trials in {result.seconds:.0f} s, "
           f"{result.failed} failed ({result.failed_share:.0%}); estimated {result.latency_before_ms:.3f} ms "
           f"untuned -> {result.latency_after_ms:.3f} ms; not tunable: {len(result.untunable)} of {len(result.tasks)}")


def _padded_inputs() -> list[np.ndarray]:
    """One sequence of SEQ tokens, its last quarter padding."""
    b = batches(1, 1, 2, SEQ, seed=5)[0]  # row 1 has padding
    return [a[1:] for a in program_inputs(b)]


def test_records_apply_and_outputs_are_bit_identical(model, spec, tuned):
    """ApplyTuningRecords schedules every kernel whose key has a valid record (the slower ones kept: a few
    trials rarely beat the default schedules), and only those; the tuned build's int8 outputs equal the
    untuned build's."""
    work, _ = tuned
    mod = model.program(BATCH, SEQ)
    database = open_database(work, spec, keep_slower=True)
    valid = {tuning.workload_key(r.workload.mod) for r in database.get_all_tuning_records()
             if r.run_secs and float(r.run_secs[0]) < 1e9}
    assert valid, "no candidate of the tuned tasks ran"
    tunable = pipeline.tunable_module(mod, spec.target)
    applied = ApplyTuningRecords(database, spec.target)(tunable)
    scheduled = {g.name_hint for g, f in applied.functions_items()
                 if isinstance(f, tirx.PrimFunc) and f.attrs.get("tirx.is_scheduled", False)}
    assert scheduled == {g.name_hint for g, f in tunable.functions_items()
                         if isinstance(f, tirx.PrimFunc) and tuning.workload_key(tuning.kernel_module(f)) in valid}
    inputs = _padded_inputs()
    untuned = _run(pipeline.build(mod, spec.target), inputs)
    tuned_out = _run(pipeline.build(mod, spec.target, database=database), inputs)
    assert tuned_out.dtype == np.int8
    np.testing.assert_array_equal(tuned_out, untuned)


def test_compile_counts_the_kernels_a_database_scheduled(model, spec, tuned, tmp_path):
    """`compile` records how many kernels took a record (`tuned_kernels`, shown by `ibert-tvm inspect` and
    `compile`): every task with a valid record, once the records that lost to the defaults are kept too."""
    work, _ = tuned
    db = shutil.copytree(work, tmp_path / "db")
    meta = json.loads((db / META_FILE).read_text())
    (db / META_FILE).write_text(json.dumps({**meta, "default_wins": {}}))
    valid = {r.workload.mod.script() for r in open_database(db, spec).get_all_tuning_records()
             if r.run_secs and float(r.run_secs[0]) < 1e9}
    lib = ibert_tvm.compile(model, spec, tuning_logs=db, batch_sizes=(BATCH,), seq_lengths=(SEQ,))
    count, kernels = lib.meta["target"]["tuned_kernels"]
    assert 0 < count == len(valid) < kernels
    assert cli._tuned(lib.meta["target"]) == f"tuned ({count} of {kernels} kernels from the database)"
    assert "tuned_kernels" not in ibert_tvm.compile(model, spec, tuning_logs=False, batch_sizes=(BATCH,),
                                                    seq_lengths=(SEQ,)).meta["target"]


def test_a_database_that_matches_no_kernel_is_named(model, spec, tuned):
    """A database tuned for another shape (or architecture) schedules nothing: `compile` says so in a warning
    instead of labelling the build tuned in silence."""
    work, _ = tuned
    with pytest.warns(UserWarning, match=r"gives none of this program's \d+ kernels a record"):
        lib = ibert_tvm.compile(model, spec, tuning_logs=work, batch_sizes=(BATCH,), seq_lengths=(2 * SEQ,))
    assert lib.meta["target"]["tuned_kernels"][0] == 0 and not lib.meta["target"]["tuned"]
    assert cli._tuned(lib.meta["target"]) == "untuned (a tuning database gave no kernel a record)"


def test_a_database_serves_another_calibration_of_the_model(model, spec, tuned):
    """Records are filed by kernel shape, not by requantize constants: the same RoBERTa calibrated on other
    batches (other constants in every kernel) takes the database's records and keeps its own integers."""
    work, _ = tuned
    other = _recalibrated()
    mod = other.program(BATCH, SEQ)
    assert not tvm_ffi.structural_equal(model.program(BATCH, SEQ), mod)  # other constants
    tally: dict[str, int] = {}
    tuned_out = _run(pipeline.build(mod, spec.target, database=open_database(work, spec, keep_slower=True),
                                    tally=tally), _padded_inputs())
    assert tally["tuned"] > 0
    np.testing.assert_array_equal(tuned_out, _run(pipeline.build(mod, spec.target), _padded_inputs()))


def test_compile_warns_of_records_never_checked_on_its_model(model, spec, tuned, tmp_path, monkeypatch):
    """`tune` files the records it checked under the program it ran them on: `compile` applies them to that
    model in silence (its shape's function of a multi-shape build is the program checked), and to another
    calibration of it (the same kernel shapes, other constants) with a warning that names `--check-only` and
    a count in the artifact's metadata, until a check-only call has run them on that calibration too."""
    db = shutil.copytree(tuned[0], tmp_path / "db")
    meta = json.loads((db / META_FILE).read_text())
    (db / META_FILE).write_text(json.dumps({**meta, "default_wins": {}}))  # every valid record applies
    assert meta["checked"] and all(len(e["programs"]) == 1 for e in meta["checked"].values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lib = ibert_tvm.compile(model, spec, tuning_logs=db, batch_sizes=(BATCH,), seq_lengths=(SEQ, 2 * SEQ))
    assert lib.meta["target"]["tuned_kernels"][0] > 0 and lib.meta["target"]["unchecked_records"] == 0
    other = _recalibrated()
    with pytest.warns(UserWarning, match=r"(\d+) of the \1 tuning records that .*db applied were never checked "
                                         r"against this program's own integers .*--check-only --work-dir .*db") as w:
        unchecked = ibert_tvm.compile(other, spec, tuning_logs=db, batch_sizes=(BATCH,), seq_lengths=(SEQ, 2 * SEQ))
    count = unchecked.meta["target"]["unchecked_records"]
    message = next(str(m.message) for m in w if "never checked" in str(m.message))
    assert count > 0 and message.startswith(f"{count} of the {count} ")
    assert f"<model arguments> --batch {BATCH} --seq {SEQ} --check-only" in message  # the shape tuned, not 2 x SEQ
    assert f"{count} of its records never checked on this model" in cli._tuned(unchecked.meta["target"])
    with monkeypatch.context() as patch:  # the same folder as the database shipped for the target: checked on a copy
        patch.setattr(tuning, "shipped_database", lambda _target: db)
        with pytest.warns(UserWarning, match="copy it to a folder COPY of yours, check them there with .*--check-only "
                                             "--work-dir COPY` where the target runs, and compile with "
                                             "tuning_logs=COPY"):
            ibert_tvm.compile(other, spec, batch_sizes=(BATCH,), seq_lengths=(SEQ,))
    tune(other, spec, 0, db, batch=BATCH, seq=SEQ, progress=False, check_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for checked in (other, model):  # the first calibration's checks stay valid
            lib = ibert_tvm.compile(checked, spec, tuning_logs=db, batch_sizes=(BATCH,), seq_lengths=(SEQ,))
            assert lib.meta["target"]["unchecked_records"] == 0


def test_a_check_counts_for_the_record_and_the_program_it_ran(spec, tmp_path):
    """A key's checks hold for its best record as it was checked: another program adds itself, a new best
    record (tuned again since) starts the list again; a build's record is unchecked unless both match."""
    tuning._write_meta(tmp_path, spec, [[1, 8]], 4, "here", passed=tuning._Passed({"k": "r1", "j": "r1"}, "p1"))
    tuning._add_check(tmp_path, {}, tuning._Passed({"k": "r1"}, "p2"))
    assert json.loads((tmp_path / META_FILE).read_text())["checked"]["k"] == {"record": "r1", "programs": ["p1", "p2"]}
    assert tuning.unchecked_records(tmp_path, {"k": "r1", "j": "r1"}, {"p2"}) == {"j"}
    assert tuning.unchecked_records(tmp_path, {"k": "r2"}, {"p1"}) == {"k"}  # another record than the one checked
    assert tuning.unchecked_records(tmp_path, {"x": "r1"}, {"p1"}) == {"x"}  # a key never checked
    tuning._add_check(tmp_path, {}, tuning._Passed({"k": "r2"}, "p3"))
    assert json.loads((tmp_path / META_FILE).read_text())["checked"]["k"] == {"record": "r2", "programs": ["p3"]}
    assert tuning.unchecked_records(tmp_path, {"k": "r2"}, {"p1", "p2", "p3"}) == set()
    # a folder written before checks were filed opens, and none of its records counts as checked
    meta = json.loads((tmp_path / META_FILE).read_text())
    del meta["checked"]
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    assert tuning._read_meta(tmp_path) == meta and tuning.unchecked_records(tmp_path, {"k": "r2"}, {"p3"}) == {"k"}


def test_function_fingerprints_follow_constants_and_shape_not_names(model):
    """The fingerprint of a shape's function is the same in a one-shape program (`main`) and a multi-shape
    one, and differs for another shape or another calibration's constants."""
    one, both = model.program(BATCH, SEQ), model.programs([(BATCH, SEQ), (BATCH, 2 * SEQ)])
    fingerprint = tuning.record_check.function_fingerprint
    assert fingerprint(one, "main") == fingerprint(both, "main_b1_s8") != fingerprint(both, "main_b1_s16")
    other = _recalibrated()
    assert fingerprint(other.program(BATCH, SEQ), "main") != fingerprint(one, "main")
    # a program that calls kernels: built twice, the same (a GlobalVar by where it occurs, not by its address);
    # another immediate inside a kernel (the requantize shift), another fingerprint
    def lowered(shift: int) -> tvm.IRModule:
        weight = np.ones((16, 16), np.int8)
        mod = single_op_module(lambda x: ops.requantize(ops.linear(x, weight), 1 << 30, shift),
                               {"x": np.zeros((1, 4, 16), np.int8)})
        return pipeline.tunable_module(mod, "llvm")

    twice, other_shift = [lowered(40), lowered(40)], lowered(41)
    assert all(relax.analysis.all_global_vars(m["main"]) for m in twice)
    assert tvm_ffi.structural_hash(twice[0]["main"]) != tvm_ffi.structural_hash(twice[1]["main"])  # by address
    assert fingerprint(twice[0], "main") == fingerprint(twice[1], "main") != fingerprint(other_shift, "main")


def test_avx2_level_tunes_with_its_vpmaddwd_step(model, tmp_path):
    """An AVX2-only target (the `x86-avx2` level, measured on this CPU) tunes its packed GEMMs with the exact
    vpmaddwd intrinsics of its defaults, and the tuned build computes the unscheduled build's integers."""
    spec = resolve_target("x86-avx2")
    if not set(spec.features) <= set(resolve_target("llvm").features):
        pytest.skip("this CPU has no AVX2 to measure the candidates on")
    result = tune(model, spec, TRIALS, tmp_path, batch=BATCH, seq=SEQ, num_trials_per_iter=PER_ITER, progress=False,
                  estimate=False)  # no latency estimate: nothing here reads it
    assert result.trials_run == TRIALS and result.failed <= TRIALS // 4
    assert "ibert_dot_8x2_s16s8_avx2" in (tmp_path / RECORD_FILE).read_text()
    database = open_database(tmp_path, spec, keep_slower=True)
    mod, inputs = model.program(BATCH, SEQ), _padded_inputs()
    np.testing.assert_array_equal(_run(pipeline.build(mod, spec.target, database=database), inputs),
                                  _run(tvm.compile(relax.transform.LegalizeOps()(mod), "llvm"), inputs))


def test_a_second_call_continues(model, spec, tuned, tmp_path):
    """The records already there count: the same budget runs nothing, a larger one runs only the difference,
    and a per-task cap counts each task's earlier records too."""
    work = tmp_path / "llvm"
    shutil.copytree(tuned[0], work)
    again = tune(model, spec, TRIALS, work, batch=BATCH, seq=SEQ, progress=False, estimate=False)
    assert again.trials_run == 0 and again.trials_total == TRIALS
    cap = PER_ITER + 2  # the tasks tuned first have PER_ITER records each: 2 more each at most
    more = tune(model, spec, TRIALS + PER_ITER, work, batch=BATCH, seq=SEQ, num_trials_per_iter=PER_ITER,
                max_trials_per_task=cap, progress=False, estimate=False)
    assert more.trials_run == PER_ITER and more.trials_total == TRIALS + PER_ITER
    records = open_database(work, spec, keep_slower=True).get_all_tuning_records()
    assert len(records) == TRIALS + PER_ITER
    assert max(Counter(r.workload.mod.script() for r in records).values()) <= cap
    assert json.loads((work / META_FILE).read_text())["trials"] == TRIALS + PER_ITER


def test_a_cost_model_saved_in_part_is_replaced_not_fatal(tuned, tmp_path):
    """The xgb model a tune saved is resumed; one cut short (a tune killed while `tar` wrote it), empty or
    garbage is warned about and a new model is started: TVM's 'Tar error' (a RuntimeError, a traceback from the
    CLI) stopped every later tune of the folder (a fuzz, 2026-12-07)."""
    whole = (tuned[0] / tuning.COST_MODEL_FILE).read_bytes()
    assert tuning._resumed_cost_model(tuned[0] / tuning.COST_MODEL_FILE).booster is not None
    saved = tmp_path / tuning.COST_MODEL_FILE
    for content in (whole[:len(whole) // 2], b"", b"garbage"):
        saved.write_bytes(content)
        with pytest.warns(UserWarning, match=f"{saved} cannot be read .*: the cost model starts afresh"):
            assert tuning._resumed_cost_model(saved).booster is None
    assert tuning._resumed_cost_model(tmp_path / "absent").booster is None


def test_rpc_tracker_measures_on_a_registered_server(model, spec, tmp_path):
    """A TVM RPC tracker and a server registered under a key, on loopback: the runner measures through them."""
    from tvm.rpc.server import Server
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=9190, port_end=12345, silent=True)  # first free ports from 9190
    server = Server(host="127.0.0.1", port=9190, port_end=12345, tracker_addr=("127.0.0.1", tracker.port),
                    key="ibert-test-board", silent=True)
    try:
        work = tmp_path / "rpc"
        result = tune(model, spec, PER_ITER, work, batch=BATCH, seq=SEQ, rpc=("127.0.0.1", tracker.port,
                      "ibert-test-board"), num_trials_per_iter=PER_ITER, progress=False, estimate=False)
    finally:
        server.terminate()
        tracker.terminate()
    assert result.trials_run == PER_ITER and result.run_errors == 0, result
    secs = [float(r.run_secs[0]) for r in open_database(work, spec, keep_slower=True).get_all_tuning_records()]
    measured = [s for s in secs if s < 1e9]
    assert len(secs) == PER_ITER and measured and all(s > 0 for s in measured)
    assert "ibert-test-board" in json.loads((work / META_FILE).read_text())["hardware"]
    assert "runs elsewhere" in result.unchecked and not result.records_checked  # the check runs locally only


def test_rpc_without_a_server_for_the_key_is_refused(model, spec, tmp_path):
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=9190, port_end=12345, silent=True)
    try:
        with pytest.raises(ValueError, match="no-such-board"):
            tune(model, spec, 4, tmp_path / "rpc", batch=BATCH, seq=SEQ, rpc=("127.0.0.1", tracker.port,
                 "no-such-board"), progress=False, estimate=False)
    finally:
        tracker.terminate()


def test_an_unreachable_rpc_tracker_is_refused_within_seconds(model, spec, tmp_path):
    """TVM's client retries a dead tracker for a minute; `tune` asks first, and creates no folder."""
    import socket

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ValueError, match=f"cannot reach the RPC tracker at 127.0.0.1:{port}"):
        tune(model, spec, 4, tmp_path / "rpc", batch=BATCH, seq=SEQ, rpc=("127.0.0.1", port, "board"),
             progress=False, estimate=False)
    assert time.monotonic() - started < 10 and not (tmp_path / "rpc").exists()


def test_a_service_that_is_not_an_rpc_tracker_is_refused_within_seconds(model, spec, tmp_path):
    """Something else listening at the tracker's address (a web server answering the handshake, or one that
    says nothing) is named before any work: TVM's client failed after the folder was made, with a message whose
    first line ('Unable to connect to the tracker using the following configuration:') the CLI showed alone
    (a fuzz, 2026-12-07)."""
    import socket
    import threading

    for answer, refused in ((b"HTTP/1.1 400 Bad Request\r\n\r\n", "answers, but not as a TVM RPC tracker"),
                            (None, "answers, but not as a TVM RPC tracker .*handshake within 5 s")):
        server = socket.create_server(("127.0.0.1", 0))

        def serve(server=server, answer=answer):
            connection, _ = server.accept()
            connection.recv(4)  # the client's handshake
            if answer is None:  # silent: held open past the client's wait
                time.sleep(tuning._TRACKER_TIMEOUT_S + 2)
            else:
                connection.sendall(answer)
            connection.close()

        threading.Thread(target=serve, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(ValueError, match=refused):
            tune(model, spec, 4, tmp_path / "rpc", batch=BATCH, seq=SEQ, rpc=("127.0.0.1", server.getsockname()[1],
                 "board"), progress=False, estimate=False)
        assert time.monotonic() - started < 10 and not (tmp_path / "rpc").exists()
        server.close()


@pytest.mark.skipif(platform.machine().lower() in ("aarch64", "arm64") or tvm.cuda(0).exist,
                    reason="needs a machine that runs neither aarch64 code nor CUDA")
@pytest.mark.parametrize("target, why", [("aarch64", "this machine is x86_64"), ("t4", "no CUDA GPU is present")])
def test_a_target_this_machine_cannot_run_is_tuned_over_rpc_only(model, tmp_path, target, why):
    """Without --rpc, candidates are measured here: for a target this machine cannot run, `tune` is refused by
    name before it makes the folder. An aarch64 target had every candidate fail to load (each failure a line of
    the summary, as each named its temporary file), and a CUDA target without a GPU stopped with TVM's
    "Device API cuda is not enabled" after writing a folder that every later tune into it refused (a fuzz,
    2026-12-07). A check-only call, which runs the records here, is refused as well."""
    refused = f"cannot tune for '{target}' on this machine \\(.*{why}.*--rpc HOST:PORT:KEY"
    with pytest.raises(ValueError, match=refused):
        tune(model, target, 4, tmp_path / "db", batch=BATCH, seq=SEQ, progress=False)
    assert not (tmp_path / "db").exists()
    with pytest.raises(ValueError, match="cannot check the records of"):
        tune(model, target, 0, tmp_path / "db", batch=BATCH, seq=SEQ, progress=False, check_only=True)
    assert not (tmp_path / "db").exists()


def test_the_progress_estimate_keeps_a_default_that_beats_the_record():
    """The bar's latency estimate counts each task as compile applies it: a record slower than the default
    schedule at the default's time."""
    weights, default = {"fast": 2, "slow": 1}, {"fast": 1e-3, "slow": 1e-3}
    assert tuning._estimate_ms(weights, default, {"fast": 0.5e-3, "slow": 4e-3}) == pytest.approx(2.0)
    assert tuning._estimate_ms(weights, {}, {"fast": 0.5e-3}) is None  # a task with neither


@pytest.fixture
def copy(tuned, tmp_path):
    """A copy of the tuned database folder, to damage."""
    return shutil.copytree(tuned[0], tmp_path / "db")


def test_records_slower_than_the_default_schedule_are_not_applied(tuned, copy, spec):
    """`tune` lists the kernels whose best record lost to their default schedule; `open_database` leaves
    exactly their records out (so a database applies only records that beat the default as `tune` measured
    them), unless asked to keep them."""
    _, result = tuned
    meta = json.loads((copy / META_FILE).read_text())
    assert sorted(meta["default_wins"].values()) == sorted(result.slower_than_default)
    everything = open_database(copy, spec, keep_slower=True).get_all_tuning_records()
    assert set(meta["default_wins"]) <= {tuning.workload_key(r.workload.mod) for r in everything}
    key = tuning.workload_key(everything[0].workload.mod)
    (copy / META_FILE).write_text(json.dumps({**meta, "default_wins": {key: "first task"}}))
    kept = open_database(copy, spec).get_all_tuning_records()
    keys = {tuning.workload_key(r.workload.mod) for r in everything if tuning.mean_secs(r) < tuning.FAILED_SECS}
    assert {tuning.workload_key(r.workload.mod) for r in kept} == keys - {key}
    assert len(open_database(copy, spec, keep_slower=True).get_all_tuning_records()) == len(everything)


def _best_per_key(database) -> dict[str, str]:
    return {key: tuning.record_digest(database.get_top_k(workload, 1)[0])
            for key, workload in database.workloads.items() if database.get_top_k(workload, 1)}


def test_compile_loads_each_kernel_shapes_best_records_only(copy, spec):
    """`open_database` loads the candidates that can be a kernel shape's best, not every record (MetaSchedule
    replays each trace it reads: 75 s for 4,400 of BERT-base), and serves the same best record per kernel
    shape as the whole database: here with every record repeated at 1.5x its times and a failed copy of each
    (ties with the best kept: the first of them wins in both)."""
    lines = (copy / RECORD_FILE).read_text().splitlines()

    def timed(line: str, times) -> str:
        index, (trace, secs, target, args) = json.loads(line)
        return json.dumps([index, [trace, times(secs or []), target, args]])

    (copy / RECORD_FILE).write_text("\n".join([*lines, *(timed(x, lambda secs: [1.5 * s for s in secs]) for x in lines),
                                               *(timed(x, lambda _: [tuning.FAILED_SECS]) for x in lines), *lines])
                                    + "\n")
    meta = json.loads((copy / META_FILE).read_text())
    (copy / META_FILE).write_text(json.dumps({**meta, "default_wins": {}}))
    everything = open_database(copy, spec, keep_slower=True)
    best = open_database(copy, spec)
    assert len(everything.get_all_tuning_records()) == 4 * len(lines)
    assert len(best.get_all_tuning_records()) <= 2 * len(everything.workloads) < 4 * len(lines)
    assert _best_per_key(best) == _best_per_key(everything) and _best_per_key(best)


def test_open_database_refuses_another_target(copy, model, spec):
    with pytest.raises(TuningLogError, match="made for target 'llvm'.*not for 'aarch64'"):
        open_database(copy, "aarch64")
    # tuning into it is refused the same way (for another target that runs here: aarch64 on x86 needs --rpc first)
    other = next(spec_.name for spec_ in map(resolve_target, ("x86-avx2", "x86-noamx", "aarch64-neon"))
                 if not why_not_runnable_here(spec_) and str(spec_.target) != str(spec.target))
    with pytest.raises(TuningLogError, match=f"not for '{other}'"):
        tune(model, other, 4, copy, batch=BATCH, seq=SEQ, progress=False)


def test_a_folder_of_the_same_target_on_another_host_is_opened(copy, spec):
    """The folder's target is compared by the fields that decide the kernels' code: a CUDA target's host (TVM fills
    in the machine's triple) or a num-cores in it does not make another target; another CPU does."""
    meta = json.loads((copy / META_FILE).read_text())
    target = json.loads(meta["target"]["target"])
    host = {"kind": "llvm", "mtriple": "aarch64-unknown-linux-gnu"}
    (copy / META_FILE).write_text(json.dumps({**meta, "target": {**meta["target"], "target": json.dumps(
        {**target, "host": host, "num-cores": 96})}}))
    assert open_database(copy, spec, keep_slower=True).get_all_tuning_records()
    (copy / META_FILE).write_text(json.dumps({**meta, "target": {**meta["target"], "target": json.dumps(
        {**target, "mcpu": "x86-64-v3"})}}))
    with pytest.raises(TuningLogError, match="made for target 'llvm'"):
        open_database(copy, spec)


def test_open_database_refuses_another_tvm_version(copy, spec):
    meta = json.loads((copy / META_FILE).read_text())
    (copy / META_FILE).write_text(json.dumps({**meta, "tvm": "0.26.0"}))
    with pytest.raises(TuningLogError, match="made with TVM 0.26.0"):
        open_database(copy, spec)


def _tensorize_with_unknown_intrinsic(folder) -> None:
    """Append a Tensorize instruction naming an intrinsic nobody registers to the first record's trace."""
    lines = (folder / RECORD_FILE).read_text().splitlines()
    record = json.loads(lines[0])
    record[1][0][0].append(["Tensorize", ["b0"], ["no_such_intrinsic", 1], []])
    (folder / RECORD_FILE).write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")


def _replace_first_line(path, change) -> None:
    """Rewrite the first JSON line of `path` as `change(row)`."""
    lines = path.read_text().splitlines()
    path.write_text("\n".join([json.dumps(change(json.loads(lines[0]))), *lines[1:]]) + "\n")


def _edit_first_workload(folder, change) -> None:
    """Apply `change` to the IR graph (JSON) of the first workload it applies to (it returns False where it does
    not), kept valid JSON in base64 after its 8-byte length, as TVM writes it."""
    lines = (folder / WORKLOAD_FILE).read_text().splitlines()
    for number, line in enumerate(lines):
        shash, encoded = json.loads(line)
        graph = json.loads(base64.b64decode(encoded)[8:])
        if change(graph) is not False:
            body = json.dumps(graph).encode()
            lines[number] = json.dumps([shash, base64.b64encode(len(body).to_bytes(8, "little") + body).decode()])
            (folder / WORKLOAD_FILE).write_text("\n".join(lines) + "\n")
            return
    raise AssertionError("no workload to edit")


def _drop_an_immediate_s_data(graph) -> None:
    """Remove the fields of the graph's first integer immediate: TVM raises a KeyError reading it."""
    next(node for node in graph["nodes"] if node["type"] == "ir.IntImm").pop("data")


def _type_an_immediate_with_an_array(graph) -> None:
    """Make the first integer immediate's type field refer to an array: TVM's reader died of SIGSEGV on it."""
    array = next(i for i, node in enumerate(graph["nodes"]) if node["type"] == "ffi.Array")
    next(node for node in graph["nodes"] if node["type"] == "ir.IntImm")["data"]["ty"] = array


def _rename_an_operator(graph) -> bool:
    """Rename the graph's first operator to a name no operator has (False where it calls none): TVM raises an
    AttributeError."""
    op = next((node for node in graph["nodes"] if node["type"] == "ir.Op"), None)
    if op is not None:
        op["data"] = "no_such_operator"
    return op is not None


def _in_every_trace(change):
    """A damage that applies `change` to each record's instructions (so that it reaches the records `compile`
    loads, each kernel shape's best), some of which it must change."""
    def damage(folder) -> None:
        rows = [json.loads(line) for line in (folder / RECORD_FILE).read_text().splitlines()]
        assert sum(change(row[1][0][0]) is not False for row in rows)
        (folder / RECORD_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return damage


def _null_a_categorical_probability(instructions) -> bool:
    """Make the first SampleCategorical's first probability null (TVM's reader dies of SIGSEGV on it)."""
    sample = next((i for i in instructions if i[0] == "SampleCategorical"), None)
    if sample is not None:
        sample[2][1][0] = None
    return sample is not None


def _null_an_inlined_block(instructions) -> bool:
    """Make the first ComputeInline's block null, written as TVM writes a null input (TVM raises a TypeError)."""
    inline = next((i for i in instructions if i[0] == "ComputeInline"), None)
    if inline is not None:
        inline[1][0] = "None"
    return inline is not None


def _rename_a_block(instructions) -> bool:
    """Make the first GetSBlock name a block the kernel lacks (TVM's error says '(not rendered)' on its own)."""
    get = next((i for i in instructions if i[0] == "GetSBlock"), None)
    if get is not None:
        get[2][0] = "no_such_block"
    return get is not None


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / RECORD_FILE).write_text((d / RECORD_FILE).read_text()[:-200]),
     f"corrupt: {RECORD_FILE} line {TRIALS} "),
    (lambda d: (d / WORKLOAD_FILE).write_text("garbage\n" + (d / WORKLOAD_FILE).read_text()),
     f"corrupt: {WORKLOAD_FILE} line 1 "),
    (lambda d: (d / RECORD_FILE).write_text('[99, [[], [1e-05], {}, []]]\n'), f"corrupt: {RECORD_FILE} line 1 "),
    (lambda d: (d / META_FILE).write_text("{"), f"{META_FILE} is corrupt"),
    (lambda d: (d / RECORD_FILE).unlink(), f"missing {RECORD_FILE}"),
    (lambda d: (d / META_FILE).unlink(), f"has no {META_FILE}"),
    (lambda d: shutil.rmtree(d), "folder not found"),
    (_tensorize_with_unknown_intrinsic, "tensorizes with no_such_intrinsic, which neither"),
    (lambda d: (d / META_FILE).write_text(json.dumps({**json.loads((d / META_FILE).read_text()),
                                                      "checked": {"k": []}})),
     "corrupt: its checked list does not map workload keys to a record and its programs"),
    (lambda d: (d / META_FILE).write_bytes(b"\xff\xfe" + (d / META_FILE).read_bytes()),
     f"{META_FILE} is corrupt: not UTF-8"),
    (lambda d: (d / RECORD_FILE).write_bytes((d / RECORD_FILE).read_bytes() + b"\xff\n"),
     f"{RECORD_FILE} is corrupt: not UTF-8"),
    (lambda d: (d / WORKLOAD_FILE).write_text("[1, 2]\n" + (d / WORKLOAD_FILE).read_text()),
     f"corrupt: {WORKLOAD_FILE} line 1 "),
    (lambda d: _replace_first_line(d / RECORD_FILE, lambda row: [True, row[1]]), f"corrupt: {RECORD_FILE} line 1 "),
    (lambda d: (d / META_FILE).write_text(json.dumps({**json.loads((d / META_FILE).read_text()),
                                                      "shapes": [["a", "b"]]})),
     "corrupt: its shapes are not lists of positive integers"),
    (lambda d: _edit_first_workload(d, _drop_an_immediate_s_data),
     f"corrupt: {WORKLOAD_FILE} line 1: 'key is not in Map'"),
    (lambda d: _edit_first_workload(d, _rename_an_operator),
     f"corrupt: {WORKLOAD_FILE} line 1: .*no_such_operator is not registered"),
    (lambda d: _edit_first_workload(d, _type_an_immediate_with_an_array),
     f"corrupt: {WORKLOAD_FILE} line 1: its module's node \\d+ \\(ir.IntImm\\) field 'ty' is of type ffi.Array, "
     "not ir.Type"),
    (lambda d: _replace_first_line(d / WORKLOAD_FILE, lambda row: [row[0], "bm90IGEgZ3JhcGg="]),
     f"corrupt: {WORKLOAD_FILE} line 1: its module is not an IR graph in base64"),
    (lambda d: (d / RECORD_FILE).write_text((d / RECORD_FILE).read_text() + "\n"),  # SIGSEGV until a fuzz
     f"corrupt: {RECORD_FILE} line {TRIALS + 1} is blank"),
    (lambda d: (d / WORKLOAD_FILE).write_text(" \n" + (d / WORKLOAD_FILE).read_text()),
     f"{WORKLOAD_FILE} line 1 is blank"),
    (lambda d: _replace_first_line(d / RECORD_FILE, lambda row: [row[0], [row[1][0], ["1e-5"], *row[1][2:]]]),
     f"corrupt: {RECORD_FILE} line 1 "),
    (lambda d: _replace_first_line(d / RECORD_FILE, lambda row: [row[0], [row[1][0], [float("nan")], *row[1][2:]]]),
     f"corrupt: {RECORD_FILE} line 1 "),
    (lambda d: _replace_first_line(d / RECORD_FILE, lambda row: [row[0], [row[1][0], [10 ** 400], *row[1][2:]]]),
     f"corrupt: {RECORD_FILE} line 1 "),  # (math.isfinite raised OverflowError on it)
    (lambda d: (d / RECORD_FILE).write_text('[0, [[], [1' + "0" * 5000 + '], {}, []]]\n'),
     f"corrupt: {RECORD_FILE} line 1 "),  # (past the digits Python converts: json raised a bare ValueError)
    (lambda d: _replace_first_line(d / RECORD_FILE, lambda row: [row[0], [*row[1][:2],
                                                                      {**row[1][2], "mcpu": "x86-64-v3"}, row[1][3]]]),
     f"corrupt: {RECORD_FILE} line 1 is a record for target .*x86-64-v3.*, not for llvm"),  # (MetaSchedule applied it)
    (lambda d: _replace_first_line(d / RECORD_FILE, lambda row: [row[0], [*row[1][:2], "llvm", row[1][3]]]),
     f"corrupt: {RECORD_FILE} line 1 is a record for target \"llvm\""),
    (_in_every_trace(_null_a_categorical_probability),
     f"corrupt: {RECORD_FILE} line \\d+: TVM's reader died of SIGSEGV on it$"),  # (it killed pytest)
    (_in_every_trace(_null_an_inlined_block),
     f"corrupt: {RECORD_FILE} line \\d+: Mismatched type .*Expected `s_tir.SBlockRV` but got `None`"),
    (_in_every_trace(_rename_a_block),
     f"corrupt: {RECORD_FILE} line \\d+: ScheduleError: Cannot find a block with the specified name$"),
], ids=["truncated-record", "garbage-workload", "record-of-no-workload", "corrupt-metadata", "missing-records",
        "missing-metadata", "missing-folder", "unknown-intrinsic", "corrupt-checked-list", "non-utf8-metadata",
        "non-utf8-records", "workload-of-integers", "record-index-true", "shapes-of-strings",
        "workload-node-without-fields", "unknown-operator", "immediate-typed-with-an-array",
        "workload-not-base64-json", "blank-record-line", "blank-workload-line", "run-time-of-a-string",
        "run-time-nan", "run-time-past-a-float", "run-time-of-5000-digits", "record-of-another-cpu",
        "record-target-a-string", "null-categorical-probability", "null-inlined-block", "unknown-block"])
def test_open_database_refuses_damaged_folders(copy, spec, damage, message):
    damage(copy)
    with pytest.raises(TuningLogError, match=message) as err:
        open_database(copy, spec)
    assert "\n" not in str(err.value)


def test_a_record_that_kills_tvms_reader_is_refused_by_its_line(copy, spec):
    """TVM's reader dies of SIGSEGV on a null SampleCategorical probability (a fuzz of record traces, 2026-12-07).
    A folder whose files are not those `tune` wrote is read in a child process first: the damaged record is
    refused by its line's number in the folder, among the records `compile` loads (each kernel shape's best, a
    selection whose lines are numbered otherwise) as among all."""
    rows = [json.loads(line) for line in (copy / RECORD_FILE).read_text().splitlines()]
    least = {}
    for row in rows:
        least[row[0]] = min(tuning.mean_of(row[1][1]), least.get(row[0], tuning.FAILED_SECS))
    best = [n for n, row in enumerate(rows, 1) if tuning.mean_of(row[1][1]) == least[row[0]] < tuning.FAILED_SECS]
    number = best[-1]
    assert number > len(best)  # its line in the selection is another
    assert _null_a_categorical_probability(rows[number - 1][1][0][0])
    (copy / RECORD_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))
    for keep_slower in (False, True):
        with pytest.raises(TuningLogError, match=f"{RECORD_FILE} line {number}: TVM's reader died of SIGSEGV"):
            open_database(copy, spec, keep_slower=keep_slower)


def test_a_folder_as_tune_wrote_it_is_read_by_tvm_alone(tuned, copy, spec, monkeypatch):
    """`tune` records the digests of the files it wrote in the metadata: a folder that matches is not read in a
    child process first; once a line is edited, it is, and still loads."""
    assert json.loads((copy / META_FILE).read_text())["files"] == tuning.files_digest(tuned[0], tuning._FILES)
    calls = []
    real = tuning.replay_problem
    monkeypatch.setattr(tuning, "replay_problem", lambda *args: calls.append(args) or real(*args))
    assert open_database(copy, spec).get_all_tuning_records()
    assert open_database(copy, spec, keep_slower=True).get_all_tuning_records() and not calls
    _replace_first_line(copy / RECORD_FILE, lambda row: [row[0], [row[1][0], [1e-3], *row[1][2:]]])
    assert open_database(copy, spec, keep_slower=True).get_all_tuning_records() and len(calls) == 1


def test_records_tuned_on_a_machine_with_other_cores_are_kept(copy, spec):
    """A record's `num-cores` is the tuning machine's (a resumed tune on another machine writes another): only
    the fields that decide the kernels' code are compared with the folder's target."""
    _replace_first_line(copy / RECORD_FILE, lambda row: [row[0], [*row[1][:2], {**row[1][2], "num-cores": 96},
                                                                  row[1][3]]])
    lines = (copy / RECORD_FILE).read_text().splitlines()
    assert len(open_database(copy, spec, keep_slower=True).get_all_tuning_records()) == len(lines)


def test_a_second_tune_on_a_folder_being_tuned_is_refused(copy, spec):
    """While a tune holds the folder's lock, another is refused by name before it reads or writes the database:
    two MetaSchedule databases appending to one folder filed each other's records under the wrong workloads (a
    fuzz, 2026-12-07); once released, the folder can be locked again."""
    import fcntl

    with open(copy / tuning.LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(TuningLogError, match=f"another ibert-tvm tune is writing {copy}"):
            tune(tvm.IRModule(), spec, 0, copy, check=False, progress=False)
    with tuning._sole_writer(copy):  # released with the file
        pass


def test_shipped_database_is_found_by_target(tuned, spec, tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "_REPO_LOGS", tmp_path)
    monkeypatch.setattr(tuning, "_PACKAGE_LOGS", tmp_path / "none")
    assert tuning.log_name(spec) == f"llvm-{spec.target.attrs['mcpu']}"
    assert tuning.shipped_database(spec) is None
    shutil.copytree(tuned[0], tmp_path / tuning.log_name(spec))
    assert tuning.shipped_database("llvm") == tmp_path / tuning.log_name(spec)
    assert tuning.shipped_database("aarch64") is None


def test_cpu_candidates_are_timed_with_cold_weights(spec):
    """On a CPU each timed run starts with the weights (every argument but the first, the activations)
    flushed from the caches, one run per measurement, as a kernel meets them in the model; a GPU keeps
    MetaSchedule's default timing."""
    config = tuning._runner(spec, None).evaluator_config
    assert config == tuning._evaluator(spec)
    assert config.enable_cpu_cache_flush and config.number == 1 and config.min_repeat_ms == 0 and config.repeat >= 3
    assert not tuning._evaluator(resolve_target("t4")).enable_cpu_cache_flush


def test_candidates_are_timed_after_a_warm_up(spec):
    """The local runner's evaluator calls the kernel untimed for its warm-up time first (a fresh measuring
    process runs its first kernels slowly), then returns the configured number of timed runs."""
    import time

    assert tuning._runner(spec, None).f_run_evaluator is not None
    x = te.placeholder((64, 64), "int32", name="x")
    mod = tvm.IRModule({"main": te.create_prim_func([x, te.compute((64, 64), lambda i, j: x[i, j] + 1)])})
    rt_mod = tvm.tirx.build(mod, target="llvm")
    args = [tvm.runtime.tensor(np.zeros((64, 64), "int32")) for _ in range(2)]
    config = tuning._evaluator(spec)
    started = time.perf_counter()
    costs = tuning._f_run_evaluator(warmup_ms=300)(rt_mod, tvm.cpu(), config, [args])
    assert time.perf_counter() - started >= 0.3
    assert len(costs) == config.repeat and all(c > 0 for c in costs)


def test_a_record_that_loses_beside_the_default_is_not_applied(spec, tmp_path, monkeypatch):
    """`tune` times each task's best record again beside its default schedule before it lists the losers:
    a record whose stored time claims 1 ns but whose trace leaves a 64 x 256 x 256 GEMM unscheduled (plain
    loops) loses there and is listed, though its stored time beats every measurement of the default."""
    mod, task, work = _folder_with_an_unchanged_record(spec, 3, tmp_path)
    # the runner's workers on one thread: beside the other xdist worker on 2 cores, the default's two threads met at
    # their barrier after a scheduler time slice, and the 15 us kernel lost to the 1.6 ms one (3 of 5 runs)
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    result = tune(mod, spec, 1, work, progress=False)  # the record is the one trial asked for: no search
    assert result.trials_run == 0 and result.slower_than_default == (task.task_name,), result.untimed
    assert result.records_checked == 1 and not result.wrong_integers  # its integers are right, only slow
    assert tuning.workload_key(task.dispatched[0]) in json.loads((work / META_FILE).read_text())["default_wins"]


def _narrowed(task: ms.ExtractedTask) -> tvm.s_tir.Schedule:
    """The GEMM's int32 accumulator narrowed to int16: wrong wherever a 256-term dot product leaves int16."""
    sch = tvm.s_tir.Schedule(task.dispatched[0])
    sch.unsafe_set_dtype("acc", 0, "int16")
    return sch


def test_a_record_that_writes_other_integers_is_never_applied(spec, tmp_path):
    """A record whose trace narrows the GEMM's int32 accumulator to int16 (256-term int8 dot products overflow
    it) is caught by running it on the arguments the untuned program passed its kernel: listed in the summary
    and the metadata, and left out of the database, so the compiled program keeps the untuned integers."""
    mod, task = _linear_module(4)
    work = tmp_path / "db"
    tune(mod, spec, 0, work, progress=False)
    _commit_record(work, spec, task, _narrowed(task))
    result = tune(mod, spec, 1, work, progress=False, estimate=False)
    assert result.wrong_integers == (task.task_name,) and result.records_checked == 1 and not result.unchecked
    assert 0 < result.check_seconds < result.seconds
    assert "checked against the untuned program's integers: 1 (on 1 kernel), 1 differ" in str(result)
    assert f"  {task.task_name}" in str(result).splitlines()
    meta = json.loads((work / META_FILE).read_text())
    assert meta["wrong_integers"] == {tuning.workload_key(task.dispatched[0]): task.task_name}
    x = np.random.default_rng(1).integers(-128, 128, (1, 64, 256)).astype(np.int8)
    untuned = _run(pipeline.build(mod, spec.target), [x])
    tally: dict[str, int] = {}
    np.testing.assert_array_equal(_run(pipeline.build(mod, spec.target, database=open_database(work, spec),
                                                      tally=tally), [x]), untuned)
    assert tally["tuned"] == 0
    # what the check caught is real: the record as it is on disk does change the integers
    applied = pipeline.build(mod, spec.target, database=open_database(work, spec, keep_slower=True))
    assert not np.array_equal(_run(applied, [x]), untuned)


def test_check_only_leaves_out_a_record_that_is_wrong_for_another_model(spec, tmp_path):
    """A record that writes the right integers for the model it was tuned on (weights in [-1, 1]: its int16
    accumulator does not overflow on the sampled inputs) is checked with `check_only` on another model of the
    same shapes (full-range weights, where it does): no search and no timing, the record listed and left out
    of every later compile, so the second model keeps its untuned integers; of the folder's metadata only
    `wrong_integers` changes."""
    small, task = _linear_module(9, high=2)
    work = tmp_path / "db"
    tune(small, spec, 0, work, progress=False)
    _commit_record(work, spec, task, _narrowed(task))
    first = tune(small, spec, 1, work, progress=False, estimate=False)
    assert first.records_checked == 1 and not first.wrong_integers and first.applied == (task.task_name,)
    again = tune(small, spec, 0, work, progress=False, check_only=True)
    assert again.check_only and again.applied == (task.task_name,) and "compile applies 1;" in str(again)
    full, other = _linear_module(9)
    assert tuning.workload_key(other.dispatched[0]) == tuning.workload_key(task.dispatched[0])
    meta = json.loads((work / META_FILE).read_text())
    checked = tune(full, spec, 500, work, progress=False, check_only=True)
    assert checked.trials_run == 0 and checked.latency_before_ms is None  # no search, nothing timed
    assert checked.wrong_integers == (task.task_name,) and checked.recorded == (task.task_name,)
    assert checked.applied == () and ("have a best record (1 trials), of which compile applies 0 (left out: 1 "
                                      "write other integers)") in str(checked)
    after = json.loads((work / META_FILE).read_text())
    assert after.pop("wrong_integers") == {tuning.workload_key(task.dispatched[0]): task.task_name}
    assert after == {k: v for k, v in meta.items() if k != "wrong_integers"}
    x = np.random.default_rng(3).integers(-128, 128, (1, 64, 256)).astype(np.int8)
    tally: dict[str, int] = {}
    tuned = pipeline.build(full, spec.target, database=open_database(work, spec), tally=tally)
    assert tally["tuned"] == 0
    np.testing.assert_array_equal(_run(tuned, [x]), _run(pipeline.build(full, spec.target), [x]))


def test_check_only_needs_a_database_and_inputs(model, spec, tmp_path):
    """Refused by name: no database in the folder, records that would run elsewhere (before the folder is
    read), a program without inputs to run it on."""
    with pytest.raises(TuningLogError, match="no tuning database at .*missing"):
        tune(model, spec, 0, tmp_path / "missing", batch=BATCH, seq=SEQ, progress=False, check_only=True)
    with pytest.raises(ValueError, match="cannot check the records of .*: the target runs elsewhere"):
        tune(model, spec, 0, tmp_path / "missing", batch=BATCH, seq=SEQ, rpc=("127.0.0.1", 9190, "board"),
             check_only=True)
    program = model.program(BATCH, SEQ)
    tune(program, spec, 0, tmp_path / "db", progress=False, estimate=False, check=False)
    with pytest.raises(ValueError, match="cannot check the records of .*: no inputs for the program"):
        tune(program, spec, 0, tmp_path / "db", progress=False, check_only=True)
    assert not (tmp_path / "missing").exists()


def test_a_check_only_call_that_could_not_run_the_program_is_an_error(spec, tmp_path, monkeypatch):
    """Checking was the call's only job: where the untuned program fails on the inputs, it raises instead of
    summing up a check that did not happen."""
    mod, _, work = _folder_with_an_unchanged_record(spec, 11, tmp_path)

    def failing(*_args):
        raise RuntimeError("the VM stopped")

    monkeypatch.setattr(tuning.record_check, "visit_kernel_calls", failing)
    with pytest.raises(ValueError, match="cannot check the records of .*: the untuned program did not run on the "
                                         "inputs: the VM stopped"):
        tune(mod, spec, 0, work, progress=False, check_only=True)


def test_records_are_not_checked_without_inputs_for_the_program(model, spec, tmp_path):
    """An IRModule whose inputs are not all 8 / 16-bit gets no made-up inputs (token ids must lie in the
    vocabulary): `tune` says the records were not checked and how to have them checked."""
    mod = model.program(BATCH, SEQ)
    assert tuning.record_check.sample_inputs(mod, BATCH, SEQ) is None
    result = tune(mod, spec, 0, tmp_path / "db", progress=False, estimate=False)
    assert "pass check_inputs" in result.unchecked and "not checked" in str(result)


def test_sample_inputs_cover_the_vocabulary_and_a_masked_tail(model):
    ids, mask, types = tuning.record_check.sample_inputs(model, 2, 16)
    assert ids.dtype == np.int64 and mask.dtype == types.dtype == np.int32
    assert ids.shape == mask.shape == types.shape == (2, 16) and not types.any()  # one token type in this model
    assert 0 <= ids.min() and ids.max() < CONFIG["vocab_size"] and len(np.unique(ids)) > 8
    assert mask[0].all() and mask[1, :12].all() and not mask[1, 12:].any()
    assert (ids[1, 12:] == CONFIG["pad_token_id"]).all()


def test_summary_gives_each_reason_a_task_cannot_be_tuned_once(tmp_path):
    """Tasks that cannot be tuned for the same reason share one line (BERT-base's 12 Softmax tasks did not),
    which names the first few of them; another reason gets a line of its own."""
    softmax = {f"ibert_int_softmax{i}": "Error message: producers not under the target loop" for i in range(7)}
    result = tuning.TuningResult(target="llvm", work_dir=tmp_path, tasks=dict.fromkeys([*softmax, "other", "gemm"], 1),
                                 kernels=9, trials_run=0, trials_total=0, build_errors=0, run_errors=0,
                                 untunable={**softmax, "other": "Error message: no space"})
    lines = str(result).splitlines()
    assert sum("not tunable" in line for line in lines) == 2
    assert "not tunable (default schedule): 7 tasks: Error message: producers not under the target loop" in lines
    assert "not tunable (default schedule): 1 task: Error message: no space" in lines
    assert "  ibert_int_softmax4" in lines and "  ibert_int_softmax5" not in lines and "  ... and 2 more" in lines


def test_an_error_s_line_is_cut_after_a_whole_sentence():
    """A ScheduleError's line (a sentence, then its list of IR objects) is cut after its last whole sentence
    within 200 characters, not in the middle of a word; a short line stays whole."""
    message = ("Traceback (most recent call last):\n  File x\nScheduleError: An error occurred in the schedule.\n"
               "Error message: The primitive requires all the producer(s) of the given block to be present under "
               "the target loop. However, there are 1 producer(s) not satisfying the condition. List of the "
               "producer(s) not satisfying the condition: " + "T.sblock('exp_shifted') " * 20)
    line = tuning._one_line(message)
    assert line == ("Error message: The primitive requires all the producer(s) of the given block to be present "
                    "under the target loop. However, there are 1 producer(s) not satisfying the condition.")
    assert tuning._one_line("RuntimeError: short") == "RuntimeError: short"
    # a full stop too early in the line (an abbreviation) is no place to cut
    assert tuning._one_line("ValueError: see e.g. the docs " + "z" * 300) == ("ValueError: see e.g. the docs "
                                                                             + "z" * 169 + "…")


def test_tuning_space_keeps_the_square_root_stages(spec):
    """MetaSchedule leaves LayerNorm's Newton iterates as stages (`intmath.KEEP_STAGE`): AutoInline and
    RandomComputeLocation inlined them into one another, up to ~1,100 divisions, 300-600 KB of TIR a design."""
    from ibert_tvm.schedules import x86

    rng = np.random.default_rng(0)
    ln = ibert_tvm.quant.layernorm_constants(rng.uniform(0.5, 1.5, 32), rng.normal(0, 0.1, 32))
    mod = single_op_module(lambda v: ops.int_layernorm(v, ln.bias_int, 2), {"x": np.zeros((8, 32), np.int32)})
    with spec.target:
        func = relax.transform.LegalizeOps()(mod)["ibert_int_layernorm"]
    with tuning._family_intrinsics_only(spec):  # TVM's other targets' intrinsics take 30-80 s to import
        context = ms.TuneContext(mod=tvm.IRModule({"main": func}), target=tuning._tuning_target(spec.target),
                                 space_generator=x86.tuning_space(spec.target)["space"], task_name="ln",
                                 num_threads=1)
    designs = context.clone().generate_design_space()
    stages = {f'sblock("row_isqrt_x{i}")' for i in range(ops.intmath.ISQRT_STEPS + 1)}
    assert designs and all(all(stage in d.mod.script() for stage in stages) for d in designs)


def _linear_module(seed: int, high: int = 128) -> tuple[tvm.IRModule, ms.ExtractedTask]:
    """main(x int8 [1, 64, 256]) = requantize(linear(x)) with seeded weights in (-high, high), and its GEMM
    task for the host."""
    rng = np.random.default_rng(seed)
    weight, bias = rng.integers(1 - high, high, (256, 256)).astype(np.int8), rng.integers(-1000, 1000, (256,))
    mod = single_op_module(lambda x: ops.requantize(ops.linear(x, weight, bias.astype(np.int32)), 1 << 30, 40),
                           {"x": np.zeros((1, 64, 256), np.int8)})
    [task] = [t for t in _kernels(mod, resolve_target("llvm").target) if "linear" in t.task_name]
    return mod, task


def _kernels(mod: tvm.IRModule, target: tvm.target.Target) -> list[ms.ExtractedTask]:
    """The program's kernels as `tune` extracts them, one task each (before `_shared_tasks` groups them)."""
    return ms.relax_integration.extract_tasks(pipeline.tunable_module(mod, target), tuning._tuning_target(target))


def _commit_record(work, spec, task: ms.ExtractedTask, sch: tvm.s_tir.Schedule, secs: float = 1e-9) -> None:
    database = open_database(work, spec, keep_slower=True)
    database.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, database.commit_workload(task.dispatched[0]), [secs], tuning._tuning_target(spec.target),
        ms.arg_info.ArgInfo.from_prim_func(task.dispatched[0]["main"])))


def _folder_with_an_unchanged_record(spec, seed: int, tmp_path: Path) -> tuple[tvm.IRModule, ms.ExtractedTask, Path]:
    """`_linear_module(seed)`, its task, and a fresh database folder holding one record for the task whose
    trace leaves the kernel unscheduled (a trace of one instruction that changes nothing: an empty one is
    invalid), timed at 1 ns."""
    mod, task = _linear_module(seed)
    work = tmp_path / "db"
    tune(mod, spec, 0, work, progress=False)  # the folder and its metadata
    unchanged = tvm.s_tir.Schedule(task.dispatched[0])
    unchanged.get_sblock("acc")
    _commit_record(work, spec, task, unchanged)
    return mod, task, work


def _builds_failing_with(message: str):
    """A stand-in for `tuning._f_build` whose builds all raise TVM's InternalError with `message`."""
    def failing_build():
        def build(*_args):
            raise tvm.error.InternalError(message)
        return build
    return failing_build


def test_kernels_that_could_not_be_timed_are_named_with_why(spec, tmp_path, monkeypatch):
    """Where the default schedule and the record fail to build for the timing, the task cannot be compared: the
    result names it with the build's error instead of leaving it out of the comparison unsaid."""
    mod, task, work = _folder_with_an_unchanged_record(spec, 6, tmp_path)
    monkeypatch.setattr(tuning, "_f_build", _builds_failing_with("no room left on the device"))
    result = tune(mod, spec, 1, work, progress=False, check=False)
    assert result.untimed == {task.task_name: "build: tvm.error.InternalError: no room left on the device"}
    assert not result.slower_than_default
    assert f"could not be timed (a default schedule that failed leaves its task's record uncompared):\n  " \
           f"{task.task_name}: build: tvm.error.InternalError: no room left on the device" in str(result)


def test_a_record_that_does_not_build_is_left_out_without_the_timing(spec, tmp_path, monkeypatch):
    """With `estimate=False` no record is timed beside its default (where one that fails to build loses): the
    check lists a record whose kernel does not build, since `compile` would fail on it."""
    mod, task, work = _folder_with_an_unchanged_record(spec, 5, tmp_path)
    monkeypatch.setattr(tuning, "_f_build", _builds_failing_with("The buffer match constraint for b.strides_0 unmet: "
                                                                  "4==16"))
    result = tune(mod, spec, 1, work, progress=False, estimate=False)
    assert result.wrong_integers == (task.task_name,) and "fails to build or run" in str(result)


def test_metadata_keeps_what_other_tunings_of_the_folder_left_out(spec, tmp_path):
    """A folder tuned twice: a later call's timing verdicts replace only those of the kernel shapes it
    decided; a record once found to write other integers stays left out even where a later call (another
    shape, model or calibration, which never ran it on the first's kernels) finds it right."""
    tmp_path.mkdir(exist_ok=True)
    tuning._write_meta(tmp_path, spec, [[1, 8]], 4, "here", {"a", "b"},
                       {"wrong_integers": {"a": "task_a", "b": "task_b"}, "default_wins": {"c": "task_c"}})
    tuning._write_meta(tmp_path, spec, [[1, 16]], 8, "here", {"b", "c", "d"},
                       {"wrong_integers": {"d": "task_d"}, "default_wins": {"e": "task_e"}})
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["wrong_integers"] == {"a": "task_a", "b": "task_b", "d": "task_d"}
    assert meta["default_wins"] == {"e": "task_e"}  # c was decided again: its record now wins
    assert meta["shapes"] == [[1, 8], [1, 16]] and meta["format"] == tuning._FORMAT


@pytest.mark.parametrize("field, value, why", [
    ("format", None, "its dot-product steps read non-compact tiles"),  # before the steps declared their strides
    ("format", 2, "its records are filed per kernel, not per kernel shape shared by the layers"),
    ("format", 9, "format 9, which this ibert-tvm does not know"),
    ("format", [3], r"format \[3\], which this ibert-tvm does not know"),  # a TypeError (unhashable) until a fuzz
    # records filed under keys masked otherwise would be served to other kernels
    ("key_scheme", None, "its workload keys' scheme is not recorded"),
    ("key_scheme", "0", "its records are filed under workload keys that this ibert-tvm computes otherwise")])
def test_a_database_of_another_format_or_key_scheme_is_refused(tuned, spec, tmp_path, field, value, why):
    """A folder whose metadata has another format or workload-key scheme (None: the field absent) is refused."""
    copy = tmp_path / "old"
    shutil.copytree(tuned[0], copy)
    meta = json.loads((copy / META_FILE).read_text())
    assert meta.pop(field) == {"format": tuning._FORMAT, "key_scheme": tuning.key_scheme()}[field]
    (copy / META_FILE).write_text(json.dumps(meta if value is None else {**meta, field: value}))
    with pytest.raises(TuningLogError, match=f"made by another ibert-tvm \\({why}.*\\): re-tune into a new folder"):
        open_database(copy, spec)


def test_check_inputs_that_do_not_fit_the_program_are_refused_before_the_search(spec, tmp_path):
    mod, _ = _linear_module(6)
    with pytest.raises(ValueError, match=r"check_inputs\[0\] is int32 \[1, 64, 256\], the program's main takes "
                                         r"int8 \[1, 64, 256\]"):
        tune(mod, spec, 4, tmp_path / "db", progress=False, check_inputs=[np.zeros((1, 64, 256), np.int32)])
    with pytest.raises(ValueError, match="check_inputs holds 2 arrays, the program's main takes 1"):
        tune(mod, spec, 4, tmp_path / "db", progress=False, check_inputs=[np.zeros(1), np.zeros(1)])
    assert not (tmp_path / "db").exists()  # refused before the folder was made


def test_kernel_calls_are_visited_as_they_happen_and_not_kept(model, spec):
    """The check gets each kernel's first call as soon as it returns, and no call's copies outlive its visit
    (a whole program's, at a large batch x sequence, would not fit in memory); each call's copies are taken
    before and after it (its outputs differ)."""
    mod = model.program(BATCH, SEQ)
    symbols = {gv.name_hint for gv, f in pipeline.tunable_module(mod, spec.target).functions_items()
               if isinstance(f, tvm.tirx.PrimFunc)}
    seen: list[str] = []
    gone: list[weakref.ref] = []

    def visit(symbol: str, call: tuning.record_check.KernelCall) -> None:
        gc.collect()
        assert all(ref() is None for ref in gone), "an earlier call is still held"
        assert any(not np.array_equal(a, b) for a, b in zip(call.before, call.after) if isinstance(b, np.ndarray))
        seen.append(symbol)
        gone.append(weakref.ref(call))

    tuning.record_check.visit_kernel_calls(mod, spec.target, tvm.cpu(), tuning.record_check.sample_inputs(
        model, BATCH, SEQ), symbols, visit)
    assert len(seen) == len(set(seen)) and len(seen) >= 8


def _two_layers() -> tvm.IRModule:
    """main(x int8 [1, 64, 256]) = two requantize(linear) layers of the same shape with their own weights and
    their own requantize constants (immediates in their kernels, as each encoder layer's)."""
    rng = np.random.default_rng(7)
    weights = [rng.integers(-127, 128, (256, 256)).astype(np.int8) for _ in range(2)]
    bias = rng.integers(-1000, 1000, (256,)).astype(np.int32)

    def layers(x: relax.Expr) -> relax.Expr:
        h = ops.requantize(ops.linear(x, weights[0], bias), 1 << 30, 40)
        return ops.requantize(ops.linear(h, weights[1], bias), 1533331, 31)

    return single_op_module(layers, {"x": np.zeros((1, 64, 256), np.int8)})


def test_workload_key_ignores_only_the_constants_of_stored_values(spec):
    """Kernels that differ in their requantize constants share a key; a kernel of another shape does not."""
    linears = [k.dispatched[0] for k in _kernels(_two_layers(), spec.target) if "linear" in k.task_name]
    assert len(linears) == 2 and not tvm_ffi.structural_equal(linears[0], linears[1])
    assert tuning.workload_key(linears[0]) == tuning.workload_key(linears[1])
    _, other = _linear_module(1)  # K = N = 256 as well, rows 64: the same shape, other constants (1 << 30, 40)
    assert tuning.workload_key(other.dispatched[0]) == tuning.workload_key(linears[0])
    narrower = single_op_module(lambda x: ops.requantize(ops.linear(x, np.ones((128, 256), np.int8)), 1 << 30, 40),
                                {"x": np.zeros((1, 64, 256), np.int8)})
    [kernel] = [k for k in _kernels(narrower, spec.target) if "linear" in k.task_name]
    assert tuning.workload_key(kernel.dispatched[0]) != tuning.workload_key(linears[0])


def test_one_record_schedules_every_layer_with_its_own_constants(spec, tmp_path):
    """Two layers' kernels that differ only in their requantize constants are one task of weight 2; a record
    tuned on the first schedules both in `compile`, each keeping its own constants (MetaSchedule's own query
    would replay the trace on the first kernel, the second layer then computing with the first's constants),
    and `tune` checks the record on both kernels."""
    mod = _two_layers()
    work = tmp_path / "db"
    result = tune(mod, spec, 0, work, progress=False, estimate=False)
    [(name, weight)] = [(n, w) for n, w in result.tasks.items() if "linear" in n]
    assert weight == 2 and result.kernels == len(result.tasks) + 1
    [task] = [t for t in tuning._shared_tasks(_kernels(mod, spec.target)) if t.task_name == name]
    sch = tvm.s_tir.Schedule(task.dispatched[0])
    sch.split(sch.get_loops(sch.get_sblock("acc"))[-1], [None, 16])
    _commit_record(work, spec, task, sch)
    assert len((work / WORKLOAD_FILE).read_text().splitlines()) == 1  # one workload, for both kernels
    checked = tune(mod, spec, 1, work, progress=False, estimate=False)
    assert checked.records_checked == 1 and checked.kernels_checked == 2 and not checked.wrong_integers
    x = np.random.default_rng(2).integers(-128, 128, (1, 64, 256)).astype(np.int8)
    tally: dict[str, int] = {}
    tuned = pipeline.build(mod, spec.target, database=open_database(work, spec), tally=tally)
    assert tally["tuned"] == 2
    np.testing.assert_array_equal(_run(tuned, [x]), _run(pipeline.build(mod, spec.target), [x]))
    meta = json.loads((work / META_FILE).read_text())  # the shared record left out: neither layer takes it
    (work / META_FILE).write_text(json.dumps({**meta, "default_wins": {tuning.workload_key(task.dispatched[0]): name}}))
    pipeline.build(mod, spec.target, database=open_database(work, spec), tally=tally)
    assert tally["tuned"] == 0


def test_applying_records_keeps_the_module_s_global_infos_and_kernel_attributes(spec, tmp_path):
    """`ApplyTuningRecords` swaps in the scheduled kernel and leaves the rest of the module as it was: its
    global infos (a VDevice, as a Relax program that places tensors carries) and the kernel's attributes, with
    none of the record's one-kernel module (its `main` symbol) added but `tirx.is_scheduled`."""
    mod, task, work = _folder_with_an_unchanged_record(spec, 10, tmp_path)
    tunable = pipeline.tunable_module(mod, spec.target)
    tunable.update_global_info("vdevice", [relax.VDevice(spec.target, 0, "global")])
    [gv] = [gv for gv, f in tunable.functions_items() if "linear" in gv.name_hint]
    out = ApplyTuningRecords(open_database(work, spec, keep_slower=True), spec.target)(tunable)
    assert out[gv].attrs["tirx.is_scheduled"] and not tunable[gv].attrs.get("tirx.is_scheduled", False)
    assert {k: v for k, v in out[gv].attrs.items() if k != "tirx.is_scheduled"} == dict(tunable[gv].attrs)
    assert tvm_ffi.structural_equal(out.global_infos, tunable.global_infos) and "vdevice" in out.global_infos


def test_a_fault_in_the_check_is_raised_not_read_as_the_program_failing(spec, tmp_path, monkeypatch):
    """The check runs inside the VM's instrument callback, from which a Python exception comes back as a
    RuntimeError; it is raised as itself after the run instead of being reported as the untuned program
    failing, with the records left unchecked."""
    mod, _, work = _folder_with_an_unchanged_record(spec, 8, tmp_path)

    def broken(*_args):
        raise ZeroDivisionError("a fault in the check")

    monkeypatch.setattr(tuning.record_check, "writes_the_same", broken)
    with pytest.raises(ZeroDivisionError, match="a fault in the check"):
        tune(mod, spec, 1, work, progress=False, estimate=False)
