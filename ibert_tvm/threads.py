"""CPU threads for TVM's parallel loops: one per physical core this process may run on.

TVM's thread pool starts half the logical CPUs on x86 (it assumes two hardware threads per core), so on a
host without SMT, e.g. a cloud VM whose vCPUs are cores, half the cores sat idle: a 2-vCPU VM ran every
kernel on one thread. `TVM_NUM_THREADS`, when the user sets it, wins.
"""

from __future__ import annotations

import os

__all__ = ["configure_threads", "physical_cores"]


def physical_cores() -> int:
    """Physical cores among the logical CPUs this process may use (psutil counts cores, the affinity mask
    says which CPUs are ours; their minimum, at least 1)."""
    import psutil

    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(logical, psutil.cpu_count(logical=False) or logical))


def configure_threads() -> int:
    """Set `TVM_NUM_THREADS` to `physical_cores()` unless the user set it; TVM reads it when its pool starts
    (the first parallel kernel), so call this before running one. Returns the thread count in effect."""
    os.environ.setdefault("TVM_NUM_THREADS", str(physical_cores()))
    return int(os.environ["TVM_NUM_THREADS"])
