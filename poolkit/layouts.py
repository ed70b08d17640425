"""Where each target puts things: the Layouts of the Docker images (seen from the host and
from the containers' network) and of the local runner.

These are facts of a target (paths, addresses, published ports), not sizes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from poolkit import tls
from poolkit.config import NAMESPACE, WILDCARD_ADDRESSES, Problem, StackConfig
from poolkit.render import SERVER_CA, TLS_CA, Layout, server_tls_sslmode
from poolkit.sizing import Plan
from poolkit.units import MIB, parse_size

DOCKER_POSTGRES_VERSIONS = (17,)
"""Majors the Postgres image can build: it installs ``postgresql-<major>`` from Debian trixie,
which ships 17 only (15 and 16 exist on the local target where the host has them)."""
DOCKER_PGBOUNCER_SERIES = "1.24"
"""The PgBouncer series Debian trixie ships; the image installs exactly that (``=1.24*``)."""

STACK_LABEL = "poolkit.stack"
"""Docker label naming the stack on each of its containers, networks and volumes."""
COMPONENT_LABEL = "poolkit.component"
"""Docker label naming the role of a container, network or volume (postgres, pgbouncer, …)."""
POSTGRES_ALIAS = "postgres"
PGBOUNCER_ALIAS = "pgbouncer"
"""Network aliases of the Postgres and PgBouncer containers on the stack's private network."""
CA_FILE_NAME = "tls-ca.crt"
"""The CA certificate clients verify with, written beside the stack's other local files."""
BACKUP_DIR = "backups"
"""The local target's posix pgBackRest repository, in the stack's state dir."""
APP_CA_DIR = "/etc/poolkit"
"""Where the app containers find that CA (``TLS_CA``, their URLs' ``sslrootcert``)."""


def with_external(stack: StackConfig, layout: Layout) -> Layout:
    """An external Postgres: PgBouncer and DIRECT_URL name its host and port."""
    external = stack.postgres.external
    if external is None:
        return layout
    return dataclasses.replace(layout, postgres_host=external.host, postgres_port=external.port,
                               public_postgres_host=external.host,
                               public_postgres_port=external.port)  # fmt: skip


def certificate_names(stack: StackConfig) -> list[str]:
    """subjectAltNames of a generated server certificate, the same on every target: the stack's
    names, the addresses it is published on, loopback and the containers' aliases."""
    published = [stack.pgbouncer.publish_address]
    if stack.postgres.publish:
        published.append(stack.postgres.publish_address)
    addresses = [a for a in published if a not in WILDCARD_ADDRESSES]
    return tls.server_names(stack.tls.names, *addresses)


def client_host(stack: StackConfig, address: str) -> str:
    """The host clients put in their URLs for a server published on ``address``.

    The first of ``poolkit:tls.names`` (the name the certificate is checked against), else the
    address itself (validation refuses a wildcard address without names).
    """
    return stack.tls.names[0] if stack.tls.names else address


def host_ca_file(stack: StackConfig, project_root: Path) -> str:
    """Where ``poolkit env`` writes a Pulumi stack's CA on this host, unless tls.ca_file says."""
    default = project_root.resolve() / ".poolkit" / stack.stack / CA_FILE_NAME
    return stack.tls.ca_file or str(default)


def docker_layout(stack: StackConfig, project_root: Path | None = None) -> Layout:
    """The images' paths; URLs name the published addresses (127.0.0.1 unless the stack says).

    When the stack does not publish Postgres, DIRECT_URL names the container on the private
    network (usable from containers attached to it, not from the host); an external Postgres
    is named as the stack gives it, which the host reaches (``poolkit up`` checked it from
    there). ``project_root`` is where ``poolkit env`` keeps the CA file (default: the working
    directory, Pulumi's).
    """
    published = stack.postgres.publish
    return with_external(stack, Layout(
        name="docker",
        public_host=client_host(stack, stack.pgbouncer.publish_address),
        public_pgbouncer_port=stack.pgbouncer.port,
        public_postgres_host=(client_host(stack, stack.postgres.publish_address)
                              if published else "postgres"),
        public_postgres_port=stack.postgres.port if published else 5432,
        direct_on_network=not (published or stack.postgres.external),
        tls_ca_file=host_ca_file(stack, project_root or Path.cwd()) if stack.tls.has_ca else "",
    ))  # fmt: skip


