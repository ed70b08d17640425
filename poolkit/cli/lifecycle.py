"""A stack's life on the local target (up, down, status) and ``smoke`` for any target."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import click

from poolkit.cli.errors import EXIT_FAILED, BadInput, StepFailed, config_error, step_failed
from poolkit.cli.options import StackChoice, stack_options, warn
from poolkit.cli.output import echo, smoke_check_line, smoke_summary, status_lines, up_summary_lines
from poolkit.config import ConfigError, Problem
from poolkit.envfile import read_env
from poolkit.project import project_root
from poolkit.urls import mask


@click.command("up")
@stack_options(state_dir=True)
@click.option("--target", type=click.Choice(["local", "pulumi"]), default="local",
              show_default=True, help="local: processes on this machine; pulumi: Docker.")
@click.option("--env-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the .env (default: .env.<stack> in the project root).")
@click.option("--smoke/--no-smoke", default=True, show_default=True,
              help="Run the smoke tests once everything runs.")
def up_command(stack: StackChoice, target: str, env_file: Path | None, smoke: bool) -> None:
    """Bring the stack up: Postgres, PgBouncer, the sample apps; write .env; smoke-test it.

    Idempotent: a second run changes only what the stack file changed (RELOAD for pool sizes,
    a Postgres restart only for settings that need one) and keeps the data.
    """  # fmt: skip
    config = stack.config()
    warn(config)
    if target == "pulumi" and config.target == "kubernetes":
        raise config_error(ConfigError([Problem(
            "poolkit:target", config.target,
            "is not what `poolkit up --target pulumi` deploys (Docker, checked from this host)",
            f"run `pulumi up --stack {config.stack}` with your cluster's kubeconfig; "
            f"`poolkit render --target kubernetes --stack {config.stack} --out DIR` shows the "
            "objects",
        )]))  # fmt: skip
    if target == "pulumi":
        from poolkit import pulumi_target

        pulumi_target.up(config)
        return
    from poolkit import local

    root = project_root()
    runner = local.Runner(stack.state_dir or local.default_state_dir(root, config.stack))
    try:
        result = runner.up(config, root, env_file or root / f".env.{config.stack}")
    except ConfigError as error:
        raise config_error(error) from None
    except (local.LocalError, OSError, RuntimeError) as error:
        raise step_failed(error) from None
    echo(result.actions, indent="  ")
    smoke_ok, smoke_seconds = True, None
    if smoke:
        smoke_ok, smoke_seconds = run_smoke(result.env_files[0], as_json=False)
    echo(up_summary_lines(result, read_env(result.env_files[0]), smoke_seconds))
    if not smoke_ok:
        raise StepFailed("the stack is up, but smoke tests failed (see FAIL lines above)")


def run_smoke(env_file: Path, as_json: bool) -> tuple[bool, float]:
    """Run the smoke checks of ``env_file``, printing each (or the JSON report at the end)."""
    from poolkit import smoke

    def show(check: smoke.Check) -> None:
        if not as_json:
            click.echo(smoke_check_line(check))

    started = time.monotonic()
    try:
        checks = smoke.run_file(env_file, show)
    except (OSError, ValueError) as error:
        raise BadInput(f"cannot use {env_file}: {error}") from None
    seconds = time.monotonic() - started
    if as_json:
        click.echo(json.dumps(smoke.as_json(env_file, checks, seconds), indent=2))
    return all(check.ok for check in checks), seconds


@click.command("smoke")
@click.option("--env-file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              required=True, help="The .env of a deployed stack (local or Docker).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def smoke_command(env_file: Path, as_json: bool) -> None:
    """Prove a deployed stack from its .env: direct and pooled paths, pool mode, a burst."""
    ok, seconds = run_smoke(env_file, as_json)
    if not as_json:
        click.echo(smoke_summary(ok, seconds))
    if not ok:
        raise SystemExit(EXIT_FAILED)


@click.command("down")
@stack_options(state_dir=True)
@click.option("--purge", is_flag=True, help="Also delete data, configs, secrets and .env files "
              "(the backup repository and its passphrase are kept).")
@click.option("--purge-backups", is_flag=True,
              help="With --purge: delete the backup repository and its passphrase too.")
@click.option("--yes", is_flag=True, help="Do not ask before --purge deletes data.")
def down_command(stack: StackChoice, purge: bool, purge_backups: bool, yes: bool) -> None:
    """Stop the local stack's processes (apps, PgBouncer, Postgres); --purge deletes its data."""
    from poolkit.local import LocalError

    if purge_backups and not purge:
        raise BadInput("--purge-backups: only deletes with --purge. Fix: add --purge")
    runner = stack.runner()
    what = "the database, secrets" + (", backups" if purge_backups else "")
    if purge and not yes:
        if not click.get_text_stream("stdin").isatty():
            raise BadInput("--purge deletes the database; add --yes to confirm without a prompt")
        click.confirm(f"Delete {runner.paths.root} ({what}) and its .env files?",
                      abort=True)  # fmt: skip
    try:
        echo(runner.down(purge, purge_backups), indent="  ")
    except LocalError as error:
        raise step_failed(error) from None


@click.command("restart")
@stack_options(state_dir=True)
def restart_command(stack: StackChoice) -> None:
    """Rolling restart of the local stack's PgBouncer processes, one at a time.

    Each process stops accepting (the kernel hands new connections to its peers on the shared
    port), lets its clients finish, and starts again; then the next one.
    """
    from poolkit.local import LocalError

    try:
        echo(stack.runner().restart_pgbouncer(), indent="  ")
    except LocalError as error:
        raise step_failed(error) from None


@click.command("status")
@stack_options(state_dir=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True,
              help="Live view, redrawn every second: per pool clients active/waiting, servers "
                   "active/idle, maxwait, tx/s; Postgres backends vs max_connections. Ctrl-C ends.")
def status_command(stack: StackChoice, as_json: bool, watch: bool) -> None:
    """What runs (pid, OS user, port), PgBouncer's pool counters, the .env URLs (masked)."""
    runner = stack.runner()
    report = runner.status()
    if watch:
        _watch(report, runner.stats_urls())
        return
    urls: dict[str, str] = {}
    for path in report["env_files"][:1]:
        with contextlib.suppress(OSError, ValueError):
            urls = {k: mask(v) for k, v in read_env(Path(path)).items() if k.endswith("_URL")}
    report["urls"] = urls
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        echo(status_lines(report))


def _watch(report: dict[str, Any], consoles: list[str]) -> None:
    from poolkit import watch

    if not report["env_files"]:
        raise StepFailed(f"no .env for {report['state_dir']}: run poolkit up first")
    env_file = Path(report["env_files"][0])
    try:
        env = read_env(env_file)
        watch.watch(env, f"poolkit {report['stack'] or '?'}: PgBouncer pools ({env_file.name})",
                    consoles=consoles)
    except (OSError, ValueError) as error:
        raise BadInput(f"cannot use {env_file}: {error}") from None
