"""poolkit's Pulumi program: stack config -> validated model and plan -> a target -> outputs.

It computes nothing itself: ``components.stack_config`` validates and sizes the stack with the
core model (before any resource exists, so an invalid stack fails with nothing registered), and
the components in ``components/`` turn the rendered files into resources of the stack's target
(``poolkit:target``): pulumi_docker (``docker``, the default) or pulumi_kubernetes.
"""

from __future__ import annotations

import pulumi

from components import Environment, EnvironmentArgs
from components.kubernetes import KubernetesEnvironment, KubernetesEnvironmentArgs
from components.stack_config import check_external, load_stack
from poolkit.config import NAMESPACE, PASSPHRASE_KEY, S3_SECRET_KEY, StackConfig
from poolkit.layouts import DOCKER_PGBOUNCER_SERIES, docker_layout
from poolkit.outputs import Outputs
from poolkit.sizing import Plan


def docker_target(stack: StackConfig, plan: Plan, config: pulumi.Config) -> None:
    external = stack.postgres.external
    environment = Environment(NAMESPACE, EnvironmentArgs.from_config(
        stack, plan, config,
        backup_s3_key_secret=config.get_secret(S3_SECRET_KEY),
        backup_passphrase=config.get_secret(PASSPHRASE_KEY),
    ))  # fmt: skip
    pulumi.export(Outputs.DIRECT_URL, environment.direct_url)
    pulumi.export(Outputs.POOLED_URL, environment.pooled_url)
    pulumi.export(Outputs.POOLED_LIBPQ_URL, environment.pooled_libpq_url)
    pulumi.export(Outputs.ENV_FILE, environment.env_file)
    pulumi.export(Outputs.NETWORK_ENV_FILE, environment.network_env_file)
    postgres = environment.postgres
    pulumi.export(Outputs.POSTGRES_PORT, postgres.published_port if postgres else None)
    pulumi.export(Outputs.EXTERNAL_POSTGRES, f"{external.host}:{external.port}" if external
                  else None)  # fmt: skip
    pulumi.export(Outputs.PGBOUNCER_PORT, environment.pgbouncer.published_port)
    pulumi.export(Outputs.APP_PORTS,
                  {app.app_name: app.published_ports for app in environment.apps})
    pulumi.export(Outputs.VERSIONS, environment.versions)
    pulumi.export(Outputs.PLAN, plan.as_dict())
    pulumi.export(Outputs.CONTAINERS, {
        "postgres": postgres.container_name if postgres else None,
        "pgbouncer": environment.pgbouncer.container_name,
        "apps": {app.app_name: app.container_names for app in environment.apps},
        "exporters": ({n: c.name for n, c in environment.exporters.containers.items()}
                      if environment.exporters else {}),
    })  # fmt: skip
    pulumi.export(Outputs.EXPORTER_PORTS,
                  environment.exporters.ports if environment.exporters else {})
    pulumi.export(Outputs.NETWORK, environment.network.name)
    pulumi.export(Outputs.TLS_CA, environment.tls_ca)
    pulumi.export(Outputs.TLS_CA_FILE,
                  docker_layout(stack).tls_ca_file if environment.tls_ca else None)


def kubernetes_target(stack: StackConfig, plan: Plan, config: pulumi.Config) -> None:
    environment = KubernetesEnvironment(NAMESPACE,
                                        KubernetesEnvironmentArgs.from_config(stack, plan, config))
    pulumi.export(Outputs.DIRECT_URL, environment.direct_url)
    pulumi.export(Outputs.POOLED_URL, environment.pooled_url)
    pulumi.export(Outputs.ENV_FILE, environment.env_file)
    pulumi.export(Outputs.NAMESPACE, stack.kubernetes.namespace)
    pulumi.export(Outputs.OBJECTS, list(environment.resources))
    pulumi.export(Outputs.TLS_CA, environment.tls_ca)
    pulumi.export(Outputs.VERSIONS, {"postgres": stack.postgres.version,
                                     "pgbouncer": DOCKER_PGBOUNCER_SERIES})  # fmt: skip
    pulumi.export(Outputs.PLAN, plan.as_dict())


config = pulumi.Config(NAMESPACE)
stack, plan = load_stack(config)
if stack.postgres.external:  # connects to the server: before any resource exists
    check_external(stack, plan, config)
(kubernetes_target if stack.target == "kubernetes" else docker_target)(stack, plan, config)
