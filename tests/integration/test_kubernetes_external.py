"""Bring your own Postgres on the Kubernetes target, run for real as far as no cluster allows.

The real Pulumi program runs under the mock runtime against a real "external" server (the
fixture of ``test_external_postgres``: ``ssl = on`` with its own CA, SCRAM only, a non-superuser
admin role). Unmocked: the program's check connects to it as the admin role before any
resource, and ``ExternalDatabase``'s provider applies external-init.sql there with psql. Then
the objects the program registered are run as processes: each PgBouncer replica is the
ConfigMap's ``pgbouncer.ini`` with only its files and addresses moved (so no pod is needed),
with the Secret's userlist and the ConfigMap's server CA, in front of the server with
``verify-full``; the migration Job's command runs with the Secret's ``DIRECT_URL``; a burst of
1,000 clients over the replicas ends with 0 errors and peak backends within the budget.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pulumi
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from poolkit.bench.scratch import ScratchBouncers
from poolkit.local import detect_tools, service_user
from poolkit.manifests import object_key
from poolkit.render import SERVER_CA
from tests.backends import burst_clients
from tests.conftest import free_ports
from tests.integration.test_external_postgres import (  # the fixture, not its tests
    ADMIN,
    ADMIN_PASSWORD,
    MAX_CONNECTIONS,
    External,
    external,
)
from tests.pulumi.harness import KUBERNETES, Deployment, deploy
from tests.pulumi.harness import stack_file_config as file_config

pytestmark = pytest.mark.integration

__all__ = ["external"]
STACK = "k8s"
REPLICAS = 2
BURST_CLIENTS = 1000
CLIENT_THREADS = 100
ADMIN_KEY = "poolkit:external_admin_password"
POD_DIR = "/etc/pgbouncer"
"""Where the PgBouncer pod mounts its files (pgbouncer.ini names them there)."""
ADDRESSES = ("listen_addr", "listen_port", "unix_socket_dir", "pidfile", "logfile")


def _config(server: External, **pgbouncer: Any) -> dict[str, Any]:
    external_section = {"host": "localhost", "port": server.port, "sslmode": "verify-full",
                        "ca_file": str(server.ca), "admin_user": ADMIN}  # fmt: skip
    return {**file_config(STACK),
            "poolkit:postgres": {"cpus": 2, "external": external_section},
            "poolkit:pgbouncer": {"replicas": REPLICAS, "processes": 1, **pgbouncer},
            ADMIN_KEY: ADMIN_PASSWORD}  # fmt: skip


def _objects(deployment: Deployment) -> dict[str, dict[str, Any]]:
    return {object_key(r.args): r.args
            for r in deployment.resources if r.type.startswith(KUBERNETES)}  # fmt: skip


def _moved(text: str, folder: Path, port: int) -> str:
    """The ConfigMap's file with the pod's folder moved to ``folder`` and listening on
    127.0.0.1:port; nothing else changes."""
    values = {"listen_addr": "127.0.0.1", "listen_port": str(port),
              "unix_socket_dir": str(folder), "pidfile": str(folder / "pgbouncer.pid"),
              "logfile": str(folder / "pgbouncer.log")}  # fmt: skip

    def move(match: re.Match[str]) -> str:
        key, value = match[1], match[2]
        if key in values:
            return f"{key} = {values[key]}"
        return f"{key} = {value.replace(POD_DIR + '/', f'{folder}/')}"

    return re.sub(r"^(\w+) = (.*)$", move, text, flags=re.MULTILINE)


def _mount(objs: dict[str, dict[str, Any]], workload: str, volume: str) -> dict[str, str]:
    """The files a pod's projected volume holds: file name -> text (as a kubelet lays them)."""
    pod = objs[workload]["spec"]["template"]["spec"]
    [projected] = [v["projected"] for v in pod["volumes"] if v["name"] == volume]
    files = {}
    for source in projected["sources"]:
        kind, ref = next(iter(source.items()))
        obj = objs[f"{'ConfigMap' if kind == 'configMap' else 'Secret'}/{ref['name']}"]
        data = obj.get("data") or obj["stringData"]
        for item in ref.get("items") or [{"key": key, "path": key} for key in data]:
            files[item["path"]] = data[item["key"]]
    return files


