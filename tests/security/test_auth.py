"""Authentication and access on the shared stack: SCRAM only, pg_hba for our roles only, the
PgBouncer console for its own users only. Every check is made by a real login attempt or read
back from the server, never from a config file."""

from __future__ import annotations

import psycopg
import pytest

from poolkit import console
from poolkit.secrets import MONITOR_USER
from tests.conftest import LocalStack
from tests.security.helpers import secrets, superuser, with_params

pytestmark = pytest.mark.integration
PLAIN = {"prepare_threshold": None, "connect_timeout": 5}


def _refused(url: str, *words: str) -> str:
    with pytest.raises(psycopg.OperationalError) as error:
        psycopg.connect(url, **PLAIN).close()
    message = str(error.value)
    assert all(word in message for word in words), message
    return message


def test_every_login_role_has_a_scram_verifier(local_stack: LocalStack) -> None:
    with superuser(local_stack) as conn:
        roles = conn.execute("SELECT rolname, rolpassword FROM pg_authid WHERE rolcanlogin "
                             "ORDER BY rolname").fetchall()  # fmt: skip
        (encryption,) = conn.execute("SHOW password_encryption").fetchone()
    names = {name for name, _ in roles}
    assert {"app", "migrator", secrets(local_stack)["superuser"]["user"]} <= names
    # Every password of this stack is generated: 256 iterations (poolkit.scram, BENCHMARKS.md),
    # 4096 for postgres_exporter's role (its driver refuses fewer).
    rounds = {MONITOR_USER: "4096"}
    weak = [name for name, verifier in roles
            if not (verifier or "").startswith(f"SCRAM-SHA-256${rounds.get(name, '256')}:")]
    assert weak == [], "login roles without a generated-password SCRAM verifier"
    assert encryption == "scram-sha-256"


@pytest.mark.parametrize("url_key", ["POOLED_DATABASE_URL", "DIRECT_URL"])
def test_a_wrong_password_is_refused(local_stack: LocalStack, url_key: str) -> None:
    url = local_stack.env()[url_key]
    _refused(with_params(url, password="wrong-password-123"), "authentication failed")
    with psycopg.connect(url, **PLAIN) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,), "the right one works"


@pytest.mark.parametrize("url_key", ["POOLED_DATABASE_URL", "DIRECT_URL", "PGBOUNCER_STATS_URL"])
@pytest.mark.parametrize("method", ["password", "md5"])
def test_only_scram_is_offered(local_stack: LocalStack, url_key: str, method: str) -> None:
    """libpq's require_auth: a client that insists on plain or md5 auth is never asked for it."""
    url = local_stack.env()[url_key]
    _refused(with_params(url, require_auth=method), "server requested SASL authentication")
    psycopg.connect(with_params(url, require_auth="scram-sha-256"), **PLAIN).close()


def test_pgbouncer_authenticates_with_scram(local_stack: LocalStack) -> None:
    settings = console.config(local_stack.env()["PGBOUNCER_STATS_URL"])
    assert settings["auth_type"] == "scram-sha-256"


def test_pg_hba_rules_admit_only_our_roles_to_our_database(local_stack: LocalStack) -> None:
    """Read from pg_hba_file_rules: what the server loaded, not what a file says."""
    with superuser(local_stack) as conn:
        rules = conn.execute("SELECT type, database, user_name, address, auth_method, error "
                             "FROM pg_hba_file_rules ORDER BY line_number").fetchall()  # fmt: skip
    superuser_name = secrets(local_stack)["superuser"]["user"]
    assert [r[5] for r in rules if r[5]] == [], "every line parses"
    assert {r[4] for r in rules} == {"scram-sha-256"}
    assert [r[:4] for r in rules if r[0] == "local"] == [("local", ["all"], [superuser_name], None)]
    host_rules = [r for r in rules if r[0] != "local"]
    assert {(r[0], tuple(r[1]), tuple(r[2]), r[3]) for r in host_rules} == {
        ("host", ("app",), ("migrator",), "127.0.0.1"),
        ("host", ("app",), ("app",), "127.0.0.1"),
    }


@pytest.mark.parametrize("role", ["app", "migrator"])
def test_our_roles_cannot_reach_other_databases(local_stack: LocalStack, role: str) -> None:
    env = local_stack.env()
    url = env["POOLED_DATABASE_URL" if role == "app" else "DIRECT_URL"]
    password = secrets(local_stack)[role]["password"]
    direct = with_params(env["DIRECT_URL"], user=role, password=password)
    for dbname in ("postgres", "template1"):
        _refused(with_params(direct, dbname=dbname), "no pg_hba.conf entry")
    with psycopg.connect(with_params(direct, dbname="app"), **PLAIN) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    assert url


def test_superuser_cannot_log_in_over_tcp(local_stack: LocalStack) -> None:
    credential = secrets(local_stack)["superuser"]
    url = with_params(local_stack.env()["DIRECT_URL"], user=credential["user"],
                      password=credential["password"], dbname="postgres")  # fmt: skip
    _refused(url, "no pg_hba.conf entry")


def test_the_app_role_cannot_open_the_pgbouncer_console(local_stack: LocalStack) -> None:
    _refused(with_params(local_stack.env()["POOLED_DATABASE_URL"], dbname="pgbouncer"),
             "not allowed")  # fmt: skip


def test_the_migrator_is_unknown_to_pgbouncer(local_stack: LocalStack) -> None:
    env = local_stack.env()
    password = secrets(local_stack)["migrator"]["password"]
    _refused(with_params(env["POOLED_DATABASE_URL"], user="migrator", password=password))


def test_the_stats_user_may_show_but_not_pause(local_stack: LocalStack) -> None:
    stats = local_stack.env()["PGBOUNCER_STATS_URL"]
    assert console.pools(stats), "SHOW POOLS works"
    for statement in ("PAUSE app", "RELOAD", "RESUME app"):
        with pytest.raises(psycopg.Error, match="admin access needed"):
            console.command(stats, statement)
    assert console.databases(stats)["app"]["paused"] == 0


def test_the_admin_user_may_reload(local_stack: LocalStack) -> None:
    admin = secrets(local_stack)["pgbouncer_admin"]
    url = with_params(local_stack.env()["PGBOUNCER_STATS_URL"], user=admin["user"],
                      password=admin["password"])  # fmt: skip
    console.reload(url)
    assert console.config(url)["pool_mode"] == "transaction"
