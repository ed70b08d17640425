"""Measurements against a running stack: the burst simulator and the benchmarks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from poolkit.cli.errors import BadInput, StepFailed, config_error, step_failed
from poolkit.cli.output import echo
from poolkit.config import ConfigError
from poolkit.project import project_root


@click.command("burst")
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
@click.option("--hold", type=click.FloatRange(0, 60), default=0.0, show_default=True,
              metavar="S", help="Seconds each invocation holds its server (SELECT pg_sleep(S)); "
                                "0 runs SELECT 1.")
@click.option("--timeline", type=click.Path(path_type=Path, dir_okay=False), metavar="PNG",
              help="Also draw clients waiting, servers active, backends and errors over time.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def burst_command(url_env_file: Path, target: str, instances: int, duration: float | None,
                  invocations: int | None, zombies: int, ramp: float, think: float,
                  workers: int | None, hold: float, timeline: Path | None,
                  as_json: bool) -> None:
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
        **({"query": f"SELECT pg_sleep({hold:g})"} if hold else {}),
    )  # fmt: skip
    try:
        result = burst.run_from_env_file(url_env_file, target, spec)
    except (burst.BurstInputError, ValueError) as error:
        raise BadInput(str(error)) from None
    except (OSError, RuntimeError) as error:
        raise step_failed(error) from None
    if timeline is not None:
        from poolkit.plot import plot_timeline

        if plot_timeline(result, timeline) is None:
            raise StepFailed("--timeline needs matplotlib: .venv/bin/pip install matplotlib")
        result.notes.append(f"timeline of {len(result.timeline)} samples written to {timeline}")
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        echo(result.lines())


@click.command("bench")
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
    from poolkit import bench, local

    root = project_root()
    out = out or root / "bench"
    started = time.monotonic()
    try:
        results = bench.run(stack_file or root / "bench" / "stack.yaml", out, root, quick,
                            state_dir=state_dir, keep_up=keep_up,
                            say=lambda line: click.echo(f"  {line}"))  # fmt: skip
    except ConfigError as error:
        raise config_error(error) from None
    except (bench.BenchError, local.LocalError, OSError, RuntimeError) as error:
        raise step_failed(error) from None
    click.secho("results", bold=True)
    echo(bench.report_lines(results), indent="  ")
    written = [str(out / "results.json")]
    if results["meta"].get("plot"):
        written.append(results["meta"]["plot"])
    else:
        click.secho("  no plot: matplotlib is not installed", fg="yellow")
    click.echo(f"  wrote {', '.join(written)} in {time.monotonic() - started:.1f} s")
