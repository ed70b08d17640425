"""The kit's retry guidance for clients of the pooled URL, as a small helper.

A PgBouncer or Postgres restart breaks the connections a client holds. What is safe to do next
depends on where the break happened:

- **Before COMMIT was sent** (connecting, BEGIN, any statement inside the transaction): the
  server rolled the transaction back. Reconnect and run the whole transaction again.
- **While COMMIT was in flight** (the acknowledgement was lost): the transaction may or may not
  have committed. A blind retry could write twice. Make writes idempotent instead: the client
  generates a unique key per logical write (``new_key()``), inserts it with
  ``ON CONFLICT (key) DO NOTHING RETURNING ...``, and retries; the retry then tells which it
  was (a row returned: it had not committed; none: it had). ``insert_once`` does exactly that.
- **Anything else** (a constraint, a syntax error, a permission): not retried, raised at once.

``Retrying`` wraps one connection the way a serverless instance keeps one while it is warm::

    db = Retrying(os.environ["POOLED_DATABASE_URL"], prepare_threshold=None)
    key = new_key()
    db.run(lambda conn: insert_once(conn, "INSERT INTO orders (key, total) VALUES (%s, %s)"
                                          " ON CONFLICT (key) DO NOTHING RETURNING key",
                                    (key, 42)))

Work that is not idempotent can pass ``retry_ambiguous=False``: a lost acknowledgement then
raises ``AmbiguousCommit`` for the caller to resolve, instead of a retry.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import errors

T = TypeVar("T")

RETRYABLE_SQLSTATES = frozenset({
    "40001",  # serialization_failure: the whole transaction may run again
    "40P01",  # deadlock_detected
    "57P01",  # admin_shutdown: the server is stopping (fast restart)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now: the server is starting up or recovering
    "08P01",  # protocol_violation: PgBouncer's query_wait_timeout, server connection lost
})  # fmt: skip


class AmbiguousCommit(psycopg.OperationalError):
    """The connection broke while COMMIT was in flight: it may or may not have committed."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying: ``attempts`` runs within ``deadline_s``, with jittered backoff."""

    attempts: int = 50
    deadline_s: float = 30.0
    first_backoff_s: float = 0.05
    max_backoff_s: float = 1.0

    def backoff(self, attempt: int) -> float:
        """Exponential from ``first_backoff_s``, capped, with full jitter (no thundering herd)."""
        ceiling = min(self.max_backoff_s, self.first_backoff_s * 2**attempt)
        return random.uniform(self.first_backoff_s / 2, ceiling)


@dataclass
class RetryStats:
    """What the retries did, for logs and tests."""

    runs: int = 0
    retries: int = 0
    reconnects: int = 0
    ambiguous_commits: int = 0
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    """The last errors that were retried (type and message, no URL)."""


def new_key() -> uuid.UUID:
    """A client-generated idempotency key for one logical write."""
    return uuid.uuid4()


REFUSED_AT_LOGIN = (
    "authentication failed",  # wrong password (Postgres, PgBouncer)
    "no pg_hba.conf entry",  # this role, database or address is not allowed
    "does not exist",  # role or database
    "no such database",  # PgBouncer
    "no such user",
    "permission denied",
    "not allowed",
)
"""Login refusals (libpq reports them without a SQLSTATE) that no retry can fix."""


def is_retryable(error: BaseException) -> bool:
    """Whether running the transaction again may succeed (connection-level or transient)."""
    if isinstance(error, errors.DatabaseError) and error.sqlstate:
        code = error.sqlstate
        return code in RETRYABLE_SQLSTATES or code.startswith("08")
    if not isinstance(error, psycopg.OperationalError):
        return False
    # No SQLSTATE: the connection broke or could not be opened; retry unless it was refused.
    message = str(error).lower()
    return not any(refusal in message for refusal in REFUSED_AT_LOGIN)


def insert_once(conn: psycopg.Connection[Any], sql: str, params: Sequence[Any]) -> bool:
    """Run an ``INSERT ... ON CONFLICT DO NOTHING RETURNING ...``; True if it inserted now.

    False means the row was already there: an earlier attempt whose acknowledgement was
    lost had committed it.
    """
    return conn.execute(sql, params).fetchone() is not None  # type: ignore[arg-type]


class Retrying:
    """One connection to ``conninfo``, reopened when it breaks; ``run`` retries transactions."""

    def __init__(
        self, conninfo: str, policy: RetryPolicy | None = None, **connect_kwargs: Any
    ) -> None:
        self.conninfo = conninfo
        self.policy = policy or RetryPolicy()
        self.connect_kwargs = {"connect_timeout": 5, **connect_kwargs}
        self.stats = RetryStats()
        self._conn: psycopg.Connection[Any] | None = None

    def connection(self) -> psycopg.Connection[Any]:
        """The open connection, (re)opened when there is none or it broke."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
                self.stats.reconnects += 1
            self._conn = psycopg.connect(self.conninfo, autocommit=False, **self.connect_kwargs)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Retrying:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def run(self, work: Callable[[psycopg.Connection[Any]], T], retry_ambiguous: bool = True) -> T:
        """Run ``work`` in one transaction and commit; retry per the module's guidance."""
        started = time.monotonic()
        self.stats.runs += 1
        for attempt in range(self.policy.attempts):
            conn: psycopg.Connection[Any] | None = None
            committing = False
            try:
                conn = self.connection()
                result = work(conn)
                committing = True
                conn.commit()
                return result
            except psycopg.Error as error:
                # A COMMIT that failed on a live connection was refused (rolled back); one
                # whose connection broke may have committed before the break.
                lost = conn is not None and (conn.broken or conn.closed)
                self._rollback_quietly()
                if committing and lost:
                    self.stats.ambiguous_commits += 1
                    if not retry_ambiguous:
                        message = f"COMMIT's acknowledgement was lost: {error}"
                        raise AmbiguousCommit(message) from error
                if not (is_retryable(error) or lost):
                    raise
                self.stats.errors.append(f"{type(error).__name__}: {error}".strip()[:200])
                spent = time.monotonic() - started
                pause = self.policy.backoff(attempt)
                if attempt + 1 >= self.policy.attempts or spent + pause > self.policy.deadline_s:
                    raise
                self.stats.retries += 1
                time.sleep(pause)
        raise AssertionError("unreachable: the loop returns or raises")

    def _rollback_quietly(self) -> None:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            try:
                conn.rollback()
            except psycopg.Error:
                conn.close()
