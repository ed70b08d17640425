"""Shared fixtures: a real local stack (Postgres + PgBouncer + sample apps) brought up once.

``local_stack`` runs the real CLI (``poolkit up --target local``) on free 127.0.0.1 ports in a
temp state dir under a world-traversable folder (the servers run as ``postgres`` when the tests
run as root, and pytest's own tmp dirs are 0700), and ``poolkit down --purge --yes`` at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg.conninfo import make_conninfo

from poolkit import console
from poolkit.envfile import read_env
from poolkit.local import port_in_use

REPO_ROOT = Path(__file__).resolve().parents[1]
CLI_TIMEOUT_S = 300


TEST_PORTS = range(20000, 32000)
"""Below Linux's ephemeral range (32768+), so outgoing connections never take a test port."""


def free_ports(count: int, taken: set[int] | None = None) -> int:
    """The first of ``count`` consecutive free ports (apps use port..port+replicas-1)."""
    taken = taken if taken is not None else set()
    for _ in range(500):
        first = random.randrange(TEST_PORTS.start, TEST_PORTS.stop - count)
        block = range(first, first + count)
        if all(p not in taken and not port_in_use(p) for p in block):
            taken.update(block)
            return first
    raise RuntimeError(f"no {count} consecutive free ports found in {TEST_PORTS}")


def make_base_dir(prefix: str) -> Path:
    """A temp folder the ``postgres`` user can walk through (mode 0755)."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    base.chmod(0o755)
    return base


@dataclass(frozen=True)
class LocalStack:
    """A stack brought up by the local runner, and how to drive it through the CLI."""

    name: str
    base: Path
    stack_file: Path
    state_dir: Path
    env_file: Path
    postgres_port: int
    pgbouncer_port: int
    app_ports: tuple[int, ...]

    def env(self) -> dict[str, str]:
        return read_env(self.env_file)

    def state(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "state.json").read_text())

    @property
    def server_user(self) -> str:
        return str(self.state()["user"])

    def poolkit(
        self,
        *args: str,
        check: bool = True,
        env: dict[str, str] | None = None,
        stack_file: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``poolkit ARGS`` for this stack (state dir, and for up the stack and env file)."""
        command = args[0]
        extra: list[str] = []
        if command in ("up", "down", "status", "restart"):
            extra += ["--state-dir", str(self.state_dir)]
        if command == "up":
            extra += ["--stack-file", str(stack_file or self.stack_file),
                      "--env-file", str(self.env_file)]  # fmt: skip
        return run_cli(*args, *extra, check=check, env=env)

    def postmaster_pid(self) -> int:
        return int((self.state_dir / "data" / "postmaster.pid").read_text().split()[0])

    def pgbouncer_pids(self) -> tuple[int, ...]:
        """Every PgBouncer process's pid, by peer id (``pgbouncer.pid`` or ``pgbouncer-N.pid``)."""
        found = {int(match[1] or 1): f for f in (self.state_dir / "run").iterdir()
                 if (match := re.fullmatch(r"pgbouncer(?:-(\d+))?\.pid", f.name))}  # fmt: skip
        return tuple(int(found[n].read_text().strip()) for n in sorted(found))

    def pgbouncer_pid(self) -> int:
        """PgBouncer process 1's pid."""
        return self.pgbouncer_pids()[0]

    def console_urls(self) -> list[str]:
        """The stats console of every PgBouncer process: the TCP port reaches any one of
        several, so each is read through its own Unix socket."""
        url, peers = self.env()["PGBOUNCER_STATS_URL"], self.state()["pgbouncer_peers"]
        if len(peers) <= 1:
            return [url]
        return [make_conninfo(url, host=peer["socket_dir"]) for peer in peers]

    def console_rows(self, what: str) -> list[dict[str, Any]]:
        """``SHOW what`` of every PgBouncer process, together."""
        return [row for url in self.console_urls() for row in console.show(url, what)]


