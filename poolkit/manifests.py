"""Kubernetes objects of a stack, as plain dicts: the one source of the Kubernetes target.

``objects`` is pure. The Pulumi program turns each dict into a ``pulumi_kubernetes`` resource
(``components/kubernetes.py``) and ``poolkit render --target kubernetes`` writes the same dicts
as YAML. File contents come from ``poolkit.render`` (the renderers every target shares), sizes
and limits from the plan (``poolkit.layouts.postgres_limits``, the pool split); this module
only decides where each file is mounted and how the pods run and stop.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from poolkit import scram
from poolkit.config import StackConfig
from poolkit.envfile import parse_env
from poolkit.layouts import APP_CA_DIR, KUBERNETES_DATA_MOUNT, kubernetes_layout, postgres_limits
from poolkit.render import (
    APP_ENV,
    SERVER_CA,
    TLS_CA,
    TLS_CERT,
    TLS_KEY,
    Layout,
    pgbouncer_peers,
    render_env,
    render_init_sql,
    render_pg_hba,
    render_pgbouncer_ini,
    render_postgresql_conf,
    render_userlist,
    server_tls_sslmode,
)
from poolkit.secrets import ADMIN_USER, STATS_USER, Credential, Secrets
from poolkit.sizing import AppPlan, Plan
from poolkit.tls import ServerTls

Manifest = dict[str, Any]

KUBERNETES_VERSION = "1.33"
"""The Kubernetes version whose schemas the objects are validated against (strict). They use
only GA APIs (apps/v1, batch/v1, policy/v1, networking.k8s.io/v1), so older clusters take
them too."""
POSTGRES_UID = 999
"""uid/gid of ``postgres`` in the poolkit-postgres and poolkit-pgbouncer images."""
APP_UID = 10001
"""uid of ``app`` in the poolkit-app image."""
APP_PORT = 8080
MIGRATE_ENV = ("DIRECT_URL", *APP_ENV["python"])
"""What the migration Job gets from the rendered ``.env``; an app pod gets ``APP_ENV`` of its
runtime (the pooled URL, never DIRECT_URL)."""
POSTGRES_GRACE_S = 120
"""Seconds a Postgres pod has to stop: a fast shutdown and its checkpoint (as on Docker)."""
DRAIN_S = 5
"""Seconds a PgBouncer pod keeps serving once it is marked for deletion, so that the Service
drops it before it stops taking clients."""
STOP_MARGIN_S = 5
PGBOUNCER_MEMORY = {"requests": "64Mi", "limits": "256Mi"}
"""Per pod: a PgBouncer process needs a few kB per client slot."""
APP_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"},
                 "limits": {"cpu": "500m", "memory": "256Mi"}}  # fmt: skip
FILES_ANNOTATION = "poolkit.dev/files"
"""Pod annotation holding a digest of the mounted files: a changed file rolls the pods."""
READ_ONLY_MODE = 0o440
"""Mounted configs and secrets: readable by the owner and the pod's fsGroup, nobody else.
Postgres accepts a key file owned by root with at most 0640 (a projected volume's files are
root's, group fsGroup)."""
TLS_SECRET = "tls"
"""The kubernetes.io/tls Secret: the server certificate (``tls.crt``), its key (``tls.key``)
and, unless it comes from a public CA, the CA clients verify with (``ca.crt``)."""
SERVER_CA_CONFIG_MAP = "server-ca"
"""An external Postgres's CA (public: a ConfigMap)."""


@dataclass(frozen=True)
class Material:
    """What the objects hold besides the credentials."""

    tls: ServerTls | None = None
    """The stack's certificate, key and CA (generated or given) when a server uses TLS."""
    server_ca: str | None = None
    """PEM of an external Postgres's CA (``postgres.external.ca_file``'s content)."""

    def __repr__(self) -> str:
        return f"Material(tls={self.tls!r}, server_ca={'…' if self.server_ca else None})"


def needs_certificate(stack: StackConfig) -> bool:
    """Whether a server of the stack presents a certificate: PgBouncer to its clients, or the
    kit's own Postgres to PgBouncer (an external one has its own)."""
    return stack.pgbouncer.client_tls or (stack.postgres_tls and not stack.postgres.external)


def _clients_verify_pgbouncer(stack: StackConfig) -> bool:
    """Whether the pods' pooled URLs verify PgBouncer with the stack's CA file."""
    return stack.pgbouncer.client_tls and stack.tls.has_ca


def _pgbouncer_verifies_postgres(stack: StackConfig) -> bool:
    """Whether PgBouncer checks the kit's Postgres against the stack's CA file."""
    return (stack.pgbouncer.server_tls and not stack.postgres.external
            and server_tls_sslmode(stack) != "require")  # fmt: skip


def _labels(stack: StackConfig, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "poolkit", "app.kubernetes.io/instance": stack.stack,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "poolkit"}  # fmt: skip


def selector(stack: StackConfig, component: str) -> dict[str, str]:
    """The labels that select one component's pods."""
    labels = _labels(stack, component)
    return {k: labels[k] for k in ("app.kubernetes.io/instance", "app.kubernetes.io/component")}


def _meta(stack: StackConfig, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": stack.kubernetes.namespace,
            "labels": _labels(stack, component)}  # fmt: skip


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _exec(*command: str, **timing: int) -> dict[str, Any]:
    return {"exec": {"command": list(command)}, **timing}


def _hardened(uid: int) -> dict[str, Any]:
    """A container that runs unprivileged with a read-only root file system."""
    return {"runAsUser": uid, "runAsNonRoot": True, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}  # fmt: skip


def _pod_security(uid: int) -> dict[str, Any]:
    return {"runAsUser": uid, "runAsGroup": uid, "fsGroup": uid, "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip


def _pod(stack: StackConfig, component: str, uid: int, containers: list[dict[str, Any]],
         digest: str | None = None, **spec: Any) -> dict[str, Any]:  # fmt: skip
    metadata: dict[str, Any] = {"labels": _labels(stack, component)}
    if digest:
        metadata["annotations"] = {FILES_ANNOTATION: digest}
    return {"metadata": metadata,
            "spec": {"securityContext": _pod_security(uid), "automountServiceAccountToken": False,
                     "containers": containers, **spec}}  # fmt: skip


def _files_volume(name: str, config_map: str | None, secret: str | None,
                  *extra: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """One read-only folder holding a ConfigMap's and a Secret's files, and ``extra`` sources."""
    sources = [*([{"configMap": {"name": config_map}}] if config_map else []),
               *([{"secret": {"name": secret}}] if secret else []), *extra]  # fmt: skip
    return {"name": name, "projected": {"defaultMode": READ_ONLY_MODE, "sources": sources}}


def _tls_files(*items: tuple[str, str]) -> list[dict[str, Any]]:
    """Files of the TLS Secret, each under the name the rendered configs give it."""
    if not items:
        return []
    return [{"secret": {"name": TLS_SECRET, "items": [{"key": key, "path": path}
                                                      for key, path in items]}}]  # fmt: skip


def _ca_sources(stack: StackConfig, direct: bool) -> list[dict[str, Any]]:
    """CA files a client pod verifies with: the stack's (pooled URLs) and, for a pod that uses
    DIRECT_URL, an external Postgres's."""
    sources = _tls_files(("ca.crt", TLS_CA)) if _clients_verify_pgbouncer(stack) else []
    external = stack.postgres.external
    if direct and external and external.ca_file:
        sources.append({"configMap": {"name": SERVER_CA_CONFIG_MAP}})
    return sources


def _ca_mount(stack: StackConfig, direct: bool) -> tuple[list[dict[str, Any]],
                                                          list[dict[str, Any]]]:  # fmt: skip
    """``(volumeMounts, volumes)`` of a client pod's CA folder (both empty when it needs none)."""
    sources = _ca_sources(stack, direct)
    if not sources:
        return [], []
    return ([{"name": "ca", "mountPath": APP_CA_DIR, "readOnly": True}],
            [_files_volume("ca", None, None, *sources)])  # fmt: skip


def _config_map(stack: StackConfig, name: str, component: str, data: dict[str, str]) -> Manifest:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(stack, name, component),
            "data": data}  # fmt: skip


def _secret(stack: StackConfig, name: str, component: str, data: dict[str, str]) -> Manifest:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(stack, name, component), "stringData": data}  # fmt: skip


def _service(stack: StackConfig, name: str, port: int, headless: bool = False,
             kind: str = "ClusterIP") -> Manifest:  # fmt: skip
    spec: dict[str, Any] = {"selector": selector(stack, name), "ports": [
        {"name": "tcp", "port": port, "targetPort": port, "protocol": "TCP"}]}  # fmt: skip
    if headless:
        spec["clusterIP"] = "None"
    if kind != "ClusterIP":
        spec["type"] = kind
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(stack, name, name),
            "spec": spec}  # fmt: skip


