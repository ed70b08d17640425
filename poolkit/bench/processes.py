"""Measurement: the pooler as 1, 2 and 3 PgBouncer processes sharing one port (issue 14's
``poolkit:pgbouncer.processes``), persistent (``-S``) and connect storm (``-C -S``), each beside
direct, interleaved run by run so every arm sees the same machine."""

from __future__ import annotations

from typing import Any

from poolkit.bench.context import Bench
from poolkit.bench.medians import median_run
from poolkit.bench.pgbench import PgbenchRun
from poolkit.bench.settings import LOW_ITERATIONS

MODES = {"persistent": False, "connect_storm": True}
"""Result key -> pgbench ``-C`` (a new connection per transaction)."""


def measure(bench: Bench) -> dict[str, Any]:
    """``{mode: {"direct": medians, "1": medians, "2": …}}`` for each mode of ``MODES``."""
    s = bench.settings
    runs: dict[str, dict[str, list[PgbenchRun]]] = {
        mode: {arm: [] for arm in ("direct", *map(str, s.pooler_processes))} for mode in MODES
    }
    for rep in range(s.repeats):
        for mode, connect_each in MODES.items():
            bench.verifier_for("direct")
            run = bench.pgbench(bench.direct, f"{mode}-direct", connect_each=connect_each)
            runs[mode]["direct"].append(run)
            bench.say(f"{mode} direct run {rep + 1}/{s.repeats}: {run.summary()}")
        for processes in s.pooler_processes:
            bouncer = bench.start_kit(LOW_ITERATIONS, processes)  # the count the kit ships
            try:
                for mode, connect_each in MODES.items():
                    run = bench.pgbench(bench.migrator_url(bouncer.port),
                                        f"{mode}-x{processes}", connect_each=connect_each,
                                        bouncer_pids=bouncer.pids)  # fmt: skip
                    runs[mode][str(processes)].append(run)
                    bench.say(f"{mode} through {processes} PgBouncer process(es) run "
                              f"{rep + 1}/{s.repeats}: {run.summary()}")  # fmt: skip
            finally:
                bench.scratch.stop(bouncer)
    return {mode: {arm: median_run(r) for arm, r in by_arm.items()}
            for mode, by_arm in runs.items()}  # fmt: skip