def run_cli(
    *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m poolkit ARGS`` from the project root; fails the test with its output."""
    done = subprocess.run([sys.executable, "-m", "poolkit", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                          env={**os.environ, **(env or {})}, check=False)  # fmt: skip
    if check and done.returncode != 0:
        pytest.fail(f"poolkit {' '.join(args)} exited {done.returncode}\n"
                    f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")  # fmt: skip
    return done


def write_stack_file(
    path: Path,
    *,
    postgres_port: int,
    pgbouncer_port: int,
    apps: list[dict[str, Any]] | None = None,
    memory: str = "512MiB",
    **sections: dict[str, Any],
) -> None:
    """A stack file in the Pulumi.<stack>.yaml format (``sections`` merge into the sections)."""
    config: dict[str, Any] = {
        "poolkit:postgres": {"memory": memory, "cpus": 2, "port": postgres_port},
        "poolkit:pgbouncer": {"port": pgbouncer_port},
    }
    for name, values in sections.items():
        config.setdefault(f"poolkit:{name}", {}).update(values)
    if apps:
        config["poolkit:apps"] = apps
    path.write_text(yaml.safe_dump({"config": config}, sort_keys=False))


def start_local_stack(
    prefix: str,
    name: str,
    *,
    with_apps: bool = True,
    extra_apps: list[dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    **sections: dict[str, Any],
) -> LocalStack:
    """Write a stack file on free ports and ``poolkit up --no-smoke`` it (``env`` added).

    ``extra_apps`` (stack-file app entries without ``port``) get free ports after the sample
    apps; their ports end ``app_ports``.
    """
    base = make_base_dir(prefix)
    taken: set[int] = set()
    postgres_port, pgbouncer_port = free_ports(1, taken), free_ports(1, taken)
    apps = []
    app_ports: tuple[int, ...] = ()
    if with_apps:
        lambda_port, workers_port = free_ports(2, taken), free_ports(1, taken)
        apps = [
            {"name": "orders", "style": "lambda", "instances": 4, "replicas": 2,
             "port": lambda_port},
            {"name": "edge", "style": "workers", "instances": 4, "replicas": 1,
             "port": workers_port},
        ]  # fmt: skip
        app_ports = (lambda_port, lambda_port + 1, workers_port)
    for app in extra_apps or []:
        first = free_ports(app.get("replicas", 1), taken)
        apps.append({**app, "port": first})
        app_ports += tuple(range(first, first + app.get("replicas", 1)))
    stack_file = base / f"Pulumi.{name}.yaml"
    write_stack_file(stack_file, postgres_port=postgres_port, pgbouncer_port=pgbouncer_port,
                     apps=apps, **sections)  # fmt: skip
    stack = LocalStack(name=name, base=base, stack_file=stack_file, state_dir=base / "state",
                       env_file=base / f".env.{name}", postgres_port=postgres_port,
                       pgbouncer_port=pgbouncer_port, app_ports=app_ports)  # fmt: skip
    try:
        stack.poolkit("up", "--no-smoke", env=env)
    except BaseException:  # pytest.fail raises an outcome exception, not an Exception
        stop_local_stack(stack)
        raise
    return stack


def stop_local_stack(stack: LocalStack) -> None:
    stack.poolkit("down", "--purge", "--purge-backups", "--yes", check=False)
    shutil.rmtree(stack.base, ignore_errors=True)


@contextlib.contextmanager
def local_stack_running(prefix: str, name: str, **kwargs: Any) -> Iterator[LocalStack]:
    """``start_local_stack(prefix, name, **kwargs)`` for the block, stopped and purged after it
    whatever happened (the body of a stack fixture)."""
    stack = start_local_stack(prefix, name, **kwargs)
    try:
        yield stack
    finally:
        stop_local_stack(stack)


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    """One local stack for the whole session (read-only use: do not change its config)."""
    with local_stack_running("poolkit-session-", "session") as stack:
        yield stack


LAYER_ORDER = ("unit", "pulumi", "integration", "infra", "security", "reliability", "bench",
               "apps", "drivers", "e2e")  # fmt: skip
"""Fastest layers first, so a unit failure shows in seconds; a folder not listed runs last."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the test folders in LAYER_ORDER (pytest would take them alphabetically)."""

    def layer(item: pytest.Item) -> int:
        parts = Path(item.path).resolve().relative_to(REPO_ROOT).parts
        folder = parts[1] if len(parts) > 2 and parts[0] == "tests" else ""
        return LAYER_ORDER.index(folder) if folder in LAYER_ORDER else len(LAYER_ORDER)

    items.sort(key=layer)  # stable: the order inside a folder stays pytest's
