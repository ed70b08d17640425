"""``poolkit backup | backups | restore | check``: pgBackRest for a stack, on either target.

Exit codes as everywhere: 0 done, 1 a step failed, 2 bad input (nothing was changed).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import click

from poolkit import backup
from poolkit.cli.errors import BadInput, StepFailed, step_failed
from poolkit.cli.options import StackChoice, stack_options


def with_target(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--target local|pulumi`` plus the stack options; passes ``target`` (a backup Target)."""

    @stack_options(state_dir=True)
    @click.option("--target", "target_name", type=click.Choice(["local", "pulumi"]),
                  default="local", show_default=True,
                  help="local: the local runner's processes; pulumi: the Docker containers.")
    @functools.wraps(command)
    def wrapper(stack: StackChoice, target_name: str, **kwargs: Any) -> Any:
        try:
            kwargs["target"] = _open_target(stack, target_name)
            return command(**kwargs)
        except backup.BackupRefused as error:
            raise BadInput(str(error)) from None
        except backup.BackupError as error:
            raise StepFailed(str(error)) from None
        except click.ClickException:
            raise
        except Exception as error:  # LocalError, docker's errors: a step failed
            raise step_failed(error) from None

    return wrapper  # fmt: skip


def _open_target(choice: StackChoice, name: str) -> backup.Target:
    from poolkit.backup_targets import DockerTarget, LocalTarget

    stack = choice.config()
    if not stack.backup.enabled:
        raise BadInput(f"stack {stack.stack}: poolkit:backup.enabled is not true. Fix: set it, "
                       "run poolkit up, then back up")  # fmt: skip
    if name == "pulumi":
        return DockerTarget(stack)
    return LocalTarget(stack, choice.local_state_dir())


@click.command("backup")
@with_target
@click.option("--type", "kind", type=click.Choice(["full", "diff"]), default="full",
              show_default=True, help="full: everything; diff: changes since the last full.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def backup_command(target: backup.Target, kind: str, as_json: bool) -> None:
    """Take a backup now (the repository is encrypted; WAL is archived continuously)."""
    taken, seconds = backup.backup(target, kind)
    if as_json:
        click.echo(json.dumps({"label": taken.label, "type": taken.kind, "seconds": seconds,
                               "size": taken.size, "stored": taken.stored}))  # fmt: skip
        return
    click.echo(f"backup {taken.label} ({taken.kind}) in {seconds:.1f} s: "
               f"{taken.size / 1e6:,.1f} MB of data, {taken.stored / 1e6:,.1f} MB stored")


@click.command("backups")
@with_target
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def backups_command(target: backup.Target, as_json: bool) -> None:
    """List the backups in the repository, oldest first."""
    sets = backup.list_backups(target)
    if as_json:
        click.echo(json.dumps([{"label": s.label, "type": s.kind, "start": s.started.isoformat(),
                                "stop": s.stopped.isoformat(), "size": s.size,
                                "stored": s.stored} for s in sets], indent=2))  # fmt: skip
        return
    if not sets:
        click.echo("no backups yet: poolkit backup takes one")
    for item in sets:
        click.echo(item.line())


@click.command("restore")
@with_target
@click.option("--to", "to", required=True, metavar="latest|TIME",
              help="latest (every archived change) or a time: 2026-11-30T01:02:03+00:00 "
                   "(no zone means UTC).")  # fmt: skip
@click.option("--yes", is_flag=True, help="Switch to the restored data without asking.")
def restore_command(target: backup.Target, to: str, yes: bool) -> None:
    """Restore into a fresh data directory, then switch to it after confirmation.

    The replaced data is kept (local: <state>/data.previous/<time>; Docker:
    .poolkit-previous/<time> in the data volume); nothing is deleted. Postgres is down from
    the switch to the end of recovery.
    """

    def confirm(plan: backup.RestorePlan) -> bool:
        if yes:
            return True
        if not click.get_text_stream("stdin").isatty():
            raise BadInput("restored, but not switched: add --yes to switch without a prompt")
        return click.confirm(f"Stop Postgres and switch to the restored data? The current data "
                             f"is kept in {plan.keep_dir}")  # fmt: skip

    result = backup.restore(target, to, confirm, say=lambda line: click.echo(f"  {line}"))
    if result is not None:
        plan, seconds = result
        click.echo(f"restored and running in {seconds:.1f} s ({plan.describe()})")


@click.command("check")
@with_target
def check_command(target: backup.Target) -> None:
    """Verify that WAL archiving reaches the repository (pgbackrest check)."""
    click.echo(backup.check(target))