def _postgres(stack: StackConfig, plan: Plan, layout: Layout, digest: str) -> list[Manifest]:
    limits = postgres_limits(stack, plan)
    port = str(layout.postgres_port)
    resources = {"cpu": str(limits.cpus), "memory": f"{limits.memory_mb}Mi"}
    ready = ("pg_isready", "-h", layout.postgres_socket_dir, "-p", port, "-U", layout.superuser,
             "-d", "postgres")  # fmt: skip
    container = {
        "name": "postgres", "image": stack.kubernetes.postgres_image,
        "env": [{"name": "PGDATA", "value": layout.data_directory}],
        "ports": [{"name": "postgres", "containerPort": layout.postgres_port}],
        "resources": {"requests": resources, "limits": resources},
        # The first start runs initdb and the init SQL: up to 3 minutes.
        "startupProbe": _exec(*ready, periodSeconds=2, timeoutSeconds=2, failureThreshold=90),
        "readinessProbe": _exec(*ready, periodSeconds=5, timeoutSeconds=4, failureThreshold=3),
        "livenessProbe": _exec(*ready, periodSeconds=10, timeoutSeconds=5, failureThreshold=6),
        # A pod's stop signal is SIGTERM, a "smart" shutdown that waits for PgBouncer's server
        # connections to end, which they never do: stop "fast" first (roll back, checkpoint).
        "lifecycle": {"preStop": _exec("pg_ctl", "stop", "-D", layout.data_directory, "-m", "fast",
                                       "-w", "-t", str(POSTGRES_GRACE_S - 10))},
        "securityContext": _hardened(POSTGRES_UID),
        "volumeMounts": [
            {"name": "data", "mountPath": KUBERNETES_DATA_MOUNT},
            {"name": "config", "mountPath": layout.config_dir, "readOnly": True},
            {"name": "run", "mountPath": layout.postgres_socket_dir},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }  # fmt: skip
    claim: dict[str, Any] = {
        "metadata": {"name": "data", "labels": _labels(stack, "postgres")},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {
            "storage": f"{stack.kubernetes.storage_bytes // 2**20}Mi"}}},
    }  # fmt: skip
    if stack.kubernetes.storage_class:
        claim["spec"]["storageClassName"] = stack.kubernetes.storage_class
    pod = _pod(stack, "postgres", POSTGRES_UID, [container], digest,
               terminationGracePeriodSeconds=POSTGRES_GRACE_S, volumes=[
                   _files_volume("config", "postgres-config", "postgres-init", *_tls_files(
                       *((("tls.crt", TLS_CERT), ("tls.key", TLS_KEY))
                         if stack.postgres_tls else ()))),
                   {"name": "run", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}},
                   # Parallel workers share hash tables in /dev/shm (64MB is too small).
                   {"name": "dshm", "emptyDir": {"medium": "Memory",
                                                 "sizeLimit": f"{limits.shm_mb}Mi"}}])  # fmt: skip
    peers = [{"podSelector": {"matchLabels": selector(stack, c)}} for c in ("pgbouncer", "migrate")]
    return [
        _service(stack, "postgres", layout.postgres_port, headless=True),
        {"apiVersion": "apps/v1", "kind": "StatefulSet",
         "metadata": _meta(stack, "postgres", "postgres"),
         "spec": {"serviceName": "postgres", "replicas": 1,
                  "selector": {"matchLabels": selector(stack, "postgres")},
                  "template": pod, "volumeClaimTemplates": [claim]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": _meta(stack, "postgres-ingress", "postgres"),
         "spec": {"podSelector": {"matchLabels": selector(stack, "postgres")},
                  "policyTypes": ["Ingress"],
                  "ingress": [{"from": peers,
                               "ports": [{"protocol": "TCP", "port": layout.postgres_port}]}]}},
    ]  # fmt: skip


def rollout(replicas: int) -> dict[str, int]:
    """How the pooler rolls. Several replicas: one pod down at a time and no surge pod, so the
    pods running never hold more than the budget (the others serve meanwhile). One replica: a
    surge pod first, so there is no gap; for that overlap Postgres may see the old pod's
    draining servers and the new pod's share at once."""
    if replicas > 1:
        return {"maxUnavailable": 1, "maxSurge": 0}
    return {"maxUnavailable": 0, "maxSurge": 1}


def _pgbouncer(stack: StackConfig, plan: Plan, layout: Layout, digest: str) -> list[Manifest]:
    port = layout.pgbouncer_port
    processes = plan.pool.split.processes
    # Drain, then safe shutdown (SIGINT to PID 1: PgBouncer, or poolkit-pgbouncers, which
    # passes it to every process): no new clients, transactions in flight finish.
    grace = DRAIN_S + stack.pgbouncer.query_wait_timeout + STOP_MARGIN_S
    cpu = str(processes)  # each process is single-threaded: one CPU each at most
    container = {
        "name": "pgbouncer", "image": stack.kubernetes.pgbouncer_image,
        "ports": [{"name": "pgbouncer", "containerPort": port}],
        "resources": {"requests": {"cpu": "100m", "memory": PGBOUNCER_MEMORY["requests"]},
                      "limits": {"cpu": cpu, "memory": PGBOUNCER_MEMORY["limits"]}},
        "readinessProbe": _exec("pg_isready", "-h", "127.0.0.1", "-p", str(port), "-U", STATS_USER,
                                "-d", "pgbouncer", periodSeconds=5, timeoutSeconds=4,
                                failureThreshold=2),
        "livenessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 10, "timeoutSeconds": 5,
                          "failureThreshold": 6},
        "lifecycle": {"preStop": _exec("/bin/sh", "-c", f"sleep {DRAIN_S}; kill -INT 1")},
        "securityContext": _hardened(POSTGRES_UID),
        "volumeMounts": [{"name": "config", "mountPath": layout.pgbouncer_dir, "readOnly": True},
                         {"name": "run", "mountPath": layout.pgbouncer_socket_dir}],
    }  # fmt: skip
    spread = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
              "whenUnsatisfiable": "ScheduleAnyway",
              "labelSelector": {"matchLabels": selector(stack, "pgbouncer")}}  # fmt: skip
    pod = _pod(stack, "pgbouncer", POSTGRES_UID, [container], digest,
               terminationGracePeriodSeconds=grace, topologySpreadConstraints=[spread],
               volumes=[_files_volume("config", "pgbouncer-config", "pgbouncer-userlist",
                                      *_pgbouncer_tls_sources(stack)),
                        {"name": "run", "emptyDir": {}}])  # fmt: skip
    return [
        _service(stack, "pgbouncer", port, kind=stack.kubernetes.pgbouncer_service),
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": _meta(stack, "pgbouncer", "pgbouncer"),
         "spec": {"replicas": stack.pgbouncer.replicas,
                  "selector": {"matchLabels": selector(stack, "pgbouncer")},
                  "strategy": {"type": "RollingUpdate",
                               "rollingUpdate": rollout(stack.pgbouncer.replicas)},
                  "template": pod}},
        # Voluntary disruptions (node drains) take one pooler at a time.
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
         "metadata": _meta(stack, "pgbouncer", "pgbouncer"),
         "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(stack, "pgbouncer")}}},
    ]  # fmt: skip


