"""Bring your own Postgres: check a server the kit does not run, before anything is created.

How PgBouncer authenticates (the choice, and why): managed services do not let any role read
``pg_authid``, so the SCRAM verifiers cannot be copied from the server, and an ``auth_query``
needs a ``SECURITY DEFINER`` function owned by a role that can read ``pg_authid`` — a
superuser, which a managed service does not hand out (and such a function is a standing risk:
CVE-2025-12819 showed how an unpinned ``search_path`` lets a caller run code as its owner). So
the kit holds the passwords: it makes the app and migrator roles' SCRAM verifiers itself (as it
does for its own Postgres), sets them on the server through the admin role (``ALTER ROLE …
PASSWORD 'SCRAM-SHA-256$…'``: no plaintext password reaches the server or a log), and gives
PgBouncer the same verifiers in ``userlist.txt``. PgBouncer then logs in to the server with the
client's own SCRAM keys. The admin role needs CREATEROLE (and CREATEDB when the database does
not exist yet), never superuser.

``check`` connects as the admin role with the stack's TLS settings and reports every problem at
once, each with the key, the value and the fix: a CA file that is missing, a server whose
certificate does not verify, a role that is a superuser or lacks a right, a database owned by
someone else, and a server budget the server's ``max_connections`` cannot hold.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from poolkit.config import (
    NAMESPACE,
    ConfigError,
    ExternalPostgres,
    Problem,
    StackConfig,
    ca_file_problem,
    read_ca_file,
)
from poolkit.envfile import write_private
from poolkit.sizing import DIRECT_HEADROOM, Plan

CONNECT_TIMEOUT_S = 10
MIN_SERVER_VERSION = 150000
"""PostgreSQL 15: the public schema belongs to the database owner (the kit's grants rely on it)."""
MAINTENANCE_DB = "postgres"
WHERE = f"{NAMESPACE}:postgres.external"


@dataclass(frozen=True)
class ServerFacts:
    """What the admin role found on the server."""

    version: str
    max_connections: int
    reserved: int
    """superuser_reserved_connections + reserved_connections (PostgreSQL 16+)."""
    database_exists: bool


def ca_path(external: ExternalPostgres) -> Path | None:
    """The CA file (validated as an absolute path)."""
    return Path(external.ca_file) if external.ca_file else None


def server_ca_pem(stack: StackConfig) -> str | None:
    """The external server's CA as PEM text (``ca_file`` read), or None without one."""
    external = stack.postgres.external
    return read_ca_file(external.ca_file) if external else None


def ca_problems(stack: StackConfig) -> list[Problem]:
    """The CA file's problem (unreadable, no PEM), checked offline; empty when fine."""
    external = stack.postgres.external
    problem = _ca_problem(external) if external else None
    return [problem] if problem else []


def _ca_problem(external: ExternalPostgres) -> Problem | None:
    return ca_file_problem(f"{WHERE}.ca_file", external.ca_file, "the server's")


def connect_kwargs(
    stack: StackConfig, password: str, dbname: str = MAINTENANCE_DB
) -> dict[str, Any]:
    """libpq parameters of the admin role's connection (TLS as the stack says)."""
    external = stack.postgres.external
    assert external is not None
    kwargs: dict[str, Any] = {
        "host": external.host, "port": external.port, "dbname": dbname,
        "user": external.admin_user, "password": password, "sslmode": external.sslmode,
        "connect_timeout": CONNECT_TIMEOUT_S, "application_name": "poolkit-preflight",
    }  # fmt: skip
    ca = ca_path(external)
    if ca:
        kwargs["sslrootcert"] = str(ca)
    return kwargs


def _scalar(conn: psycopg.Connection[Any], sql: str, *params: Any) -> Any:
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def check(stack: StackConfig, plan: Plan, password: str | None) -> ServerFacts:
    """Every reason the kit cannot front this server; raise ConfigError listing all of them."""
    external = stack.postgres.external
    assert external is not None
    problems: list[Problem] = []
    ca_problem = _ca_problem(external)
    if ca_problem:
        problems.append(ca_problem)
    if not password:
        problems.append(Problem(
            f"{NAMESPACE}:external_admin_password", None,
            f"is required to check and prepare the server as {external.admin_user}",
            "export POOLKIT_EXTERNAL_ADMIN_PASSWORD (or set the Pulumi secret "
            "poolkit:external_admin_password)",
        ))  # fmt: skip
    if problems:
        raise ConfigError(problems)
    assert password is not None
    try:
        conn = psycopg.connect(**connect_kwargs(stack, password), autocommit=True)
    except psycopg.OperationalError as error:
        raise ConfigError([Problem(
            WHERE, f"{external.host}:{external.port}",
            f"cannot be reached as {external.admin_user} with sslmode {external.sslmode}: "
            f"{str(error).strip().splitlines()[-1]}",
            "check host, port, the admin role's password, and that ca_file is the CA that "
            "signed the server's certificate (its name must match host for verify-full)",
        )]) from None  # fmt: skip
    with contextlib.closing(conn):
        facts = _facts(conn, stack, problems)
    _budget(stack, plan, facts, problems)
    if problems:
        raise ConfigError(problems)
    return facts


def _facts(conn: psycopg.Connection[Any], stack: StackConfig, problems: list[Problem]
           ) -> ServerFacts:  # fmt: skip
    external = stack.postgres.external
    assert external is not None
    db = stack.database
    version_num = int(_scalar(conn, "SELECT current_setting('server_version_num')"))
    version = str(_scalar(conn, "SELECT current_setting('server_version')"))
    if version_num < MIN_SERVER_VERSION:
        problems.append(Problem(WHERE, f"PostgreSQL {version}",
                                "is older than 15, which the kit's grants need (the public "
                                "schema belongs to the database owner from 15 on)",
                                "upgrade the server to PostgreSQL 15 or newer"))  # fmt: skip
    row = conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                       "WHERE rolname = current_user").fetchone()  # fmt: skip
    superuser, createrole, createdb = row if row else (False, False, False)
    role_key = f"{WHERE}.admin_user"
    if superuser:
        problems.append(Problem(role_key, external.admin_user, "is a superuser",
                                "give poolkit a role with only CREATEROLE and CREATEDB: "
                                "CREATE ROLE poolkit_admin LOGIN CREATEROLE CREATEDB "
                                "PASSWORD '…'"))  # fmt: skip
    if not createrole and not superuser:
        problems.append(Problem(role_key, external.admin_user,
                                f"lacks CREATEROLE, which creating the roles {db.app_user} and "
                                f"{db.migrator_user} needs",
                                f"ALTER ROLE {external.admin_user} CREATEROLE"))  # fmt: skip
    owner = _scalar(conn, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                    db.name)  # fmt: skip
    if owner is None and not createdb and not superuser:
        problems.append(Problem(role_key, external.admin_user,
                                f"lacks CREATEDB, and the database {db.name} does not exist",
                                f"ALTER ROLE {external.admin_user} CREATEDB, or create the "
                                f"database {db.name} owned by {db.migrator_user}"))  # fmt: skip
    if owner is not None and owner != db.migrator_user:
        problems.append(Problem(f"{NAMESPACE}:database.name", db.name,
                                f"exists on the server but belongs to {owner}, not to the "
                                f"migrator role {db.migrator_user}",
                                f"ALTER DATABASE {db.name} OWNER TO {db.migrator_user}, or "
                                "choose another database name"))  # fmt: skip
    for role in (db.app_user, db.migrator_user):
        other = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s",
                             (role,)).fetchone()  # fmt: skip
        if other and other[0]:
            problems.append(Problem(f"{NAMESPACE}:database", role,
                                    "names a superuser on the server; the kit's roles must "
                                    "not be superusers", "choose another role name"))
        elif other and version_num >= 160000 and not superuser and not _scalar(
            conn, "SELECT pg_has_role(current_user, %s, 'USAGE WITH ADMIN OPTION')", role
        ):
            problems.append(Problem(f"{NAMESPACE}:database", role,
                                    f"exists on the server and {external.admin_user} may not "
                                    "alter it (PostgreSQL 16+ needs ADMIN OPTION on it)",
                                    f"GRANT {role} TO {external.admin_user} WITH ADMIN OPTION, "
                                    "or choose another role name"))  # fmt: skip
    reserved = int(_scalar(conn, "SELECT current_setting('superuser_reserved_connections')"))
    reserved += int(_scalar(conn, "SELECT coalesce(current_setting('reserved_connections', "
                                  "true), '0')") or 0)  # fmt: skip
    max_connections = int(_scalar(conn, "SELECT current_setting('max_connections')"))
    return ServerFacts(version, max_connections, reserved, owner is not None)


