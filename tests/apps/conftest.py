"""The sample apps on stacks the project's local runner brought up, and their HTTP adapter.

- ``stack``: the session's shared stack (``local_stack`` from ``tests/conftest.py``). Tests use
  it read-only: they start their own adapter processes against it and never stop its servers.
  Its own sample apps also connect as the app role, so a test finds its adapter's PgBouncer
  clients by ``application_name`` (``AppProcess.name``, passed as ``PGAPPNAME``).
- ``own_stack``: a stack of this module's own, without sample apps, for the tests that stop
  its PgBouncer or drop its table.

An adapter gets the stack's ``.env`` as its environment, as the runner's supervisor gives it.
Each test runs both implementations (``runtime``): ``python`` (``apps/``, psycopg) and ``node``
(``apps/ts``, Prisma 7 + TypeScript, built once per session by ``poolkit.node_apps``).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from apps import db
from poolkit import console, node_apps
from poolkit import secrets as stack_secrets
from poolkit.supervisor import STARTUP_GRACE_S
from poolkit.urls import postgres_url
from tests.apps import figures
from tests.backends import peak_backends
from tests.conftest import (
    REPO_ROOT,
    LocalStack,
    free_ports,
    local_stack_running,
)

ADAPTER_START_S = 15.0
PGBOUNCER_BACK_S = 10.0

OFFLINE_ENV = {
    "POOLED_DATABASE_URL": "postgresql://app:unused@127.0.0.1:1/app",
    "POOL_CONNECTION_LIMIT": "1",
    "PGBOUNCER_PREPARED_STATEMENTS": "off",
}
"""Valid settings naming a port where nothing listens: for tests that need no server."""
PGBOUNCER_SEEN: dict[int, float] = {}
"""When each stack's PgBouncer (by port) was last seen started: ``time.monotonic()``."""
RUNTIMES = ("python", "node")
URL_VARIABLE = {"python": "POOLED_DATABASE_URL", "node": "DATABASE_URL"}
"""Which .env variable each implementation sends its requests through (the same URL)."""


def offline_env(runtime: str) -> dict[str, str]:
    """``OFFLINE_ENV`` under the URL variable ``runtime`` reads."""
    url = OFFLINE_ENV["POOLED_DATABASE_URL"]
    return {**OFFLINE_ENV, URL_VARIABLE[runtime]: url}


@pytest.fixture(scope="session")
def ts_apps() -> None:
    """``apps/ts`` built (npm ci from the lock file, prisma generate offline, tsc) or a failure."""
    problem = node_apps.node_problem(node_apps.find_node())
    if problem:
        pytest.fail(problem, pytrace=False)
    if node_apps.build(REPO_ROOT) != 0:
        pytest.fail("building apps/ts failed (output above)", pytrace=False)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 20 ms; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout:g} s")
        time.sleep(0.02)


