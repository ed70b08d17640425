"""Faults under a write load, each on a stack of its own: nothing acknowledged is lost.

Writers follow the kit's retry guidance (``poolkit.retry``): reconnect and retry when the
connection broke, idempotency keys for commits whose acknowledgement was lost.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import psycopg
import pytest

from poolkit import console
from poolkit.supervisor import STARTUP_GRACE_S
from tests.conftest import LocalStack, local_stack_running
from tests.reliability.load import WriteLoad, create_table

pytestmark = pytest.mark.integration
KILLS = 5
RECOVERY_LIMIT_S = 2.0
OUTLIVE_GRACE_S = STARTUP_GRACE_S + 0.3
"""How long each new PgBouncer runs before the next kill: past the supervisor's start-up grace,
so five kills in a row never read as a crash loop (which it would give up on)."""


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    name = request.node.name.replace("_", "-")[5:30].strip("-")
    with local_stack_running(f"poolkit-{name}-", name, with_apps=False) as stack:
        yield stack


def _first_query_after(started: float, url: str, limit: float) -> float:
    """Seconds from ``started`` until a new connection runs a query on ``url``."""
    while time.monotonic() - started < limit:
        try:
            with psycopg.connect(url, prepare_threshold=None, connect_timeout=1) as conn:
                conn.execute("SELECT 1")
                return time.monotonic() - started
        except psycopg.Error:
            time.sleep(0.01)
    raise AssertionError(f"{url.split('@')[-1]} did not answer within {limit} s")


def _all_replaced(stack: LocalStack, victims: tuple[int, ...], limit: float) -> bool:
    """Whether every killed PgBouncer process has a successor (a pidfile may be mid-write)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(ValueError, FileNotFoundError):
            pids = stack.pgbouncer_pids()
            if len(pids) == len(victims) and not set(pids) & set(victims):
                return True
        time.sleep(0.05)
    return False


def test_pgbouncer_sigkilled_five_times_loses_no_acknowledged_write(stack: LocalStack) -> None:
    env = stack.env()
    create_table(env["DIRECT_URL"], "writes")
    recoveries = []
    with WriteLoad(env["POOLED_DATABASE_URL"], "writes", writers=6) as load:
        load.wait_progress(100, timeout=10)
        for _ in range(KILLS):
            victims = stack.pgbouncer_pids()  # every process on the port, so every writer drops
            killed_at = time.monotonic()
            for victim in victims:
                os.kill(victim, signal.SIGKILL)
            recoveries.append(_first_query_after(killed_at, env["POOLED_DATABASE_URL"], 10))
            assert _all_replaced(stack, victims, 10.0), f"not every process restarted: {victims}"
            replaced_at = time.monotonic()  # each successor started before it wrote its pid
            load.wait_progress(50, timeout=10)  # the writers are back, not only a new client
            time.sleep(max(0.0, OUTLIVE_GRACE_S - (time.monotonic() - replaced_at)))
    verdict = load.verdict(env["DIRECT_URL"])
    print(f"\nPgBouncer back after SIGKILL (s): {[round(r, 3) for r in recoveries]}; "
          f"{verdict}; {load.totals()}")  # fmt: skip
    assert not load.failures, load.failures[:3]
    assert max(recoveries) < RECOVERY_LIMIT_S, recoveries
    assert verdict.missing == 0, "an acknowledged write is missing"
    assert verdict.distinct_acked == verdict.acked, "a key was acknowledged twice"
    assert verdict.rows == verdict.acked and verdict.unacked_rows == 0
    assert load.totals()["reconnects"] >= KILLS, "every writer reconnected after each kill"


def test_postgres_crash_is_recovered_by_up_and_keeps_acknowledged_commits(
    stack: LocalStack,
) -> None:
    """SIGKILL of the postmaster: `poolkit up` starts it again (crash recovery from WAL)."""
    env = stack.env()
    create_table(env["DIRECT_URL"], "writes")
    with WriteLoad(env["POOLED_DATABASE_URL"], "writes", writers=4) as load:
        load.wait_progress(100, timeout=10)
        before = load.acked_count()
        killed_at = time.monotonic()
        os.kill(stack.postmaster_pid(), signal.SIGKILL)
        done = stack.poolkit("up", "--no-smoke")
        up_s = time.monotonic() - killed_at
        assert "started PostgreSQL" in done.stdout, done.stdout
        resumed_s = load.wait_progress(20, timeout=40) + up_s
        first_query_s = _first_query_after(killed_at, env["POOLED_DATABASE_URL"], 40)
    retry_s = int(console.config(env["PGBOUNCER_STATS_URL"])["server_login_retry"])
    verdict = load.verdict(env["DIRECT_URL"])
    print(f"\nPostgres SIGKILL: up restarted it after {up_s:.2f} s; pooled queries again after "
          f"{first_query_s:.2f} s; writers resumed after {resumed_s:.2f} s "
          f"(server_login_retry {retry_s} s); acknowledged {before} before the crash; "
          f"{verdict}; {load.totals()}")  # fmt: skip
    assert not load.failures, load.failures[:3]
    # PgBouncer waits server_login_retry after a failed login before it tries Postgres again.
    assert resumed_s < up_s + retry_s + 2.0
    assert verdict.missing == 0, "an acknowledged commit did not survive the crash"
    assert verdict.distinct_acked == verdict.acked and verdict.unacked_rows == 0
