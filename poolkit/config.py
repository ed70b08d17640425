"""Stack config: the one input format of every target, validated into frozen settings.

A stack file is a Pulumi stack settings file (``Pulumi.<stack>.yaml``) whose ``config:`` holds
keys in the ``poolkit:`` namespace. Every key has a default, so a file may hold only what it
changes. Validation reports every problem at once; each names the key, the bad value and the fix.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from poolkit.split import MAX_DEFAULT_PROCESSES, PEERING_SINCE
from poolkit.units import GIB, MIB, parse_size

NAMESPACE = "poolkit"
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
APP_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
STACK_NAME = re.compile(r"^(?!\.\.?\Z)[A-Za-z0-9_.-]{1,100}\Z")
"""Pulumi's stack names: letters, digits, ``-``, ``_``, ``.`` (not ``.`` or ``..`` alone)."""
STACK_NAME_FIX = "use letters, digits, -, _ and . (at most 100), as Pulumi does"
PGBOUNCER_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")
# Roles the kit creates for itself; database users may not take these names.
RESERVED_ROLES = frozenset({"postgres", "pgbouncer", "pgbouncer_admin", "pgbouncer_stats",
                            "poolkit_monitor"})
RESERVED_DATABASES = frozenset({"postgres", "pgbouncer", "template0", "template1"})
MIN_PGBOUNCER = (1, 17)
PASSWORD_ENV = {
    "app_password": "POOLKIT_APP_PASSWORD",
    "migrator_password": "POOLKIT_MIGRATOR_PASSWORD",
    "external_admin_password": "POOLKIT_EXTERNAL_ADMIN_PASSWORD",
}
S3_SECRET_KEY = "backup_s3_key_secret"
PASSPHRASE_KEY = "backup_passphrase"
"""The backup repository's cipher passphrase (a secret in the stack's config, which
``pulumi destroy`` keeps, so a kept repository stays readable by the next ``pulumi up``)."""
"""Stack secret holding the S3 repository's secret access key."""
S3_SECRET_ENV = "POOLKIT_BACKUP_S3_KEY_SECRET"
CRON = re.compile(r"^\S+( \S+){4}$")
S3_TEXT = re.compile(r"^[A-Za-z0-9._:/-]*$")
TLS_SECRET_KEYS = ("tls_certificate", "tls_key", "tls_ca")
"""Stack secrets holding the user's own PEM certificate, key and (optional) CA."""
LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1"})
"""The only publish addresses allowed without TLS."""
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::"})
DNS_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
DNS_NAME = re.compile(rf"^(\*\.)?({DNS_LABEL}\.)*{DNS_LABEL}$", re.IGNORECASE)
SERVER_SSLMODES = ("require", "verify-ca", "verify-full")
TARGETS = ("docker", "kubernetes")
"""Where the Pulumi program deploys (``poolkit:target``)."""
IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")
K8S_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DOCKER_NETWORK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DEFAULT_POD_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
"""Private ranges, where clusters' pod networks live; the NetworkPolicy narrows it to pods."""
"""TLS to a Postgres the kit does not run: traffic leaves the host, so never plain."""


@dataclass(frozen=True)
class Problem:
    """One validation failure: where, what was there, and how to fix it."""

    key: str
    value: Any
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message} (got {self.value!r}). Fix: {self.fix}"


class ConfigError(ValueError):
    """The stack config is invalid; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Encrypted:
    """A Pulumi ``secure:`` value: only the Pulumi runtime can decrypt it."""

    ciphertext: str


@dataclass(frozen=True)
class ExternalPostgres:
    """A Postgres the kit does not run (RDS, Cloud SQL, Neon, Supabase, your own server).

    The kit deploys only PgBouncer, the apps, the ``.env`` and the checks in front of it, and
    creates its roles and database through ``admin_user``, a role that must not be a superuser.
    """

    host: str
    admin_user: str
    """A role with CREATEROLE (and CREATEDB unless the database exists); not a superuser."""
    port: int = 5432
    sslmode: str = "verify-full"
    """require | verify-ca | verify-full: how PgBouncer and DIRECT_URL check the server."""
    ca_file: str | None = None
    """PEM file of the CA that signed the server's certificate; required for verify-*."""
    max_connections: int | None = None
    """The server's max_connections; read from it (SHOW max_connections) when absent."""
    network: str | None = None
    """Docker target: an existing Docker network that PgBouncer and the apps also join to reach
    the server (a database in another compose project, a peered network). Other targets reach
    the server through the host's own routes and refuse or ignore it."""

    @property
    def verifies(self) -> bool:
        return self.sslmode.startswith("verify-")


@dataclass(frozen=True)
class PostgresSpec:
    version: int = 17
    """PostgreSQL major version, 15 to 17."""
    memory_bytes: int = GIB
    """Memory of the Postgres host or container (``memory: 4GiB``)."""
    cpus: int = 2
    storage: str = "ssd"
    """ssd | hdd | san | nvme: drives random_page_cost and effective_io_concurrency."""
    workload: str = "web"
    """web | oltp | mixed | dw | desktop, as in pgtune."""
    max_connections: int | None = None
    """Override; derived from the pool plan when absent."""
    port: int = 5432
    publish: bool = False
    """Docker target: publish the port (the direct URL needs it from the host)."""
    publish_address: str = "127.0.0.1"
    """Host address the port is published on. Beyond 127.0.0.1 Postgres takes TLS only
    (``hostssl``) and only from the migrator role: the migration path from outside."""
    external: ExternalPostgres | None = None
    """Bring your own Postgres: the kit runs none and fronts this one."""


@dataclass(frozen=True)
class PgBouncerSpec:
    version: str = "1.24"
    """Declared version; the local target replaces it with the detected one."""
    pool_mode: str = "transaction"
    default_pool_size: int | None = None
    reserve_pool_size: int | None = None
    max_client_conn: int | None = None
    max_prepared_statements: int | None = None
    query_wait_timeout: int = 15
    """Seconds a client may wait for a server connection before PgBouncer gives up."""
    idle_transaction_timeout: int = 30
    """Seconds a paused (zombie) instance may sit in an open transaction holding a server."""
    port: int = 6432
    client_tls: bool = False
    """Require TLS from clients (``client_tls_sslmode = require``; verify-full in the URLs)."""
    server_tls: bool = False
    """PgBouncer to Postgres over TLS (``server_tls_sslmode``, verify-full with a generated CA)."""
    publish_address: str = "127.0.0.1"
    """Host address PgBouncer is published on (Docker) or listens on (local). Anything but
    127.0.0.1 or ::1 needs ``client_tls``."""
    processes: int | None = None
    """PgBouncer processes per pooler host, sharing the port; derived from CPUs when absent."""
    replicas: int = 1
    """Pooler hosts (containers, pods, machines); the server budget is split over all of them."""

    @property
    def version_tuple(self) -> tuple[int, int]:
        major, minor = PGBOUNCER_VERSION.match(self.version).groups()[:2]  # type: ignore[union-attr]
        return int(major), int(minor)


