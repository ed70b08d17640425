"""The burst simulator and the bench plumbing against a real local stack (tight limits).

The stack allows 20 Postgres connections and a pool of 3 + 1, so a burst of 60 instances
shows the direct failure and the pooled cure within seconds.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from poolkit import bench, burst, local
from poolkit import secrets as stack_secrets
from poolkit.config import load_stack
from poolkit.sizing import plan
from tests.conftest import LocalStack, free_ports, local_stack_running, make_base_dir, run_cli

pytestmark = pytest.mark.integration

MAX_CONNECTIONS = 20
POOL, RESERVE = 3, 1
SPEC = burst.BurstSpec(instances=60, zombies=10, duration_s=2.0, ramp_s=0.3, think_s=0.1,
                       workers=1)  # fmt: skip


@pytest.fixture(scope="module")
def tight_stack() -> Iterator[LocalStack]:
    with local_stack_running(
        "poolkit-bench-", "benchtest", with_apps=False,
        postgres={"max_connections": MAX_CONNECTIONS},
        pgbouncer={"default_pool_size": POOL, "reserve_pool_size": RESERVE},
    ) as stack:  # fmt: skip
        yield stack


def test_pooled_burst_has_no_errors_and_backends_within_the_pool(tight_stack: LocalStack) -> None:
    result = burst.run_from_env_file(tight_stack.env_file, "pooled", SPEC)
    assert result.error_total == 0, result.lines()
    assert result.zombies_connected == SPEC.zombies
    assert result.cold_starts == SPEC.instances + SPEC.zombies
    assert result.ok > SPEC.instances + SPEC.zombies, "instances served warm invocations too"
    assert result.peak_backends_of_user is not None
    assert 1 <= result.peak_backends_of_user <= POOL + RESERVE, result.lines()
    assert result.peak_clients is not None and result.peak_clients >= SPEC.instances
    assert result.latency_ms["p99"] is not None
    assert result.warm_latency_ms["p50"] is not None
    assert result.warm_latency_ms["p50"] <= result.latency_ms["max"]


def test_direct_burst_runs_out_of_connection_slots(tight_stack: LocalStack) -> None:
    result = burst.run_from_env_file(tight_stack.env_file, "direct", SPEC)
    assert result.errors[burst.TOO_MANY] > 0, result.lines()
    assert result.ok > 0
    # 20 slots - 3 superuser-reserved - the sampler's own connection.
    assert result.peak_backends_of_user is not None
    assert result.peak_backends_of_user <= MAX_CONNECTIONS - 3 - 1
    assert result.peak_clients is None, "the direct target has no PgBouncer to sample"
    example = result.error_examples[burst.TOO_MANY]
    assert "too many clients" in example or "reserved" in example
    assert "password" not in example.lower()


def test_burst_stops_at_its_invocation_budget(tight_stack: LocalStack) -> None:
    spec = dataclasses.replace(SPEC, zombies=0, invocations=50, duration_s=30.0)
    started = time.monotonic()
    result = burst.run_from_env_file(tight_stack.env_file, "pooled", spec)
    assert result.invocations == 50
    assert result.ok == 50
    assert time.monotonic() - started < 15


def test_burst_spreads_instances_over_worker_processes(tight_stack: LocalStack) -> None:
    spec = dataclasses.replace(SPEC, zombies=0, workers=2)
    result = burst.run_from_env_file(tight_stack.env_file, "pooled", spec)
    assert result.workers == 2
    assert result.error_total == 0, result.lines()
    assert result.cold_starts == SPEC.instances
    assert result.seconds <= spec.duration_s


def test_cli_burst_reports_json_without_passwords(tight_stack: LocalStack) -> None:
    done = run_cli("burst", "--url-env-file", str(tight_stack.env_file), "--target", "direct",
                   "--instances", "40", "--duration", "1.5", "--workers", "1", "--json")
    report = json.loads(done.stdout)
    assert report["errors"][burst.TOO_MANY] > 0
    assert report["endpoint"].startswith("migrator@127.0.0.1:")
    password = psycopg.conninfo.conninfo_to_dict(tight_stack.env()["DIRECT_URL"])["password"]
    assert password not in done.stdout + done.stderr


def test_cli_burst_refuses_duration_and_invocations_together(tight_stack: LocalStack) -> None:
    done = run_cli("burst", "--url-env-file", str(tight_stack.env_file), "--target", "pooled",
                   "--duration", "1", "--invocations", "5", check=False)
    assert done.returncode == 2
    assert "not both" in done.stderr


# --- bench plumbing: pgbench, the naive and the experimental PgBouncers ----------------------


@pytest.fixture
def bench_parts(tight_stack: LocalStack) -> Iterator[bench.Bench]:
    tools = local.detect_tools()
    stack = load_stack(tight_stack.stack_file)
    stack = dataclasses.replace(stack, pgbouncer=dataclasses.replace(
        stack.pgbouncer, version=tools.pgbouncer_version))  # fmt: skip
    credentials = stack_secrets.load(tight_stack.state_dir / "secrets.json")
    assert credentials is not None
    user = local.service_user()
    root = make_base_dir("poolkit-bench-scratch-")
    taken: set[int] = set()
    parts = bench.Bench(
        stack=stack, plan=plan(stack), env=tight_stack.env(), secrets=credentials,
        settings=bench.Settings.make(quick=True), pgbench_binary=tools.pgbin / "pgbench",
        bouncer_pid=lambda: [tight_stack.pgbouncer_pid()], postmaster=tight_stack.postmaster_pid,
        scratch=bench.ScratchBouncers(root, tools.pgbouncer, user), superuser=user.name,
        say=lambda line: None, naive_port=free_ports(1, taken), scratch_port=free_ports(1, taken),
    )  # fmt: skip
    bench.pgbench_init(parts.pgbench_binary, parts.direct, scale=1)
    try:
        yield parts
    finally:
        parts.scratch.stop_all()
        bench.set_verifier(parts.direct, credentials.migrator)
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_pgbench_connect_storm_through_the_kits_pgbouncer(bench_parts: bench.Bench) -> None:
    run = bench.pgbench(bench_parts.pgbench_binary, bench_parts.pooled, "pooled",
                        connect_each=True, seconds=1, bouncer_pids=bench_parts.bouncer_pid(),
                        postmaster=bench_parts.postmaster())  # fmt: skip
    assert run.error == "", run
    assert run.tps and run.tps > 0
    assert run.transactions > 0 and run.failed == 0
    assert run.client_cpu_s > 0, "pgbench's CPU (SCRAM in libpq) is accounted"
    assert run.bouncer_cpu_s > 0, "PgBouncer's CPU is accounted"


def test_direct_connect_storm_accounts_postgres_backends_cpu(bench_parts: bench.Bench) -> None:
    """Each connection forks a backend that exits: its CPU shows up in the postmaster's."""
    run = bench.pgbench(bench_parts.pgbench_binary, bench_parts.direct, "direct",
                        connect_each=True, seconds=1, postmaster=bench_parts.postmaster(),
                        clients=8)  # fmt: skip
    assert run.error == "" and run.transactions > 0, run
    assert run.postgres_cpu_s > 0.05, run
    assert run.per_transaction_ms()["postgres"] > 0.1, run.per_transaction_ms()


