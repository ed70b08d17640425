"""Commands on a stack's config and outputs, no process involved: plan, render, env."""

from __future__ import annotations

import json
from pathlib import Path

import click

from poolkit import secrets as stack_secrets
from poolkit.cli.errors import config_error, step_failed
from poolkit.cli.options import StackChoice, plan_or_exit, stack_options, warn
from poolkit.cli.output import echo, plan_lines, wrote
from poolkit.config import ConfigError, StackConfig
from poolkit.envfile import write_private
from poolkit.layouts import docker_layout, kubernetes_problems
from poolkit.manifests import is_secret_file, manifest_files
from poolkit.render import is_private, render_all
from poolkit.render_material import render_material


@click.command("plan")
@stack_options()
@click.option("--target", type=click.Choice(["pulumi", "local"]), default="pulumi",
              show_default=True,
              help="local: plan for the PostgreSQL and PgBouncer installed here, as `up` does; "
                   "pulumi: for the versions the stack declares (the Docker images).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan_command(stack: StackChoice, target: str, as_json: bool) -> None:
    """Show the sizing plan: Postgres settings, PgBouncer pool, per-app connection limits."""
    config = stack.config()
    warn(config)
    if target == "local":
        config = installed_versions(config)
    result = plan_or_exit(config)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        echo(plan_lines(result))


def installed_versions(config: StackConfig) -> StackConfig:
    """``config`` with this machine's server versions, detected as ``up --target local`` does."""
    from rich.console import Console

    from poolkit import local

    try:
        tools = local.detect_tools()
    except local.LocalError as error:
        raise step_failed(error) from None
    try:
        local.require_prepared_statements(tools)
    except local.LocalError as error:
        click.secho(f"warning: `up` refuses this PgBouncer: {error}", fg="yellow", err=True)
    return local.installed_stack(config, tools, local.Progress(Console(stderr=True)))


@click.command("render")
@stack_options()
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder for the rendered files (created if missing).")
@click.option("--target", type=click.Choice(["docker", "kubernetes"]), default=None,
              help="docker: the config files; kubernetes: the objects the Pulumi program "
                   "creates, one YAML file each. Default: the stack's poolkit:target.")  # fmt: skip
def render_command(stack: StackChoice, out: Path, target: str | None) -> None:
    """Write every rendered file for a target; files with secrets get mode 0600.

    Passwords come from POOLKIT_APP_PASSWORD / POOLKIT_MIGRATOR_PASSWORD or are generated
    once and kept in OUT/secrets.json (0600), so rendering again is byte-stable.
    """  # fmt: skip
    config = stack.config()
    warn(config)
    target = target or config.target
    problems = kubernetes_problems(config) if target == "kubernetes" else []
    if problems:
        raise config_error(ConfigError(problems))
    result = plan_or_exit(config)
    secrets_file = out / "secrets.json"
    try:
        credentials = stack_secrets.resolve(config, "postgres", stack_secrets.load(secrets_file))
    except ConfigError as error:
        raise config_error(error) from None
    stack_secrets.save(secrets_file, credentials)
    out.mkdir(parents=True, exist_ok=True)
    if target == "kubernetes":
        try:
            material = render_material(config, out)
        except ConfigError as error:
            raise config_error(error) from None
        files, private = manifest_files(config, result, credentials, material), is_secret_file
    else:
        files, private = render_all(config, result, credentials, docker_layout(config)), is_private
    for name, text in files.items():
        path = out / name
        if private(name):
            write_private(path, text)
        else:
            path.write_text(text, encoding="utf-8")
        click.echo(wrote(path, private(name)))


@click.command("env")
@stack_options()
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write (default: .env.<stack> in the project root).")
def env_command(stack: StackChoice, out: Path | None) -> None:
    """Write .env.<stack> (mode 0600) from the outputs of the deployed Pulumi stack.

    Runs `pulumi stack output --json --show-secrets`; needs the Pulumi CLI.
    """  # fmt: skip
    from poolkit import pulumi_target

    path = pulumi_target.write_env(stack.stack_name(), out=out)
    click.echo(wrote(path, private=True))
