"""KubernetesEnvironment: one stack on a cluster, from the objects ``poolkit.manifests`` builds.

The objects are built twice: once with placeholder credentials and certificates, for everything
that holds no secret (known before any value is, so preview shows every resource), and once
with the real ones inside ``apply``, for the Secrets' data and the pods' file digests. No
resource is created inside ``apply``. Certificates are the Docker target's (generated into the
state, or given as stack secrets); an external Postgres is prepared by ``ExternalDatabase``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.certificates import Certificates
from components.credentials import stack_credentials
from components.stack_config import TargetArgs
from poolkit.envfile import parse_env
from poolkit.external import server_ca_pem
from poolkit.layouts import kubernetes_certificate_names, kubernetes_layout
from poolkit.manifests import (
    FILES_ANNOTATION,
    Manifest,
    Material,
    needs_certificate,
    object_key,
    objects,
    placeholder_material,
    placeholder_secrets,
)
from poolkit.pulumi_external import ExternalDatabase, prepare_external
from poolkit.render import render_env

RESOURCE_CLASSES: dict[tuple[str, str], Callable[..., pulumi.CustomResource]] = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
    ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("v1", "Secret"): k8s.core.v1.Secret,
    ("v1", "Service"): k8s.core.v1.Service,
    ("apps/v1", "StatefulSet"): k8s.apps.v1.StatefulSet,
    ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
    ("policy/v1", "PodDisruptionBudget"): k8s.policy.v1.PodDisruptionBudget,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s.networking.v1.NetworkPolicy,
    ("batch/v1", "Job"): k8s.batch.v1.Job,
}
"""Every kind ``poolkit.manifests`` emits, and the pulumi_kubernetes class that creates it."""


class KubernetesEnvironmentArgs(TargetArgs):
    """The stack's args (``TargetArgs``); ``stack.kubernetes`` names the namespace and the
    images."""


def resource_name(name: str, manifest: Manifest) -> str:
    """Pulumi's name of an object: ``<component>-<kind>-<object name>``."""
    return f"{name}-{manifest['kind'].lower()}-{manifest['metadata']['name']}"


class KubernetesEnvironment(pulumi.ComponentResource):
    """Namespace, configs, Postgres (StatefulSet), PgBouncer (Deployment + PDB), apps, Job.

    Secret outputs: ``env_file`` (an ``.env`` for pods of the cluster), ``direct_url``,
    ``pooled_url``. With ``postgres.external`` there is no Postgres: ``external`` prepares
    the server, and PgBouncer and the Job wait for it.
    """

    resources: dict[str, pulumi.CustomResource]
    """``Kind/name`` -> the resource."""
    certificates: Certificates | None
    tls_ca: pulumi.Output[str] | None
    """PEM of the CA the URLs verify PgBouncer with (not a secret), or None."""
    external: ExternalDatabase | None
    env_file: pulumi.Output[str]
    direct_url: pulumi.Output[str]
    pooled_url: pulumi.Output[str]

    def __init__(
        self, name: str, args: KubernetesEnvironmentArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:  # fmt: skip
        super().__init__("poolkit:index:KubernetesEnvironment", name, None, opts)
        stack, plan = args.stack, args.plan
        layout = kubernetes_layout(stack)
        secrets = stack_credentials(self, name, stack, layout.superuser,
                                    args.app_password, args.migrator_password)  # fmt: skip
        child = pulumi.ResourceOptions(parent=self)
        server_ca = server_ca_pem(stack)
        self.certificates, self.tls_ca, tls = None, None, None
        if needs_certificate(stack):
            self.certificates = Certificates(f"{name}-tls", stack, args.given_tls, opts=child,
                                             names=kubernetes_certificate_names(stack))
            tls, self.tls_ca = self.certificates.material, self.certificates.ca_pem
        self.external = None
        if stack.postgres.external:
            self.external = prepare_external(f"{name}-external", stack, server_ca,
                                             args.external_admin_password, secrets, child)
        shape = objects(stack, plan, placeholder_secrets(stack, layout.superuser),
                        placeholder_material(stack, server_ca))  # fmt: skip
        real = pulumi.Output.secret(pulumi.Output.all(secrets, tls).apply(
            lambda v: objects(stack, plan, v[0], Material(v[1], server_ca))))  # fmt: skip

        self.resources = {}
        namespace: list[pulumi.Resource] = []
        for index, manifest in enumerate(shape):
            resource = self._create(name, manifest, index, real,
                                    [*namespace, *self._waits_for(manifest)])  # fmt: skip
            self.resources[object_key(manifest)] = resource
            if manifest["kind"] == "Namespace":
                namespace = [resource]

        self.env_file = pulumi.Output.secret(
            secrets.apply(lambda s: render_env(stack, plan, s, layout)))  # fmt: skip
        env = self.env_file.apply(parse_env)
        self.direct_url = pulumi.Output.secret(env.apply(lambda e: e["DIRECT_URL"]))
        self.pooled_url = pulumi.Output.secret(env.apply(lambda e: e["DATABASE_URL"]))
        self.register_outputs({"namespace": stack.kubernetes.namespace, "env_file": self.env_file,
                               "direct_url": self.direct_url,
                               "pooled_url": self.pooled_url})  # fmt: skip

    def _waits_for(self, manifest: Manifest) -> list[pulumi.Resource]:
        """The migration Job needs Postgres (it also retries until it answers); with an
        external one, it and PgBouncer need the kit's roles there."""
        key = object_key(manifest)
        if self.external is not None and key in ("Job/migrate", "Deployment/pgbouncer"):
            return [self.external]
        if key == "Job/migrate":
            return [self.resources["StatefulSet/postgres"]]
        return []

    def _create(
        self, name: str, manifest: Manifest, index: int, real: pulumi.Output[list[Manifest]],
        depends: list[pulumi.Resource],
    ) -> pulumi.CustomResource:  # fmt: skip
        """One resource: plain inputs from ``manifest``; secret data and digests from ``real``."""
        cls = RESOURCE_CLASSES[(manifest["apiVersion"], manifest["kind"])]
        inputs: dict[str, Any] = {"metadata": manifest["metadata"]}
        if manifest["kind"] == "Secret":
            inputs["type"] = manifest["type"]
            inputs["string_data"] = pulumi.Output.secret(
                real.apply(lambda objs: objs[index]["stringData"]))  # fmt: skip
        if "data" in manifest:
            inputs["data"] = manifest["data"]
        if "spec" in manifest:
            inputs["spec"] = _with_real_digest(manifest["spec"], index, real)
        return cls(resource_name(name, manifest), **inputs,
                   opts=pulumi.ResourceOptions(parent=self, depends_on=depends))  # fmt: skip


def _with_real_digest(
    spec: dict[str, Any], index: int, real: pulumi.Output[list[Manifest]]
) -> dict[str, Any]:
    """``spec`` whose pod template's file digest comes from the real files.

    The digest is a truncated SHA-256 of configs and SCRAM verifiers (never of a password), so
    it is a plain input: a changed file shows in the diff and rolls the pods.
    """
    annotations = spec.get("template", {}).get("metadata", {}).get("annotations", {})
    if FILES_ANNOTATION not in annotations:
        return spec
    digest = pulumi.Output.unsecret(real.apply(
        lambda objs: objs[index]["spec"]["template"]["metadata"]["annotations"][FILES_ANNOTATION]))
    template = spec["template"]
    metadata = {**template["metadata"], "annotations": {**annotations, FILES_ANNOTATION: digest}}
    return {**spec, "template": {**template, "metadata": metadata}}
