"""Measurement: the burst simulator (``poolkit.burst``) direct / pooled / naive, and the pooled
burst again through the kit's config with low-iteration verifiers."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from poolkit import burst
from poolkit.bench.context import Bench
from poolkit.bench.medians import median_burst
from poolkit.bench.scratch import Scratch
from poolkit.urls import postgres_url


def measure(bench: Bench, naive: Scratch) -> dict[str, Any]:
    """``{arm: medians}`` for direct, pooled and naive."""
    repeats = bench.settings.repeats
    spec = dataclasses.replace(bench.settings.burst, prepare=burst.prepare_from_env(bench.env))
    stats = bench.env.get("PGBOUNCER_STATS_URL")
    arms = {
        "direct": burst.Urls(target=bench.direct, direct=bench.direct),
        "pooled": burst.Urls(target=bench.pooled, direct=bench.direct, stats=stats),
        "naive": burst.Urls(target=bench.migrator_url(naive.port), direct=bench.direct,
                            stats=bench.migrator_url(naive.port, "pgbouncer")),
    }  # fmt: skip
    results: dict[str, list[burst.BurstResult]] = {arm: [] for arm in arms}
    for rep in range(repeats):
        for arm, urls in arms.items():
            bench.verifier_for(arm)
            result = burst.run_burst(urls, spec, label=arm)
            results[arm].append(result)
            bench.say(f"burst {spec.instances}+{spec.zombies} {arm:<7} run {rep + 1}/"
                      f"{repeats}: {result.ok} ok, {result.error_total} errors, p99 "
                      f"{result.latency_ms['p99']} ms, peak backends "
                      f"{result.peak_backends}")  # fmt: skip
            settle()
    return {arm: median_burst(runs) for arm, runs in results.items()}


def with_iterations(bench: Bench, iterations: int) -> dict[str, Any]:
    """The pooled burst again, through the kit's config with verifiers of ``iterations``."""
    repeats = bench.settings.repeats
    spec = dataclasses.replace(bench.settings.burst, prepare=burst.prepare_from_env(bench.env))
    stats = bench.secrets.pgbouncer_stats
    runs = []
    for rep in range(repeats):
        bouncer = bench.start_kit(iterations)
        try:
            urls = burst.Urls(
                target=bench.migrator_url(bouncer.port), direct=bench.direct,
                stats=postgres_url(stats.user, stats.password, "127.0.0.1", bouncer.port,
                                   "pgbouncer"),
            )  # fmt: skip
            result = burst.run_burst(urls, spec, label=f"pooled-{iterations}")
        finally:
            bench.scratch.stop(bouncer)
        runs.append(result)
        bench.say(f"burst pooled, {iterations} iterations run {rep + 1}/{repeats}: "
                  f"{result.ok} ok, {result.error_total} errors, p99 "
                  f"{result.latency_ms['p99']} ms")  # fmt: skip
        settle()
    return {"iterations": iterations, **median_burst(runs)}


def settle(seconds: float = 0.5) -> None:
    """Let closed connections' backends exit before the next arm samples pg_stat_activity."""
    time.sleep(seconds)
