"""Monitoring of a stack: the exporters' settings, their metric names, alert rules from the plan.

PgBouncer is read by the prometheus-community ``pgbouncer_exporter`` (as the read-only console
user ``pgbouncer_stats``), one per PgBouncer process through that process's Unix socket dir;
Postgres by ``postgres_exporter`` (as ``poolkit_monitor``, a login role with ``pg_monitor`` and
nothing else). Both read their connection string from the environment, never from an argument
list. Pure: targets decide where the exporters run (supervised processes, containers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from poolkit.config import StackConfig
from poolkit.render import SERVER_CA, Layout, pgbouncer_peers, render_template
from poolkit.secrets import Secrets
from poolkit.sizing import Plan
from poolkit.urls import postgres_url

PGBOUNCER_EXPORTER = "pgbouncer-exporter"
POSTGRES_EXPORTER = "postgres-exporter"
"""Names of the two exporters (supervised process names on the local target)."""
PGBOUNCER_JOB = "pgbouncer"
POSTGRES_JOB = "postgres"
RULES_FILE = "prometheus-rules.yml"
MAXWAIT_SHARE = 0.5
"""Alert when a client has waited this share of query_wait_timeout."""
CONNECTIONS_SHARE = 0.8
"""Alert when Postgres holds this share of max_connections."""

PGBOUNCER_METRICS = (
    "pgbouncer_up",
    "pgbouncer_pools_client_active_connections",
    "pgbouncer_pools_client_waiting_connections",
    "pgbouncer_pools_server_active_connections",
    "pgbouncer_pools_server_idle_connections",
    "pgbouncer_pools_client_maxwait_seconds",
    "pgbouncer_stats_queries_pooled_total",
    "pgbouncer_stats_sql_transactions_pooled_total",
    "pgbouncer_stats_client_wait_seconds_total",
    "pgbouncer_databases_current_connections",
    "pgbouncer_databases_max_connections",
    "pgbouncer_config_max_client_connections",
)
"""What the alert rules, ``status --watch`` and the tests rely on (pgbouncer_exporter 0.10)."""
POSTGRES_METRICS = (
    "pg_up",
    "pg_stat_activity_count",
    "pg_stat_database_numbackends",
    "pg_settings_max_connections",
    "pg_stat_database_xact_commit",
)
"""The same for postgres_exporter."""


@dataclass(frozen=True)
class ExporterSpec:
    """One exporter process: what it is called, where it listens, what it reads."""

    name: str
    """Supervised process (local) or container suffix (Docker): ``pgbouncer-exporter[-N]``."""
    program: str
    """Which exporter runs: :data:`PGBOUNCER_EXPORTER` or :data:`POSTGRES_EXPORTER`."""
    port: int
    environment: dict[str, str]
    """Holds the connection string with its password: pass it as the environment only."""
    listen: str = "127.0.0.1"
    reads: str = ""
    """What it reads, for people: a PgBouncer socket dir or Postgres's host:port."""

    @property
    def metrics_url(self) -> str:
        return f"http://{self.listen or '127.0.0.1'}:{self.port}/metrics"

    def __repr__(self) -> str:
        return f"ExporterSpec(name={self.name!r}, port={self.port}, environment='***')"


def pgbouncer_exporter_name(peer_id: int, processes: int) -> str:
    """``pgbouncer-exporter`` for one PgBouncer process, ``pgbouncer-exporter-N`` for process N."""
    return PGBOUNCER_EXPORTER if processes == 1 else f"{PGBOUNCER_EXPORTER}-{peer_id}"


def is_exporter(name: str) -> bool:
    """Whether a supervised name or container suffix is one of the stack's exporters."""
    if name in (PGBOUNCER_EXPORTER, POSTGRES_EXPORTER):
        return True
    prefix = f"{PGBOUNCER_EXPORTER}-"
    return name.startswith(prefix) and name[len(prefix):].isdigit()


def program_of(name: str) -> str:
    """Which exporter program an exporter name runs."""
    return POSTGRES_EXPORTER if name == POSTGRES_EXPORTER else PGBOUNCER_EXPORTER


def exporter_ports(stack: StackConfig, plan: Plan) -> dict[str, int]:
    """Name -> port of every exporter the stack wants (none when monitoring.exporters is off).

    One pgbouncer_exporter per PgBouncer process of the plan, on ``pgbouncer_exporter_port`` +
    N - 1: processes sharing a port (so_reuseport) are reached one by one through their own
    sockets.
    """
    if not stack.monitoring.exporters:
        return {}
    processes, base = plan.pool.split.processes, stack.monitoring.pgbouncer_exporter_port
    ports = {pgbouncer_exporter_name(n, processes): base + n - 1
             for n in range(1, processes + 1)}  # fmt: skip
    ports[POSTGRES_EXPORTER] = stack.monitoring.postgres_exporter_port
    return ports