@dataclass(frozen=True)
class MonitoringSpec:
    exporters: bool = False
    """Run pgbouncer_exporter and postgres_exporter with the stack (local and Docker targets)."""
    pgbouncer_exporter_port: int = 9127
    """Port of pgbouncer_exporter's /metrics on 127.0.0.1; with N PgBouncer processes, one
    exporter per process on this port and the N - 1 above it."""
    postgres_exporter_port: int = 9187
    """Port of postgres_exporter's /metrics on 127.0.0.1."""


@dataclass(frozen=True)
class TlsSpec:
    names: tuple[str, ...] = ()
    """DNS names or IP addresses clients connect with: the URLs' host (the first) and the
    subjectAltNames a generated certificate carries."""
    ca_file: str | None = None
    """Where clients read the CA from (``sslrootcert`` in the URLs); default: the target's."""
    generation: int = 1
    """Bump it to re-issue the generated server certificate (same CA: clients keep working)."""
    certificate: str | Encrypted | None = None
    """``poolkit:tls_certificate``: your PEM certificate (chain); generated when absent."""
    key: str | Encrypted | None = None
    """``poolkit:tls_key``: its unencrypted PEM private key (a secret)."""
    ca: str | Encrypted | None = None
    """``poolkit:tls_ca``: the CA that issued it; absent means a public CA (system roots)."""

    @property
    def given(self) -> bool:
        """Whether the certificate comes from the stack's secrets rather than being generated."""
        return self.certificate is not None

    @property
    def has_ca(self) -> bool:
        """Whether clients get a CA file to verify with (generated, or given as tls_ca)."""
        return not self.given or self.ca is not None


@dataclass(frozen=True)
class DatabaseSpec:
    name: str = "app"
    app_user: str = "app"
    """Role the apps use through PgBouncer."""
    migrator_user: str = "migrator"
    """Owner of the database; used by the direct URL (migrations, session features)."""
    app_password: str | Encrypted | None = None
    migrator_password: str | Encrypted | None = None
    external_admin_password: str | Encrypted | None = None
    """Password of ``postgres.external.admin_user`` (a secret; or the environment)."""


@dataclass(frozen=True)
class BackupSpec:
    """pgBackRest: WAL archiving plus full/differential backups to one encrypted repository."""

    enabled: bool = False
    """Archive WAL and allow ``poolkit backup``/``restore``; the prod example turns it on."""
    repo: str = "posix"
    """posix (the local state dir's ``backups/``, or the Docker target's backup volume) | s3."""
    retention_full: int = 2
    """Full backups kept; older ones (and the WAL only they need) are expired."""
    retention_diff: int = 6
    """Differential backups kept."""
    full_schedule: str = "0 1 * * 0"
    """cron: when ``poolkit backup --type full`` runs (Sunday 01:00)."""
    diff_schedule: str = "0 1 * * 1-6"
    """cron: when ``poolkit backup --type diff`` runs (Monday to Saturday 01:00)."""
    archive_timeout: int = 60
    """Seconds after which a partly filled WAL segment is archived: the recovery point bound."""
    s3_bucket: str = ""
    s3_endpoint: str = ""
    """Host name (optionally host:port) of the S3 API, e.g. s3.eu-west-1.amazonaws.com."""
    s3_region: str = ""
    s3_key: str = ""
    """Access key id (not secret); the secret key is ``poolkit:backup_s3_key_secret``."""
    s3_path: str = "/poolkit"
    """Folder in the bucket."""
    s3_uri_style: str = "host"
    """host (virtual-hosted buckets) | path (MinIO and other S3-compatible servers)."""
    s3_verify_tls: bool = True
    """Verify the S3 server's certificate; false only for a test server on loopback."""
    s3_ca_file: str | None = None
    """Absolute path (on the machine that runs poolkit) of the PEM file of the CA that signed
    the S3 server's certificate, for a private CA; None: the system's trust store."""


@dataclass(frozen=True)
class AppSpec:
    name: str
    style: str
    """lambda (client reused while warm) | workers (connection per request)."""
    instances: int = 10
    """Peak concurrent instances of the function; sizes the pool."""
    connection_limit: int | None = None
    replicas: int = 1
    """Containers or processes the sample deployment runs (a sample, not the fleet)."""
    port: int = 8080
    """First host port; replica i listens on port + i."""
    runtime: str = "python"
    """python (apps/, psycopg) | node (apps/ts/, Prisma 7 + TypeScript)."""


@dataclass(frozen=True)
class KubernetesSpec:
    """The Kubernetes target (``poolkit:target: kubernetes``); the other targets ignore it."""

    namespace: str = ""
    """Namespace of every object; empty: ``poolkit-<stack>`` as a DNS label."""
    postgres_image: str = "poolkit-postgres:17"
    """images/postgres as the cluster pulls it: ``registry/repository:tag``."""
    pgbouncer_image: str = "poolkit-pgbouncer:1.24"
    """images/pgbouncer as the cluster pulls it."""
    app_image: str = "poolkit-app:latest"
    """images/app (the Python sample apps and the migration Job) as the cluster pulls it."""
    app_node_image: str = "poolkit-app-node:latest"
    """images/app-node (the ``runtime: node`` sample apps) as the cluster pulls it."""
    pgbouncer_service: str = "ClusterIP"
    """Type of PgBouncer's Service: ClusterIP (in the cluster only), LoadBalancer or NodePort
    (beyond the cluster: client TLS and ``poolkit:tls.names`` required)."""
    storage_bytes: int = 10 * GIB
    """Size of Postgres's volume claim (``storage: 10GiB``)."""
    storage_class: str | None = None
    """StorageClass of the claim; None: the cluster's default."""
    pod_networks: tuple[str, ...] = DEFAULT_POD_NETWORKS
    """Pod addresses pg_hba.conf admits (SCRAM still required; the NetworkPolicy admits only
    PgBouncer and the migration Job)."""


