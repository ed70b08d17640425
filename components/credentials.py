"""A stack's credentials as Pulumi resources: passwords (given or generated) and SCRAM salts.

Shared by every target's environment component. Every random value is a resource, never made
inside ``apply``: a resource made in a callback is invisible to preview and made anew each run.
Kept in the stack's state, the salts make every render of the verifiers byte-stable.
"""

from __future__ import annotations

import pulumi
import pulumi_random as random

from poolkit import scram
from poolkit.config import StackConfig
from poolkit.secrets import ADMIN_USER, STATS_USER, Credential, Secrets, iterations_for

PASSWORD_LENGTH = 32
"""Generated passwords: 32 letters and digits (about 190 bits), nothing to escape in a URL."""


def stack_credentials(
    parent: pulumi.Resource, name: str, stack: StackConfig, superuser: str,
    app_password: pulumi.Input[str] | None, migrator_password: pulumi.Input[str] | None,
) -> pulumi.Output[Secrets]:  # fmt: skip
    """Credentials of every role; ``app_password``/``migrator_password`` None: generated."""
    child = pulumi.ResourceOptions(parent=parent)
    db = stack.database
    users = {
        "superuser": superuser,
        "migrator": db.migrator_user,
        "app": db.app_user,
        "pgbouncer_admin": ADMIN_USER,
        "pgbouncer_stats": STATS_USER,
    }
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

    def build(values: dict[str, list[str]]) -> Secrets:
        return Secrets(**{
            role: Credential(user=users[role], password=password, salt=salt,
                             iterations=iterations_for(generated=role in generated))
            for role, (password, salt) in values.items()
        })  # fmt: skip

    return pulumi.Output.secret(pulumi.Output.all(**parts).apply(build))
