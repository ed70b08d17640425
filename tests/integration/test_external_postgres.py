"""Bring your own Postgres: a separately started server with TLS, its own CA, SCRAM only and a
non-superuser admin role, fronted by the kit; and the refusals that come before anything exists.

The "external" server is a real PostgreSQL cluster this module starts itself (initdb, ``ssl =
on`` with a certificate from a CA made here with ``cryptography``, ``hostssl … scram-sha-256``
only, no plain TCP), listening on 127.0.0.1 as ``localhost``. The kit gets only its host, port,
CA and an admin role with CREATEROLE and CREATEDB.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from poolkit.local import detect_tools, service_user
from poolkit.local.machine import own
from tests.conftest import free_ports, make_base_dir, run_cli
from tests.integration.series import scrape

pytestmark = pytest.mark.integration

ADMIN = "byo_admin"
ADMIN_PASSWORD = "admin-password-for-the-test"
MAX_CONNECTIONS = 40


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_ca_and_server_cert(folder: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
                            ) -> tuple[Path, Path, Path]:  # fmt: skip
    """A CA, and a server certificate it signed for ``hosts`` (its subjectAltNames):
    (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("poolkit test CA"))
          .issuer_name(_name("poolkit test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    names = [_general_name(host) for host in hosts]
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    paths = folder / "ca.crt", folder / "server.crt", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    for path in paths:
        path.chmod(0o600 if path.name.endswith(".key") else 0o644)
    return paths


@dataclass(frozen=True)
class External:
    base: Path
    port: int
    ca: Path

    def stack_file(self, name: str, *, pgbouncer_port: int, **overrides: object) -> Path:
        external = {"host": "localhost", "port": self.port, "sslmode": "verify-full",
                    "ca_file": str(self.ca), "admin_user": ADMIN}  # fmt: skip
        external.update(overrides.pop("external", {}))  # type: ignore[arg-type]
        monitoring = overrides.pop("monitoring", None)
        config: dict[str, object] = {"poolkit:postgres": {"cpus": 2, "external": external},
                                     "poolkit:pgbouncer": {"port": pgbouncer_port, **overrides}}
        if monitoring:
            config["poolkit:monitoring"] = monitoring
        path = self.base / f"Pulumi.{name}.yaml"
        path.write_text(yaml.safe_dump({"config": config}, sort_keys=False))
        return path

    def admin_connection(self) -> psycopg.Connection[tuple[object, ...]]:
        """The admin role over verify-full TLS, as the kit connects."""
        return psycopg.connect(host="localhost", port=self.port, dbname="postgres", user=ADMIN,
                               password=ADMIN_PASSWORD, sslmode="verify-full",
                               sslrootcert=str(self.ca))  # fmt: skip

    def superuser_sql(self, sql: str) -> None:
        """Run SQL as the bootstrap superuser over the server's private socket (peer auth)."""
        tools = detect_tools()
        done = subprocess.run([str(tools.pgbin / "psql"), "-X", "-v", "ON_ERROR_STOP=1",
                               "-h", str(self.base / "sock"), "-p", str(self.port),
                               "-d", "postgres", "-c", sql],
                              capture_output=True, text=True, timeout=60,
                              **service_user().popen_kwargs())  # fmt: skip
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def external() -> Iterator[External]:
    """A PostgreSQL server the kit does not run: TLS with its own CA, SCRAM only."""
    tools, user = detect_tools(), service_user()
    base = make_base_dir("poolkit-byo-")
    port = free_ports(1)
    ca, cert, key = make_ca_and_server_cert(base)
    data, sock, logs = base / "data", base / "sock", base / "log"
    for folder in (data, sock, logs):
        folder.mkdir(mode=0o700)
        own(folder, user)
    for path in (cert, key):
        own(path, user)
    run = user.popen_kwargs()
    subprocess.run([str(tools.pgbin / "initdb"), "-D", str(data), "-U", "postgres",
                    "--auth-local=peer", "--auth-host=reject", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120, **run)  # fmt: skip
    (data / "pg_hba.conf").write_text(
        "local all postgres peer\n"
        "hostssl all all 127.0.0.1/32 scram-sha-256\n"
        "hostnossl all all 0.0.0.0/0 reject\n"
    )
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                   f"unix_socket_directories = '{sock}'\nmax_connections = {MAX_CONNECTIONS}\n"
                   f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n"
                   "password_encryption = 'scram-sha-256'\nshared_buffers = 32MB\n")  # fmt: skip
    subprocess.run([str(tools.pgbin / "pg_ctl"), "-D", str(data), "-l", str(logs / "pg.log"),
                    "-w", "-t", "60", "start"], check=True, capture_output=True, timeout=90,
                   **run)  # fmt: skip
    server = External(base, port, ca)
    try:
        server.superuser_sql(f"CREATE ROLE {ADMIN} LOGIN CREATEROLE CREATEDB "
                             f"PASSWORD '{ADMIN_PASSWORD}'")  # fmt: skip
        server.superuser_sql(f"GRANT pg_read_all_stats TO {ADMIN}")  # the test reads pg_stat_ssl
        server.superuser_sql("CREATE ROLE weak_admin LOGIN PASSWORD 'weak-admin-password'")
        server.superuser_sql("CREATE ROLE super_admin LOGIN SUPERUSER "
                             "PASSWORD 'super-admin-password'")  # fmt: skip
        yield server
    finally:
        subprocess.run([str(tools.pgbin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                        "stop"], capture_output=True, timeout=90, **run)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def _up(server: External, name: str, password: str = ADMIN_PASSWORD, **overrides: object
        ) -> tuple[subprocess.CompletedProcess[str], Path, Path]:  # fmt: skip
    stack_file = server.stack_file(name, pgbouncer_port=free_ports(1), **overrides)
    state, env_file = server.base / f"state-{name}", server.base / f".env.{name}"
    done = run_cli("up", "--no-smoke", "--stack-file", str(stack_file), "--state-dir",
                   str(state), "--env-file", str(env_file), check=False,
                   env={"POOLKIT_EXTERNAL_ADMIN_PASSWORD": password})  # fmt: skip
    return done, state, env_file


def _down(state: Path) -> None:
    run_cli("down", "--purge", "--yes", "--state-dir", str(state), check=False)


def test_kit_fronts_the_external_server_and_smoke_passes_with_verify_full(
    external: External,
) -> None:
    """With the exporters on: ``poolkit_monitor`` is made by the admin role (pg_monitor, no
    superuser), and postgres_exporter reads the server over verify-full TLS."""
    taken: set[int] = set()  # 8: validation keeps a derived process count's range free
    exporter_ports = {"pgbouncer_exporter_port": free_ports(8, taken),
                      "postgres_exporter_port": free_ports(1, taken)}  # fmt: skip
    done, state, env_file = _up(external, "byo",
                                monitoring={"exporters": True, **exporter_ports})
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert not (state / "data").exists(), "no Postgres cluster is made for an external one"
        smoke = run_cli("smoke", "--env-file", str(env_file), check=False)
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        from poolkit.envfile import read_env

        env = read_env(env_file)
        assert "sslmode=verify-full" in env["DIRECT_URL"]
        ini = (state / "conf").glob("pgbouncer*.ini")
        text = "\n".join(path.read_text() for path in ini)
        assert "server_tls_sslmode = verify-full" in text
        # PgBouncer's server connections are TLS: the server says so in pg_stat_ssl.
        with psycopg.connect(env["POOLED_DATABASE_URL"]) as pooled:
            pid = pooled.execute("SELECT pg_backend_pid()").fetchone()  # a transaction stays open
            with psycopg.connect(env["DIRECT_URL"]) as direct:
                found = direct.execute("SELECT rolname, rolsuper FROM pg_roles WHERE "
                                       "rolname IN ('app', 'migrator')").fetchall()  # fmt: skip
                roles = dict(found)
            # Another role's TLS status is visible to pg_read_all_stats only (the test's admin).
            with external.admin_connection() as admin:
                ssl = admin.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = %s", pid).fetchone()
        assert ssl == (True,)
        assert roles == {"app": False, "migrator": False}
        with external.admin_connection() as admin:
            monitor = admin.execute(
                "SELECT rolsuper, rolcanlogin, rolconnlimit, pg_has_role(oid, 'pg_monitor', "
                "'MEMBER') FROM pg_roles WHERE rolname = 'poolkit_monitor'").fetchone()
        assert monitor == (False, True, 3, True)
        postgres = scrape(f"http://127.0.0.1:{exporter_ports['postgres_exporter_port']}/metrics")
        bouncer = scrape(f"http://127.0.0.1:{exporter_ports['pgbouncer_exporter_port']}/metrics")
        assert postgres[("pg_up", ())] == 1.0 and bouncer[("pgbouncer_up", ())] == 1.0
        limit = [v for (name, _), v in postgres.items() if name == "pg_settings_max_connections"]
        assert limit == [MAX_CONNECTIONS]
    finally:
        _down(state)


def _refused(done: subprocess.CompletedProcess[str], state: Path, *needles: str) -> None:
    text = done.stdout + done.stderr
    assert done.returncode == 2, text
    for needle in needles:
        assert needle in text, text
    assert not (state / "conf").exists(), "nothing is created before the refusal"


def test_budget_the_server_cannot_hold_is_refused_first(external: External) -> None:
    done, state, _ = _up(external, "big", default_pool_size=60)
    _refused(done, state, "poolkit:postgres.external.max_connections", f"{MAX_CONNECTIONS}",
             "default_pool_size")


def test_missing_ca_is_refused_when_verification_is_required(external: External) -> None:
    done, state, _ = _up(external, "noca", external={"ca_file": None})
    _refused(done, state, "poolkit:postgres.external.ca_file", "is required")


def test_wrong_ca_is_refused_with_the_driver_reason(external: External) -> None:
    other = external.base / "other"
    other.mkdir(exist_ok=True)
    wrong_ca, _, _ = make_ca_and_server_cert(other)
    done, state, _ = _up(external, "wrongca", external={"ca_file": str(wrong_ca)})
    _refused(done, state, "poolkit:postgres.external", "SSL error",
             "ca_file is the CA that signed the server's certificate")


@pytest.mark.parametrize(("role", "password", "needle"), [
    ("weak_admin", "weak-admin-password", "lacks CREATEROLE"),
    ("super_admin", "super-admin-password", "is a superuser"),
])  # fmt: skip
def test_admin_role_without_the_rights_or_with_too_many_is_refused(
    external: External, role: str, password: str, needle: str
) -> None:
    done, state, _ = _up(external, f"role-{role.replace('_', '-')}", password,
                         external={"admin_user": role})  # fmt: skip
    _refused(done, state, "poolkit:postgres.external.admin_user", needle)
