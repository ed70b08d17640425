"""Render every config file of a stack from Jinja2 templates (StrictUndefined), byte-stable.

Targets describe themselves with a ``Layout`` (paths, listen addresses, how PgBouncer reaches
Postgres, which host and ports the URLs name); sizes come from the plan, never from a target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from poolkit.config import StackConfig
from poolkit.peering import Peer, peers
from poolkit.secrets import MONITOR_USER, Credential, Secrets
from poolkit.sizing import AppPlan, Plan
from poolkit.urls import postgres_url, prisma_engine_params


@dataclass(frozen=True)
class Layout:
    """Facts of one target that the rendered files name. Defaults describe the Docker images."""

    name: str = "docker"
    superuser: str = "postgres"
    listen_addresses: str = "*"
    client_networks: tuple[str, ...] = ("samenet",)
    """pg_hba addresses the app and migrator roles may connect from."""
    data_directory: str = "/var/lib/postgresql/data"
    config_dir: str = "/etc/poolkit"
    postgres_port: int = 5432
    postgres_socket_dir: str = "/var/run/postgresql"
    postgres_host: str = "postgres"
    """How PgBouncer reaches Postgres."""
    pgbouncer_listen: str = "*"
    pgbouncer_port: int = 6432
    pgbouncer_dir: str = "/etc/pgbouncer"
    pgbouncer_socket_dir: str = "/var/run/postgresql"
    pgbouncer_pidfile: str = ""
    pgbouncer_logfile: str = ""
    """Empty: log to stderr (the container's log)."""
    public_host: str = "127.0.0.1"
    public_pgbouncer_port: int = 6432
    """Host and port of the pooled URLs (published or loopback)."""
    public_postgres_host: str = "127.0.0.1"
    public_postgres_port: int = 5432
    """Host and port of DIRECT_URL."""
    urls_on_network: bool = False
    """Every URL names a container on the stack's private network (a container's .env)."""
    direct_on_network: bool = False
    """DIRECT_URL names Postgres on the private network: it is not published to the host."""
    tls_ca_file: str = ""
    """Where the URLs' clients read the CA from (``sslrootcert``); empty: system roots."""
    server_ca_file: str = ""
    """Where DIRECT_URL's clients read an external Postgres's CA; empty: its ``ca_file``."""
    tls_sslmode: str = "verify-full"
    """sslmode of the URLs when TLS is on: verify-full, or weaker only on a private network
    whose names a given certificate does not carry (see ``layouts``)."""
    backup_repo_path: str = "/var/lib/pgbackrest"
    """pgBackRest's posix repository (the Docker target mounts the backup volume here)."""
    backup_lock_path: str = "/tmp/pgbackrest"
    restore_dir: str = "/var/lib/postgresql/data/.poolkit-restore"
    """Where ``poolkit restore`` fills a fresh data directory before switching to it."""
    previous_dir: str = "/var/lib/postgresql/data/.poolkit-previous"
    """Where a switch keeps the data directories it replaced (one folder per restore)."""

    @property
    def pgbackrest_conf(self) -> str:
        return f"{self.config_dir}/{PGBACKREST_CONF}"

    @property
    def pgpass(self) -> str:
        return f"{self.config_dir}/{PGPASS}"

    @property
    def s3_ca_file(self) -> str:
        """Where pgBackRest reads ``backup.s3_ca_file``'s copy (repo1-storage-ca-file)."""
        return f"{self.config_dir}/{S3_CA}"


PGBACKREST_CONF = "pgbackrest.conf"
PGPASS = "superuser.pgpass"
S3_CA = "s3-ca.crt"
"""The S3 server's CA (``backup.s3_ca_file``), copied beside pgbackrest.conf."""
BACKUP_SCHEDULE = "backup-schedule"
"""What poolkit-backup-scheduler runs when (both targets)."""
"""libpq password file of the superuser, for pgBackRest's connection over the private socket."""


class RenderError(ValueError):
    """A value would break out of its place in a rendered file."""


def _templates_dir() -> Path:
    packaged = Path(__file__).parent / "templates"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "templates"


def _single_line(value: Any) -> str:
    text = str(value)
    if any(c in text for c in "\n\r\0"):
        raise RenderError(f"value {text!r} spans lines")
    return text


def _conf_string(value: Any) -> str:
    """A postgresql.conf value: single-quoted, quotes doubled."""
    return "'" + _single_line(value).replace("'", "''") + "'"


def _ident(value: Any) -> str:
    """A double-quoted SQL identifier or userlist name."""
    return '"' + _single_line(value).replace('"', '""') + '"'


def _sql_literal(value: Any) -> str:
    return "'" + _single_line(value).replace("'", "''") + "'"


def _ini_value(value: Any) -> str:
    text = _single_line(value)
    if ";" in text or "#" in text:
        raise RenderError(f"ini value {text!r} holds a comment character")
    return text


_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_templates_dir()),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
def _pgpass_field(value: Any) -> str:
    """A field of a libpq password file: ``\\`` and ``:`` escaped."""
    return _single_line(value).replace("\\", "\\\\").replace(":", "\\:")


