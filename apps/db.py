"""Client settings and SQL shared by the sample apps.

Settings come from the environment that poolkit's ``.env`` provides:

- ``POOLED_DATABASE_URL``: the libpq-clean URL of PgBouncer (not the Prisma ``DATABASE_URL``).
- ``POOL_CONNECTION_LIMIT``: how many connections one app instance may hold at once.
- ``PGBOUNCER_PREPARED_STATEMENTS``: ``on`` when PgBouncer (>= 1.21) keeps prepared statements
  in transaction mode, ``off`` when clients must not prepare server-side.
- ``DIRECT_URL`` (optional): Postgres itself, as the migrator; used only by :func:`ensure_schema`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5
"""libpq ``connect_timeout``: fail fast (503) instead of hanging a request on a dead pooler."""

ITEMS_PAGE = 50

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS items (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""

_SCHEMA_LOCK = "poolkit-apps-schema"
_PRISMA_ONLY_PARAMS = frozenset({"pgbouncer", "connection_limit", "pool_timeout"})
_URL_PASSWORD = re.compile(r"(://[^:/?#@\s]*:)[^@\s]*@")
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


class SettingsError(RuntimeError):
    """A required environment variable is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    """What an app needs to reach the database."""

    pooled_url: str
    connection_limit: int
    prepared_statements: bool
    direct_url: str | None = None


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """Read and check the app's database settings from ``environ``."""
    url = _require(environ, "POOLED_DATABASE_URL")
    prisma_keys = sorted(_PRISMA_ONLY_PARAMS & {k for k, _ in parse_qsl(url.partition("?")[2])})
    if prisma_keys:
        raise SettingsError(
            f"POOLED_DATABASE_URL carries Prisma-only parameters ({', '.join(prisma_keys)}), "
            "which libpq rejects: use the libpq-clean POOLED_DATABASE_URL, not DATABASE_URL"
        )
    _check_url(environ, "POOLED_DATABASE_URL")
    _check_url(environ, "DIRECT_URL")
    raw_limit = _require(environ, "POOL_CONNECTION_LIMIT")
    if not raw_limit.isdigit() or int(raw_limit) < 1:
        raise SettingsError(f"POOL_CONNECTION_LIMIT={raw_limit!r}: use a whole number >= 1")
    prepared = _require(environ, "PGBOUNCER_PREPARED_STATEMENTS").lower()
    if prepared not in ("on", "off"):
        raise SettingsError(f"PGBOUNCER_PREPARED_STATEMENTS={prepared!r}: use on or off")
    return Settings(
        pooled_url=url,
        connection_limit=int(raw_limit),
        prepared_statements=prepared == "on",
        direct_url=environ.get("DIRECT_URL") or None,
    )


def _require(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise SettingsError(f"{name} is not set: take it from the .env file poolkit generated")
    return value


def _check_url(environ: Mapping[str, str], name: str) -> None:
    """libpq's own parse, so a malformed URL fails at startup, with the password redacted."""
    if not environ.get(name):
        return
    try:
        conninfo_to_dict(environ[name])
    except psycopg.ProgrammingError as exc:
        problem = describe_error(exc, environ)
        raise SettingsError(f"{name} is not a valid libpq URL: {problem}") from None


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``psycopg.connect`` through PgBouncer in transaction mode.

    Without PgBouncer prepared-statement support (< 1.21), psycopg's default
    ``prepare_threshold=5`` prepares a statement on whichever server connection the
    transaction got; the next transaction may land on another one, which fails with
    ``_pg3_N already exists``/``does not exist`` or even runs another client's statement.
    ``prepare_threshold=None`` keeps every query unnamed.
    """
    kwargs: dict[str, Any] = {
        "conninfo": settings.pooled_url,
        "autocommit": False,
        "connect_timeout": CONNECT_TIMEOUT_S,
    }
    if not settings.prepared_statements:
        kwargs["prepare_threshold"] = None
    return kwargs


def connect(settings: Settings) -> psycopg.Connection[Any]:
    """Open one pooled connection with :func:`connect_kwargs`."""
    return psycopg.connect(**connect_kwargs(settings))


def in_transaction(
    conn: psycopg.Connection[Any], work: Callable[[psycopg.Connection[Any]], T]
) -> T:
    """Run ``work`` as exactly one transaction: BEGIN, work, COMMIT (ROLLBACK on error)."""
    with conn.transaction():
        return work(conn)


def select_one(conn: psycopg.Connection[Any]) -> int:
    """The health probe: a round trip through PgBouncer to Postgres."""
    row = conn.execute("SELECT 1").fetchone()
    assert row is not None
    return int(row[0])


def insert_item(conn: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    """Insert one item and return the stored row."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "INSERT INTO items (name) VALUES (%s) RETURNING id, name, created_at", (name,)
        )
        row = cur.fetchone()
    assert row is not None
    return row


def list_items(conn: psycopg.Connection[Any], limit: int = ITEMS_PAGE) -> list[dict[str, Any]]:
    """The newest ``limit`` items, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, name, created_at FROM items ORDER BY id DESC LIMIT %s", (limit,)
        )
        return cur.fetchall()


def ensure_schema(settings: Settings) -> None:
    """Create the ``items`` table once at startup, never per request.

    Migrations belong on ``DIRECT_URL`` (the owner role, straight to Postgres). When the
    direct role differs from the pooled one, the pooled role gets exactly the privileges
    the app uses. A transaction-scoped advisory lock keeps replicas that start together
    from racing on ``CREATE TABLE IF NOT EXISTS``.
    """
    if settings.direct_url:
        kwargs: dict[str, Any] = {
            "conninfo": settings.direct_url,
            "connect_timeout": CONNECT_TIMEOUT_S,
        }
    else:
        kwargs = connect_kwargs(settings)
    with psycopg.connect(**kwargs) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_SCHEMA_LOCK,))
        conn.execute(SCHEMA_SQL)
        app_user = conninfo_to_dict(settings.pooled_url).get("user")
        if app_user and app_user != conn.info.user:
            role = sql.Identifier(str(app_user))
            conn.execute(sql.SQL("GRANT SELECT, INSERT ON items TO {}").format(role))
            conn.execute(sql.SQL("GRANT USAGE ON SEQUENCE items_id_seq TO {}").format(role))


def redact(text: str, environ: Mapping[str, str] = os.environ) -> str:
    """``text`` without the database passwords: safe for logs."""
    for name in ("POOLED_DATABASE_URL", "DIRECT_URL"):
        password = _url_password(environ.get(name, ""))
        if password:
            text = text.replace(password, "***").replace(unquote(password), "***")
    text = _URL_PASSWORD.sub(r"\1***@", text)
    return _KEYWORD_PASSWORD.sub(r"\1***", text)


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def describe_error(exc: BaseException, environ: Mapping[str, str] = os.environ) -> str:
    """One log-safe line about a database error: class, SQLSTATE, redacted first line."""
    sqlstate = getattr(exc, "sqlstate", None)
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    state = f" [{sqlstate}]" if sqlstate else ""
    return f"{type(exc).__name__}{state}: {redact(first_line, environ)}"


def startup_exit_code(exc: Exception, log: logging.Logger) -> int:
    """Log why start-up (settings, then the schema) failed; the exit code: 2 a setting is
    missing or malformed, 1 the database refused."""
    if isinstance(exc, SettingsError):
        log.error("%s", exc)
        return 2
    log.error("migration failed: %s", describe_error(exc))
    return 1
