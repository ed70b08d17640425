"""What differs between the PgBouncer processes of one pooler host: data for the template.

Pure. The processes share ``listen_port`` (``so_reuseport``: the kernel spreads new connections
over them) and everything the plan sized. Each has its own ``peer_id``, Unix socket directory,
pid file and log file; ``[peers]`` names every process by its socket directory, so a cancel
request that the kernel hands to the wrong process is forwarded to the one that owns the query.
With one process nothing differs and the file is the single-process ``pgbouncer.ini``.
"""

from __future__ import annotations

from dataclasses import dataclass

MIGRATE_SYSCTL = "net.ipv4.tcp_migrate_req"
"""Linux 5.14+, per network namespace. At 1, the connections queued on a listener that closes
(a process stopping for a rolling restart) move to another socket of its ``so_reuseport``
group; at 0, the default, the kernel resets them and their clients see "server closed the
connection unexpectedly"."""


def pooler_sysctls(processes: int) -> dict[str, str]:
    """Kernel settings for the network namespace (a container, a pod) of one pooler host that
    runs ``processes`` PgBouncer processes: none for one."""
    return {MIGRATE_SYSCTL: "1"} if processes > 1 else {}


@dataclass(frozen=True)
class Peer:
    """One PgBouncer process of a host."""

    peer_id: int
    """1..processes; PgBouncer's ``peer_id`` (1..16383)."""
    ini: str
    """Rendered file name: ``pgbouncer.ini``, or ``pgbouncer-N.ini`` with several processes."""
    socket_dir: str
    pidfile: str
    logfile: str


def _numbered(path: str, number: int, suffix: str) -> str:
    """``/run/pgbouncer.pid`` -> ``/run/pgbouncer-2.pid``; empty stays empty (stderr, no pid)."""
    if not path:
        return ""
    stem = path[: -len(suffix)] if path.endswith(suffix) else path
    return f"{stem}-{number}{suffix}"


def ini_name(peer_id: int, processes: int) -> str:
    return "pgbouncer.ini" if processes == 1 else f"pgbouncer-{peer_id}.ini"


def peers(processes: int, socket_dir: str, pidfile: str, logfile: str) -> tuple[Peer, ...]:
    """Every process of a host, from the single-process paths of the target's layout."""
    if processes == 1:
        return (Peer(1, ini_name(1, 1), socket_dir, pidfile, logfile),)
    return tuple(
        Peer(
            peer_id=n,
            ini=ini_name(n, processes),
            socket_dir=f"{socket_dir.rstrip('/')}/pgbouncer-{n}",
            pidfile=_numbered(pidfile, n, ".pid"),
            logfile=_numbered(logfile, n, ".log"),
        )
        for n in range(1, processes + 1)
    )
