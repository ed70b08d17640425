"""A stack's credentials as Pulumi resources: passwords (given or generated) and SCRAM salts.

Shared by every target's environment component. Every random value is a resource, never made
inside ``apply``: a resource made in a callback is invisible to preview and made anew each run.
Kept in the stack's state, the salts make every render of the verifiers byte-stable.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_random as random

from poolkit import scram
from poolkit.config import StackConfig
from poolkit.secrets import (
    ADMIN_USER,
    MONITOR_USER,
    STATS_USER,
    Credential,
    Secrets,
    iterations_for,
)

PASSWORD_LENGTH = 32
"""Generated passwords: 32 letters and digits (about 190 bits), nothing to escape in a URL."""


def stack_credentials(
    parent: pulumi.Resource, name: str, stack: StackConfig, superuser: str,
    app_password: pulumi.Input[str] | None, migrator_password: pulumi.Input[str] | None,
    *, backup_s3_key_secret: pulumi.Input[str] | None = None,
    backup_passphrase: pulumi.Input[str] | None = None,
) -> pulumi.Output[Secrets]:  # fmt: skip
    """Credentials of every role; ``app_password``/``migrator_password`` None: generated.

    With ``poolkit:monitoring.exporters``: ``poolkit_monitor``, postgres_exporter's role.
    With ``poolkit:backup``: the repository's cipher passphrase (``backup_passphrase``, from the
    stack's config, else generated once and kept in state; only ever uploaded) and, for an S3
    repository, its secret key.
    """
    child = pulumi.ResourceOptions(parent=parent)
    db = stack.database
    users = {
        "superuser": superuser,
        "migrator": db.migrator_user,
        "app": db.app_user,
        "pgbouncer_admin": ADMIN_USER,
        "pgbouncer_stats": STATS_USER,
    }
    if stack.monitoring.exporters:  # postgres_exporter's login (pg_monitor)
        users["monitor"] = MONITOR_USER
    given = {"app": app_password, "migrator": migrator_password}
    parts: dict[str, pulumi.Output[list[str]]] = {}
    for role in users:
        label = role.replace("_", "-")
        password = given.get(role)
        if password is None:
            password = random.RandomPassword(
                f"{name}-{label}-password", length=PASSWORD_LENGTH, special=False, opts=child
            ).result
        salt = random.RandomId(
            f"{name}-{label}-salt", byte_length=scram.SALT_BYTES, opts=child
        ).b64_std
        parts[role] = pulumi.Output.all(password, salt)
    generated = {role for role in users if given.get(role) is None}
    extras: dict[str, pulumi.Input[str]] = {}
    if stack.backup.enabled:
        extras["backup_passphrase"] = backup_passphrase or random.RandomPassword(
            f"{name}-backup-passphrase", length=64, special=False, opts=child
        ).result
        if stack.backup.repo == "s3" and backup_s3_key_secret is not None:
            extras["backup_s3_key_secret"] = backup_s3_key_secret

    def build(values: dict[str, Any]) -> Secrets:
        return Secrets(**{
            role: Credential(user=users[role], password=values[role][0], salt=values[role][1],
                             iterations=iterations_for(generated=role in generated,
                                                       user=users[role]))
            for role in users
        }, **{key: value for key, value in values.items() if key not in users})  # fmt: skip

    return pulumi.Output.secret(pulumi.Output.all(**parts, **extras).apply(build))
