"""The AWS Lambda pattern: one client per instance, created outside the handler, kept while warm.

A Lambda instance serves one invocation at a time and is frozen between them, so it holds
a single connection (``connection_limit=1`` in Prisma's words) and never disconnects per
request: the next invocation on a warm instance skips the connect and SCRAM handshake.
PgBouncer multiplexes these idle client connections onto a few server connections.

The HTTP adapter may call :func:`handler` from several threads; the lock keeps the
one-request-at-a-time behaviour of a real instance.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import psycopg

from apps import Response, Work, db, route

log = logging.getLogger("apps.lambda")


class WarmClient:
    """One lazily opened connection, reused by every invocation of this instance."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings: db.Settings | None = None
        self._conn: psycopg.Connection[Any] | None = None

    def transaction(self, work: Work[Any]) -> Any:
        """Run ``work`` as one transaction on the kept connection.

        If the kept connection turns out dead before anything ran (PgBouncer restarted,
        idle timeout), reconnect once and retry: BEGIN failed, so nothing was executed.
        A failure after BEGIN is not retried; the caller reports it.
        """
        with self._lock:
            conn = self._connection()
            begun = False

            def tracked(c: psycopg.Connection[Any]) -> Any:
                nonlocal begun
                begun = True
                return work(c)

            try:
                return db.in_transaction(conn, tracked)
            except psycopg.OperationalError as exc:
                if begun or not conn.closed:
                    raise
                log.info("kept connection was broken (%s); reconnecting", db.describe_error(exc))
            return db.in_transaction(self._connection(), work)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            if self._conn is not None:
                self._conn.close()  # a broken connection still holds its socket until closed
            if self._settings is None:
                self._settings = db.load_settings()
            self._conn = db.connect(self._settings)
        return self._conn

    def close(self) -> None:
        """Close the kept connection (instance shutdown)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


_client = WarmClient()
"""Module level, outside the handler: survives between invocations of a warm instance."""


def handler(event: Mapping[str, Any], context: object = None) -> Response:
    """Lambda entry point."""
    return route(event, _client.transaction)


def close() -> None:
    """Release the instance's connection; the HTTP adapter calls this on SIGTERM."""
    _client.close()
