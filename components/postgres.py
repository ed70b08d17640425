"""Postgres: the server container, its image and its data volume."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components.common import (
    POSTGRES_LIFECYCLE,
    ServerArgs,
    build_image,
    docker_name,
    healthcheck,
    image_ref,
    label_args,
    published_port,
    service_container,
    tls_uploads,
    upload,
)
from poolkit.config import read_ca_file
from poolkit.layouts import POSTGRES_ALIAS as NETWORK_ALIAS
from poolkit.layouts import postgres_limits
from poolkit.render import (
    BACKUP_SCHEDULE,
    TLS_CERT,
    TLS_KEY,
    render_backup_schedule,
    render_init_sql,
    render_pg_hba,
    render_pgbackrest_conf,
    render_pgpass,
    render_postgresql_conf,
)

CPU_SHARES_PER_CPU = 1024
"""Docker's weight of one CPU."""


@dataclass
class PostgresArgs(ServerArgs):
    wait_timeout: int = 180
    """Seconds ``pulumi up`` waits for the first healthy check (the first start runs initdb)."""


class Postgres(pulumi.ComponentResource):
    """PostgreSQL in a container: configs and init SQL uploaded, data on a named volume.

    The port is published (on 127.0.0.1 only) when the stack sets ``postgres.publish``; the
    apps and PgBouncer always reach it as ``postgres:5432`` on the private network.
    """

    image: docker.Image
    volume: docker.Volume
    backup_volume: docker.Volume | None
    """pgBackRest's repository (``poolkit:backup`` enabled with repo posix), else None."""
    container: docker.Container
    container_name: pulumi.Output[str]
    published_port: int | None
    """Host port on 127.0.0.1, or None when the port is not published."""

    def __init__(self, name: str, args: PostgresArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("poolkit:index:Postgres", name, None, opts)
        stack, layout = args.stack, args.layout

        self.image = build_image(f"{name}-image", self, stack.stack, "postgres", args.base_image,
                                 build_args={"PG_MAJOR": str(stack.postgres.version)})
        self.volume = docker.Volume(
            f"{name}-data",
            name=docker_name(stack.stack, "pgdata"),
            labels=label_args(docker.VolumeLabelArgs, stack.stack, "postgres"),
            # Fixed name. Replacing it (new name or labels) starts from an empty cluster:
            # the data lives in this volume and `pulumi destroy` removes it.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )  # fmt: skip

        # Files with no secret are plain text; init.sql carries SCRAM verifiers: a secret.
        init_sql = pulumi.Output.secret(args.secrets.apply(lambda s: render_init_sql(stack, s)))
        config_dir = layout.config_dir
        uploads = [
            upload(f"{config_dir}/postgresql.conf",
                    render_postgresql_conf(stack, args.plan, layout), "0644"),
            upload(f"{config_dir}/pg_hba.conf", render_pg_hba(stack, layout), "0644"),
            upload(f"{config_dir}/init.sql", init_sql, "0600"),
        ]  # fmt: skip
        if stack.postgres_tls and args.tls is not None:
            uploads += tls_uploads(args.tls, config_dir, TLS_CERT, TLS_KEY)
        volumes = [docker.ContainerVolumeArgs(volume_name=self.volume.name,
                                              container_path=layout.data_directory)]
        self.backup_volume = None
        if stack.backup.enabled:
            uploads += self._backup_uploads(args)
        if stack.backup.enabled and stack.backup.repo == "posix":
            # Backups outlive the stack: `pulumi destroy` (or a replacement) only drops the
            # volume from the state, and the next `pulumi up` of the stack gets the same volume
            # back (Docker's create of an existing name returns it), repository and all.
            self.backup_volume = docker.Volume(
                f"{name}-backups",
                name=docker_name(stack.stack, "backups"),
                labels=label_args(docker.VolumeLabelArgs, stack.stack, "backups"),
                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True,
                                            retain_on_delete=True),
            )  # fmt: skip
            volumes.append(docker.ContainerVolumeArgs(volume_name=self.backup_volume.name,
                                                      container_path=layout.backup_repo_path))
        self.published_port = stack.postgres.port if stack.postgres.publish else None
        ports = None
        if self.published_port is not None:
            ports = [published_port(layout.postgres_port, self.published_port,
                                    stack.postgres.publish_address)]
        limits = postgres_limits(stack, args.plan)

        self.container = service_container(
            f"{name}-container", self, stack.stack, "postgres",
            lifecycle=POSTGRES_LIFECYCLE, wait_timeout=args.wait_timeout,
            name=docker_name(stack.stack, "postgres"),
            image=image_ref(self.image),
            volumes=volumes,
            uploads=uploads,
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(
                name=args.network, aliases=[NETWORK_ALIAS])],
            ports=ports,
            # On the socket as the superuser, whom pg_hba.conf knows there: the check stops at
            # the password request, which Postgres does not log. Over 127.0.0.1 every check
            # would log a FATAL "no pg_hba.conf entry" (only the private network is allowed).
            healthcheck=healthcheck(["pg_isready", "-h", layout.postgres_socket_dir, "-p",
                                     str(layout.postgres_port), "-U", layout.superuser,
                                     "-d", "postgres"]),
            shm_size=limits.shm_mb,
            memory=limits.memory_mb,
            cpu_shares=CPU_SHARES_PER_CPU * limits.cpus,
        )  # fmt: skip
        self.container_name = self.container.name

        self.register_outputs({
            "container_name": self.container_name,
            "image": self.container.image,
            "volume": self.volume.name,
            "backup_volume": self.backup_volume.name if self.backup_volume else None,
            "published_port": self.published_port,
        })  # fmt: skip

    @staticmethod
    def _backup_uploads(args: PostgresArgs) -> list[docker.ContainerUploadArgs]:
        """pgbackrest.conf (the repository's passphrase), the superuser's password file, the
        schedule the image's poolkit-backup-scheduler follows (the entrypoint starts it) and the
        S3 server's CA when ``backup.s3_ca_file`` names one."""
        stack, layout = args.stack, args.layout
        conf = args.secrets.apply(lambda s: render_pgbackrest_conf(stack, s, layout))
        uploads = [upload(layout.pgbackrest_conf, pulumi.Output.secret(conf), "0600"),
                   upload(layout.pgpass, pulumi.Output.secret(args.secrets.apply(render_pgpass)),
                          "0600"),
                   upload(f"{layout.config_dir}/{BACKUP_SCHEDULE}",
                          render_backup_schedule(stack, layout), "0644")]  # fmt: skip
        s3_ca = read_ca_file(stack.backup.s3_ca_file)  # public: read on this machine
        if s3_ca:
            uploads.append(upload(layout.s3_ca_file, s3_ca, "0644"))
        return uploads
