"""Exporters: a pgbouncer_exporter per PgBouncer process and a postgres_exporter, in containers.

Each is a container of the exporters image on the stack's private network, its /metrics
published on 127.0.0.1 only at the port of ``poolkit.metrics.exporter_ports``. Its login (the
read-only console user ``pgbouncer_stats`` or ``poolkit_monitor``) arrives as a 0600 file,
rendered by ``poolkit.metrics.render_env`` and uploaded before start; the image's
``poolkit-exporter`` puts it into the environment, so no password is in a command line or in
``docker inspect``. A pgbouncer_exporter reads its PgBouncer process through that process's
Unix socket, on the socket volume the pgbouncer container shares (read-only here): processes
sharing one TCP port (so_reuseport) are reached one by one, never by chance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_docker as docker

from components.common import (
    EXPORTER_LIFECYCLE,
    ServerArgs,
    build_image,
    docker_name,
    healthcheck,
    image_ref,
    published_port,
    service_container,
    stack_networks,
    upload,
)
from poolkit import metrics
from poolkit.render import SERVER_CA
from poolkit.secrets import Secrets

ENV_DIR = "/etc/poolkit-exporter"
"""Where each container finds its 0600 login file (the image makes the folder)."""
PROGRAMS = {
    metrics.PGBOUNCER_EXPORTER: "prometheus-pgbouncer-exporter",
    metrics.POSTGRES_EXPORTER: "prometheus-postgres-exporter",
}
"""Exporter -> its executable in the image (Debian's package names)."""


@dataclass
class ExportersArgs(ServerArgs):
    socket_volume: pulumi.Input[str] = ""
    """The volume holding PgBouncer's socket dirs (mounted at ``layout.pgbouncer_socket_dir``)."""
    depends_on: list[pulumi.Resource] = field(default_factory=list)
    """Created after these (PgBouncer and Postgres, healthy): an exporter logs in at start."""
    server_ca: str | None = None
    """PEM of an external Postgres's CA: postgres_exporter checks the server with it."""
    wait_timeout: int = 60
    """Seconds ``pulumi up`` waits for each exporter to listen."""


def command(spec: metrics.ExporterSpec) -> list[str]:
    """The container's command (the image's entrypoint is ``poolkit-exporter``): no secret."""
    return [f"{ENV_DIR}/{spec.name}.env", PROGRAMS[spec.program],
            f"--web.listen-address={spec.listen}:{spec.port}"]  # fmt: skip


class Exporters(pulumi.ComponentResource):
    """The stack's exporters, each its own container, /metrics on 127.0.0.1:<port>."""

    image: docker.Image
    containers: dict[str, docker.Container]
    """Exporter name (``pgbouncer-exporter[-N]``, ``postgres-exporter``) -> its container."""
    ports: dict[str, int]
    """Exporter name -> host port on 127.0.0.1 (the same inside the container)."""

    def __init__(self, name: str, args: ExportersArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:  # fmt: skip
        super().__init__("poolkit:index:Exporters", name, None, opts)
        stack, plan, layout = args.stack, args.plan, args.layout
        self.image = build_image(f"{name}-image", self, stack.stack, "exporters", args.base_image)
        self.ports = metrics.exporter_ports(stack, plan)

        def spec_of(secrets: Secrets, wanted: str) -> metrics.ExporterSpec:
            # Listening on every address of the container: Docker publishes that port on
            # 127.0.0.1 of the host only, and the private network is the stack's alone.
            every = metrics.exporters(stack, plan, layout, secrets, listen="",
                                      server_ca_file=f"{ENV_DIR}/{SERVER_CA}")  # fmt: skip
            return next(spec for spec in every if spec.name == wanted)

        self.containers = {}
        for exporter, port in self.ports.items():
            # Names, ports and programs are known before the secrets: no resource in an apply.
            placeholder = metrics.ExporterSpec(exporter, metrics.program_of(exporter), port, {}, "")
            env_file = pulumi.Output.secret(args.secrets.apply(
                lambda s, e=exporter: metrics.render_env(spec_of(s, e))))  # fmt: skip
            uploads = [upload(f"{ENV_DIR}/{exporter}.env", env_file, "0600")]
            if placeholder.program == metrics.PGBOUNCER_EXPORTER:
                volumes = [docker.ContainerVolumeArgs(
                    volume_name=args.socket_volume, container_path=layout.pgbouncer_socket_dir,
                    read_only=True)]  # fmt: skip
                networks = [docker.ContainerNetworksAdvancedArgs(name=args.network)]
            else:  # Postgres: the stack's, or an external one (its network, its CA)
                volumes = []
                networks = stack_networks(stack, args.network, [])
                if args.server_ca:  # public, not a secret
                    uploads.append(upload(f"{ENV_DIR}/{SERVER_CA}", args.server_ca, "0644"))
            self.containers[exporter] = service_container(
                f"{name}-{exporter}", self, stack.stack, "exporter",
                lifecycle=EXPORTER_LIFECYCLE, wait_timeout=args.wait_timeout,
                depends_on=args.depends_on,
                name=docker_name(stack.stack, exporter),
                image=image_ref(self.image),
                command=command(placeholder),
                uploads=uploads,
                networks_advanced=networks,
                ports=[published_port(port, port)],
                volumes=volumes,
                # It listens only once its first login worked (pgbouncer_exporter exits if not).
                healthcheck=healthcheck(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"]),
            )  # fmt: skip

        self.register_outputs({
            "image": self.image.image_name,
            "containers": {e: c.name for e, c in self.containers.items()},
            "ports": self.ports,
        })  # fmt: skip
