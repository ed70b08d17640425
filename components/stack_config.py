"""The stack's ``poolkit:`` config read from Pulumi, validated and sized by the core model.

``load_stack`` is all the program calls: every problem (a bad key, a value the model refuses,
a version the images cannot build) is raised at once as a ``pulumi.RunError`` before any
resource is registered. Passwords are read here only to be validated: resources take them from
``Config.get_secret``, and the returned model holds none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Self

import pulumi

from components.certificates import GivenTls
from poolkit import external, node_apps, tls
from poolkit.config import (
    NAMESPACE,
    PASSPHRASE_KEY,
    PASSWORD_ENV,
    S3_SECRET_KEY,
    TLS_SECRET_KEYS,
    ConfigError,
    Encrypted,
    StackConfig,
    parse_stack,
)
from poolkit.layouts import target_problems
from poolkit.sizing import Plan
from poolkit.sizing import plan as size

OBJECT_KEYS = ("postgres", "pgbouncer", "database", "apps", "tls", "kubernetes", "backup")
PASSWORD_KEYS = tuple(PASSWORD_ENV)  # app_password, migrator_password
SECRET_KEYS = (*PASSWORD_KEYS, *TLS_SECRET_KEYS, S3_SECRET_KEY)
"""Read only to be validated; resources take them from ``Config.get_secret``."""


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


def raw_config(config: pulumi.Config) -> dict[str, Any]:
    """``{"poolkit:key": value}`` as the stack file holds it; unknown secrets stay hidden."""
    raw: dict[str, Any] = {}
    for key in stack_keys():
        if key in OBJECT_KEYS:
            value: Any = config.get_object(key)
        elif key in SECRET_KEYS:
            value = config.get(key)
        elif is_secret(key):
            value = "(secret)"  # an unknown secret key: report the key, never its value
        else:
            value = config.get(key)
            with contextlib.suppress(ValueError):
                value = json.loads(value or "")
        raw[f"{NAMESPACE}:{key}"] = value
    return raw


def _refused(error: ConfigError) -> pulumi.RunError:
    return pulumi.RunError(f"invalid stack config:\n{error}")


def load_stack(config: pulumi.Config) -> tuple[StackConfig, Plan]:
    """The validated stack (without passwords) and its sizing plan; RunError lists every problem."""
    raw = raw_config(config)
    try:
        stack = parse_stack(raw, pulumi.get_stack())
        problems = target_problems(stack)
        if problems:
            raise ConfigError(problems)
        plan = size(stack)
    except ConfigError as error:
        raise _refused(error) from error
    if stack.tls.given:
        _check_given_certificate(stack)
    if stack.target != "kubernetes":  # a cluster pulls the node image from a registry
        ensure_node_build(stack)
    for key in SECRET_KEYS:
        if f"{NAMESPACE}:{key}" in raw and not is_secret(key):
            pulumi.log.warn(
                f"{NAMESPACE}:{key} is stored in clear text in the stack file; "
                f"set it with `pulumi config set --secret {NAMESPACE}:{key}`"
            )
    for warning in stack.warnings:
        pulumi.log.warn(warning)
    if stack.backup.enabled and f"{NAMESPACE}:{PASSPHRASE_KEY}" not in raw:
        pulumi.log.warn(
            f"{NAMESPACE}:{PASSPHRASE_KEY} is not set: the generated repository passphrase lives "
            "only in this stack's state, and after `pulumi destroy` the kept backup repository "
            "cannot be read; set it once with `pulumi config set --secret "
            f"{NAMESPACE}:{PASSPHRASE_KEY} \"$(openssl rand -base64 48)\"` (poolkit up "
            "--target pulumi does this for you)"
        )
    no_passwords = dataclasses.replace(stack.database, app_password=None, migrator_password=None,
                                       external_admin_password=None)
    # The PEMs stay in Pulumi's secrets; the model only keeps which of them were given.
    in_secrets = Encrypted("(a Pulumi stack secret)")
    pems = {field: in_secrets for field in ("certificate", "key", "ca")
            if getattr(stack.tls, field) is not None}  # fmt: skip
    tls_spec = dataclasses.replace(stack.tls, **pems)
    s3_secret = in_secrets if stack.backup_s3_key_secret is not None else None
    return dataclasses.replace(stack, database=no_passwords, tls=tls_spec,
                               backup_s3_key_secret=s3_secret), plan


ADMIN_PASSWORD_KEY = "external_admin_password"


def external_admin_password(config: pulumi.Config) -> pulumi.Output[str] | None:
    """The external Postgres admin role's password as a secret: the stack's
    ``poolkit:external_admin_password``, else ``POOLKIT_EXTERNAL_ADMIN_PASSWORD``."""
    given = config.get_secret(ADMIN_PASSWORD_KEY)
    if given is not None:
        return given
    from_env = os.environ.get(PASSWORD_ENV[ADMIN_PASSWORD_KEY])
    return pulumi.Output.secret(from_env) if from_env else None


def check_external(stack: StackConfig, plan: Plan, config: pulumi.Config) -> None:
    """What ``poolkit up`` checks on the local target, before any resource exists: the CA, then,
    connected as the admin role from this machine, its rights, the server's version and whether
    its max_connections holds the plan's budget. RunError lists every problem."""
    password = config.get(ADMIN_PASSWORD_KEY) or os.environ.get(PASSWORD_ENV[ADMIN_PASSWORD_KEY])
    try:
        external.check(stack, plan, password)
    except ConfigError as error:
        raise _refused(error) from error