def request(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One HTTP request to 127.0.0.1:port (no proxies); returns status and decoded JSON body."""
    payload = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


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
        """Call it right after ``local`` came up (``PGBOUNCER_SEEN``)."""
        PGBOUNCER_SEEN[local.pgbouncer_port] = time.monotonic()
        return cls(local, local.env())

    @property
    def pooled_url(self) -> str:
        return self.env["POOLED_DATABASE_URL"]

    @property
    def direct_url(self) -> str:
        return self.env["DIRECT_URL"]

    @property
    def app_direct_url(self) -> str:
        """The app role straight to Postgres, bypassing PgBouncer (for comparison runs only)."""
        parts = conninfo_to_dict(self.pooled_url)
        return postgres_url(str(parts["user"]), str(parts["password"]), str(parts["host"]),
                            self.local.postgres_port, str(parts["dbname"]))  # fmt: skip

    @contextlib.contextmanager
    def peak_app_backends(self) -> Iterator[list[int]]:
        """Sample the app role's Postgres backends every 10 ms during the block; the list's one
        value is the peak seen (through PgBouncer or not)."""
        condition = "usename = %s AND backend_type = 'client backend'"
        with peak_backends(self.direct_url, condition, (self.app_user,)) as peak:
            yield peak

    @property
    def max_db_connections(self) -> int:
        """The most backends the pooler ever opens: every process's ``max_db_connections``."""
        return sum(int(console.config(url)["max_db_connections"])
                   for url in self.local.console_urls())  # fmt: skip

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
        """Every secret of the stack: each credential's password and the backup passphrases."""
        saved = stack_secrets.load(self.local.state_dir / "secrets.json")
        assert saved is not None, "the stack has no secrets.json"
        credentials = [getattr(saved, name) for name in stack_secrets.CREDENTIALS]
        passphrases = [saved.backup_passphrase, saved.backup_s3_key_secret]
        return [c.password for c in credentials if c is not None] + [p for p in passphrases if p]

    @property
    def pool_size(self) -> int:
        """The pooler's running ``default_pool_size``: every process's together."""
        return sum(int(console.config(url)["default_pool_size"])
                   for url in self.local.console_urls())  # fmt: skip

    def clients_of(self, app: AppProcess) -> list[dict[str, Any]]:
        """Client connections one adapter process holds on any PgBouncer process."""
        return [c for c in self.local.console_rows("CLIENTS") if c["application_name"] == app.name]

    def _replaced(self, old: tuple[int, ...]) -> bool:
        """Whether every PgBouncer process has a successor (a pidfile may be mid-write)."""
        try:
            pids = self.local.pgbouncer_pids()
        except (ValueError, FileNotFoundError):
            return False
        return len(pids) == len(old) and not set(pids) & set(old)

    @contextlib.contextmanager
    def pgbouncer_down(self) -> Iterator[None]:
        """PgBouncer dies and stays down for the block; then its supervisor restarts it.

        The supervisor is held with SIGSTOP while PgBouncer gets SIGKILL (clients see their
        connections drop, on every PgBouncer version), so the outage is certain to
        last the block instead of the supervisor's ~0.2 s; SIGCONT lets it restart PgBouncer.
        A PgBouncer younger than the supervisor's startup grace is left to age first: its death
        would count as a crash, and five in a row make the supervisor give up.
        """
        port = self.local.pgbouncer_port
        run = self.local.state_dir / "run"
        supervisors = [int(f.read_text().strip()) for f in run.glob("pgbouncer*.supervisor.pid")]
        old = self.local.pgbouncer_pids()  # every process on the port
        age = time.monotonic() - PGBOUNCER_SEEN.get(port, 0.0)  # the supervisor's clock
        time.sleep(max(0.0, STARTUP_GRACE_S + 0.2 - age))
        for supervisor in supervisors:
            os.kill(supervisor, signal.SIGSTOP)
        try:
            for pid in old:
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not listening(port), 10, "PgBouncer stopping")
            yield
        finally:
            for supervisor in supervisors:
                os.kill(supervisor, signal.SIGCONT)
        wait_until(lambda: listening(port) and self._replaced(old),
                   PGBOUNCER_BACK_S, "PgBouncer restarted by its supervisor")  # fmt: skip
        PGBOUNCER_SEEN[port] = time.monotonic()


@pytest.fixture(scope="session")
def stack(local_stack: LocalStack) -> AppStack:
    """The session's shared stack: start adapters against it, never stop its servers."""
    return AppStack.of(local_stack)


@pytest.fixture(scope="module")
def own_stack(ts_apps: None) -> Iterator[AppStack]:
    """A stack for this module alone: tests may stop its PgBouncer. Its one sample app is the
    TypeScript Workers app (``runtime: node``), which the runner starts under its supervisor."""
    ts_app = {"name": "ts", "style": "workers", "runtime": "node", "instances": 2}
    with local_stack_running("poolkit-apps-", "apps", with_apps=False,
                             extra_apps=[ts_app]) as local:  # fmt: skip
        yield AppStack.of(local)


@dataclass
class AppProcess:
    """A running HTTP adapter (``apps.http_adapter`` or ``apps/ts``); ``name`` is its
    ``application_name``."""

    name: str
    style: str
    runtime: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return request(self.port, method, path, body)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)


StartApp = Callable[..., AppProcess]


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    """The implementation under test; ``node`` builds ``apps/ts`` first."""
    if request.param == "node":
        request.getfixturevalue("ts_apps")
    return str(request.param)


@pytest.fixture
def start_app(tmp_path: Path, runtime: str) -> Iterator[StartApp]:
    """Start the HTTP adapter for a style with the given environment; stop it at teardown.

    ``start(style, env, migrate=True)``: ``env`` is a stack's ``app_env()`` (or
    ``offline_env(runtime)`` when the test needs no server); ``PGAPPNAME`` names the process
    (psycopg and node-postgres both send it as ``application_name``).
    """
    started: list[AppProcess] = []

    def start(style: str, env: Mapping[str, str], *, migrate: bool = True) -> AppProcess:
        port = free_ports(1)
        name = f"apps-test-{runtime}-{style}-{uuid.uuid4().hex[:8]}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        full_env = {**base, **env, "PGAPPNAME": name}
        node = node_apps.find_node() if runtime == "node" else None
        program = (node_apps.server_command(node, REPO_ROOT) if node
                   else [sys.executable, "-m", "apps.http_adapter"])  # fmt: skip
        argv = [*program, "--style", style, "--host", "127.0.0.1", "--port", str(port)]
        log_path = tmp_path / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv + (["--migrate"] if migrate else []), cwd=REPO_ROOT,
                                    env=full_env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        app = AppProcess(name, style, runtime, port, proc, log_path)
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


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if figures.FIGURES:
        terminalreporter.section("sample apps: 500 POST /items, 50 at a time, limit 10 per process")
        for line in figures.summary_lines():
            terminalreporter.write_line(line)
