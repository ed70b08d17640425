"""The sample apps on stacks the project's local runner brought up, and their HTTP adapter.

- ``stack``: the session's shared stack (``local_stack`` from ``tests/conftest.py``). Tests use
  it read-only: they start their own adapter processes against it and never stop its servers.
  Its own sample apps also connect as the app role, so a test finds its adapter's PgBouncer
  clients by ``application_name`` (``AppProcess.name``, passed as ``PGAPPNAME``).
- ``own_stack``: a stack of this module's own, without sample apps, for the tests that stop
  its PgBouncer or drop its table.

An adapter gets the stack's ``.env`` as its environment, as the runner's supervisor gives it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from apps import db
from poolkit import secrets as stack_secrets
from tests.conftest import (
    REPO_ROOT,
    LocalStack,
    free_ports,
    start_local_stack,
    stop_local_stack,
)

ADAPTER_START_S = 15.0
PGBOUNCER_BACK_S = 10.0

OFFLINE_ENV = {
    "POOLED_DATABASE_URL": "postgresql://app:unused@127.0.0.1:1/app",
    "POOL_CONNECTION_LIMIT": "1",
    "PGBOUNCER_PREPARED_STATEMENTS": "off",
}
"""Valid settings naming a port where nothing listens: for tests that need no server."""


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 20 ms; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout:g} s")
        time.sleep(0.02)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class AppStack:
    """A local stack as the sample apps and their tests see it: its ``.env`` and PgBouncer."""

    local: LocalStack
    env: Mapping[str, str] = field(repr=False)

    @classmethod
    def of(cls, local: LocalStack) -> AppStack:
        return cls(local, local.env())

    @property
    def pooled_url(self) -> str:
        return self.env["POOLED_DATABASE_URL"]

    @property
    def direct_url(self) -> str:
        return self.env["DIRECT_URL"]

    @property
    def app_user(self) -> str:
        return str(conninfo_to_dict(self.pooled_url)["user"])

    @property
    def migrator(self) -> str:
        return str(conninfo_to_dict(self.direct_url)["user"])

    def app_env(self, *, limit: int | None = None, prepared: str | None = None) -> dict[str, str]:
        """The stack's ``.env``, optionally with another connection limit or prepared setting."""
        env = dict(self.env)
        if limit is not None:
            env["POOL_CONNECTION_LIMIT"] = str(limit)
        if prepared is not None:
            env["PGBOUNCER_PREPARED_STATEMENTS"] = prepared
        return env

    def passwords(self) -> list[str]:
        """Every password of the stack (superuser, migrator, app, PgBouncer console users)."""
        saved = stack_secrets.load(self.local.state_dir / "secrets.json")
        assert saved is not None, "the stack has no secrets.json"
        return [getattr(saved, f.name).password for f in fields(saved)]

    def console(self, command: str) -> list[dict[str, Any]]:
        """Run a SHOW command on the PgBouncer console as the stats user."""
        stats = self.env["PGBOUNCER_STATS_URL"]
        with psycopg.connect(stats, autocommit=True, prepare_threshold=None) as conn:
            cur = conn.execute(command)
            names = [col.name for col in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    @property
    def pool_size(self) -> int:
        """PgBouncer's running ``default_pool_size``."""
        config = {row["key"]: row["value"] for row in self.console("SHOW CONFIG")}
        return int(config["default_pool_size"])

    def clients_of(self, app: AppProcess) -> list[dict[str, Any]]:
        """PgBouncer's client connections opened by one adapter process."""
        return [c for c in self.console("SHOW CLIENTS") if c["application_name"] == app.name]

    @contextlib.contextmanager
    def pgbouncer_down(self) -> Iterator[None]:
        """PgBouncer dies and stays down for the block; then its supervisor restarts it.

        The supervisor is held with SIGSTOP while PgBouncer gets SIGKILL (clients see their
        connections drop, on every PgBouncer version), so the outage is certain to
        last the block instead of the supervisor's ~0.2 s; SIGCONT lets it restart PgBouncer.
        Uses in quick succession may count towards the supervisor's crash-loop limit (5 in 10 s).
        """
        port = self.local.pgbouncer_port
        run = self.local.state_dir / "run"
        supervisor = int((run / "pgbouncer.supervisor.pid").read_text().strip())
        old = self.local.pgbouncer_pid()
        os.kill(supervisor, signal.SIGSTOP)
        try:
            os.kill(old, signal.SIGKILL)
            wait_until(lambda: not listening(port), 10, "PgBouncer stopping")
            yield
        finally:
            os.kill(supervisor, signal.SIGCONT)
        wait_until(lambda: (run / "pgbouncer.pid").exists() and listening(port)
                   and self.local.pgbouncer_pid() != old,
                   PGBOUNCER_BACK_S, "PgBouncer restarted by its supervisor")  # fmt: skip


@pytest.fixture(scope="session")
def stack(local_stack: LocalStack) -> AppStack:
    """The session's shared stack: start adapters against it, never stop its servers."""
    return AppStack.of(local_stack)


@pytest.fixture(scope="module")
def own_stack() -> Iterator[AppStack]:
    """A stack for this module alone (no sample apps): tests may stop its PgBouncer."""
    local = start_local_stack("poolkit-apps-", "apps", with_apps=False)
    try:
        yield AppStack.of(local)
    finally:
        stop_local_stack(local)


@dataclass
class AppProcess:
    """A running ``python -m apps.http_adapter``; ``name`` is its ``application_name``."""

    name: str
    style: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One HTTP request (no proxies); returns status and decoded JSON body."""
        payload = body if isinstance(body, bytes | None) else json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)


StartApp = Callable[..., AppProcess]


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[StartApp]:
    """Start the HTTP adapter for a style with the given environment; stop it at teardown.

    ``start(style, env, migrate=True)``: ``env`` is a stack's ``app_env()`` (or
    ``OFFLINE_ENV`` when the test needs no server); ``PGAPPNAME`` names the process.
    """
    started: list[AppProcess] = []

    def start(style: str, env: Mapping[str, str], *, migrate: bool = True) -> AppProcess:
        port = free_ports(1)
        name = f"apps-test-{style}-{uuid.uuid4().hex[:8]}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        full_env = {**base, **env, "PGAPPNAME": name}
        argv = [sys.executable, "-m", "apps.http_adapter", "--style", style,
                "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        log_path = tmp_path / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv + (["--migrate"] if migrate else []), cwd=REPO_ROOT,
                                    env=full_env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        app = AppProcess(name, style, port, proc, log_path)
        started.append(app)
        deadline = time.monotonic() + ADAPTER_START_S
        while not listening(port):
            if proc.poll() is not None:
                raise RuntimeError(f"the adapter exited with {proc.returncode}:\n{app.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the adapter is not listening after {ADAPTER_START_S:g} s"
                                   f":\n{app.log()}")  # fmt: skip
            time.sleep(0.05)
        return app

    yield start
    for app in started:
        app.stop()


def mixed_clients(settings: db.Settings, clients: int, rounds: int) -> tuple[int, int]:
    """Clients each on their own pooled connection, one transaction per query; (errors, wrong)."""
    errors = wrong = 0

    def client(k: int) -> tuple[int, int]:
        bad = mismatched = 0
        with db.connect(settings) as conn:
            for i in range(rounds):
                n = k * 1000 + i
                try:
                    row = db.in_transaction(
                        conn, lambda c, n=n: c.execute("SELECT %s::int + 7", (n,)).fetchone()
                    )
                    mismatched += row != (n + 7,)
                except psycopg.Error:
                    bad += 1
        return bad, mismatched

    with ThreadPoolExecutor(max_workers=clients) as pool:
        for bad, mismatched in pool.map(client, range(clients)):
            errors += bad
            wrong += mismatched
    return errors, wrong
