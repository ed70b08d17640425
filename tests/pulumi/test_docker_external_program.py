"""The Docker program fronting an external Postgres (``poolkit:postgres.external``), under the
mock runtime.

The server check and the init SQL need a server: here they are replaced by a recorder
(``tests/e2e/test_docker_external.py`` runs both against a real one). Everything else is the
real program: what it registers for Docker, and what it refuses before registering anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import pytest
from psycopg.conninfo import conninfo_to_dict

from poolkit import external
from poolkit.config import Problem, StackConfig, parse_stack
from poolkit.envfile import parse_env
from poolkit.layouts import docker_layout
from poolkit.outputs import Outputs
from poolkit.render import render_external_init_sql, render_pgbouncer_ini
from poolkit.sizing import Plan, plan

from .external_server import ADMIN_KEY, ADMIN_PASSWORD, CA_PEM, Recorder, write_ca_file
from .harness import IMAGE, VOLUME, Deployment, deploy, is_secret
from .test_program import secrets_of, uploads

pytestmark = pytest.mark.pulumi

STACK = "byo"
EXTERNAL_TYPE = "pulumi-python:dynamic/poolkit:ExternalDatabase"
NETWORK = "other-project_default"


def _config(tmp_path: Path, **external_keys: Any) -> dict[str, Any]:
    server = {"host": "db.example.com", "port": 5433, "admin_user": "byo_admin",
              "ca_file": str(write_ca_file(tmp_path)), "network": NETWORK,
              **external_keys}  # fmt: skip
    return {"poolkit:postgres": {"cpus": 2, "external": server},
            "poolkit:pgbouncer": {"port": 16432},
            "poolkit:apps": [{"name": "orders", "style": "lambda", "instances": 4,
                              "replicas": 2, "port": 18080}],
            ADMIN_KEY: ADMIN_PASSWORD}  # fmt: skip


def _model(config: dict[str, Any]) -> tuple[StackConfig, Plan]:
    stack = parse_stack({k: v for k, v in config.items() if k != ADMIN_KEY}, STACK)
    return stack, plan(stack)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    return Recorder().install(monkeypatch)


@pytest.fixture
def deployed(tmp_path: Path, recorder: Recorder) -> tuple[Deployment, dict[str, Any]]:
    config = _config(tmp_path)
    return deploy(STACK, config, secret_keys=(ADMIN_KEY,)), config


def test_no_postgres_image_container_or_volume_is_created(
    deployed: tuple[Deployment, dict[str, Any]],
) -> None:
    deployment, _ = deployed
    assert sorted(deployment.containers()) == ["poolkit-byo-orders-0", "poolkit-byo-orders-1",
                                               "poolkit-byo-pgbouncer"]  # fmt: skip
    assert deployment.of_type(VOLUME) == []
    images = sorted(r.args["imageName"] for r in deployment.of_type(IMAGE))
    assert images == ["poolkit-byo-app:latest", "poolkit-byo-pgbouncer:latest"]
    assert deployment.outputs[Outputs.POSTGRES_PORT] is None
    assert deployment.outputs[Outputs.CONTAINERS]["postgres"] is None
    assert deployment.outputs[Outputs.EXTERNAL_POSTGRES] == "db.example.com:5433"


def test_the_server_is_checked_first_then_prepared_before_pgbouncer(
    deployed: tuple[Deployment, dict[str, Any]], recorder: Recorder
) -> None:
    deployment, config = deployed
    stack, _ = _model(config)
    assert recorder.checks == [(ADMIN_PASSWORD, 0)], "checked before any resource existed"
    [prepared] = deployment.of_type(EXTERNAL_TYPE)
    assert is_secret(prepared.inputs["admin_password"]) and is_secret(prepared.inputs["init_sql"])
    sql = render_external_init_sql(stack, secrets_of(deployment, stack))
    assert recorder.applied == [("db.example.com", ADMIN_PASSWORD, sql, CA_PEM)]
    bouncer = deployment.named("poolkit-pgbouncer-container")
    assert prepared.urn in bouncer.dependencies, bouncer.urn


def test_pgbouncer_verifies_the_server_with_the_uploaded_ca(
    deployed: tuple[Deployment, dict[str, Any]],
) -> None:
    deployment, config = deployed
    stack, sized = _model(config)
    bouncer = deployment.named("poolkit-pgbouncer-container")
    files = uploads(bouncer)
    ini = files["/etc/pgbouncer/pgbouncer-1.ini"]["content"]  # 2 processes from 2 CPUs
    assert ini == render_pgbouncer_ini(stack, sized, docker_layout(stack), 1)
    for line in ("host=db.example.com port=5433", "server_tls_sslmode = verify-full",
                 "server_tls_ca_file = /etc/pgbouncer/server-ca.crt"):
        assert line in ini, bouncer.urn
    ca = files["/etc/pgbouncer/server-ca.crt"]
    assert (ca["content"], ca["permissions"], ca["owner"]) == (CA_PEM, "0644", "999")
    assert is_secret(bouncer.inputs["uploads"]), f"{bouncer.urn}: userlist.txt is not secret"


def test_pgbouncer_and_the_apps_join_the_servers_network(
    deployed: tuple[Deployment, dict[str, Any]],
) -> None:
    deployment, _ = deployed
    for name, container in deployment.containers().items():
        joined = [n["name"] for n in container.args["networksAdvanced"]]
        assert joined == ["poolkit-byo-net", NETWORK], name
    migrating = uploads(deployment.containers()["poolkit-byo-orders-0"])
    assert migrating["/etc/poolkit/server-ca.crt"]["content"] == CA_PEM


def test_direct_urls_name_the_server_with_verify_full_and_the_ca(
    deployed: tuple[Deployment, dict[str, Any]], tmp_path: Path
) -> None:
    deployment, _ = deployed
    host_env = parse_env(deployment.outputs[Outputs.ENV_FILE])
    network_env = parse_env(deployment.outputs[Outputs.NETWORK_ENV_FILE])
    for env, ca_file in ((host_env, str(tmp_path / "provider-ca.pem")),
                         (network_env, "/etc/poolkit/server-ca.crt")):
        direct = conninfo_to_dict(env["DIRECT_URL"])
        assert (direct["host"], direct["port"], direct["user"]) == (
            "db.example.com", "5433", "migrator")
        assert (direct["sslmode"], direct["sslrootcert"]) == ("verify-full", ca_file)
    replica = deployment.containers()["poolkit-byo-orders-0"]
    envs = dict(item.split("=", 1) for item in replica.args["envs"])
    assert conninfo_to_dict(envs["DIRECT_URL"])["sslrootcert"] == "/etc/poolkit/server-ca.crt"
    for key in Outputs.SECRET:
        assert key in deployment.secret_outputs, key


def test_the_admin_password_is_only_ever_a_secret(
    deployed: tuple[Deployment, dict[str, Any]],
) -> None:
    deployment, _ = deployed
    for resource in deployment.resources:
        for key, value in resource.inputs.items():
            if not is_secret(value):
                assert ADMIN_PASSWORD not in json.dumps(value, default=str), (resource.urn, key)
    for key, value in deployment.outputs.items():
        assert ADMIN_PASSWORD not in json.dumps(value, default=str), key


def test_a_missing_ca_and_password_are_refused_together_before_any_resource(
    tmp_path: Path,
) -> None:
    """The real check: both problems at once, nothing registered, no server contacted."""
    config = _config(tmp_path, ca_file=str(tmp_path / "missing-ca.pem"))
    del config[ADMIN_KEY]
    with pytest.raises(pulumi.RunError) as failure:
        deploy(STACK, config)
    text = str(failure.value)
    assert "poolkit:postgres.external.ca_file" in text and "cannot be read" in text
    assert "poolkit:external_admin_password" in text and "is required" in text
    assert deploy.last_monitor.registered == []  # type: ignore[attr-defined]


def test_a_server_that_fails_the_check_registers_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    problem = Problem("poolkit:postgres.external.max_connections", 40,
                      "leaves 37 connections for the kit, but the plan needs 45",
                      "lower poolkit:pgbouncer.default_pool_size")  # fmt: skip
    monkeypatch.setattr(external, "check", Recorder(problem).check)
    with pytest.raises(pulumi.RunError) as failure:
        deploy(STACK, _config(tmp_path), secret_keys=(ADMIN_KEY,))
    assert "poolkit:postgres.external.max_connections" in str(failure.value)
    assert ADMIN_PASSWORD not in str(failure.value)
    assert deploy.last_monitor.registered == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(("extra", "key"), [
    ({"poolkit:backup": {"enabled": True}}, "poolkit:backup.enabled"),
    ({"poolkit:postgres": {"max_connections": 100}}, "poolkit:postgres.max_connections"),
])  # fmt: skip
def test_config_the_external_server_cannot_have_registers_nothing(
    tmp_path: Path, recorder: Recorder, extra: dict[str, Any], key: str
) -> None:
    config = _config(tmp_path)
    for section, values in extra.items():
        config[section] = {**config.get(section, {}), **values}
    with pytest.raises(pulumi.RunError, match=key.replace(".", r"\.")):
        deploy(STACK, config, secret_keys=(ADMIN_KEY,))
    assert recorder.checks == [], "refused before the server was contacted"
    assert deploy.last_monitor.registered == []  # type: ignore[attr-defined]

