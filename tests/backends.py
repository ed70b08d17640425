"""The peak of Postgres backends while a block runs, and a burst of short-lived clients measured
by it: one sampler and one burst for every burst test."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Burst:
    """What a burst of short-lived clients saw."""

    peak: int
    """Most backends matching the sampler's condition at once."""
    seconds: float
    errors: Counter[str]
    """``Type: message`` (cut to 80 characters) -> clients that failed so."""
    served: Counter[int]
    """Index in the burst's URLs -> clients served through it."""


def burst_clients(
    urls: Sequence[str],
    clients: int,
    threads: int,
    direct_url: str,
    condition: str,
    params: tuple[Any, ...] = (),
    *,
    sleep_s: float = 0.02,
    **connect: Any,
) -> Burst:
    """``clients`` short-lived clients, ``threads`` at a time, client ``i`` over
    ``urls[i % len(urls)]`` (round-robin, as a Service spreads them): each connects (with
    ``connect``), checks that ``SELECT i`` after ``pg_sleep(sleep_s)`` returns ``i``, and
    leaves. Failures are counted, not raised; ``peak_backends`` samples every 0.02 s."""
    errors, served = Counter[str](), Counter[int]()

    def client(i: int) -> None:
        index = i % len(urls)
        try:
            with psycopg.connect(urls[index], **connect) as conn:
                row = conn.execute("SELECT %s::int FROM pg_sleep(%s)", (i, sleep_s)).fetchone()
                assert row == (i,), row
            served[index] += 1
        except Exception as error:  # counted for the caller
            errors[f"{type(error).__name__}: {str(error).strip()[:80]}"] += 1

    started = time.monotonic()
    with (peak_backends(direct_url, condition, params, every_s=0.02) as peak,
          ThreadPoolExecutor(threads) as pool):  # fmt: skip
        list(pool.map(client, range(clients)))
    return Burst(peak[0], time.monotonic() - started, errors, served)