@dataclass(frozen=True)
class StackConfig:
    stack: str
    postgres: PostgresSpec = field(default_factory=PostgresSpec)
    pgbouncer: PgBouncerSpec = field(default_factory=PgBouncerSpec)
    database: DatabaseSpec = field(default_factory=DatabaseSpec)
    monitoring: MonitoringSpec = field(default_factory=MonitoringSpec)
    apps: tuple[AppSpec, ...] = ()
    tls: TlsSpec = field(default_factory=TlsSpec)
    target: str = "docker"
    """Where the Pulumi program deploys: docker | kubernetes."""
    kubernetes: KubernetesSpec = field(default_factory=KubernetesSpec)
    backup: BackupSpec = field(default_factory=BackupSpec)
    backup_s3_key_secret: str | Encrypted | None = None
    """``poolkit:backup_s3_key_secret``: the S3 repository's secret access key."""
    backup_passphrase: str | Encrypted | None = None
    """``poolkit:backup_passphrase``: the repository's cipher passphrase; None: generated."""
    warnings: tuple[str, ...] = ()

    @property
    def postgres_exposed(self) -> bool:
        """Postgres is published beyond loopback (then TLS-only, migrator only)."""
        return self.postgres.publish and self.postgres.publish_address not in LOOPBACK_ADDRESSES

    @property
    def postgres_tls(self) -> bool:
        """Postgres serves TLS: for PgBouncer (server_tls) or for its published port."""
        return self.pgbouncer.server_tls or self.postgres_exposed

    @property
    def uses_tls(self) -> bool:
        """Any server of the stack needs a certificate."""
        return self.pgbouncer.client_tls or self.postgres_tls


# --- field rules -------------------------------------------------------------------------------

Check = Callable[[Any], str | None]  # returns a complaint or None


@dataclass(frozen=True)
class Rule:
    """How one key is read: its type, its allowed values, and the fix to suggest."""

    kind: type | tuple[type, ...]
    fix: str
    check: Check | None = None
    convert: Callable[[Any], Any] | None = None
    optional: bool = False
    """None is an accepted value (the sizing derives it)."""


def _between(low: int, high: int) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}"


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _matches(pattern: re.Pattern[str], what: str) -> Check:
    return lambda v: None if pattern.match(v) else f"must be {what}"


_ABSOLUTE_FILE = _matches(re.compile(r"^/[^\0\n;#]*$"), "an absolute file path")
"""A file on the machine that runs poolkit (a CA file), named without ambiguity."""


def read_ca_file(path: str | None) -> str | None:
    """A CA file's PEM text (validated by ``ca_file_problem``), or None without one."""
    return Path(path).read_text(encoding="ascii") if path else None


def ca_file_problem(key: str, path: str | None, whose: str) -> Problem | None:
    """Why the CA file at ``path`` (the value of ``key``) is unusable: it cannot be read, or it
    holds no PEM certificate; None when fine or not given. ``whose``: whose CA it is."""
    if not path:
        return None
    try:
        text = read_ca_file(path) or ""
    except (OSError, UnicodeDecodeError) as error:
        return Problem(key, path, f"cannot be read ({type(error).__name__}: {error})",
                       f"give the path of the PEM file of {whose} CA")  # fmt: skip
    from cryptography import x509

    try:
        x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        return Problem(key, path, "holds no PEM certificate",
                       "give the CA certificate in PEM form (-----BEGIN CERTIFICATE-----)")
    return None


def _size_check(v: str) -> str | None:
    try:
        size = parse_size(v)
    except ValueError as error:
        return f"is {error}; write a size like 4GiB or 512MB"
    if not 256 * MIB <= size <= 4096 * GIB:
        return "must be between 256MiB and 4TiB"
    return None


def _pgbouncer_version_check(v: str) -> str | None:
    match = PGBOUNCER_VERSION.match(v)
    if not match:
        return "must look like 1.24 or 1.18.0"
    if tuple(int(x) for x in match.groups()[:2]) < MIN_PGBOUNCER:
        return "is older than 1.17, the oldest PgBouncer poolkit supports"
    return None


def _address_check(v: str) -> str | None:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return "must be an IP address of this host"
    return None


def _names_check(v: list[Any]) -> str | None:
    if not v:
        return "must list at least one name"
    for name in v:
        if not isinstance(name, str):
            return f"must hold names as text ({name!r} is not)"
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not DNS_NAME.match(name) or len(name) > 253:
                return f"holds {name!r}, which is neither a DNS name nor an IP address"
    if v[0].startswith("*."):
        return "must start with a name clients connect with, not a wildcard"
    return None


def _path_check(v: str) -> str | None:
    if not v or any(c in v for c in "\n\r\0?&#% "):
        return "must be a file path without spaces or ?&#%"
    return None


def _identifier(v: str) -> str | None:
    if not IDENTIFIER.match(v):
        return "must be a lower-case SQL identifier (letters, digits, _; max 63)"
    return None


PORT = Rule(int, "use a TCP port between 1024 and 65535", _between(1024, 65535))

POSTGRES_RULES: dict[str, Rule] = {
    "version": Rule(int, "use 15, 16 or 17 (unquoted)", _between(15, 17)),
    "memory": Rule(str, "write the host's memory like 4GiB or 512MB", _size_check),
    "cpus": Rule(int, "use the number of CPUs, 1 to 256", _between(1, 256)),
    "storage": Rule(str, "use ssd, hdd, san or nvme", _one_of("ssd", "hdd", "san", "nvme")),
    "workload": Rule(
        str, "use web, oltp, mixed, dw or desktop", _one_of("web", "oltp", "mixed", "dw", "desktop")
    ),
    "max_connections": Rule(int, "use 20 to 10000, or remove it to derive", _between(20, 10000),
                            optional=True),
    "port": PORT,
    "publish": Rule(bool, "use true or false"),
    "publish_address": Rule(str, "use an IP address: 127.0.0.1 (loopback), a host address, "
                            "or 0.0.0.0 (every interface)", _address_check),
}  # fmt: skip

