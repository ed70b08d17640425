"""The PgBouncer admin console (the virtual ``pgbouncer`` database): SHOW, RELOAD, PAUSE, RESUME.

The console speaks only the simple query protocol and has no transactions, so connections
are autocommit with server-side prepares off. SHOW works for ``stats_users``; RELOAD, PAUSE
and RESUME need an ``admin_users`` login.
"""

from __future__ import annotations

import select
import time
from typing import Any

import psycopg
from psycopg import pq

CONNECT_TIMEOUT_S = 5
_NAME = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, prepare_threshold=None,
                           connect_timeout=CONNECT_TIMEOUT_S)  # fmt: skip


def show(url: str, what: str) -> list[dict[str, Any]]:
    """Rows of ``SHOW <what>`` (POOLS, CONFIG, DATABASES, CLIENTS, STATS...) as dicts."""
    if not set(what.lower()) <= _NAME:
        raise ValueError(f"not a SHOW subject: {what!r}")
    with _connect(url) as conn:
        cursor = conn.execute(f"SHOW {what}")
        names = [column.name for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def config(url: str) -> dict[str, str]:
    """PgBouncer's effective settings, name -> value (``SHOW CONFIG``)."""
    return {row["key"]: str(row["value"]) for row in show(url, "CONFIG")}


def pools(url: str, database: str | None = None) -> list[dict[str, Any]]:
    """``SHOW POOLS``, optionally of one database: cl_active, cl_waiting, sv_active, sv_idle..."""
    return [row for row in show(url, "POOLS") if database in (None, row["database"])]


def databases(url: str) -> dict[str, dict[str, Any]]:
    """``SHOW DATABASES`` by name: pool_size, max_connections (max_db_connections)..."""
    return {row["name"]: row for row in show(url, "DATABASES")}


def max_db_connections(url: str, database: str) -> int:
    """The server-connection cap PgBouncer enforces for ``database``.

    ``SHOW DATABASES`` names a per-database cap in ``max_connections``; 0 there means the
    global ``max_db_connections`` of ``SHOW CONFIG`` applies (0 there too: unlimited).
    """
    per_database = int(databases(url)[database]["max_connections"] or 0)
    return per_database or int(config(url).get("max_db_connections", "0"))


def command(url: str, statement: str) -> None:
    """Run an admin command: ``RELOAD``, ``PAUSE [db]``, ``RESUME [db]``."""
    verb, _, target = statement.strip().partition(" ")
    if verb.upper() not in ("RELOAD", "PAUSE", "RESUME") or not set(target.lower()) <= _NAME:
        raise ValueError(f"not an admin command poolkit sends: {statement!r}")
    with _connect(url) as conn:
        conn.execute(statement)


def session(url: str) -> psycopg.Connection[Any]:
    """An open console connection (autocommit), for commands that must share one session."""
    return _connect(url)


def kill_clients(conn: psycopg.Connection[Any], user: str) -> int:
    """``KILL_CLIENT`` every client logged in as ``user`` (admin console, PgBouncer 1.21+)."""
    cursor = conn.execute("SHOW CLIENTS")
    names = [column.name for column in cursor.description or ()]
    killed = 0
    for row in (dict(zip(names, r, strict=True)) for r in cursor.fetchall()):
        if row["user"] == user:
            conn.execute(f"KILL_CLIENT {int(row['id'])}")
            killed += 1
    return killed


def reload(url: str) -> None:
    """Re-read pgbouncer.ini and userlist.txt; clients stay connected."""
    command(url, "RELOAD")


def pause(url: str, database: str = "") -> None:
    """Wait for running transactions to end, then hold new queries (all databases or one)."""
    command(url, f"PAUSE {database}".strip())


def resume(url: str, database: str = "") -> None:
    command(url, f"RESUME {database}".strip())


def pause_within(url: str, database: str, timeout: float) -> bool:
    """``PAUSE database`` and wait at most ``timeout`` s for PgBouncer to confirm it.

    PAUSE returns once every server connection of the database is released (running
    transactions end first). True: paused. False: not confirmed in time; the pause may still
    be pending, so the caller must RESUME. The console has no statement timeout, hence the
    non-blocking wait on the socket.
    """
    if not database or not set(database.lower()) <= _NAME:
        raise ValueError(f"not a database name poolkit pauses: {database!r}")
    conn = _connect(url)
    try:
        pgconn = conn.pgconn
        pgconn.send_query(f"PAUSE {database}".encode())
        while pgconn.flush():
            select.select([], [pgconn.socket], [], 1.0)
        deadline = time.monotonic() + timeout
        while True:
            pgconn.consume_input()
            if not pgconn.is_busy():
                break
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([pgconn.socket], [], [], left)
        result = pgconn.get_result()
        while pgconn.get_result() is not None:
            pass
        if result is None or result.status != pq.ExecStatus.COMMAND_OK:
            message = result.error_message.decode(errors="replace") if result else "no result"
            raise psycopg.OperationalError(f"PAUSE {database} failed: {message.strip()}")
        return True
    finally:
        conn.close()  # no `with`: its exit would COMMIT while PAUSE is pending
