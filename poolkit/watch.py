"""``poolkit status --watch``: a live view of PgBouncer's pools and Postgres' connections.

Reads the stack's ``.env`` URLs: ``PGBOUNCER_STATS_URL`` (the read-only console user: SHOW
POOLS, SHOW STATS) and ``DIRECT_URL`` (a pg_monitor role: pg_stat_activity), once a second,
and redraws one table with rich's ``Live``. Transactions per second come from the difference
of ``total_xact_count`` between two reads. Ctrl-C ends it cleanly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from poolkit.burst import require_loopback
from poolkit.urls import mask

REFRESH_S = 1.0
SUMMED = ("cl_active", "cl_waiting", "sv_active", "sv_idle")
"""SHOW POOLS counters added up over the PgBouncer processes of one pooler."""
_BACKENDS_SQL = """
SELECT count(*) FILTER (WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()),
       current_setting('max_connections')::int
  FROM pg_stat_activity
"""


@dataclass(frozen=True)
class Snapshot:
    """One read of the console and of Postgres."""

    at: float
    pools: list[dict[str, Any]] = field(default_factory=list)
    transactions: dict[str, int] = field(default_factory=dict)
    """total_xact_count per database (SHOW STATS)."""
    backends: int | None = None
    max_connections: int | None = None
    problems: list[str] = field(default_factory=list)


def _rows(conn: psycopg.Connection[Any], command: str) -> list[dict[str, Any]]:
    cursor = conn.execute(command)
    names = [c.name for c in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


class Reader:
    """Keeps one console and one Postgres connection open; reconnects after a failure."""

    def __init__(self, stats_urls: Sequence[str], direct_url: str | None):
        self.urls = {f"PgBouncer {n}": url for n, url in enumerate(stats_urls, 1)}
        self.urls["Postgres"] = direct_url
        self.conns: dict[str, psycopg.Connection[Any] | None] = dict.fromkeys(self.urls)

    def _conn(self, which: str) -> psycopg.Connection[Any] | None:
        if self.conns[which] is None and self.urls[which]:
            self.conns[which] = psycopg.connect(self.urls[which], autocommit=True,  # type: ignore[arg-type]
                                                prepare_threshold=None, connect_timeout=3)
        return self.conns[which]

    def read(self) -> Snapshot:
        snapshot = Snapshot(at=time.monotonic())
        for which in self.urls:
            try:
                conn = self._conn(which)
                if conn is None:
                    continue
                if which != "Postgres":
                    snapshot.pools.extend(r for r in _rows(conn, "SHOW POOLS")
                                          if r["database"] != "pgbouncer")  # fmt: skip
                    for row in _rows(conn, "SHOW STATS"):
                        database = row["database"]
                        snapshot.transactions[database] = (snapshot.transactions.get(database, 0)
                                                           + int(row["total_xact_count"]))
                else:
                    backends, limit = conn.execute(_BACKENDS_SQL).fetchone()  # type: ignore[misc]
                    snapshot = Snapshot(snapshot.at, snapshot.pools, snapshot.transactions,
                                        int(backends), int(limit), snapshot.problems)  # fmt: skip
            except psycopg.Error as error:
                snapshot.problems.append(f"{which}: {mask(str(error)).strip().splitlines()[0]}")
                self.close(which)
        return dataclasses.replace(snapshot, pools=merged(snapshot.pools))

    def close(self, which: str | None = None) -> None:
        for name in [which] if which else list(self.conns):
            conn = self.conns[name]
            self.conns[name] = None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()


def merged(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per pool over every PgBouncer process: counters summed, the longest maxwait."""
    pools: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["database"], row["user"])
        if key not in pools:
            pools[key] = dict(row)
            continue
        pool = pools[key]
        for counter in SUMMED:
            pool[counter] = int(pool[counter]) + int(row[counter])
        if _wait(row) > _wait(pool):
            pool["maxwait"], pool["maxwait_us"] = row["maxwait"], row.get("maxwait_us")
    return list(pools.values())


def _wait(pool: dict[str, Any]) -> float:
    return int(pool["maxwait"]) + int(pool.get("maxwait_us") or 0) / 1e6


def rate(before: Snapshot | None, now: Snapshot, database: str) -> float | None:
    """Transactions per second of ``database`` between two snapshots."""
    if before is None or database not in before.transactions or database not in now.transactions:
        return None
    seconds = now.at - before.at
    return max(0, now.transactions[database] - before.transactions[database]) / seconds


def view(title: str, before: Snapshot | None, now: Snapshot) -> Group:
    """The table of pools, then Postgres' connections against max_connections."""
    table = Table(title=title, title_justify="left", expand=False)
    for heading in ("pool", "clients active", "clients waiting", "servers active",
                    "servers idle", "maxwait s", "tx/s"):  # fmt: skip
        table.add_column(heading, justify="left" if heading == "pool" else "right")
    for pool in now.pools:
        tps = rate(before, now, pool["database"])
        waiting = int(pool["cl_waiting"])
        maxwait = _wait(pool)
        table.add_row(
            f"{pool['database']}/{pool['user']}", str(pool["cl_active"]),
            Text(str(waiting), style="bold red" if waiting else ""),
            str(pool["sv_active"]), str(pool["sv_idle"]), f"{maxwait:.1f}",
            "-" if tps is None else f"{tps:,.0f}",
        )  # fmt: skip
    if not now.pools:
        table.add_row("(no pools yet)", "", "", "", "", "", "")
    parts: list[Any] = [table]
    if now.backends is not None and now.max_connections:
        share = now.backends / now.max_connections
        style = "bold red" if share > 0.8 else "yellow" if share > 0.6 else "green"
        parts.append(Text.assemble("Postgres client backends: ",
                                   (f"{now.backends} of max_connections {now.max_connections} "
                                    f"({share:.0%})", style)))  # fmt: skip
    parts += [Text(problem, style="red") for problem in now.problems]
    parts.append(Text("refreshing every second; Ctrl-C to stop", style="dim"))
    return Group(*parts)


def watch(
    env: Mapping[str, str],
    title: str,
    console: Console | None = None,
    refresh_s: float = REFRESH_S,
    rounds: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    consoles: Sequence[str] = (),
) -> int:
    """Redraw the view every ``refresh_s`` until Ctrl-C (or ``rounds`` reads); exit code 0.

    ``consoles``: the stats console of each PgBouncer process (the stack's several processes
    share one port, which reaches any one of them); default the env file's one URL.
    """
    stats_url, direct_url = env.get("PGBOUNCER_STATS_URL"), env.get("DIRECT_URL")
    if not stats_url:
        raise ValueError("the env file lacks PGBOUNCER_STATS_URL")
    require_loopback(stats_url, "PGBOUNCER_STATS_URL")
    reader = Reader(consoles or [stats_url], direct_url)
    before: Snapshot | None = None
    count = 0
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while rounds is None or count < rounds:
                now = reader.read()
                live.update(view(title, before, now), refresh=True)
                before, count = now, count + 1
                if rounds is None or count < rounds:
                    sleep(refresh_s)
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
    return 0
