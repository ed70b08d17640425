"""Where the CPU went during a run: the client, PgBouncer, Postgres, the whole machine.

All figures are CPU seconds since the process (or the machine) started; a run's share is the
difference of two readings. Read with psutil.
"""

from __future__ import annotations

import contextlib
import resource
import time

import psutil


def process_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of running processes (0 for those gone)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def postgres_cpu(postmaster: int | None) -> float:
    """CPU seconds of a Postgres server: the postmaster, its reaped children (backends that
    exited) and its live children. The difference over a run is the server's share."""
    if postmaster is None:
        return 0.0
    total = 0.0
    with contextlib.suppress(psutil.Error):
        server = psutil.Process(postmaster)
        times = server.cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
        for child in server.children():
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                total += times.user + times.system
    return total


def settled_postgres_cpu(postmaster: int | None, limit_s: float = 2.0) -> float:
    """``postgres_cpu`` once exiting backends are reaped (their CPU then moves to the
    postmaster's children total): read until two readings agree, at most ``limit_s``."""
    last = postgres_cpu(postmaster)
    deadline = time.monotonic() + limit_s
    while postmaster is not None and time.monotonic() < deadline:
        time.sleep(0.1)
        now = postgres_cpu(postmaster)
        if now == last:
            break
        last = now
    return last


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores, idle and iowait left out)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - times.iowait - times.guest - times.guest_nice


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (pgbench)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
