"""Serverless burst simulator: a fleet of function instances against one URL on 127.0.0.1.

What a traffic spike does to a database, reproduced with real psycopg connections:

- **cold starts**: instance ``i`` of ``instances`` starts ``ramp_s * i / instances`` seconds
  into the spike and opens its own connection (the client created outside the handler);
- **warm reuse**: it then serves invocations on that connection, Lambda style, with an idle
  gap of about ``think_s`` between them; a failed invocation drops the connection and the next
  one cold-starts again (what a function runtime does after an error);
- **zombies**: ``zombies`` extra instances connect before the spike, serve one invocation and
  then sit idle holding their connection (frozen instances that were never shut down).

Instances are coroutines on an asyncio loop (psycopg ``AsyncConnection``): 1,000 concurrent
instances cost one thread. A cold start's SCRAM proof is CPU work in libpq, done on that
loop, so the spike is spread over ``workers`` processes (one per CPU, at most 4) started at
the same instant. The run is bounded in time (``duration_s``, at most ``MAX_DURATION_S``)
and in count (``invocations``, ``MAX_INSTANCES``), and it refuses URLs that do not point at
the loopback interface.

Figures: invocations, errors by kind, latency percentiles of successful invocations (a cold
invocation includes its connect), connect latency, peak Postgres backends (one sampler
connection through ``DIRECT_URL``, itself excluded) and peak clients, waiting clients and
servers at PgBouncer (``SHOW POOLS`` through ``PGBOUNCER_STATS_URL``).

Why one module of about 670 lines: the spec, the fleet, the samplers and the result are one
simulation whose figures depend on all four (the samplers run beside the fleet on its loop);
the timeline PNG (issue 15) is still to land here, and the split by part is best made after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from poolkit.envfile import read_env
from poolkit.launch import raise_nofile
from poolkit.urls import mask

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_INSTANCES = 5000
MAX_ZOMBIES = 5000
MAX_DURATION_S = 600.0
DEFAULT_DURATION_S = 10.0
INVOCATIONS_DURATION_S = 120.0
"""The time bound of a run sized by --invocations."""
QUERY = "SELECT 1"
"""One short transaction per invocation (autocommit): the shape of a typical handler's read."""
SAMPLE_EVERY_S = 0.05
STOP_GRACE_S = 10.0
"""Time allowed after the deadline for in-flight invocations and closing connections."""
ZOMBIE_CONNECT_S = 30.0
"""At most this long for the zombies to connect before the spike starts anyway."""
WORKER_START_S = 1.0
"""Head start for worker processes to spawn and import before the common start time."""
MAX_WORKERS = 16

TOO_MANY = "too_many_clients"
WAIT_TIMEOUT = "query_wait_timeout"
TIMEOUT = "timeout"
OTHER = "other"
ERROR_KINDS = (TOO_MANY, WAIT_TIMEOUT, TIMEOUT, OTHER)
TARGET_VARS = {"pooled": "POOLED_DATABASE_URL", "direct": "DIRECT_URL"}


def default_workers() -> int:
    """One simulator process per CPU, at most 4: the servers under test need CPU too."""
    return max(1, min(4, os.cpu_count() or 1))


class BurstInputError(ValueError):
    """The env file or the URL cannot be used (missing variable, not on 127.0.0.1)."""


