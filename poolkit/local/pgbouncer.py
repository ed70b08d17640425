"""The stack's PgBouncer processes: start them supervised, RELOAD them, restart them one at a
time when a start-only key moved (the others keep serving the shared port)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg

from poolkit import console
from poolkit import secrets as stack_secrets
from poolkit.config import StackConfig
from poolkit.local.errors import LocalError
from poolkit.local.files import changed_keys, ini_settings
from poolkit.local.host import Host
from poolkit.local.machine import PACKAGE_ROOT, own, python_path
from poolkit.local.processes import pid_alive, read_pid, terminate, wait_for
from poolkit.local.progress import Journal
from poolkit.local.state import SUPERVISOR, StackState
from poolkit.peering import MIGRATE_SYSCTL, Peer
from poolkit.urls import postgres_url

# PgBouncer settings it reads only at start (https://www.pgbouncer.org/config.html).
RESTART_KEYS = frozenset(
    {"listen_addr", "listen_port", "unix_socket_dir", "unix_socket_mode", "unix_socket_group",
     "pidfile", "logfile"}
)  # fmt: skip
NAME = "pgbouncer"
GRACEFUL_SINCE = (1, 23)
"""From 1.23 SIGTERM lets connected clients finish and leave (new ones go to the peers); a
second SIGTERM shuts down at once. Before, SIGINT waits for servers to be released."""
DRAIN_TIMEOUT_S = 30.0
"""How long a rolling restart lets one process's clients leave before it is shut down anyway."""


MIGRATE_HINT = (
    f"{MIGRATE_SYSCTL} is not 1 on this host: a connection queued on a process at the instant "
    "it stops listening is reset (rare, under load); `sysctl -w "
    f"{MIGRATE_SYSCTL}=1` (Linux 5.14+; keep it in /etc/sysctl.d) hands it to a peer instead"
)


def migrates_queued_connections(proc_sys: Path = Path("/proc/sys")) -> bool:
    """Whether this host's kernel moves a closing listener's queued connections to its peers
    (``MIGRATE_SYSCTL`` is 1)."""
    try:
        return (proc_sys / MIGRATE_SYSCTL.replace(".", "/")).read_text().strip() == "1"
    except OSError:
        return False


def supervisor_name(peer: Peer, processes: int) -> str:
    """``pgbouncer`` for a single process, ``pgbouncer-N`` for process N of several."""
    return NAME if processes == 1 else f"{NAME}-{peer.peer_id}"


def is_pgbouncer(name: str) -> bool:
    """Whether a supervised name is one of the stack's PgBouncer processes."""
    return name == NAME or (name.startswith(f"{NAME}-") and name[len(NAME) + 1:].isdigit())


