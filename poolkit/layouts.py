"""Where each target puts things: the Layouts of the Docker images (seen from the host and
from the containers' network) and of the local runner.

These are facts of a target (paths, addresses, published ports), not sizes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from poolkit.config import NAMESPACE, Problem, StackConfig
from poolkit.render import Layout
from poolkit.sizing import Plan
from poolkit.units import MIB, parse_size

DOCKER_POSTGRES_VERSIONS = (17,)
"""Majors the Postgres image can build: it installs ``postgresql-<major>`` from Debian trixie,
which ships 17 only (15 and 16 exist on the local target where the host has them)."""
DOCKER_PGBOUNCER_SERIES = "1.24"
"""The PgBouncer series Debian trixie ships; the image installs exactly that (``=1.24*``)."""

STACK_LABEL = "poolkit.stack"
"""Docker label naming the stack on each of its containers, networks and volumes."""
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

DOCKER_DEFAULT_SHM_MB = 64
"""Docker's /dev/shm when nothing is set: too small for parallel hash joins."""


@dataclasses.dataclass(frozen=True)
class ContainerLimits:
    """Resources of the Postgres container: what the sizing assumed, enforced by Docker."""

    memory_mb: int
    """Hard memory limit: ``poolkit:postgres.memory``."""
    cpus: int
    """CPU limit: ``poolkit:postgres.cpus``."""
    shm_mb: int
    """/dev/shm, where Postgres puts dynamic shared memory (parallel hash joins and sorts)."""


def postgres_limits(stack: StackConfig, plan: Plan) -> ContainerLimits:
    """The container gets the memory and CPUs its settings were sized for, and /dev/shm as large
    as the plan's shared_buffers (never below Docker's 64MB).

    Parallel workers share their hash tables through /dev/shm: with the plan's work_mem and
    workers per gather they outgrow 64MB ("could not resize shared memory segment"). Pages
    there count against the memory limit only when used.
    """
    settings = {setting.name: setting.value for setting in plan.postgres}
    shared_buffers_mb = parse_size(settings["shared_buffers"]) // MIB
    return ContainerLimits(
        memory_mb=stack.postgres.memory_bytes // MIB,
        cpus=stack.postgres.cpus,
        shm_mb=max(DOCKER_DEFAULT_SHM_MB, shared_buffers_mb),
    )


def docker_problems(stack: StackConfig) -> list[Problem]:
    """What the Docker images cannot run for this stack, each with its fix (empty: all fine).

    Checked before any resource exists, so ``pulumi up`` fails early instead of in a build.
    """
    problems = []
    if stack.postgres.version not in DOCKER_POSTGRES_VERSIONS:
        problems.append(Problem(
            f"{NAMESPACE}:postgres.version", stack.postgres.version,
            "cannot be built by the Docker image (Debian trixie ships PostgreSQL 17 only)",
            "use 17 (pg_upgrade an existing 15/16 cluster), or the local target for 15/16",
        ))  # fmt: skip
    if stack.pgbouncer.version != DOCKER_PGBOUNCER_SERIES:
        problems.append(Problem(
            f"{NAMESPACE}:pgbouncer.version", stack.pgbouncer.version,
            f"is not what the Docker image installs (PgBouncer {DOCKER_PGBOUNCER_SERIES} from "
            "Debian trixie)",
            f'use "{DOCKER_PGBOUNCER_SERIES}", or leave the key out',
        ))  # fmt: skip
    if stack.pgbouncer.client_tls:
        problems.append(Problem(
            f"{NAMESPACE}:pgbouncer.client_tls", True, "is not supported by the Docker target yet",
            "remove it (or set false) for Pulumi stacks; the local target supports it",
        ))  # fmt: skip
    return problems
