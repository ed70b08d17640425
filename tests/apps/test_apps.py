"""The sample apps through the project's local runner: Postgres + PgBouncer >= 1.21 (SCRAM).

Every test that starts an adapter runs twice (``runtime``): the Python apps (``apps/``) and the
Prisma 7 + TypeScript apps (``apps/ts``), on the same HTTP surface. ``integration`` tests run
them against a stack the runner brought up (see ``conftest.py``); ``unit`` tests need no server
(settings checks, requests refused early).
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from apps import db, migrate
from poolkit.urls import postgres_url
from tests.apps import figures
from tests.apps.conftest import (
    OFFLINE_ENV,
    URL_VARIABLE,
    AppProcess,
    AppStack,
    mixed_clients,
    offline_env,
    request,
)

integration = pytest.mark.integration
unit = pytest.mark.unit

STYLES = ("lambda", "workers")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_for_clients(
    stack: AppStack, app: AppProcess, count: int, timeout: float = 3.0
) -> list[dict[str, Any]]:
    """PgBouncer handles a client's Terminate asynchronously: poll briefly for ``count``."""
    deadline = time.monotonic() + timeout
    while True:
        clients = stack.clients_of(app)
        if len(clients) == count or time.monotonic() > deadline:
            return clients
        time.sleep(0.05)


@integration
@pytest.mark.parametrize("style", STYLES)
def test_style_creates_and_lists_items_through_pgbouncer(stack, start_app, style: str) -> None:
    app = start_app(style, stack.app_env())
    name = unique(style)

    assert app.request("GET", "/healthz") == (200, {"ok": True, "db": 1})
    status, created = app.request("POST", "/items", {"name": name})
    assert status == 201, created
    assert created["item"]["name"] == name
    status, listed = app.request("GET", "/items")
    assert status == 200
    assert listed["items"][0] == created["item"]
    assert len(listed["items"]) <= db.ITEMS_PAGE


@integration
def test_migration_runs_over_direct_url_as_the_owner(own_stack, start_app) -> None:
    """The table is dropped first, so the adapter's own ``--migrate`` is what creates it."""
    with psycopg.connect(own_stack.direct_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS items")
    start_app("workers", own_stack.app_env())
    with psycopg.connect(own_stack.direct_url) as conn:
        owner = conn.execute(
            "SELECT tableowner FROM pg_tables WHERE tablename = 'items'"
        ).fetchone()
        app_can = conn.execute(
            "SELECT has_table_privilege(%(r)s, 'items', 'SELECT'),"
            " has_table_privilege(%(r)s, 'items', 'INSERT'),"
            " has_sequence_privilege(%(r)s, 'items_id_seq', 'USAGE')",
            {"r": own_stack.app_user},
        ).fetchone()
    assert owner == (own_stack.migrator,)
    assert app_can == (True, True, True)


@unit
@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/items", b"{not json", 400),
        ("POST", "/items", {"title": "x"}, 400),
        ("POST", "/items", {"name": ""}, 400),
        ("POST", "/items", {"name": "x" * 201}, 400),
        ("POST", "/items", b"\xff\xfe", 400),
        ("GET", "/nowhere", None, 404),
        ("DELETE", "/items", None, 405),
    ],
    ids=["bad-json", "no-name", "empty-name", "long-name", "not-utf8", "unknown-path", "method"],
)
def test_bad_requests_get_client_errors(
    start_app, runtime: str, method: str, path: str, body: Any, status: int
) -> None:
    """Refused before any database work: the adapter's settings name a port nobody serves."""
    app = start_app("lambda", offline_env(runtime), migrate=False)
    got, payload = app.request(method, path, body)
    assert got == status
    assert set(payload) == {"error"}


@integration
def test_lambda_style_keeps_one_client_connection_across_20_requests(stack, start_app) -> None:
    app = start_app("lambda", stack.app_env())
    seen = set()
    for i in range(20):
        method, body = ("POST", {"name": unique("warm")}) if i % 2 else ("GET", None)
        status, _ = app.request(method, "/items", body)
        assert status in (200, 201)
        clients = stack.clients_of(app)
        assert len(clients) == 1, clients
        seen.add((clients[0]["addr"], clients[0]["port"], clients[0]["connect_time"]))
    assert len(seen) == 1, f"the kept connection changed: {seen}"


@integration
def test_workers_style_has_no_client_connection_between_requests(stack, start_app) -> None:
    app = start_app("workers", stack.app_env(limit=5))
    for i in range(10):
        method, body = ("POST", {"name": unique("fresh")}) if i % 2 else ("GET", None)
        status, _ = app.request(method, "/items", body)
        assert status in (200, 201)
        assert wait_for_clients(stack, app, 0) == []


