"""Planned maintenance of a local stack that drops no client: PAUSE, restart Postgres, RESUME.

``PAUSE <db>`` on PgBouncer's admin console waits for the running transactions to end and
releases every server connection of the database; new queries then wait inside PgBouncer
(for at most ``query_wait_timeout``) instead of failing. Postgres restarts with no pooled
client on it (``pg_ctl restart -m fast``), and ``RESUME`` lets the waiting queries run on
fresh server connections. Clients see added latency, not errors.

Limits: a transaction that runs longer than ``pause_timeout`` keeps PAUSE from completing
(then the database is RESUMEd and Postgres is not restarted); clients wait for the pause plus
the restart, which must stay below ``query_wait_timeout``; connections on ``DIRECT_URL`` are
not pooled and are closed by the restart.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from poolkit import console
from poolkit import secrets as stack_secrets
from poolkit.local.errors import LocalError
from poolkit.local.host import Host
from poolkit.local.machine import service_user
from poolkit.local.pgbouncer import (
    PauseTimeout,
    admin_url,
    console_hosts,
    is_pgbouncer,
    paused,
    stats_url,
)
from poolkit.local.postgres import Postgres
from poolkit.local.state import Paths, StackState

DEFAULT_PAUSE_TIMEOUT_S = 5.0


class NoStack(LocalError):
    """The state dir holds no stack that ``poolkit up`` brought up (bad input)."""


@dataclass(frozen=True)
class RestartReport:
    """Timings of one planned restart, in seconds."""

    database: str
    pause_wait_s: float
    """From PAUSE sent until PgBouncer confirmed every server connection released."""
    restart_s: float
    """``pg_ctl restart -m fast`` until Postgres accepted connections again."""
    paused_s: float
    """From PAUSE sent until RESUME done: the longest a pooled query waited."""
    query_wait_timeout_s: int

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _stack(paths: Paths) -> tuple[StackState, stack_secrets.Secrets]:
    state = paths.load_state()
    credentials = stack_secrets.load(paths.secrets) if state else None
    if not state or credentials is None:
        raise NoStack(f"no local stack in {paths.root}: bring it up with `poolkit up` first, or "
                      "name the right one with --stack NAME or --state-dir DIR")  # fmt: skip
    return state, credentials


def restart_postgres(
    state_dir: Path,
    pause_timeout: float = DEFAULT_PAUSE_TIMEOUT_S,
    say: Callable[[str], None] = print,
) -> RestartReport:
    """PAUSE the stack's database on PgBouncer, restart Postgres, RESUME; report the timings."""
    paths = Paths(state_dir.resolve())
    state, credentials = _stack(paths)
    database, port = state.database, state.pgbouncer_port
    if not paths.postgres_pid() or not any(map(is_pgbouncer, paths.supervised())):
        raise LocalError(f"the stack in {paths.root} is not running (PostgreSQL and PgBouncer "
                         "must both run): poolkit up first")  # fmt: skip
    admins = [admin_url(credentials, port, host) for host in console_hosts(state.peers())]
    postgres = Postgres(Host(paths, Path(state.pgbin), service_user()))
    wait_limit = int(console.config(stats_url(credentials, port))["query_wait_timeout"])
    if pause_timeout >= wait_limit:
        say(f"warning: --pause-timeout {pause_timeout:g} s is not below query_wait_timeout "
            f"({wait_limit} s): queries waiting in PgBouncer may time out")  # fmt: skip
    with paths.lock():
        started = time.monotonic()
        say(f"PAUSE {database}: waiting up to {pause_timeout:g} s for running transactions")
        try:
            with contextlib.ExitStack() as every_process:  # each PgBouncer process PAUSEd
                for admin in admins:
                    every_process.enter_context(paused(admin, database, pause_timeout))
                pause_wait = time.monotonic() - started
                say(f"paused in {pause_wait:.2f} s; restarting PostgreSQL (pg_ctl restart -m fast)")
                restart_started = time.monotonic()
                postgres.restart()
                restart = time.monotonic() - restart_started
        except PauseTimeout as error:
            raise LocalError(
                f"{error}; Postgres was NOT restarted. Let long transactions finish (or raise "
                "--pause-timeout) and try again"
            ) from None
        held = time.monotonic() - started
        say(f"RESUME {database}: clients waited at most {held:.2f} s")
    return RestartReport(database, pause_wait, restart, held, wait_limit)