EXTERNAL_RULES: dict[str, Rule] = {
    "host": Rule(str, "use the server's DNS name or IP address",
                 _matches(re.compile(r"^[A-Za-z0-9.:-]{1,253}$"), "a host name or IP address")),
    "port": Rule(int, "use the server's TCP port, 1 to 65535", _between(1, 65535)),
    "sslmode": Rule(str, "use verify-full (or verify-ca, require); traffic leaves the host",
                    _one_of(*SERVER_SSLMODES)),
    "ca_file": Rule(str, "give the absolute path of the PEM file of the CA that signed the "
                         "server's certificate", _ABSOLUTE_FILE, optional=True),
    "max_connections": Rule(int, "use the server's max_connections (20 to 100000), or remove it "
                                 "to read it from the server", _between(20, 100000),
                            optional=True),
    "admin_user": Rule(str, "name the role poolkit may create roles with (not a superuser)",
                       _identifier),
    "network": Rule(str, "name an existing Docker network the server is reachable on "
                         "(docker network ls), or remove the key",
                    _matches(DOCKER_NETWORK, "a Docker network name"), optional=True),
}  # fmt: skip
EXTERNAL_REQUIRED = ("host", "admin_user")

PGBOUNCER_RULES: dict[str, Rule] = {
    "version": Rule(str, 'quote the version, e.g. "1.24"', _pgbouncer_version_check),
    "pool_mode": Rule(
        str,
        "use transaction (or session, which keeps one server per client)",
        _one_of("transaction", "session"),
    ),
    "default_pool_size": Rule(int, "use 1 to 1000, or remove it to derive", _between(1, 1000),
                              optional=True),
    "reserve_pool_size": Rule(int, "use 0 to 1000, or remove it to derive", _between(0, 1000),
                              optional=True),
    "max_client_conn": Rule(int, "use 10 to 100000, or remove it to derive", _between(10, 100000),
                            optional=True),
    "max_prepared_statements": Rule(int, "use 0 to 10000, or remove it", _between(0, 10000),
                                    optional=True),
    "query_wait_timeout": Rule(int, "use seconds between 2 and 3600", _between(2, 3600)),
    "idle_transaction_timeout": Rule(int, "use seconds between 0 (off) and 86400",
                                     _between(0, 86400)),
    "port": PORT,
    "client_tls": Rule(bool, "use true or false"),
    "server_tls": Rule(bool, "use true or false"),
    "publish_address": Rule(str, "use an IP address: 127.0.0.1 (loopback), a host address, "
                            "or 0.0.0.0 (every interface, with client_tls)", _address_check),
    "processes": Rule(int, "use 1 to 64 processes per pooler host, or remove it to derive",
                      _between(1, 64), optional=True),
    "replicas": Rule(int, "use 1 to 256 pooler hosts", _between(1, 256)),
}  # fmt: skip

TLS_RULES: dict[str, Rule] = {
    "names": Rule(list, "list the DNS names or IP addresses clients connect with, "
                  "e.g. [db.example.com]", _names_check, convert=tuple),
    "ca_file": Rule(str, "give the path clients read the CA from, e.g. /var/task/ca.crt",
                    _path_check),
    "generation": Rule(int, "use a whole number; bump it to re-issue the certificate",
                       _between(1, 1_000_000)),
}  # fmt: skip

DATABASE_RULES: dict[str, Rule] = {
    "name": Rule(str, "use a lower-case identifier such as app", _identifier),
    "app_user": Rule(str, "use a lower-case identifier such as app", _identifier),
    "migrator_user": Rule(str, "use a lower-case identifier such as migrator", _identifier),
}

APP_RUNTIMES = ("python", "node")
"""Sample-app implementations: apps/ (psycopg) and apps/ts/ (Prisma 7 + TypeScript)."""

MONITORING_RULES: dict[str, Rule] = {
    "exporters": Rule(bool, "use true or false"),
    "pgbouncer_exporter_port": PORT,
    "postgres_exporter_port": PORT,
}

APP_RULES: dict[str, Rule] = {
    "name": Rule(str, "use lower-case letters, digits and -, starting with a letter",
                 _matches(APP_NAME, "a short lower-case name (letters, digits, -)")),
    "style": Rule(str, "use lambda or workers", _one_of("lambda", "workers")),
    "instances": Rule(int, "use the peak number of concurrent instances, 1 to 100000",
                      _between(1, 100000)),
    "connection_limit": Rule(int, "use 1 to 100, or remove it to derive", _between(1, 100),
                             optional=True),
    "replicas": Rule(int, "use 1 to 20 sample containers", _between(1, 20)),
    "port": PORT,
    "runtime": Rule(str, "use python or node", _one_of(*APP_RUNTIMES)),
}  # fmt: skip
APP_REQUIRED = ("name", "style")

_S3_TEXT_FIX = "use letters, digits and . _ : / - only"
def _cron_check(v: str) -> str | None:
    """Five fields that croniter (what poolkit-backup-scheduler runs) reads."""
    from croniter import croniter

    if not CRON.match(v):
        return "must be five cron fields separated by single spaces"
    return None if croniter.is_valid(v) else "is not a valid cron expression"


_CRON_CHECK = _cron_check
BACKUP_RULES: dict[str, Rule] = {
    "enabled": Rule(bool, "use true or false"),
    "repo": Rule(str, "use posix (a directory or volume) or s3", _one_of("posix", "s3")),
    "retention_full": Rule(int, "keep 1 to 100 full backups", _between(1, 100)),
    "retention_diff": Rule(int, "keep 1 to 100 differential backups", _between(1, 100)),
    "full_schedule": Rule(str, "write five cron fields, e.g. '0 1 * * 0'", _CRON_CHECK),
    "diff_schedule": Rule(str, "write five cron fields, e.g. '0 1 * * 1-6'", _CRON_CHECK),
    "archive_timeout": Rule(int, "use seconds between 1 and 3600 (60 bounds the loss to ~1 min)",
                            _between(1, 3600)),
    "s3_bucket": Rule(str, _S3_TEXT_FIX, _matches(S3_TEXT, "a bucket name")),
    "s3_endpoint": Rule(str, _S3_TEXT_FIX, _matches(S3_TEXT, "a host name or host:port")),
    "s3_region": Rule(str, _S3_TEXT_FIX, _matches(S3_TEXT, "a region name")),
    "s3_key": Rule(str, _S3_TEXT_FIX, _matches(S3_TEXT, "an access key id")),
    "s3_path": Rule(str, "use an absolute folder such as /poolkit",
                    _matches(re.compile(r"^/[A-Za-z0-9._/-]*$"), "an absolute folder")),
    "s3_uri_style": Rule(str, "use host or path", _one_of("host", "path")),
    "s3_verify_tls": Rule(bool, "use true or false (false only for a test server)"),
    "s3_ca_file": Rule(str, "give the absolute path of the PEM file of the CA that signed the "
                            "S3 server's certificate", _ABSOLUTE_FILE, optional=True),
}  # fmt: skip


