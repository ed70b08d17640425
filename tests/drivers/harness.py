"""Run the driver workloads against a stack's ``.env``: Python in-process, Node as a subprocess.

Shared by the local-target tests (tests/drivers) and the Docker e2e (tests/e2e). Figures go to
``FIGURES`` (printed at the end of the run) and to ``$POOLKIT_LOG_DIR/driver-figures.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dotenv import dotenv_values

from poolkit.node_apps import PRISMA_OFFLINE
from tests.drivers.workloads import PYTHON_DRIVERS, ROUNDS, WORKERS, run_python

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_DRIVERS = ("pg-client", "pg-named", "pg-pool", "prisma")
ALL_DRIVERS = (*PYTHON_DRIVERS, *NODE_DRIVERS)
HAZARDOUS = ("psycopg-connect", "psycopg-pool", "asyncpg-connect", "asyncpg-pool", "pg-named")
"""Drivers whose defaults prepare statements: without PgBouncer's tracking they must fail."""
NODE_TIMEOUT_S = 180
TABLE_SQL = """CREATE TABLE IF NOT EXISTS driver_items (
    id bigserial PRIMARY KEY, worker int NOT NULL, round int NOT NULL, tag text NOT NULL)"""

FIGURES: dict[str, dict[str, Any]] = {}
"""'target / driver' -> tally, for the terminal summary."""


def prepare_node() -> None:
    """``npm ci`` (when the lock file changed) and ``prisma generate``, both offline-safe."""
    npm = shutil.which("npm")
    if not shutil.which("node") or not npm:
        pytest.fail("node and npm are needed for the node-postgres and Prisma drivers: "
                    "apt-get install -y nodejs npm (Node 20.19+)", pytrace=False)  # fmt: skip
    env = {**os.environ, **PRISMA_OFFLINE}
    stamp = NODE_DIR / "node_modules" / ".poolkit-lock"
    lock = (NODE_DIR / "package-lock.json").read_text()
    if not stamp.is_file() or stamp.read_text() != lock:
        _run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], env, 600)
        stamp.write_text(lock)
    _run([str(NODE_DIR / "node_modules" / ".bin" / "prisma"), "generate"], env, NODE_TIMEOUT_S)


def _run(argv: list[str], env: dict[str, str], timeout: int) -> str:
    done = subprocess.run(argv, cwd=NODE_DIR, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}",
                    pytrace=False)  # fmt: skip
    return done.stdout


def create_table(env_file: Path) -> None:
    """The Prisma model's table, made with SQL over DIRECT_URL (migrations need the engine)."""
    with psycopg.connect(str(dotenv_values(env_file)["DIRECT_URL"]), autocommit=True) as conn:
        conn.execute(TABLE_SQL)


def run_driver(driver: str, env_file: Path, target: str) -> dict[str, Any]:
    """One workload against the stack whose ``.env`` is ``env_file``; its figures."""
    if driver in PYTHON_DRIVERS:
        figures = run_python(driver, env_file).as_dict()
    else:
        # Only PATH and the .env: the driver sees what an app started with --env-file sees.
        env = {"PATH": os.environ.get("PATH", ""), "DRIVER_WORKERS": str(WORKERS),
               "DRIVER_ROUNDS": str(ROUNDS)}  # fmt: skip
        out = _run(["node", f"--env-file={env_file}", "drivers.js", driver], env, NODE_TIMEOUT_S)
        figures = json.loads(out.strip().splitlines()[-1])
    FIGURES[f"{target} / {driver}"] = figures
    _save()
    return figures


def _save() -> None:
    folder = Path(os.environ.get("POOLKIT_LOG_DIR") or NODE_DIR.parents[2] / ".poolkit" / "logs")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "driver-figures.json").write_text(json.dumps(FIGURES, indent=2) + "\n")


def summary_lines() -> list[str]:
    lines = []
    for name, f in FIGURES.items():
        lines.append(f"{name:<40} {f['queries']:5d} queries  {f['wrong']:4d} wrong  "
                     f"{f['errors']:4d} errors  {f['first_problem'][:70]}")  # fmt: skip
    return lines
