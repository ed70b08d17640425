"""Pure parts of the burst simulator and the bench: classification, parsing, ratios, plot."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from poolkit import bench, burst
from poolkit.config import parse_stack
from poolkit.sizing import plan
from poolkit.urls import postgres_url

pytestmark = pytest.mark.unit

PGBENCH_C_OUTPUT = """\
pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: simple
number of clients: 32
number of threads: 2
maximum number of tries: 1
duration: 4 s
number of transactions actually processed: 1095
number of failed transactions: 0 (0.000%)
latency average = 115.611 ms
average connection time = 3.470 ms
tps = 276.789013 (including reconnection times)
"""


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (psycopg.OperationalError('connection failed: FATAL:  sorry, too many clients already'),
         burst.TOO_MANY),
        (psycopg.OperationalError("FATAL:  remaining connection slots are reserved for "
                                  "non-replication superuser connections"), burst.TOO_MANY),
        (psycopg.OperationalError("FATAL:  no more connections allowed (max_client_conn)"),
         burst.TOO_MANY),
        (psycopg.OperationalError("server closed the connection: ERROR: query_wait_timeout"),
         burst.WAIT_TIMEOUT),
        (psycopg.OperationalError("connection failed: timeout expired"), burst.TIMEOUT),
        (TimeoutError(), burst.TIMEOUT),
        (psycopg.OperationalError("connection refused"), burst.OTHER),
    ],
    ids=["pg-too-many", "pg-reserved-slots", "pgbouncer-max-client-conn", "query-wait-timeout",
         "libpq-connect-timeout", "deadline", "refused"],
)  # fmt: skip
def test_classify_sorts_errors_by_kind(error: BaseException, kind: str) -> None:
    assert burst.classify(error) == kind


@pytest.mark.parametrize(
    "url",
    ["postgresql://app:pw@10.1.2.3:6432/app", "postgresql://app:pw@db.example.com/app",
     "postgresql://app:pw@127.0.0.1,10.0.0.1/app", "postgresql:///app"],
    ids=["private-ip", "hostname", "second-host", "unix-socket-default"],
)  # fmt: skip
def test_burst_refuses_urls_off_loopback(url: str) -> None:
    with pytest.raises(burst.BurstInputError, match=r"127\.0\.0\.1"):
        burst.Urls(target=url).check()


def test_burst_spec_rejects_unbounded_runs() -> None:
    with pytest.raises(burst.BurstInputError) as raised:
        burst.BurstSpec(instances=0, duration_s=0, zombies=-1, workers=99).check()
    for part in ("instances", "zombies", "duration", "workers"):
        assert part in str(raised.value)


def test_percentiles_use_nearest_rank() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert burst.percentiles(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert burst.percentiles([]) == {"p50": None, "p95": None, "p99": None, "max": None}


def test_parse_pgbench_reads_summary() -> None:
    figures = bench.parse_pgbench(PGBENCH_C_OUTPUT)
    assert figures == {"tps": 276.789013, "latency_ms": 115.611, "transactions": 1095,
                       "failed": 0, "aborted": False}  # fmt: skip


def test_pgbench_gets_the_password_only_through_its_environment() -> None:
    password = "s3cret:/@?#% x"
    url = postgres_url("app", password, "127.0.0.1", 6432, "app")
    argv, env = bench.client_env(url)
    assert argv == ["-h", "127.0.0.1", "-p", "6432", "-U", "app", "app"]
    assert all(password not in arg for arg in argv)
    assert env["PGPASSWORD"] == password


def _synthetic_results(pooled_storm: float, naive_storm: float) -> dict:
    def storm(tps: float) -> dict:
        return {"tps": tps, "latency_ms": 32 / tps * 1000, "errors": [], "runs": []}

    def burst_arm(ok: int, errors: int, p99: float, backends: int) -> dict:
        kinds = dict.fromkeys(burst.ERROR_KINDS, 0) | {burst.TOO_MANY: errors}
        return {"ok": ok, "throughput": ok / 10, "errors": errors, "errors_by_kind": kinds,
                "p50_ms": 1.0, "p95_ms": p99 / 2, "p99_ms": p99, "connect_p99_ms": p99,
                "warm_p99_ms": 2.0,
                "peak_backends": backends, "peak_backends_of_user": backends,
                "peak_clients": None, "peak_servers": None,
                "runs": [{"peak_backends_of_user": backends}]}  # fmt: skip

    return {
        "connect_storm": {"direct": storm(200), "pooled": storm(pooled_storm),
                          "naive": storm(naive_storm)},
        "persistent": {"direct": storm(20000), "pooled": storm(19000)},
        "burst": {"direct": burst_arm(100, 900, 400, 96), "pooled": burst_arm(9000, 0, 900, 5),
                  "naive": burst_arm(300, 5000, 200, 4)},
        "scram": {"pooled": {"4096": storm(300), "256": storm(2000)},
                  "direct": {"4096": storm(160), "256": storm(250)},
                  "burst": {"iterations": 256, **burst_arm(9500, 0, 300, 5)}},
        "reuseport": {"256": {"1": storm(2000), "2": storm(2100)}},
        "processes": {"persistent": {"direct": storm(20000), "1": storm(15000),
                                     "2": storm(19000)},
                      "connect_storm": {"direct": storm(200), "1": storm(1700),
                                        "2": storm(2600)}},
        "meta": {"quick": True, "repeats": 1, "postgres": "15", "pgbouncer": "1.18.0",
                 "machine": {"cpus": 2}, "date": "today",
                 "burst": {"instances": 1000, "zombies": 100, "duration_s": 10.0}},
    }  # fmt: skip


def _bench_plan():
    return plan(parse_stack({"poolkit:pgbouncer": {"default_pool_size": 5,
                                                   "reserve_pool_size": 2}}, "bench"))


def test_summary_reports_each_goal_with_its_figure() -> None:
    results = _synthetic_results(pooled_storm=1700, naive_storm=300)
    summary = bench.summarise(results, _bench_plan(), "app")
    assert summary["ratios"]["connect_storm_pooled_vs_direct"] == 8.5
    assert summary["ratios"]["connect_storm_pooled_vs_naive"] == 5.67
    assert summary["ratios"]["persistent_pooled_vs_direct"] == 0.95
    assert summary["ratios"]["connect_storm_256_iterations_vs_4096"] == 6.67
    met = {goal["goal"]: goal["met"] for goal in summary["goals"]}
    processes = {g: m for g, m in met.items() if "PgBouncer process" in g}
    assert processes == {"persistent: 1 PgBouncer process(es) >= 0.9x direct tps": False,
                         "persistent: 2 PgBouncer process(es) >= 0.9x direct tps": True,
                         "connect_storm: 1 PgBouncer process(es) >= 8.0x direct tps": True,
                         "connect_storm: 2 PgBouncer process(es) >= 8.0x direct tps": True}
    assert summary["ratios"]["persistent_2_processes_vs_direct"] == 0.95
    assert all(m for g, m in met.items() if g not in processes), met


def test_summary_marks_missed_goals() -> None:
    results = _synthetic_results(pooled_storm=400, naive_storm=380)
    results["burst"]["pooled"]["runs"] = [{"peak_backends_of_user": 12}]
    met = {goal["goal"]: goal["met"] for goal in bench.summarise(results, _bench_plan(),
                                                                 "app")["goals"]}  # fmt: skip
    assert not met["connect storm: pooled >= 8x direct tps"]
    assert not met["connect storm: pooled >= 4x naive tps"]
    assert not met["burst: pooled backends of app <= pool + reserve (7)"]
    assert met["burst: direct shows the failure (errors > 0)"]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (the test extra)")
    from poolkit.plot import plot_results

    target = tmp_path / "results.png"
    results = json.loads(json.dumps(_synthetic_results(1700, 300)))
    assert plot_results(results, target) == str(target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert target.stat().st_size > 20_000


def test_tls_bench_plain_arm_drops_only_the_tls_parameters() -> None:
    from poolkit.bench import tls as bench_tls

    url = "postgresql://app:pw@127.0.0.2:6432/app?sslmode=verify-full&sslrootcert=%2Fca.crt"
    assert bench_tls.plain_url(url) == "postgresql://app:pw@127.0.0.2:6432/app?sslmode=disable"
    figures = {"median_ms": 2.0, "p95_ms": 3.0, "client_cpu_ms": 1.0, "connects_per_s": 400.0}
    results = {"arms": {"plain": figures, "tls": {**figures, "median_ms": 3.0}},
               "tls_over_plain_median": 1.5, "tls_added_ms_median": 1.0,
               "tls_over_plain_client_cpu": 1.0}  # fmt: skip
    assert bench_tls.report(results)[-1] == (
        "tls / plain: 1.5x per connect (+1.0 ms), client CPU 1.0x")
