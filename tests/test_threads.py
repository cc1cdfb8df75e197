"""ibert_tvm sets TVM's CPU thread count to the physical cores (TVM alone starts half the logical CPUs on
x86), and leaves a user's TVM_NUM_THREADS alone. Each case runs in a fresh interpreter: the pool starts once."""

from __future__ import annotations

import os
import subprocess
import sys


from ibert_tvm.threads import physical_cores

PROBE = "import ibert_tvm, tvm; print(tvm.get_global_func('runtime.NumThreads')())"


def _threads_in_fresh_process(env_threads: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    env.update({"TVM_NUM_THREADS": env_threads} if env_threads else {})
    return int(subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, capture_output=True,
                              text=True).stdout.split()[-1])


def test_tvm_runs_one_thread_per_physical_core():
    assert _threads_in_fresh_process(None) == physical_cores()


def test_a_user_thread_count_wins():
    assert _threads_in_fresh_process("1") == 1
