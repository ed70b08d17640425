"""Measurement: where a connect storm spends its time. SCRAM-SHA-256 verifiers of 4096 PBKDF2
iterations against lower counts, through a PgBouncer rendered by the kit and direct, with the
CPU of the client, PgBouncer and Postgres."""

from __future__ import annotations

from typing import Any

from poolkit.bench import bursts
from poolkit.bench.context import Bench
from poolkit.bench.medians import median_run
from poolkit.bench.pgbench import PgbenchRun
from poolkit.bench.settings import LOW_ITERATIONS


def measure(bench: Bench) -> dict[str, Any]:
    """``{"pooled": {n: medians}, "direct": {n: medians}, "burst": low-iteration burst}``."""
    s = bench.settings
    pooled: dict[int, list[PgbenchRun]] = {n: [] for n in s.scram_iterations}
    direct: dict[int, list[PgbenchRun]] = {n: [] for n in s.scram_iterations}
    for rep in range(s.repeats):
        for iterations in s.scram_iterations:
            bouncer = bench.start_kit(iterations)
            try:
                url = bench.migrator_url(bouncer.port)
                run = bench.pgbench(url, f"kit-{iterations}", connect_each=True,
                                    bouncer_pids=bouncer.pids)
                pooled[iterations].append(run)
                run_direct = bench.pgbench(bench.direct, f"direct-{iterations}",
                                           connect_each=True)
                direct[iterations].append(run_direct)
            finally:
                bench.scratch.stop(bouncer)
            bench.say(f"SCRAM {iterations:>4} iterations run {rep + 1}/{s.repeats}: pooled "
                      f"{run.summary()}, direct {run_direct.summary()}")  # fmt: skip
    low = LOW_ITERATIONS if LOW_ITERATIONS in s.scram_iterations else min(s.scram_iterations)
    return {
        "pooled": {str(n): median_run(runs) for n, runs in pooled.items()},
        "direct": {str(n): median_run(runs) for n, runs in direct.items()},
        "burst": bursts.with_iterations(bench, low),
    }
