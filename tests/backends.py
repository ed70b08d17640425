"""The peak of Postgres backends while a block runs: one sampler for every burst test."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg


@contextlib.contextmanager
def peak_backends(
    direct_url: str, condition: str, params: tuple[Any, ...] = (), every_s: float = 0.01
) -> Iterator[list[int]]:
    """Count ``pg_stat_activity`` rows matching ``condition`` (SQL, ``%s`` for ``params``) every
    ``every_s`` during the block, over ``direct_url``; the list's one value is the peak seen."""
    peak, done = [0], threading.Event()
    query = f"SELECT count(*) FROM pg_stat_activity WHERE {condition}"

    def sample() -> None:
        with psycopg.connect(direct_url, autocommit=True) as conn:
            while not done.is_set():
                row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
                peak[0] = max(peak[0], int(row[0]) if row else 0)
                done.wait(every_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join(10)
