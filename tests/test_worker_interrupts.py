"""MetaSchedule's popen workers under a terminal's Ctrl-C (`ibert_tvm.worker_interrupts`): they never see SIGINT,
and the tune that made them stops them however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from tvm.support.popen_pool import PopenPoolExecutor, PopenWorker

from ibert_tvm.worker_interrupts import workers_spared_from_sigint
from tiny_models import calibration_texts, save_tiny_classifier


def _blocked(pool: PopenPoolExecutor) -> set[int]:
    """The signals a worker of `pool` blocks (a stdlib call, which cloudpickle sends by name)."""
    return {int(s) for s in pool.submit(signal.pthread_sigmask, signal.SIG_BLOCK, set()).result()}


def test_workers_start_blind_to_sigint_and_an_interrupted_block_stops_its_pools():
    """In the block a worker starts with SIGINT blocked (a default pool's does not); a block ended by an exception
    returns at once although a job is running and more are queued, with the workers' processes dead and the
    pools shut (so the garbage collector never shuts them again, from their own thread). TVM's own methods are
    back after the block."""
    original_start, original_init = PopenWorker._start, PopenPoolExecutor.__init__
    outside = PopenPoolExecutor(max_workers=1)
    assert int(signal.SIGINT) not in _blocked(outside)
    outside.shutdown()

    with pytest.raises(KeyboardInterrupt), workers_spared_from_sigint():
        pool = PopenPoolExecutor(max_workers=1)
        assert int(signal.SIGINT) in _blocked(pool)
        processes = [psutil.Process(w._proc.pid) for w in pool._worker_map.values()]
        running = [pool.submit(time.sleep, 60) for _ in range(3)]
        time.sleep(0.5)
        started = time.monotonic()
        raise KeyboardInterrupt
    assert time.monotonic() - started < 10
    assert pool._shutdown and all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in processes)
    assert all(f.done() for f in running)
    assert (PopenWorker._start, PopenPoolExecutor.__init__) == (original_start, original_init)


def test_a_block_stops_only_the_pools_of_its_own_thread():
    """A pool another thread makes while a tune's block is open (another user of MetaSchedule in the process) is
    not the tune's: it keeps working after the block ends; the block's own pool is stopped."""
    import threading

    made: list[PopenPoolExecutor] = []
    with workers_spared_from_sigint():
        own = PopenPoolExecutor(max_workers=1)
        other = threading.Thread(target=lambda: made.append(PopenPoolExecutor(max_workers=1)))
        other.start()
        other.join()
    assert own._shutdown and not made[0]._shutdown
    assert made[0].submit(sum, [1, 2]).result() == 3
    made[0].shutdown()


def _command_line(process: psutil.Process) -> str:
    """A child's command line; "" for one that ended (or is a zombie) between listing and reading it (a race
    that failed this test once on 2 cores, 2026-12-07)."""
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:  # (ZombieProcess included)
        return ""


def test_ctrl_c_of_a_terminal_during_tune_is_one_line_and_leaves_no_worker(tmp_path):
    """SIGINT to the whole process group (a terminal's Ctrl-C) while MetaSchedule's workers run: status 130, the
    one line, no traceback from any worker (each printed its KeyboardInterrupt until 2026-12-07, or TVM's pool
    its 'cannot join current thread'), and no worker process left."""
    model = save_tiny_classifier(tmp_path / "model")
    (tmp_path / "calibration.txt").write_text("\n".join(calibration_texts()), encoding="utf-8")
    script = Path(sys.executable).parent / "ibert-tvm"
    command = [str(script), "tune", "--model", str(model), "--calibration", str(tmp_path / "calibration.txt"),
               "--seq", "16", "--trials", "64", "--work-dir", str(tmp_path / "db")]
    with open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        tune = psutil.Process(proc.pid)
        deadline = time.monotonic() + 300
        workers: list[psutil.Process] = []
        while proc.poll() is None and time.monotonic() < deadline and len(workers) < 2:
            workers = [c for c in tune.children(recursive=True) if "popen_worker" in _command_line(c)]
            time.sleep(0.2)
        assert len(workers) >= 2, "the tune ended before its workers started"
        time.sleep(1)  # the builders import TVM, or build
        os.killpg(proc.pid, signal.SIGINT)
        status = proc.wait(timeout=120)
    stderr = (tmp_path / "err.txt").read_text()
    assert status == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("ibert-tvm: interrupted: ") and "Traceback" not in stderr
    time.sleep(1)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
