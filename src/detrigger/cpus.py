"""The CPUs this process is given, and torch's thread count from them (set before torch is imported)."""

from __future__ import annotations

import math
import os

from detrigger.errors import DetriggerError

CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def cpus_given() -> int:
    """The CPUs this process may run on: its affinity mask (`taskset`, a Slurm or Ray allocation), capped by a
    cgroup v2 CPU quota (`docker --cpus`, Kubernetes limits), which the mask does not show."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open(CGROUP_CPU_MAX, encoding="utf-8") as limits:
            quota, period = limits.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def thread_env(threads: int | None) -> None:
    """Set OMP_NUM_THREADS, which torch reads when it is imported, to `threads`, else leave the user's value,
    else the CPUs given. More threads than CPUs make torch's spinning workers fight over the cores
    (benchmarks/concurrent_jobs.py)."""
    if threads is not None and threads < 1:
        raise DetriggerError(f"--threads must be at least 1, got {threads}")
    if threads is not None or "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(threads or cpus_given())
