"""The bench's verdict: ratios pooled/direct and pooled/naive, each goal with its figure, and
the figures in a few lines for the terminal."""

from __future__ import annotations

from typing import Any

from poolkit.bench.medians import ratio
from poolkit.bench.settings import GOALS, LOW_ITERATIONS, STOCK_ITERATIONS
from poolkit.sizing import Plan


def summarise(results: dict[str, Any], the_plan: Plan, app_user: str) -> dict[str, Any]:
    """Ratios pooled/direct and pooled/naive, and each goal of issue 6 with its figure."""
    storm, steady, bursts = results["connect_storm"], results["persistent"], results["burst"]
    pool = the_plan.pool
    ratios = {
        "connect_storm_pooled_vs_direct": ratio(storm["pooled"]["tps"], storm["direct"]["tps"]),
        "connect_storm_pooled_vs_naive": ratio(storm["pooled"]["tps"], storm["naive"]["tps"]),
        "persistent_pooled_vs_direct": ratio(steady["pooled"]["tps"], steady["direct"]["tps"]),
        "burst_throughput_pooled_vs_direct": ratio(bursts["pooled"]["throughput"],
                                                   bursts["direct"]["throughput"]),
        "burst_throughput_pooled_vs_naive": ratio(bursts["pooled"]["throughput"],
                                                  bursts["naive"]["throughput"]),
    }  # fmt: skip
    scram = results.get("scram", {})
    if scram:
        pooled, direct = scram["pooled"], scram["direct"]
        low = LOW_ITERATIONS if str(LOW_ITERATIONS) in pooled else min(int(n) for n in pooled)
        ratios[f"connect_storm_{low}_iterations_vs_{STOCK_ITERATIONS}"] = ratio(
            pooled[str(low)]["tps"], pooled[str(STOCK_ITERATIONS)]["tps"])
        ratios[f"connect_storm_pooled_vs_direct_both_{low}_iterations"] = ratio(
            pooled[str(low)]["tps"], direct[str(low)]["tps"])
        ratios[f"connect_storm_pooled_{low}_iterations_vs_naive"] = ratio(
            pooled[str(low)]["tps"], storm["naive"]["tps"])  # fmt: skip
    server_peak = max((r["peak_backends_of_user"] for r in bursts["pooled"]["runs"]
                       if r["peak_backends_of_user"] is not None), default=None)  # fmt: skip
    direct_errors = bursts["direct"]["errors"]
    goals = [
        _goal("connect storm: pooled >= 8x direct tps",
              ratios["connect_storm_pooled_vs_direct"], GOALS["connect_storm_vs_direct"]),
        _goal("connect storm: pooled >= 4x naive tps",
              ratios["connect_storm_pooled_vs_naive"], GOALS["connect_storm_vs_naive"]),
        _goal("persistent: pooled >= 0.9x direct tps",
              ratios["persistent_pooled_vs_direct"], GOALS["persistent_vs_direct"]),
        {"goal": "burst: pooled 0 errors", "figure": bursts["pooled"]["errors"],
         "met": bursts["pooled"]["errors"] == 0},
        {"goal": f"burst: pooled backends of {app_user} <= pool + reserve "
                 f"({pool.server_connections})",
         "figure": server_peak,
         "met": server_peak is not None and server_peak <= pool.server_connections},
        {"goal": "burst: pooled p99 <= 2000 ms", "figure": bursts["pooled"]["p99_ms"],
         "met": (bursts["pooled"]["p99_ms"] or 1e9) <= GOALS["burst_p99_ms"]},
        {"goal": "burst: direct shows the failure (errors > 0)", "figure": direct_errors,
         "met": bool(direct_errors)},
    ]  # fmt: skip
    for mode, by_arm in results.get("processes", {}).items():
        floor = GOALS["persistent_vs_direct" if mode == "persistent" else "connect_storm_vs_direct"]
        for arm, figures in by_arm.items():
            if arm == "direct":
                continue
            name = f"{mode}_{arm}_processes_vs_direct"
            ratios[name] = ratio(figures["tps"], by_arm["direct"]["tps"])
            goals.append(_goal(f"{mode}: {arm} PgBouncer process(es) >= {floor}x direct tps",
                               ratios[name], floor))  # fmt: skip
    return {"ratios": ratios, "goals": goals}


def _goal(text: str, figure: float | None, floor: float) -> dict[str, Any]:
    return {"goal": text, "figure": figure, "met": figure is not None and figure >= floor}


def report_lines(results: dict[str, Any]) -> list[str]:
    """The figures in a few lines for the terminal."""
    storm, steady, bursts = results["connect_storm"], results["persistent"], results["burst"]
    lines = ["connect storm (pgbench -C -S, 32 clients): tps "
             + ", ".join(f"{arm} {storm[arm]['tps']}" for arm in storm),
             "persistent (pgbench -S, 32 clients): tps "
             + ", ".join(f"{arm} {steady[arm]['tps']}" for arm in steady)]  # fmt: skip
    for arm, figures in bursts.items():
        kinds = ", ".join(f"{k} {v:.0f}" for k, v in figures["errors_by_kind"].items() if v)
        lines.append(f"burst {arm}: {figures['ok']} ok ({figures['throughput']}/s), errors "
                     f"{figures['errors']}{f' ({kinds})' if kinds else ''}, p50 "
                     f"{figures['p50_ms']} p99 {figures['p99_ms']} ms (warm p99 "
                     f"{figures['warm_p99_ms']}, connect p99 {figures['connect_p99_ms']}), "
                     "peak backends of its role "
                     f"{figures['peak_backends_of_user']}, PgBouncer clients "
                     f"{figures['peak_clients']} servers {figures['peak_servers']}")  # fmt: skip
    scram = results.get("scram")
    if scram:
        low = scram["burst"]
        lines.append(f"burst pooled with {low['iterations']}-iteration verifiers: {low['ok']} "
                     f"ok, errors {low['errors']}, p50 {low['p50_ms']} p99 {low['p99_ms']} ms "
                     f"(warm p99 {low['warm_p99_ms']}, connect p99 {low['connect_p99_ms']})")
        for n, figures in scram["pooled"].items():
            cpu = figures["cpu_ms_per_transaction"]
            lines.append(f"SCRAM {n:>4} iterations: pooled {figures['tps']} tps (CPU ms per "
                         f"connect: client {cpu['client']}, PgBouncer {cpu['pgbouncer']}, "
                         f"Postgres {cpu['postgres']}, other processes {cpu['other']}); direct "
                         f"{scram['direct'][n]['tps']} tps")  # fmt: skip
    for n, by_processes in results.get("reuseport", {}).items():
        lines.append(f"so_reuseport at {n} iterations: "
                     + ", ".join(f"{p} process(es) {f['tps']} tps"
                                 for p, f in by_processes.items()))  # fmt: skip
    for mode, by_arm in results.get("processes", {}).items():
        direct = by_arm["direct"]["tps"]
        lines.append(f"{mode} through N PgBouncer processes (so_reuseport): direct {direct} tps, "
                     + ", ".join(f"{arm} process(es) {f['tps']} tps ({ratio(f['tps'], direct)}x, "
                                 f"PgBouncer CPU {f['cpu_ms_per_transaction']['pgbouncer']} ms/tx)"
                                 for arm, f in by_arm.items() if arm != "direct"))  # fmt: skip
    for name, value in results["summary"]["ratios"].items():
        lines.append(f"ratio {name}: {value}")
    for goal in results["summary"]["goals"]:
        lines.append(f"{'MET ' if goal['met'] else 'MISS'} {goal['goal']}: {goal['figure']}")
    return lines