@integration
@pytest.mark.parametrize(("style", "limit"), [("lambda", 3), ("workers", 10)])
def test_50_concurrent_requests_all_succeed(stack, start_app, style: str, limit: int) -> None:
    """Lambda: the warm instance keeps at most POOL_CONNECTION_LIMIT PgBouncer clients (Python:
    always 1; Prisma: its pg Pool's max); Workers: none left once the requests are done."""
    app = start_app(style, stack.app_env(limit=limit))
    names = [unique(f"burst-{style}") for _ in range(50)]
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda n: app.request("POST", "/items", {"name": n}), names))

    assert [status for status, _ in results] == [201] * 50
    assert [body["item"]["name"] for _, body in results] == names  # nobody got another's row
    assert len({body["item"]["id"] for _, body in results}) == 50
    if style == "lambda":
        kept = stack.clients_of(app)
        assert 1 <= len(kept) <= limit, kept
        if app.runtime == "python":
            assert len(kept) == 1
    else:
        assert wait_for_clients(stack, app, 0) == []


@integration
@pytest.mark.parametrize("route", ["pooled", "direct"])
@pytest.mark.parametrize("style", STYLES)
def test_burst_of_500_requests(stack, start_app, style: str, route: str) -> None:
    """500 POSTs, 50 at a time, one process with POOL_CONNECTION_LIMIT 10: every row right and
    0 errors. Pooled, the app role's Postgres backends never exceed PgBouncer's
    max_db_connections; direct (the app role straight to Postgres) gives the comparison."""
    env = stack.app_env(limit=10)
    if route == "direct":
        env |= dict.fromkeys(URL_VARIABLE.values(), stack.app_direct_url)
    app = start_app(style, env)
    names = [unique(f"{route}-{style}") for _ in range(500)]
    with stack.peak_app_backends() as peak, ThreadPoolExecutor(max_workers=50) as pool:
        started = time.monotonic()
        results = list(pool.map(lambda n: app.request("POST", "/items", {"name": n}), names))
        seconds = time.monotonic() - started

    errors = sum(status != 201 for status, _ in results)
    bound = stack.max_db_connections
    figures.record(f"{app.runtime} {style} {route}", requests=len(results), errors=errors,
                   rps=len(results) / seconds, peak_backends=peak[0],
                   max_db_connections=bound)  # fmt: skip
    assert errors == 0, [r for r in results if r[0] != 201][:3]
    assert [body["item"]["name"] for _, body in results] == names
    assert peak[0] >= 1, "the sampler saw no backend"
    if route == "pooled":
        assert peak[0] <= bound


@integration
def test_runner_supervises_the_typescript_app(own_stack) -> None:
    """``runtime: node`` in the stack: ``poolkit up`` runs ``apps/ts`` under its supervisor."""
    port = own_stack.local.app_ports[-1]
    [record] = [a for a in own_stack.local.state()["apps"] if a["app"] == "ts"]
    assert (record["runtime"], record["port"]) == ("node", port)
    assert request(port, "GET", "/healthz") == (200, {"ok": True, "db": 1})
    status, body = request(port, "POST", "/items", {"name": "from-the-runner"})
    assert status == 201, body
    log = (own_stack.local.state_dir / "log" / "app-ts-0.out.log").read_text()
    assert "serving the workers style (Prisma 7" in log


@integration
@pytest.mark.parametrize("prepared", ["on", "off"])
def test_either_prepared_setting_is_right_when_pgbouncer_tracks(stack, prepared: str) -> None:
    """PgBouncer >= 1.21 tracks prepared statements: psycopg's default prepares are safe.

    The control on PgBouncer 1.18, where ``on`` fails, is in tests/drivers.
    """
    assert stack.env["PGBOUNCER_PREPARED_STATEMENTS"] == "on", "the stack's PgBouncer is < 1.21"
    settings = db.load_settings(stack.app_env(prepared=prepared))
    assert mixed_clients(settings, clients=stack.pool_size * 2, rounds=20) == (0, 0)


@integration
@pytest.mark.parametrize("style", STYLES)
def test_app_recovers_after_pgbouncer_restart(own_stack, start_app, style: str) -> None:
    """PgBouncer dies, its supervisor brings it back; the app answers 503, then recovers."""
    app = start_app(style, own_stack.app_env())
    assert app.request("GET", "/healthz")[0] == 200
    before = wait_for_clients(own_stack, app, 1 if style == "lambda" else 0)

    with own_stack.pgbouncer_down():
        status, body = app.request("GET", "/items")
        assert (status, body) == (503, {"error": "database unavailable"})

    status, body = app.request("POST", "/items", {"name": unique("after-restart")})
    assert status == 201, body
    if style == "lambda":
        after = own_stack.clients_of(app)
        assert len(before) == len(after) == 1
        assert after[0]["connect_time"] != before[0]["connect_time"] or (
            after[0]["port"] != before[0]["port"]
        )
        assert ("reconnecting" if app.runtime == "python" else "idle connection lost") in app.log()
    else:
        assert before == wait_for_clients(own_stack, app, 0) == []


