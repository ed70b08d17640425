"""Where each target puts things: the Layout of the Docker images and of the local runner.

These are facts of a target (paths, addresses, published ports), not sizes.
"""

from __future__ import annotations

from pathlib import Path

from poolkit.config import StackConfig
from poolkit.render import Layout


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
