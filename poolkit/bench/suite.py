"""The whole bench: bring up the bench stack, run every measurement, write results.json (+ .png)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from poolkit import secrets as stack_secrets
from poolkit.bench import bursts, processes, reuseport, scram, storm
from poolkit.bench.context import Bench
from poolkit.bench.pgbench import pgbench_init
from poolkit.bench.report import summarise
from poolkit.bench.scratch import ScratchBouncers, set_verifier
from poolkit.bench.settings import (
    NAIVE_MAX_CLIENT_CONN,
    NAIVE_POOL_SIZE,
    NAIVE_PORT_OFFSET,
    PGBENCH_CLIENTS,
    PGBENCH_SCALE,
    PGBENCH_THREADS,
    SCRATCH_PORT_OFFSET,
    STOCK_ITERATIONS,
    BenchError,
    Settings,
)
from poolkit.config import load_stack
from poolkit.envfile import read_env
from poolkit.launch import raise_nofile


def _relative(path: Path, root: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(root.resolve()))
    return str(path)


@contextlib.contextmanager
def _scratch_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="poolkit-bench-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_all(bench: Bench) -> dict[str, Any]:
    """Every measurement in turn; the naive PgBouncer runs for the first two."""
    naive = bench.start_naive()
    try:
        results = storm.measure(bench, naive)
        results["burst"] = bursts.measure(bench, naive)
    finally:
        bench.scratch.stop(naive)
    results["scram"] = scram.measure(bench)
    results["reuseport"] = reuseport.measure(bench, results["scram"])
    if bench.settings.pooler_processes:
        results["processes"] = processes.measure(bench)
    return results


def run(
    stack_file: Path,
    out: Path,
    project_root: Path,
    quick: bool,
    state_dir: Path | None = None,
    keep_up: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Bring up the bench stack, measure everything, write results.json (+ .png)."""
    from poolkit import local  # the runner imports rich; keep `poolkit burst` light
    from poolkit.plot import plot_results

    started = time.monotonic()
    settings = Settings.make(quick)
    stack = load_stack(stack_file, "bench")
    state_dir = state_dir or project_root / ".poolkit" / "bench"
    env_file = project_root / ".env.bench"
    runner = local.Runner(state_dir, local.Progress())
    was_running = runner.paths.postgres_pid() is not None
    up = runner.up(stack, project_root, env_file)
    env = read_env(up.env_files[0])
    credentials = stack_secrets.load(runner.paths.secrets)
    if credentials is None:
        raise BenchError(f"no secrets in {runner.paths.secrets} after up")
    raise_nofile(8192)
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    try:
        with _scratch_root() as root:
            user = local.service_user()
            scratch = ScratchBouncers(root, up.tools.pgbouncer, user)
            bench = Bench(
                stack=up.stack, plan=up.plan, env=env, secrets=credentials, settings=settings,
                pgbench_binary=up.tools.pgbin / "pgbench",
                bouncer_pid=lambda: [p for p in [local.read_pid(
                    runner.paths.run / "pgbouncer.pid", "pgbouncer")] if p],
                postmaster=runner.paths.postgres_pid,
                scratch=scratch, superuser=user.name, say=say,
                naive_port=stack.pgbouncer.port + NAIVE_PORT_OFFSET,
                scratch_port=stack.pgbouncer.port + SCRATCH_PORT_OFFSET,
            )  # fmt: skip
            busy = [p for p in (bench.naive_port, bench.scratch_port) if local.port_in_use(p)]
            if busy:
                raise BenchError(f"port(s) {', '.join(map(str, busy))} on 127.0.0.1 are in use; "
                                 "the bench runs its naive and experimental PgBouncers there "
                                 "(the stack's PgBouncer port + 2 and + 3)")  # fmt: skip
            try:
                if pgbench_init(bench.pgbench_binary, bench.direct):
                    say(f"initialised pgbench tables (scale {PGBENCH_SCALE}) as the migrator")
                results |= measure_all(bench)
            finally:
                scratch.stop_all()
                with contextlib.suppress(psycopg.Error):
                    set_verifier(bench.direct, credentials.migrator)
    finally:
        if not (keep_up or was_running):
            runner.down(purge=False)
    pool = up.plan.pool
    results["summary"] = summarise(results, up.plan, up.stack.database.app_user)
    results["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": quick,
        "repeats": settings.repeats,
        "pgbench": {"clients": PGBENCH_CLIENTS, "threads": PGBENCH_THREADS,
                    "seconds": settings.pgbench_seconds, "scale": PGBENCH_SCALE,
                    "protocol": "simple"},
        "burst": dataclasses.asdict(settings.burst),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "postgres": up.tools.pg_version,
        "pgbouncer": up.tools.pgbouncer_version,
        "stack": {"file": _relative(stack_file, project_root), "pool_size": pool.pool_size,
                  "reserve": pool.reserve,
                  "max_db_connections": pool.server_connections,
                  "max_connections": pool.max_connections,
                  "max_client_conn": pool.max_client_conn,
                  "iterations_app": credentials.app.iterations},
        "naive": {"default_pool_size": NAIVE_POOL_SIZE, "max_client_conn": NAIVE_MAX_CLIENT_CONN,
                  "iterations": STOCK_ITERATIONS, "processes": 1},
        "seconds": round(time.monotonic() - started, 1),
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    results["meta"]["plot"] = plot_results(results, out / "results.png")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results
