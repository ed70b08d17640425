"""The ``poolkit`` command: plan, render, and the targets' commands.

Exit codes: 0 success, 1 a check or a step failed, 2 bad input (stack config or arguments).
"""

from __future__ import annotations

import contextlib
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


@main.command("env")
@click.option("--stack", "stack_name", required=True, metavar="NAME",
              help="Pulumi stack NAME (as in Pulumi.NAME.yaml).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write (default: .env.NAME in the project root).")
def env_command(stack_name: str, out: Path | None) -> None:
    """Write .env.NAME (mode 0600) from the outputs of the deployed Pulumi stack NAME.

    Runs `pulumi stack output --json --show-secrets`; needs the Pulumi CLI.
    """  # fmt: skip
    from poolkit import pulumi_target

    path = pulumi_target.write_env(stack_name, out=out)
    click.echo(f"wrote {path} (0600)")


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


# --- the local target: up, down, status; smoke for any target -------------------------------


class StepFailed(click.ClickException):
    """A step of a command failed (a server did not start, a check failed): exit code 1."""

    exit_code = EXIT_FAILED


def _step_failed(error: Exception) -> StepFailed:
    from poolkit.local import log_tail
    from poolkit.urls import mask

    message = mask(str(error))
    if not isinstance(error, click.ClickException) and type(error).__name__ != "LocalError":
        message = f"{type(error).__name__}: {message}"
    log = getattr(error, "log", None)
    if log is not None:
        message += f"\n--- last lines of {log}:\n{mask(log_tail(log))}"
    return StepFailed(message)


def _runner(stack_name: str | None, stack_file: Path | None, state_dir: Path | None) -> Any:
    """The local runner of a stack, found by name, stack file or state dir."""
    from poolkit.config import stack_name_of
    from poolkit.local import Runner, default_state_dir

    if state_dir is None:
        if bool(stack_name) == bool(stack_file):
            raise BadInput("give one of --stack NAME, --stack-file PATH or --state-dir DIR")
        name = stack_name or stack_name_of(stack_file)  # type: ignore[arg-type]
        state_dir = default_state_dir(project_root(), name)
    return Runner(state_dir)


def _local_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
                           help="State folder (default: .poolkit/<stack> in the project root, "
                                "or $POOLKIT_STATE_DIR).")(command)  # fmt: skip
    return command


@main.command("up")
@stack_options
@click.option("--target", type=click.Choice(["local", "pulumi"]), default="local",
              show_default=True, help="local: processes on this machine; pulumi: Docker.")
@_local_options
@click.option("--env-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the .env (default: .env.<stack> in the project root).")
@click.option("--smoke/--no-smoke", default=True, show_default=True,
              help="Run the smoke tests once everything runs.")
def up_command(stack: StackConfig, target: str, state_dir: Path | None, env_file: Path | None,
               smoke: bool) -> None:
    """Bring the stack up: Postgres, PgBouncer, the sample apps; write .env; smoke-test it.

    Idempotent: a second run changes only what the stack file changed (RELOAD for pool sizes,
    a Postgres restart only for settings that need one) and keeps the data.
    """  # fmt: skip
    warn(stack)
    if target == "pulumi":
        import importlib.util

        if importlib.util.find_spec("poolkit.pulumi_target") is None:
            raise BadInput("--target pulumi is not available yet (poolkit/pulumi_target.py is "
                           "missing); use --target local")  # fmt: skip
        from poolkit import pulumi_target  # type: ignore[attr-defined]

        pulumi_target.up(stack)
        return
    from poolkit import local

    root = project_root()
    runner = local.Runner(state_dir or local.default_state_dir(root, stack.stack))
    try:
        result = runner.up(stack, root, env_file or root / f".env.{stack.stack}")
    except ConfigError as error:
        raise config_error(error) from None
    except (local.LocalError, OSError, RuntimeError) as error:
        raise _step_failed(error) from None
    for action in result.actions:
        click.echo(f"  {action}")
    smoke_ok, smoke_seconds = True, 0.0
    if smoke:
        smoke_ok, smoke_seconds = _smoke(result.env_files[0], as_json=False)
    _up_summary(result, smoke_seconds if smoke else None)
    if not smoke_ok:
        raise StepFailed("the stack is up, but smoke tests failed (see FAIL lines above)")


