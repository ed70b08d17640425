"""The stack's exporters on 127.0.0.1, each supervised, reading its login from a 0600 file.

One pgbouncer_exporter per PgBouncer process (through that process's socket dir), one
postgres_exporter; names and ports from ``poolkit.metrics.exporter_ports``.
"""

from __future__ import annotations

import os
import shutil

from poolkit import metrics
from poolkit.config import StackConfig
from poolkit.envfile import write_private
from poolkit.local.errors import LocalError
from poolkit.local.host import Host
from poolkit.local.machine import PACKAGE_ROOT, own, python_path
from poolkit.local.processes import terminate
from poolkit.local.progress import Journal
from poolkit.local.state import SUPERVISOR
from poolkit.render import Layout
from poolkit.secrets import Secrets
from poolkit.sizing import Plan

KIT_BIN = PACKAGE_ROOT / ".poolkit" / "bin"
"""Where scripts/install-monitoring links the exporters it unpacked from Debian trixie."""
BINARIES = {
    metrics.PGBOUNCER_EXPORTER: ("POOLKIT_PGBOUNCER_EXPORTER", "pgbouncer_exporter"),
    metrics.POSTGRES_EXPORTER: ("POOLKIT_POSTGRES_EXPORTER", "postgres_exporter"),
}
"""Exporter program -> (environment override, executable name)."""


def binary(program: str) -> str:
    """The exporter's executable: ``$POOLKIT_*_EXPORTER``, ``.poolkit/bin``, then PATH."""
    variable, executable = BINARIES[program]
    candidates = [os.environ[variable]] if os.environ.get(variable) else [
        str(KIT_BIN / executable), executable]  # fmt: skip
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    raise LocalError(
        f"{executable} is not installed (looked for {', '.join(candidates)}). Fix: run "
        f"./scripts/install-monitoring, set {variable}, or set poolkit:monitoring.exporters: false"
    )


def ports(stack: StackConfig, plan: Plan) -> dict[str, int]:
    """The port of each exporter the stack wants (none when monitoring.exporters is off)."""
    return metrics.exporter_ports(stack, plan)


def check_installed(stack: StackConfig) -> None:
    """Fail before anything starts when the stack wants exporters this machine lacks."""
    if stack.monitoring.exporters:
        for program in BINARIES:
            binary(program)


def converge(
    host: Host, stack: StackConfig, plan: Plan, layout: Layout, secrets: Secrets,
    running: dict[str, int], journal: Journal,
) -> None:  # fmt: skip
    """Start the exporters the stack wants, restart changed ones, stop unwanted ones."""
    progress, paths = journal.progress, host.paths
    wanted: dict[str, metrics.ExporterSpec] = {}
    if stack.monitoring.exporters:
        specs = metrics.exporters(stack, plan, layout, secrets)
        wanted = {spec.name: spec for spec in specs}
    for name, pid in running.items():
        if name not in wanted:
            with progress.step(f"stopping {name} (the stack no longer runs it)"):
                terminate(pid, SUPERVISOR)
            (paths.conf / f"{name}.env").unlink(missing_ok=True)
            journal.actions.append(f"stopped {name}")
    env = host.env(PYTHONPATH=python_path(host.user, PACKAGE_ROOT), PYTHONDONTWRITEBYTECODE="1")
    for name, spec in wanted.items():
        command = [binary(spec.program), f"--web.listen-address={spec.listen}:{spec.port}"]
        env_file = paths.conf / f"{name}.env"
        text = metrics.render_env(spec, command)
        same = env_file.is_file() and env_file.read_text(encoding="utf-8") == text
        pid = running.get(name)
        if pid and same:
            continue
        if pid:
            with progress.step(f"stopping {name} (its settings changed)"):
                terminate(pid, SUPERVISOR)
        write_private(env_file, text)
        own(env_file, host.user)
        with progress.step(f"starting {name} on {spec.listen}:{spec.port} for {spec.reads} "
                           "(supervised)"):  # fmt: skip
            new_pid = host.spawn_supervised(name, command, env, paths.root,
                                            "--env-file", str(env_file))  # fmt: skip
            journal.undo.append(lambda new_pid=new_pid: terminate(new_pid, SUPERVISOR))
            host.wait_listening(name, new_pid, spec.port, [paths.log / f"{name}.out.log"])
        journal.actions.append(f"{'restarted' if pid else 'started'} {name} on "
                               f"{spec.metrics_url}")  # fmt: skip