@dataclass(frozen=True)
class BurstSpec:
    """The shape of one simulated spike."""

    instances: int = 1000
    """Concurrent function instances at the top of the spike."""
    duration_s: float = DEFAULT_DURATION_S
    """Wall time of the spike (cold starts included); the run always stops by then."""
    invocations: int | None = None
    """Stop earlier, after this many invocations in all (zombies' included)."""
    zombies: int = 0
    """Idle instances that connect before the spike and hold their connection."""
    ramp_s: float = 1.0
    """Cold starts are spread evenly over this window (0: all at once)."""
    think_s: float = 0.5
    """Mean idle time of an instance between two invocations (uniform 0.5x..1.5x)."""
    connect_timeout_s: int = 10
    """libpq connect_timeout of each instance."""
    invocation_timeout_s: float = 15.0
    """An invocation (connect + query) taking longer counts as a ``timeout`` error."""
    prepare: bool = False
    """Server-side prepares allowed: only when PGBOUNCER_PREPARED_STATEMENTS=on."""
    query: str = QUERY
    """What one invocation runs (``SELECT pg_sleep(1)`` holds a server like a slow handler)."""
    workers: int = field(default_factory=lambda: default_workers())
    """Processes the spike's instances are spread over (each its own asyncio loop). One loop
    computes every cold start's SCRAM proof in turn; on a multi-core machine more than one
    keeps the simulator's own CPU from being the queue the figures measure."""
    seed: int = 1

    def check(self) -> None:
        problems = []
        if not 1 <= self.instances <= MAX_INSTANCES:
            problems.append(f"instances must be 1..{MAX_INSTANCES} (got {self.instances})")
        if not 0 <= self.zombies <= MAX_ZOMBIES:
            problems.append(f"zombies must be 0..{MAX_ZOMBIES} (got {self.zombies})")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            problems.append(f"duration must be in (0, {MAX_DURATION_S:.0f}] s "
                            f"(got {self.duration_s})")  # fmt: skip
        if self.invocations is not None and self.invocations < 1:
            problems.append(f"invocations must be at least 1 (got {self.invocations})")
        if not 0 <= self.ramp_s < self.duration_s:
            problems.append(f"ramp must be 0 or more and shorter than the duration "
                            f"(got {self.ramp_s})")  # fmt: skip
        if not 1 <= self.workers <= MAX_WORKERS:
            problems.append(f"workers must be 1..{MAX_WORKERS} (got {self.workers})")
        if self.think_s < 0:
            problems.append(f"think time must be 0 or more (got {self.think_s})")
        if problems:
            raise BurstInputError("; ".join(problems))


@dataclass
class TimelinePoint:
    """One sample of the run: seconds since the spike began and what was counted then."""

    t: float
    waiting: int | None = None
    """Clients waiting for a server at PgBouncer (cl_waiting of the database)."""
    servers_active: int | None = None
    """Server connections running a transaction for the database (sv_active)."""
    backends: int | None = None
    """Client backends in pg_stat_activity (the sampler excluded)."""
    errors: int = 0
    """Errors of the fleet since the previous sample."""


