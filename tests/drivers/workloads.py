"""Python drivers on their default settings, run the way their docs show, through a ``.env``.

Every workload: ``WORKERS`` concurrent workers, each running ``ROUNDS`` rounds of two
parameterised statements of different shapes (so that one client's prepared statement name can
meet another client's statement on a shared server connection), every result compared with
what that worker asked for. A result that differs counts as wrong; an exception as an error.

The URL is read from the ``.env`` file with python-dotenv, as an application would; nothing
else of poolkit is used here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

WORKERS = 20
ROUNDS = 12
"""psycopg prepares a statement on its 5th execution on a connection; 12 rounds prepare both."""


@dataclass
class Tally:
    """What one workload saw: queries run, results that were not the worker's, errors."""

    driver: str
    queries: int = 0
    wrong: int = 0
    errors: int = 0
    first_problem: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def check(self, got: tuple[Any, ...], expected: tuple[Any, ...]) -> None:
        with self.lock:
            self.queries += 1
            if tuple(got) != expected:
                self.wrong += 1
                self.first_problem = self.first_problem or f"got {tuple(got)}, expected {expected}"

    def failed(self, error: BaseException) -> None:
        with self.lock:
            self.errors += 1
            self.first_problem = self.first_problem or f"{type(error).__name__}: {error}"

    def as_dict(self) -> dict[str, Any]:
        return {"driver": self.driver, "queries": self.queries, "wrong": self.wrong,
                "errors": self.errors, "first_problem": self.first_problem}  # fmt: skip


def expected(worker: int, round_: int) -> tuple[tuple[int, str], tuple[int, str]]:
    """The two statements' results for one round: (n + 7, tag) and (n * 2, tag)."""
    n, tag = worker * 1000 + round_, f"w{worker}r{round_}"
    return (n + 7, tag), (n * 2, tag)


def database_url(env_file: Path) -> str:
    url = dotenv_values(env_file).get("DATABASE_URL")
    if not url:
        raise KeyError(f"DATABASE_URL missing from {env_file}")
    return url


# --- psycopg 3 ------------------------------------------------------------------------------------

PSYCOPG_ADD = "SELECT %s::int + 7, %s::text"
PSYCOPG_DOUBLE = "SELECT %s::int * 2, %s::text"


def _threads(tally: Tally, work: Callable[[int], None]) -> Tally:
    def guarded(worker: int) -> None:
        try:
            work(worker)
        except Exception as error:  # the worker's connection failed: the rest of it is lost
            tally.failed(error)

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        list(pool.map(guarded, range(WORKERS)))
    return tally


def psycopg_connect(url: str) -> Tally:
    """``psycopg.connect(url)`` per worker; a transaction per round, committed."""
    import psycopg

    tally = Tally("psycopg connect")

    def work(worker: int) -> None:
        with psycopg.connect(url) as conn:
            for round_ in range(ROUNDS):
                add, double = expected(worker, round_)
                try:
                    tally.check(conn.execute(PSYCOPG_ADD, (add[0] - 7, add[1])).fetchone(), add)
                    tally.check(conn.execute(PSYCOPG_DOUBLE, (double[0] // 2, double[1]))
                                .fetchone(), double)  # fmt: skip
                    conn.commit()
                except psycopg.Error as error:
                    tally.failed(error)
                    conn.rollback()

    return _threads(tally, work)


def psycopg_pool(url: str) -> Tally:
    """``psycopg_pool.ConnectionPool(url)`` shared by the workers; ``pool.connection()`` a round."""
    import psycopg
    from psycopg_pool import ConnectionPool

    tally = Tally("psycopg_pool")
    with ConnectionPool(url) as pool:

        def work(worker: int) -> None:
            for round_ in range(ROUNDS):
                add, double = expected(worker, round_)
                try:
                    with pool.connection() as conn:
                        tally.check(conn.execute(PSYCOPG_ADD, (add[0] - 7, add[1])).fetchone(),
                                    add)  # fmt: skip
                        tally.check(conn.execute(PSYCOPG_DOUBLE, (double[0] // 2, double[1]))
                                    .fetchone(), double)  # fmt: skip
                except psycopg.Error as error:
                    tally.failed(error)

        return _threads(tally, work)


def sqlalchemy_engine(url: str) -> Tally:
    """SQLAlchemy 2 ``create_engine`` (psycopg 3 dialect, QueuePool); ``engine.begin()`` a round."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    tally = Tally("SQLAlchemy 2")
    engine = create_engine(make_url(url).set(drivername="postgresql+psycopg"))
    add_sql = text("SELECT CAST(:n AS int) + 7, CAST(:tag AS text)")
    double_sql = text("SELECT CAST(:n AS int) * 2, CAST(:tag AS text)")

    def work(worker: int) -> None:
        for round_ in range(ROUNDS):
            add, double = expected(worker, round_)
            try:
                with engine.begin() as conn:
                    tally.check(conn.execute(add_sql, {"n": add[0] - 7, "tag": add[1]}).one(),
                                add)  # fmt: skip
                    tally.check(conn.execute(double_sql, {"n": double[0] // 2,
                                                          "tag": double[1]}).one(), double)
            except SQLAlchemyError as error:
                tally.failed(error)

    try:
        return _threads(tally, work)
    finally:
        engine.dispose()


# --- asyncpg --------------------------------------------------------------------------------------

ASYNCPG_ADD = "SELECT $1::int + 7, $2::text"
ASYNCPG_DOUBLE = "SELECT $1::int * 2, $2::text"


async def _asyncpg_rounds(tally: Tally, fetchrow: Callable[..., Any], worker: int) -> None:
    import asyncpg

    for round_ in range(ROUNDS):
        add, double = expected(worker, round_)
        try:
            tally.check(tuple(await fetchrow(ASYNCPG_ADD, add[0] - 7, add[1])), add)
            tally.check(tuple(await fetchrow(ASYNCPG_DOUBLE, double[0] // 2, double[1])), double)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            tally.failed(error)


def asyncpg_connect(url: str) -> Tally:
    """``asyncpg.connect(url)`` per task; ``conn.fetchrow`` (implicit transactions)."""
    import asyncpg

    tally = Tally("asyncpg connect")

    async def worker_task(worker: int) -> None:
        try:
            conn = await asyncpg.connect(url)
        except Exception as error:
            tally.failed(error)
            return
        try:
            await _asyncpg_rounds(tally, conn.fetchrow, worker)
        finally:
            await conn.close()

    async def main() -> None:
        await asyncio.gather(*(worker_task(w) for w in range(WORKERS)))

    asyncio.run(main())
    return tally


def asyncpg_pool(url: str) -> Tally:
    """``asyncpg.create_pool(url)`` shared by the tasks; ``pool.fetchrow``."""
    import asyncpg

    tally = Tally("asyncpg create_pool")

    async def main() -> None:
        async with asyncpg.create_pool(url) as pool:
            await asyncio.gather(*(_asyncpg_rounds(tally, pool.fetchrow, w)
                                   for w in range(WORKERS)))  # fmt: skip

    asyncio.run(main())
    return tally


PYTHON_DRIVERS: dict[str, Callable[[str], Tally]] = {
    "psycopg-connect": psycopg_connect,
    "psycopg-pool": psycopg_pool,
    "asyncpg-connect": asyncpg_connect,
    "asyncpg-pool": asyncpg_pool,
    "sqlalchemy": sqlalchemy_engine,
}
"""Driver name -> workload; every one on the driver's default settings."""


def run_python(driver: str, env_file: Path) -> Tally:
    return PYTHON_DRIVERS[driver](database_url(env_file))
