"""ServerlessApp: sample app containers that reach Postgres through PgBouncer."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_docker as docker

from components.common import (
    APP_LIFECYCLE,
    docker_name,
    healthcheck,
    published_port,
    service_container,
    stack_networks,
    tls_uploads,
    upload,
)
from poolkit.config import StackConfig
from poolkit.envfile import parse_env
from poolkit.layouts import APP_CA_DIR, network_layout
from poolkit.render import APP_ENV as POOLED_ENV
from poolkit.render import SERVER_CA, TLS_CA, render_env
from poolkit.secrets import Secrets
from poolkit.sizing import AppPlan, Plan
from poolkit.tls import ServerTls

APP_PORT = 8080
"""Port both app images listen on (images/app and images/app-node)."""
MIGRATOR_ENV = ("DIRECT_URL",)
"""Variables only the first replica gets: it runs the schema migration (APP_MIGRATE=1)."""
HEALTH_URL = f"http://127.0.0.1:{APP_PORT}/healthz"
HEALTHCHECKS = {
    "python": ["python3", "-c",
               f"import urllib.request; urllib.request.urlopen('{HEALTH_URL}', timeout=4)"],
    "node": ["node", "-e",
             f"fetch('{HEALTH_URL}', {{signal: AbortSignal.timeout(4000)}})"
             ".then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"],
}  # fmt: skip
"""GET /healthz does a round trip through PgBouncer; exit 1 unless 2xx. Each image has only its
own interpreter (no python3 in the node image)."""


def needs_ca(stack: StackConfig) -> bool:
    """Whether the apps' URLs verify a server over TLS with a CA file."""
    return (stack.pgbouncer.client_tls or stack.postgres_exposed) and stack.tls.has_ca


def replica_env(
    stack: StackConfig, plan: Plan, app: AppPlan, secrets: Secrets, replica: int
) -> list[str]:
    """``KEY=value`` items of one replica, taken from the same renderer as ``.env``."""
    values = parse_env(render_env(stack, plan, secrets, network_layout(stack), app))
    keys = POOLED_ENV[app.runtime] + (MIGRATOR_ENV if replica == 0 else ())
    env = {"APP_STYLE": app.style, **{key: values[key] for key in keys}}
    if replica == 0:
        env["APP_MIGRATE"] = "1"
    return [f"{key}={value}" for key, value in sorted(env.items())]


@dataclass
class ServerlessAppArgs:
    stack: StackConfig
    """The validated stack (``poolkit.config.parse_stack``)."""
    plan: Plan
    """Its sizing plan; the app's ``connection_limit`` comes from ``app``."""
    app: AppPlan
    """The planned app: style, replicas, first host port, connection_limit."""
    secrets: pulumi.Output[Secrets]
    """Credentials: the app role's password goes into the pooled URL, the migrator's into
    DIRECT_URL of the first replica."""
    image: pulumi.Input[str]
    """Image reference of the app's runtime: images/app or images/app-node (digest or id)."""
    network: pulumi.Input[str]
    """Name of the private network PgBouncer and Postgres are on."""
    depends_on: list[pulumi.Resource] = field(default_factory=list)
    """Created after these (the PgBouncer container, healthy)."""
    wait_timeout: int = 60
    """Seconds ``pulumi up`` waits for each replica's first healthy check."""
    tls: pulumi.Output[ServerTls] | None = None
    """The stack's TLS material: the apps get its CA file when their URLs verify."""
    server_ca: str | None = None
    """PEM of an external Postgres's CA: DIRECT_URL (the migrating replica) verifies with it."""


class ServerlessApp(pulumi.ComponentResource):
    """``replicas`` containers of one sample app; replica i on 127.0.0.1:<port + i>."""

    app_name: str
    containers: list[docker.Container]
    container_names: list[pulumi.Output[str]]
    published_ports: list[int]

    def __init__(
        self, name: str, args: ServerlessAppArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("poolkit:index:ServerlessApp", name, None, opts)
        stack, plan, app = args.stack, args.plan, args.app
        self.app_name = app.name
        self.published_ports = [app.port + replica for replica in range(app.replicas)]
        files = (tls_uploads(args.tls, APP_CA_DIR, None, None, TLS_CA)
                 if args.tls is not None and needs_ca(stack) else [])
        if args.server_ca:
            files.append(upload(f"{APP_CA_DIR}/{SERVER_CA}", args.server_ca, "0644"))
        self.containers = []
        for replica, port in enumerate(self.published_ports):
            envs = pulumi.Output.secret(args.secrets.apply(
                lambda s, r=replica: replica_env(stack, plan, app, s, r)))  # fmt: skip
            self.containers.append(service_container(
                f"{name}-{replica}", self, stack.stack, f"app-{app.name}",
                lifecycle=APP_LIFECYCLE, wait_timeout=args.wait_timeout,
                depends_on=args.depends_on,
                name=docker_name(stack.stack, app.name, str(replica)),
                image=args.image,
                envs=envs,
                uploads=files or None,
                networks_advanced=stack_networks(stack, args.network, [app.name]),
                ports=[published_port(APP_PORT, port)],
                healthcheck=healthcheck(HEALTHCHECKS[app.runtime]),
            ))  # fmt: skip
        self.container_names = [container.name for container in self.containers]

        self.register_outputs({
            "container_names": self.container_names,
            "published_ports": self.published_ports,
        })  # fmt: skip