def _pgbouncer_tls_sources(stack: StackConfig) -> list[dict[str, Any]]:
    """PgBouncer's TLS files beside pgbouncer.ini: its certificate and key for clients, the CA
    it verifies the kit's Postgres with, or an external Postgres's CA."""
    items = [("tls.crt", TLS_CERT), ("tls.key", TLS_KEY)] if stack.pgbouncer.client_tls else []
    if _pgbouncer_verifies_postgres(stack):
        items.append(("ca.crt", TLS_CA))
    sources = _tls_files(*items)
    external = stack.postgres.external
    if external and external.ca_file:
        sources.append({"configMap": {"name": SERVER_CA_CONFIG_MAP}})
    return sources


def _app(stack: StackConfig, app: AppPlan, digest: str) -> list[Manifest]:
    name = f"app-{app.name}"
    mounts, volumes = _ca_mount(stack, direct=False)
    if app.runtime == "node":  # Node.js may write temporary files; the root is read-only
        mounts.append({"name": "tmp", "mountPath": "/tmp"})
        volumes.append({"name": "tmp", "emptyDir": {}})
    image = stack.kubernetes.app_node_image if app.runtime == "node" else stack.kubernetes.app_image
    container = {
        "name": "app", "image": image,
        "env": [{"name": "APP_STYLE", "value": app.style}],
        "envFrom": [{"secretRef": {"name": f"{name}-env"}}],
        "ports": [{"name": "http", "containerPort": APP_PORT}],
        "resources": APP_RESOURCES,
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": APP_PORT},
                           "periodSeconds": 5, "timeoutSeconds": 4},
        "livenessProbe": {"tcpSocket": {"port": APP_PORT}, "periodSeconds": 10},
        "securityContext": _hardened(APP_UID),
        **({"volumeMounts": mounts} if mounts else {}),
    }  # fmt: skip
    pod = _pod(stack, name, APP_UID, [container], digest, terminationGracePeriodSeconds=10,
               **({"volumes": volumes} if volumes else {}))  # fmt: skip
    return [
        _service(stack, name, APP_PORT),
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(stack, name, name),
         "spec": {"replicas": app.replicas, "selector": {"matchLabels": selector(stack, name)},
                  "template": pod}},
    ]  # fmt: skip


