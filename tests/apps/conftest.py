"""A real PostgreSQL 15 + PgBouncer 1.18 pair (transaction mode, SCRAM) and the apps' HTTP adapter.

Self-contained on purpose: it stands in for the project's local runner until that exists,
and will be replaced by the runner's fixture. Servers run as the ``postgres`` OS user
(``runuser -u postgres --``) in a temp dir on free 127.0.0.1 ports; passwords reach them
as SCRAM verifiers only (``poolkit.scram``), never in argv or plaintext files.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from poolkit import scram

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PGBOUNCER = Path("/usr/sbin/pgbouncer")
REPO_ROOT = Path(__file__).resolve().parents[2]
DBNAME = "appdb"
APP_USER, MIGRATOR, STATS_USER = "app", "migrator", "pgb_stats"
POOL_SIZE = 4


def new_password() -> str:
    """A random password with the characters URLs must escape."""
    return f"pw@:/%?#{secrets.token_urlsafe(12)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"process exited before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def url(user: str, password: str, port: int, dbname: str) -> str:
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"postgresql://{credentials}@127.0.0.1:{port}/{dbname}"


def as_postgres(*argv: str | Path, cwd: Path) -> None:
    """Run a command as the unprivileged ``postgres`` OS user; fail with its output."""
    cmd = ["runuser", "-u", "postgres", "--", *map(str, argv)]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}")


def write_private(path: Path, text: str) -> None:
    """A 0600 file owned by ``postgres``."""
    path.write_text(text)
    path.chmod(0o600)
    shutil.chown(path, "postgres", "postgres")


@dataclass
class PgBouncer:
    """One PgBouncer process in the foreground under runuser; stop/start to restart it."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.root / "pgbouncer.out").open("ab") as log:
            argv = ["runuser", "-u", "postgres", "--", str(PGBOUNCER), "pgbouncer.ini"]
            self.proc = subprocess.Popen(argv, cwd=self.root, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, 10, lambda: self.proc is not None and self.proc.poll() is None)

    def stop(self) -> None:
        """Immediate shutdown (SIGTERM on 1.18): clients see their connections drop."""
        if self.proc is None:
            return
        pid = int((self.root / "pgbouncer.pid").read_text())
        os.kill(pid, signal.SIGTERM)  # pgbouncer itself, started by us; runuser then exits
        self.proc.wait(timeout=10)
        self.proc = None


@dataclass
class Cluster:
    """A running Postgres + PgBouncer pair and the credentials to reach it."""

    root: Path
    pg_port: int
    bouncer: PgBouncer
    passwords: dict[str, str] = field(repr=False)
    app_user: ClassVar[str] = APP_USER
    migrator: ClassVar[str] = MIGRATOR
    pool_size: ClassVar[int] = POOL_SIZE

    @property
    def pooled_url(self) -> str:
        return self.pooled_url_with(self.passwords[APP_USER])

    def pooled_url_with(self, password: str) -> str:
        """The app's pooled URL with another password (for failure tests)."""
        return url(APP_USER, password, self.bouncer.port, DBNAME)

    @property
    def direct_url(self) -> str:
        return url(MIGRATOR, self.passwords[MIGRATOR], self.pg_port, DBNAME)

    @property
    def superuser_url(self) -> str:
        return url("postgres", self.passwords["postgres"], self.pg_port, DBNAME)

    @property
    def stats_url(self) -> str:
        return url(STATS_USER, self.passwords[STATS_USER], self.bouncer.port, "pgbouncer")

    def app_env(self, *, limit: int, prepared: str = "off") -> dict[str, str]:
        """The variables poolkit's .env gives an app."""
        return {
            "POOLED_DATABASE_URL": self.pooled_url,
            "DIRECT_URL": self.direct_url,
            "POOL_CONNECTION_LIMIT": str(limit),
            "PGBOUNCER_PREPARED_STATEMENTS": prepared,
        }

    def console(self, command: str) -> list[dict[str, Any]]:
        """Run a SHOW command on the PgBouncer console as the stats user."""
        with psycopg.connect(self.stats_url, autocommit=True, prepare_threshold=None) as conn:
            cur = conn.execute(command)
            names = [col.name for col in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def app_clients(self) -> list[dict[str, Any]]:
        """PgBouncer's client connections of the app role to the app database."""
        return [
            c for c in self.console("SHOW CLIENTS")
            if c["user"] == APP_USER and c["database"] == DBNAME
        ]


def _start_postgres(root: Path, port: int, superuser_password: str) -> None:
    data = root / "data"
    write_private(root / "pwfile", superuser_password + "\n")
    try:
        as_postgres(
            PG_BIN / "initdb", "-D", data, "-U", "postgres", "--pwfile", root / "pwfile",
            "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
            "-E", "UTF8", "--locale=C", "--no-sync", cwd=root,
        )
    finally:
        (root / "pwfile").unlink()
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            f"\nport = {port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{root}'\nmax_connections = 30\n"
            "password_encryption = 'scram-sha-256'\nfsync = off\nsynchronous_commit = off\n"
        )
    as_postgres(PG_BIN / "pg_ctl", "-D", data, "-l", root / "postgres.log", "-w", "start", cwd=root)


