"""Kubernetes objects: the shared renderers' files, no secret outside Secrets, limits, probes,
selectors that select, the split budget per replica, strict schema validation, and a shape that
does not depend on the credentials."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from poolkit.config import ConfigError, parse_stack
from poolkit.layouts import docker_layout, kubernetes_layout, kubernetes_problems, postgres_limits
from poolkit.manifests import (
    FILES_ANNOTATION,
    KUBERNETES_VERSION,
    Manifest,
    Material,
    is_secret_file,
    manifest_files,
    object_key,
    objects,
    pgbouncer_files,
    placeholder_secrets,
)
from poolkit.render import (
    render_init_sql,
    render_pg_hba,
    render_pgbouncer_ini,
    render_postgresql_conf,
)
from poolkit.sizing import plan
from poolkit.tls import ServerTls
from tests.unit.factories import secrets, stack

pytestmark = pytest.mark.unit

APPS = [
    {"name": "orders", "style": "lambda", "instances": 40, "replicas": 2},
    {"name": "batch", "style": "workers", "instances": 8},
]
PASSWORDS = ("app-password-123", "owner-pw-123456", "correct-horse-battery")
SIZED = "--- sized by poolkit"
"""Where the sized settings start, in postgresql.conf (``#``) and pgbouncer.ini (``;;``)."""
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

EXTERNAL = {"host": "db.example.com", "port": 5433, "admin_user": "poolkit_admin",
            "ca_file": "/etc/ssl/provider-ca.pem", "max_connections": 200}  # fmt: skip
SERVER_CA_PEM = "-----BEGIN CERTIFICATE-----\nprovider CA\n-----END CERTIFICATE-----\n"
NODE_APP = {"name": "edge", "style": "workers", "instances": 20, "runtime": "node"}
TLS = {"pgbouncer": {"replicas": 2, "client_tls": True, "server_tls": True},
       "tls": {"names": ["db.example.com"]}}  # fmt: skip
MATERIAL = Material(ServerTls(cert="CERT-PEM", key="KEY-PEM-secret", ca="CA-PEM"), SERVER_CA_PEM)
VARIANTS: dict[str, dict[str, Any]] = {
    "shipped-shape": {"pgbouncer": {"replicas": 3}},
    "one-replica-no-apps": {"apps": []},
    "two-processes-per-pod": {"pgbouncer": {"replicas": 2, "processes": 2}},
    "big-oltp-with-class": {"postgres": {"memory": "64GiB", "cpus": 16, "workload": "oltp"},
                            "kubernetes": {"storage": "500GiB", "storage_class": "fast-ssd",
                                           "namespace": "db"}},
    "client-and-server-tls": TLS,
    "exposed-with-tls": {**TLS, "kubernetes": {"pgbouncer_service": "LoadBalancer"}},
    "external-postgres": {"postgres": {"external": EXTERNAL}, "pgbouncer": {"replicas": 3}},
    "external-postgres-with-client-tls": {"postgres": {"external": EXTERNAL}, "tls": TLS["tls"],
                                          "pgbouncer": {"replicas": 2, "client_tls": True}},
    "node-apps": {"apps": [*APPS, NODE_APP]},
}  # fmt: skip


def _k8s_stack(**sections: Any):
    base: dict[str, Any] = {"target": "kubernetes", "apps": APPS,
                            "postgres": {"memory": "4GiB", "cpus": 2}}  # fmt: skip
    return stack(**{**base, **sections})


def _objects(**sections: Any) -> dict[str, Manifest]:
    config = _k8s_stack(**sections)
    return {object_key(o): o for o in objects(config, plan(config), secrets(), MATERIAL)}


def _workloads(objs: dict[str, Manifest]) -> dict[str, Manifest]:
    return {k: o for k, o in objs.items() if o["kind"] in ("Deployment", "StatefulSet", "Job")}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _sized(text: str) -> str:
    return text[text.index(SIZED):]


def test_the_stack_has_every_object_the_target_promises() -> None:
    assert list(_objects()) == [
        "Namespace/poolkit-test",
        "ConfigMap/postgres-config", "Secret/postgres-init",
        "ConfigMap/pgbouncer-config", "Secret/pgbouncer-userlist",
        "Secret/migrate-env", "Secret/app-orders-env", "Secret/app-batch-env",
        "Service/postgres", "StatefulSet/postgres", "NetworkPolicy/postgres-ingress",
        "Service/pgbouncer", "Deployment/pgbouncer", "PodDisruptionBudget/pgbouncer",
        "Job/migrate",
        "Service/app-orders", "Deployment/app-orders",
        "Service/app-batch", "Deployment/app-batch",
    ]  # fmt: skip


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_passes_the_strict_schemas_of_the_pinned_kubernetes(variant: str) -> None:
    """Unknown fields, wrong types and missing required fields fail (kubernetes-validate)."""
    for key, obj in _objects(**VARIANTS[variant]).items():
        assert kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True), key
        assert DNS_LABEL.match(obj["metadata"]["name"]), key