@dataclass
class BurstResult:
    """Figures of one run against one URL."""

    label: str
    endpoint: str
    """``user@host:port/dbname`` of the URL under test (no password)."""
    instances: int
    zombies: int
    seconds: float
    invocations: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    error_examples: dict[str, str] = field(default_factory=dict)
    cold_starts: int = 0
    zombies_connected: int = 0
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    """Successful invocations; a cold one includes its connect."""
    warm_latency_ms: dict[str, float | None] = field(default_factory=dict)
    """Successful invocations on an instance's open connection only."""
    connect_ms: dict[str, float | None] = field(default_factory=dict)
    throughput: float = 0.0
    """Successful invocations per second of wall time."""
    peak_backends: int | None = None
    """Client backends in pg_stat_activity at the busiest sample, the sampler excluded."""
    peak_backends_by_user: dict[str, int] = field(default_factory=dict)
    peak_backends_of_user: int | None = None
    """Backends of the role the URL under test logs in as (what this burst caused)."""
    peak_clients: int | None = None
    """Client connections of the database's pools at PgBouncer (cl_active + cl_waiting)."""
    peak_waiting: int | None = None
    peak_servers: int | None = None
    samples: int = 0
    workers: int = 1
    notes: list[str] = field(default_factory=list)
    timeline: list[TimelinePoint] = field(default_factory=list)
    """What the samplers saw over time (every SAMPLE_EVERY_S), errors per sample included."""

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    def as_dict(self, with_timeline: bool = False) -> dict[str, Any]:
        """The figures; the timeline (one point per sample) only when asked for."""
        figures = asdict(self) | {"error_total": self.error_total}
        if not with_timeline:
            del figures["timeline"]
        return figures

    def lines(self) -> list[str]:
        """A short human-readable report."""
        lat, con = self.latency_ms, self.connect_ms
        errors = ", ".join(f"{k} {v}" for k, v in self.errors.items() if v) or "none"
        lines = [
            f"{self.label}: {self.endpoint}",
            f"  {self.instances} instances + {self.zombies} zombies for {self.seconds:.1f} s: "
            f"{self.invocations} invocations, {self.ok} ok ({self.throughput:.0f}/s), "
            f"{self.cold_starts} cold starts",
            f"  errors: {errors}",
            f"  latency ms p50 {_fmt(lat.get('p50'))} p95 {_fmt(lat.get('p95'))} "
            f"p99 {_fmt(lat.get('p99'))} max {_fmt(lat.get('max'))}; warm p99 "
            f"{_fmt(self.warm_latency_ms.get('p99'))}; connect ms p50 {_fmt(con.get('p50'))} "
            f"p99 {_fmt(con.get('p99'))}",
            f"  peak Postgres backends {_fmt(self.peak_backends)}, of this URL's role "
            f"{_fmt(self.peak_backends_of_user)} "
            f"({', '.join(f'{u} {n}' for u, n in sorted(self.peak_backends_by_user.items()))})"
            f"; PgBouncer peak clients {_fmt(self.peak_clients)}, waiting "
            f"{_fmt(self.peak_waiting)}, servers {_fmt(self.peak_servers)}",
        ]
        lines += [f"  {kind} e.g.: {text}" for kind, text in self.error_examples.items()]
        lines += [f"  note: {note}" for note in self.notes]
        return lines


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if float(value).is_integer() or value >= 100 else f"{value:.1f}"


def percentiles(values: Sequence[float], scale: float = 1000.0) -> dict[str, float | None]:
    """p50/p95/p99/max by nearest rank, scaled (seconds -> ms by default)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * scale, 2)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": rank(1.0)}


def classify(error: BaseException) -> str:
    """Sort an error into one of ERROR_KINDS from its SQLSTATE or message."""
    if isinstance(error, TimeoutError):
        return TIMEOUT
    text = str(error).lower()
    sqlstate = getattr(error, "sqlstate", None)
    if "query_wait_timeout" in text:
        return WAIT_TIMEOUT
    if (
        sqlstate == "53300"
        or "too many clients" in text
        or "remaining connection slots are reserved" in text
        or "no more connections allowed" in text  # PgBouncer's max_client_conn
    ):
        return TOO_MANY
    if (
        sqlstate == "57014"
        or "timeout expired" in text
        or "timed out" in text
        or "connection timeout" in text
    ):
        return TIMEOUT
    return OTHER


def endpoint_of(url: str) -> str:
    """``user@host:port/dbname`` of a URL, for reports."""
    parts = conninfo_to_dict(url)
    return (f"{parts.get('user', '?')}@{parts.get('host', '?')}:{parts.get('port', '5432')}"
            f"/{parts.get('dbname', '?')}")  # fmt: skip


def require_loopback(url: str, what: str) -> None:
    """Refuse any URL whose host is not the loopback interface."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        raise BurstInputError(f"{what} is not a valid connection URL: {mask(str(error))}") from None
    hosts = [h for key in ("host", "hostaddr") for h in str(parts.get(key, "")).split(",") if h]
    if not hosts or any(h not in LOOPBACK for h in hosts):
        raise BurstInputError(f"{what} points at {','.join(hosts) or 'a default host'}: the "
                              "burst simulator only sends traffic to 127.0.0.1")  # fmt: skip


@dataclass(frozen=True)
class Urls:
    """The URLs of one run: the one under test and where to sample from."""

    target: str
    direct: str | None = None
    """Sampler of pg_stat_activity (DIRECT_URL, a pg_monitor role)."""
    stats: str | None = None
    """PgBouncer console of the pooler under test, or None for the direct target."""

    def check(self) -> None:
        require_loopback(self.target, "the URL under test")
        for url, what in ((self.direct, "DIRECT_URL"), (self.stats, "PGBOUNCER_STATS_URL")):
            if url:
                require_loopback(url, what)


