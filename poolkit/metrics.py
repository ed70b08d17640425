"""Monitoring of a stack: the exporters' settings, their metric names, alert rules from the plan.

PgBouncer is read by the prometheus-community ``pgbouncer_exporter`` (as the read-only console
user ``pgbouncer_stats``), Postgres by ``postgres_exporter`` (as ``poolkit_monitor``, a login
role with ``pg_monitor`` and nothing else). Both read their connection string from the
environment, never from an argument list. Pure: targets decide where the exporters run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from poolkit.config import StackConfig
from poolkit.render import render_template
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
    port: int
    environment: dict[str, str]
    """Holds the connection string with its password: pass it as the environment only."""
    listen: str = "127.0.0.1"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.listen}:{self.port}/metrics"

    def __repr__(self) -> str:
        return f"ExporterSpec(name={self.name!r}, port={self.port}, environment='***')"


def exporters(
    stack: StackConfig, secrets: Secrets, pgbouncer_host: str, postgres_host: str,
    postgres_port: int, listen: str = "127.0.0.1",
) -> tuple[ExporterSpec, ExporterSpec]:
    """The two exporters of ``stack``: PgBouncer's console and Postgres, plain text on loopback.

    ``sslmode=disable`` unless the server requires TLS: the exporters' driver (lib/pq) would
    otherwise insist on it. The caller runs them beside the servers (loopback or the stack's
    private network).
    """  # fmt: skip
    stats = secrets.pgbouncer_stats
    monitor = secrets.monitor
    if monitor is None:
        raise ValueError("no poolkit_monitor credential: this target makes none")
    bouncer_tls = "require" if stack.pgbouncer.client_tls else "disable"
    postgres_tls = "require" if stack.postgres_tls else "disable"
    bouncer_url = postgres_url(stats.user, stats.password, pgbouncer_host, stack.pgbouncer.port,
                               "pgbouncer", {"sslmode": bouncer_tls})  # fmt: skip
    postgres_dsn = postgres_url(monitor.user, monitor.password, postgres_host, postgres_port,
                                stack.database.name, {"sslmode": postgres_tls})  # fmt: skip
    spec = stack.monitoring
    return (
        ExporterSpec(PGBOUNCER_EXPORTER, spec.pgbouncer_exporter_port,
                     {"PGBOUNCER_EXPORTER_CONNECTION_STRING": bouncer_url}, listen),
        ExporterSpec(POSTGRES_EXPORTER, spec.postgres_exporter_port,
                     {"DATA_SOURCE_NAME": postgres_dsn}, listen),
    )  # fmt: skip


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
    pool = plan.pool
    wait = stack.pgbouncer.query_wait_timeout
    return Thresholds(
        database=stack.database.name,
        max_db_connections=pool.server_connections,
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
