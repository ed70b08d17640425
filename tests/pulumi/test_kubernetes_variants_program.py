"""The Kubernetes program's TLS, external-Postgres and node-app variants under the mock runtime.

The certificates are made by poolkit's real dynamic providers (as the mocks run them). For an
external Postgres the server check and the init SQL, which need a server, are replaced here by
recorders (``tests/integration/test_kubernetes_external.py`` runs them against a real one).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pulumi
import pytest
from cryptography import x509
from psycopg.conninfo import conninfo_to_dict

from poolkit import external
from poolkit.config import Problem, parse_stack
from poolkit.envfile import parse_env
from poolkit.manifests import KUBERNETES_VERSION, Material, object_key, objects
from poolkit.outputs import Outputs
from poolkit.pulumi_external import ExternalDatabaseProvider
from poolkit.render import render_external_init_sql
from poolkit.sizing import plan
from poolkit.tls import ServerTls, names_of
from tests.dynamic_resources import plain

from .external_server import ADMIN_KEY, ADMIN_PASSWORD, CA_PEM, Recorder, write_ca_file
from .harness import KUBERNETES, Deployment, deploy, is_secret, only_secrets_hold
from .harness import stack_file_config as file_config
from .test_program import secrets_of

pytestmark = pytest.mark.pulumi

STACK = "k8s"
CA_TYPE = "pulumi-python:dynamic/poolkit:GeneratedCa"
SERVER_TYPE = "pulumi-python:dynamic/poolkit:ServerCertificate"
EXTERNAL_TYPE = "pulumi-python:dynamic/poolkit:ExternalDatabase"
TLS = {"poolkit:pgbouncer": {"replicas": 3, "client_tls": True, "server_tls": True},
       "poolkit:tls": {"names": ["db.example.com"]},
       "poolkit:kubernetes": {"namespace": "poolkit-k8s",
                              "pgbouncer_service": "LoadBalancer"}}  # fmt: skip


def _registered(deployment: Deployment) -> dict[str, dict[str, Any]]:
    return {object_key(r.args): r.args for r in deployment.resources
            if r.type.startswith(KUBERNETES)}  # fmt: skip


def _model(config: dict[str, Any]):
    stack = parse_stack(config, STACK)
    return stack, plan(stack)


def _assert_model_and_schemas(deployment: Deployment, expected: list[dict[str, Any]]) -> None:
    registered = _registered(deployment)
    assert sorted(registered) == sorted(object_key(o) for o in expected)
    for obj in expected:
        assert registered[object_key(obj)] == obj, object_key(obj)
        assert kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True), object_key(obj)


@pytest.fixture(scope="module")
def with_tls() -> tuple[dict[str, Any], Deployment]:
    config = {**file_config(STACK), **TLS}
    return config, deploy(STACK, config)


def test_tls_objects_are_the_model_s_with_the_generated_certificate(with_tls) -> None:
    config, deployed = with_tls
    stack, sized = _model(config)
    [ca] = deployed.of_type(CA_TYPE)
    [server] = deployed.of_type(SERVER_TYPE)
    tls = ServerTls(cert=server.state["cert_pem"], key=server.state["key_pem"],
                    ca=ca.state["cert_pem"])  # fmt: skip
    _assert_model_and_schemas(deployed, objects(stack, sized, secrets_of(deployed, stack),
                                                Material(tls)))  # fmt: skip
    assert {"pgbouncer.poolkit-k8s.svc", "postgres.poolkit-k8s.svc", "db.example.com"} <= set(
        names_of(tls.cert))
    x509.load_pem_x509_certificate(tls.cert.encode()).verify_directly_issued_by(
        x509.load_pem_x509_certificate(tls.ca.encode()))  # type: ignore[union-attr]
    secret = deployed.named("poolkit-secret-tls")
    assert secret.args["type"] == "kubernetes.io/tls"
    only_secrets_hold(deployed, tls.key, "PRIVATE KEY")
    assert deployed.outputs[Outputs.TLS_CA] == tls.ca
    assert _registered(deployed)["Service/pgbouncer"]["spec"]["type"] == "LoadBalancer"


def test_tls_env_verifies_pgbouncer_with_the_pod_s_ca_file(with_tls) -> None:
    _, deployed = with_tls
    values = parse_env(deployed.outputs[Outputs.ENV_FILE])
    for key in ("DATABASE_URL", "POOLED_DATABASE_URL", "PGBOUNCER_STATS_URL"):
        url = conninfo_to_dict(values[key])
        assert (url["host"], url["sslmode"], url["sslrootcert"]) == (
            "pgbouncer.poolkit-k8s.svc", "verify-full", "/etc/poolkit/tls-ca.crt"), key


def _external_config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {**file_config(STACK), "poolkit:postgres": {
        "cpus": 2, "external": {"host": "db.example.com", "port": 5433, "admin_user": "byo_admin",
                                "ca_file": str(write_ca_file(tmp_path)), "max_connections": 100}},
            ADMIN_KEY: ADMIN_PASSWORD, **extra}  # fmt: skip


def test_external_postgres_is_checked_first_then_prepared_and_fronted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder().install(monkeypatch)
    config = _external_config(tmp_path)
    deployed = deploy(STACK, config, secret_keys=(ADMIN_KEY,))
    stack, sized = _model({k: v for k, v in config.items() if k != ADMIN_KEY})
    credentials = secrets_of(deployed, stack)
    assert recorder.checks == [(ADMIN_PASSWORD, 0)]  # before any resource
    [prepared] = deployed.of_type(EXTERNAL_TYPE)
    assert is_secret(prepared.inputs["admin_password"]) and is_secret(prepared.inputs["init_sql"])
    sql = render_external_init_sql(stack, credentials)
    assert recorder.applied == [("db.example.com", ADMIN_PASSWORD, sql, CA_PEM)]
    outs = ExternalDatabaseProvider().create(plain(prepared.inputs)).outs
    assert set(outs) == {"host", "port", "sslmode", "admin_user", "ca_pem", "init_sql_sha256"}
    _assert_model_and_schemas(deployed, objects(stack, sized, credentials,
                                                Material(server_ca=CA_PEM)))  # fmt: skip
    registered = _registered(deployed)
    assert not [key for key in registered if "postgres" in key]
    for name in ("poolkit-deployment-pgbouncer", "poolkit-job-migrate"):
        assert prepared.urn in deployed.named(name).dependencies, name
    only_secrets_hold(deployed, ADMIN_PASSWORD, credentials.migrator.password)
    assert not any(ADMIN_PASSWORD in json.dumps(r.args) for r in deployed.resources
                   if r.type.startswith(KUBERNETES))  # the admin password stays out of the cluster
    assert "@db.example.com:5433/app?sslmode=verify-full" in deployed.outputs[Outputs.DIRECT_URL]


def test_an_external_server_that_fails_the_check_registers_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    problem = Problem("poolkit:postgres.external.admin_user", "byo_admin", "is a superuser",
                      "give poolkit a role with only CREATEROLE and CREATEDB")  # fmt: skip
    monkeypatch.setattr(external, "check", Recorder(problem).check)
    with pytest.raises(pulumi.RunError) as error:
        deploy(STACK, _external_config(tmp_path), secret_keys=(ADMIN_KEY,))
    assert "poolkit:postgres.external.admin_user" in str(error.value)
    assert deploy.last_monitor.registered == []  # type: ignore[attr-defined]


def test_node_apps_are_deployments_of_the_node_image(monkeypatch: pytest.MonkeyPatch) -> None:
    from poolkit import node_apps

    monkeypatch.setattr(node_apps, "ensure_built", lambda _root: pytest.fail("no local build"))
    apps = [{"name": "orders", "style": "lambda", "instances": 50, "runtime": "node"}]
    config = {**file_config(STACK), "poolkit:apps": apps}
    deployed = deploy(STACK, config)
    stack, sized = _model(config)
    _assert_model_and_schemas(deployed, objects(stack, sized, secrets_of(deployed, stack)))
    pod = _registered(deployed)["Deployment/app-orders"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example.com/poolkit/app-node:latest"


def test_a_given_certificate_reaches_the_tls_secret_and_urls_verify_its_ca() -> None:
    from poolkit import tls

    ca, server = tls.generate(["db.example.com"], "test CA")
    secret_keys = ("poolkit:tls_certificate", "poolkit:tls_key", "poolkit:tls_ca")
    config = {**file_config(STACK), **TLS, "poolkit:tls_certificate": server.cert,
              "poolkit:tls_key": server.key, "poolkit:tls_ca": ca.cert}  # fmt: skip
    deployed = deploy(STACK, config, secret_keys=secret_keys)
    assert not deployed.of_type(CA_TYPE)
    stack, sized = _model({k: v for k, v in config.items() if k not in secret_keys})
    given = ServerTls(cert=server.cert, key=server.key, ca=ca.cert)
    stack = dataclasses.replace(stack, tls=dataclasses.replace(
        stack.tls, certificate="(given)", key="(given)", ca="(given)"))  # the model's view
    _assert_model_and_schemas(deployed, objects(stack, sized, secrets_of(deployed, stack),
                                                Material(given)))  # fmt: skip
    only_secrets_hold(deployed, server.key)
    # The Services' names are not in a given certificate: its CA is checked (as on Docker's
    # private network), never skipped.
    url = conninfo_to_dict(parse_env(deployed.outputs[Outputs.ENV_FILE])["DATABASE_URL"])
    assert (url["sslmode"], url["sslrootcert"]) == ("verify-ca", "/etc/poolkit/tls-ca.crt")