def urls_from_env(env: Mapping[str, str], target: str) -> Urls:
    """The URLs of ``target`` (pooled | direct) from a poolkit ``.env``."""
    if target not in TARGET_VARS:
        raise BurstInputError(f"target must be one of {', '.join(TARGET_VARS)} (got {target!r})")
    variable = TARGET_VARS[target]
    missing = [k for k in (variable, "DIRECT_URL") if not env.get(k)]
    if missing:
        raise BurstInputError(f"the env file lacks {', '.join(missing)}")
    stats = env.get("PGBOUNCER_STATS_URL") if target == "pooled" else None
    return Urls(target=env[variable], direct=env["DIRECT_URL"], stats=stats or None)


def prepare_from_env(env: Mapping[str, str]) -> bool:
    """Whether the kit allows server-side prepares (``PGBOUNCER_PREPARED_STATEMENTS=on``)."""
    return env.get("PGBOUNCER_PREPARED_STATEMENTS", "off").lower() == "on"


# --- the fleet -------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one fleet (one process) counted; merged across worker processes."""

    started: int = 0
    ok: int = 0
    cold_starts: int = 0
    connected: int = 0
    latencies: list[float] = field(default_factory=list)
    """Successful invocations, cold and warm."""
    warm: list[float] = field(default_factory=list)
    """Successful invocations that reused the instance's connection."""
    connects: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    error_times: list[float] = field(default_factory=list)
    """Wall-clock time (epoch seconds) of each error, for the timeline."""

    def merge(self, other: Tally) -> None:
        self.started += other.started
        self.ok += other.ok
        self.cold_starts += other.cold_starts
        self.connected += other.connected
        self.latencies += other.latencies
        self.warm += other.warm
        self.connects += other.connects
        self.errors.update(other.errors)
        self.error_times += other.error_times
        for kind, text in other.examples.items():
            self.examples.setdefault(kind, text)


class _Fleet:
    """Instances sharing one asyncio loop, one deadline and one invocation budget."""

    def __init__(self, url: str, spec: BurstSpec, deadline: float, budget: int | None):
        self.url = url
        self.spec = spec
        self.deadline = deadline
        self.budget = budget
        self.stop = asyncio.Event()
        self.tally = Tally()
        self.random = random.Random(spec.seed)

    def take(self) -> bool:
        """Claim one invocation of the budget; False once the run is over."""
        if self.stop.is_set():
            return False
        if time.monotonic() >= self.deadline or (
            self.budget is not None and self.tally.started >= self.budget
        ):
            self.stop.set()
            return False
        self.tally.started += 1
        return True

    async def pause(self, seconds: float) -> bool:
        """Sleep, waking early when the run stops; True while it goes on."""
        seconds = min(seconds, max(0.0, self.deadline - time.monotonic()))
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), seconds)
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def record_error(self, error: BaseException) -> None:
        kind = classify(error)
        self.tally.errors[kind] += 1
        self.tally.error_times.append(time.time())
        if kind not in self.tally.examples:
            text = str(error).strip().splitlines()[0] if str(error).strip() else ""
            self.tally.examples[kind] = mask(f"{type(error).__name__}: {text}")[:200]

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        started = time.monotonic()
        conn = await psycopg.AsyncConnection.connect(
            self.url,
            autocommit=True,
            prepare_threshold=5 if self.spec.prepare else None,
            connect_timeout=self.spec.connect_timeout_s,
        )
        self.tally.connects.append(time.monotonic() - started)
        self.tally.cold_starts += 1
        return conn

    async def invoke(
        self, conn: psycopg.AsyncConnection[Any] | None
    ) -> psycopg.AsyncConnection[Any] | None:
        """One invocation: cold start if needed, one query. Returns the connection to keep."""
        started = time.monotonic()
        warm = conn is not None
        try:
            async with asyncio.timeout(self.spec.invocation_timeout_s):
                if conn is None:
                    conn = await self.connect()
                cursor = await conn.execute(self.spec.query)  # type: ignore[arg-type]
                await cursor.fetchone()
        except (psycopg.Error, OSError, TimeoutError) as error:
            self.record_error(error)
            await _close(conn)
            return None
        self.tally.latencies.append(time.monotonic() - started)
        if warm:
            self.tally.warm.append(self.tally.latencies[-1])
        self.tally.ok += 1
        return conn

    async def instance(self, delay: float) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            if not await self.pause(delay):
                return
            while self.take():
                conn = await self.invoke(conn)
                gap = self.spec.think_s * self.random.uniform(0.5, 1.5)
                if not await self.pause(gap):
                    break
        finally:
            await _close(conn)

    async def zombie(self, connected: asyncio.Event) -> None:
        """Serve one invocation, then hold the connection idle until the run stops."""
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            if self.take():
                conn = await self.invoke(None)
            if conn is not None:
                self.tally.connected += 1
            connected.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), max(0.0, self.deadline - time.monotonic()))
        finally:
            connected.set()
            await _close(conn)

    async def settle(self, tasks: Sequence[asyncio.Task[None]]) -> None:
        """Stop the fleet and wait (bounded) for its tasks to close their connections."""
        self.stop.set()
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _close(conn: psycopg.AsyncConnection[Any] | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 5)


