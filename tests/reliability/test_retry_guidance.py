"""poolkit.retry against a real PgBouncer, with the connection broken at chosen moments.

A proxy in front of the shared stack's PgBouncer breaks one connection either before a
statement reaches the server or after COMMIT was executed but before its acknowledgement
arrives. Each test says which gap of the retry guidance it covers.
"""

from __future__ import annotations

from collections.abc import Iterator
from uuid import UUID

import psycopg
import pytest

from poolkit.retry import AmbiguousCommit, Retrying, RetryPolicy, insert_once, is_retryable, new_key
from tests.conftest import LocalStack
from tests.reliability.load import INSERT, create_table
from tests.reliability.proxy import BreakingProxy

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(local_stack: LocalStack) -> Iterator[BreakingProxy]:
    with BreakingProxy(local_stack.pgbouncer_port) as breaking:
        yield breaking


@pytest.fixture
def table(local_stack: LocalStack, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"retry_{request.node.name.split('[')[0][-40:]}"
    direct = local_stack.env()["DIRECT_URL"]
    create_table(direct, name)
    yield name
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {name}")


def _client(stack: LocalStack, proxy: BreakingProxy) -> Retrying:
    return Retrying(stack.env()["POOLED_DATABASE_URL"], port=proxy.port, prepare_threshold=None)


def _insert_once(stack: LocalStack, proxy: BreakingProxy, table: str,
                 writer: int) -> tuple[Retrying, bool, UUID]:  # fmt: skip
    """One ``insert_once`` of a fresh key through the proxy: (the client, inserted now, key)."""
    key = new_key()
    with _client(stack, proxy) as db:
        inserted_now = db.run(lambda c: insert_once(c, INSERT.format(table=table),
                                                    (key, writer, 0)))  # fmt: skip
    return db, inserted_now, key


def _rows(stack: LocalStack, table: str, where: str = "true") -> int:
    with psycopg.connect(stack.env()["DIRECT_URL"]) as conn:
        return conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]


def test_lost_commit_ack_is_resolved_by_the_idempotency_key(
    local_stack: LocalStack, proxy: BreakingProxy, table: str
) -> None:
    """COMMIT ran, its acknowledgement was lost: the retry finds the row, writes nothing."""
    trap = proxy.arm(b"COMMIT", answer=True)
    db, inserted_now, key = _insert_once(local_stack, proxy, table, writer=1)
    assert trap.fired.is_set() and trap.answered.is_set()
    assert db.stats.ambiguous_commits == 1 and db.stats.reconnects == 1
    assert inserted_now is False, "the retry must see the first attempt's committed row"
    assert _rows(local_stack, table, f"key = '{key}'") == 1


def test_blind_retry_after_a_lost_ack_writes_twice(
    local_stack: LocalStack, proxy: BreakingProxy, table: str
) -> None:
    """The hazard the key prevents is real: a retried INSERT without a key duplicates."""
    trap = proxy.arm(b"COMMIT", answer=True)
    sql = f"INSERT INTO {table} (key, writer, n) VALUES (gen_random_uuid(), 2, 0)"
    with _client(local_stack, proxy) as db:
        db.run(lambda c: c.execute(sql))
    assert trap.fired.is_set()
    assert _rows(local_stack, table, "writer = 2") == 2


def test_break_before_commit_is_retried_and_writes_once(
    local_stack: LocalStack, proxy: BreakingProxy, table: str
) -> None:
    """The INSERT never reached the server: a plain retry, not an ambiguous commit."""
    trap = proxy.arm(b"INSERT INTO", answer=False)
    db, inserted_now, key = _insert_once(local_stack, proxy, table, writer=3)
    assert trap.fired.is_set()
    assert (db.stats.ambiguous_commits, db.stats.retries) == (0, 1)
    assert inserted_now is True
    assert _rows(local_stack, table, f"key = '{key}'") == 1


def test_non_idempotent_work_gets_ambiguous_commit_instead_of_a_retry(
    local_stack: LocalStack, proxy: BreakingProxy, table: str
) -> None:
    proxy.arm(b"COMMIT", answer=True)
    sql = f"INSERT INTO {table} (key, writer, n) VALUES (gen_random_uuid(), 4, 0)"
    with _client(local_stack, proxy) as db, pytest.raises(AmbiguousCommit):
        db.run(lambda c: c.execute(sql), retry_ambiguous=False)
    assert _rows(local_stack, table, "writer = 4") == 1, "it did commit; the caller decides"


def test_errors_that_a_retry_cannot_fix_are_raised_at_once(
    local_stack: LocalStack, proxy: BreakingProxy, table: str
) -> None:
    key = new_key()
    plain = f"INSERT INTO {table} (key, writer, n) VALUES (%s, 5, 0)"
    with _client(local_stack, proxy) as db:
        db.run(lambda c: c.execute(plain, (key,)))
        with pytest.raises(psycopg.errors.UniqueViolation):
            db.run(lambda c: c.execute(plain, (key,)))
        assert db.stats.retries == 0
        assert db.run(lambda c: c.execute("SELECT 1").fetchone()) == (1,), "connection reusable"


def test_a_wrong_password_is_not_retried(local_stack: LocalStack) -> None:
    url = psycopg.conninfo.make_conninfo(local_stack.env()["POOLED_DATABASE_URL"],
                                         password="not-the-password")  # fmt: skip
    with Retrying(url, prepare_threshold=None) as db, pytest.raises(psycopg.OperationalError):
        db.run(lambda c: c.execute("SELECT 1"))
    assert db.stats.retries == 0


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (psycopg.OperationalError("consuming input failed: server closed the connection "
                                  "unexpectedly"), True),
        (psycopg.OperationalError('connection failed: connection to server at "127.0.0.1", '
                                  "port 6432 failed: Connection refused"), True),
        (psycopg.OperationalError("connection failed: FATAL:  SASL authentication failed"), False),
        (psycopg.OperationalError("FATAL:  no pg_hba.conf entry for host"), False),
        (psycopg.OperationalError("FATAL:  no such database: nosuch"), False),
        (psycopg.errors.SerializationFailure(), True),
        (psycopg.errors.AdminShutdown(), True),
        (psycopg.errors.CannotConnectNow(), True),
        (psycopg.errors.ProtocolViolation("query_wait_timeout"), True),
        (psycopg.errors.UniqueViolation(), False),
        (psycopg.errors.UndefinedTable(), False),
        (psycopg.errors.InsufficientPrivilege(), False),
    ],
    ids=["broken", "refused-port", "bad-password", "hba", "no-db", "serialization",
         "admin-shutdown", "starting-up", "query-wait-timeout", "unique", "no-table", "privilege"],
)  # fmt: skip
def test_which_errors_are_retried(error: Exception, retry: bool) -> None:
    assert is_retryable(error) is retry


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    policy = RetryPolicy(first_backoff_s=0.05, max_backoff_s=1.0)
    assert all(0.025 <= policy.backoff(0) <= 0.05 for _ in range(50))
    assert all(0.025 <= policy.backoff(10) <= 1.0 for _ in range(50))
    assert len({round(policy.backoff(5), 6) for _ in range(20)}) > 1, "jittered"
