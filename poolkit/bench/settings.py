"""What the bench measures with: sizes, durations, ports, the goals, and its error."""

from __future__ import annotations

from dataclasses import dataclass

from poolkit import burst

PGBENCH_CLIENTS = 32
PGBENCH_THREADS = 2
PGBENCH_SCALE = 10
PGBENCH_GRACE_S = 60.0
"""A pgbench run may take this much longer than its -T before it is killed."""
STOCK_ITERATIONS = 4096
BOUNCER_START_S = 10.0
NAIVE_PORT_OFFSET = 2
SCRATCH_PORT_OFFSET = 3
"""The naive and the experimental PgBouncers listen on the stack's PgBouncer port + these."""
NAIVE_POOL_SIZE = 20
NAIVE_MAX_CLIENT_CONN = 100
"""PgBouncer's stock pool sizes, which the naive baseline keeps."""
BURST_ZOMBIES = 100
LOW_ITERATIONS = 256
"""The iteration count proposed for generated passwords; the burst is repeated with it."""
CPU_PARTS = ("client", "pgbouncer", "postgres", "other")

GOALS = {
    "connect_storm_vs_direct": 8.0,
    "connect_storm_vs_naive": 4.0,
    "persistent_vs_direct": 0.9,
    "burst_p99_ms": 2000.0,
}


class BenchError(RuntimeError):
    """A step of the bench failed; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    """How long and how often each measurement runs."""

    quick: bool
    repeats: int
    pgbench_seconds: int
    burst: burst.BurstSpec
    scram_iterations: tuple[int, ...]
    reuseport_processes: tuple[int, ...]
    reuseport_iterations: tuple[int, ...]
    pooler_processes: tuple[int, ...]
    """PgBouncer process counts of the processes measurement (empty: skipped)."""

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, 1, 2, burst.BurstSpec(instances=1000, zombies=BURST_ZOMBIES,
                                                   duration_s=3.0, ramp_s=1.0),
                       (STOCK_ITERATIONS, LOW_ITERATIONS), (), (), ())  # fmt: skip
        return cls(False, 3, 10, burst.BurstSpec(instances=1000, zombies=BURST_ZOMBIES,
                                                 duration_s=10.0, ramp_s=1.0),
                   (STOCK_ITERATIONS, 1024, LOW_ITERATIONS, 64), (2, 3),
                   (STOCK_ITERATIONS, LOW_ITERATIONS), (1, 2, 3))  # fmt: skip