_ENVIRONMENT.filters.update(
    conf_string=_conf_string, ident=_ident, sql_literal=_sql_literal, ini=_ini_value,
    line=_single_line, pgpass=_pgpass_field,
)  # fmt: skip


# Compile every template once, at import: Jinja2 would otherwise compile on first use, which
# may be in a worker thread (Pulumi's apply), and CPython 3.11's compiler is not thread-safe.
_TEMPLATES = {name: _ENVIRONMENT.get_template(name) for name in _ENVIRONMENT.list_templates()}


def _render(template: str, **context: Any) -> str:
    return _TEMPLATES[template].render(**context)


def archive_command(stack: StackConfig, layout: Layout) -> str:
    """The command Postgres runs for each finished WAL segment (no secret: they are in the
    0600 pgbackrest.conf)."""
    return f"pgbackrest --config={layout.pgbackrest_conf} --stanza={stack.stack} archive-push %p"


def render_postgresql_conf(stack: StackConfig, plan: Plan, layout: Layout) -> str:
    settings = sorted(plan.postgres, key=lambda s: s.name)
    archive = archive_command(stack, layout) if stack.backup.enabled else None
    return _render("postgresql.conf.j2", stack=stack, layout=layout, tls_cert=TLS_CERT,
                   tls_key=TLS_KEY, settings=settings, archive_command=archive)  # fmt: skip


def _nested_excludes(layout: Layout) -> list[str]:
    """Folders of a restore that sit inside the data directory: never part of a backup."""
    data = layout.data_directory.rstrip("/") + "/"
    return [path.removeprefix(data) for path in (layout.restore_dir, layout.previous_dir)
            if path.startswith(data)]  # fmt: skip


def render_pgbackrest_conf(stack: StackConfig, secrets: Secrets, layout: Layout) -> str:
    """pgBackRest's config: the encrypted repository, retention, and how to reach Postgres."""
    backup = stack.backup
    host, _, port = backup.s3_endpoint.partition(":")
    repo_path = backup.s3_path if backup.repo == "s3" else layout.backup_repo_path
    return _render("pgbackrest.conf.j2", stack=stack, layout=layout, backup=backup,
                   secrets=secrets, repo_path=repo_path, s3_host=host, s3_port=port,
                   excludes=_nested_excludes(layout))  # fmt: skip


def render_backup_schedule(stack: StackConfig, layout: Layout) -> str:
    """The backup schedule poolkit-backup-scheduler follows (no secret: it names the files)."""
    return _render("backup-schedule.j2", stack=stack, layout=layout, backup=stack.backup)


def render_pgpass(secrets: Secrets) -> str:
    """The superuser's libpq password file line (pgBackRest connects over the socket)."""
    return _render("pgpass.j2", credential=secrets.superuser)


ANY_ADDRESS = ("0.0.0.0/0", "::/0")
"""pg_hba addresses of the published, TLS-only migration path."""


def render_pg_hba(stack: StackConfig, layout: Layout) -> str:
    """SCRAM records for our roles; TLS-only (``hostssl``) where the traffic may leave the host.

    With ``server_tls`` PgBouncer's role (the app role) must arrive over TLS. With Postgres
    published beyond loopback every line is TLS-only (validation then requires ``server_tls``)
    and only the migrator may connect from beyond the private network.
    """
    db = stack.database
    ssl_only = {db.app_user: stack.pgbouncer.server_tls or stack.postgres_exposed,
                db.migrator_user: stack.postgres_exposed, MONITOR_USER: stack.postgres_exposed}
    roles = [db.migrator_user, db.app_user] + ([MONITOR_USER] if stack.monitoring.exporters else [])
    records = [
        {"type": "hostssl" if ssl_only[role] else "host", "database": db.name, "user": role,
         "address": network}
        for role in roles
        for network in layout.client_networks
    ]  # fmt: skip
    if stack.postgres_exposed:
        records += [{"type": "hostssl", "database": db.name, "user": db.migrator_user,
                     "address": address} for address in ANY_ADDRESS]  # fmt: skip
    return _render("pg_hba.conf.j2", stack=stack, layout=layout, records=records)


