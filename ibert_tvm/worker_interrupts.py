"""MetaSchedule's worker processes kept out of a terminal's Ctrl-C: the tune that started them stops them.

A terminal sends SIGINT to its whole process group. TVM's popen workers (candidate builds, measurements) got it
too and each printed its own KeyboardInterrupt traceback after the command's one line; and a pool left to the
garbage collector could be shut down by its own thread, which cannot join itself (an 'Exception ignored'
traceback). This reaches into `tvm.support.popen_pool` (pinned with TVM), which has no option for either.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from tvm.support.popen_pool import PopenPoolExecutor, PopenWorker, kill_child_processes

_lock = threading.Lock()
_open: dict[int, int] = {}  # thread id -> blocks open in that thread (TVM's methods are patched while any is)
_original_start = PopenWorker._start  # noqa: SLF001 (the one place TVM starts a worker process)
_original_init = PopenPoolExecutor.__init__
_pools: dict[int, weakref.WeakSet[PopenPoolExecutor]] = {}  # thread id -> the pools made there in a block


def _start_without_sigint(worker: PopenWorker) -> None:
    """Start the worker with SIGINT blocked: the mask is inherited across fork and exec, so the worker never
    sees the signal, also while it still imports TVM (where no initializer could have set a handler yet)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        _original_start(worker)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _init_noted(pool: PopenPoolExecutor, *args: Any, **kwargs: Any) -> None:
    """TVM's constructor, and the pool noted for `_stop` where its thread has a block open (a tune makes its
    pools in its own thread; another thread's pools are not the tune's to stop)."""
    _original_init(pool, *args, **kwargs)
    with _lock:
        if threading.get_ident() in _open:
            _pools.setdefault(threading.get_ident(), weakref.WeakSet()).add(pool)


def _stop(pool: PopenPoolExecutor) -> None:
    """Stop `pool` from this thread: its queued jobs cancelled (TVM's shutdown waits for all of them), its workers'
    processes killed (a thread waiting for a worker's reply then returns), its threads joined, then TVM's shutdown
    (which closes the workers' pipes). Marked shut first, so that the garbage collector never shuts it down again
    (TVM's `__del__`: in a pool thread it cannot join itself; and a Ctrl-C there leaves its lock held for the next
    call to wait on forever)."""
    pool._shutdown = True  # noqa: SLF001
    pool._threadpool.shutdown(wait=False, cancel_futures=True)  # noqa: SLF001
    with pool._lock:  # noqa: SLF001 (a pool thread adds its worker under it)
        workers = list(pool._worker_map.values())  # noqa: SLF001
    for worker in workers:
        process = worker._proc  # noqa: SLF001
        if process is not None:
            kill_child_processes(process.pid)  # a compiler the worker runs
            process.kill()
    # the threads first: one that finds its worker dead cleans it up itself (`PopenWorker.kill`, which is not for
    # two threads at once: run beside TVM's shutdown, one of them read the other's cleared process)
    pool._threadpool.shutdown(wait=True)  # noqa: SLF001
    pool.shutdown(wait=True)


@contextlib.contextmanager
def workers_spared_from_sigint() -> Iterator[None]:
    """Within the block, TVM's popen workers start with SIGINT blocked; when the block ends, however it ends (as by
    the KeyboardInterrupt of a Ctrl-C), the pools made in it, in this thread, are stopped here."""
    me = threading.get_ident()
    with _lock:
        if not _open:
            PopenWorker._start = _start_without_sigint  # noqa: SLF001
            PopenPoolExecutor.__init__ = _init_noted
        _open[me] = _open.get(me, 0) + 1
    try:
        yield
    finally:
        with _lock:
            _open[me] -= 1
            mine = []
            if not _open[me]:
                del _open[me]
                mine = list(_pools.pop(me, ()))
            if not _open:
                PopenWorker._start = _original_start  # noqa: SLF001
                PopenPoolExecutor.__init__ = _original_init
        for pool in mine:
            _stop(pool)
