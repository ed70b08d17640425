"""The ``poolkit`` command: plan, render, and the targets' commands.

Exit codes: 0 success, 1 a check or a step failed, 2 bad input (stack config or arguments).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from poolkit import secrets as stack_secrets
from poolkit.config import ConfigError, StackConfig, load_stack, stack_path
from poolkit.envfile import write_private
from poolkit.layouts import docker_layout
from poolkit.render import is_private, render_all
from poolkit.sizing import Plan, plan

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def project_root(start: Path | None = None) -> Path:
    """The nearest folder holding ``Pulumi.yaml``, from the working directory up; else cwd."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "Pulumi.yaml").is_file():
            return folder
    return here


class BadInput(click.ClickException):
    """Invalid stack config or arguments: message on stderr, exit code 2."""

    exit_code = EXIT_BAD_INPUT


def config_error(error: ConfigError) -> BadInput:
    count = len(error.problems)
    lines = "\n".join(f"  - {problem}" for problem in error.problems)
    return BadInput(f"invalid stack config ({count} problem{'s' * (count != 1)}):\n{lines}")


def stack_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--stack NAME | --stack-file PATH`` and pass the validated ``stack`` instead."""

    @click.option("--stack", "stack_name", metavar="NAME",
                  help="Stack NAME: reads Pulumi.NAME.yaml in the project root.")
    @click.option("--stack-file", type=click.Path(path_type=Path, dir_okay=False),
                  help="Any stack settings file (the Pulumi.<stack>.yaml format).")
    @functools.wraps(command)
    def wrapper(stack_name: str | None, stack_file: Path | None, **kwargs: Any) -> Any:
        kwargs["stack"] = load_stack_option(stack_name, stack_file)
        return command(**kwargs)

    return wrapper  # fmt: skip


def load_stack_option(stack_name: str | None, stack_file: Path | None) -> StackConfig:
    if bool(stack_name) == bool(stack_file):
        raise BadInput("give exactly one of --stack NAME or --stack-file PATH")
    if stack_name:
        root = project_root()
        path = stack_path(root, stack_name)
        if not path.is_file():
            known = sorted(p.name.split(".")[1] for p in root.glob("Pulumi.*.yaml"))
            raise BadInput(
                f"--stack {stack_name}: {path.name} does not exist in {root}. "
                f"Fix: use one of {', '.join(known) or 'no stacks yet'}, or create {path.name}"
            )
    else:
        path = stack_file  # type: ignore[assignment]
    try:
        return load_stack(path, stack_name)
    except ConfigError as error:
        raise config_error(error) from None


def plan_or_exit(stack: StackConfig) -> Plan:
    try:
        return plan(stack)
    except ConfigError as error:
        raise config_error(error) from None


def warn(stack: StackConfig) -> None:
    for warning in stack.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="poolkit")
def main() -> None:
    """PgBouncer in transaction mode in front of Postgres, sized for serverless apps."""


@main.command("plan")
@stack_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan_command(stack: StackConfig, as_json: bool) -> None:
    """Show the sizing plan: Postgres settings, PgBouncer pool, per-app connection limits."""
    warn(stack)
    result = plan_or_exit(stack)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    for title, settings in (("postgres", result.postgres), ("pgbouncer", result.pgbouncer)):
        click.secho(f"[{title}]", bold=True)
        for setting in settings:
            click.echo(f"  {setting.name} = {setting.value}")
            click.secho(f"      {setting.why}", dim=True)
    why = result.as_dict()["why"]
    for app in result.apps:
        click.secho(f"[app {app.name}] {app.style}, {app.instances} instances", bold=True)
        click.echo(f"  connection_limit = {app.connection_limit}")
        click.secho(f"      {why[f'apps.{app.name}.connection_limit']}", dim=True)


@main.command("render")
@stack_options
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder for the rendered files (created if missing).")
def render_command(stack: StackConfig, out: Path) -> None:
    """Write every rendered file for the Docker target; files with secrets get mode 0600.

    Passwords come from POOLKIT_APP_PASSWORD / POOLKIT_MIGRATOR_PASSWORD or are generated
    once and kept in OUT/secrets.json (0600), so rendering again is byte-stable.
    """  # fmt: skip
    warn(stack)
    result = plan_or_exit(stack)
    secrets_file = out / "secrets.json"
    try:
        credentials = stack_secrets.resolve(stack, "postgres", stack_secrets.load(secrets_file))
    except ConfigError as error:
        raise config_error(error) from None
    stack_secrets.save(secrets_file, credentials)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render_all(stack, result, credentials, docker_layout(stack)).items():
        path = out / name
        if is_private(name):
            write_private(path, text)
        else:
            path.write_text(text, encoding="utf-8")
        click.echo(f"wrote {path}{' (0600)' if is_private(name) else ''}")
