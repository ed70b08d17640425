"""Benchmark: the cost of TLS per pooled connect, next to plain text, in one run.

``python -m poolkit.bench.tls [--connects N] [--out DIR]`` brings up a scratch local stack with
client TLS (a generated CA, ECDSA P-256 server certificate, PgBouncer on 127.0.0.2 and
127.0.0.1), then lets the same PgBouncer accept plain connections too
(``client_tls_sslmode = allow`` for the bench only, then RELOAD), so both arms share one
process, one pool and one Postgres. Arms alternate in small batches so drift hits both alike:

- plain: ``sslmode=disable``;
- tls: ``sslmode=verify-full`` with the stack's CA (what the ``.env`` URLs use).

Each connect is a new psycopg connection (TCP, TLS handshake, SCRAM through PgBouncer),
``SELECT 1``, close: what a Workers-style function does per request. Prints the median and
p95 milliseconds per connect, the client CPU per connect and the ratio tls / plain, and writes
``tls.json``. Traffic goes to 127.0.0.2 only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from poolkit.config import parse_stack
from poolkit.envfile import read_env
from poolkit.local.processes import port_in_use
from poolkit.urls import mask

ADDRESS = "127.0.0.2"
BATCH = 20


def _free_port(start: int) -> int:
    port = start
    while port_in_use(port) or port_in_use(port, ADDRESS):
        port += 1
    return port


def plain_url(url: str) -> str:
    """``url`` with its TLS parameters replaced by ``sslmode=disable``."""
    base, _, query = url.partition("?")
    kept = [p for p in query.split("&") if p and not p.startswith(("sslmode=", "sslrootcert="))]
    return base + "?" + "&".join([*kept, "sslmode=disable"])


def _connect_once(url: str) -> tuple[float, float, bool]:
    """Wall and client-CPU seconds of connect + SELECT 1 + close; whether TLS was used."""
    cpu, wall = time.process_time(), time.perf_counter()
    with psycopg.connect(url, prepare_threshold=None, connect_timeout=10) as conn:
        conn.execute("SELECT 1").fetchone()
        tls = bool(conn.pgconn.ssl_in_use)
    return time.perf_counter() - wall, time.process_time() - cpu, tls


def measure(urls: dict[str, str], connects: int) -> dict[str, Any]:
    """Alternate the arms in batches; return per-arm figures and the ratios."""
    walls: dict[str, list[float]] = {arm: [] for arm in urls}
    cpus: dict[str, list[float]] = {arm: [] for arm in urls}
    for url in urls.values():  # warm-up: pool servers open, caches filled
        for _ in range(5):
            _connect_once(url)
    done = 0
    while done < connects:
        for arm, url in urls.items():
            for _ in range(min(BATCH, connects - done)):
                wall, cpu, tls = _connect_once(url)
                if tls != (arm == "tls"):
                    raise RuntimeError(f"arm {arm} connected with ssl_in_use={tls}")
                walls[arm].append(wall)
                cpus[arm].append(cpu)
        done += BATCH
    arms = {
        arm: {
            "connects": len(walls[arm]),
            "median_ms": round(statistics.median(walls[arm]) * 1000, 3),
            "p95_ms": round(statistics.quantiles(walls[arm], n=20)[18] * 1000, 3),
            "client_cpu_ms": round(statistics.mean(cpus[arm]) * 1000, 3),
            "connects_per_s": round(len(walls[arm]) / sum(walls[arm]), 1),
        }
        for arm in urls
    }
    plain, tls = arms["plain"], arms["tls"]
    return {
        "arms": arms,
        "tls_over_plain_median": round(tls["median_ms"] / plain["median_ms"], 2),
        "tls_added_ms_median": round(tls["median_ms"] - plain["median_ms"], 3),
        "tls_over_plain_client_cpu": round(tls["client_cpu_ms"] / plain["client_cpu_ms"], 2),
    }


def run(connects: int, out: Path, say=print) -> dict[str, Any]:
    from poolkit import local  # the runner imports rich

    project = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="poolkit-bench-tls-") as folder:
        root = Path(folder)
        root.chmod(0o755)
        postgres_port = _free_port(25432)
        bouncer_port = _free_port(postgres_port + 1)
        stack = parse_stack({
            "poolkit:postgres": {"port": postgres_port, "memory": "512MiB"},
            "poolkit:pgbouncer": {"port": bouncer_port, "client_tls": True,
                                  "publish_address": ADDRESS},
        }, "benchtls")  # fmt: skip
        runner = local.Runner(root / "state", local.Progress())
        up = runner.up(stack, project, root / ".env.benchtls")
        try:
            env = read_env(up.env_files[0])
            ini = runner.paths.conf / "pgbouncer.ini"
            text = ini.read_text()
            ini.write_text(re.sub(r"(?m)^client_tls_sslmode = require$",
                                  "client_tls_sslmode = allow", text))  # fmt: skip
            _sighup(runner)
            time.sleep(0.5)
            tls_url = env["POOLED_DATABASE_URL"]
            urls = {"plain": plain_url(tls_url), "tls": tls_url}
            say(f"bench-tls: {connects} connects per arm through PgBouncer "
                f"{up.tools.pgbouncer_version} on {ADDRESS}:{bouncer_port} ({mask(tls_url)})")
            results = measure(urls, connects)
        finally:
            runner.down(purge=True)
    results["meta"] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                       "pgbouncer": up.tools.pgbouncer_version, "postgres": up.tools.pg_version,
                       "key": "ECDSA P-256", "client": f"psycopg {psycopg.__version__}, "
                       f"libpq {psycopg.pq.version()}"}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "tls.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def _sighup(runner: Any) -> None:
    """RELOAD by signal: the console itself would refuse a plain admin login after the edit."""
    from poolkit.local import read_pid

    pid = read_pid(runner.paths.run / "pgbouncer.pid", "pgbouncer")
    if pid is None:
        raise RuntimeError("PgBouncer is not running")
    os.kill(pid, signal.SIGHUP)


def report(results: dict[str, Any]) -> list[str]:
    lines = []
    for arm, figures in results["arms"].items():
        lines.append(f"{arm:5}  median {figures['median_ms']:7.3f} ms  p95 {figures['p95_ms']:7.3f}"
                     f" ms  client CPU {figures['client_cpu_ms']:6.3f} ms  "
                     f"{figures['connects_per_s']:7.1f} connects/s")
    lines.append(f"tls / plain: {results['tls_over_plain_median']}x per connect "
                 f"(+{results['tls_added_ms_median']} ms), client CPU "
                 f"{results['tls_over_plain_client_cpu']}x")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=400, help="connects per arm")
    parser.add_argument("--out", type=Path, default=Path("bench"), help="folder for tls.json")
    args = parser.parse_args()
    for line in report(run(args.connects, args.out)):
        print(line)


if __name__ == "__main__":
    main()