def test_naive_pgbouncer_serves_and_stops(bench_parts: bench.Bench) -> None:
    naive = bench_parts.start_naive()
    ini = (bench_parts.scratch.root / "naive" / "0.ini").read_text()
    assert "default_pool_size = 20" in ini and "max_client_conn = 100" in ini
    run = bench.pgbench(bench_parts.pgbench_binary, bench_parts.migrator_url(naive.port),
                        "naive", connect_each=True, seconds=1, bouncer_pids=naive.pids)
    assert run.error == "" and run.transactions > 0, run
    bench_parts.scratch.stop(naive)
    assert not local.port_listening(naive.port)
    assert all(p.poll() is not None for p in naive.processes)


def test_low_iteration_verifier_logs_in_through_two_reuseport_processes(
    bench_parts: bench.Bench,
) -> None:
    kit = bench_parts.start_kit(256, processes=2)
    assert len(kit.pids) == 2 and all(p.poll() is None for p in kit.processes)
    ini = (bench_parts.scratch.root / "kit-256-x2" / "1.ini").read_text()
    assert "so_reuseport = 1" in ini and f"listen_port = {kit.port}" in ini
    # The kit's own rendered settings, split as the kit splits them: budget 3 + 1 over 2
    # processes = 2 each, pool round(2 x 3/4) = 2, no reserve.
    assert "default_pool_size = 2" in ini and "max_db_connections = 2" in ini, ini
    run = bench.pgbench(bench_parts.pgbench_binary, bench_parts.migrator_url(kit.port),
                        "kit", connect_each=True, seconds=1, bouncer_pids=kit.pids)
    assert run.error == "" and run.transactions > 0, run
    with psycopg.connect(bench_parts.direct, connect_timeout=5) as conn:
        row = conn.execute("SELECT current_user").fetchone()
    assert row == (bench_parts.secrets.migrator.user,), "DIRECT_URL still logs in"


def test_restoring_the_migrator_makes_the_stacks_own_verifier_valid_again(
    bench_parts: bench.Bench,
) -> None:
    """PgBouncer logs in to Postgres with the client's SCRAM keys: only the exact verifier works."""
    original = bench_parts.secrets.migrator
    bench.set_verifier(bench_parts.direct, bench.migrator_with(bench_parts.direct, 64))
    kit = bench_parts.start_kit(original.iterations, credential=original)
    url = bench_parts.migrator_url(kit.port)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5, prepare_threshold=None).close()
    bench_parts.scratch.stop(kit)

    bench.set_verifier(bench_parts.direct, original)
    kit = bench_parts.start_kit(original.iterations, credential=original)
    with psycopg.connect(url, connect_timeout=5, prepare_threshold=None) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (original.user,)


def test_plot_module_is_optional(tmp_path: Path) -> None:
    """The bench writes results.json even where matplotlib is missing (plot returns None)."""
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    from poolkit.plot import plot_results

    builtins.__import__ = no_matplotlib
    try:
        assert plot_results({}, tmp_path / "x.png") is None
    finally:
        builtins.__import__ = real_import
