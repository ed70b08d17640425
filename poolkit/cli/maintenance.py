"""Planned maintenance of a local stack that drops no pooled client."""

from __future__ import annotations

import json

import click

from poolkit.cli.errors import BadInput, step_failed
from poolkit.cli.options import StackChoice, stack_options
from poolkit.cli.output import restart_line


@click.group("maintenance")
def maintenance_group() -> None:
    """Planned maintenance of a local stack that drops no pooled client."""


@maintenance_group.command("restart-postgres")
@stack_options(state_dir=True)
@click.option("--pause-timeout", type=click.FloatRange(0.1, 3600), default=5.0,
              show_default=True, metavar="S",
              help="Seconds PAUSE may wait for running transactions before giving up "
                   "(then RESUME, no restart). Keep it below query_wait_timeout.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable timings.")
def restart_postgres_command(stack: StackChoice, pause_timeout: float, as_json: bool) -> None:
    """PAUSE the database on PgBouncer, restart Postgres (fast), RESUME: latency, no errors."""
    from poolkit import maintenance

    runner = stack.runner()
    say = (lambda _line: None) if as_json else (lambda line: click.echo(f"  {line}"))
    try:
        report = maintenance.restart_postgres(runner.paths.root, pause_timeout, say)
    except maintenance.NoStack as error:
        raise BadInput(f"{stack.given()}: {error}") from None
    except Exception as error:  # LocalError, or psycopg's from the console: a step failed
        raise step_failed(error) from None
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(restart_line(report))