def ensure_node_build(stack: StackConfig) -> None:
    """For ``runtime: node`` apps, build apps/ts and stage its image context (nothing when
    current), before any resource exists; RunError says what is missing."""
    if not any(app.runtime == "node" for app in stack.apps):
        return
    problem = node_apps.ensure_built(Path.cwd())
    if problem:
        raise pulumi.RunError(f"{NAMESPACE}:apps (runtime: node): {problem}")


def _check_given_certificate(stack: StackConfig) -> None:
    """The stack's own certificate, key and CA: usable for its names, or RunError (no PEM text)."""
    given = stack.tls
    problems = tls.check_given(str(given.certificate), str(given.key),
                               str(given.ca) if given.ca else None, given.names)  # fmt: skip
    if problems:
        raise pulumi.RunError("invalid stack config:\n" + "\n".join(
            f"  - {NAMESPACE}:{p}" for p in problems))  # fmt: skip


def given_tls(stack: StackConfig, config: pulumi.Config) -> GivenTls | None:
    """The stack's own certificate as secret inputs, or None to generate one."""
    if not stack.tls.given:
        return None
    return GivenTls(certificate=config.require_secret("tls_certificate"),
                    key=config.require_secret("tls_key"),
                    ca=config.get_secret("tls_ca"))  # fmt: skip


@dataclasses.dataclass
class TargetArgs:
    """What every target takes: the stack, its plan and the secrets of its config."""

    stack: StackConfig
    """The validated stack (``load_stack``); passwords are not read from it."""
    plan: Plan
    """Its sizing plan (``poolkit.sizing.plan``)."""
    app_password: pulumi.Input[str] | None = None
    """Password of the app role (``poolkit:app_password``, a secret); generated when None."""
    migrator_password: pulumi.Input[str] | None = None
    """Password of the owner role (``poolkit:migrator_password``); generated when None."""
    given_tls: GivenTls | None = None
    """The stack's own certificate (secrets); generated into the state when None."""
    external_admin_password: pulumi.Input[str] | None = None
    """``poolkit:external_admin_password``: required with ``postgres.external``."""

    @classmethod
    def from_config(
        cls, stack: StackConfig, plan: Plan, config: pulumi.Config, **target: Any
    ) -> Self:
        """The args of ``stack`` with its secrets from ``config``; ``target`` holds the
        target's own fields."""
        return cls(stack=stack, plan=plan,
                   app_password=config.get_secret("app_password"),
                   migrator_password=config.get_secret("migrator_password"),
                   given_tls=given_tls(stack, config),
                   external_admin_password=external_admin_password(config),
                   **target)  # fmt: skip