def test_strict_validation_catches_a_misspelt_field_and_a_wrong_type() -> None:
    """The check above can fail: the schemas are there, offline, and strict."""
    deployment = _objects()["Deployment/pgbouncer"]
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "3"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_config_files_are_the_shared_renderers_output() -> None:
    config = _k8s_stack(pgbouncer={"replicas": 3})
    result = plan(config)
    layout = kubernetes_layout(config)
    objs = {object_key(o): o for o in objects(config, result, secrets())}
    pg = objs["ConfigMap/postgres-config"]["data"]
    assert pg == {"postgresql.conf": render_postgresql_conf(config, result, layout),
                  "pg_hba.conf": render_pg_hba(config, layout)}  # fmt: skip
    assert objs["Secret/postgres-init"]["stringData"] == {
        "init.sql": render_init_sql(config, secrets())}
    ini = objs["ConfigMap/pgbouncer-config"]["data"]
    assert ini == pgbouncer_files(config, result)
    # Every sized line is the one the Docker target renders: only the target's facts differ.
    docker = docker_layout(config)
    assert _sized(pg["postgresql.conf"]) == _sized(render_postgresql_conf(config, result, docker))
    assert _sized(ini["pgbouncer.ini"]) == _sized(render_pgbouncer_ini(config, result, docker))


def test_each_replica_gets_its_share_of_the_server_budget() -> None:
    config = _k8s_stack(pgbouncer={"replicas": 3, "default_pool_size": 9, "reserve_pool_size": 3})
    result = plan(config)
    ini = pgbouncer_files(config, result)["pgbouncer.ini"]
    settings = dict(re.findall(r"^(\w+) = (.*)$", ini, re.MULTILINE))
    assert (settings["default_pool_size"], settings["reserve_pool_size"]) == ("3", "1")
    assert settings["max_db_connections"] == "4"
    assert int(settings["max_db_connections"]) * 3 <= 9 + 3
    objs = {object_key(o): o for o in objects(config, result, secrets())}
    assert objs["Deployment/pgbouncer"]["spec"]["replicas"] == 3


def test_several_processes_per_pod_get_one_file_each_and_one_cpu_each() -> None:
    config = _k8s_stack(pgbouncer={"replicas": 2, "processes": 2})
    objs = {object_key(o): o for o in objects(config, plan(config), secrets())}
    assert set(objs["ConfigMap/pgbouncer-config"]["data"]) == {"pgbouncer-1.ini", "pgbouncer-2.ini"}
    container = objs["Deployment/pgbouncer"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["cpu"] == "2"


def test_no_password_or_verifier_outside_secrets() -> None:
    for key, obj in _objects().items():
        if obj["kind"] == "Secret":
            continue
        text = json.dumps(obj)
        for password in PASSWORDS:
            assert password not in text, key
        assert "SCRAM-SHA-256$" not in text, key


def test_passwords_reach_pods_through_secret_refs_never_argv() -> None:
    for key, obj in _workloads(_objects()).items():
        for container in obj["spec"]["template"]["spec"]["containers"]:
            assert "args" not in container, key
            assert not any("value" in e and "URL" in e["name"] for e in container.get("env", []))


def test_apps_get_the_pooled_url_only_and_the_job_the_direct_one() -> None:
    objs = _objects()
    app_env = objs["Secret/app-orders-env"]["stringData"]
    assert set(app_env) == {"POOLED_DATABASE_URL", "POOL_CONNECTION_LIMIT",
                            "PGBOUNCER_PREPARED_STATEMENTS"}  # fmt: skip
    assert "@pgbouncer.poolkit-test.svc:6432/app" in app_env["POOLED_DATABASE_URL"]
    job_env = objs["Secret/migrate-env"]["stringData"]
    assert "@postgres.poolkit-test.svc:5432/app" in job_env["DIRECT_URL"]
    assert "owner-pw-123456" in job_env["DIRECT_URL"]


def test_every_container_has_limits_probes_and_runs_unprivileged() -> None:
    for key, obj in _workloads(_objects()).items():
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, key
        assert pod["automountServiceAccountToken"] is False, key
        for container in pod["containers"]:
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), key
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, key
            assert security["readOnlyRootFilesystem"] is True, key
            assert security["capabilities"]["drop"] == ["ALL"], key
            if obj["kind"] != "Job":
                assert "readinessProbe" in container and "livenessProbe" in container, key


