"""images/postgres/poolkit-initdb on this host, as the servers' OS user: a changed init.sql is
applied again on the next start (a rotated password reaches the roles), an unchanged one is not.

This is what a Docker container of the Postgres image does at each start; here the host's
PostgreSQL binaries stand in for the image's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from poolkit import secrets as stack_secrets
from poolkit.config import parse_stack
from poolkit.layouts import local_layout
from poolkit.local import Host, Paths, Postgres, detect_tools, service_user
from poolkit.local.machine import PACKAGE_ROOT
from poolkit.render import render_all
from poolkit.sizing import plan
from poolkit.urls import postgres_url
from tests.conftest import free_ports, make_base_dir

pytestmark = pytest.mark.integration
SCRIPT = PACKAGE_ROOT / "images" / "postgres" / "poolkit-initdb"


@dataclass
class Cluster:
    host: Host
    port: int
    files: dict[str, str]
    secrets: stack_secrets.Secrets

    @property
    def paths(self) -> Paths:
        return self.host.paths

    def render(self, secrets: stack_secrets.Secrets) -> str:
        """Write init.sql for ``secrets``; return its text."""
        self.secrets = secrets
        stack = parse_stack({"poolkit:postgres": {"port": self.port, "memory": "256MiB",
                                                  "version": detect_tools().pg_major}},
                            "initdb")  # fmt: skip
        layout = local_layout(stack, self.paths.root, self.host.user.name)
        self.files = render_all(stack, plan(stack), secrets, layout)
        for name in ("postgresql.conf", "pg_hba.conf", "init.sql"):
            (self.paths.conf / name).write_text(self.files[name])
            shutil.chown(self.paths.conf / name, self.host.user.uid, self.host.user.gid)
        return self.files["init.sql"]

    def initdb(self) -> tuple[int, str]:
        env = self.host.env(PGBIN=str(self.host.pgbin), POOLKIT_SUPERUSER=self.host.user.name)
        done = self.host.run(["/bin/sh", str(SCRIPT), str(self.paths.data),
                              str(self.paths.conf / "init.sql")], env, timeout=120)  # fmt: skip
        return done.returncode, done.stdout + done.stderr

    def app_logs_in(self, password: str) -> bool:
        """Start the server, log in as the app role over TCP (SCRAM), stop it again."""
        url = postgres_url("app", password, "127.0.0.1", self.port, "app")
        postgres = Postgres(self.host)
        postgres.start()
        try:
            with psycopg.connect(url, connect_timeout=5) as conn:
                return conn.execute("SELECT current_user").fetchone() == ("app",)
        except psycopg.OperationalError:
            return False
        finally:
            postgres.stop()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    base = make_base_dir("poolkit-initdb-")
    user = service_user()
    paths = Paths(base / "state")
    paths.mkdirs(user)
    host = Host(paths, detect_tools().pgbin, user)
    stack = parse_stack({}, "initdb")
    secrets = stack_secrets.resolve(stack, user.name)
    try:
        yield Cluster(host, free_ports(1), {}, secrets)
    finally:
        if paths.postgres_pid():
            Postgres(host).stop()
        shutil.rmtree(base, ignore_errors=True)


def _rotated(secrets: stack_secrets.Secrets, password: str) -> stack_secrets.Secrets:
    app = stack_secrets.Credential("app", password, stack_secrets.new_salt())
    return dataclasses.replace(secrets, app=app)


def test_changed_init_sql_is_applied_again_and_unchanged_is_left_alone(cluster: Cluster) -> None:
    first = cluster.secrets.app.password
    cluster.render(cluster.secrets)
    code, output = cluster.initdb()
    assert code == 0 and "initialising" in output, output
    assert cluster.app_logs_in(first)

    rotated = "rotated-app-password-1234"
    init_sql = cluster.render(_rotated(cluster.secrets, rotated))
    code, output = cluster.initdb()
    assert code == 0, output
    assert "changed since it was last applied" in output and "initialising" not in output
    assert (cluster.paths.data / "poolkit-init.sql.sha256").read_text().strip() == \
        hashlib.sha256(init_sql.encode()).hexdigest()  # fmt: skip
    assert (cluster.paths.data / "pg_hba.conf").read_text().endswith("local all all reject\n")
    assert cluster.app_logs_in(rotated)
    assert not cluster.app_logs_in(first)

    code, output = cluster.initdb()
    assert code == 0 and "is applied; nothing to do" in output, output
    assert "running" not in output


def test_a_failed_reapply_keeps_the_cluster_and_retries_next_start(cluster: Cluster) -> None:
    cluster.render(cluster.secrets)
    assert cluster.initdb()[0] == 0
    applied = (cluster.paths.data / "poolkit-init.sql.sha256").read_text()
    good = (cluster.paths.conf / "init.sql").read_text()
    (cluster.paths.conf / "init.sql").write_text(good + "\nSELECT no_such_function();\n")
    code, output = cluster.initdb()
    assert code != 0 and "re-applying" in output and "failed" in output, output
    assert (cluster.paths.data / "PG_VERSION").exists(), "the cluster is kept"
    assert (cluster.paths.data / "poolkit-init.sql.sha256").read_text() == applied
    assert (cluster.paths.data / "pg_hba.conf").read_text().endswith("local all all reject\n")
    (cluster.paths.conf / "init.sql").write_text(good)
    code, output = cluster.initdb()
    assert code == 0 and "nothing to do" in output, output
    assert cluster.app_logs_in(cluster.secrets.app.password)
