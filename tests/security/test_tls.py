"""Client TLS on PgBouncer (``poolkit:pgbouncer.client_tls: true``), on a stack of its own."""

from __future__ import annotations

import stat
from collections.abc import Iterator

import psycopg
import pytest

from poolkit import console
from poolkit.render import TLS_CERT, TLS_KEY
from tests.conftest import LocalStack, run_cli, start_local_stack, stop_local_stack
from tests.security.helpers import with_params

pytestmark = pytest.mark.integration
PLAIN = {"prepare_threshold": None, "connect_timeout": 5}


@pytest.fixture(scope="module")
def tls_stack() -> Iterator[LocalStack]:
    stack = start_local_stack("poolkit-tls-", "tls", with_apps=False,
                              pgbouncer={"client_tls": True})  # fmt: skip
    try:
        yield stack
    finally:
        stop_local_stack(stack)


def test_pooled_urls_require_tls(tls_stack: LocalStack) -> None:
    env = tls_stack.env()
    for key in ("POOLED_DATABASE_URL", "DATABASE_URL", "PGBOUNCER_STATS_URL"):
        assert "sslmode=require" in env[key], key
    assert "sslmode" not in env["DIRECT_URL"]


def test_sslmode_require_connects_encrypted(tls_stack: LocalStack) -> None:
    with psycopg.connect(tls_stack.env()["POOLED_DATABASE_URL"], **PLAIN) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    assert console.config(tls_stack.env()["PGBOUNCER_STATS_URL"])["client_tls_sslmode"] == \
        "require"  # fmt: skip


@pytest.mark.parametrize("url_key", ["POOLED_DATABASE_URL", "PGBOUNCER_STATS_URL"])
def test_a_plain_connection_is_refused(tls_stack: LocalStack, url_key: str) -> None:
    url = with_params(tls_stack.env()[url_key], sslmode="disable")
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        psycopg.connect(url, **PLAIN).close()


def test_the_generated_certificate_verifies_for_127_0_0_1(tls_stack: LocalStack) -> None:
    cert = tls_stack.state_dir / "conf" / TLS_CERT
    url = with_params(tls_stack.env()["POOLED_DATABASE_URL"], sslmode="verify-full",
                      sslrootcert=str(cert))  # fmt: skip
    with psycopg.connect(url, **PLAIN) as conn:
        assert conn.pgconn.ssl_in_use
    assert stat.S_IMODE((tls_stack.state_dir / "conf" / TLS_KEY).stat().st_mode) == 0o600


def test_smoke_passes_over_tls(tls_stack: LocalStack) -> None:
    done = run_cli("smoke", "--env-file", str(tls_stack.env_file), check=False)
    assert done.returncode == 0, done.stdout + done.stderr
