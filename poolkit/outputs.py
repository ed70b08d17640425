"""Stack output keys of the Pulumi program, shared by ``poolkit env``, ``poolkit up`` and tests.

Plain names only: the program imports this module, so it must not pull in the CLI (click).
"""

from __future__ import annotations


class Outputs:
    """Stack output keys of ``__main__.py``."""

    DIRECT_URL = "direct_url"
    """Postgres as the owner role: migrations, LISTEN/NOTIFY, advisory locks (secret)."""
    POOLED_URL = "pooled_url"
    """PgBouncer, libpq-clean (``DATABASE_URL``; secret)."""
    POOLED_LIBPQ_URL = "pooled_libpq_url"
    """The same URL under the sample apps' name (``POOLED_DATABASE_URL``; secret)."""
    ENV_FILE = "env_file"
    """The ``.env`` text for the host (secret); ``poolkit env`` writes it to ``.env.<stack>``."""
    NETWORK_ENV_FILE = "network_env_file"
    """The same ``.env`` for a container on the stack's network: hosts ``postgres`` and
    ``pgbouncer`` on their internal ports (secret)."""
    SECRET = (DIRECT_URL, POOLED_URL, POOLED_LIBPQ_URL, ENV_FILE, NETWORK_ENV_FILE)

    POSTGRES_PORT = "postgres_port"
    """Host port of Postgres on 127.0.0.1, or null when the stack does not publish it."""
    EXTERNAL_POSTGRES = "external_postgres"
    """``host:port`` of an external Postgres (``postgres.external``), which the host reaches;
    null when the stack runs its own."""
    PGBOUNCER_PORT = "pgbouncer_port"
    APP_PORTS = "app_ports"
    """App name -> host ports of its replicas."""
    VERSIONS = "versions"
    """``{"postgres": 17, "pgbouncer": "1.24"}``: what the images install and run."""
    PLAN = "plan"
    """The sizing plan, as ``poolkit plan --json`` prints it."""
    CONTAINERS = "containers"
    """Container names: postgres, pgbouncer, app name -> replica names, and exporter name ->
    container (``exporters``, empty without ``poolkit:monitoring.exporters``)."""
    EXPORTER_PORTS = "exporter_ports"
    """Exporter name -> its /metrics port on 127.0.0.1 (empty without exporters)."""
    NETWORK = "network"
    """Name of the stack's private Docker network (in-network smoke checks join it)."""
    TLS_CA = "tls_ca"
    """PEM of the CA the ``.env`` URLs verify with (public), or null without TLS."""
    NAMESPACE = "namespace"
    """Kubernetes target: the namespace of every object."""
    OBJECTS = "objects"
    """Kubernetes target: ``Kind/name`` of every object, in apply order."""
    TLS_CA_FILE = "tls_ca_file"
    """Where the ``.env`` URLs expect that CA on this host; ``poolkit env`` writes it there."""