def test_postgres_resources_come_from_the_stack_and_shm_from_the_plan() -> None:
    config = _k8s_stack()
    result = plan(config)
    limits = postgres_limits(config, result)
    objs = {object_key(o): o for o in objects(config, result, secrets())}
    pod = objs["StatefulSet/postgres"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4096Mi"}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": f"{limits.shm_mb}Mi"}
    assert limits.shm_mb == 1024  # shared_buffers of 4GiB
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[:2] == ["pg_ctl", "stop"] and "fast" in pre_stop
    assert int(pre_stop[-1]) < pod["terminationGracePeriodSeconds"]


def test_volume_claim_size_and_class_come_from_the_stack() -> None:
    objs = _objects(kubernetes={"storage": "50GiB", "storage_class": "fast-ssd"})
    claim = objs["StatefulSet/postgres"]["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == "51200Mi"
    assert claim["storageClassName"] == "fast-ssd"


def test_selectors_select_the_right_pods() -> None:
    objs = _objects()
    pods = {k: o["spec"]["template"]["metadata"]["labels"] for k, o in _workloads(objs).items()}
    for key, obj in _workloads(objs).items():  # the API server refuses a selector that misses
        if "selector" in obj["spec"]:
            assert _matches(obj["spec"]["selector"]["matchLabels"], pods[key]), key
    pdb = objs["PodDisruptionBudget/pgbouncer"]["spec"]["selector"]["matchLabels"]
    assert [k for k, labels in pods.items() if _matches(pdb, labels)] == ["Deployment/pgbouncer"]
    for service in ("postgres", "pgbouncer", "app-orders"):
        chosen = objs[f"Service/{service}"]["spec"]["selector"]
        assert len([k for k, labels in pods.items() if _matches(chosen, labels)]) == 1, service

    policy = objs["NetworkPolicy/postgres-ingress"]["spec"]
    target = policy["podSelector"]["matchLabels"]
    assert [k for k, labels in pods.items() if _matches(target, labels)] == ["StatefulSet/postgres"]
    allowed = [peer["podSelector"]["matchLabels"] for peer in policy["ingress"][0]["from"]]
    admitted = sorted(k for k, labels in pods.items()
                      if any(_matches(sel, labels) for sel in allowed))  # fmt: skip
    assert admitted == ["Deployment/pgbouncer", "Job/migrate"]


def test_pgbouncer_drains_then_shuts_down_safely_within_its_grace_period() -> None:
    config = _k8s_stack()
    objs = {object_key(o): o for o in objects(config, plan(config), secrets())}
    deployment = objs["Deployment/pgbouncer"]["spec"]
    assert deployment["replicas"] == 1  # no gap: a surge pod first
    assert deployment["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    several = _objects(pgbouncer={"replicas": 3})["Deployment/pgbouncer"]["spec"]["strategy"]
    # never more pods than replicas: the running pods' shares stay within the budget
    assert several["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    pod = deployment["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[-1].endswith("kill -INT 1")
    assert pod["terminationGracePeriodSeconds"] > 5 + config.pgbouncer.query_wait_timeout
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"


def test_a_changed_password_changes_the_pods_digests() -> None:
    config = _k8s_stack()

    def digests(app_password: str) -> dict[str, str]:
        objs = objects(config, plan(config), secrets(app_password))
        return {object_key(o): o["spec"]["template"]["metadata"]["annotations"][FILES_ANNOTATION]
                for o in objs if o["kind"] in ("Deployment", "StatefulSet")}  # fmt: skip

    before, after = digests("app-password-123"), digests("other-app-pw-99")
    assert set(before) == set(after) and all(before[k] != after[k] for k in before)


def test_the_objects_shape_does_not_depend_on_the_credentials() -> None:
    """What the Pulumi component relies on: only Secret data and file digests differ."""
    config = _k8s_stack()
    result = plan(config)
    shape = objects(config, result, placeholder_secrets(config, "postgres"))
    real = objects(config, result, secrets())
    assert [object_key(o) for o in shape] == [object_key(o) for o in real]
    assert_alike_but_secret_data(shape, real)


def assert_alike_but_secret_data(shape: list[dict[str, Any]], real: list[dict[str, Any]]) -> None:
    """The objects built from placeholders equal the real ones except Secret values and the
    file-digest annotation."""
    for fake, true in zip(shape, real, strict=True):
        if true["kind"] == "Secret":
            assert set(fake["stringData"]) == set(true["stringData"])
            fake, true = {**fake, "stringData": None}, {**true, "stringData": None}
        for obj in (fake, true):
            obj.get("spec", {}).get("template", {}).get("metadata", {}).get(
                "annotations", {}).pop(FILES_ANNOTATION, None)  # fmt: skip
        assert fake == true, object_key(true)


def test_render_files_are_the_objects_and_secrets_are_marked_private() -> None:
    config = _k8s_stack()
    files = manifest_files(config, plan(config), secrets())
    loaded = [yaml.safe_load(text) for text in files.values()]
    assert loaded == objects(config, plan(config), secrets())
    private = sorted(name for name in files if is_secret_file(name))
    assert private == sorted(n for n, o in zip(files, loaded, strict=True) if o["kind"] == "Secret")


def test_namespace_defaults_to_a_dns_label_of_the_stack_name() -> None:
    assert stack("My.Stack_1", target="kubernetes").kubernetes.namespace == "poolkit-my-stack-1"
    assert _objects(kubernetes={"namespace": "team-db"})["Namespace/team-db"]


@pytest.mark.parametrize(("key", "value", "fix"), [
    ("target", "swarm", "use docker (the default) or kubernetes"),
    ("kubernetes.postgres_image", "Registry/Postgres:17", "registry/repository:tag"),
    ("kubernetes.storage", "10 apples", "like 10GiB"),
    ("kubernetes.storage", "100MiB", "like 10GiB"),
    ("kubernetes.pod_networks", ["10.0.0.0/8", "pods"], "e.g. [10.0.0.0/8]"),
    ("kubernetes.namespace", "Team_DB", "DNS label"),
    ("kubernetes.storag", "1GiB", "did you mean 'storage'"),
])  # fmt: skip
def test_kubernetes_keys_are_refused_with_key_value_and_fix(key: str, value: Any, fix: str) -> None:
    section, _, name = key.partition(".")
    raw = {f"poolkit:{section}": {name: value} if name else value}
    with pytest.raises(ConfigError) as error:
        parse_stack(raw, "test")
    [problem] = error.value.problems
    assert problem.key == f"poolkit:{key}"
    assert problem.value == value
    assert fix in problem.fix


def test_what_the_target_cannot_deploy_is_refused_all_at_once() -> None:
    config = _k8s_stack(pgbouncer={"version": "1.22"}, postgres={"publish": True},
                        kubernetes={"pgbouncer_service": "LoadBalancer"})  # fmt: skip
    problems = {p.key: p for p in kubernetes_problems(config)}
    assert sorted(problems) == ["poolkit:kubernetes.pgbouncer_service", "poolkit:pgbouncer.version",
                                "poolkit:postgres.publish", "poolkit:tls.names"]  # fmt: skip
    assert "client_tls: true" in problems["poolkit:kubernetes.pgbouncer_service"].fix
    assert kubernetes_problems(_k8s_stack()) == []
    assert kubernetes_problems(_k8s_stack(**TLS, postgres={"external": EXTERNAL},
                                          apps=[*APPS, NODE_APP])) == []