def _migrate_job(stack: StackConfig) -> Manifest:
    mounts, volumes = _ca_mount(stack, direct=True)
    container = {
        "name": "migrate", "image": stack.kubernetes.app_image,
        "command": ["python3", "-m", "apps.migrate"],
        "envFrom": [{"secretRef": {"name": "migrate-env"}}],
        "resources": APP_RESOURCES, "securityContext": _hardened(APP_UID),
        **({"volumeMounts": mounts} if mounts else {}),
    }  # fmt: skip
    pod = _pod(stack, "migrate", APP_UID, [container], restartPolicy="OnFailure",
               **({"volumes": volumes} if volumes else {}))  # fmt: skip
    # Retries until Postgres is up (backoff up to minutes); the finished Job stays for its log.
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(stack, "migrate", "migrate"),
            "spec": {"backoffLimit": 10, "template": pod}}  # fmt: skip


def _env_values(text: str, keys: Iterable[str]) -> dict[str, str]:
    values = parse_env(text)
    return {key: values[key] for key in keys}


def pgbouncer_files(stack: StackConfig, plan: Plan) -> dict[str, str]:
    """The pooler pods' ini file(s): one per process of a pod, the same in every replica."""
    layout = kubernetes_layout(stack)
    return {peer.ini: render_pgbouncer_ini(stack, plan, layout, peer.peer_id)
            for peer in pgbouncer_peers(plan, layout)}  # fmt: skip