def _up_summary(result: Any, smoke_seconds: float | None) -> None:
    from poolkit.envfile import read_env
    from poolkit.urls import mask

    pool = result.plan.pool
    click.secho(f"stack {result.stack.stack} is up in {result.seconds:.1f} s"
                + (f" (+ smoke {smoke_seconds:.1f} s)" if smoke_seconds is not None else ""),
                bold=True)  # fmt: skip
    click.echo(f"  PostgreSQL {result.tools.pg_version}, PgBouncer {result.tools.pgbouncer_version}"
               f", servers run as OS user {result.user}; state in {result.state_dir}")
    env = read_env(result.env_files[0])
    for key in ("DIRECT_URL", "POOLED_DATABASE_URL", "DATABASE_URL", "PGBOUNCER_STATS_URL"):
        click.echo(f"  {key:<20} {mask(env.get(key, '-'))}")
    click.echo(f"  pool: default_pool_size {pool.pool_size} + reserve {pool.reserve} = "
               f"max_db_connections {pool.server_connections} of max_connections "
               f"{pool.max_connections}; max_client_conn {pool.max_client_conn}; prepared "
               f"statements {env.get('PGBOUNCER_PREPARED_STATEMENTS', '?')}")
    for app in result.plan.apps:
        ports = f"{app.port}-{app.port + app.replicas - 1}" if app.replicas > 1 else str(app.port)
        click.echo(f"  app {app.name} ({app.style}): {app.instances} instances x "
                   f"connection_limit {app.connection_limit}; sample on 127.0.0.1:{ports}")
    if result.apps_note:
        click.secho(f"  {result.apps_note}", fg="yellow")
    for path in result.env_files:
        click.echo(f"  wrote {path} (0600)")


def _smoke(env_file: Path, as_json: bool) -> tuple[bool, float]:
    import time

    from poolkit import smoke

    def show(check: Any) -> None:
        if not as_json:
            click.secho(check.line(), fg="green" if check.ok else "red")

    started = time.monotonic()
    try:
        checks = smoke.run_file(env_file, show)
    except (OSError, ValueError) as error:
        raise BadInput(f"cannot use {env_file}: {error}") from None
    seconds = time.monotonic() - started
    if as_json:
        click.echo(json.dumps(smoke.as_json(env_file, checks, seconds), indent=2))
    return all(check.ok for check in checks), seconds