def _start_replica(bouncers: ScratchBouncers, objs: dict[str, dict[str, Any]], name: str,
                   port: int) -> str:  # fmt: skip
    """One PgBouncer pod as a process: its mounted files in a folder, its ini moved there."""
    folder = bouncers.folder(name)
    files = _mount(objs, "Deployment/pgbouncer", "config")
    for file_name, text in files.items():
        bouncers.write(folder / file_name, _moved(text, folder, port) if file_name.endswith(
            ".ini") else text)  # fmt: skip
    bouncers.start(name, port, [folder / "pgbouncer.ini"])
    return (folder / "pgbouncer.ini").read_text()


@dataclass
class Fronted:
    server: External
    objects: dict[str, dict[str, Any]]
    ports: list[int]
    inis: list[str]


@pytest.fixture(scope="module")
def fronted(external: External) -> Iterator[Fronted]:
    deployment = deploy(STACK, _config(external, default_pool_size=6, reserve_pool_size=2),
                        secret_keys=(ADMIN_KEY,))  # fmt: skip
    objs = _objects(deployment)
    configmap_ini = objs["ConfigMap/pgbouncer-config"]["data"]["pgbouncer.ini"]
    bouncers = ScratchBouncers(external.base / "k8s-replicas", detect_tools().pgbouncer,
                               service_user())  # fmt: skip
    ports: list[int] = []
    inis: list[str] = []
    try:
        for index in range(1, REPLICAS + 1):
            port = free_ports(1, {external.port, *ports})
            inis.append(_start_replica(bouncers, objs, f"replica-{index}", port))
            ports.append(port)
        yield Fronted(external, objs, ports, [configmap_ini, *inis])
    finally:
        bouncers.stop_all()


def _admin_url(server: External) -> str:
    return make_conninfo(host="localhost", port=str(server.port), dbname="postgres", user=ADMIN,
                         password=ADMIN_PASSWORD, sslmode="verify-full",
                         sslrootcert=str(server.ca))  # fmt: skip


def _pooled(fronted: Fronted, port: int) -> str:
    url = fronted.objects["Secret/migrate-env"]["stringData"]["POOLED_DATABASE_URL"]
    return make_conninfo(url, host="127.0.0.1", port=str(port))


def test_replicas_run_the_configmap_s_file_with_only_paths_and_addresses_moved(
    fronted: Fronted,
) -> None:
    configmap, *running = fronted.inis
    for text in running:
        changed = {a.split(" = ")[0] for a, b in zip(configmap.splitlines(), text.splitlines(),
                                                     strict=True) if a != b}  # fmt: skip
        assert changed == {*ADDRESSES, "auth_file", "server_tls_ca_file"}
    assert "server_tls_sslmode = verify-full" in configmap
    assert f"host=localhost port={fronted.server.port}" in configmap


def test_the_migration_job_s_command_runs_over_direct_url_with_verify_full(
    fronted: Fronted, tmp_path: Path
) -> None:
    env = dict(fronted.objects["Secret/migrate-env"]["stringData"])
    direct = conninfo_to_dict(env["DIRECT_URL"])
    assert (direct["sslmode"], direct["sslrootcert"]) == ("verify-full",
                                                         f"/etc/poolkit/{SERVER_CA}")
    ca = tmp_path / SERVER_CA  # where the Job's pod mounts the ConfigMap server-ca
    ca.write_text(fronted.objects["ConfigMap/server-ca"]["data"][SERVER_CA])
    env["DIRECT_URL"] = make_conninfo(env["DIRECT_URL"], sslrootcert=str(ca))
    job = fronted.objects["Job/migrate"]["spec"]["template"]["spec"]["containers"][0]
    done = subprocess.run([sys.executable, *job["command"][1:]], env=env, capture_output=True,
                          text=True, timeout=120, check=False,
                          cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    with psycopg.connect(env["DIRECT_URL"]) as conn:
        assert conn.execute("SELECT to_regclass('items') IS NOT NULL").fetchone() == (True,)
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                            ).fetchone() == (False,)  # fmt: skip


