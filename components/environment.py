"""Environment: one stack on a Docker host (network, credentials, Postgres, PgBouncer, apps)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components.apps import ServerlessApp, ServerlessAppArgs
from components.certificates import Certificates
from components.common import (
    DEFAULT_BASE_IMAGE,
    build_image,
    docker_name,
    image_ref,
    label_args,
)
from components.credentials import stack_credentials
from components.exporters import Exporters, ExportersArgs
from components.pgbouncer import PgBouncer, PgBouncerArgs
from components.postgres import Postgres, PostgresArgs
from components.stack_config import TargetArgs
from poolkit import node_apps
from poolkit.envfile import parse_env
from poolkit.external import server_ca_pem
from poolkit.layouts import DOCKER_PGBOUNCER_SERIES, docker_layout, network_layout
from poolkit.pulumi_external import ExternalDatabase, prepare_external
from poolkit.render import render_env

APP_IMAGES = {
    "python": ("app", "apps", "images/app/Dockerfile"),
    "node": ("app-node", str(node_apps.IMAGE_CONTEXT), str(node_apps.IMAGE_DOCKERFILE)),
}
"""Per app runtime: image name suffix, build context and Dockerfile. The Python context is the
apps' own folder, whose ``.dockerignore`` lets only its modules in; the node context is what
``poolkit.node_apps`` stages from the host's build. An edit to tests, docs or stack files
changes no image."""


@dataclass
class EnvironmentArgs(TargetArgs):
    """The stack's args (``TargetArgs``) and what only the Docker target takes."""

    base_image: str = DEFAULT_BASE_IMAGE
    """``BASE_IMAGE`` build arg of every image."""
    backup_s3_key_secret: pulumi.Input[str] | None = None
    """Secret key of the S3 backup repository (``poolkit:backup_s3_key_secret``)."""
    backup_passphrase: pulumi.Input[str] | None = None
    """The repository's cipher passphrase (``poolkit:backup_passphrase``); generated when None."""