@main.command("smoke")
@click.option("--env-file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              required=True, help="The .env of a deployed stack (local or Docker).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def smoke_command(env_file: Path, as_json: bool) -> None:
    """Prove a deployed stack from its .env: direct and pooled paths, pool mode, a burst."""
    ok, seconds = _smoke(env_file, as_json)
    if not as_json:
        click.echo(f"{'all checks passed' if ok else 'some checks FAILED'} in {seconds:.1f} s")
    if not ok:
        raise SystemExit(EXIT_FAILED)


def _which_stack(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--stack-file", type=click.Path(path_type=Path, dir_okay=False),
                           help="The stack file (its name picks the state dir).")(command)
    command = click.option("--stack", "stack_name", metavar="NAME",
                           help="Stack NAME (state in .poolkit/NAME).")(command)
    return _local_options(command)


@main.command("down")
@_which_stack
@click.option("--purge", is_flag=True, help="Also delete data, configs, secrets and .env files.")
@click.option("--yes", is_flag=True, help="Do not ask before --purge deletes data.")
def down_command(stack_name: str | None, stack_file: Path | None, state_dir: Path | None,
                 purge: bool, yes: bool) -> None:
    """Stop the local stack's processes (apps, PgBouncer, Postgres); --purge deletes its data."""
    from poolkit.local import LocalError

    runner = _runner(stack_name, stack_file, state_dir)
    if purge and not yes:
        if not click.get_text_stream("stdin").isatty():
            raise BadInput("--purge deletes the database; add --yes to confirm without a prompt")
        click.confirm(f"Delete {runner.paths.root} (the database, secrets) and its .env files?",
                      abort=True)  # fmt: skip
    try:
        for line in runner.down(purge):
            click.echo(f"  {line}")
    except LocalError as error:
        raise _step_failed(error) from None


@main.command("status")
@_which_stack
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(stack_name: str | None, stack_file: Path | None, state_dir: Path | None,
                   as_json: bool) -> None:
    """What runs (pid, OS user, port), PgBouncer's pool counters, the .env URLs (masked)."""
    from poolkit.envfile import read_env
    from poolkit.urls import mask

    report = _runner(stack_name, stack_file, state_dir).status()
    urls: dict[str, str] = {}
    for path in report["env_files"][:1]:
        with contextlib.suppress(OSError, ValueError):
            urls = {k: mask(v) for k, v in read_env(Path(path)).items() if k.endswith("_URL")}
    report["urls"] = urls
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.secho(f"stack {report['stack'] or '?'} ({report['state_dir']})", bold=True)
    if not report["initialised"]:
        click.echo("  not initialised: run poolkit up")
    for item in report["components"]:
        state = "running" if item["running"] else "stopped"
        where = f"127.0.0.1:{item['port']}" if item["port"] else "-"
        listening = "" if not item["running"] or item["listening"] else " (not listening)"
        owner = f" as {item['user']}" if item["running"] else ""
        pid = f" pid {item['pid']}" if item["running"] else ""
        click.echo(f"  {item['name']:<16} {state:<8} {where}{listening}{pid}{owner}")
    for pool in report["pools"]:
        click.echo(f"  pool {pool['database']}/{pool['user']}: cl_active {pool['cl_active']} "
                   f"cl_waiting {pool['cl_waiting']} sv_active {pool['sv_active']} "
                   f"sv_idle {pool['sv_idle']} sv_used {pool['sv_used']} "
                   f"maxwait {pool['maxwait']}s")  # fmt: skip
    for key, value in urls.items():
        click.echo(f"  {key:<20} {value}")


# --- planned maintenance without dropping clients ---------------------------------------------


@main.group("maintenance")
def maintenance_group() -> None:
    """Planned maintenance of a local stack that drops no pooled client."""


@maintenance_group.command("restart-postgres")
@_which_stack
@click.option("--pause-timeout", type=click.FloatRange(0.1, 3600), default=5.0,
              show_default=True, metavar="S",
              help="Seconds PAUSE may wait for running transactions before giving up "
                   "(then RESUME, no restart). Keep it below query_wait_timeout.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable timings.")
def restart_postgres_command(stack_name: str | None, stack_file: Path | None,
                             state_dir: Path | None, pause_timeout: float, as_json: bool) -> None:
    """PAUSE the database on PgBouncer, restart Postgres (fast), RESUME: latency, no errors."""
    from poolkit import maintenance

    runner = _runner(stack_name, stack_file, state_dir)
    say = (lambda _line: None) if as_json else (lambda line: click.echo(f"  {line}"))
    try:
        report = maintenance.restart_postgres(runner.paths.root, pause_timeout, say)
    except maintenance.NoStack as error:
        given = (f"--state-dir {state_dir}" if state_dir else f"--stack {stack_name}"
                 if stack_name else f"--stack-file {stack_file}")  # fmt: skip
        raise BadInput(f"{given}: {error}") from None
    except Exception as error:  # LocalError, or psycopg's from the console: a step failed
        raise _step_failed(error) from None
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    click.echo(f"restarted PostgreSQL in {report.restart_s:.2f} s; pooled clients waited at most "
               f"{report.paused_s:.2f} s (PAUSE took {report.pause_wait_s:.2f} s)")


# --- burst simulator and benchmarks -----------------------------------------------------------


@main.command("burst")
@click.option("--url-env-file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              required=True, help="The .env of the stack; the URLs are read from it.")
@click.option("--target", type=click.Choice(["pooled", "direct"]), required=True,
              help="pooled: POOLED_DATABASE_URL (PgBouncer); direct: DIRECT_URL (Postgres).")
@click.option("--instances", type=click.IntRange(1, 5000), default=1000, show_default=True,
              help="Concurrent function instances at the top of the spike.")
@click.option("--duration", type=click.FloatRange(0, 600, min_open=True),
              help="Seconds the spike lasts [default: 10; 120 with --invocations].")
@click.option("--invocations", type=click.IntRange(1, 10_000_000),
              help="Stop after this many invocations in all.")
@click.option("--zombies", type=click.IntRange(0, 5000), default=0, show_default=True,
              help="Idle instances that connect before the spike and hold their connection.")
@click.option("--ramp", type=click.FloatRange(0, 60), default=1.0, show_default=True,
              help="Seconds over which the instances cold-start.")
@click.option("--think", type=click.FloatRange(0, 60), default=0.5, show_default=True,
              help="Mean idle seconds of an instance between two invocations.")
@click.option("--workers", type=click.IntRange(1, 16),
              help="Simulator processes [default: one per CPU, at most 4].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def burst_command(url_env_file: Path, target: str, instances: int, duration: float | None,
                  invocations: int | None, zombies: int, ramp: float, think: float,
                  workers: int | None, as_json: bool) -> None:
    """Simulate a serverless spike against one URL of a stack (127.0.0.1 only).

    Instances cold-start (own connection each), serve invocations on it while warm (Lambda
    style), and ZOMBIES idle ones hold connections. Reports invocations, errors by kind,
    latency p50/p95/p99, peak Postgres backends and peak PgBouncer clients. A run is a
    measurement: it exits 0 even when the target fails under the spike.
    """  # fmt: skip
    from poolkit import burst

    if duration is not None and invocations is not None:
        raise BadInput("give --duration S or --invocations N, not both")
    seconds = duration or (burst.INVOCATIONS_DURATION_S if invocations
                           else burst.DEFAULT_DURATION_S)  # fmt: skip
    spec = burst.BurstSpec(
        instances=instances, zombies=zombies, ramp_s=min(ramp, seconds / 2), think_s=think,
        invocations=invocations, duration_s=seconds,
        **({"workers": workers} if workers else {}),
    )  # fmt: skip
    try:
        result = burst.run_from_env_file(url_env_file, target, spec)
    except (burst.BurstInputError, ValueError) as error:
        raise BadInput(str(error)) from None
    except (OSError, RuntimeError) as error:
        raise _step_failed(error) from None
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    for line in result.lines():
        click.echo(line)


@main.command("bench")
@click.option("--quick", is_flag=True,
              help="One short run of each measurement, so_reuseport skipped (under 60 s).")
@click.option("--stack-file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="The bench stack [default: bench/stack.yaml in the project root].")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Folder for results.json and results.png [default: bench/].")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
              help="State folder of the bench stack [default: .poolkit/bench].")
@click.option("--keep-up", is_flag=True, help="Leave the bench stack running afterwards.")
def bench_command(quick: bool, stack_file: Path | None, out: Path | None,
                  state_dir: Path | None, keep_up: bool) -> None:
    """Pooled vs direct vs a naive PgBouncer, one run, one server: pgbench and the burst.

    Brings up the bench stack with the local runner (state in .poolkit/bench), measures,
    writes OUT/results.json and OUT/results.png, prints medians, ratios and the goals of
    the benchmark, and stops the stack again unless it was already running or --keep-up.
    """  # fmt: skip
    import time

    from poolkit import bench, local

    root = project_root()
    started = time.monotonic()
    try:
        results = bench.run(stack_file or root / "bench" / "stack.yaml", out or root / "bench",
                            root, quick, state_dir=state_dir, keep_up=keep_up,
                            say=lambda line: click.echo(f"  {line}"))  # fmt: skip
    except ConfigError as error:
        raise config_error(error) from None
    except (bench.BenchError, local.LocalError, OSError, RuntimeError) as error:
        raise _step_failed(error) from None
    click.secho("results", bold=True)
    for line in bench.report_lines(results):
        click.echo(f"  {line}")
    written = [str((out or root / "bench") / "results.json")]
    if results["meta"].get("plot"):
        written.append(results["meta"]["plot"])
    else:
        click.secho("  no plot: matplotlib is not installed", fg="yellow")
    click.echo(f"  wrote {', '.join(written)} in {time.monotonic() - started:.1f} s")
