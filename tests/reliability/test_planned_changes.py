"""Planned changes under load drop no client: a Postgres restart behind PAUSE/RESUME, a pool
resize by RELOAD. The load never retries, so any error it sees is a dropped client.

The tests share one stack of their own (module scope) and run in order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from poolkit import console
from poolkit.local import Host, Paths, Postgres, service_user
from tests.conftest import (
    LocalStack,
    local_stack_running,
    run_cli,
    write_stack_file,
)
from tests.reliability.load import PlainLoad, create_table

pytestmark = pytest.mark.integration
CLIENTS = 8
RESIZED_POOL = 8
"""The plan's pool after the resize (from 5 at 2 CPUs; budget 10 over the default 2 processes):
each process's default_pool_size goes from 2 to 4, and the process count stays."""


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with local_stack_running("poolkit-planned-", "planned", with_apps=False) as stack:
        create_table(stack.env()["DIRECT_URL"], "ticks")
        yield stack


def _wait_count(load: PlainLoad, more: int, timeout: float = 15) -> None:
    target, deadline = load.count() + more, time.monotonic() + timeout
    while load.count() < target and not load.result.errors:
        assert time.monotonic() < deadline, f"load stalled at {load.count()} of {target}"
        time.sleep(0.01)


def _connected_clients(stack: LocalStack) -> set[str]:
    clients = stack.console_rows("CLIENTS")  # of every PgBouncer process
    return {c["application_name"] for c in clients if c["application_name"].startswith("plain-")}


def _max_connections(stack: LocalStack) -> str:
    with psycopg.connect(stack.env()["DIRECT_URL"]) as conn:
        return str(conn.execute("SHOW max_connections").fetchone()[0])


def test_restart_postgres_behind_pause_drops_no_client(stack: LocalStack) -> None:
    env, postmaster = stack.env(), stack.postmaster_pid()
    with PlainLoad(env["POOLED_DATABASE_URL"], "ticks", clients=CLIENTS) as load:
        _wait_count(load, 200)
        done = run_cli("maintenance", "restart-postgres", "--state-dir", str(stack.state_dir),
                       "--json")  # fmt: skip
        _wait_count(load, 200)
        assert _connected_clients(stack) == {f"plain-{i}" for i in range(CLIENTS)}
    report, summary = json.loads(done.stdout), load.result.summary()
    print(f"\nplanned restart: {report}; load {summary}")
    assert load.result.errors == [], load.result.errors[:3]
    assert stack.postmaster_pid() != postmaster, "Postgres was restarted"
    assert report["paused_s"] < report["query_wait_timeout_s"]
    # Added latency, bounded by the pause (plus a transaction of scheduling noise).
    assert summary["max_ms"] / 1000 < report["paused_s"] + 1.0


def test_pause_timeout_resumes_and_leaves_postgres_alone(stack: LocalStack) -> None:
    """A transaction longer than --pause-timeout: clear failure, RESUME, no restart."""
    env, postmaster = stack.env(), stack.postmaster_pid()
    with psycopg.connect(env["POOLED_DATABASE_URL"], prepare_threshold=None) as long_tx:
        long_tx.execute("SELECT 1")  # a transaction is open: it holds a server connection
        started = time.monotonic()
        done = run_cli("maintenance", "restart-postgres", "--state-dir", str(stack.state_dir),
                       "--pause-timeout", "1", check=False)  # fmt: skip
        took = time.monotonic() - started
        assert done.returncode == 1, done.stdout + done.stderr
        assert "PAUSE app did not complete within 1 s" in done.stderr
        assert "1 server connection(s) still inside a transaction" in done.stderr
        assert "Postgres was NOT restarted" in done.stderr and "Traceback" not in done.stderr
        assert console.databases(env["PGBOUNCER_STATS_URL"])["app"]["paused"] == 0
        with psycopg.connect(env["POOLED_DATABASE_URL"], prepare_threshold=None) as other:
            assert other.execute("SELECT 2").fetchone() == (2,), "RESUMEd: others are served"
        assert long_tx.execute("SELECT 3").fetchone() == (3,)
        long_tx.commit()
    assert stack.postmaster_pid() == postmaster
    assert took < 10


def test_pool_resize_by_up_reloads_with_clients_connected(stack: LocalStack) -> None:
    env = stack.env()
    pids = (stack.postmaster_pid(), stack.pgbouncer_pids())
    max_connections = _max_connections(stack)
    size = int(console.config(env["PGBOUNCER_STATS_URL"])["default_pool_size"])
    with PlainLoad(env["POOLED_DATABASE_URL"], "ticks", clients=CLIENTS) as load:
        _wait_count(load, 200)
        write_stack_file(stack.stack_file, postgres_port=stack.postgres_port,
                         pgbouncer_port=stack.pgbouncer_port,
                         pgbouncer={"default_pool_size": RESIZED_POOL})  # fmt: skip
        done = stack.poolkit("up", "--no-smoke")
        _wait_count(load, 200)
        assert _connected_clients(stack) == {f"plain-{i}" for i in range(CLIENTS)}
    print(f"\npool resize {size} -> 4 per process under load: {load.result.summary()}")
    assert "reloaded PgBouncer (default_pool_size" in done.stdout, done.stdout
    assert load.result.errors == [], load.result.errors[:3]
    per_process = [console.config(url)["default_pool_size"] for url in stack.console_urls()]
    assert (size, per_process) == (2, ["4", "4"])
    assert (stack.postmaster_pid(), stack.pgbouncer_pids()) == pids, "nothing restarted"
    assert _max_connections(stack) == max_connections, "max_connections (multiple of 25) held"


def test_up_restarting_postgres_pauses_pgbouncer_and_drops_no_client(stack: LocalStack) -> None:
    """A postmaster setting (shared_buffers, from memory) moved: `up` restarts behind PAUSE."""
    env, postmaster = stack.env(), stack.postmaster_pid()
    with PlainLoad(env["POOLED_DATABASE_URL"], "ticks", clients=CLIENTS) as load:
        _wait_count(load, 200)
        write_stack_file(stack.stack_file, postgres_port=stack.postgres_port,
                         pgbouncer_port=stack.pgbouncer_port, memory="768MiB",
                         pgbouncer={"default_pool_size": RESIZED_POOL})  # fmt: skip
        done = stack.poolkit("up", "--no-smoke")
        _wait_count(load, 200)
    print(f"\nup restarting Postgres (shared_buffers) under load: {load.result.summary()}")
    assert "restarted PostgreSQL (shared_buffers" in done.stdout, done.stdout
    assert "PAUSE" not in done.stdout, "no warning: the pause completed"
    assert stack.postmaster_pid() != postmaster
    assert load.result.errors == [], load.result.errors[:3]


def test_the_same_restart_without_pause_drops_clients(stack: LocalStack) -> None:
    """The control: PAUSE is what saves the clients above, not luck or an idle load."""
    env, paths = stack.env(), Paths(stack.state_dir)
    postgres = Postgres(Host(paths, Path(stack.state()["pgbin"]), service_user()))
    with PlainLoad(env["POOLED_DATABASE_URL"], "ticks", clients=CLIENTS) as load:
        _wait_count(load, 200)
        postgres.restart()
        deadline = time.monotonic() + 10
        while not load.result.errors and time.monotonic() < deadline:
            time.sleep(0.01)
    print(f"\nrestart without PAUSE: {load.result.summary()}")
    assert load.result.errors, "a restart under load without PAUSE should break clients"
