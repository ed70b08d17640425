"""The program with ``poolkit:monitoring.exporters``: exporter containers, checked input by input.

A pgbouncer_exporter per PgBouncer process reads that process through its socket dir on a volume
shared with the pgbouncer container; postgres_exporter logs in as ``poolkit_monitor``. Logins
arrive as 0600 uploads (secret), never in a command or an environment variable; /metrics is
published on 127.0.0.1 at the stack's ports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from poolkit import external, metrics
from poolkit.config import parse_stack
from poolkit.layouts import docker_layout
from poolkit.outputs import Outputs
from poolkit.render import render_init_sql, render_pg_hba, render_userlist
from poolkit.secrets import Credential, Secrets
from poolkit.sizing import plan

from . import test_docker_external_program as external_program
from .harness import PASSWORD, VOLUME, Deployment, deploy, is_secret, stack_file_config

pytestmark = pytest.mark.pulumi

PGBOUNCER_PORT, POSTGRES_PORT = 9300, 9400


def _config(processes: int) -> dict[str, Any]:
    config = stack_file_config("dev")
    config["poolkit:pgbouncer"] = {**config.get("poolkit:pgbouncer", {}), "processes": processes}
    config["poolkit:monitoring"] = {"exporters": True, "pgbouncer_exporter_port": PGBOUNCER_PORT,
                                    "postgres_exporter_port": POSTGRES_PORT}  # fmt: skip
    return config


@pytest.fixture(scope="module")
def two_processes() -> Deployment:
    return deploy("dev", _config(2))


def _credential(deployed: Deployment, role: str, user: str) -> Credential:
    label = role.replace("_", "-")
    return Credential(user, deployed.named(f"poolkit-{label}-password").state["result"],
                      deployed.named(f"poolkit-{label}-salt").state["b64Std"], 4096)  # fmt: skip


def _uploads(deployed: Deployment, name: str) -> dict[str, dict[str, Any]]:
    return {u["file"]: u for u in deployed.containers()[name].args["uploads"]}


def test_one_pgbouncer_exporter_per_process_and_one_postgres_exporter(
    two_processes: Deployment,
) -> None:
    containers = two_processes.containers()
    exporters = {n: c for n, c in containers.items() if "exporter" in n}
    assert sorted(exporters) == ["poolkit-dev-pgbouncer-exporter-1",
                                 "poolkit-dev-pgbouncer-exporter-2",
                                 "poolkit-dev-postgres-exporter"]  # fmt: skip
    published = {n: [(p["internal"], p["external"], p["ip"]) for p in c.args["ports"]]
                 for n, c in exporters.items()}  # fmt: skip
    assert published == {
        "poolkit-dev-pgbouncer-exporter-1": [(9300, 9300, "127.0.0.1")],
        "poolkit-dev-pgbouncer-exporter-2": [(9301, 9301, "127.0.0.1")],
        "poolkit-dev-postgres-exporter": [(9400, 9400, "127.0.0.1")],
    }
    assert two_processes.outputs[Outputs.EXPORTER_PORTS] == {
        "pgbouncer-exporter-1": 9300, "pgbouncer-exporter-2": 9301, "postgres-exporter": 9400}
    assert two_processes.outputs[Outputs.CONTAINERS]["exporters"] == {
        "pgbouncer-exporter-1": "poolkit-dev-pgbouncer-exporter-1",
        "pgbouncer-exporter-2": "poolkit-dev-pgbouncer-exporter-2",
        "postgres-exporter": "poolkit-dev-postgres-exporter",
    }
    for name, container in exporters.items():
        assert container.args["command"] == [
            f"/etc/poolkit-exporter/{name.removeprefix('poolkit-dev-')}.env",
            "prometheus-postgres-exporter" if "postgres" in name
            else "prometheus-pgbouncer-exporter",
            f"--web.listen-address=:{container.args['ports'][0]['internal']:g}",
        ], container.urn
        assert [n["name"] for n in container.args["networksAdvanced"]] == ["poolkit-dev-net"]
        assert container.args["healthcheck"]["tests"][:2] == ["CMD", "bash"], container.urn
        assert container.args["wait"] is True and container.delete_before_replace


def test_pgbouncer_exporters_read_their_process_through_the_shared_socket_volume(
    two_processes: Deployment,
) -> None:
    volumes = {v.args["name"] for v in two_processes.of_type(VOLUME)}
    assert "poolkit-dev-pgbouncer-sockets" in volumes
    shared = {"volumeName": "poolkit-dev-pgbouncer-sockets", "containerPath": "/var/run/postgresql"}
    containers = two_processes.containers()
    assert containers["poolkit-dev-pgbouncer"].args["volumes"] == [shared]
    for n in (1, 2):
        exporter = containers[f"poolkit-dev-pgbouncer-exporter-{n}"]
        assert exporter.args["volumes"] == [{**shared, "readOnly": True}], exporter.urn
        upload = _uploads(two_processes, exporter.args["name"])[
            f"/etc/poolkit-exporter/pgbouncer-exporter-{n}.env"]
        assert (upload["permissions"], upload["owner"]) == ("0600", "999"), exporter.urn
        line = upload["content"].splitlines()[-1]
        url = line.removeprefix("PGBOUNCER_EXPORTER_CONNECTION_STRING=")
        params = conninfo_to_dict(url)
        stats = _credential(two_processes, "pgbouncer_stats", "pgbouncer_stats")
        assert (params["host"], params["port"], params["user"], params["dbname"],
                params["password"]) == (f"/var/run/postgresql/pgbouncer-{n}", "6432",
                                        "pgbouncer_stats", "pgbouncer", stats.password)
        assert is_secret(exporter.inputs["uploads"]), f"{exporter.urn}: login not secret"
        assert not exporter.args.get("envs"), exporter.urn


def test_postgres_exporter_logs_in_as_poolkit_monitor_made_by_init_sql(
    two_processes: Deployment,
) -> None:
    monitor = _credential(two_processes, "monitor", "poolkit_monitor")
    assert two_processes.named("poolkit-monitor-password").type == PASSWORD
    exporter = two_processes.containers()["poolkit-dev-postgres-exporter"]
    assert not exporter.args.get("volumes")
    text = _uploads(two_processes, "poolkit-dev-postgres-exporter")[
        "/etc/poolkit-exporter/postgres-exporter.env"]["content"]
    params = conninfo_to_dict(text.splitlines()[-1].removeprefix("DATA_SOURCE_NAME="))
    assert (params["host"], params["port"], params["user"], params["password"],
            params["sslmode"]) == ("postgres", "5432", "poolkit_monitor", monitor.password,
                                   "disable")  # fmt: skip
    postgres = _uploads(two_processes, "poolkit-dev-postgres")
    stack = parse_stack(_config(2), "dev")
    init_sql = postgres["/etc/poolkit/init.sql"]["content"]
    assert f"PASSWORD '{monitor.verifier}'" in init_sql
    assert 'GRANT pg_monitor TO "poolkit_monitor";' in init_sql
    assert monitor.password not in init_sql
    hba = postgres["/etc/poolkit/pg_hba.conf"]["content"]
    assert hba == render_pg_hba(stack, docker_layout(stack))
    assert "poolkit_monitor" in hba
    # No password of the run is in an exporter's command or environment.
    passwords = [r.state["result"] for r in two_processes.of_type(PASSWORD)]
    for name, container in two_processes.containers().items():
        visible = repr(container.args.get("command")) + repr(container.args.get("envs"))
        assert "exporter" not in name or not [p for p in passwords if p in visible], name


def test_init_sql_and_userlist_are_the_core_rendering_with_the_monitor_role(
    two_processes: Deployment,
) -> None:
    stack = parse_stack(_config(2), "dev")
    roles = {"superuser": "postgres", "migrator": stack.database.migrator_user,
             "app": stack.database.app_user, "pgbouncer_admin": "pgbouncer_admin",
             "pgbouncer_stats": "pgbouncer_stats", "monitor": "poolkit_monitor"}  # fmt: skip
    credentials = Secrets(**{
        role: Credential(user, *(_credential(two_processes, role, user).__dict__[k]
                                 for k in ("password", "salt")),
                         4096 if role in ("pgbouncer_stats", "monitor") else 256)
        for role, user in roles.items()
    })  # fmt: skip
    postgres = _uploads(two_processes, "poolkit-dev-postgres")
    assert postgres["/etc/poolkit/init.sql"]["content"] == render_init_sql(stack, credentials)
    bouncer = _uploads(two_processes, "poolkit-dev-pgbouncer")
    assert bouncer["/etc/pgbouncer/userlist.txt"]["content"] == render_userlist(credentials)
    specs = metrics.exporters(stack, plan(stack), docker_layout(stack), credentials, listen="")
    for spec in specs:
        upload = _uploads(two_processes, f"poolkit-dev-{spec.name}")[
            f"/etc/poolkit-exporter/{spec.name}.env"]
        assert upload["content"] == metrics.render_env(spec), spec.name


def test_one_process_has_one_pgbouncer_exporter_on_the_base_port() -> None:
    deployed = deploy("dev", _config(1))
    names = sorted(n for n in deployed.containers() if "exporter" in n)
    assert names == ["poolkit-dev-pgbouncer-exporter", "poolkit-dev-postgres-exporter"]
    upload = _uploads(deployed, "poolkit-dev-pgbouncer-exporter")[
        "/etc/poolkit-exporter/pgbouncer-exporter.env"]
    url = upload["content"].splitlines()[-1].split("=", 1)[1]
    assert conninfo_to_dict(url)["host"] == "/var/run/postgresql"


def test_without_exporters_no_volume_role_or_container_is_added() -> None:
    deployed = deploy("dev", stack_file_config("dev"))
    assert not [n for n in deployed.containers() if "exporter" in n]
    assert [v.args["name"] for v in deployed.of_type(VOLUME)] == ["poolkit-dev-pgdata"]
    assert not deployed.containers()["poolkit-dev-pgbouncer"].args.get("volumes")
    assert not [r for r in deployed.of_type(PASSWORD) if "monitor" in r.name]
    assert deployed.outputs[Outputs.EXPORTER_PORTS] == {}


def test_an_external_postgres_is_read_over_its_network_with_its_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """postgres_exporter joins the network the stack names for the server, checks it with the
    given CA (uploaded beside its login), and the init SQL the admin role runs makes its role."""
    recorder = external_program.Recorder()
    monkeypatch.setattr(external, "check", recorder.check)
    monkeypatch.setattr(external, "apply_init_sql", recorder.apply)
    config = {**external_program._config(tmp_path),
              "poolkit:monitoring": {"exporters": True}}  # fmt: skip
    deployed = deploy(external_program.STACK, config, secret_keys=(external_program.ADMIN_KEY,))
    exporter = deployed.containers()["poolkit-byo-postgres-exporter"]
    assert [n["name"] for n in exporter.args["networksAdvanced"]] == [
        "poolkit-byo-net", external_program.NETWORK]
    files = {u["file"]: u for u in exporter.args["uploads"]}
    ca = files["/etc/poolkit-exporter/server-ca.crt"]
    assert (ca["content"], ca["permissions"]) == (external_program.CA_PEM, "0644")
    text = files["/etc/poolkit-exporter/postgres-exporter.env"]["content"]
    params = conninfo_to_dict(text.splitlines()[-1].removeprefix("DATA_SOURCE_NAME="))
    assert (params["host"], params["port"], params["sslmode"], params["sslrootcert"],
            params["user"]) == ("db.example.com", "5433", "verify-full",
                                "/etc/poolkit-exporter/server-ca.crt", "poolkit_monitor")
    [(_, _, sql, _)] = recorder.applied
    assert 'GRANT pg_monitor TO "poolkit_monitor";' in sql
    for n in (1, 2):  # 2 processes, derived from 2 CPUs
        pgbouncer_exporter = deployed.containers()[f"poolkit-byo-pgbouncer-exporter-{n}"]
        assert [x["name"] for x in pgbouncer_exporter.args["networksAdvanced"]] == [
            "poolkit-byo-net"]