def _budget(stack: StackConfig, plan: Plan, facts: ServerFacts, problems: list[Problem]) -> None:
    """The server must hold the whole pooler's budget plus the direct URL's headroom."""
    external = stack.postgres.external
    assert external is not None
    pool = plan.pool
    available = facts.max_connections - facts.reserved
    needed = pool.server_connections + DIRECT_HEADROOM
    if external.max_connections and external.max_connections != facts.max_connections:
        problems.append(Problem(f"{WHERE}.max_connections", external.max_connections,
                                f"differs from the server's max_connections "
                                f"{facts.max_connections}",
                                f"set it to {facts.max_connections}, or remove it to read "
                                "it"))  # fmt: skip
    if needed > available:
        problems.append(Problem(
            f"{WHERE}.max_connections", facts.max_connections,
            f"leaves {available} connections for the kit ({facts.reserved} are reserved), "
            f"but the plan needs {needed}: the server budget of {pool.server_connections} "
            f"(pool {pool.pool_size} + reserve {pool.reserve}, shared by "
            f"{pool.split.instances} PgBouncer process(es)) + {DIRECT_HEADROOM} for the direct "
            "URL",
            f"lower poolkit:pgbouncer.default_pool_size to at most "
            f"{max(1, available - DIRECT_HEADROOM - pool.reserve)} (or postgres.cpus, which "
            "sizes it), or raise the server's max_connections",
        ))  # fmt: skip