TLS_KEY = "client-tls.key"
TLS_CERT = "client-tls.crt"
"""File names of the servers' TLS key and certificate (chain), beside their configs."""
TLS_CA = "tls-ca.crt"
"""File name of the CA certificate PgBouncer verifies Postgres with (``server_tls``)."""


def server_tls_sslmode(stack: StackConfig) -> str:
    """How PgBouncer checks Postgres: a generated certificate carries the name ``postgres``
    (verify-full); a given one is checked against its CA (verify-ca) or, from a public CA
    without one, only encrypts (require) on the private network."""
    if not stack.tls.given:
        return "verify-full"
    return "verify-ca" if stack.tls.has_ca else "require"
SERVER_CA = "server-ca.crt"
"""An external Postgres's CA, copied beside pgbouncer.ini (server_tls_ca_file)."""


def pgbouncer_peers(plan: Plan, layout: Layout) -> tuple[Peer, ...]:
    """The PgBouncer processes of one pooler host, each with its file name and paths."""
    return peers(plan.pool.split.processes, layout.pgbouncer_socket_dir,
                 layout.pgbouncer_pidfile, layout.pgbouncer_logfile)  # fmt: skip


def render_pgbouncer_ini(
    stack: StackConfig, plan: Plan, layout: Layout, peer_id: int = 1
) -> str:
    """``pgbouncer.ini`` of process ``peer_id``; the processes differ only in peering data."""
    settings = sorted(plan.pgbouncer, key=lambda s: s.name)
    every = pgbouncer_peers(plan, layout)
    return _render("pgbouncer.ini.j2", stack=stack, layout=layout, settings=settings,
                   tls_key=TLS_KEY, tls_cert=TLS_CERT, tls_ca=TLS_CA,
                   server_sslmode=server_tls_sslmode(stack), server_ca=SERVER_CA,
                   external=stack.postgres.external, split=plan.pool.split,
                   peer=every[peer_id - 1], peers=every if len(every) > 1 else ())  # fmt: skip


def render_userlist(secrets: Secrets) -> str:
    """PgBouncer's auth file: app role and console users, SCRAM verifiers only."""
    users = [secrets.app, secrets.pgbouncer_admin, secrets.pgbouncer_stats]
    return _render("userlist.txt.j2", users=users)


def render_init_sql(stack: StackConfig, secrets: Secrets) -> str:
    """Roles with SCRAM verifiers, the database owned by the migrator, the app role's grants."""
    return _render("init.sql.j2", stack=stack, secrets=secrets)


def render_external_init_sql(stack: StackConfig, secrets: Secrets) -> str:
    """The same roles, database and grants on an external Postgres, run as its admin role;
    with ``poolkit:monitoring.exporters`` also ``poolkit_monitor`` (pg_monitor)."""
    monitor = secrets.monitor if stack.monitoring.exporters else None
    return _render("external-init.sql.j2", stack=stack, secrets=secrets, monitor=monitor,
                   external=stack.postgres.external)  # fmt: skip


def direct_tls_params(stack: StackConfig, layout: Layout) -> dict[str, str]:
    """libpq TLS parameters of DIRECT_URL: the external server's sslmode and CA."""
    external = stack.postgres.external
    if external is None:
        return {}
    params = {"sslmode": external.sslmode}
    if external.ca_file:
        params["sslrootcert"] = layout.server_ca_file or external.ca_file
    return params


def _url(credential: Credential, host: str, port: int, dbname: str, **params: Any) -> str:
    return postgres_url(credential.user, credential.password, host, port, dbname, params)


def client_tls_params(layout: Layout, prisma: bool = False) -> dict[str, str]:
    """URL parameters that make a client verify the server.

    libpq (and psycopg, node-postgres): ``sslmode=verify-full`` with ``sslrootcert`` (the CA
    file, or ``system`` for a public CA). Prisma's engine (Prisma <= 6) knows only
    ``sslmode=require`` and verifies with ``sslcert`` (the CA file) and ``sslaccept=strict``.
    """
    if prisma:
        params = {"sslmode": "require"}
        if layout.tls_ca_file:
            params["sslcert"] = layout.tls_ca_file
        params["sslaccept"] = "accept_invalid_certs" if layout.tls_sslmode == "require" \
            else "strict"  # fmt: skip
        return params
    params = {"sslmode": layout.tls_sslmode}
    if layout.tls_sslmode != "require":
        params["sslrootcert"] = layout.tls_ca_file or "system"
    return params