@integration
def test_errors_carry_no_password_or_url(own_stack, start_app) -> None:
    wrong_password = "wrong@:/%?#" + uuid.uuid4().hex
    pooled = conninfo_to_dict(own_stack.pooled_url)
    bad_url = postgres_url(str(pooled["user"]), wrong_password, str(pooled["host"]),
                           int(str(pooled["port"])), str(pooled["dbname"]))  # fmt: skip
    app = start_app("workers", {**own_stack.app_env(), "POOLED_DATABASE_URL": bad_url,
                                "DATABASE_URL": bad_url}, migrate=False)  # fmt: skip
    lambda_app = start_app("lambda", own_stack.app_env(), migrate=False)

    responses = [app.request("GET", "/items"), app.request("POST", "/items", {"name": "x"})]
    with own_stack.pgbouncer_down():
        responses.append(lambda_app.request("GET", "/healthz"))

    assert [status for status, _ in responses] == [503, 503, 503]
    passwords = [wrong_password, *own_stack.passwords()]
    urls = [value for key, value in own_stack.env.items() if key.endswith("_URL")]
    secrets = [*passwords, *(quote(p, safe="") for p in passwords), bad_url, *urls,
               "postgresql://"]  # fmt: skip
    text = repr(responses) + app.log() + lambda_app.log()
    for secret in secrets:
        assert secret not in text
    assert "authentication failed" in app.log().lower()  # the cause is still logged


@integration
def test_sigterm_stops_the_adapter_and_closes_its_connection(stack, start_app) -> None:
    app = start_app("lambda", stack.app_env())
    assert app.request("GET", "/healthz")[0] == 200
    assert len(stack.clients_of(app)) == 1

    assert app.stop() == 0
    assert "stopped" in app.log()
    assert wait_for_clients(stack, app, 0) == []


@unit
def test_missing_setting_is_named(start_app, runtime: str) -> None:
    with pytest.raises(RuntimeError, match="exited") as failure:
        start_app("workers", {**offline_env(runtime), "POOL_CONNECTION_LIMIT": ""})
    assert "POOL_CONNECTION_LIMIT is not set" in str(failure.value)


@unit
def test_malformed_url_fails_at_startup_without_leaking_password(start_app, runtime: str) -> None:
    """libpq quotes the offending token, here inside the password: the log must not."""
    password = "se%zz" + uuid.uuid4().hex
    bad_url = f"postgresql://app:{password}@127.0.0.1:1/appdb"
    variable = URL_VARIABLE[runtime]
    with pytest.raises(RuntimeError, match="exited") as failure:
        start_app("lambda", {**offline_env(runtime), variable: bad_url})
    message = str(failure.value)
    assert f"{variable} is not a valid" in message
    assert password not in message


@unit
def test_engine_parameters_in_the_url_stop_the_app(start_app, runtime: str) -> None:
    """Prisma <= 6 parameters on the pooled URL: psycopg would fail, Prisma 7 ignore them."""
    url = "postgresql://app:unused@127.0.0.1:1/app?pgbouncer=true&connection_limit=1"
    with pytest.raises(RuntimeError, match="exited") as failure:
        start_app("workers", {**offline_env(runtime), URL_VARIABLE[runtime]: url}, migrate=False)
    assert "connection_limit, pgbouncer" in str(failure.value)


@unit
@pytest.mark.parametrize(("direct_url", "code", "logged"), [
    (None, 2, "DIRECT_URL is not set: migrations run on the direct URL"),
    ("postgresql://app:unused@127.0.0.1:1/app", 1, "migration failed: OperationalError"),
])  # fmt: skip
def test_migration_job_exit_code_says_whose_fault(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    direct_url: str | None, code: int, logged: str,
) -> None:  # fmt: skip
    """2: a setting (fix the environment); 1: the database refused (look at the server)."""
    for name, value in {**OFFLINE_ENV, "DIRECT_URL": direct_url}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert migrate.main() == code
    assert logged in caplog.text


@unit
def test_settings_refuse_prisma_url() -> None:
    env = {"POOLED_DATABASE_URL": "postgresql://u@h/db?pgbouncer=true&connection_limit=1",
           "POOL_CONNECTION_LIMIT": "1", "PGBOUNCER_PREPARED_STATEMENTS": "off"}
    with pytest.raises(db.SettingsError, match="connection_limit, pgbouncer"):
        db.load_settings(env)


@unit
def test_connect_kwargs_follow_prepared_statement_setting() -> None:
    base = db.Settings("postgresql://u@h/db", 1, prepared_statements=False)
    assert db.connect_kwargs(base)["prepare_threshold"] is None
    assert "prepare_threshold" not in db.connect_kwargs(replace(base, prepared_statements=True))
    assert db.connect_kwargs(base)["autocommit"] is False
