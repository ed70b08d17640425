"""Measurement: pgbench connect storm (``-C -S``: direct / pooled / naive) and persistent
connections (``-S``: direct / pooled), interleaved run by run."""

from __future__ import annotations

from typing import Any

from poolkit.bench.context import Bench
from poolkit.bench.medians import median_run
from poolkit.bench.pgbench import PgbenchRun
from poolkit.bench.scratch import Scratch


def measure(bench: Bench, naive: Scratch) -> dict[str, Any]:
    """``{"connect_storm": {arm: medians}, "persistent": {arm: medians}}``."""
    repeats = bench.settings.repeats
    naive_url = bench.migrator_url(naive.port)
    storm: dict[str, list[PgbenchRun]] = {"direct": [], "pooled": [], "naive": []}
    persistent: dict[str, list[PgbenchRun]] = {"direct": [], "pooled": []}
    for rep in range(repeats):
        for arm, url, pids in (("direct", bench.direct, []),
                               ("pooled", bench.pooled, bench.bouncer_pid()),
                               ("naive", naive_url, naive.pids)):  # fmt: skip
            bench.verifier_for(arm)
            run = bench.pgbench(url, arm, connect_each=True, bouncer_pids=pids)
            storm[arm].append(run)
            bench.say(f"pgbench -C -S {arm:<7} run {rep + 1}/{repeats}: {run.summary()}")
        for arm, url, pids in (("direct", bench.direct, []),
                               ("pooled", bench.pooled, bench.bouncer_pid())):  # fmt: skip
            bench.verifier_for(arm)
            run = bench.pgbench(url, arm, connect_each=False, bouncer_pids=pids)
            persistent[arm].append(run)
            bench.say(f"pgbench -S    {arm:<7} run {rep + 1}/{repeats}: {run.summary()}")
    return {
        "connect_storm": {arm: median_run(runs) for arm, runs in storm.items()},
        "persistent": {arm: median_run(runs) for arm, runs in persistent.items()},
    }