def render_env(
    stack: StackConfig, plan: Plan, secrets: Secrets, layout: Layout, app: AppPlan | None = None
) -> str:
    """The ``.env`` text; for one app when ``app`` is given, else for the tightest app."""
    limits = [a.connection_limit for a in plan.apps] or [1]
    connection_limit = app.connection_limit if app else min(limits)
    pool_timeout = plan.pool.pool_timeout
    host, port, db = layout.public_host, layout.public_pgbouncer_port, stack.database.name
    client_tls = stack.pgbouncer.client_tls
    tls = client_tls_params(layout) if client_tls else {}
    prisma_tls = client_tls_params(layout, prisma=True) if client_tls else {}
    direct_tls = (direct_tls_params(stack, layout) if stack.postgres.external
                  else client_tls_params(layout) if stack.postgres_exposed else {})  # fmt: skip
    pooled = _url(secrets.app, host, port, db, **tls)
    engine = prisma_engine_params(connection_limit, pool_timeout, plan.prepared_statements)
    urls = {
        "DATABASE_URL": pooled,
        "POOLED_DATABASE_URL": pooled,
        "PRISMA_ENGINE_DATABASE_URL": _url(secrets.app, host, port, db, **engine, **prisma_tls),
        "DIRECT_URL": _url(secrets.migrator, layout.public_postgres_host,
                           layout.public_postgres_port, db, **direct_tls),
        "PGBOUNCER_STATS_URL": _url(secrets.pgbouncer_stats, host, port, "pgbouncer", **tls),
    }  # fmt: skip
    return _render(
        "env.j2", stack=stack, plan=plan, app=app, urls=urls, tls_ca_file=layout.tls_ca_file,
        connection_limit=connection_limit,
        prepared="on" if plan.prepared_statements else "off",
        pooled_private=layout.urls_on_network,
        private_where=("pods of the stack's Kubernetes cluster" if layout.name == "kubernetes"
                       else "containers on the stack's private Docker network"),
        direct_private=layout.direct_on_network,
    )  # fmt: skip


APP_ENV = {
    "python": ("POOLED_DATABASE_URL", "POOL_CONNECTION_LIMIT", "PGBOUNCER_PREPARED_STATEMENTS"),
    "node": ("DATABASE_URL", "POOL_CONNECTION_LIMIT", "PGBOUNCER_PREPARED_STATEMENTS"),
}
"""Variables of the rendered .env an app process gets, by runtime, on every target: what
apps/db.py and apps/ts/src/settings.ts read (the same libpq-clean pooled URL under two names)."""


def env_file_names(stack: StackConfig, plan: Plan) -> dict[str, AppPlan | None]:
    """``.env`` for the stack, plus ``.env.<app>`` for each app when the apps' limits differ."""
    names: dict[str, AppPlan | None] = {".env": None}
    if len({a.connection_limit for a in plan.apps}) > 1:
        names |= {f".env.{a.name}": a for a in plan.apps}
    return names


def render_all(stack: StackConfig, plan: Plan, secrets: Secrets, layout: Layout) -> dict[str, str]:
    """Every file of the stack, name -> text."""
    if stack.postgres.external:  # the server is not ours: only what fronts it
        files = {"external-init.sql": render_external_init_sql(stack, secrets)}
    else:
        files = {
            "postgresql.conf": render_postgresql_conf(stack, plan, layout),
            "pg_hba.conf": render_pg_hba(stack, layout),
            "init.sql": render_init_sql(stack, secrets),
        }
        if stack.backup.enabled:
            files[PGBACKREST_CONF] = render_pgbackrest_conf(stack, secrets, layout)
            files[PGPASS] = render_pgpass(secrets)
            files[BACKUP_SCHEDULE] = render_backup_schedule(stack, layout)
    files |= {peer.ini: render_pgbouncer_ini(stack, plan, layout, peer.peer_id)
              for peer in pgbouncer_peers(plan, layout)}
    files["userlist.txt"] = render_userlist(secrets)
    files["prometheus-rules.yml"] = _render_rules(stack, plan)
    for name, app in env_file_names(stack, plan).items():
        files[name] = render_env(stack, plan, secrets, layout, app)
    return files


def _render_rules(stack: StackConfig, plan: Plan) -> str:
    from poolkit.metrics import render_rules  # metrics imports this module

    return render_rules(stack, plan)


PRIVATE_FILES = frozenset({"userlist.txt", "init.sql", "external-init.sql", PGBACKREST_CONF,
                           PGPASS})


def is_private(name: str) -> bool:
    """Whether a rendered file holds secrets (verifiers or passwords) and must be 0600."""
    return name in PRIVATE_FILES or name.startswith(".env")


def render_template(name: str, **context: Any) -> str:
    """Any template under ``templates/`` with the caller's context (the bench's experiments)."""
    return _render(name, **context)
