"""pgbench runs: its arguments (password only in the child's environment), its figures, and
the CPU each part of the path spent."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from poolkit import burst
from poolkit.bench import cpu
from poolkit.bench.settings import (
    CPU_PARTS,
    PGBENCH_CLIENTS,
    PGBENCH_GRACE_S,
    PGBENCH_SCALE,
    PGBENCH_THREADS,
    BenchError,
)


@dataclass
class PgbenchRun:
    """One pgbench run's figures, with where the CPU went (seconds, whole run)."""

    arm: str
    tps: float | None
    latency_ms: float | None
    transactions: int
    failed: int
    aborted: bool
    seconds: float
    client_cpu_s: float
    bouncer_cpu_s: float
    postgres_cpu_s: float
    machine_cpu_s: float
    """Busy CPU of the whole machine: minus the three above, what else ran (noise)."""
    error: str = ""

    def per_transaction_ms(self) -> dict[str, float | None]:
        """CPU ms per transaction: pgbench (libpq), PgBouncer, Postgres, other processes."""
        if not self.transactions:
            return dict.fromkeys(CPU_PARTS)
        n = self.transactions / 1000

        def each(seconds: float) -> float:
            return round(seconds / n, 3)

        other = self.machine_cpu_s - self.client_cpu_s - self.bouncer_cpu_s - self.postgres_cpu_s
        return {"client": each(self.client_cpu_s), "pgbouncer": each(self.bouncer_cpu_s),
                "postgres": each(self.postgres_cpu_s), "other": each(max(0.0, other))}  # fmt: skip

    def summary(self) -> str:
        """tps and latency, or the error, for a progress line."""
        if self.error:
            return f"error: {self.error}"
        return f"{self.tps:.0f} tps, latency {self.latency_ms} ms"


_TPS = re.compile(r"^tps = ([\d.]+)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


def parse_pgbench(output: str) -> dict[str, Any]:
    """The figures of pgbench's summary (PostgreSQL 15's format)."""

    def first(pattern: re.Pattern[str], cast: Callable[[str], Any]) -> Any:
        match = pattern.search(output)
        return cast(match.group(1)) if match else None

    return {
        "tps": first(_TPS, float),
        "latency_ms": first(_LATENCY, float),
        "transactions": first(_PROCESSED, int) or 0,
        "failed": first(_FAILED, int) or 0,
        "aborted": "aborted" in output.lower(),
    }


def client_env(url: str) -> tuple[list[str], dict[str, str]]:
    """pgbench's connection arguments and child environment (password only in the env)."""
    parts = conninfo_to_dict(url)
    burst.require_loopback(url, "the pgbench URL")
    args = ["-h", str(parts["host"]), "-p", str(parts.get("port", 5432)),
            "-U", str(parts["user"])]  # fmt: skip
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PGPASSWORD": str(parts.get("password", "")),
        "PGCONNECT_TIMEOUT": "10",
        "PGSSLMODE": "disable",
    }
    return [*args, str(parts["dbname"])], env


def pgbench(
    binary: Path,
    url: str,
    arm: str,
    *,
    connect_each: bool,
    seconds: int,
    bouncer_pids: list[int] | None = None,
    postmaster: int | None = None,
    clients: int = PGBENCH_CLIENTS,
) -> PgbenchRun:
    """``pgbench -S`` (``-C``: a new connection per transaction) for ``seconds``."""
    target, env = client_env(url)
    argv = [str(binary), "-S", "-M", "simple", "-n", "-c", str(clients),
            "-j", str(min(PGBENCH_THREADS, clients)), "-T", str(seconds)]  # fmt: skip
    if connect_each:
        argv.append("-C")
    pids = bouncer_pids or []
    client0, bouncer0 = cpu.children_cpu(), cpu.process_cpu(pids)
    postgres0, machine0 = cpu.postgres_cpu(postmaster), cpu.machine_cpu()
    started = time.monotonic()
    try:
        done = subprocess.run([*argv, *target], env=env, capture_output=True, text=True,
                              timeout=seconds + PGBENCH_GRACE_S, check=False)  # fmt: skip
        output, error = done.stdout + done.stderr, ""
        if done.returncode not in (0, 2):
            error = last_line(done.stderr) or f"pgbench exited with {done.returncode}"
    except subprocess.TimeoutExpired:
        output, error = "", f"pgbench did not finish within {seconds + PGBENCH_GRACE_S:.0f} s"
    took = time.monotonic() - started
    figures = parse_pgbench(output)
    if figures["tps"] is None and not error:
        error = last_line(output) or "no tps in pgbench's output"
    if figures["aborted"] and not error:
        error = "some pgbench clients aborted: " + _first_match(output, "aborted")
    client_cpu = cpu.children_cpu() - client0
    bouncer_cpu = cpu.process_cpu(pids) - bouncer0
    machine_cpu = cpu.machine_cpu() - machine0
    return PgbenchRun(
        arm=arm, seconds=round(took, 2), client_cpu_s=round(client_cpu, 3),
        bouncer_cpu_s=round(bouncer_cpu, 3),
        postgres_cpu_s=round(cpu.settled_postgres_cpu(postmaster) - postgres0, 3),
        machine_cpu_s=round(machine_cpu, 3), error=error, **figures,
    )  # fmt: skip


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _first_match(text: str, needle: str) -> str:
    return next((line[:200] for line in text.splitlines() if needle in line.lower()), "")


def pgbench_init(binary: Path, direct_url: str, scale: int = PGBENCH_SCALE) -> bool:
    """``pgbench -i -s scale`` as the migrator, unless the tables hold that scale already."""
    with contextlib.suppress(psycopg.Error), psycopg.connect(direct_url, connect_timeout=10) as c:
        row = c.execute("SELECT count(*) FROM pgbench_branches").fetchone()
        if row and row[0] == scale:
            return False
    target, env = client_env(direct_url)
    done = subprocess.run([str(binary), "-i", "-q", "-s", str(scale), *target], env=env,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"pgbench -i failed: {last_line(done.stderr)}")
    return True
