"""The sample apps' replicas: which run where, started and stopped under supervisors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poolkit import node_apps
from poolkit.local.host import Host
from poolkit.local.machine import PACKAGE_ROOT, python_path, service_python
from poolkit.local.processes import terminate
from poolkit.local.progress import Journal
from poolkit.local.state import SUPERVISOR
from poolkit.sizing import Plan


@dataclass(frozen=True)
class Replica:
    """One sample-app process: ``app-<name>-<index>`` on ``port``."""

    app: str
    style: str
    index: int
    port: int
    env_name: str
    """Which rendered .env it reads: ``.env`` or ``.env.<app>``."""
    runtime: str = "python"
    """python: ``apps.http_adapter``; node: ``apps/ts`` (Prisma 7 + TypeScript)."""

    @property
    def key(self) -> str:
        return f"app-{self.app}-{self.index}"

    def record(self) -> dict[str, Any]:
        """How ``state.json`` lists it."""
        return dataclasses.asdict(self) | {"key": self.key}


def replicas(the_plan: Plan, files: dict[str, str]) -> list[Replica]:
    """Every replica the plan asks for, each reading its app's .env."""
    found = []
    for app in the_plan.apps:
        env_name = f".env.{app.name}" if f".env.{app.name}" in files else ".env"
        found += [Replica(app.name, app.style, i, app.port + i, env_name, app.runtime)
                  for i in range(app.replicas)]  # fmt: skip
    return found


def converge(
    host: Host,
    project_root: Path,
    wanted: list[Replica],
    running: dict[str, int],
    old_apps: dict[str, Any],
    changed: dict[str, str],
    journal: Journal,
) -> None:
    """Stop replicas no longer wanted or changed; start the missing ones."""
    progress = journal.progress
    keys = {r.key for r in wanted}
    for key, pid in running.items():
        if key not in keys:
            with progress.step(f"stopping {key} (no longer in the stack)"):
                terminate(pid, SUPERVISOR)
            journal.actions.append(f"stopped {key}")
    to_start = []
    for replica in wanted:
        pid = running.get(replica.key)
        if pid and (replica.env_name in changed or old_apps.get(replica.key) != replica.record()):
            with progress.step(f"stopping {replica.key} (its settings changed)"):
                terminate(pid, SUPERVISOR)
            pid = None
        if pid is None:
            to_start.append(replica)
    if not to_start:
        return
    env = host.env(PYTHONPATH=python_path(host.user, project_root, PACKAGE_ROOT),
                   PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")  # fmt: skip
    with progress.step(f"starting {len(to_start)} sample app process(es) (supervised)"):
        for replica in to_start:
            _start(host, project_root, replica, env, journal)


def _start(
    host: Host, project_root: Path, replica: Replica, env: dict[str, str], journal: Journal
) -> None:
    if replica.runtime == "node":
        node = node_apps.find_node()
        assert node is not None, "the runner keeps node replicas only where Node.js is found"
        program = node_apps.server_command(node, project_root)
    else:
        program = [service_python(host.user)[0], "-m", "apps.http_adapter"]
    command = [*program, "--style", replica.style, "--host", "127.0.0.1",
               "--port", str(replica.port), "--migrate"]  # fmt: skip
    pid = host.spawn_supervised(
        replica.key,
        command,
        env,
        project_root,
        "--env-file",
        str(host.paths.conf / replica.env_name),
    )
    journal.undo.append(lambda: terminate(pid, SUPERVISOR))
    host.wait_listening(f"app {replica.app}", pid, replica.port,
                        [host.paths.log / f"{replica.key}.out.log"])  # fmt: skip
    journal.actions.append(f"started app {replica.app} ({replica.style}, {replica.runtime}) "
                           f"on port {replica.port}")
