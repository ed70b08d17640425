"""The local runner's life cycle on a stack of its own: changes, bad situations, down --purge.

Tests in this module run in order on one stack (module scope) and change its config.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import psutil
import psycopg
import pytest

from poolkit import console
from tests.conftest import (
    LocalStack,
    free_ports,
    local_stack_running,
    make_base_dir,
    run_cli,
    write_stack_file,
)

pytestmark = pytest.mark.integration
# A fixed max_connections keeps a pool-size change a pure reload (no postmaster setting moves).
FIXED = {"postgres": {"max_connections": 40}}
RESIZED_POOL = 8
"""The plan's pool after the resize (from 5 at 2 CPUs): budget 8 + 2 over the default 2
processes, 5 each, so each process's default_pool_size goes from 2 to round(5 * 8/10) = 4."""


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with local_stack_running("poolkit-lifecycle-", "lifecycle", with_apps=False, **FIXED) as stack:
        yield stack


def _rewrite(stack: LocalStack, *, memory: str = "512MiB", pool: int | None = None) -> None:
    sections = {"postgres": dict(FIXED["postgres"])}
    if pool is not None:
        sections["pgbouncer"] = {"default_pool_size": pool}
    write_stack_file(stack.stack_file, postgres_port=stack.postgres_port,
                     pgbouncer_port=stack.pgbouncer_port, memory=memory, **sections)  # fmt: skip


def _config(stack: LocalStack) -> dict[str, str]:
    return console.config(stack.env()["PGBOUNCER_STATS_URL"])


def test_pool_size_change_reloads_pgbouncer_without_dropping_a_client(stack: LocalStack) -> None:
    env = stack.env()
    postmaster = stack.postmaster_pid()
    bouncer = stack.pgbouncer_pids()
    old_size = int(_config(stack)["default_pool_size"])
    with psycopg.connect(env["POOLED_DATABASE_URL"], prepare_threshold=None, autocommit=True,
                         application_name="held-client") as held:  # fmt: skip
        held.execute("SELECT 1")
        _rewrite(stack, pool=RESIZED_POOL)
        done = stack.poolkit("up", "--no-smoke")
        assert "RELOAD" in done.stdout, done.stdout
        assert held.execute("SELECT 41 + 1").fetchone() == (42,)
        clients = stack.console_rows("CLIENTS")
        assert "held-client" in [c["application_name"] for c in clients]
    assert (old_size, int(_config(stack)["default_pool_size"])) == (2, 4)
    assert (stack.postmaster_pid(), stack.pgbouncer_pids()) == (postmaster, bouncer)


def test_restart_only_setting_restarts_postgres_and_keeps_data(stack: LocalStack) -> None:
    direct = stack.env()["DIRECT_URL"]
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('survives a restart')")
    postmaster = stack.postmaster_pid()
    _rewrite(stack, memory="768MiB", pool=RESIZED_POOL)
    done = stack.poolkit("up", "--no-smoke")
    assert "restarting PostgreSQL: shared_buffers" in done.stdout, done.stdout
    assert stack.postmaster_pid() != postmaster
    with psycopg.connect(direct) as conn:
        assert conn.execute("SHOW shared_buffers").fetchone() == ("192MB",)
        assert conn.execute("SELECT note FROM kept").fetchall() == [("survives a restart",)]


def test_new_app_password_reapplies_init_sql_and_reloads(stack: LocalStack) -> None:
    old_url = stack.env()["POOLED_DATABASE_URL"]
    password = "a-new-app-password@:/%?#x"
    done = stack.poolkit("up", "--no-smoke", env={"POOLKIT_APP_PASSWORD": password})
    assert "re-applied init.sql" in done.stdout, done.stdout
    new_url = stack.env()["POOLED_DATABASE_URL"]
    assert new_url != old_url
    with psycopg.connect(new_url, prepare_threshold=None) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(old_url, prepare_threshold=None, connect_timeout=5).close()
    for pid in _pids_of(stack):
        assert password not in " ".join(psutil.Process(pid).cmdline())


