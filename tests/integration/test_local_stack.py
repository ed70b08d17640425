"""The local runner against real servers: the shared session stack, used read-only."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import stat
import time
import urllib.request

import psycopg
import pytest
from rich.console import Console

from poolkit import console, watch
from poolkit.local import Progress, Runner
from tests.conftest import LocalStack

pytestmark = pytest.mark.integration


def test_env_file_is_private_and_names_every_url(local_stack: LocalStack) -> None:
    mode = stat.S_IMODE(local_stack.env_file.stat().st_mode)
    env = local_stack.env()
    assert mode == 0o600
    assert env["POOLED_DATABASE_URL"].endswith(f"@127.0.0.1:{local_stack.pgbouncer_port}/app")
    assert env["DIRECT_URL"].endswith(f"@127.0.0.1:{local_stack.postgres_port}/app")
    assert env["PGBOUNCER_PREPARED_STATEMENTS"] == "on"  # PgBouncer >= 1.21 (scripts/bootstrap)


def test_smoke_passes_every_check(local_stack: LocalStack) -> None:
    done = local_stack.poolkit("smoke", "--env-file", str(local_stack.env_file), "--json")
    report = json.loads(done.stdout)
    names = [check["name"] for check in report["checks"]]
    failed = [check for check in report["checks"] if not check["ok"]]
    assert report["ok"], failed
    assert "pooled.burst" in names and "pooled.session_state" in names
    print(f"smoke: {report['seconds']} s")


def test_second_up_restarts_nothing(local_stack: LocalStack) -> None:
    """Idempotence: same postmaster, same PgBouncer, same app supervisors, data kept."""
    run = local_stack.state_dir / "run"
    before = (local_stack.postmaster_pid(), local_stack.pgbouncer_pids(),
              sorted(p.read_text() for p in run.glob("app-*.supervisor.pid")))  # fmt: skip
    started = time.monotonic()
    done = local_stack.poolkit("up", "--no-smoke")
    took = time.monotonic() - started
    after = (local_stack.postmaster_pid(), local_stack.pgbouncer_pids(),
             sorted(p.read_text() for p in run.glob("app-*.supervisor.pid")))  # fmt: skip
    assert "nothing to change" in done.stdout
    assert after == before
    print(f"warm up (no smoke): {took:.2f} s")


def test_status_shows_running_processes_as_the_server_user(local_stack: LocalStack) -> None:
    report = json.loads(local_stack.poolkit("status", "--json").stdout)
    components = {c["name"]: c for c in report["components"]}
    bouncers = {f"pgbouncer-{n}" for n in (1, 2)}  # 2 processes, the default from 2 CPUs
    assert set(components) == {"postgres", *bouncers, "app-orders-0", "app-orders-1",
                               "app-edge-0"}  # fmt: skip
    for component in components.values():
        assert component["running"] and component["listening"], component
        assert component["user"] == local_stack.server_user
    assert {components[name]["port"] for name in bouncers} == {local_stack.pgbouncer_port}
    assert [(p["process"], p["database"]) for p in report["pools"]] == [(1, "app"), (2, "app")]
    assert all("***@" in url for url in report["urls"].values())


def test_sample_apps_answer_over_http(local_stack: LocalStack) -> None:
    for port in local_stack.app_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/items", timeout=10) as response:
            assert response.status == 200
            assert "items" in json.loads(response.read())


def test_pgbouncer_is_back_within_two_seconds_after_sigkill(local_stack: LocalStack) -> None:
    old = local_stack.pgbouncer_pid()
    os.kill(old, signal.SIGKILL)
    started = time.monotonic()
    back = None
    while time.monotonic() - started < 5:
        try:
            with psycopg.connect(local_stack.env()["POOLED_DATABASE_URL"], connect_timeout=1,
                                 prepare_threshold=None) as conn:  # fmt: skip
                conn.execute("SELECT 1")
            back = time.monotonic() - started
            break
        except psycopg.OperationalError:
            time.sleep(0.02)
    assert back is not None and back < 2.0, f"PgBouncer not back after {back} s"
    assert local_stack.pgbouncer_pid() != old
    print(f"PgBouncer serving again {back:.2f} s after SIGKILL")


def test_servers_listen_on_loopback_only(local_stack: LocalStack) -> None:
    for port in (local_stack.postgres_port, local_stack.pgbouncer_port):
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        stats = local_stack.env()["PGBOUNCER_STATS_URL"]
        assert console.config(stats)["listen_addr"] == "127.0.0.1"


def test_status_watch_adds_up_every_pgbouncer_process(local_stack: LocalStack) -> None:
    """Three clients inside transactions hold three servers, wherever the shared port put them:
    the watch's one app/app row counts them all (each process answers on its own socket)."""
    consoles = Runner(local_stack.state_dir, Progress()).stats_urls()
    assert len(consoles) == 2
    screen = Console(file=io.StringIO(), width=110, record=True)
    held = [psycopg.connect(local_stack.env()["POOLED_DATABASE_URL"], prepare_threshold=None)
            for _ in range(3)]  # fmt: skip
    try:
        for conn in held:
            conn.execute("SELECT 1")  # a transaction is open: it holds a server
        watch.watch(local_stack.env(), "t", console=screen, rounds=1, consoles=consoles)
    finally:
        for conn in held:
            conn.close()
    rows = [line for line in screen.export_text().splitlines() if "app/app" in line]
    assert len(rows) == 1, rows
    cells = [c.strip() for c in rows[0].split("│") if c.strip()]
    # servers active: the three; clients active: also the sample apps' kept connections
    assert cells[3] == "3" and int(cells[1]) >= 3, rows[0]
