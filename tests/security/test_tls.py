"""TLS on the local target, PgBouncer published on 127.0.0.2 (never 0.0.0.0), PgBouncer to
Postgres over TLS, and a certificate rotation that clients survive by reconnecting."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from poolkit import console, tls
from poolkit.render import TLS_CERT, TLS_KEY
from tests.conftest import LocalStack, local_stack_running, run_cli
from tests.security.helpers import presented_serial, with_params

pytestmark = pytest.mark.integration
PLAIN = {"prepare_threshold": None, "connect_timeout": 5}
ADDRESS = "127.0.0.2"


@pytest.fixture(scope="module")
def tls_stack() -> Iterator[LocalStack]:
    with local_stack_running("poolkit-tls-", "tls", with_apps=False,
                             pgbouncer={"client_tls": True, "server_tls": True,
                                        "publish_address": ADDRESS}) as stack:  # fmt: skip
        yield stack


def test_pooled_urls_verify_full_on_the_published_address(tls_stack: LocalStack) -> None:
    env = tls_stack.env()
    for key in ("POOLED_DATABASE_URL", "PGBOUNCER_STATS_URL"):
        params = conninfo_to_dict(env[key])
        assert (params["host"], params["sslmode"]) == (ADDRESS, "verify-full"), key
        assert Path(params["sslrootcert"]) == tls_stack.state_dir / "conf" / "tls-ca.crt"
    assert env["DATABASE_URL"] == env["POOLED_DATABASE_URL"]
    prisma = env["PRISMA_ENGINE_DATABASE_URL"]
    assert "sslmode=require" in prisma and "sslaccept=strict" in prisma
    assert "sslmode" not in env["DIRECT_URL"]


def test_verify_full_connects_encrypted(tls_stack: LocalStack) -> None:
    with psycopg.connect(tls_stack.env()["POOLED_DATABASE_URL"], **PLAIN) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    config = console.config(tls_stack.env()["PGBOUNCER_STATS_URL"])
    assert (config["client_tls_sslmode"], config["server_tls_sslmode"]) == \
        ("require", "verify-full")  # fmt: skip


def test_pgbouncer_reaches_postgres_over_tls(tls_stack: LocalStack) -> None:
    with psycopg.connect(tls_stack.env()["POOLED_DATABASE_URL"], **PLAIN) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row == (True,)


@pytest.mark.parametrize("url_key", ["POOLED_DATABASE_URL", "PGBOUNCER_STATS_URL"])
def test_a_plain_connection_is_refused(tls_stack: LocalStack, url_key: str) -> None:
    url = with_params(tls_stack.env()[url_key], sslmode="disable")
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        psycopg.connect(url, **PLAIN).close()


def test_a_client_holding_the_wrong_ca_is_refused(tls_stack: LocalStack, tmp_path: Path) -> None:
    wrong = tmp_path / "other-ca.crt"
    wrong.write_text(tls.new_ca("not the stack's CA").cert)
    url = with_params(tls_stack.env()["POOLED_DATABASE_URL"], sslrootcert=str(wrong))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(url, **PLAIN).close()


def test_keys_are_private_and_the_ca_is_readable(tls_stack: LocalStack) -> None:
    conf = tls_stack.state_dir / "conf"
    assert stat.S_IMODE((conf / TLS_KEY).stat().st_mode) == 0o600
    assert stat.S_IMODE((conf / "tls-ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((conf / "tls-ca.crt").stat().st_mode) == 0o644


def test_smoke_passes_over_tls(tls_stack: LocalStack) -> None:
    done = run_cli("smoke", "--env-file", str(tls_stack.env_file), check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rotation_keeps_clients_working_after_reconnect(tls_stack: LocalStack) -> None:
    """Bump poolkit:tls.generation: a new server certificate from the same CA; the servers
    reload it, the open connection keeps working, and reconnecting clients verify it."""
    conf = tls_stack.state_dir / "conf"
    before = (conf / TLS_CERT).read_text()
    url = tls_stack.env()["POOLED_DATABASE_URL"]
    held = psycopg.connect(url, **PLAIN)
    try:
        document = yaml.safe_load(tls_stack.stack_file.read_text())
        document["config"].setdefault("poolkit:tls", {})["generation"] = 2
        tls_stack.stack_file.write_text(yaml.safe_dump(document, sort_keys=False))
        done = tls_stack.poolkit("up", "--no-smoke")
        output = done.stdout + done.stderr
        after = (conf / TLS_CERT).read_text()
        assert tls.serial_of(after) != tls.serial_of(before)
        assert "re-issued the TLS server certificate" in output
        assert held.execute("SELECT 1").fetchone() == (1,)
    finally:
        held.close()
    assert tls_stack.env()["POOLED_DATABASE_URL"] == url, "the URL (and its CA file) changed"
    with psycopg.connect(url, **PLAIN) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    presented = presented_serial(ADDRESS, tls_stack.pgbouncer_port, conf / "tls-ca.crt")
    assert presented == tls.serial_of(after)