def objects(stack: StackConfig, plan: Plan, secrets: Secrets,
            material: Material = Material()) -> list[Manifest]:  # fmt: skip
    """Every object of the stack, in apply order (namespace first, workloads last).

    With ``postgres.external`` there is no Postgres (StatefulSet, Service, NetworkPolicy,
    its ConfigMap and Secret): PgBouncer and the migration Job reach the external server, over
    TLS checked with its CA (the ConfigMap ``server-ca``).
    """
    layout = kubernetes_layout(stack)
    external = stack.postgres.external
    inis = pgbouncer_files(stack, plan)
    userlist = render_userlist(secrets)
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": stack.kubernetes.namespace,
                              "labels": _labels(stack, "namespace")}}  # fmt: skip
    result: list[Manifest] = [namespace]
    tls = material.tls if needs_certificate(stack) else None
    if needs_certificate(stack):
        if tls is None:
            raise ValueError("the stack uses TLS: objects() needs Material.tls")
        data = {"tls.crt": tls.cert, "tls.key": tls.key, **({"ca.crt": tls.ca} if tls.ca else {})}
        result.append({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                       "metadata": _meta(stack, TLS_SECRET, "tls"),
                       "stringData": data})  # fmt: skip
    if external and external.ca_file:
        if material.server_ca is None:
            raise ValueError("postgres.external.ca_file: objects() needs Material.server_ca")
        result.append(_config_map(stack, SERVER_CA_CONFIG_MAP, "pgbouncer",
                                  {SERVER_CA: material.server_ca}))  # fmt: skip
    certificate = tls.cert if tls else ""
    if not external:
        postgres_files = {"postgresql.conf": render_postgresql_conf(stack, plan, layout),
                          "pg_hba.conf": render_pg_hba(stack, layout)}  # fmt: skip
        init_sql = render_init_sql(stack, secrets)
        result += [_config_map(stack, "postgres-config", "postgres", postgres_files),
                   _secret(stack, "postgres-init", "postgres", {"init.sql": init_sql})]
    result += [
        _config_map(stack, "pgbouncer-config", "pgbouncer", inis),
        _secret(stack, "pgbouncer-userlist", "pgbouncer", {"userlist.txt": userlist}),
        _secret(stack, "migrate-env", "migrate",
                _env_values(render_env(stack, plan, secrets, layout), MIGRATE_ENV)),
    ]  # fmt: skip
    result += [_secret(stack, f"app-{app.name}-env", f"app-{app.name}",
                       _env_values(render_env(stack, plan, secrets, layout, app),
                                   APP_ENV[app.runtime]))
               for app in plan.apps]  # fmt: skip
    if not external:
        result += _postgres(stack, plan, layout,
                            _digest(*postgres_files.values(), init_sql, certificate))
    result += _pgbouncer(stack, plan, layout,
                         _digest(*inis.values(), userlist, certificate, material.server_ca or ""))
    result.append(_migrate_job(stack))
    ca = (tls.ca or "") if tls else ""
    for app in plan.apps:  # a new password (its verifier) or CA rolls the apps' pods
        result += _app(stack, app, _digest(secrets.app.verifier, ca))
    return result


