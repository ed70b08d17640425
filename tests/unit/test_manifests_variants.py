"""Kubernetes objects of the variants the first version refused: an external Postgres, TLS
Secrets, a Service beyond the cluster, and node apps. Every path a rendered config names is a
file some volume mounts; keys and passwords stay in Secrets; the sized files are the other
targets'."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from poolkit.config import ConfigError
from poolkit.layouts import kubernetes_certificate_names, kubernetes_layout, local_layout
from poolkit.manifests import (
    READ_ONLY_MODE,
    Manifest,
    object_key,
    objects,
    placeholder_material,
    placeholder_secrets,
)
from poolkit.render import APP_ENV, render_pgbouncer_ini, render_postgresql_conf
from poolkit.sizing import DIRECT_HEADROOM, plan
from tests.unit.factories import secrets
from tests.unit.test_manifests import (
    EXTERNAL,
    MATERIAL,
    NODE_APP,
    SERVER_CA_PEM,
    TLS,
    _k8s_stack,
    _objects,
    _sized,
    assert_alike_but_secret_data,
)

pytestmark = pytest.mark.unit

PATH_SETTINGS = re.compile(r"^(ssl_cert_file|ssl_key_file|client_tls_key_file|client_tls_cert_file"
                           r"|server_tls_ca_file|auth_file) = '?([^'\n]+)'?$", re.MULTILINE)
"""Settings of postgresql.conf and pgbouncer.ini that name a file."""


def _pod(objs: dict[str, Manifest], key: str) -> dict[str, Any]:
    pod: dict[str, Any] = objs[key]["spec"]["template"]["spec"]
    return pod


def _mounted(objs: dict[str, Manifest], key: str) -> dict[str, str]:
    """Every file a workload's container sees in its projected volumes: path -> source key."""
    pod = _pod(objs, key)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files: dict[str, str] = {}
    for mount in pod["containers"][0].get("volumeMounts", []):
        projected = volumes.get(mount["name"], {}).get("projected")  # not a volume claim
        if not projected:
            continue
        for source in projected["sources"]:
            kind, ref = next(iter(source.items()))
            obj = objs[f"{'ConfigMap' if kind == 'configMap' else 'Secret'}/{ref['name']}"]
            data = obj.get("data") or obj.get("stringData")
            items = ref.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                assert item["key"] in data, (key, ref["name"], item["key"])
                files[f"{mount['mountPath']}/{item['path']}"] = f"{ref['name']}/{item['key']}"
    return files


def _named_paths(text: str) -> dict[str, str]:
    return dict(PATH_SETTINGS.findall(text))


def test_external_postgres_has_no_postgres_and_pgbouncer_verifies_it_with_its_ca() -> None:
    objs = _objects(postgres={"external": EXTERNAL}, pgbouncer={"replicas": 3})
    assert not [k for k in objs if "postgres" in k]
    assert objs["ConfigMap/server-ca"]["data"] == {"server-ca.crt": SERVER_CA_PEM}
    ini = objs["ConfigMap/pgbouncer-config"]["data"]["pgbouncer.ini"]
    assert "app = host=db.example.com port=5433 dbname=app" in ini
    assert "server_tls_sslmode = verify-full" in ini
    mounted = _mounted(objs, "Deployment/pgbouncer")
    for setting, path in _named_paths(ini).items():
        assert path in mounted, setting
    assert mounted[_named_paths(ini)["server_tls_ca_file"]] == "server-ca/server-ca.crt"


def test_external_migration_uses_direct_url_with_verify_full_and_the_mounted_ca() -> None:
    objs = _objects(postgres={"external": EXTERNAL})
    direct = conninfo_to_dict(objs["Secret/migrate-env"]["stringData"]["DIRECT_URL"])
    assert (direct["host"], direct["port"], direct["sslmode"]) == ("db.example.com", "5433",
                                                                   "verify-full")  # fmt: skip
    assert _mounted(objs, "Job/migrate") == {direct["sslrootcert"]: "server-ca/server-ca.crt"}
    assert "volumes" not in _pod(objs, "Deployment/app-orders")  # apps never get DIRECT_URL


def test_external_budget_per_replica_fits_the_server_and_a_larger_one_is_refused() -> None:
    config = _k8s_stack(postgres={"external": EXTERNAL}, pgbouncer={"replicas": 3})
    result = plan(config)
    split = result.pool.split
    assert split.instances == 3 and 3 * split.max_db_connections <= split.budget
    assert result.pool.server_connections + DIRECT_HEADROOM <= EXTERNAL["max_connections"]
    objs = {object_key(o): o for o in objects(config, result, secrets(), MATERIAL)}
    ini = objs["ConfigMap/pgbouncer-config"]["data"]["pgbouncer.ini"]
    assert f"max_db_connections = {split.max_db_connections}" in ini
    # The sized part is the local target's for the same external server.
    local = local_layout(config, Path("/srv/poolkit"), "postgres")
    assert _sized(ini) == _sized(render_pgbouncer_ini(config, result, local))
    small = _k8s_stack(postgres={"external": {**EXTERNAL, "max_connections": 20}},
                       pgbouncer={"default_pool_size": 30})  # fmt: skip
    with pytest.raises(ConfigError) as error:
        plan(small)
    assert error.value.problems[0].key == "poolkit:postgres.external.max_connections"


