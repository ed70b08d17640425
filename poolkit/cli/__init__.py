"""The ``poolkit`` command: plan, render, and the targets' commands.

Exit codes: 0 success, 1 a check or a step failed, 2 bad input (stack config or arguments).

One module per group of commands; this file only assembles them. To add a command:

1. write it in the module of its group (or a new module ``poolkit/cli/<group>.py``) as a
   ``@click.command`` (or ``@click.group``); pick the stack with ``@stack_options()`` from
   ``poolkit.cli.options`` (``state_dir=True`` for the local target), raise ``BadInput`` (exit 2)
   or ``StepFailed`` (exit 1) from ``poolkit.cli.errors``, and word its output in
   ``poolkit.cli.output``;
2. list it in ``COMMANDS`` below.
"""

from __future__ import annotations

import click

from poolkit.cli import backup, lifecycle, maintenance, measure, stack

COMMANDS: tuple[click.Command, ...] = (
    stack.plan_command,
    stack.env_command,
    stack.render_command,
    lifecycle.up_command,
    lifecycle.smoke_command,
    lifecycle.down_command,
    lifecycle.restart_command,
    lifecycle.status_command,
    maintenance.maintenance_group,
    measure.burst_command,
    measure.bench_command,
    backup.backup_command,
    backup.backups_command,
    backup.restore_command,
    backup.check_command,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="poolkit")
def main() -> None:
    """PgBouncer in transaction mode in front of Postgres, sized for serverless apps."""


for _command in COMMANDS:
    main.add_command(_command)
