"""poolkit's Pulumi program: stack config -> validated model and plan -> Environment -> outputs.

It computes nothing itself: ``poolkit.config`` validates the stack, ``poolkit.sizing`` sizes
it (both before any resource exists, so an invalid stack fails with nothing registered), and
the components in ``components/`` turn the rendered files into pulumi_docker resources.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any

import pulumi

from components import Environment, EnvironmentArgs
from poolkit.config import (
    NAMESPACE,
    PASSWORD_ENV,
    ConfigError,
    Problem,
    StackConfig,
    parse_stack,
)
from poolkit.pulumi_target import Outputs
from poolkit.sizing import plan as size

OBJECT_KEYS = ("postgres", "pgbouncer", "database", "apps")
PASSWORD_KEYS = tuple(PASSWORD_ENV)  # app_password, migrator_password


def stack_keys() -> list[str]:
    """Every ``poolkit:`` key the stack sets, so a misspelt one is reported, not ignored.

    The CLI hands config to the program in ``PULUMI_CONFIG``; the mock runtime of the tests
    sets it in ``pulumi.runtime.config``. Both are read.
    """
    keys = set(pulumi.runtime.config.CONFIG.get()) | set(pulumi.runtime.get_config_env())
    return sorted(k.split(":", 1)[1] for k in keys if k.startswith(f"{NAMESPACE}:"))


def is_secret(key: str) -> bool:
    full = f"{NAMESPACE}:{key}"
    return pulumi.runtime.is_config_secret(full) or full in (
        pulumi.runtime.get_config_secret_keys_env()
    )


def read_stack(config: pulumi.Config) -> StackConfig:
    """Validate the stack's config with the core model; raise RunError with every problem."""
    raw: dict[str, Any] = {}
    for key in stack_keys():
        if key in OBJECT_KEYS:
            value: Any = config.get_object(key)
        elif key in PASSWORD_KEYS:
            # Read here only to be validated; resources get them from get_secret below, and
            # the validated model drops them.
            value = config.get(key)
        elif is_secret(key):
            value = "(secret)"  # an unknown secret key: report the key, never its value
        else:
            value = config.get(key)
            with contextlib.suppress(ValueError):
                value = json.loads(value or "")  # as the stack file holds it
        raw[f"{NAMESPACE}:{key}"] = value
    try:
        stack = parse_stack(raw, pulumi.get_stack())
    except ConfigError as error:
        raise pulumi.RunError(f"invalid stack config:\n{error}") from error
    for key in PASSWORD_KEYS:
        if f"{NAMESPACE}:{key}" in raw and not is_secret(key):
            pulumi.log.warn(
                f"{NAMESPACE}:{key} is stored in clear text in the stack file; "
                f"set it with `pulumi config set --secret {NAMESPACE}:{key}`"
            )
    for warning in stack.warnings:
        pulumi.log.warn(warning)
    no_passwords = dataclasses.replace(stack.database, app_password=None, migrator_password=None)
    return dataclasses.replace(stack, database=no_passwords)


def refuse_unsupported(stack: StackConfig) -> None:
    """Settings the local target supports and this one does not yet, refused before any resource."""
    if stack.pgbouncer.client_tls:
        problem = Problem(
            f"{NAMESPACE}:pgbouncer.client_tls", True, "is not supported by the Docker target yet",
            "remove it (or set false) for Pulumi stacks; the local target supports it",
        )  # fmt: skip
        raise pulumi.RunError(f"invalid stack config:\n{problem}")


config = pulumi.Config(NAMESPACE)
stack = read_stack(config)
refuse_unsupported(stack)
try:
    plan = size(stack)
except ConfigError as error:
    raise pulumi.RunError(f"invalid stack config:\n{error}") from error

environment = Environment(NAMESPACE, EnvironmentArgs(
    stack=stack,
    plan=plan,
    app_password=config.get_secret("app_password"),
    migrator_password=config.get_secret("migrator_password"),
))  # fmt: skip

pulumi.export(Outputs.DIRECT_URL, environment.direct_url)
pulumi.export(Outputs.POOLED_URL, environment.pooled_url)
pulumi.export(Outputs.POOLED_LIBPQ_URL, environment.pooled_libpq_url)
pulumi.export(Outputs.ENV_FILE, environment.env_file)
pulumi.export(Outputs.POSTGRES_PORT, environment.postgres.published_port)
pulumi.export(Outputs.PGBOUNCER_PORT, environment.pgbouncer.published_port)
pulumi.export(Outputs.APP_PORTS, {app.app_name: app.published_ports for app in environment.apps})
pulumi.export(
    Outputs.VERSIONS, {"postgres": stack.postgres.version, "pgbouncer": stack.pgbouncer.version}
)
pulumi.export(Outputs.PLAN, plan.as_dict())
pulumi.export(Outputs.CONTAINERS, {
    "postgres": environment.postgres.container_name,
    "pgbouncer": environment.pgbouncer.container_name,
    "apps": {app.app_name: app.container_names for app in environment.apps},
})  # fmt: skip
pulumi.export(Outputs.NETWORK, environment.network.name)