def socket_accepts(socket_dir: str, port: int) -> bool:
    """Whether the Unix socket of the process with ``socket_dir`` accepts connections."""
    path = str(Path(socket_dir) / f".s.PGSQL.{port}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def console_hosts(peers: Sequence[Peer]) -> list[str]:
    """Where each PgBouncer process's console answers: 127.0.0.1 for a single process; with
    several, TCP reaches any one of them, so each through its own socket dir."""
    return ["127.0.0.1"] if len(peers) <= 1 else [peer.socket_dir for peer in peers]


def admin_url(credentials: stack_secrets.Secrets, port: int, host: str = "127.0.0.1") -> str:
    """The console as ``admin_users`` (RELOAD, PAUSE, RESUME); ``host`` may be a socket dir."""
    admin = credentials.pgbouncer_admin
    return postgres_url(admin.user, admin.password, host, port, "pgbouncer")


def stats_url(credentials: stack_secrets.Secrets, port: int, host: str = "127.0.0.1") -> str:
    """The console as ``stats_users`` (SHOW only); ``host`` may be a socket dir."""
    stats = credentials.pgbouncer_stats
    return postgres_url(stats.user, stats.password, host, port, "pgbouncer")


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
    """The stack's PgBouncer processes, each under ``poolkit.supervisor``.

    One process: supervisor ``pgbouncer``, pid file ``run/pgbouncer.pid``. Several: supervisor
    ``pgbouncer-N`` running ``conf/pgbouncer-N.ini``, with its own socket dir, pid and log file
    (the rendered ``Peer`` data), all on the same port.
    """

    def __init__(self, host: Host, pgbouncer: str, peers: tuple[Peer, ...]):
        self.host = host
        self.paths = host.paths
        self.binary = pgbouncer
        self.peers = peers

    def name(self, peer: Peer) -> str:
        return supervisor_name(peer, len(self.peers))

    def child_pid(self, peer: Peer | None = None) -> int | None:
        peer = peer or self.peers[0]
        return read_pid(Path(peer.pidfile), "pgbouncer")

    def running(self) -> dict[str, int]:
        """Supervisor pids of the stack's PgBouncer processes that run, by supervised name."""
        return {name: pid for name in self.paths.supervised()
                if is_pgbouncer(name) and (pid := self.paths.supervisor(name))}  # fmt: skip

    def _logs(self, peer: Peer) -> list[Path]:
        return [Path(peer.logfile), self.paths.log / f"{self.name(peer)}.out.log"]

    def start_one(self, peer: Peer, port: int) -> int:
        """Start one process's supervisor and wait until it listens; return the supervisor pid."""
        folder = Path(peer.socket_dir)
        if folder != self.paths.run:
            folder.mkdir(mode=0o700, exist_ok=True)
            own(folder, self.host.user)
        command = [self.binary, "-q", str(self.paths.conf / peer.ini)]
        env = self.host.env(PYTHONPATH=python_path(self.host.user, PACKAGE_ROOT),
                            PYTHONDONTWRITEBYTECODE="1")  # fmt: skip
        pid = self.host.spawn_supervised(self.name(peer), command, env, self.paths.root,
                                         "--child-pidfile", peer.pidfile,
                                         "--raise-nofile", "--stop-signal", "INT")  # fmt: skip
        self.host.wait_listening("PgBouncer", pid, port, self._logs(peer))
        if not wait_for(lambda: socket_accepts(peer.socket_dir, port), 15.0,
                        lambda: pid_alive(pid, SUPERVISOR)):  # fmt: skip
            terminate(pid, SUPERVISOR)
            raise LocalError(f"PgBouncer process {peer.peer_id} does not accept on its socket "
                             f"in {peer.socket_dir}", Path(peer.logfile))  # fmt: skip
        return pid

    def start(self, port: int) -> list[int]:
        """Start every process; return their supervisor pids."""
        return [self.start_one(peer, port) for peer in self.peers]

    def reload(self, credentials: stack_secrets.Secrets, port: int) -> None:
        """RELOAD every process: SIGHUP each (several), or the console (one; SIGHUP if refused).

        With several processes the TCP console reaches whichever process the kernel picks, so
        each process is signalled by its pid instead.
        """
        if len(self.peers) == 1:
            try:
                console.reload(admin_url(credentials, port))
                return
            except Exception as error:
                why = f"RELOAD failed ({type(error).__name__})"
        else:
            why = "RELOAD of several processes"
        for peer in self.peers:
            bouncer = self.child_pid(peer)
            if bouncer is None:
                raise LocalError(f"{why} and the pid of PgBouncer process {peer.peer_id} is "
                                 "unknown", Path(peer.logfile)) from None  # fmt: skip
            os.kill(bouncer, signal.SIGHUP)

    def rolling_restart(self, version: tuple[int, int], port: int,
                        drain_timeout: float = DRAIN_TIMEOUT_S,
                        admin: stack_secrets.Credential | None = None) -> list[str]:  # fmt: skip
        """Restart the processes one at a time; the others keep serving the shared port.

        Each process is asked to shut down gracefully (it stops accepting; the kernel sends new
        connections to its peers; its clients finish and leave), its supervisor starts it again
        on the current file, and the next one waits until it accepts on its socket. With
        ``admin``, the console logins of the stats user (the process's pgbouncer_exporter,
        ``status --watch``) are closed right after the signal: they never leave by themselves
        and would hold the shutdown for the whole ``drain_timeout``; they reconnect to the new
        process. Connections the kernel queued on a process as it stops listening reach its
        peers only where ``MIGRATE_SYSCTL`` is 1; otherwise the result ends with a hint.
        """
        done = []
        for peer in self.peers:
            old = self.child_pid(peer)
            supervisor = self.paths.supervisor(self.name(peer))
            if old is None or supervisor is None:
                raise LocalError(f"PgBouncer process {peer.peer_id} is not running; run "
                                 "`poolkit up` again to start it")  # fmt: skip
            graceful = signal.SIGTERM if version >= GRACEFUL_SINCE else signal.SIGINT
            started = time.monotonic()
            with self._console(admin if graceful == signal.SIGTERM else None, peer,
                               port) as session:  # fmt: skip
                os.kill(old, graceful)
                if session is not None:
                    with contextlib.suppress(psycopg.Error):
                        console.kill_clients(session, stack_secrets.STATS_USER)
            if not wait_for(lambda: not pid_alive(old, "pgbouncer"), drain_timeout,  # noqa: B023
                            lambda: True):  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    os.kill(old, signal.SIGTERM)  # 1.23+: a second SIGTERM shuts down at once
                wait_for(lambda: not pid_alive(old, "pgbouncer"), 5.0, lambda: True)  # noqa: B023
            if not wait_for(
                lambda: (self.child_pid(peer) or old) != old  # noqa: B023
                and socket_accepts(peer.socket_dir, port),  # noqa: B023
                15.0, lambda: pid_alive(supervisor, SUPERVISOR),  # noqa: B023
            ):  # fmt: skip
                raise LocalError(f"PgBouncer process {peer.peer_id} did not come back after its "
                                 "restart", Path(peer.logfile))  # fmt: skip
            done.append(f"restarted PgBouncer process {peer.peer_id} in "
                        f"{time.monotonic() - started:.1f} s")
        if len(self.peers) > 1 and not migrates_queued_connections():
            done.append(MIGRATE_HINT)
        return done

    @staticmethod
    @contextlib.contextmanager
    def _console(admin: stack_secrets.Credential | None, peer: Peer,
                 port: int) -> Iterator[psycopg.Connection[Any] | None]:  # fmt: skip
        """An admin session on ``peer`` through its own socket (opened before it stops
        accepting), or None without ``admin`` or when it cannot be had."""
        if admin is None:
            yield None
            return
        url = postgres_url(admin.user, admin.password, peer.socket_dir, port, "pgbouncer")
        try:
            conn = console.session(url)
        except psycopg.Error:
            yield None
            return
        with conn:
            yield conn

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
        if len(self.peers) > 1 or any(name != NAME for name in self.running()):
            self._converge_processes(stack, version, credentials, changed, old, journal)
            return
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

    def _converge_processes(
        self,
        stack: StackConfig,
        version: str,
        credentials: stack_secrets.Secrets,
        changed: dict[str, str],
        old: StackState | None,
        journal: Journal,
    ) -> None:
        """Several processes (or a change of their number): start, RELOAD, or roll."""
        progress, port = journal.progress, stack.pgbouncer.port
        wanted = {self.name(peer) for peer in self.peers}
        running = self.running()
        if set(running) - wanted:  # the number of processes changed: a new set on the port
            with progress.step(f"stopping {len(running)} PgBouncer process(es) to run "
                               f"{len(self.peers)}"):  # fmt: skip
                for pid in running.values():
                    terminate(pid, SUPERVISOR)
            journal.actions.append(f"stopped PgBouncer ({len(running)} process(es)): the number "
                                   f"of processes is now {len(self.peers)}")  # fmt: skip
            running = {}
            current = {peer.ini for peer in self.peers}
            for path in self.paths.conf.glob("pgbouncer*.ini"):  # the old set's, e.g. 1 -> 2
                if path.name not in current:
                    path.unlink()
        missing = [peer for peer in self.peers if self.name(peer) not in running]
        for peer in missing:
            with progress.step(f"starting PgBouncer {version} process {peer.peer_id} of "
                               f"{len(self.peers)} on 127.0.0.1:{port} (so_reuseport, "
                               "supervised)"):  # fmt: skip
                new_pid = self.start_one(peer, port)
            journal.undo.append(lambda pid=new_pid: terminate(pid, SUPERVISOR))
            journal.actions.append(f"started PgBouncer process {peer.peer_id} on port {port}")
        if missing and len(missing) < len(self.peers):
            self.reload(credentials, port)  # the others learn their new [peers]
        present = [peer for peer in self.peers if self.name(peer) in running]
        files = [peer.ini for peer in present if peer.ini in changed]
        if not present or not (files or "userlist.txt" in changed):
            return
        keys = sorted({key for peer in present if peer.ini in changed
                       for key in changed_keys(ini_settings(changed[peer.ini]),
                                               ini_settings(self._current(peer)))})  # fmt: skip
        if RESTART_KEYS & set(keys):
            with progress.step(f"restarting {len(present)} PgBouncer processes one at a time "
                               f"({', '.join(keys)} need a restart)"):  # fmt: skip
                rolled = self.rolling_restart(stack.pgbouncer.version_tuple, port,
                                              admin=credentials.pgbouncer_admin)
            journal.actions.append("; ".join(rolled))
            return
        what = ", ".join(keys) or "userlist.txt"
        with progress.step(f"reloading {len(present)} PgBouncer processes (RELOAD: {what} "
                           "changed)"):
            self.reload(credentials, old.pgbouncer_port if old else port)
        journal.actions.append(f"reloaded PgBouncer ({what}); clients stay connected")

    def _current(self, peer: Peer) -> str:
        path = self.paths.conf / peer.ini
        return path.read_text() if path.exists() else ""
