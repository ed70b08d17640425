"""What the commands print, as lines: the commands fetch data, these functions word it.

Each function returns the lines (styled with ``click.style``, which ``click.echo`` strips when
the output is not a terminal); :func:`echo` prints them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from poolkit.urls import mask

if TYPE_CHECKING:
    from poolkit.local import UpResult
    from poolkit.sizing import Plan

ENV_KEYS_SHOWN = ("DIRECT_URL", "POOLED_DATABASE_URL", "DATABASE_URL", "PGBOUNCER_STATS_URL")


def echo(lines: Iterable[str], indent: str = "") -> None:
    for line in lines:
        click.echo(f"{indent}{line}")


def heading(text: str) -> str:
    return click.style(text, bold=True)


def wrote(path: Path, private: bool) -> str:
    return f"wrote {path}{' (0600)' if private else ''}"


def plan_lines(result: Plan) -> list[str]:
    """Each setting with its reason, then each app's connection limit with its reason."""
    lines: list[str] = []
    for title, settings in (("postgres", result.postgres), ("pgbouncer", result.pgbouncer)):
        lines.append(heading(f"[{title}]"))
        for setting in settings:
            lines.append(f"  {setting.name} = {setting.value}")
            lines.append(click.style(f"      {setting.why}", dim=True))
    why = result.as_dict()["why"]
    split = result.pool.split
    lines.append(heading(f"[pooler] {split.processes} PgBouncer process(es) per host x "
                         f"{split.replicas} replica(s)"))  # fmt: skip
    lines.append(f"  processes = {split.processes}")
    lines.append(click.style(f"      {why['pgbouncer.processes']}", dim=True))
    lines.append(f"  server budget = {split.budget}; used by all processes: {split.servers}")
    lines.append(click.style(f"      {why['pgbouncer.split']}", dim=True))
    for app in result.apps:
        lines.append(heading(f"[app {app.name}] {app.style}, {app.instances} instances"))
        lines.append(f"  connection_limit = {app.connection_limit}")
        lines.append(click.style(f"      {why[f'apps.{app.name}.connection_limit']}", dim=True))
    return lines


def up_summary_lines(result: UpResult, env: dict[str, str], smoke_s: float | None) -> list[str]:
    """Versions, masked URLs, the pool arithmetic and the apps of a stack that is up."""
    pool = result.plan.pool
    smoke = f" (+ smoke {smoke_s:.1f} s)" if smoke_s is not None else ""
    lines = [
        heading(f"stack {result.stack.stack} is up in {result.seconds:.1f} s{smoke}"),
        f"  PostgreSQL {result.tools.pg_version}, PgBouncer {result.tools.pgbouncer_version}"
        f", servers run as OS user {result.user}; state in {result.state_dir}",
    ]
    lines += [f"  {key:<20} {mask(env.get(key, '-'))}" for key in ENV_KEYS_SHOWN]
    lines.append(
        f"  pool: default_pool_size {pool.pool_size} + reserve {pool.reserve} = "
        f"server budget {pool.server_connections} of max_connections "
        f"{pool.max_connections}; max_client_conn {pool.max_client_conn}; prepared "
        f"statements {env.get('PGBOUNCER_PREPARED_STATEMENTS', '?')}"
    )
    split = pool.split
    if split.instances > 1:
        lines.append(f"  split: {split.processes} PgBouncer processes x {split.replicas} "
                     f"replica(s), each max_db_connections {split.max_db_connections} "
                     f"({split.pool_size} + {split.reserve}); {split.servers} <= {split.budget}")
    for app in result.plan.apps:
        ports = f"{app.port}-{app.port + app.replicas - 1}" if app.replicas > 1 else str(app.port)
        lines.append(f"  app {app.name} ({app.style}): {app.instances} instances x "
                     f"connection_limit {app.connection_limit}; sample on 127.0.0.1:{ports}")
    lines += [f"  {wrote(path, private=True)}" for path in result.env_files]
    return lines


def status_lines(report: dict[str, Any]) -> list[str]:
    """Each component (running or not, where, as whom), the pool counters, the masked URLs."""
    lines = [heading(f"stack {report['stack'] or '?'} ({report['state_dir']})")]
    if not report["initialised"]:
        lines.append("  not initialised: run poolkit up")
    for item in report["components"]:
        state = "running" if item["running"] else "stopped"
        where = f"127.0.0.1:{item['port']}" if item["port"] else "-"
        listening = "" if not item["running"] or item["listening"] else " (not listening)"
        owner = f" as {item['user']}" if item["running"] else ""
        pid = f" pid {item['pid']}" if item["running"] else ""
        lines.append(f"  {item['name']:<16} {state:<8} {where}{listening}{pid}{owner}")
    for pool in report["pools"]:
        process = f" (process {pool['process']})" if len(report["pools"]) > 1 else ""
        lines.append(f"  pool {pool['database']}/{pool['user']}{process}: "
                     f"cl_active {pool['cl_active']} "
                     f"cl_waiting {pool['cl_waiting']} sv_active {pool['sv_active']} "
                     f"sv_idle {pool['sv_idle']} sv_used {pool['sv_used']} "
                     f"maxwait {pool['maxwait']}s")  # fmt: skip
    lines += [f"  {key:<20} {value}" for key, value in report["urls"].items()]
    return lines


def smoke_check_line(check: Any) -> str:
    return click.style(check.line(), fg="green" if check.ok else "red")


def smoke_summary(ok: bool, seconds: float) -> str:
    return f"{'all checks passed' if ok else 'some checks FAILED'} in {seconds:.1f} s"


def restart_line(report: Any) -> str:
    return (f"restarted PostgreSQL in {report.restart_s:.2f} s; pooled clients waited at most "
            f"{report.paused_s:.2f} s (PAUSE took {report.pause_wait_s:.2f} s)")  # fmt: skip