async def spike(url: str, spec: BurstSpec, indices: Sequence[int], seconds: float,
                budget: int | None) -> Tally:
    """Instances ``indices`` of the spike (instance i cold-starts at ramp * i / instances)."""
    fleet = _Fleet(url, spec, time.monotonic() + seconds, budget)
    step = spec.ramp_s / spec.instances
    tasks = [asyncio.create_task(fleet.instance(i * step)) for i in indices]
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fleet.stop.wait(), seconds)
    finally:
        await fleet.settle(tasks)
    return fleet.tally  # fmt: skip


def _worker(url: str, spec: BurstSpec, indices: list[int], start_epoch: float,
            budget: int | None) -> Tally:
    """Process entry: wait for the common start, then run this share of the spike."""
    raise_nofile(len(indices) + 64)
    time.sleep(max(0.0, start_epoch - time.time()))
    seconds = max(0.01, start_epoch + spec.duration_s - time.time())
    return asyncio.run(spike(url, spec, indices, seconds, budget))  # fmt: skip


async def _spike_in_workers(url: str, spec: BurstSpec) -> Tally:
    """The spike split over ``spec.workers`` processes (instance i goes to worker i mod W)."""
    workers = min(spec.workers, spec.instances)
    shares = [list(range(w, spec.instances, workers)) for w in range(workers)]
    budgets: list[int | None] = [None] * workers
    if spec.invocations is not None:
        budgets = [spec.invocations // workers + (w < spec.invocations % workers)
                   for w in range(workers)]  # fmt: skip
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        start_epoch = time.time() + WORKER_START_S
        futures = [
            loop.run_in_executor(pool, _worker, url, spec, share, start_epoch, budget)
            for share, budget in zip(shares, budgets, strict=True)
        ]
        timeout = WORKER_START_S + spec.duration_s + 2 * STOP_GRACE_S
        tallies = await asyncio.wait_for(asyncio.gather(*futures), timeout)
    total = Tally()
    for tally in tallies:
        total.merge(tally)
    return total


# --- samplers --------------------------------------------------------------------------------

_BACKENDS_SQL = """
SELECT coalesce(usename, '?'), count(*) FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
 GROUP BY 1
"""


