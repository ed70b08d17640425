"""The stack's PgBouncer: start it supervised, RELOAD it, restart it when a start-only key moved."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator

from poolkit import console
from poolkit import secrets as stack_secrets
from poolkit.config import StackConfig
from poolkit.local.errors import LocalError
from poolkit.local.files import changed_keys, ini_settings
from poolkit.local.host import Host
from poolkit.local.machine import PACKAGE_ROOT, python_path
from poolkit.local.processes import read_pid, terminate
from poolkit.local.progress import Journal
from poolkit.local.state import SUPERVISOR, StackState
from poolkit.urls import postgres_url

# PgBouncer settings it reads only at start (https://www.pgbouncer.org/config.html).
RESTART_KEYS = frozenset(
    {"listen_addr", "listen_port", "unix_socket_dir", "unix_socket_mode", "unix_socket_group",
     "pidfile", "logfile"}
)  # fmt: skip
NAME = "pgbouncer"


def admin_url(credentials: stack_secrets.Secrets, port: int) -> str:
    """The console as ``admin_users`` (RELOAD, PAUSE, RESUME)."""
    admin = credentials.pgbouncer_admin
    return postgres_url(admin.user, admin.password, "127.0.0.1", port, "pgbouncer")


def stats_url(credentials: stack_secrets.Secrets, port: int) -> str:
    """The console as ``stats_users`` (SHOW only)."""
    stats = credentials.pgbouncer_stats
    return postgres_url(stats.user, stats.password, "127.0.0.1", port, "pgbouncer")


class PauseTimeout(LocalError):
    """PAUSE did not complete in time (long transactions); the database was RESUMEd."""


def _busy_servers(admin: str, database: str) -> int:
    try:
        return sum(int(row["sv_active"]) for row in console.pools(admin, database))
    except Exception:  # the count only decorates the message
        return -1


def _pause(admin: str, database: str, timeout: float) -> str | None:
    """PAUSE ``database``; None once paused, else why not (then it is RESUMEd already)."""
    try:
        if console.pause_within(admin, database, timeout):
            return None
        why = (f"PAUSE {database} did not complete within {timeout:g} s: "
               f"{_busy_servers(admin, database)} server connection(s) still inside a "
               "transaction")  # fmt: skip
    except BaseException:
        console.resume(admin, database)
        raise
    console.resume(admin, database)
    return why + ". RESUMEd"


@contextlib.contextmanager
def paused(admin: str, database: str, timeout: float) -> Iterator[None]:
    """``PAUSE database`` for the body, ``RESUME`` after it (always).

    Clients keep their connections; their queries wait inside PgBouncer (up to
    ``query_wait_timeout``) while no server connection of ``database`` is open. Raises
    ``PauseTimeout`` (after RESUME) when running transactions keep PAUSE from completing.
    """
    why = _pause(admin, database, timeout)
    if why:
        raise PauseTimeout(why)
    try:
        yield
    finally:
        console.resume(admin, database)


@contextlib.contextmanager
def paused_if_possible(
    admin: str, database: str, timeout: float, warn: Callable[[str], None]
) -> Iterator[None]:
    """``paused``, but when PAUSE cannot complete the body runs anyway, after a warning."""
    try:
        why = _pause(admin, database, timeout)
    except Exception as error:  # the console refused: nothing is paused
        why = f"PAUSE {database} failed ({type(error).__name__})"
    if why:
        warn(f"{why}; restarting without it: pooled clients inside a transaction may see an "
             "error")  # fmt: skip
        yield
        return
    try:
        yield
    finally:
        console.resume(admin, database)


class PgBouncer:
    """PgBouncer under ``poolkit.supervisor``, pid file ``run/pgbouncer.pid``."""

    def __init__(self, host: Host, pgbouncer: str):
        self.host = host
        self.paths = host.paths
        self.binary = pgbouncer

    def child_pid(self) -> int | None:
        return read_pid(self.paths.run / "pgbouncer.pid", "pgbouncer")

    def start(self, port: int) -> int:
        """Start the supervisor and wait until PgBouncer listens; return the supervisor's pid."""
        command = [self.binary, "-q", str(self.paths.conf / "pgbouncer.ini")]
        env = self.host.env(PYTHONPATH=python_path(self.host.user, PACKAGE_ROOT),
                            PYTHONDONTWRITEBYTECODE="1")  # fmt: skip
        pid = self.host.spawn_supervised(NAME, command, env, self.paths.root,
                                         "--child-pidfile", str(self.paths.run / "pgbouncer.pid"),
                                         "--raise-nofile", "--stop-signal", "INT")  # fmt: skip
        self.host.wait_listening(
            "PgBouncer",
            pid,
            port,
            [self.paths.log / "pgbouncer.log", self.paths.log / "pgbouncer.out.log"],
        )
        return pid

    def reload(self, credentials: stack_secrets.Secrets, port: int) -> None:
        """RELOAD on the console; SIGHUP when the console refuses (e.g. admin login changed)."""
        try:
            console.reload(admin_url(credentials, port))
        except Exception as error:
            bouncer = self.child_pid()
            if bouncer is None:
                raise LocalError(
                    f"RELOAD failed ({type(error).__name__}) and PgBouncer's pid is unknown",
                    self.paths.log / "pgbouncer.log",
                ) from None
            os.kill(bouncer, signal.SIGHUP)

    def converge(
        self,
        stack: StackConfig,
        version: str,
        credentials: stack_secrets.Secrets,
        changed: dict[str, str],
        pid: int | None,
        old: StackState | None,
        journal: Journal,
    ) -> None:
        """Start, RELOAD or restart PgBouncer so that it runs the rendered files."""
        progress, port = journal.progress, stack.pgbouncer.port
        ini_changed = "pgbouncer.ini" in changed
        keys = changed_keys(
            ini_settings(changed.get("pgbouncer.ini", "")),
            ini_settings((self.paths.conf / "pgbouncer.ini").read_text()),
        )
        keys = keys if ini_changed else []
        restart = pid is not None and bool(RESTART_KEYS & set(keys))
        if restart and pid is not None:
            with progress.step(f"stopping PgBouncer ({', '.join(keys)} need a restart)"):
                terminate(pid, SUPERVISOR)
            pid = None
        if pid is None:
            with progress.step(f"starting PgBouncer {version} on 127.0.0.1:{port} "
                               "(supervised)"):  # fmt: skip
                new_pid = self.start(port)
            journal.undo.append(lambda: terminate(new_pid, SUPERVISOR))
            journal.actions.append(f"{'restarted' if restart else 'started'} PgBouncer on "
                                   f"port {port}")  # fmt: skip
        elif ini_changed or "userlist.txt" in changed:
            what = ", ".join(keys) or "userlist.txt"
            with progress.step(f"reloading PgBouncer (RELOAD: {what} changed)"):
                self.reload(credentials, old.pgbouncer_port if old else port)
            journal.actions.append(f"reloaded PgBouncer ({what}); clients stay connected")
