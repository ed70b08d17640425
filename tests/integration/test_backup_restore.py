"""Backups and point-in-time restore on the local target: real Postgres, PgBouncer, pgBackRest.

Under a write load through PgBouncer: a full backup, more writes, a time T (the load held
still for an instant), more writes; then Postgres is SIGKILLed and its data directory deleted.
``restore --to latest`` brings back every acknowledged row; ``restore --to T`` exactly the
rows acknowledged before T. Bad input is refused with exit code 2 and changes nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.backup.gated_load import rows, write_around_a_backup
from tests.conftest import LocalStack, run_cli, start_local_stack, stop_local_stack

pytestmark = pytest.mark.integration
ARCHIVE_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    stack = start_local_stack("poolkit-backup-", "pitr", with_apps=False,
                              backup={"enabled": True, "archive_timeout": ARCHIVE_TIMEOUT_S})
    try:
        yield stack
    finally:
        stop_local_stack(stack)


def cli(stack: LocalStack, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--stack-file", str(stack.stack_file), "--state-dir",
                   str(stack.state_dir), check=check)  # fmt: skip


def test_pgbackrest_conf_is_private_and_passphrase_stays_out_of_argv(stack: LocalStack) -> None:
    conf = stack.state_dir / "conf" / "pgbackrest.conf"
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    assert "repo1-cipher-type=aes-256-cbc" in conf.read_text()
    with psycopg.connect(stack.env()["DIRECT_URL"]) as conn:
        (command,) = conn.execute("SHOW archive_command").fetchone()
    assert command.startswith("pgbackrest --config=") and "cipher" not in command


def test_restore_is_refused_before_any_backup(stack: LocalStack) -> None:
    done = cli(stack, "restore", "--to", "latest", "--yes", check=False)
    assert done.returncode == 2, done.stderr
    assert "no backup yet" in done.stderr
    assert not (stack.state_dir / "data.restore").exists()
    assert not (stack.state_dir / "data.previous").exists()


def test_pitr_under_write_load_after_sigkill_and_lost_data(stack: LocalStack) -> None:
    env = stack.env()
    direct, pooled = env["DIRECT_URL"], env["POOLED_DATABASE_URL"]
    timeline = write_around_a_backup(lambda *args: cli(stack, *args), direct, pooled,
                                     ARCHIVE_TIMEOUT_S)  # fmt: skip
    taken, before_t, target, acked = (timeline.taken, timeline.before_t, timeline.target,
                                      timeline.acked)  # fmt: skip
    assert "backup " in taken.stdout

    os.kill(stack.postmaster_pid(), signal.SIGKILL)
    time.sleep(0.5)
    shutil.rmtree(stack.state_dir / "data")

    # Bad input first: a time before the first backup changes nothing.
    early = cli(stack, "restore", "--to", "2020-01-01T00:00:00Z", "--yes", check=False)
    assert early.returncode == 2 and "before the first backup" in early.stderr, early.stderr
    assert not (stack.state_dir / "data").exists()

    latest = cli(stack, "restore", "--to", "latest", "--yes")
    assert "restored and running" in latest.stdout
    assert rows(direct) == acked, "restore --to latest lost acknowledged rows"

    at_t = cli(stack, "restore", "--to", target, "--yes")
    assert rows(direct) == before_t, "restore --to T is not exactly the rows before T"
    kept = sorted((stack.state_dir / "data.previous").iterdir())
    assert len(kept) == 1, f"the replaced data directories were not kept: {kept}"
    # The pooled path works again on the restored server.
    with psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as conn:
        assert conn.execute("SELECT count(*) FROM pitr").fetchone()[0] == len(before_t)
    print(f"\nlocal PITR: {len(acked)} rows acknowledged, {len(before_t)} before T; "
          f"last commit archived after {timeline.archived_s:.1f} s\n{taken.stdout}{latest.stdout}"
          f"{at_t.stdout}")  # fmt: skip


def test_backups_lists_the_full_backup(stack: LocalStack) -> None:
    listed = cli(stack, "backups")
    assert " full " in listed.stdout, listed.stdout


def test_wrong_passphrase_is_refused_and_changes_nothing(stack: LocalStack) -> None:
    conf = stack.state_dir / "conf" / "pgbackrest.conf"
    original = conf.read_text()
    try:
        conf.write_text("\n".join(
            "repo1-cipher-pass=not-the-passphrase" if line.startswith("repo1-cipher-pass=")
            else line for line in original.splitlines()) + "\n")  # fmt: skip
        pid = stack.postmaster_pid()
        done = cli(stack, "restore", "--to", "latest", "--yes", check=False)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "passphrase" in done.stderr
        assert stack.postmaster_pid() == pid
        assert not (stack.state_dir / "data.restore").exists()
    finally:
        conf.write_text(original)


def test_missing_repository_is_refused(stack: LocalStack) -> None:
    repo = stack.state_dir / "backups"
    moved = Path(f"{repo}.moved")
    repo.rename(moved)
    try:
        done = cli(stack, "restore", "--to", "latest", "--yes", check=False)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "no backup repository" in done.stderr
    finally:
        moved.rename(repo)


def test_purge_keeps_the_repository_and_the_next_up_restores_from_it(stack: LocalStack) -> None:
    """``down --purge`` deletes the data and secrets but keeps the repository and its passphrase;
    the next ``up`` makes a new cluster (new passwords, a warning about the kept backups) and
    ``restore --to latest`` brings the rows back; ``--purge-backups`` deletes everything."""
    before = rows(stack.env()["DIRECT_URL"])
    cli(stack, "backup")
    old_secrets = (stack.state_dir / "secrets.json").read_text()

    purged = stack.poolkit("down", "--purge", "--yes")
    assert "kept the backup repository" in purged.stdout and "--purge-backups" in purged.stdout
    assert sorted(p.name for p in stack.state_dir.iterdir()) == ["backup-passphrase", "backups"]
    assert oct((stack.state_dir / "backup-passphrase").stat().st_mode & 0o777) == "0o600"

    again = stack.poolkit("up", "--no-smoke")
    assert "holds the backups of an earlier cluster" in again.stdout + again.stderr
    assert not (stack.state_dir / "backup-passphrase").exists()  # back in secrets.json
    assert (stack.state_dir / "secrets.json").read_text() != old_secrets  # new passwords
    env = stack.env()
    with psycopg.connect(env["DIRECT_URL"], autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('pitr')").fetchone() == (None,)

    restored = cli(stack, "restore", "--to", "latest", "--yes")
    assert "restored and running" in restored.stdout
    assert rows(env["DIRECT_URL"]) == before
    with psycopg.connect(env["POOLED_DATABASE_URL"], autocommit=True,
                         prepare_threshold=None) as conn:  # fmt: skip
        assert conn.execute("SELECT count(*) FROM pitr").fetchone()[0] == len(before)
    assert "WAL archiving works" in cli(stack, "check").stdout

    refused = run_cli("down", "--purge-backups", "--yes", "--state-dir", str(stack.state_dir),
                      check=False)  # fmt: skip
    assert refused.returncode == 2 and "add --purge" in refused.stderr
    gone = stack.poolkit("down", "--purge", "--purge-backups", "--yes")
    assert "backups" in gone.stdout and not stack.state_dir.exists()