def _postgres_params(stack: StackConfig, server_ca_file: str) -> dict[str, str]:
    """How postgres_exporter's driver (lib/pq) reaches Postgres: plain on the private network or
    loopback unless the server requires TLS; an external server as PgBouncer checks it."""
    external = stack.postgres.external
    if external is None:
        return {"sslmode": "require" if stack.postgres_tls else "disable"}
    params = {"sslmode": external.sslmode}
    if external.ca_file:
        params["sslrootcert"] = server_ca_file
    return params


def exporters(
    stack: StackConfig, plan: Plan, layout: Layout, secrets: Secrets, listen: str = "127.0.0.1",
    server_ca_file: str | None = None,
) -> tuple[ExporterSpec, ...]:
    """The exporters of ``stack``: a pgbouncer_exporter per PgBouncer process, then
    postgres_exporter, each listening on ``listen`` at its port from :func:`exporter_ports`.

    A pgbouncer_exporter logs in to its process's console through that process's Unix socket
    dir (no TLS there, nothing on the network); postgres_exporter reaches Postgres at the
    layout's host and port, checking an external server with its CA at ``server_ca_file``
    (default: beside pgbouncer.ini, where PgBouncer reads it).
    """
    stats, monitor = secrets.pgbouncer_stats, secrets.monitor
    if monitor is None:
        raise ValueError("no poolkit_monitor credential: this target makes none")
    ports = exporter_ports(stack, plan)
    every = pgbouncer_peers(plan, layout)
    specs = []
    for peer in every:
        name = pgbouncer_exporter_name(peer.peer_id, len(every))
        # lib/pq takes a socket dir as the host parameter (a path cannot stand in the netloc).
        url = postgres_url(stats.user, stats.password, "", layout.pgbouncer_port, "pgbouncer",
                           {"host": peer.socket_dir, "sslmode": "disable"})  # fmt: skip
        specs.append(ExporterSpec(name, PGBOUNCER_EXPORTER, ports[name],
                                  {"PGBOUNCER_EXPORTER_CONNECTION_STRING": url}, listen,
                                  peer.socket_dir))  # fmt: skip
    params = _postgres_params(stack, server_ca_file or f"{layout.pgbouncer_dir}/{SERVER_CA}")
    dsn = postgres_url(monitor.user, monitor.password, layout.postgres_host, layout.postgres_port,
                       stack.database.name, params)  # fmt: skip
    specs.append(ExporterSpec(POSTGRES_EXPORTER, POSTGRES_EXPORTER, ports[POSTGRES_EXPORTER],
                              {"DATA_SOURCE_NAME": dsn}, listen,
                              f"{layout.postgres_host}:{layout.postgres_port}"))  # fmt: skip
    return tuple(specs)


def render_env(spec: ExporterSpec, command: list[str] | None = None) -> str:
    """The exporter's 0600 environment file (its login), from ``exporter.env.j2``."""
    return render_template("exporter.env.j2", spec=spec, command=" ".join(command or ()),
                           environment=sorted(spec.environment.items()))  # fmt: skip


@dataclass(frozen=True)
class Thresholds:
    """The alert thresholds of one stack, each from its plan."""

    database: str
    max_db_connections: int
    query_wait_timeout: int
    maxwait_threshold_s: float
    max_connections: int
    connections_threshold: int


def thresholds(stack: StackConfig, plan: Plan) -> Thresholds:
    """``max_db_connections`` is what every PgBouncer process together may open (the rules sum
    the per-process exporters by database): the budget, less the remainder a split leaves."""
    pool = plan.pool
    wait = stack.pgbouncer.query_wait_timeout
    return Thresholds(
        database=stack.database.name,
        max_db_connections=pool.split.servers,
        query_wait_timeout=wait,
        maxwait_threshold_s=wait * MAXWAIT_SHARE,
        max_connections=pool.max_connections,
        connections_threshold=math.floor(pool.max_connections * CONNECTIONS_SHARE),
    )


def render_rules(stack: StackConfig, plan: Plan) -> str:
    """The Prometheus rules file of ``stack`` (``prometheus-rules.yml``)."""
    limits = thresholds(stack, plan)
    return render_template(
        "prometheus-rules.yml.j2", stack=stack, **limits.__dict__,
        pgbouncer_job=PGBOUNCER_JOB, postgres_job=POSTGRES_JOB,
    )  # fmt: skip