def _volume_check(v: str) -> str | None:
    try:
        size = parse_size(v)
    except ValueError as error:
        return f"is {error}; write a size like 10GiB"
    return None if GIB <= size <= 64 * 1024 * GIB else "must be between 1GiB and 64TiB"


def _networks_check(v: list[Any]) -> str | None:
    if not v:
        return "must list at least one network"
    for item in v:
        try:
            ipaddress.ip_network(str(item))
        except ValueError:
            return f"holds {item!r}, which is not a network like 10.0.0.0/8"
    return None


def default_namespace(stack: str) -> str:
    """``poolkit-<stack>`` as a DNS label: other characters become ``-``, at most 63."""
    label = re.sub(r"[^a-z0-9-]+", "-", f"poolkit-{stack}".lower())[:63]
    return label.rstrip("-")


SERVICE_TYPES = ("ClusterIP", "LoadBalancer", "NodePort")
"""Types of PgBouncer's Service on the Kubernetes target; all but ClusterIP leave the cluster."""
IMAGE = Rule(str, "write registry/repository:tag as the cluster pulls it",
             _matches(IMAGE_REF, "an image reference in lower case (registry/repository:tag)"))
KUBERNETES_RULES: dict[str, Rule] = {
    "namespace": Rule(str, "use a DNS label: lower-case letters, digits and -",
                      _matches(K8S_NAME, "a DNS label (at most 63 characters)")),
    "postgres_image": IMAGE,
    "pgbouncer_image": IMAGE,
    "app_image": IMAGE,
    "app_node_image": IMAGE,
    "pgbouncer_service": Rule(str, "use ClusterIP (in the cluster), LoadBalancer or NodePort",
                              _one_of(*SERVICE_TYPES)),
    "storage": Rule(str, "write the volume size like 10GiB", _volume_check),
    "storage_class": Rule(str, "name a StorageClass of the cluster, or remove the key",
                          _matches(K8S_NAME, "a StorageClass name"), optional=True),
    "pod_networks": Rule(list, "list the cluster's pod networks, e.g. [10.0.0.0/8]",
                         _networks_check, convert=lambda v: tuple(str(x) for x in v)),
}  # fmt: skip


TYPE_NAMES: dict[Any, str] = {int: "a whole number", str: "text", bool: "true or false",
                              list: "a list"}


def _suggest(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}known keys: {', '.join(sorted(known))}"


