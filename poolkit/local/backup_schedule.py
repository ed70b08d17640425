"""The backup schedule of a local stack: ``poolkit-backup-scheduler`` under the supervisor.

The same script as in the Postgres image (images/postgres/poolkit-backup-scheduler) runs as the
service user with the stack's rendered ``conf/backup-schedule`` and calls pgBackRest at the
times of ``backup.full_schedule`` and ``backup.diff_schedule``; its log is
``<state>/log/backup-scheduler.out.log``. No secret is on its command line: pgBackRest reads the
passphrase from its 0600 config and the login from the superuser's 0600 password file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from pathlib import Path

from poolkit.config import StackConfig
from poolkit.local.errors import LocalError, log_tail
from poolkit.local.host import SERVICE_WAIT_S, Host
from poolkit.local.machine import PACKAGE_ROOT, python_path, service_python
from poolkit.local.processes import pid_alive, terminate, wait_for
from poolkit.local.progress import Journal
from poolkit.local.state import SUPERVISOR
from poolkit.render import BACKUP_SCHEDULE

NAME = "backup-scheduler"
"""Supervised name (pid file, log file)."""
SCRIPT = PACKAGE_ROOT / "images" / "postgres" / "poolkit-backup-scheduler"
READY = "next: "
"""What the scheduler logs once it has read the schedule (its next backup)."""


def converge(host: Host, stack: StackConfig, running: int | None, changed: Collection[str],
             journal: Journal) -> None:  # fmt: skip
    """Start the scheduler when the stack backs up, restart it when its schedule changed, stop
    it when backups are off."""
    progress, paths = journal.progress, host.paths
    if not stack.backup.enabled:
        if running:
            with progress.step(f"stopping {NAME} (backups are off)"):
                terminate(running, SUPERVISOR)
            journal.actions.append(f"stopped {NAME}")
        return
    if running and BACKUP_SCHEDULE not in changed:
        return
    if running:
        with progress.step(f"stopping {NAME} (the schedule changed)"):
            terminate(running, SUPERVISOR)
    python, _paths = service_python(host.user)
    argv = [python, str(SCRIPT), str(paths.conf / BACKUP_SCHEDULE)]
    env = host.env(PYTHONPATH=python_path(host.user, PACKAGE_ROOT), PYTHONDONTWRITEBYTECODE="1")
    full, diff = stack.backup.full_schedule, stack.backup.diff_schedule
    with progress.step(f"starting {NAME} (full: {full}, diff: {diff}, UTC)"):
        pid = host.spawn_supervised(NAME, argv, env, paths.root)
        journal.undo.append(lambda: terminate(pid, SUPERVISOR))
        _wait_scheduling(paths.log / f"{NAME}.out.log", pid)
    journal.actions.append(f"{'restarted' if running else 'started'} {NAME}: full backups at "
                           f"'{full}', diff at '{diff}' (UTC)")  # fmt: skip


def _wait_scheduling(log: Path, pid: int) -> None:
    """Wait until the scheduler has read its schedule and named its next backup."""
    if not wait_for(lambda: READY in log.read_text(encoding="utf-8", errors="replace"),
                    SERVICE_WAIT_S, lambda: pid_alive(pid, SUPERVISOR)):  # fmt: skip
        with contextlib.suppress(Exception):
            terminate(pid, SUPERVISOR)
        raise LocalError(f"{NAME} did not start scheduling within {SERVICE_WAIT_S:.0f} s. "
                         f"Log:\n{log_tail(log, 15)}")  # fmt: skip
