"""An external Postgres prepared by ``pulumi up``: a dynamic resource running external-init.sql.

``ExternalDatabase`` applies the kit's roles, database and grants (``external-init.sql``, the
file the local target applies) through the admin role, from the machine that runs Pulumi,
the one that also checked the server before any resource existed. The admin password never
enters the cluster. It runs on create and again when the SQL (a new password, salt or role) or
the connection changes; the SQL converges, so running it again is safe. Deleting the resource
leaves the roles and the database on the server (their data is the user's).

Its state keeps the connection and a digest of the SQL, not the SQL or the password (those
are secret inputs, encrypted in the state by Pulumi).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

from poolkit import external
from poolkit.config import ExternalPostgres, StackConfig
from poolkit.render import render_external_init_sql
from poolkit.secrets import Secrets

CONNECTION = ("host", "port", "sslmode", "admin_user", "ca_pem")


def _sql_digest(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


def _apply(props: dict[str, Any]) -> dict[str, Any]:
    """Run the SQL; the outputs to keep (no secret)."""
    server = ExternalPostgres(host=str(props["host"]), port=int(props["port"]),
                              sslmode=str(props["sslmode"]),
                              admin_user=str(props["admin_user"]))  # fmt: skip
    external.apply_init_sql(server, str(props["admin_password"]), str(props["init_sql"]),
                            str(props["ca_pem"]) or None)  # fmt: skip
    return {**{key: props[key] for key in CONNECTION},
            "init_sql_sha256": _sql_digest(str(props["init_sql"]))}  # fmt: skip


class ExternalDatabaseProvider(ResourceProvider):
    """Applies external-init.sql as the admin role (``poolkit.external.apply_init_sql``)."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = _apply(props)
        return CreateResult(f"{props['host']}:{int(props['port'])}", outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in CONNECTION if olds.get(key) != news.get(key)]
        if olds.get("init_sql_sha256") != _sql_digest(str(news.get("init_sql", ""))):
            changed.append("init_sql")
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(_apply(news))


class ExternalDatabase(Resource, module="poolkit", name="ExternalDatabase"):
    """The kit's roles, database and grants on an external Postgres."""

    init_sql_sha256: pulumi.Output[str]

    def __init__(
        self, name: str, server: ExternalPostgres, ca_pem: str | None,
        admin_password: pulumi.Input[str], init_sql: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ):  # fmt: skip
        super().__init__(ExternalDatabaseProvider(), name, {
            "host": server.host, "port": server.port, "sslmode": server.sslmode,
            "admin_user": server.admin_user, "ca_pem": ca_pem or "",
            "admin_password": pulumi.Output.secret(admin_password),
            "init_sql": pulumi.Output.secret(init_sql), "init_sql_sha256": None,
        }, opts)  # fmt: skip


def prepare_external(
    name: str, stack: StackConfig, ca_pem: str | None,
    admin_password: pulumi.Input[str] | None, secrets: pulumi.Output[Secrets],
    opts: pulumi.ResourceOptions,
) -> ExternalDatabase:  # fmt: skip
    """The stack's external Postgres prepared with its rendered ``external-init.sql``."""
    server = stack.postgres.external
    if server is None or admin_password is None:
        raise ValueError("an external Postgres needs its section and external_admin_password")
    return ExternalDatabase(name, server, ca_pem, admin_password,
                            secrets.apply(lambda s: render_external_init_sql(stack, s)),
                            opts=opts)  # fmt: skip
