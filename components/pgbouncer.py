"""PgBouncer: the pooler container in front of Postgres, and its image."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_docker as docker

from components.common import (
    ServerArgs,
    build_image,
    docker_name,
    healthcheck,
    image_ref,
    pgbouncer_lifecycle,
    published_port,
    service_container,
    stack_networks,
    tls_uploads,
    upload,
)
from poolkit.layouts import PGBOUNCER_ALIAS as NETWORK_ALIAS
from poolkit.peering import pooler_sysctls
from poolkit.render import (
    SERVER_CA,
    TLS_CA,
    TLS_CERT,
    TLS_KEY,
    pgbouncer_peers,
    render_pgbouncer_ini,
    render_userlist,
    server_tls_sslmode,
)
from poolkit.secrets import STATS_USER

CONSOLE_DATABASE = "pgbouncer"
"""PgBouncer's admin console, where the stats user may log in."""


@dataclass
class PgBouncerArgs(ServerArgs):
    depends_on: list[pulumi.Resource] = field(default_factory=list)
    """Created only after these (the Postgres container, which ``wait``s until healthy, or the
    external Postgres's roles)."""
    server_ca: str | None = None
    """PEM of an external Postgres's CA (``postgres.external.ca_file``): server_tls_ca_file."""
    wait_timeout: int = 60
    """Seconds ``pulumi up`` waits for the first healthy check."""
    socket_volume: pulumi.Input[str] | None = None
    """A volume for the processes' Unix socket dirs (``layout.pgbouncer_socket_dir``), shared
    with the pgbouncer_exporter containers; None keeps them inside the container."""


class PgBouncer(pulumi.ComponentResource):
    """PgBouncer in transaction mode, published on <pgbouncer.publish_address>:<port>
    (127.0.0.1 unless the stack says; beyond it only with client TLS)."""

    image: docker.Image
    container: docker.Container
    container_name: pulumi.Output[str]
    published_port: int

    def __init__(self, name: str, args: PgBouncerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("poolkit:index:PgBouncer", name, None, opts)
        stack, layout = args.stack, args.layout

        self.image = build_image(f"{name}-image", self, stack.stack, "pgbouncer", args.base_image,
                                 build_args={"PGBOUNCER_SERIES": stack.pgbouncer.version})
        userlist = pulumi.Output.secret(args.secrets.apply(render_userlist))
        # One file per PgBouncer process; the image's poolkit-pgbouncers runs each of them.
        uploads = [
            *(upload(f"{layout.pgbouncer_dir}/{peer.ini}",
                     render_pgbouncer_ini(stack, args.plan, layout, peer.peer_id), "0640")
              for peer in pgbouncer_peers(args.plan, layout)),
            upload(f"{layout.pgbouncer_dir}/userlist.txt", userlist, "0600"),
        ]  # fmt: skip
        bouncer = stack.pgbouncer
        if args.tls is not None and (bouncer.client_tls or bouncer.server_tls):
            verify_server = bouncer.server_tls and server_tls_sslmode(stack) != "require"
            uploads += tls_uploads(args.tls, layout.pgbouncer_dir,
                                   TLS_CERT if bouncer.client_tls else None,
                                   TLS_KEY if bouncer.client_tls else None,
                                   TLS_CA if verify_server else None)  # fmt: skip
        if args.server_ca:  # public, not a secret
            uploads.append(upload(f"{layout.pgbouncer_dir}/{SERVER_CA}", args.server_ca, "0644"))
        self.published_port = stack.pgbouncer.port
        port = published_port(layout.pgbouncer_port, self.published_port,
                              bouncer.publish_address)

        self.container = service_container(
            f"{name}-container", self, stack.stack, "pgbouncer",
            lifecycle=pgbouncer_lifecycle(stack.pgbouncer.query_wait_timeout),
            wait_timeout=args.wait_timeout, depends_on=args.depends_on,
            name=docker_name(stack.stack, "pgbouncer"),
            image=image_ref(self.image),
            uploads=uploads,
            networks_advanced=stack_networks(stack, args.network, [NETWORK_ALIAS]),
            ports=[port],
            volumes=[docker.ContainerVolumeArgs(
                volume_name=args.socket_volume, container_path=layout.pgbouncer_socket_dir,
            )] if args.socket_volume is not None else [],
            # A process restarted on its own (`kill -TERM`) hands its queued connections to
            # its peers instead of resetting them; the container's own network namespace.
            sysctls=pooler_sysctls(args.plan.pool.split.processes) or None,
            # As the stats user on the console: a role PgBouncer knows, so each check is one
            # "login attempt" line in its log, not a "no such user" warning every 2 s.
            healthcheck=healthcheck(["pg_isready", "-h", "127.0.0.1", "-p",
                                     str(layout.pgbouncer_port), "-U", STATS_USER,
                                     "-d", CONSOLE_DATABASE]),
        )  # fmt: skip
        self.container_name = self.container.name

        self.register_outputs({
            "container_name": self.container_name,
            "image": self.container.image,
            "published_port": self.published_port,
        })  # fmt: skip