def network_layout(stack: StackConfig) -> Layout:
    """The Docker layout with URLs that name the containers on the private network.

    ``.env`` on the host points at the ports published on 127.0.0.1; a container reaches
    PgBouncer and Postgres by their network aliases on their internal ports instead.
    """
    layout = docker_layout(stack)
    external = stack.postgres.external
    return with_external(stack, dataclasses.replace(
        layout,
        public_host=PGBOUNCER_ALIAS,
        public_pgbouncer_port=layout.pgbouncer_port,
        public_postgres_host=POSTGRES_ALIAS,
        public_postgres_port=layout.postgres_port,
        urls_on_network=True,
        direct_on_network=True,
        tls_ca_file=f"{APP_CA_DIR}/{TLS_CA}" if stack.tls.has_ca else "",
        tls_sslmode=server_tls_sslmode(stack),
        server_ca_file=f"{APP_CA_DIR}/{SERVER_CA}" if external and external.ca_file else "",
    ))  # fmt: skip


def _with_loopback(address: str) -> str:
    """Listen on ``address`` and on 127.0.0.1, where the runner itself connects."""
    if address in ("127.0.0.1", "0.0.0.0", "::"):
        return address if address != "::" else "*"
    return f"127.0.0.1,{address}"


def local_layout(stack: StackConfig, state_dir: Path, superuser: str) -> Layout:
    """Everything under ``state_dir``, listening on 127.0.0.1 only."""
    state = state_dir.resolve()
    postgres_listen = stack.postgres.publish_address if stack.postgres.publish else "127.0.0.1"
    ca_file = stack.tls.ca_file or str(state / "conf" / CA_FILE_NAME)
    return with_external(stack, Layout(
        name="local",
        superuser=superuser,
        listen_addresses=_with_loopback(postgres_listen),
        client_networks=("127.0.0.1/32",),
        data_directory=str(state / "data"),
        config_dir=str(state / "conf"),
        postgres_port=stack.postgres.port,
        postgres_socket_dir=str(state / "run"),
        postgres_host="127.0.0.1",
        pgbouncer_listen=_with_loopback(stack.pgbouncer.publish_address),
        pgbouncer_port=stack.pgbouncer.port,
        pgbouncer_dir=str(state / "conf"),
        pgbouncer_socket_dir=str(state / "run"),
        pgbouncer_pidfile=str(state / "run" / "pgbouncer.pid"),
        pgbouncer_logfile=str(state / "log" / "pgbouncer.log"),
        public_host=client_host(stack, stack.pgbouncer.publish_address),
        public_postgres_host=(client_host(stack, stack.postgres.publish_address)
                              if stack.postgres_exposed else "127.0.0.1"),
        public_postgres_port=stack.postgres.port,
        public_pgbouncer_port=stack.pgbouncer.port,
        tls_ca_file=ca_file,
        backup_repo_path=str(state / BACKUP_DIR),
        backup_lock_path=str(state / "run" / "pgbackrest"),
        restore_dir=str(state / "data.restore"),
        previous_dir=str(state / "data.previous"),
    ))  # fmt: skip

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


def kubernetes_layout(stack: StackConfig) -> Layout:
    """The images' paths inside pods; every URL names a Service (``<name>.<namespace>.svc``),
    or the external Postgres.

    The data directory is a folder inside the volume claim's mount, because a fresh volume's
    root may hold ``lost+found``, which initdb refuses. Pods that verify a server find its CA
    in ``APP_CA_DIR`` (a mounted Secret or ConfigMap). A generated certificate names the
    Services, so the URLs use verify-full; a given one is checked as on Docker's network.
    """
    namespace = stack.kubernetes.namespace
    external = stack.postgres.external
    return with_external(stack, Layout(
        name="kubernetes",
        client_networks=stack.kubernetes.pod_networks,
        data_directory=f"{KUBERNETES_DATA_MOUNT}/pgdata",
        postgres_host=f"{POSTGRES_ALIAS}.{namespace}.svc",
        public_host=f"{PGBOUNCER_ALIAS}.{namespace}.svc",
        public_pgbouncer_port=6432,
        public_postgres_host=f"{POSTGRES_ALIAS}.{namespace}.svc",
        public_postgres_port=5432,
        urls_on_network=True,
        direct_on_network=True,
        tls_ca_file=f"{APP_CA_DIR}/{TLS_CA}" if stack.tls.has_ca else "",
        tls_sslmode=server_tls_sslmode(stack),
        server_ca_file=f"{APP_CA_DIR}/{SERVER_CA}" if external and external.ca_file else "",
    ))  # fmt: skip


