"""Medians over repeated runs (interleaved, so drift hits every arm alike) and their ratios."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from typing import Any

from poolkit import burst
from poolkit.bench.pgbench import PgbenchRun
from poolkit.bench.settings import CPU_PARTS


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def median_run(runs: list[PgbenchRun]) -> dict[str, Any]:
    """The median tps, latency and CPU per transaction of the runs without an error."""
    good = [r for r in runs if r.tps is not None and not r.error]
    per_tx = [r.per_transaction_ms() for r in good]
    return {
        "tps": median([r.tps for r in good if r.tps is not None]),
        "latency_ms": median([r.latency_ms for r in good if r.latency_ms is not None]),
        "cpu_ms_per_transaction": {
            key: median([p[key] for p in per_tx if p[key] is not None])
            for key in CPU_PARTS
        },
        "errors": [r.error for r in runs if r.error],
        "runs": [dataclasses.asdict(r) for r in runs],
    }


def median_burst(runs: list[burst.BurstResult]) -> dict[str, Any]:
    """The median of each burst figure."""

    def med(get: Callable[[burst.BurstResult], float | int | None]) -> float | None:
        return median([float(v) for r in runs if (v := get(r)) is not None])

    return {
        "ok": med(lambda r: r.ok),
        "throughput": med(lambda r: r.throughput),
        "errors": med(lambda r: r.error_total),
        "errors_by_kind": {k: med(lambda r, k=k: r.errors[k]) for k in burst.ERROR_KINDS},
        "p50_ms": med(lambda r: r.latency_ms["p50"]),
        "p95_ms": med(lambda r: r.latency_ms["p95"]),
        "p99_ms": med(lambda r: r.latency_ms["p99"]),
        "warm_p99_ms": med(lambda r: r.warm_latency_ms["p99"]),
        "connect_p99_ms": med(lambda r: r.connect_ms["p99"]),
        "peak_backends": med(lambda r: r.peak_backends),
        "peak_backends_of_user": med(lambda r: r.peak_backends_of_user),
        "peak_clients": med(lambda r: r.peak_clients),
        "peak_servers": med(lambda r: r.peak_servers),
        "runs": [r.as_dict() for r in runs],
    }
