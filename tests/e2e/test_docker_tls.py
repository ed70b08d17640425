"""TLS and exposure on the Docker target: the real program, a real engine, real handshakes.

One stack (``tls_stack_config``): PgBouncer (client TLS ``require``) and Postgres (TLS-only
``hostssl``) published on 127.0.0.2, never 0.0.0.0; PgBouncer verifies Postgres
(``server_tls_sslmode = verify-full``); a generated CA kept in the program's state and written
where the ``.env`` URLs expect it; one Lambda-style app verifying PgBouncer with the CA inside
the network. Clients here are psycopg (libpq) and ``psql``, on their defaults plus the URL.
Rotation is proven on the local target (``tests/security/test_tls.py``): this emulator only
creates.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from poolkit import console, tls
from poolkit.outputs import Outputs
from tests.drivers import harness
from tests.pulumi.harness import PROJECT
from tests.security.helpers import presented_serial, with_params

from .conftest import FIGURES
from .stack import (
    LAMBDA_APP,
    SUBPROCESS_TIMEOUT_S,
    TLS_ADDRESS,
    E2EStack,
    brought_up,
    new_stack,
    update,
)
from .test_docker_stack import container_ip, http_json

pytestmark = pytest.mark.e2e
CONNECTS = 25
"""verify-full connects per URL in the handshake test."""
SERVER_URLS = ("POOLED_DATABASE_URL", "DIRECT_URL", "PGBOUNCER_STATS_URL")


@pytest.fixture(scope="module")
def stack(client: docker.DockerClient) -> Iterator[E2EStack]:
    stack = new_stack(client, tls=True)
    with brought_up(stack, f"e2e TLS stack {stack.name}: seconds"):
        yield stack


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, connect_timeout=5)


def _ca_file(stack: E2EStack) -> Path:
    return Path(conninfo_to_dict(stack.env()["POOLED_DATABASE_URL"])["sslrootcert"])


def test_servers_are_published_on_127_0_0_2_and_the_app_on_127_0_0_1(stack: E2EStack) -> None:
    bouncer, postgres = stack.config["poolkit:pgbouncer"], stack.config["poolkit:postgres"]
    expected = {"pgbouncer": ("6432/tcp", TLS_ADDRESS, bouncer["port"]),
                "postgres": ("5432/tcp", TLS_ADDRESS, postgres["port"]),
                LAMBDA_APP: ("8080/tcp", "127.0.0.1", stack.app_port(LAMBDA_APP))}  # fmt: skip
    for role, (internal, address, port) in expected.items():
        bindings = stack.container(role).attrs["HostConfig"]["PortBindings"]
        assert bindings == {internal: [{"HostIp": address, "HostPort": str(port)}]}, role


def test_env_urls_verify_full_with_the_ca_the_program_kept(stack: E2EStack) -> None:
    env = stack.env()
    for key in (*SERVER_URLS, "DATABASE_URL"):
        params = conninfo_to_dict(env[key])
        assert (params["host"], params["sslmode"]) == (TLS_ADDRESS, "verify-full"), key
        assert Path(params["sslrootcert"]) == _ca_file(stack), key
    assert _ca_file(stack).read_text() == stack.outputs[Outputs.TLS_CA]
    assert tls.names_of(stack.outputs[Outputs.TLS_CA]) == [], "the CA, not a server certificate"


def test_verify_full_handshakes_succeed_on_every_url(stack: E2EStack) -> None:
    """``CONNECTS`` fresh connections per URL, each a full TLS handshake verified against
    the CA and the name 127.0.0.2, then SCRAM."""
    env, seconds = stack.env(), {}
    for key in SERVER_URLS:
        started = time.monotonic()
        for _ in range(CONNECTS):
            with _connect(env[key]) as conn:
                assert conn.pgconn.ssl_in_use, key
        seconds[f"{CONNECTS} verify-full connects, {key}"] = round(time.monotonic() - started, 2)
    FIGURES["e2e TLS handshakes (connect + verify + SCRAM + close)"] = seconds


def test_psql_connects_with_the_urls_unchanged(stack: E2EStack) -> None:
    env = stack.env()
    for key in ("DATABASE_URL", "DIRECT_URL"):
        done = subprocess.run(["psql", env[key], "-c", r"\conninfo"], capture_output=True,
                              text=True, timeout=30, check=False)  # fmt: skip
        assert done.returncode == 0, f"{key}: {done.stderr}"
        assert "SSL connection (protocol: TLSv1." in done.stdout, key


def test_pgbouncer_reaches_postgres_over_verified_tls(stack: E2EStack) -> None:
    env = stack.env()
    with _connect(env["POOLED_DATABASE_URL"]) as conn:
        row = conn.execute("SELECT ssl, version FROM pg_stat_ssl "
                           "WHERE pid = pg_backend_pid()").fetchone()  # fmt: skip
    assert row is not None and row[0] is True and row[1].startswith("TLSv1."), row
    config = console.config(env["PGBOUNCER_STATS_URL"])
    assert (config["client_tls_sslmode"], config["server_tls_sslmode"]) == (
        "require", "verify-full")
    servers = console.show(env["PGBOUNCER_STATS_URL"], "SERVERS")
    assert servers and all(s["tls"] for s in servers), servers


@pytest.mark.parametrize("key", SERVER_URLS)
def test_a_plain_text_connection_is_refused(stack: E2EStack, key: str) -> None:
    url = with_params(stack.env()[key], sslmode="disable")
    with pytest.raises(psycopg.OperationalError) as refused:
        _connect(url).close()
    assert "SSL required" in str(refused.value) or "no encryption" in str(refused.value), str(
        refused.value)


@pytest.mark.parametrize("key", SERVER_URLS)
def test_a_client_holding_the_wrong_ca_is_refused(
    stack: E2EStack, tmp_path: Path, key: str
) -> None:
    wrong = tmp_path / "other-ca.crt"
    wrong.write_text(tls.new_ca("not the stack's CA").cert)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _connect(with_params(stack.env()[key], sslrootcert=str(wrong))).close()


def test_a_name_the_certificate_does_not_carry_is_refused(stack: E2EStack) -> None:
    """The right server and CA, reached under another name (libpq's ``hostaddr``)."""
    assert TLS_ADDRESS in tls.names_of(_server_cert(stack))
    renamed = with_params(stack.env()["POOLED_DATABASE_URL"], hostaddr=TLS_ADDRESS,
                          host="not-in-the-certificate.test")  # fmt: skip
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        _connect(renamed).close()


def _server_cert(stack: E2EStack) -> str:
    """The certificate PgBouncer presents (read from its container)."""
    done = stack.container("pgbouncer").exec_run(["cat", "/etc/pgbouncer/client-tls.crt"])
    assert done.exit_code == 0, done.output
    return str(done.output.decode())


def test_the_app_verifies_pgbouncer_with_the_ca_inside_the_network(stack: E2EStack) -> None:
    status, created = http_json(stack.app_port(LAMBDA_APP), "POST", "/items", {"name": "tls"})
    assert status == 201, created
    address = container_ip(stack, LAMBDA_APP)
    clients = [c for c in console.show(stack.env()["PGBOUNCER_STATS_URL"], "CLIENTS")
               if c["addr"] == address]  # fmt: skip
    assert clients and all(c["tls"].startswith("TLSv1.") for c in clients), clients


def test_smoke_passes_over_tls(stack: E2EStack) -> None:
    command = [sys.executable, "-m", "poolkit", "smoke", "--env-file", str(stack.env_file)]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, check=False,
                          timeout=SUBPROCESS_TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def driver_stack(stack: E2EStack) -> E2EStack:
    """The stack with the driver suite's table, made over the verify-full DIRECT_URL."""
    harness.prepare_node()
    harness.create_table(stack.env_file)
    return stack


@pytest.mark.parametrize("driver", harness.ALL_DRIVERS)
def test_every_driver_verifies_the_server_from_the_url_alone(
    driver_stack: E2EStack, driver: str
) -> None:
    """psycopg, asyncpg, SQLAlchemy, node-postgres and Prisma 7 read ``sslmode=verify-full``
    and ``sslrootcert`` from ``DATABASE_URL`` with nothing else configured."""
    figures = harness.run_driver(driver, driver_stack.env_file, "docker")
    assert figures["queries"] > 0
    assert (figures["wrong"], figures["errors"]) == (0, 0), figures["first_problem"]


def test_rotation_keeps_clients_working_after_reconnect(stack: E2EStack) -> None:
    """A second ``pulumi up`` with ``tls.generation`` bumped: the provider re-issues the server
    certificate from the kept CA, the containers holding it are replaced, and clients holding
    the same CA file and URLs verify the new certificate when they reconnect."""
    env, ca_pem, before = stack.env(), _ca_file(stack).read_text(), _server_cert(stack)
    config = copy.deepcopy(stack.config)
    config["poolkit:tls"]["generation"] = 2
    seconds = update(stack, config)
    after = _server_cert(stack)
    assert tls.serial_of(after) != tls.serial_of(before)
    assert stack.mocks is not None
    assert {("same", "poolkit-tls-ca"), ("replace", "poolkit-tls-server")} <= set(
        stack.mocks.actions)
    assert (stack.env(), _ca_file(stack).read_text()) == (env, ca_pem), "clients must change"
    for key in SERVER_URLS:
        with _connect(env[key]) as conn:
            assert conn.pgconn.ssl_in_use, key
    port = stack.config["poolkit:pgbouncer"]["port"]
    assert presented_serial(TLS_ADDRESS, port, _ca_file(stack)) == tls.serial_of(after)
    status, created = http_json(stack.app_port(LAMBDA_APP), "POST", "/items", {"name": "rot"})
    assert status == 201, created
    FIGURES["e2e TLS rotation: seconds"] = {"pulumi up (generation 1 -> 2)": seconds}
