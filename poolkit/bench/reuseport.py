"""Measurement: the multi-core lever. A connect storm through P PgBouncer processes that share
one port (``so_reuseport``), beside the single process of the SCRAM measurement."""

from __future__ import annotations

from typing import Any

from poolkit.bench.context import Bench
from poolkit.bench.medians import median_run
from poolkit.bench.pgbench import PgbenchRun


def measure(bench: Bench, scram: dict[str, Any]) -> dict[str, Any]:
    """``{iterations: {processes: medians}}``; "1" is the SCRAM measurement's single process."""
    s = bench.settings
    out: dict[str, Any] = {}
    for iterations in s.reuseport_iterations:
        runs: dict[int, list[PgbenchRun]] = {p: [] for p in s.reuseport_processes}
        for rep in range(s.repeats):
            for processes in s.reuseport_processes:
                bouncer = bench.start_kit(iterations, processes)
                try:
                    run = bench.pgbench(bench.migrator_url(bouncer.port),
                                        f"reuseport-{iterations}-x{processes}",
                                        connect_each=True, bouncer_pids=bouncer.pids)
                finally:
                    bench.scratch.stop(bouncer)
                runs[processes].append(run)
                bench.say(f"so_reuseport x{processes}, {iterations} iterations run "
                          f"{rep + 1}/{s.repeats}: {run.summary()}")  # fmt: skip
        by_processes = {str(p): median_run(r) for p, r in runs.items()}
        single = scram["pooled"].get(str(iterations))
        if single is not None:
            by_processes = {"1": single, **by_processes}
        out[str(iterations)] = by_processes
    return out
