"""Client load for the fault tests: writers that follow the kit's retry guidance, and plain
clients that never retry (so every error they see counts)."""

from __future__ import annotations

import itertools
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import psycopg

from poolkit.retry import Retrying, RetryPolicy, RetryStats, insert_once, new_key

WRITES_DDL = """CREATE TABLE IF NOT EXISTS {table} (
    key uuid PRIMARY KEY, writer int NOT NULL, n int NOT NULL, at timestamptz DEFAULT now())"""
INSERT = ("INSERT INTO {table} (key, writer, n) VALUES (%s, %s, %s) "
          "ON CONFLICT (key) DO NOTHING RETURNING key")  # fmt: skip
JOIN_TIMEOUT_S = 40.0


def create_table(direct_url: str, table: str) -> None:
    """As the migrator (owner); the app role gets INSERT/SELECT by default privileges."""
    with psycopg.connect(direct_url, autocommit=True) as conn:
        conn.execute(WRITES_DDL.format(table=table))


@dataclass
class Verdict:
    """Acknowledged writes against what the table holds."""

    acked: int
    distinct_acked: int
    rows: int
    missing: int
    """Acknowledged but not in the table: lost writes."""
    unacked_rows: int
    """In the table but never acknowledged (a write still in flight when the load stopped)."""


class _Clients:
    """``count`` daemon threads running ``client(i)`` until ``stop``: started on entering the
    block, stopped on leaving it."""

    def __init__(self, client: Callable[[int], None], count: int) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=client, args=(i,), daemon=True)
                         for i in range(count)]  # fmt: skip

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S)


class WriteLoad(_Clients):
    """``writers`` threads inserting through the pooled URL with ``poolkit.retry.Retrying``.

    Each write has a client-generated key; a key is recorded as acknowledged only once
    ``Retrying.run`` returned. Errors that escape the retries are kept, not raised.
    """

    def __init__(self, pooled_url: str, table: str, writers: int = 6,
                 policy: RetryPolicy | None = None) -> None:  # fmt: skip
        self.url, self.table, self.count = pooled_url, table, writers
        self.policy = policy or RetryPolicy(attempts=400, deadline_s=45.0, max_backoff_s=0.5)
        self.acked: list[uuid.UUID] = []
        self.acked_at: list[float] = []
        """``time.monotonic()`` of each acknowledgement, in order."""
        self.failures: list[str] = []
        self.stats: list[RetryStats] = []
        super().__init__(self._write, writers)

    def stop(self) -> None:
        super().stop()
        assert not any(t.is_alive() for t in self._threads), "a writer did not stop"

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def wait_progress(self, more: int, timeout: float) -> float:
        """Seconds until ``more`` further writes were acknowledged (fails on timeout)."""
        start, target = time.monotonic(), self.acked_count() + more
        while self.acked_count() < target:
            if time.monotonic() - start > timeout:
                raise AssertionError(
                    f"writes stalled: {self.acked_count()} of {target} "
                    f"after {timeout} s; failures: {self.failures[:3]}"
                )
            time.sleep(0.01)
        return time.monotonic() - start

    def longest_wait(self, start: float, end: float) -> float:
        """Longest stretch of ``[start, end]`` (monotonic seconds) with no acknowledged write:
        how long the clients waited during a change."""
        with self._lock:
            times = [start, *(t for t in self.acked_at if start < t < end), end]
        return max(b - a for a, b in itertools.pairwise(times))

    def _write(self, writer: int) -> None:
        sql = INSERT.format(table=self.table)
        db = Retrying(self.url, self.policy, prepare_threshold=None)
        n = 0
        try:
            while not self._stop.is_set():
                key = new_key()
                try:
                    db.run(lambda conn, key=key, n=n: insert_once(conn, sql, (key, writer, n)))
                except psycopg.Error as error:
                    self.failures.append(f"writer {writer}: {type(error).__name__}: {error}")
                    return
                with self._lock:
                    self.acked.append(key)
                    self.acked_at.append(time.monotonic())
                n += 1
        finally:
            self.stats.append(db.stats)
            db.close()

    def verdict(self, direct_url: str) -> Verdict:
        with psycopg.connect(direct_url) as conn:
            keys = [row[0] for row in conn.execute(f"SELECT key FROM {self.table}")]
        found, acked = set(keys), set(self.acked)
        return Verdict(acked=len(self.acked), distinct_acked=len(acked), rows=len(keys),
                       missing=len(acked - found), unacked_rows=len(found - acked))  # fmt: skip

    def totals(self) -> dict[str, int]:
        return {"retries": sum(s.retries for s in self.stats),
                "reconnects": sum(s.reconnects for s in self.stats),
                "ambiguous_commits": sum(s.ambiguous_commits for s in self.stats)}  # fmt: skip


@dataclass
class Latencies:
    samples: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.samples)
        return {"transactions": len(ordered), "errors": len(self.errors),
                "p50_ms": round(statistics.median(ordered) * 1000, 1) if ordered else None,
                "max_ms": round(ordered[-1] * 1000, 1) if ordered else None}  # fmt: skip


class PlainLoad(_Clients):
    """``clients`` threads, each holding one pooled connection (Lambda style) and running short
    write transactions in a loop, with no retry at all: any error is a dropped client."""

    def __init__(self, pooled_url: str, table: str, clients: int = 8) -> None:
        self.url, self.table = pooled_url, table
        self.result = Latencies()
        self._ready = threading.Barrier(clients + 1, timeout=30)
        super().__init__(self._client, clients)

    def __enter__(self) -> Self:
        super().__enter__()
        self._ready.wait()  # every client connected
        return self

    def count(self) -> int:
        with self._lock:
            return len(self.result.samples)

    def _client(self, client: int) -> None:
        sql = INSERT.format(table=self.table)
        try:
            conn = psycopg.connect(self.url, prepare_threshold=None, connect_timeout=5,
                                   application_name=f"plain-{client}")  # fmt: skip
        except psycopg.Error as error:
            self.result.errors.append(f"connect: {error}")
            self._ready.abort()
            return
        self._ready.wait()
        n = 0
        with conn:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    with conn.transaction():
                        conn.execute(sql, (new_key(), client, n))
                        conn.execute("SELECT count(*) FROM pg_class")
                except psycopg.Error as error:
                    with self._lock:
                        self.result.errors.append(f"client {client}: {error}")
                    return
                with self._lock:
                    self.result.samples.append(time.perf_counter() - started)
                n += 1