def object_key(manifest: Manifest) -> str:
    """``Kind/name``: unique within a stack's objects."""
    return f"{manifest['kind']}/{manifest['metadata']['name']}"


def placeholder_secrets(stack: StackConfig, superuser: str) -> Secrets:
    """The stack's users with a fixed dummy password: enough to build the objects' shape."""
    salt = base64.b64encode(bytes(scram.SALT_BYTES)).decode()
    db = stack.database

    def dummy(user: str) -> Credential:
        return Credential(user=user, password="placeholder-password", salt=salt, iterations=1)

    return Secrets(superuser=dummy(superuser), migrator=dummy(db.migrator_user),
                   app=dummy(db.app_user), pgbouncer_admin=dummy(ADMIN_USER),
                   pgbouncer_stats=dummy(STATS_USER))  # fmt: skip


def placeholder_material(stack: StackConfig, server_ca: str | None = None) -> Material:
    """TLS material of the right shape (a CA unless the given certificate has none)."""
    if not needs_certificate(stack):
        return Material(server_ca=server_ca)
    ca = "placeholder-ca" if stack.tls.has_ca else None
    return Material(ServerTls(cert="placeholder-cert", key="placeholder-key", ca=ca), server_ca)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the rendered files) as literal blocks, readable in review."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def manifest_files(stack: StackConfig, plan: Plan, secrets: Secrets,
                   material: Material = Material()) -> dict[str, str]:  # fmt: skip
    """``NN-kind-name.yaml`` -> one object as YAML, in apply order (``poolkit render``)."""
    files: dict[str, str] = {}
    for index, manifest in enumerate(objects(stack, plan, secrets, material)):
        name = f"{index:02d}-{manifest['kind'].lower()}-{manifest['metadata']['name']}.yaml"
        files[name] = yaml.dump(manifest, Dumper=_Dumper, sort_keys=False)
    return files


def is_secret_file(name: str) -> bool:
    """Whether a file of ``manifest_files`` holds a Secret (written 0600)."""
    return name.split("-", 2)[1:2] == ["secret"]