class Environment(pulumi.ComponentResource):
    """Everything a stack runs, wired in order: Postgres (healthy), then PgBouncer, then apps.

    With ``postgres.external`` there is no Postgres container, image or volume: ``external``
    gives the server the kit's roles, database and grants (``external-init.sql`` through the
    admin role), and PgBouncer waits for it.

    Secret outputs: ``env_file`` (the host's ``.env`` text), ``direct_url``, ``pooled_url``
    (``DATABASE_URL``, libpq-clean) and ``pooled_libpq_url`` (``POOLED_DATABASE_URL``, the same).
    """

    network: docker.Network
    postgres: Postgres | None
    """None for an external Postgres."""
    external: ExternalDatabase | None
    pgbouncer: PgBouncer
    exporters: Exporters | None
    """With ``poolkit:monitoring.exporters``: the exporter containers."""
    apps: list[ServerlessApp]
    env_file: pulumi.Output[str]
    network_env_file: pulumi.Output[str]
    direct_url: pulumi.Output[str]
    pooled_url: pulumi.Output[str]
    pooled_libpq_url: pulumi.Output[str]
    versions: dict[str, int | str]
    """What the images install and run: the Postgres major and the PgBouncer series."""
    certificates: Certificates | None
    tls_ca: pulumi.Output[str] | None
    """PEM of the CA the ``.env`` URLs verify with (not a secret), or None without TLS."""

    def __init__(
        self, name: str, args: EnvironmentArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("poolkit:index:Environment", name, None, opts)
        stack, plan = args.stack, args.plan
        layout = docker_layout(stack)
        child = pulumi.ResourceOptions(parent=self)
        self.versions = {"postgres": stack.postgres.version, "pgbouncer": DOCKER_PGBOUNCER_SERIES}

        # Not `internal`: Docker cannot publish ports of containers on an internal network.
        # Its isolation is that only this stack's containers join it.
        self.network = docker.Network(
            f"{name}-network",
            name=docker_name(stack.stack, "net"),
            labels=label_args(docker.NetworkLabelArgs, stack.stack, "network"),
            # A fixed name: a replacement must remove the old network first.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )  # fmt: skip
        secrets = stack_credentials(self, name, stack, layout.superuser, args.app_password,
                                    args.migrator_password,
                                    backup_s3_key_secret=args.backup_s3_key_secret,
                                    backup_passphrase=args.backup_passphrase)  # fmt: skip
        self.certificates = None
        self.tls_ca = None
        tls = None
        if stack.uses_tls:
            self.certificates = Certificates(f"{name}-tls", stack, args.given_tls, opts=child)
            tls = self.certificates.material
            self.tls_ca = self.certificates.ca_pem

        self.postgres, self.external = None, None
        server_ca = server_ca_pem(stack)
        if stack.postgres.external:
            self.external = prepare_external(f"{name}-external", stack, server_ca,
                                             args.external_admin_password, secrets, child)
            ready: pulumi.Resource = self.external
        else:
            self.postgres = Postgres(f"{name}-postgres", PostgresArgs(
                stack=stack, plan=plan, layout=layout, secrets=secrets, network=self.network.name,
                base_image=args.base_image, tls=tls,
            ), opts=child)  # fmt: skip
            ready = self.postgres.container
        sockets = None
        if stack.monitoring.exporters:
            # PgBouncer's socket dirs, shared with the pgbouncer_exporters (one per process).
            sockets = docker.Volume(
                f"{name}-pgbouncer-sockets",
                name=docker_name(stack.stack, "pgbouncer-sockets"),
                labels=label_args(docker.VolumeLabelArgs, stack.stack, "pgbouncer-sockets"),
                opts=child,
            )  # fmt: skip
        self.pgbouncer = PgBouncer(f"{name}-pgbouncer", PgBouncerArgs(
            stack=stack, plan=plan, layout=layout, secrets=secrets, network=self.network.name,
            depends_on=[ready], base_image=args.base_image, tls=tls, server_ca=server_ca,
            socket_volume=sockets.name if sockets else None,
        ), opts=child)  # fmt: skip
        self.exporters = None
        if sockets is not None:
            self.exporters = Exporters(f"{name}-exporters", ExportersArgs(
                stack=stack, plan=plan, layout=layout, secrets=secrets, network=self.network.name,
                base_image=args.base_image, socket_volume=sockets.name,
                server_ca=server_ca, depends_on=[ready, self.pgbouncer.container],
            ), opts=child)  # fmt: skip

        images = {}
        for runtime in sorted({app.runtime for app in plan.apps}):
            suffix, context, dockerfile = APP_IMAGES[runtime]
            images[runtime] = image_ref(build_image(
                f"{name}-{suffix}-image", self, stack.stack, suffix, args.base_image,
                context=context, dockerfile=dockerfile))  # fmt: skip
        self.apps = [
            ServerlessApp(f"{name}-{app.name}", ServerlessAppArgs(
                stack=stack, plan=plan, app=app, secrets=secrets, image=images[app.runtime],
                network=self.network.name, depends_on=[self.pgbouncer.container], tls=tls,
                server_ca=server_ca,
            ), opts=child)
            for app in plan.apps
        ]  # fmt: skip

        self.env_file = pulumi.Output.secret(
            secrets.apply(lambda s: render_env(stack, plan, s, layout)))  # fmt: skip
        # The same .env for a container on the stack's network (names and internal ports):
        # where an unpublished Postgres is reachable, e.g. for the smoke run of `poolkit up`.
        self.network_env_file = pulumi.Output.secret(
            secrets.apply(lambda s: render_env(stack, plan, s, network_layout(stack))))
        env = self.env_file.apply(parse_env)
        self.direct_url = pulumi.Output.secret(env.apply(lambda e: e["DIRECT_URL"]))
        self.pooled_url = pulumi.Output.secret(env.apply(lambda e: e["DATABASE_URL"]))
        self.pooled_libpq_url = pulumi.Output.secret(env.apply(lambda e: e["POOLED_DATABASE_URL"]))

        self.register_outputs({
            "network": self.network.name,
            "env_file": self.env_file,
            "network_env_file": self.network_env_file,
            "direct_url": self.direct_url,
            "pooled_url": self.pooled_url,
            "pooled_libpq_url": self.pooled_libpq_url,
            "tls_ca": self.tls_ca,
        })  # fmt: skip
