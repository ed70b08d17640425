"""Backups and point-in-time restore on the Docker target: the real program, real pgBackRest.

The stack (backups on, ``archive_timeout`` 2 s) is applied to the engine by the real program.
Under a pooled write load: a full backup, more writes, a time T (the load held still for an
instant), more writes; then the Postgres container is SIGKILLed and its data volume emptied.
``poolkit restore --target pulumi --to latest`` brings back every acknowledged row, ``--to T``
exactly the rows acknowledged before T; the replaced data is kept in the volume, and the
containers and volumes are the ones the program made (no Pulumi state changes).

Then ``pulumi destroy``: the repository volume is retained (dropped from the state, kept on the
engine), the next ``pulumi up`` of the stack (new containers, data volume and passwords) adopts
it, and ``restore --to latest`` brings the rows back through the new stack's pooled URL.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from collections.abc import Iterator

import docker
import psycopg
import pytest

from poolkit import pulumi_target
from poolkit.config import load_stack
from poolkit.layouts import COMPONENT_LABEL
from tests.backup.gated_load import rows, write_around_a_backup
from tests.conftest import run_cli

from .conftest import FIGURES
from .engine_mocks import RUN_LABEL
from .stack import E2EStack, bring_up, new_stack, update

pytestmark = pytest.mark.e2e
ARCHIVE_TIMEOUT_S = 2
DATA = "/var/lib/postgresql/data"


@pytest.fixture(scope="module")
def stack(client: docker.DockerClient) -> Iterator[E2EStack]:
    stack = new_stack(client)
    stack.config.pop("poolkit:apps")
    stack.config["poolkit:backup"] = {"enabled": True, "archive_timeout": ARCHIVE_TIMEOUT_S}
    # What `poolkit up --target pulumi` saves in the stack's config, which destroy keeps.
    stack.config["poolkit:backup_passphrase"] = secrets.token_urlsafe(48)
    stack.secret_keys = ["poolkit:backup_passphrase"]
    import yaml

    stack.stack_file.write_text(yaml.safe_dump({"config": stack.config}, sort_keys=False))
    try:
        bring_up(stack)
        # What `poolkit up --target pulumi` does next for a stack with backups.
        pulumi_target.ensure_backups(load_stack(stack.stack_file))
        yield stack
    finally:
        left = stack.tear_down()
        assert left == {"containers": [], "networks": [], "volumes": []}, left


def cli(stack: E2EStack, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--target", "pulumi", "--stack-file", str(stack.stack_file),
                   check=check)  # fmt: skip


def seconds_in(text: str, after: str) -> float:
    match = re.search(rf"{after}[^\n]*? in ([0-9.]+) s", text)
    assert match, text
    return float(match.group(1))


def empty_data_volume(stack: E2EStack) -> None:
    """Delete everything in the data volume, as a lost disk would."""
    postgres = stack.container("postgres")
    volume = next(m["Name"] for m in postgres.attrs["Mounts"] if m["Destination"] == DATA)
    stack.client.containers.run(
        postgres.image.id, entrypoint=["find", DATA, "-mindepth", "1", "-delete"],
        user="postgres", volumes={volume: {"bind": DATA, "mode": "rw"}}, remove=True,
        labels={RUN_LABEL: stack.run_id},
    )  # fmt: skip


def test_backup_volume_and_private_config(stack: E2EStack) -> None:
    volumes = stack.client.volumes.list(filters={"label": f"{COMPONENT_LABEL}=backups"})
    assert [v.name for v in volumes if stack.name in v.name], "no backup volume"
    postgres = stack.container("postgres")
    done = postgres.exec_run(["stat", "-c", "%a %U", "/etc/poolkit/pgbackrest.conf"])
    assert done.output.decode().split() == ["600", "postgres"]


def test_pitr_under_write_load_after_sigkill_and_lost_volume(stack: E2EStack) -> None:
    env = stack.env()
    direct, pooled = env["DIRECT_URL"], env["DATABASE_URL"]
    refused = cli(stack, "restore", "--to", "latest", "--yes", check=False)
    assert refused.returncode == 2 and "no backup yet" in refused.stderr, refused.stderr
    timeline = write_around_a_backup(lambda *args: cli(stack, *args), direct, pooled,
                                     ARCHIVE_TIMEOUT_S)  # fmt: skip
    taken, before_t, target, acked = (timeline.taken, timeline.before_t, timeline.target,
                                      timeline.acked)  # fmt: skip

    postgres = stack.container("postgres")
    postgres.kill(signal="SIGKILL")
    empty_data_volume(stack)

    latest = cli(stack, "restore", "--to", "latest", "--yes")
    assert rows(direct) == acked, "restore --to latest lost acknowledged rows"
    at_t = cli(stack, "restore", "--to", target, "--yes")
    assert rows(direct) == before_t, "restore --to T is not exactly the rows before T"
    with psycopg.connect(pooled, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pitr").fetchone()[0] == len(before_t)
    kept = postgres.exec_run(["ls", f"{DATA}/.poolkit-previous"], user="postgres")
    assert len(kept.output.split()) == 2, kept.output
    listed = cli(stack, "backups")
    assert " full " in listed.stdout, listed.stdout
    FIGURES["Docker backup and point-in-time restore"] = {
        "full backup (pgbackrest, with stanza check)": seconds_in(taken.stdout, "backup"),
        "after check: last commit -> WAL in the repository": timeline.archived_s,
        "restore --to latest (restore + switch + recovery)": seconds_in(latest.stdout,
                                                                         "restored and running"),
        "restore --to T": seconds_in(at_t.stdout, "restored and running"),
    }  # fmt: skip
    print(f"rows: {len(acked)} acknowledged, {len(before_t)} before T")


def test_destroy_keeps_the_repository_and_the_next_up_restores_from_it(
    stack: E2EStack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack.mocks is not None
    before = rows(stack.env()["DIRECT_URL"])
    cli(stack, "backup")
    old_passwords = set(stack.mocks.passwords.values())
    repository = f"poolkit-{stack.name}-backups"

    stack.mocks.destroy()
    assert ("retain", "poolkit-postgres-backups") in stack.mocks.actions
    assert stack.client.volumes.get(repository).name == repository
    assert not stack.client.containers.list(all=True, filters={"name": f"poolkit-{stack.name}-"})

    update(stack, stack.config, tuple(stack.secret_keys))  # `pulumi up`: an empty state
    assert ("create", "poolkit-postgres-backups") in stack.mocks.actions
    assert not old_passwords & set(stack.mocks.passwords.values()), "new passwords expected"
    pulumi_target.ensure_backups(load_stack(stack.stack_file))  # a new cluster: warned, not fatal
    assert "holds the backups of an earlier cluster" in capsys.readouterr().err
    direct, pooled = stack.env()["DIRECT_URL"], stack.env()["DATABASE_URL"]
    with psycopg.connect(direct, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('pitr')").fetchone() == (None,)
    listed = cli(stack, "backups")
    assert listed.stdout.count(" full ") == 2, listed.stdout

    restored = cli(stack, "restore", "--to", "latest", "--yes")
    assert rows(direct) == before, "the kept repository did not bring the rows back"
    with psycopg.connect(pooled, autocommit=True) as conn:  # the new passwords work again
        assert conn.execute("SELECT count(*) FROM pitr").fetchone()[0] == len(before)
    assert "WAL archiving works" in cli(stack, "check").stdout
    FIGURES["Docker backup and point-in-time restore"][
        "after destroy + up: restore --to latest"] = seconds_in(restored.stdout,
                                                                "restored and running")


def test_the_containers_scheduler_takes_a_full_backup_when_it_is_due(stack: E2EStack) -> None:
    """A schedule due every minute: the image's poolkit-backup-scheduler (started by the
    entrypoint next to the server) takes a full backup without any `poolkit backup`."""
    before = len(json.loads(cli(stack, "backups", "--json").stdout))
    config = {**stack.config, "poolkit:backup": {**stack.config["poolkit:backup"],
                                                 "full_schedule": "* * * * *",
                                                 "retention_full": 5}}  # fmt: skip
    update(stack, config, tuple(stack.secret_keys))
    started = time.monotonic()
    while time.monotonic() - started < 150:
        if len(json.loads(cli(stack, "backups", "--json").stdout)) > before:
            break
        time.sleep(3)
    else:
        pytest.fail("no scheduled backup within 150 s:\n" + stack.container("postgres").logs(
            tail=40).decode(errors="replace"))
    log = stack.container("postgres").logs().decode(errors="replace")
    assert "poolkit-backup-scheduler" in log and "next: full backup at" in log, log[-2000:]
    FIGURES["Docker backup and point-in-time restore"][
        "scheduled full backup listed after the schedule's update (s)"] = round(
        time.monotonic() - started, 1)