def kubernetes_certificate_names(stack: StackConfig) -> list[str]:
    """subjectAltNames of a generated certificate on Kubernetes: the stack's names, then the
    Services' names in the namespace (short and fully qualified)."""
    namespace = stack.kubernetes.namespace
    services = [f"{alias}.{namespace}.svc{suffix}" for suffix in ("", ".cluster.local")
                for alias in (PGBOUNCER_ALIAS, POSTGRES_ALIAS)]  # fmt: skip
    return tls.server_names(stack.tls.names, *services)


KUBERNETES_DATA_MOUNT = "/var/lib/postgresql/data"
"""Where Postgres's volume claim is mounted (the image's data volume)."""


def _image_problems(stack: StackConfig) -> list[Problem]:
    """What the images cannot run: the Postgres and PgBouncer versions."""
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
    return problems


def kubernetes_problems(stack: StackConfig) -> list[Problem]:
    """What the Kubernetes target cannot deploy for this stack, each with its fix."""
    problems = _image_problems(stack)
    ns = NAMESPACE
    if stack.postgres.publish:
        problems.append(Problem(
            f"{ns}:postgres.publish", True,
            "has no meaning on the Kubernetes target: Postgres is reachable only inside the "
            "cluster, from PgBouncer and the migration Job",
            "remove it; run migrations in the cluster (the migrate Job) or through "
            "`kubectl port-forward`",
        ))  # fmt: skip
    external = stack.postgres.external
    if external and external.network:
        problems.append(Problem(
            f"{ns}:postgres.external.network", external.network,
            "names a Docker network; the Kubernetes target has none to join",
            "remove it: pods reach the server through the cluster's own routes",
        ))  # fmt: skip
    service = stack.kubernetes.pgbouncer_service
    if service != "ClusterIP" and not stack.pgbouncer.client_tls:
        problems.append(Problem(
            f"{ns}:kubernetes.pgbouncer_service", service,
            "exposes PgBouncer beyond the cluster without TLS",
            f"set {ns}:pgbouncer.client_tls: true (and {ns}:tls.names), or use ClusterIP",
        ))  # fmt: skip
    if service != "ClusterIP" and not stack.tls.names:
        problems.append(Problem(
            f"{ns}:tls.names", [], f"is empty while {ns}:kubernetes.pgbouncer_service is "
            f"{service} (reached from outside the cluster)",
            "list the DNS name of the Service's address (the load balancer's or a node's), "
            "e.g. [db.example.com]: the certificate must carry it for verify-full",
        ))  # fmt: skip
    if stack.monitoring.exporters:
        problems.append(Problem(
            f"{ns}:monitoring.exporters", True,
            "is not run by the Kubernetes target yet (the local and Docker targets run the "
            "exporters)",
            "set it to false for this stack; `poolkit render` still writes prometheus-rules.yml",
        ))  # fmt: skip
    return problems


def target_problems(stack: StackConfig) -> list[Problem]:
    """What the Pulumi program's target (``poolkit:target``) cannot deploy for this stack."""
    return kubernetes_problems(stack) if stack.target == "kubernetes" else docker_problems(stack)


def docker_problems(stack: StackConfig) -> list[Problem]:
    """What the Docker images cannot run for this stack, each with its fix (empty: all fine).

    Checked before any resource exists, so ``pulumi up`` fails early instead of in a build.
    """
    return _image_problems(stack)