def test_ports_in_use_are_refused_before_anything_starts(stack: LocalStack) -> None:
    base = make_base_dir("poolkit-clash-")
    try:
        clash = base / "Pulumi.clash.yaml"
        write_stack_file(clash, postgres_port=stack.postgres_port,
                         pgbouncer_port=free_ports(1))  # fmt: skip
        done = run_cli("up", "--stack-file", str(clash), "--state-dir", str(base / "state"),
                       "--env-file", str(base / ".env"), check=False)  # fmt: skip
        assert done.returncode == 1
        assert f"port already in use on 127.0.0.1: {stack.postgres_port}" in done.stderr
        assert "Traceback" not in done.stderr
        assert not (base / "state").exists() and not (base / ".env").exists()
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_missing_binaries_say_how_to_install(stack: LocalStack) -> None:
    done = stack.poolkit("up", "--no-smoke", check=False,
                         env={"POOLKIT_PGBOUNCER": "/nonexistent/pgbouncer"})  # fmt: skip
    assert done.returncode == 1
    assert "./scripts/bootstrap" in done.stderr and "apt-get install -y" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_stack_file_exits_2(stack: LocalStack) -> None:
    bad = stack.base / "Pulumi.bad.yaml"
    bad.write_text("config:\n  poolkit:pgbouncer:\n    pool_mod: transaction\n")
    done = run_cli("up", "--stack-file", str(bad), "--state-dir", str(stack.base / "bad"),
                   check=False)  # fmt: skip
    assert done.returncode == 2
    assert "did you mean 'pool_mode'" in done.stderr


def test_stale_pid_files_are_detected_and_cleaned(stack: LocalStack) -> None:
    stack.poolkit("down")
    assert not _pids_of(stack)
    # Pid files naming processes that are not ours: pid 1 (init) runs, but is no supervisor.
    run = stack.state_dir / "run"
    (run / "pgbouncer.supervisor.pid").write_text("1\n")
    (stack.state_dir / "data" / "postmaster.pid").write_text("999999999\n")
    done = stack.poolkit("up", "--no-smoke")
    assert "removed stale pid file pgbouncer.supervisor.pid" in done.stdout
    assert "removed stale pid file postmaster.pid" in done.stdout
    assert len(_pids_of(stack)) >= 2


def test_data_dir_of_another_major_version_is_refused(stack: LocalStack) -> None:
    base = make_base_dir("poolkit-oldpg-")
    try:
        state = base / "state"
        (state / "data").mkdir(parents=True)
        (state / "data" / "PG_VERSION").write_text("9\n")
        done = run_cli("up", "--stack-file", str(stack.stack_file), "--state-dir", str(state),
                       "--env-file", str(base / ".env"), check=False)  # fmt: skip
        assert done.returncode == 1
        assert "holds a PostgreSQL 9 cluster" in done.stderr
        assert "--purge" in done.stderr
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_logs_hold_no_password(stack: LocalStack) -> None:
    secrets = json.loads((stack.state_dir / "secrets.json").read_text())
    passwords = [c["password"] if isinstance(c, dict) else c for c in secrets.values()]
    logs = list((stack.state_dir / "log").iterdir())
    assert logs
    for log in logs:
        text = log.read_text(errors="replace")
        assert not [p for p in passwords if p in text], log.name


def test_down_purge_leaves_no_process_and_no_files(stack: LocalStack) -> None:
    assert _pids_of(stack)
    done = stack.poolkit("down", "--purge", "--yes")
    assert "stopped PostgreSQL" in done.stdout
    assert not _pids_of(stack)
    assert not stack.state_dir.exists() and not stack.env_file.exists()
    report = json.loads(stack.poolkit("status", "--json").stdout)
    assert not any(c["running"] for c in report["components"])


def _pids_of(stack: LocalStack) -> list[int]:
    """Processes whose command line names the stack's state dir (servers, supervisors)."""
    needle = str(stack.state_dir)
    return [process.pid for process in psutil.process_iter(["cmdline"])
            if needle in " ".join(process.info["cmdline"] or [])]  # fmt: skip