class _Sampler:
    """One connection each to Postgres (DIRECT_URL) and to PgBouncer's console; peaks only."""

    def __init__(self, urls: Urls, database: str):
        self.urls = urls
        self.database = database
        self.direct: psycopg.AsyncConnection[Any] | None = None
        self.stats: psycopg.AsyncConnection[Any] | None = None
        self.peak_backends: int | None = None
        self.peak_by_user: dict[str, int] = {}
        self.peak_clients: int | None = None
        self.peak_waiting: int | None = None
        self.peak_servers: int | None = None
        self.samples = 0
        self.notes: list[str] = []
        self.timeline: list[TimelinePoint] = []
        """Filled in when the run is over; ``points`` holds (epoch, waiting, active, backends)."""
        self.points: list[tuple[float, int | None, int | None, int | None]] = []

    async def open(self) -> None:
        if self.urls.direct:
            try:
                self.direct = await psycopg.AsyncConnection.connect(
                    self.urls.direct, autocommit=True, prepare_threshold=None, connect_timeout=5
                )
            except psycopg.Error as error:
                self.notes.append(f"no backend sampling: {mask(str(error)).strip()[:160]}")
        if self.urls.stats:
            try:
                self.stats = await psycopg.AsyncConnection.connect(
                    self.urls.stats, autocommit=True, prepare_threshold=None, connect_timeout=5
                )
            except psycopg.Error as error:
                self.notes.append(f"no PgBouncer sampling: {mask(str(error)).strip()[:160]}")

    async def sample(self) -> None:
        self.samples += 1
        total: int | None = None
        waiting: int | None = None
        active: int | None = None
        if self.direct is not None:
            try:
                rows = await (await self.direct.execute(_BACKENDS_SQL)).fetchall()
                total = sum(int(n) for _, n in rows)
                self.peak_backends = max(self.peak_backends or 0, total)
                for user, count in rows:
                    self.peak_by_user[user] = max(self.peak_by_user.get(user, 0), int(count))
            except psycopg.Error as error:
                self.notes.append(f"backend sampling stopped: {mask(str(error)).strip()[:160]}")
                await _close(self.direct)
                self.direct = None
        if self.stats is not None:
            try:
                cursor = await self.stats.execute("SHOW POOLS")
                names = [c.name for c in cursor.description or ()]
                rows = [dict(zip(names, r, strict=True)) for r in await cursor.fetchall()]
                ours = [r for r in rows if r["database"] == self.database]
                clients = sum(int(r["cl_active"]) + int(r["cl_waiting"]) for r in ours)
                waiting = sum(int(r["cl_waiting"]) for r in ours)
                active = sum(int(r["sv_active"]) for r in ours)
                servers = sum(
                    int(r.get(k) or 0)
                    for r in ours
                    for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
                )
                self.peak_clients = max(self.peak_clients or 0, clients)
                self.peak_waiting = max(self.peak_waiting or 0, waiting)
                self.peak_servers = max(self.peak_servers or 0, servers)
            except psycopg.Error as error:
                self.notes.append(f"PgBouncer sampling stopped: {mask(str(error)).strip()[:160]}")
                await _close(self.stats)
                self.stats = None
        self.points.append((time.time(), waiting, active, total))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)

    async def close(self) -> None:
        await _close(self.direct)
        await _close(self.stats)


# --- one run ---------------------------------------------------------------------------------