INIT_SQL_TIMEOUT_S = 120


class InitSqlError(RuntimeError):
    """psql could not apply the init SQL; the message quotes its last lines, verifiers hidden."""


def apply_init_sql(external: ExternalPostgres, password: str, sql: str,
                   ca_pem: str | None) -> None:  # fmt: skip
    """Run ``sql`` (external-init.sql, psql syntax) on the server as the admin role.

    The password, the SQL (SCRAM verifiers) and the CA go to psql in 0600 files of a private
    temporary folder, never in its arguments; the folder is removed afterwards.
    """
    psql = shutil.which("psql")
    if psql is None:
        raise InitSqlError("preparing the external Postgres needs psql on this machine: "
                           "apt-get install postgresql-client")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="poolkit-external-") as folder:
        where = Path(folder)

        def escaped(text: str) -> str:
            return text.replace("\\", "\\\\").replace(":", "\\:")

        write_private(where / "pgpass", f"*:*:*:{escaped(external.admin_user)}:"
                                        f"{escaped(password)}\n")  # fmt: skip
        write_private(where / "init.sql", sql)
        env = {**os.environ, "PGPASSFILE": str(where / "pgpass"), "PGSSLMODE": external.sslmode,
               "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S)}  # fmt: skip
        if ca_pem:
            write_private(where / "server-ca.crt", ca_pem)
            env["PGSSLROOTCERT"] = str(where / "server-ca.crt")
        done = subprocess.run(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", external.host, "-p",
             str(external.port), "-U", external.admin_user, "-d", MAINTENANCE_DB,
             "-f", str(where / "init.sql")],
            env=env, capture_output=True, text=True, check=False, timeout=INIT_SQL_TIMEOUT_S,
        )  # fmt: skip
    if done.returncode != 0:
        redacted = re.sub(r"SCRAM-SHA-256\$\S+", "SCRAM-SHA-256$<redacted>",
                          done.stdout + done.stderr)  # fmt: skip
        last = "\n".join(redacted.strip().splitlines()[-5:])
        raise InitSqlError(f"preparing the external Postgres at {external.host} as "
                           f"{external.admin_user} failed:\n{last}")  # fmt: skip
