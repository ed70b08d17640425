"""A write load that can be held still for an instant, so a point in time splits it exactly.

Writers insert one row per transaction (autocommit) and record it only once the commit was
acknowledged. ``hold()`` takes every writer's lock, so no commit is in flight while the test
reads the server's clock: every row acknowledged before is committed before that time, every
row written after is committed after it.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg

DDL = "CREATE TABLE IF NOT EXISTS pitr (writer int, n int, PRIMARY KEY (writer, n))"


class GatedLoad:
    def __init__(self, url: str, writers: int = 4, pause_s: float = 0.002) -> None:
        self.url, self.pause_s = url, pause_s
        self.acked: set[tuple[int, int]] = set()
        self.errors: list[str] = []
        self._locks = [threading.Lock() for _ in range(writers)]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write, args=(i,), daemon=True)
                         for i in range(writers)]  # fmt: skip

    def start(self) -> GatedLoad:
        for thread in self._threads:
            thread.start()
        return self

    def _write(self, writer: int) -> None:
        n = 0
        # prepare_threshold=None: safe on any PgBouncer version in transaction mode.
        with psycopg.connect(self.url, autocommit=True, prepare_threshold=None) as conn:
            while not self._stop.is_set():
                with self._locks[writer]:
                    try:
                        conn.execute("INSERT INTO pitr VALUES (%s, %s)", (writer, n))
                    except psycopg.Error as error:
                        self.errors.append(str(error))
                        return
                    self.acked.add((writer, n))
                n += 1
                time.sleep(self.pause_s)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """No writer commits while inside."""
        for lock in self._locks:
            lock.acquire()
        try:
            yield
        finally:
            for lock in self._locks:
                lock.release()

    def stop(self) -> set[tuple[int, int]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        assert not self.errors, self.errors
        return set(self.acked)


def rows(url: str) -> set[tuple[int, int]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {(w, n) for w, n in conn.execute("SELECT writer, n FROM pitr")}


def server_now(url: str) -> str:
    """The server's clock, ISO 8601 in UTC (what recovery_target_time compares with)."""
    with psycopg.connect(url, autocommit=True) as conn:
        (stamp,) = conn.execute(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
            "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')").fetchone()
    return str(stamp)


def wait_archived(url: str, timeout_s: float) -> float:
    """Wait until the WAL holding every commit so far is in the archive; return the seconds.

    Without a forced switch this is what archive_timeout bounds.
    """
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        (segment,) = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
        while time.monotonic() - started < timeout_s:
            (last,) = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
            if last and last[:24] >= segment:
                return time.monotonic() - started
            time.sleep(0.2)
    raise AssertionError(f"WAL segment {segment} not archived within {timeout_s} s")


@dataclass(frozen=True)
class Timeline:
    """What happened around a backup under load: the rows acknowledged before the time T noted
    between them, all rows acknowledged, and when the last commit reached the repository."""

    taken: subprocess.CompletedProcess[str]
    """The ``poolkit backup`` run."""
    before_t: set[tuple[int, int]]
    target: str
    """T, the server's clock while the load was held."""
    acked: set[tuple[int, int]]
    archived_s: float


def write_around_a_backup(
    run: Callable[..., subprocess.CompletedProcess[str]], direct: str, pooled: str,
    archive_timeout_s: float,
) -> Timeline:  # fmt: skip
    """Under a gated write load through ``pooled``: a full backup, rows, T (noted with the load
    held, so no commit straddles it), more rows; then ``check`` and the wait until the last
    commit is archived. ``run(*args)`` is the target's ``poolkit`` command."""
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute(DDL)
    load = GatedLoad(pooled).start()
    time.sleep(1.0)
    taken = run("backup", "--type", "full")
    time.sleep(1.5)
    with load.hold():
        before_t = set(load.acked)
        target = server_now(direct)
        time.sleep(0.05)
    time.sleep(1.5)
    acked = load.stop()
    assert len(before_t) > 50 and len(acked) > len(before_t) + 50
    run("check")
    return Timeline(taken, before_t, target, acked, wait_archived(direct, archive_timeout_s * 10))