async def run_burst_async(urls: Urls, spec: BurstSpec, label: str = "burst") -> BurstResult:
    """Run one spike against ``urls.target`` and return its figures.

    Zombies connect first (in this process) and stay idle through the spike; the spike runs
    here or, with ``spec.workers > 1``, in that many processes started at once.
    """
    spec.check()
    urls.check()
    raise_nofile(spec.instances + spec.zombies + 64)
    target = conninfo_to_dict(urls.target)
    database, user = str(target.get("dbname", "")), str(target.get("user", ""))
    sampler = _Sampler(urls, database)
    await sampler.open()
    stop_sampling = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop_sampling))
    zombie_budget = min(spec.zombies, spec.invocations or spec.zombies)
    zombies = _Fleet(urls.target, spec, time.monotonic() + ZOMBIE_CONNECT_S + spec.duration_s
                     + 2 * STOP_GRACE_S, zombie_budget)  # fmt: skip
    zombie_tasks: list[asyncio.Task[None]] = []
    tally = Tally()
    began = time.monotonic()
    began_epoch = time.time()
    try:
        if spec.zombies:
            events = [asyncio.Event() for _ in range(spec.zombies)]
            zombie_tasks = [asyncio.create_task(zombies.zombie(e)) for e in events]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)),
                                       ZOMBIE_CONNECT_S)  # fmt: skip
        remaining = None if spec.invocations is None else spec.invocations - zombies.tally.started
        spike_spec = spec if remaining is None else replace(spec, invocations=max(1, remaining))
        began = time.monotonic()
        began_epoch = time.time() + (WORKER_START_S if spec.workers > 1 else 0.0)
        if remaining is not None and remaining <= 0:
            pass  # the zombies used up the invocation budget
        elif spec.workers > 1:
            tally = await _spike_in_workers(urls.target, spike_spec)
            began += WORKER_START_S
        else:
            tally = await spike(urls.target, spike_spec, range(spec.instances), spec.duration_s,
                                spike_spec.invocations)  # fmt: skip
        seconds = min(spec.duration_s, max(0.0, time.monotonic() - began))
        await sampler.sample()
    finally:
        await zombies.settle(zombie_tasks)
        stop_sampling.set()
        await asyncio.gather(sampling, return_exceptions=True)
        await sampler.close()
    tally.merge(zombies.tally)
    result = BurstResult(
        label=label,
        endpoint=endpoint_of(urls.target),
        instances=spec.instances,
        zombies=spec.zombies,
        seconds=round(seconds, 2),
        invocations=tally.started,
        ok=tally.ok,
        errors={kind: tally.errors.get(kind, 0) for kind in ERROR_KINDS},
        error_examples=tally.examples,
        cold_starts=tally.cold_starts,
        zombies_connected=zombies.tally.connected,
        latency_ms=percentiles(tally.latencies),
        warm_latency_ms=percentiles(tally.warm),
        connect_ms=percentiles(tally.connects),
        throughput=round(tally.ok / seconds, 1) if seconds else 0.0,
        peak_backends=sampler.peak_backends,
        peak_backends_by_user=sampler.peak_by_user,
        peak_backends_of_user=(sampler.peak_by_user.get(user, 0)
                               if sampler.peak_backends is not None else None),
        peak_clients=sampler.peak_clients,
        peak_waiting=sampler.peak_waiting,
        peak_servers=sampler.peak_servers,
        samples=sampler.samples,
        workers=spec.workers,
        notes=[*dict.fromkeys(sampler.notes)],
        timeline=timeline(sampler.points, tally.error_times, began_epoch),
    )
    unfinished = tally.started - tally.ok - sum(tally.errors.values())
    if unfinished:
        result.notes.append(f"{unfinished} invocations were still running at the deadline "
                            "and are counted neither as ok nor as errors")  # fmt: skip
    return result


def timeline(
    points: Sequence[tuple[float, int | None, int | None, int | None]],
    error_times: Sequence[float],
    began_epoch: float,
) -> list[TimelinePoint]:
    """Samples as seconds since the spike began, each with the errors since the one before."""
    errors = sorted(error_times)
    result, seen = [], 0
    for at, waiting, active, backends in points:
        upto = seen
        while upto < len(errors) and errors[upto] <= at:
            upto += 1
        result.append(TimelinePoint(round(at - began_epoch, 3), waiting, active, backends,
                                    upto - seen))  # fmt: skip
        seen = upto
    return result


def run_burst(urls: Urls, spec: BurstSpec, label: str = "burst") -> BurstResult:
    """Synchronous wrapper of :func:`run_burst_async`."""
    return asyncio.run(run_burst_async(urls, spec, label))


def run_from_env_file(path: Path, target: str, spec: BurstSpec) -> BurstResult:
    """Run a spike against ``target`` (pooled | direct) of the stack described by ``path``."""
    env = read_env(path)
    urls = urls_from_env(env, target)
    return run_burst(urls, replace(spec, prepare=prepare_from_env(env)), label=target)
