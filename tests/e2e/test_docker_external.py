"""Bring your own Postgres on the Docker target: a separately started server, fronted by the
real program (``__main__.py``) applied to the engine by the emulator.

The "external" server is a PostgreSQL 17 container this module starts on a Docker network of
its own, as a database of another compose project would be: ``ssl = on`` with a certificate
from a CA made here whose subjectAltName is the address the stack names, ``hostssl …
scram-sha-256`` only (plain TCP is rejected), and an admin role with CREATEROLE and CREATEDB
that is not a superuser. No port is published: PgBouncer and the apps join that network
(``postgres.external.network``), and this host reaches the server at its container address,
where the server check, the init SQL and ``DIRECT_URL`` run from.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import psycopg
import pulumi
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from poolkit.outputs import Outputs
from tests.integration.test_external_postgres import make_ca_and_server_cert
from tests.pulumi.harness import PROJECT

from .conftest import BASE_IMAGE
from .engine_mocks import RUN_LABEL, DockerEngineMocks, cleanup
from .stack import (
    LAMBDA_APP,
    NOTHING_LEFT,
    E2EStack,
    assert_smoke_passes,
    brought_up,
    new_stack,
    run_program,
)
from .test_docker_stack import http_json

pytestmark = pytest.mark.e2e

ADMIN = "byo_admin"
ADMIN_PASSWORD = "admin-password-of-the-e2e-test"
ADMIN_KEY = "poolkit:external_admin_password"
MAX_CONNECTIONS = 40
SERVER_DIR = "/byo"
READY_S = 90
START = f"""set -eu
until [ -f {SERVER_DIR}/ready ]; do sleep 0.1; done
initdb -D {SERVER_DIR}/data -U postgres --auth-local=peer --auth-host=reject -E UTF8 >/dev/null
echo "include '{SERVER_DIR}/server.conf'" >> {SERVER_DIR}/data/postgresql.conf
cp {SERVER_DIR}/pg_hba.conf {SERVER_DIR}/data/pg_hba.conf
exec postgres -D {SERVER_DIR}/data
"""
"""The server container's command: wait for the files (the certificate needs the address the
container gets when it starts), then initdb and run the server in the foreground."""


def _tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A tar of ``SERVER_DIR`` (0700) and ``files`` (name -> (content, mode)), owned by 999."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        folder = tarfile.TarInfo(SERVER_DIR.lstrip("/"))
        folder.type, folder.mode, folder.uid, folder.gid = tarfile.DIRTYPE, 0o700, 999, 999
        tar.addfile(folder)
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(f"{SERVER_DIR.lstrip('/')}/{name}")
            info.size, info.mode, info.uid, info.gid = len(data), mode, 999, 999
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class Server:
    """The external server: where the stack finds it, and how the test talks to it."""

    host: str
    """Its address on ``network`` (the certificate's subjectAltName)."""
    network: str
    ca: Path
    container: Any

    def admin(self, **params: str) -> psycopg.Connection[tuple[Any, ...]]:
        """The admin role over verify-full TLS, as the kit connects."""
        kwargs = {"sslmode": "verify-full", "sslrootcert": str(self.ca), **params}
        return psycopg.connect(host=self.host, port=5432, dbname="postgres", user=ADMIN,
                               password=ADMIN_PASSWORD, connect_timeout=5, autocommit=True,
                               **kwargs)  # fmt: skip


def _server_files(host: str, folder: Path) -> tuple[Path, dict[str, tuple[bytes, int]]]:
    ca, cert, key = make_ca_and_server_cert(folder, (host,))
    conf = (f"listen_addresses = '{host}'\nport = 5432\nmax_connections = {MAX_CONNECTIONS}\n"
            f"ssl = on\nssl_cert_file = '{SERVER_DIR}/server.crt'\n"
            f"ssl_key_file = '{SERVER_DIR}/server.key'\n"
            "password_encryption = 'scram-sha-256'\nshared_buffers = 32MB\n")  # fmt: skip
    hba = ("local all postgres peer\n"
           "hostnossl all all 0.0.0.0/0 reject\n"
           "hostssl all all 0.0.0.0/0 scram-sha-256\n")  # fmt: skip
    # pg_read_all_stats: the test reads other roles' pg_stat_ssl rows.
    roles = (f"CREATE ROLE {ADMIN} LOGIN CREATEROLE CREATEDB PASSWORD '{ADMIN_PASSWORD}';\n"
             f"GRANT pg_read_all_stats TO {ADMIN};\n")  # fmt: skip
    return ca, {"server.crt": (cert.read_bytes(), 0o644), "server.key": (key.read_bytes(), 0o600),
                "server.conf": (conf.encode(), 0o644), "pg_hba.conf": (hba.encode(), 0o600),
                "roles.sql": (roles.encode(), 0o600), "ready": (b"", 0o644)}  # fmt: skip


def _wait_for_roles(container: Any) -> None:
    """Run roles.sql as the bootstrap superuser over the socket once the server answers."""
    deadline = time.monotonic() + READY_S
    while True:
        done = container.exec_run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres",
                                   "-f", f"{SERVER_DIR}/roles.sql"], user="postgres")  # fmt: skip
        if done.exit_code == 0:
            return
        container.reload()
        if container.status != "running" or time.monotonic() > deadline:
            raise RuntimeError(f"the external server did not start: {done.output!r}\n"
                               f"{container.logs(tail=30).decode(errors='replace')}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def server(client: docker.DockerClient) -> Iterator[Server]:
    """A PostgreSQL server the kit does not run, on a network of its own; removed afterwards."""
    run_id = f"e2e-byo-{time.monotonic_ns() % 10**8:08d}"
    labels = {RUN_LABEL: run_id}
    folder = Path(tempfile.mkdtemp(prefix="poolkit-e2e-byo-"))
    try:
        image, _ = client.images.build(
            path=str(PROJECT / "images" / "postgres"), tag=f"poolkit-{run_id}:latest",
            buildargs={"BASE_IMAGE": BASE_IMAGE, "PG_MAJOR": "17"}, labels=labels, rm=True)
        network = client.networks.create(f"poolkit-{run_id}", labels=labels)
        container = client.containers.create(
            image.id, name=f"poolkit-{run_id}", entrypoint=["/bin/sh", f"{SERVER_DIR}/start"],
            network=network.name, labels=labels, user="postgres", stop_signal="SIGINT")
        container.put_archive("/", _tar({"start": (START.encode(), 0o755)}))
        container.start()
        container.reload()
        host = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
        ca, files = _server_files(host, folder)
        container.put_archive("/", _tar(files))
        _wait_for_roles(container)
        yield Server(host=host, network=network.name, ca=ca, container=container)
    finally:
        cleanup(run_id, client, images=True)
        shutil.rmtree(folder, ignore_errors=True)


def byo_stack(client: docker.DockerClient, server: Server, **pgbouncer: Any) -> E2EStack:
    """A test stack (two Python apps) fronting the server; its file written, nothing created."""
    stack = new_stack(client)
    stack.config["poolkit:postgres"] = {"memory": "512MiB", "cpus": 1, "external": {
        "host": server.host, "port": 5432, "sslmode": "verify-full", "ca_file": str(server.ca),
        "admin_user": ADMIN, "network": server.network}}  # fmt: skip
    stack.config["poolkit:pgbouncer"].update(pgbouncer)
    stack.config[ADMIN_KEY] = ADMIN_PASSWORD
    stack.secret_keys = [ADMIN_KEY]
    stack.stack_file.write_text(yaml.safe_dump({"config": stack.config}, sort_keys=False))
    return stack


@pytest.fixture(scope="module")
def stack(client: docker.DockerClient, server: Server) -> Iterator[E2EStack]:
    stack = byo_stack(client, server)
    with brought_up(stack, f"e2e external-Postgres stack {stack.name}: seconds"):
        yield stack


def test_the_server_takes_only_tls_and_the_admin_is_no_superuser(server: Server) -> None:
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        server.admin(sslmode="disable").close()
    with server.admin() as admin:
        row = admin.execute("SELECT rolsuper, rolcreaterole FROM pg_roles "
                            "WHERE rolname = current_user").fetchone()  # fmt: skip
    assert row == (False, True)


def test_the_stack_runs_no_postgres(stack: E2EStack, server: Server) -> None:
    left = stack.leftovers()
    assert sorted(left["containers"]) == sorted(
        [f"poolkit-{stack.name}-pgbouncer", f"poolkit-{stack.name}-orders-0",
         f"poolkit-{stack.name}-edge-0"])  # fmt: skip
    assert left["volumes"] == []
    assert stack.mocks is not None
    images = [a.inputs["imageName"] for a in stack.mocks.state.values() if "imageName" in a.inputs]
    assert not [name for name in images if "postgres" in name], images
    assert stack.outputs[Outputs.EXTERNAL_POSTGRES] == f"{server.host}:5432"
    bouncer = stack.container("pgbouncer")
    assert server.network in bouncer.attrs["NetworkSettings"]["Networks"]


def test_pgbouncer_verifies_the_server_with_the_uploaded_ca(stack: E2EStack, server: Server
                                                            ) -> None:  # fmt: skip
    bouncer = stack.container("pgbouncer")
    ca = bouncer.exec_run(["cat", "/etc/pgbouncer/server-ca.crt"])
    assert ca.exit_code == 0 and ca.output == server.ca.read_bytes()
    ini = bouncer.exec_run(["cat", "/etc/pgbouncer/pgbouncer.ini"]).output.decode()
    assert "server_tls_sslmode = verify-full" in ini
    assert f"host={server.host} port=5432" in ini


def test_smoke_passes_with_verify_full_to_the_server(stack: E2EStack, server: Server) -> None:
    direct = conninfo_to_dict(stack.env()["DIRECT_URL"])
    assert (direct["host"], direct["sslmode"], direct["sslrootcert"]) == (
        server.host, "verify-full", str(server.ca))
    assert_smoke_passes(stack, "poolkit smoke against an external Postgres (Docker): seconds")


def test_pgbouncers_server_connections_are_tls(stack: E2EStack, server: Server) -> None:
    bouncer_ip = stack.container("pgbouncer").attrs["NetworkSettings"]["Networks"][
        server.network]["IPAddress"]
    with psycopg.connect(stack.env()["POOLED_DATABASE_URL"]) as pooled:
        # The open transaction keeps PgBouncer's server connection bound to this client.
        backend = pooled.execute("SELECT pg_backend_pid()").fetchone()
        assert backend is not None
        pid = backend[0]
        with server.admin() as admin:
            row = admin.execute(
                "SELECT s.ssl, host(a.client_addr), a.usename FROM pg_stat_ssl s "
                "JOIN pg_stat_activity a USING (pid) WHERE pid = %s", (pid,)).fetchone()
            plain = admin.execute(
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                "WHERE a.usename IN ('app', 'migrator') AND NOT s.ssl").fetchone()
    assert row == (True, bouncer_ip, "app")
    assert plain == (0,)


def test_the_kits_roles_were_made_by_the_admin_and_own_nothing_more(
    stack: E2EStack, server: Server
) -> None:
    with server.admin() as admin:
        roles = dict(admin.execute("SELECT rolname, rolsuper OR rolcreaterole OR rolcreatedb "
                                   "FROM pg_roles WHERE rolname IN ('app', 'migrator')"
                                   ).fetchall())  # fmt: skip
        owner = admin.execute("SELECT pg_get_userbyid(datdba) FROM pg_database "
                              "WHERE datname = 'app'").fetchone()  # fmt: skip
    assert roles == {"app": False, "migrator": False}
    assert owner == ("migrator",)


def test_the_apps_migrated_and_answer_through_pgbouncer(stack: E2EStack) -> None:
    status, created = http_json(stack.app_port(LAMBDA_APP), "POST", "/items",
                                {"name": "byo-item"})  # fmt: skip
    assert status == 201, created


def test_a_budget_the_server_cannot_hold_is_refused_before_anything_exists(
    client: docker.DockerClient, server: Server
) -> None:
    """The real check against the real server, from the program, before any resource."""
    big = byo_stack(client, server, default_pool_size=60)
    mocks = big.mocks = DockerEngineMocks(big.run_id, client)
    try:
        with pytest.raises(pulumi.RunError) as failure:
            run_program(big, mocks)
        text = str(failure.value)
        assert "poolkit:postgres.external.max_connections" in text, text
        assert f"{MAX_CONNECTIONS}" in text and "default_pool_size" in text, text
        assert ADMIN_PASSWORD not in text
        assert mocks.actions == []
    finally:
        assert big.tear_down() == NOTHING_LEFT
