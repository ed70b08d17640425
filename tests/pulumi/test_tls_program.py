"""TLS and exposure in the Pulumi program: certificates in the state, uploads, published address."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
from cryptography import x509

from poolkit import tls
from poolkit.envfile import parse_env
from poolkit.outputs import Outputs

from .harness import CONTAINER, Deployment, Registered, deploy, is_secret

pytestmark = pytest.mark.pulumi

CA_TYPE = "pulumi-python:dynamic/poolkit:GeneratedCa"
SERVER_TYPE = "pulumi-python:dynamic/poolkit:ServerCertificate"
EXPOSED = {
    "poolkit:pgbouncer": {"client_tls": True, "server_tls": True, "publish_address": "127.0.0.2",
                          "port": 16432},
    "poolkit:postgres": {"publish": True, "publish_address": "127.0.0.2", "port": 15432},
    "poolkit:tls": {"names": ["db.example.test"]},
}  # fmt: skip


@pytest.fixture(scope="module")
def exposed() -> Deployment:
    return deploy("exposed", EXPOSED)


def _uploads(container: Registered) -> dict[str, dict[str, Any]]:
    return {u["file"]: u for u in container.args["uploads"]}


def test_generated_ca_and_server_certificate_keep_keys_secret(exposed: Deployment) -> None:
    (ca,), (server,) = exposed.of_type(CA_TYPE), exposed.of_type(SERVER_TYPE)
    assert server.args["names"][:2] == ["db.example.test", "127.0.0.2"]
    assert "postgres" in server.args["names"] and "pgbouncer" in server.args["names"]
    assert is_secret(server.inputs["ca_key_pem"]), "the CA key reached the state in clear"
    cert = x509.load_pem_x509_certificate(server.state["cert_pem"].encode())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.state["cert_pem"].encode()))


def test_pgbouncer_gets_key_cert_and_ca_and_is_published_on_the_address(
    exposed: Deployment,
) -> None:
    bouncer = exposed.containers()["poolkit-exposed-pgbouncer"]
    files = _uploads(bouncer)
    key = files["/etc/pgbouncer/client-tls.key"]
    assert key["permissions"] == "0600" and key["owner"] == "999"
    assert is_secret(bouncer.inputs["uploads"]), f"{bouncer.urn}: the key is not secret"
    assert "BEGIN PRIVATE KEY" in key["content"]
    assert "BEGIN CERTIFICATE" in files["/etc/pgbouncer/tls-ca.crt"]["content"]
    assert [(p["ip"], p["external"]) for p in bouncer.args["ports"]] == [("127.0.0.2", 16432)]
    ini = files["/etc/pgbouncer/pgbouncer-1.ini"]["content"]  # 2 processes from 2 CPUs
    assert "client_tls_sslmode = require" in ini and "server_tls_sslmode = verify-full" in ini


def test_postgres_gets_the_certificate_and_a_tls_only_published_port(exposed: Deployment) -> None:
    postgres = exposed.containers()["poolkit-exposed-postgres"]
    files = _uploads(postgres)
    assert files["/etc/poolkit/client-tls.key"]["permissions"] == "0600"
    assert "ssl = on" in files["/etc/poolkit/postgresql.conf"]["content"]
    assert "hostssl" in files["/etc/poolkit/pg_hba.conf"]["content"]
    assert [p["ip"] for p in postgres.args["ports"]] == ["127.0.0.2"]


def test_env_verifies_with_the_ca_written_by_poolkit_env(exposed: Deployment) -> None:
    env = parse_env(exposed.outputs[Outputs.ENV_FILE])
    assert "sslmode=verify-full" in env["POOLED_DATABASE_URL"]
    assert "@db.example.test:16432/" in env["POOLED_DATABASE_URL"]
    ca_file = exposed.outputs[Outputs.TLS_CA_FILE]
    assert f"sslrootcert={ca_file.replace('/', '%2F')}" in env["POOLED_DATABASE_URL"]
    assert Outputs.TLS_CA not in exposed.secret_outputs, "a CA certificate is public"
    assert tls.names_of(exposed.outputs[Outputs.TLS_CA]) == []  # a CA, not the server's cert


def test_without_tls_nothing_of_it_is_registered() -> None:
    plain = deploy("plain", {"poolkit:pgbouncer": {"port": 16432}})
    assert not plain.of_type(CA_TYPE) and not plain.of_type(SERVER_TYPE)
    assert plain.outputs[Outputs.TLS_CA] is None
    for container in plain.of_type(CONTAINER):
        assert all(p["ip"] == "127.0.0.1" for p in container.args.get("ports") or [])


def test_publishing_beyond_loopback_without_tls_registers_nothing() -> None:
    config = {"poolkit:pgbouncer": {"publish_address": "0.0.0.0"}}
    with pytest.raises(pulumi.RunError) as failure:
        deploy("open", config)
    message = str(failure.value)
    assert "poolkit:pgbouncer.publish_address" in message and "client_tls: true" in message
    assert "poolkit:tls.names" in message
    assert deploy.last_monitor.registered == []


def test_a_given_certificate_is_checked_before_any_resource() -> None:
    ca, server = tls.generate(["db.example.test"], "test CA")
    config = {"poolkit:pgbouncer": {"client_tls": True}, "poolkit:tls": {"names": ["other.test"]},
              "poolkit:tls_certificate": server.cert, "poolkit:tls_key": tls.new_ca("x").key,
              "poolkit:tls_ca": ca.cert}  # fmt: skip
    with pytest.raises(pulumi.RunError) as failure:
        deploy("given", config, secret_keys=("poolkit:tls_certificate", "poolkit:tls_key",
                                            "poolkit:tls_ca"))  # fmt: skip
    message = str(failure.value)
    assert "tls_key does not belong" in message and "'other.test'" in message
    assert "PRIVATE KEY" not in message
    assert deploy.last_monitor.registered == []


def test_a_given_certificate_reaches_pgbouncer_as_a_secret() -> None:
    ca, server = tls.generate(["db.example.test"], "test CA")
    config = {"poolkit:pgbouncer": {"client_tls": True, "port": 16432},
              "poolkit:tls": {"names": ["db.example.test"]},
              "poolkit:tls_certificate": server.cert, "poolkit:tls_key": server.key,
              "poolkit:tls_ca": ca.cert}  # fmt: skip
    given = deploy("given", config, secret_keys=("poolkit:tls_certificate", "poolkit:tls_key",
                                                 "poolkit:tls_ca"))  # fmt: skip
    assert not given.of_type(CA_TYPE)
    files = _uploads(given.containers()["poolkit-given-pgbouncer"])
    assert files["/etc/pgbouncer/client-tls.crt"]["content"] == server.cert
    assert files["/etc/pgbouncer/client-tls.key"]["content"] == server.key
    assert given.outputs[Outputs.TLS_CA] == ca.cert