def _read_section(
    where: str, raw: Any, rules: Mapping[str, Rule], problems: list[Problem]
) -> dict[str, Any]:
    """Check one mapping against its rules; return the valid, converted values."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(Problem(where, raw, "must be a mapping of keys", "indent keys under it"))
        return {}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{where}.{key}"
        rule = rules.get(key)
        if rule is None:
            hint = _suggest(str(key), list(rules))
            problems.append(Problem(path, value, "is not a known key", hint))
            continue
        if value is None and rule.optional:
            continue
        # bool is an int in Python; never let true pass as a number.
        wrong_type = not isinstance(value, rule.kind) or (
            isinstance(value, bool) and rule.kind is not bool
        )
        if wrong_type:
            expected = TYPE_NAMES.get(rule.kind, "value")
            problems.append(Problem(path, value, f"must be {expected}", rule.fix))
            continue
        complaint = rule.check(value) if rule.check else None
        if complaint:
            problems.append(Problem(path, value, complaint, rule.fix))
            continue
        values[key] = rule.convert(value) if rule.convert else value
    return values


PASSWORD_RULE = "at least 12 characters and no control characters (newline, tab, …)"


def password_problem(password: str) -> str | None:
    """Why ``password`` is refused, wherever it comes from (stack file or environment)."""
    if len(password) < 12 or any(ord(c) < 32 or ord(c) == 127 for c in password):
        return f"must have {PASSWORD_RULE}"
    return None


def _read_password(key: str, raw: Any, problems: list[Problem]) -> str | Encrypted | None:
    if raw is None:
        return None
    if isinstance(raw, Mapping) and set(raw) == {"secure"}:
        return Encrypted(str(raw["secure"]))
    if not isinstance(raw, str):
        problems.append(Problem(f"{NAMESPACE}:{key}", "***", "must be a string",
                                "set it with `pulumi config set --secret`"))
        return None
    complaint = password_problem(raw)
    if complaint:
        problems.append(Problem(f"{NAMESPACE}:{key}", "***", complaint,
                                "choose another password, or remove it to generate one"))
        return None
    return raw


def _read_pem(key: str, raw: Any, problems: list[Problem]) -> str | Encrypted | None:
    """A PEM secret (``tls_certificate``, ``tls_key``, ``tls_ca``); checked in depth by tls.py."""
    if raw is None:
        return None
    if isinstance(raw, Mapping) and set(raw) == {"secure"}:
        return Encrypted(str(raw["secure"]))
    if not isinstance(raw, str) or "-----BEGIN " not in raw:
        problems.append(Problem(f"{NAMESPACE}:{key}", "***", "must be PEM text (-----BEGIN …)",
                                f"pulumi config set --secret {NAMESPACE}:{key} < file.pem"))
        return None
    return raw


def _read_secret_line(key: str, raw: Any, problems: list[Problem]) -> str | Encrypted | None:
    if raw is None or (isinstance(raw, str) and raw and "\n" not in raw):
        return raw
    if isinstance(raw, Mapping) and set(raw) == {"secure"}:
        return Encrypted(str(raw["secure"]))
    problems.append(Problem(f"{NAMESPACE}:{key}", "***", "must be one line of text",
                            f"pulumi config set --secret {NAMESPACE}:{key} …"))
    return None


def _read_apps(raw: Any, problems: list[Problem]) -> tuple[AppSpec, ...]:
    where = f"{NAMESPACE}:apps"
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append(Problem(where, raw, "must be a list of apps", "write `- name: …` items"))
        return ()
    apps: list[AppSpec] = []
    next_port = 8080
    for index, item in enumerate(raw):
        path = f"{where}[{index}]"
        values = _read_section(path, item, APP_RULES, problems)
        if isinstance(item, Mapping):
            missing = [k for k in APP_REQUIRED if k not in item]
            for key in missing:
                problems.append(Problem(f"{path}.{key}", None, "is required", APP_RULES[key].fix))
        if not all(k in values for k in APP_REQUIRED):
            continue
        values.setdefault("port", next_port)
        app = AppSpec(**values)
        next_port = app.port + app.replicas
        apps.append(app)
    return tuple(apps)


def _read_external(raw: Any, problems: list[Problem]) -> ExternalPostgres | None:
    where = f"{NAMESPACE}:postgres.external"
    if raw is None:
        return None
    values = _read_section(where, raw, EXTERNAL_RULES, problems)
    if not isinstance(raw, Mapping):
        return None
    for key in EXTERNAL_REQUIRED:
        if key not in raw:
            problems.append(Problem(f"{where}.{key}", None, "is required",
                                    EXTERNAL_RULES[key].fix))  # fmt: skip
    if not all(k in values for k in EXTERNAL_REQUIRED):
        return None
    external = ExternalPostgres(**values)
    if external.verifies and not external.ca_file:
        problems.append(Problem(
            f"{where}.ca_file", None,
            f"is required: sslmode {external.sslmode} verifies the server's certificate against "
            "a CA",
            "give the path of the CA's PEM file (your provider publishes it), or use sslmode "
            "require (encrypted, but the server is not verified)",
        ))  # fmt: skip
    if external.admin_user in RESERVED_ROLES:
        problems.append(Problem(f"{where}.admin_user", external.admin_user,
                                "is a superuser or a role poolkit reserves for itself",
                                "create a role with CREATEROLE for poolkit, e.g. "
                                "poolkit_admin"))  # fmt: skip
    return external


def _cross_checks(stack: StackConfig, problems: list[Problem]) -> None:
    """Rules between fields: names, ports, version-gated parameters."""
    db, bouncer = stack.database, stack.pgbouncer
    ns = NAMESPACE
    for key in ("app_user", "migrator_user"):
        if getattr(db, key) in RESERVED_ROLES:
            problems.append(Problem(f"{ns}:database.{key}", getattr(db, key),
                                    "is a role poolkit reserves for itself",
                                    "choose another name"))  # fmt: skip
    if db.app_user == db.migrator_user:
        problems.append(Problem(f"{ns}:database.migrator_user", db.migrator_user,
                                "must differ from app_user",
                                "give the owner role its own name, e.g. migrator"))  # fmt: skip
    if db.name in RESERVED_DATABASES:
        problems.append(Problem(f"{ns}:database.name", db.name, "is a reserved database name",
                                "choose another name, e.g. app"))  # fmt: skip
    if bouncer.max_prepared_statements and bouncer.version_tuple < (1, 21):
        problems.append(Problem(
            f"{ns}:pgbouncer.max_prepared_statements", bouncer.max_prepared_statements,
            f"is not supported by PgBouncer {bouncer.version} (needs 1.21 or newer)",
            "remove it, or use PgBouncer 1.21+",
        ))  # fmt: skip
    if (bouncer.processes or 1) > 1 and bouncer.version_tuple < PEERING_SINCE:
        problems.append(Problem(
            f"{ns}:pgbouncer.processes", bouncer.processes,
            f"needs PgBouncer 1.19 or newer to peer the processes (got {bouncer.version}): "
            "without peer_id a cancel request may reach a process that does not own the query",
            "use PgBouncer 1.19+ (./scripts/bootstrap builds one), or set processes: 1",
        ))  # fmt: skip

    external = stack.postgres.external
    if external and external.admin_user in (db.app_user, db.migrator_user):
        problems.append(Problem(f"{ns}:postgres.external.admin_user", external.admin_user,
                                "must differ from the app and migrator roles poolkit creates",
                                "give poolkit's admin role its own name"))  # fmt: skip
    if external and stack.postgres.max_connections:
        problems.append(Problem(f"{ns}:postgres.max_connections", stack.postgres.max_connections,
                                "cannot be set for an external Postgres",
                                "put the server's value in poolkit:postgres.external."
                                "max_connections, or remove it to read it"))  # fmt: skip
    if external and stack.postgres.publish:
        problems.append(Problem(f"{ns}:postgres.publish", True,
                                "has no meaning for an external Postgres: the kit runs none to "
                                "publish", "remove it; DIRECT_URL names the external server"))

    _exposure_checks(stack, problems)

    seen_names: set[str] = set()
    taken: dict[int, str] = {} if external else {stack.postgres.port: f"{ns}:postgres.port"}
    if bouncer.port in taken:
        problems.append(Problem(f"{ns}:pgbouncer.port", bouncer.port,
                                "clashes with poolkit:postgres.port",
                                "give PgBouncer its own port, e.g. 6432"))  # fmt: skip
    taken[bouncer.port] = f"{ns}:pgbouncer.port"
    if stack.monitoring.exporters:
        # One pgbouncer_exporter per PgBouncer process: base, base + 1, ... (metrics.py); a
        # derived process count (sizing) is not known here, so its largest is kept free.
        processes = stack.pgbouncer.processes or MAX_DEFAULT_PROCESSES
        for key, count in (("pgbouncer_exporter_port", processes), ("postgres_exporter_port", 1)):
            base = getattr(stack.monitoring, key)
            for port in range(base, base + count):
                clash = taken.get(port) if port <= 65535 else "the end of the port range"
                if clash:
                    needs = f"needs port {port}, which {clash} uses" if count > 1 else (
                        f"clashes with {clash}")  # fmt: skip
                    problems.append(Problem(f"{ns}:monitoring.{key}", base, needs,
                                            "give each exporter its own port (pgbouncer_exporter: "
                                            "one per PgBouncer process, "
                                            f"{MAX_DEFAULT_PROCESSES} kept free unless "
                                            "pgbouncer.processes is set)"))  # fmt: skip
                    break
                taken[port] = f"{ns}:monitoring.{key}"
    for index, app in enumerate(stack.apps):
        path = f"{ns}:apps[{index}]"
        if app.name in seen_names:
            problems.append(Problem(f"{path}.name", app.name, "is used by another app",
                                    "give each app a unique name"))  # fmt: skip
        seen_names.add(app.name)
        if app.replicas > app.instances:
            problems.append(Problem(f"{path}.replicas", app.replicas,
                                    f"is more than instances ({app.instances})",
                                    "lower replicas or raise instances"))  # fmt: skip
        for port in range(app.port, app.port + app.replicas):
            if port in taken:
                problems.append(Problem(f"{path}.port", app.port,
                                        f"needs port {port}, which {taken[port]} uses",
                                        "move the app to a free port range"))  # fmt: skip
                break
            if port > 65535:
                problems.append(Problem(f"{path}.port", app.port,
                                        "leaves no room for its replicas below 65536",
                                        "choose a lower port"))  # fmt: skip
                break
            taken[port] = f"{path}.port"


def _exposure_checks(stack: StackConfig, problems: list[Problem]) -> None:
    """Nothing leaves loopback without TLS; a certificate needs the names clients use."""
    ns, bouncer, postgres, tls = NAMESPACE, stack.pgbouncer, stack.postgres, stack.tls
    if bouncer.publish_address not in LOOPBACK_ADDRESSES and not bouncer.client_tls:
        problems.append(Problem(
            f"{ns}:pgbouncer.publish_address", bouncer.publish_address,
            "publishes PgBouncer beyond 127.0.0.1 without TLS",
            f"set {ns}:pgbouncer.client_tls: true (client_tls_sslmode = require), "
            "or publish on 127.0.0.1",
        ))  # fmt: skip
    if stack.postgres_exposed and not bouncer.server_tls:
        problems.append(Problem(
            f"{ns}:postgres.publish_address", postgres.publish_address,
            "publishes Postgres beyond 127.0.0.1, where it takes TLS only, but PgBouncer "
            "reaches it without TLS",
            f"set {ns}:pgbouncer.server_tls: true, or publish Postgres on 127.0.0.1",
        ))  # fmt: skip
    if postgres.publish_address not in LOOPBACK_ADDRESSES and not postgres.publish:
        problems.append(Problem(
            f"{ns}:postgres.publish_address", postgres.publish_address,
            f"has no effect while {ns}:postgres.publish is false",
            f"set {ns}:postgres.publish: true, or remove publish_address",
        ))  # fmt: skip
    wildcards = [(f"{ns}:{section}.publish_address", address)
                 for section, address, used in (
                     ("pgbouncer", bouncer.publish_address, True),
                     ("postgres", postgres.publish_address, postgres.publish))
                 if used and address in WILDCARD_ADDRESSES]  # fmt: skip
    if wildcards and not tls.names:
        key, address = wildcards[0]
        problems.append(Problem(
            f"{ns}:tls.names", [], f"is empty while {key} is {address} (every interface)",
            "list the DNS names clients connect with, e.g. [db.example.com]: URLs use the first "
            "and verify-full checks the certificate against it",
        ))  # fmt: skip
    given = {key: getattr(tls, key.removeprefix("tls_")) for key in TLS_SECRET_KEYS}
    if given["tls_key"] is not None and given["tls_certificate"] is None:
        problems.append(Problem(f"{ns}:tls_key", "***", "is set without tls_certificate",
                                f"set {ns}:tls_certificate too, or remove tls_key"))  # fmt: skip
    if given["tls_certificate"] is not None and given["tls_key"] is None:
        problems.append(Problem(f"{ns}:tls_certificate", "(PEM)", "is set without tls_key",
                                f"pulumi config set --secret {ns}:tls_key < server.key"))
    if given["tls_ca"] is not None and given["tls_certificate"] is None:
        problems.append(Problem(f"{ns}:tls_ca", "(PEM)", "is set without tls_certificate",
                                "remove it: a generated certificate comes with its own CA"))


def _backup_checks(stack: StackConfig, problems: list[Problem]) -> None:
    """An S3 repository needs its bucket, endpoint, region and both keys."""
    backup, where = stack.backup, f"{NAMESPACE}:backup"
    if backup.enabled and stack.target == "kubernetes":
        problems.append(Problem(f"{where}.enabled", True, "is not supported by the Kubernetes "
                                "target yet", "use the docker or local target for backups, or "
                                "remove poolkit:backup"))  # fmt: skip
    if backup.enabled and stack.postgres.external:
        problems.append(Problem(f"{where}.enabled", True, "cannot back up an external Postgres "
                                "(poolkit does not run it, so it cannot archive its WAL)",
                                "back it up where it runs, or remove poolkit:backup"))
    _s3_ca_checks(backup, problems)
    if not (backup.enabled and backup.repo == "s3"):
        return
    for key in ("s3_bucket", "s3_endpoint", "s3_region", "s3_key"):
        if not getattr(backup, key):
            problems.append(Problem(f"{where}.{key}", "", "is required when repo is s3",
                                    f"set {where}.{key}, or use repo: posix"))  # fmt: skip
    if stack.backup_s3_key_secret is None and not os.environ.get(S3_SECRET_ENV):
        problems.append(Problem(
            f"{NAMESPACE}:{S3_SECRET_KEY}", None, "is required when backup.repo is s3",
            f"pulumi config set --secret {NAMESPACE}:{S3_SECRET_KEY} …, or export "
            f"{S3_SECRET_ENV} (local target)",
        ))  # fmt: skip


def _s3_ca_checks(backup: BackupSpec, problems: list[Problem]) -> None:
    """``s3_ca_file`` verifies an S3 server: only with repo s3 and verification on, and a
    readable PEM file."""
    key = f"{NAMESPACE}:backup.s3_ca_file"
    if not backup.s3_ca_file:
        return
    if backup.repo != "s3":
        problems.append(Problem(key, backup.s3_ca_file, f"is set but repo is {backup.repo}: "
                                "only an S3 repository is reached over TLS",
                                "remove s3_ca_file, or use repo: s3"))  # fmt: skip
        return
    if not backup.s3_verify_tls:
        problems.append(Problem(key, backup.s3_ca_file, "is set but s3_verify_tls is false, so "
                                "the S3 server's certificate would not be checked against it",
                                "remove s3_verify_tls: false (the CA file is what makes "
                                "verification pass), or remove s3_ca_file"))  # fmt: skip
    problem = ca_file_problem(key, backup.s3_ca_file, "the S3 server's")
    if problem:
        problems.append(problem)


def _warnings(stack: StackConfig) -> tuple[str, ...]:
    warnings = []
    if stack.pgbouncer.pool_mode == "session":
        warnings.append("poolkit:pgbouncer.pool_mode is session: every client holds a server "
                        "connection for its whole session, so a serverless burst is not pooled.")
    if (stack.tls.names or stack.tls.given) and not stack.uses_tls:
        warnings.append("poolkit:tls is set but no server uses TLS: set "
                        "poolkit:pgbouncer.client_tls (or server_tls) to use it.")
    return tuple(warnings)


SECTIONS = {"postgres": POSTGRES_RULES, "pgbouncer": PGBOUNCER_RULES, "database": DATABASE_RULES,
            "tls": TLS_RULES, "kubernetes": KUBERNETES_RULES, "backup": BACKUP_RULES,
            "monitoring": MONITORING_RULES}
TOP_LEVEL = (*SECTIONS, "apps", "target", *PASSWORD_ENV, *TLS_SECRET_KEYS, S3_SECRET_KEY,
             PASSPHRASE_KEY)


def parse_stack(raw: Mapping[str, Any] | None, stack: str) -> StackConfig:
    """Validate the ``config:`` mapping of a stack file; raise ConfigError listing every problem.

    Keys outside the ``poolkit:`` namespace (provider settings such as ``docker:host``) are left
    alone; keys without a namespace belong to the project, as in Pulumi.
    """
    problems = stack_name_problems(stack)
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError([*problems, Problem("config", raw, "must be a mapping",
                                              "write `config:` keys")])  # fmt: skip
    ours: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        namespace, _, name = str(key).rpartition(":")
        if namespace in ("", NAMESPACE):
            if name not in TOP_LEVEL:
                problems.append(Problem(f"{NAMESPACE}:{name}", value, "is not a known key",
                                        _suggest(name, TOP_LEVEL)))  # fmt: skip
            ours[name] = value

    raw_postgres = ours.get("postgres")
    external_raw = None
    if isinstance(raw_postgres, Mapping) and "external" in raw_postgres:
        external_raw = raw_postgres["external"]
        ours["postgres"] = {k: v for k, v in raw_postgres.items() if k != "external"}
    sections = {
        name: _read_section(f"{NAMESPACE}:{name}", ours.get(name), rules, problems)
        for name, rules in SECTIONS.items()
    }
    external = _read_external(external_raw, problems)
    if external:
        sections["postgres"]["external"] = external
    if "memory" in sections["postgres"]:
        sections["postgres"]["memory_bytes"] = parse_size(sections["postgres"].pop("memory"))
    kubernetes = sections["kubernetes"]
    if "storage" in kubernetes:
        kubernetes["storage_bytes"] = parse_size(kubernetes.pop("storage"))
    kubernetes.setdefault("namespace", default_namespace(stack))
    target = ours.get("target", "docker")
    if target not in TARGETS:
        problems.append(Problem(f"{NAMESPACE}:target", target,
                                f"must be one of {', '.join(TARGETS)}",
                                "use docker (the default) or kubernetes"))  # fmt: skip
    passwords = {key: _read_password(key, ours.get(key), problems) for key in PASSWORD_ENV}
    pems = {key.removeprefix("tls_"): _read_pem(key, ours.get(key), problems)
            for key in TLS_SECRET_KEYS}
    s3_secret = _read_secret_line(S3_SECRET_KEY, ours.get(S3_SECRET_KEY), problems)
    passphrase = _read_secret_line(PASSPHRASE_KEY, ours.get(PASSPHRASE_KEY), problems)
    apps = _read_apps(ours.get("apps"), problems)
    if problems:
        raise ConfigError(problems)

    config = StackConfig(
        stack=stack,
        postgres=PostgresSpec(**sections["postgres"]),
        pgbouncer=PgBouncerSpec(**sections["pgbouncer"]),
        database=DatabaseSpec(**sections["database"], **passwords),
        monitoring=MonitoringSpec(**sections["monitoring"]),
        apps=apps,
        tls=TlsSpec(**sections["tls"], **pems),
        target=target,
        kubernetes=KubernetesSpec(**kubernetes),
        backup=BackupSpec(**sections["backup"]),
        backup_s3_key_secret=s3_secret,
        backup_passphrase=passphrase,
    )
    _cross_checks(config, problems)
    _backup_checks(config, problems)
    if problems:
        raise ConfigError(problems)
    return StackConfig(**{**config.__dict__, "warnings": _warnings(config)})


def stack_name_problems(stack: str) -> list[Problem]:
    """The problem with ``stack`` as a stack name, if any (a list, to join the file's others)."""
    if STACK_NAME.match(stack):
        return []
    return [Problem("stack", stack, "is not a valid stack name", STACK_NAME_FIX)]


def stack_path(root: Path, stack: str) -> Path:
    """Where the settings file of ``stack`` lives in a project root."""
    return root / f"Pulumi.{stack}.yaml"


def stack_name_of(path: Path) -> str:
    """``Pulumi.dev.yaml`` -> ``dev``; any other file name -> its stem."""
    name = path.name
    if name.startswith("Pulumi.") and name.endswith((".yaml", ".yml")):
        return name.split(".", 1)[1].rsplit(".", 1)[0]
    return path.stem


def load_stack(path: Path, stack: str | None = None) -> StackConfig:
    """Read and validate a stack settings file."""
    where = str(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([Problem(
            "--stack-file", where, "does not exist",
            "create it, or pass --stack NAME for Pulumi.NAME.yaml in the project root",
        )]) from None  # fmt: skip
    except yaml.YAMLError as error:
        raise ConfigError([*stack_name_problems(stack or stack_name_of(path)),
                           Problem("--stack-file", where, f"is not valid YAML: {error}",
                                   "fix the YAML syntax")]) from None  # fmt: skip
    if document is None:
        document = {}
    if not isinstance(document, Mapping) or not isinstance(document.get("config", {}), Mapping):
        raise ConfigError([
            *stack_name_problems(stack or stack_name_of(path)),
            Problem("config", where, "must be a mapping under `config:`",
                    "start the file with `config:` and indent keys under it"),
        ])  # fmt: skip
    return parse_stack(document.get("config") or {}, stack or stack_name_of(path))


def password_from_env(key: str) -> str | None:
    """The password the user exported for ``key`` (``app_password``), if any, checked."""
    name = PASSWORD_ENV[key]
    password = os.environ.get(name) or None
    complaint = password and password_problem(password)
    if complaint:
        raise ConfigError([Problem(f"{name} (environment)", "***", complaint,
                                   f"export another {name}, or unset it to generate one")])
    return password
