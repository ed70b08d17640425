"""The Cloudflare Workers pattern: a new connection for every request, closed when it ends.

A Worker may not keep an I/O object (such as a socket) alive from one request into another,
so each request connects, runs its one transaction and closes; nothing is reused.
PgBouncer absorbs the connection churn and keeps the server connections warm instead.

Concurrent requests in one process hold at most ``POOL_CONNECTION_LIMIT`` connections at
once (a request waits up to ``SLOT_WAIT_S`` for a slot), so PgBouncer's ``max_client_conn``
sizing (instances x connection_limit) stays true.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from typing import Any

from apps import Response, Unavailable, Work, db, route

SLOT_WAIT_S = 10.0


@functools.cache
def _slots(limit: int) -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(limit)


def transaction(work: Work[Any]) -> Any:
    """Connect, run ``work`` as one transaction, close: nothing outlives the request."""
    settings = db.load_settings()
    slots = _slots(settings.connection_limit)
    if not slots.acquire(timeout=SLOT_WAIT_S):
        raise Unavailable(f"no connection slot free within {SLOT_WAIT_S:g}s")
    try:
        with db.connect(settings) as conn:
            return db.in_transaction(conn, work)
    finally:
        slots.release()


def handler(event: Mapping[str, Any], context: object = None) -> Response:
    """Workers-style entry point (the ``fetch`` handler's job)."""
    return route(event, transaction)


def close() -> None:
    """Nothing to release: no connection outlives its request."""