def test_burst_over_the_replicas_stays_within_the_budget_over_tls(fronted: Fronted) -> None:
    share_line = re.search(r"^max_db_connections = (\d+)$", fronted.inis[0], re.MULTILINE)
    assert share_line
    share, budget = int(share_line[1]), 6 + 2
    assert REPLICAS * share <= budget
    # The admin role has pg_read_all_stats: it sees the app role's backends and their TLS.
    done = burst_clients([_pooled(fronted, port) for port in fronted.ports], BURST_CLIENTS,
                         CLIENT_THREADS, _admin_url(fronted.server), "usename = 'app'",
                         connect_timeout=10)  # fmt: skip
    print(f"external Postgres, {REPLICAS} replicas x max_db_connections {share}: "
          f"{BURST_CLIENTS} clients in {done.seconds:.1f} s, peak {done.peak} app backends "
          f"(max_connections {MAX_CONNECTIONS}), errors {dict(done.errors)}")  # fmt: skip
    assert not done.errors and sum(done.served.values()) == BURST_CLIENTS
    assert share < done.peak <= REPLICAS * share
    with psycopg.connect(_pooled(fronted, fronted.ports[0])) as pooled:
        pid = pooled.execute("SELECT pg_backend_pid()").fetchone()
        with psycopg.connect(_admin_url(fronted.server)) as admin:
            ssl = admin.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = %s", pid).fetchone()
    assert ssl == (True,)


def test_a_budget_the_server_cannot_hold_registers_nothing(external: External) -> None:
    with pytest.raises(pulumi.RunError) as error:
        deploy(STACK, _config(external, default_pool_size=60), secret_keys=(ADMIN_KEY,))
    assert "poolkit:postgres.external.max_connections" in str(error.value)
    assert f"{MAX_CONNECTIONS}" in str(error.value)
    assert deploy.last_monitor.registered == []  # type: ignore[attr-defined]


def test_client_tls_from_the_tls_secret_verifies_as_the_service_name(
    external: External, tmp_path: Path
) -> None:
    """PgBouncer's certificate and key, and the apps' CA, as the pods mount them from
    Secret/tls: a client connecting to the Service name with verify-full gets in."""
    config = {**_config(external, client_tls=True),
              "poolkit:tls": {"names": ["db.example.com"]}}  # fmt: skip
    objs = _objects(deploy(STACK, config, secret_keys=(ADMIN_KEY,)))
    assert objs["Secret/tls"]["type"] == "kubernetes.io/tls"
    bouncers = ScratchBouncers(external.base / "k8s-tls", detect_tools().pgbouncer,
                               service_user())  # fmt: skip
    port = free_ports(1, {external.port})
    try:
        ini = _start_replica(bouncers, objs, "tls-replica", port)
        assert "client_tls_sslmode = require" in ini
        app_files = _mount(objs, "Deployment/app-orders", "ca")
        env = objs["Secret/app-orders-env"]["stringData"]
        url = conninfo_to_dict(env["POOLED_DATABASE_URL"])
        assert (url["host"], url["sslmode"]) == ("pgbouncer.poolkit-k8s.svc", "verify-full")
        ca = tmp_path / Path(str(url["sslrootcert"])).name
        ca.write_text(app_files[ca.name])
        # The Service's name, reached at this process's address: verify-full checks the name.
        here = make_conninfo(**{**url, "hostaddr": "127.0.0.1", "port": str(port),
                                "sslrootcert": str(ca)})  # fmt: skip
        with psycopg.connect(here, connect_timeout=10) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("app",)
            assert conn.pgconn.ssl_in_use
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(make_conninfo(here, sslmode="disable"), connect_timeout=10).close()
        wrong = make_conninfo(here, host="pgbouncer.other-namespace.svc")
        with pytest.raises(psycopg.OperationalError, match=r"does not match|certificate"):
            psycopg.connect(wrong, connect_timeout=10).close()
    finally:
        bouncers.stop_all()
