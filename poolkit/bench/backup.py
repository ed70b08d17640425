"""Figures of pgBackRest on the local target: backup, restore and the recovery point.

``python -m poolkit.bench.backup [--scale 50] [--archive-timeout 10] [--out DIR]`` brings up
a scratch local stack with ``poolkit:backup`` (posix repository, encrypted), fills it with
``pgbench -i -s SCALE``, then measures:

- a full backup: seconds, database size and bytes stored (zstd, encrypted);
- the recovery point: one committed row, then the seconds until its WAL segment is in the
  repository with no forced switch (what ``archive_timeout`` bounds);
- ``restore --to latest`` after the data directory is deleted: seconds from the start of the
  restore until Postgres has promoted, and that every pgbench row is back.

Writes ``backup.json``. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from poolkit.bench.pgbench import pgbench_init
from poolkit.config import parse_stack
from poolkit.envfile import read_env
from poolkit.local.processes import port_in_use


def _free_port(start: int) -> int:
    port = start
    while port_in_use(port):
        port += 1
    return port


def _count(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return int(conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()[0])


def _archived_after_commit(url: str, timeout_s: float) -> float:
    """Seconds from a commit until its WAL segment is archived (no forced switch)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS rpo (at timestamptz)")
        conn.execute("INSERT INTO rpo VALUES (now())")
        committed = time.monotonic()
        (segment,) = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
        while time.monotonic() - committed < timeout_s:
            (last,) = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
            if last and last[:24] >= segment:
                return time.monotonic() - committed
            time.sleep(0.1)
    raise RuntimeError(f"WAL segment {segment} not archived within {timeout_s} s")


def run(scale: int, archive_timeout: int, out: Path, say: Any = print) -> dict[str, Any]:
    from poolkit import backup, local
    from poolkit.backup_targets import LocalTarget

    project = Path(__file__).resolve().parent.parent.parent
    with tempfile.TemporaryDirectory(prefix="poolkit-bench-backup-") as folder:
        root = Path(folder)
        root.chmod(0o755)
        postgres_port = _free_port(25532)
        stack = parse_stack({
            "poolkit:postgres": {"port": postgres_port, "memory": "1GiB"},
            "poolkit:pgbouncer": {"port": _free_port(postgres_port + 1)},
            "poolkit:backup": {"enabled": True, "archive_timeout": archive_timeout},
        }, "benchbackup")  # fmt: skip
        runner = local.Runner(root / "state", local.Progress())
        up = runner.up(stack, project, root / ".env.benchbackup")
        try:
            direct = read_env(up.env_files[0])["DIRECT_URL"]
            started = time.monotonic()
            pgbench_init(up.tools.pgbin / "pgbench", direct, scale)
            say(f"bench-backup: pgbench -i -s {scale} in {time.monotonic() - started:.1f} s")
            rows = _count(direct)
            target = LocalTarget(up.stack, runner.paths.root)
            taken, backup_s = backup.backup(target, "full")
            say(f"bench-backup: full backup in {backup_s:.1f} s: {taken.size / 1e6:,.0f} MB, "
                f"{taken.stored / 1e6:,.0f} MB stored")
            rpo_s = _archived_after_commit(direct, archive_timeout * 3 + 30)
            say(f"bench-backup: a commit reached the repository after {rpo_s:.1f} s "
                f"(archive_timeout {archive_timeout} s)")
            from poolkit.local import Host, Postgres

            Postgres(Host(runner.paths, up.tools.pgbin, local.service_user())).stop()
            shutil.rmtree(runner.paths.data)
            result = backup.restore(target, "latest", lambda _plan: True)
            assert result is not None
            restore_s = result[1]
            restored = _count(direct)
            say(f"bench-backup: restore --to latest in {restore_s:.1f} s, "
                f"{restored} of {rows} pgbench_accounts rows back")
        finally:
            runner.down(purge=True, purge_backups=True)
    results = {
        "scale": scale, "rows": rows, "restored_rows": restored,
        "backup_s": round(backup_s, 2), "database_bytes": taken.size,
        "stored_bytes": taken.stored, "archive_timeout_s": archive_timeout,
        "commit_to_archive_s": round(rpo_s, 2), "restore_s": round(restore_s, 2),
        "meta": {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "postgres": up.tools.pg_version},
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "backup.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=50, help="pgbench scale (50: ~750 MB)")
    parser.add_argument("--archive-timeout", type=int, default=10, help="seconds")
    parser.add_argument("--out", type=Path, default=Path("bench"), help="folder for backup.json")
    args = parser.parse_args()
    run(args.scale, args.archive_timeout, args.out)


if __name__ == "__main__":
    main()
