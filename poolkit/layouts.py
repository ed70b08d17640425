"""Where each target puts things: the Layouts of the Docker images (seen from the host and
from the containers' network) and of the local runner.

These are facts of a target (paths, addresses, published ports), not sizes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from poolkit.config import StackConfig
from poolkit.render import Layout

POSTGRES_ALIAS = "postgres"
PGBOUNCER_ALIAS = "pgbouncer"
"""Network aliases of the Postgres and PgBouncer containers on the stack's private network."""


def docker_layout(stack: StackConfig) -> Layout:
    """The images' paths; URLs name the ports published on 127.0.0.1.

    When the stack does not publish Postgres, DIRECT_URL names the container on the private
    network (usable from containers attached to it, not from the host).
    """
    published = stack.postgres.publish
    return Layout(
        name="docker",
        public_pgbouncer_port=stack.pgbouncer.port,
        public_postgres_host="127.0.0.1" if published else "postgres",
        public_postgres_port=stack.postgres.port if published else 5432,
    )


def network_layout(stack: StackConfig) -> Layout:
    """The Docker layout with URLs that name the containers on the private network.

    ``.env`` on the host points at the ports published on 127.0.0.1; a container reaches
    PgBouncer and Postgres by their network aliases on their internal ports instead.
    """
    layout = docker_layout(stack)
    return dataclasses.replace(
        layout,
        public_host=PGBOUNCER_ALIAS,
        public_pgbouncer_port=layout.pgbouncer_port,
        public_postgres_host=POSTGRES_ALIAS,
        public_postgres_port=layout.postgres_port,
    )


def local_layout(stack: StackConfig, state_dir: Path, superuser: str) -> Layout:
    """Everything under ``state_dir``, listening on 127.0.0.1 only."""
    state = state_dir.resolve()
    return Layout(
        name="local",
        superuser=superuser,
        listen_addresses="127.0.0.1",
        client_networks=("127.0.0.1/32",),
        data_directory=str(state / "data"),
        config_dir=str(state / "conf"),
        postgres_port=stack.postgres.port,
        postgres_socket_dir=str(state / "run"),
        postgres_host="127.0.0.1",
        pgbouncer_listen="127.0.0.1",
        pgbouncer_port=stack.pgbouncer.port,
        pgbouncer_dir=str(state / "conf"),
        pgbouncer_socket_dir=str(state / "run"),
        pgbouncer_pidfile=str(state / "run" / "pgbouncer.pid"),
        pgbouncer_logfile=str(state / "log" / "pgbouncer.log"),
        public_host="127.0.0.1",
        public_postgres_port=stack.postgres.port,
        public_pgbouncer_port=stack.pgbouncer.port,
    )