def test_tls_files_come_from_a_tls_secret_at_the_paths_the_configs_name() -> None:
    objs = _objects(**TLS)
    tls = objs["Secret/tls"]
    assert tls["type"] == "kubernetes.io/tls"
    assert tls["stringData"] == {"tls.crt": "CERT-PEM", "tls.key": "KEY-PEM-secret",
                                 "ca.crt": "CA-PEM"}  # fmt: skip
    conf = objs["ConfigMap/postgres-config"]["data"]["postgresql.conf"]
    assert "ssl = on" in conf
    ini = objs["ConfigMap/pgbouncer-config"]["data"]["pgbouncer.ini"]
    assert "client_tls_sslmode = require" in ini and "server_tls_sslmode = verify-full" in ini
    for key, text in (("StatefulSet/postgres", conf), ("Deployment/pgbouncer", ini)):
        mounted = _mounted(objs, key)
        for setting, path in _named_paths(text).items():
            assert path in mounted, (key, setting)
        pod = _pod(objs, key)
        config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
        assert config_volume["projected"]["defaultMode"] == READ_ONLY_MODE == 0o440
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    key_file = _named_paths(conf)["ssl_key_file"]
    assert _mounted(objs, "StatefulSet/postgres")[key_file] == "tls/tls.key"
    # PgBouncer gets the CA it verifies Postgres with; Postgres gets no CA.
    assert "tls/ca.crt" in _mounted(objs, "Deployment/pgbouncer").values()
    assert "tls/ca.crt" not in _mounted(objs, "StatefulSet/postgres").values()
    hba = objs["ConfigMap/postgres-config"]["data"]["pg_hba.conf"]
    assert re.search(r"^hostssl\s+\"app\"\s+\"app\"\s", hba, re.MULTILINE)


def test_tls_files_are_the_shared_renderers_output() -> None:
    config = _k8s_stack(**TLS)
    result = plan(config)
    objs = {object_key(o): o for o in objects(config, result, secrets(), MATERIAL)}
    layout = kubernetes_layout(config)
    assert objs["ConfigMap/postgres-config"]["data"]["postgresql.conf"] == \
        render_postgresql_conf(config, result, layout)  # fmt: skip
    assert objs["ConfigMap/pgbouncer-config"]["data"]["pgbouncer.ini"] == \
        render_pgbouncer_ini(config, result, layout)  # fmt: skip


def test_pods_verify_pgbouncer_with_the_mounted_ca_and_verify_full() -> None:
    objs = _objects(**TLS)
    for key, secret in (("Deployment/app-orders", "app-orders-env"),
                        ("Job/migrate", "migrate-env")):  # fmt: skip
        url = conninfo_to_dict(objs[f"Secret/{secret}"]["stringData"]["POOLED_DATABASE_URL"])
        assert url["sslmode"] == "verify-full" and url["host"] == "pgbouncer.poolkit-test.svc"
        assert _mounted(objs, key) == {url["sslrootcert"]: "tls/ca.crt"}, key


def test_generated_certificate_names_the_services_and_the_stack_s_names() -> None:
    names = kubernetes_certificate_names(_k8s_stack(**TLS))
    assert names[0] == "db.example.com"
    assert {"pgbouncer.poolkit-test.svc", "postgres.poolkit-test.svc",
            "pgbouncer.poolkit-test.svc.cluster.local"} <= set(names)  # fmt: skip


def test_no_key_password_or_verifier_outside_secrets_with_tls_and_external() -> None:
    for variant in (TLS, {"postgres": {"external": EXTERNAL}, "pgbouncer": {"client_tls": True},
                          "tls": TLS["tls"]}):  # fmt: skip
        for key, obj in _objects(**variant).items():
            if obj["kind"] == "Secret":
                continue
            text = json.dumps(obj)
            assert "KEY-PEM-secret" not in text and "SCRAM-SHA-256$" not in text, key
            assert "app-password-123" not in text and "owner-pw-123456" not in text, key


def test_a_service_beyond_the_cluster_is_typed_and_only_pgbouncer_s() -> None:
    objs = _objects(**TLS, kubernetes={"pgbouncer_service": "LoadBalancer"})
    assert objs["Service/pgbouncer"]["spec"]["type"] == "LoadBalancer"
    assert "type" not in objs["Service/postgres"]["spec"]


def test_node_apps_run_the_node_image_with_the_docker_target_s_variables() -> None:
    objs = _objects(apps=[NODE_APP], kubernetes={"app_node_image": "reg.example/app-node:7"})
    container = _pod(objs, "Deployment/app-edge")["containers"][0]
    assert container["image"] == "reg.example/app-node:7"
    assert container["envFrom"] == [{"secretRef": {"name": "app-edge-env"}}]
    assert tuple(objs["Secret/app-edge-env"]["stringData"]) == APP_ENV["node"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert "livenessProbe" in container and container["securityContext"]["runAsNonRoot"]
    assert _pod(objs, "Job/migrate")["containers"][0]["image"] == "poolkit-app:latest"


@pytest.mark.parametrize("variant", [TLS, {"postgres": {"external": EXTERNAL}}])
def test_the_shape_does_not_depend_on_credentials_or_certificates(variant: dict[str, Any]) -> None:
    config = _k8s_stack(**variant)
    result = plan(config)
    shape = objects(config, result, placeholder_secrets(config, "postgres"),
                    placeholder_material(config, SERVER_CA_PEM))  # fmt: skip
    real = objects(config, result, secrets(), MATERIAL)
    assert_alike_but_secret_data(shape, real)