def _create_roles(cluster: Cluster, verifiers: dict[str, str]) -> None:
    admin = url("postgres", cluster.passwords["postgres"], cluster.pg_port, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        for role in (APP_USER, MIGRATOR):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(verifiers[role])))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(DBNAME), sql.Identifier(MIGRATOR)))


def _write_pgbouncer_config(root: Path, pg_port: int, port: int, verifiers: dict[str, str]) -> None:
    userlist = "".join(f'"{user}" "{verifier}"\n' for user, verifier in sorted(verifiers.items()))
    write_private(root / "userlist.txt", userlist)
    write_private(root / "pgbouncer.ini", f"""\
[databases]
{DBNAME} = host=127.0.0.1 port={pg_port} dbname={DBNAME}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {root}/userlist.txt
stats_users = {STATS_USER}
pool_mode = transaction
default_pool_size = {POOL_SIZE}
max_client_conn = 200
pidfile = {root}/pgbouncer.pid
logfile = {root}/pgbouncer.log
""")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """Postgres 15 + PgBouncer 1.18 in transaction mode with SCRAM auth, for the session."""
    for binary in (PG_BIN / "initdb", PGBOUNCER):
        if not binary.exists():
            pytest.fail(f"{binary} is missing: apt-get install -y postgresql pgbouncer")
    root = Path(tempfile.mkdtemp(prefix="poolkit-apps-"))
    shutil.chown(root, "postgres", "postgres")
    passwords = {u: new_password() for u in ("postgres", APP_USER, MIGRATOR, STATS_USER)}
    verifiers = {u: scram.verifier(p, os.urandom(scram.SALT_BYTES)) for u, p in passwords.items()}
    pg_port, bouncer_port = free_port(), free_port()
    bouncer = PgBouncer(root, bouncer_port)
    cluster = Cluster(root, pg_port, bouncer, passwords)
    try:
        _start_postgres(root, pg_port, passwords["postgres"])
        _create_roles(cluster, verifiers)
        _write_pgbouncer_config(
            root, pg_port, bouncer_port,
            {u: verifiers[u] for u in (APP_USER, MIGRATOR, STATS_USER)},
        )
        bouncer.start()
        yield cluster
    finally:
        bouncer.stop()
        if (root / "data" / "postmaster.pid").exists():
            as_postgres(PG_BIN / "pg_ctl", "-D", root / "data", "-m", "fast", "-w", "stop",
                        cwd=root)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class AppProcess:
    """A running ``python -m apps.http_adapter``."""

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
def start_app(cluster: Cluster, tmp_path: Path) -> Iterator[StartApp]:
    """Start the HTTP adapter for a style with the cluster's .env variables; stop at teardown."""
    started: list[AppProcess] = []

    def start(style: str, *, limit: int = 1, migrate: bool = True,
              env: dict[str, str] | None = None) -> AppProcess:
        port = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        full_env = {**base, **cluster.app_env(limit=limit), **(env or {})}
        argv = [sys.executable, "-m", "apps.http_adapter", "--style", style,
                "--host", "127.0.0.1", "--port", str(port)]
        log_path = tmp_path / f"{style}-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv + (["--migrate"] if migrate else []), cwd=REPO_ROOT,
                                    env=full_env, stdout=log, stderr=subprocess.STDOUT)
        app = AppProcess(style, port, proc, log_path)
        started.append(app)
        try:
            wait_for_port(port, 15, lambda: proc.poll() is None)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{app.log()}") from exc
        return app

    yield start
    for app in started:
        app.stop()
