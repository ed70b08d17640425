"""The Pulumi program on ``poolkit:target: kubernetes`` under the mock runtime.

``__main__.py`` runs with the shipped ``Pulumi.k8s.yaml``; every object it registers is compared
with what ``poolkit.manifests`` builds from the same stack and the credentials the mocks' random
values make, checked for secrets, and validated against the pinned Kubernetes schemas (strict).
"""

from __future__ import annotations

import kubernetes_validate
import pulumi
import pytest

from poolkit.config import load_stack
from poolkit.envfile import parse_env
from poolkit.layouts import kubernetes_layout
from poolkit.manifests import KUBERNETES_VERSION, object_key, objects
from poolkit.outputs import Outputs
from poolkit.render import render_env
from poolkit.secrets import CREDENTIALS
from poolkit.sizing import plan

from .harness import (
    KUBERNETES,
    PASSWORD,
    PROJECT,
    RANDOM_ID,
    Deployment,
    deploy,
    only_secrets_hold,
)
from .harness import stack_file_config as file_config
from .test_program import secrets_of

pytestmark = pytest.mark.pulumi

STACK = "k8s"


@pytest.fixture(scope="module")
def deployed() -> Deployment:
    return deploy(STACK, file_config(STACK))


def _model():
    stack = load_stack(PROJECT / f"Pulumi.{STACK}.yaml")
    return stack, plan(stack)


def _registered(deployment: Deployment) -> dict[str, dict]:
    """``Kind/name`` -> the object as the program sent it (secret markers removed)."""
    return {object_key(r.args): r.args for r in deployment.resources
            if r.type.startswith(KUBERNETES)}  # fmt: skip


def test_every_object_is_the_model_s_with_the_real_credentials(deployed: Deployment) -> None:
    stack, sized = _model()
    expected = objects(stack, sized, secrets_of(deployed, stack))
    registered = _registered(deployed)
    assert sorted(registered) == sorted(object_key(o) for o in expected)
    for obj in expected:
        assert registered[object_key(obj)] == obj, object_key(obj)


def test_only_kubernetes_and_random_resources_are_registered(deployed: Deployment) -> None:
    kinds = {r.type for r in deployed.resources if r.custom}
    assert {t for t in kinds if not t.startswith(KUBERNETES)} == {PASSWORD, RANDOM_ID}
    assert len(deployed.of_type(PASSWORD)) == len(deployed.of_type(RANDOM_ID)) == 5


def test_every_registered_object_passes_the_strict_schemas(deployed: Deployment) -> None:
    for key, obj in _registered(deployed).items():
        assert kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True), key


def test_secret_data_is_a_pulumi_secret_and_nothing_else_holds_one(deployed: Deployment) -> None:
    stack, _ = _model()
    credentials = secrets_of(deployed, stack)
    present = [c for c in (getattr(credentials, name) for name in CREDENTIALS)
               if c is not None]  # no poolkit_monitor role on this target
    only_secrets_hold(deployed, *(s for c in present for s in (c.password, c.verifier)))


def test_everything_waits_for_the_namespace_and_the_job_for_postgres(deployed: Deployment) -> None:
    resources = [r for r in deployed.resources if r.type.startswith(KUBERNETES)]
    [namespace] = [r for r in resources if r.type == "kubernetes:core/v1:Namespace"]
    postgres = next(r for r in resources if r.type == "kubernetes:apps/v1:StatefulSet")
    for resource in (r for r in resources if r is not namespace):
        assert namespace.urn in resource.dependencies, resource.urn
        assert resource.parent.endswith("::poolkit"), resource.urn
    job = next(r for r in resources if r.type == "kubernetes:batch/v1:Job")
    assert postgres.urn in job.dependencies


def test_outputs_are_the_in_cluster_env_and_urls_as_secrets(deployed: Deployment) -> None:
    stack, sized = _model()
    env = render_env(stack, sized, secrets_of(deployed, stack), kubernetes_layout(stack))
    assert deployed.outputs[Outputs.ENV_FILE] == env
    values = parse_env(env)
    assert deployed.outputs[Outputs.DIRECT_URL] == values["DIRECT_URL"]
    assert deployed.outputs[Outputs.POOLED_URL] == values["DATABASE_URL"]
    assert {Outputs.ENV_FILE, Outputs.DIRECT_URL, Outputs.POOLED_URL} <= deployed.secret_outputs
    assert "@pgbouncer.poolkit-k8s.svc:6432/app" in values["DATABASE_URL"]
    assert "pods of the stack's Kubernetes cluster" in env
    assert deployed.outputs[Outputs.NAMESPACE] == "poolkit-k8s"
    assert deployed.outputs[Outputs.OBJECTS] == [object_key(o) for o in objects(
        stack, sized, secrets_of(deployed, stack))]  # apply order; registration is concurrent
    assert deployed.outputs[Outputs.PLAN]["pgbouncer"]["replicas"] == 3


def test_a_stack_the_target_cannot_deploy_registers_nothing() -> None:
    config = {**file_config(STACK), "poolkit:pgbouncer": {"replicas": 3},
              "poolkit:kubernetes": {"pgbouncer_service": "LoadBalancer"}}  # fmt: skip
    with pytest.raises(pulumi.RunError) as error:
        deploy(STACK, config)
    assert "poolkit:kubernetes.pgbouncer_service" in str(error.value)
    assert deploy.last_monitor.registered == []  # type: ignore[attr-defined]
