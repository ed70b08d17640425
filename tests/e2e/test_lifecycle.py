"""A second and third ``pulumi up`` under a pooled write load, then ``pulumi destroy``.

One stack of its own, brought up by the real program under the engine-applying mocks. Writers
follow the kit's retry guidance (``poolkit.retry``) through the pooled URL while the program
runs again with three changes, one at a time: a pool resize, a password rotation (the owner
role's) and a rebuilt Postgres image. After each: no acknowledged write is lost, no writer gave
up, and a replaced Postgres stopped cleanly (fast shutdown, then a start without crash
recovery) on the same data volume. The pool resize stays within max_connections' rounding
step, so it replaces PgBouncer only and the same postmaster keeps running. Destroy stops every
container gracefully and leaves only the images, as the provider does.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest

from poolkit.outputs import Outputs
from tests.pulumi.harness import PROJECT
from tests.reliability.load import WriteLoad, create_table

from .conftest import FIGURES
from .engine_mocks import RUN_LABEL
from .stack import E2EStack, bring_up, new_stack, update

pytestmark = pytest.mark.e2e
CLEAN_STOP = ("received fast shutdown request", "database system is shut down")
"""Postgres's log lines of a fast shutdown that finished its shutdown checkpoint."""
CLEAN_START = "database system was shut down at"
CRASH_RECOVERY = ("not properly shut down", "automatic recovery in progress",
                  "database system was interrupted")  # fmt: skip
REBUILD_LABEL = "poolkit.e2e-rebuild"
WRITERS = 4
PROGRESS_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def stack(client: docker.DockerClient) -> Iterator[E2EStack]:
    stack = new_stack(client)
    try:
        bring_up(stack)
        yield stack
    finally:
        stack.tear_down()
        # The rebuild's own step (below the run's labels) is left untagged: remove it too.
        for image in client.images.list(filters={"label": f"{REBUILD_LABEL}={stack.base.name}"}):
            client.images.remove(image.id, force=True)


def rebuilt_project(base: Path) -> Path:
    """The build contexts the program reads, with the Postgres Dockerfile changed (one label
    more): the provider builds that image again, and its containers are replaced."""
    project = base / "project"
    for folder in ("images", "apps"):
        # apps/ts's packages and staged image context: 400 MB this stack never reads
        shutil.copytree(PROJECT / folder, project / folder,
                        ignore=shutil.ignore_patterns("node_modules", "image"))
    dockerfile = project / "images" / "postgres" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + f'LABEL {REBUILD_LABEL}="{base.name}"\n')
    return project


def postgres_log(stack: E2EStack) -> str:
    return stack.container("postgres").logs().decode(errors="replace")


def postmaster_started(stack: E2EStack) -> Any:
    with psycopg.connect(stack.env()["DIRECT_URL"]) as conn:
        return conn.execute("SELECT pg_postmaster_start_time()").fetchone()


def test_changes_under_load_lose_no_write_and_stop_postgres_cleanly(stack: E2EStack) -> None:
    assert stack.mocks is not None
    mocks, pg = stack.mocks, stack.outputs[Outputs.CONTAINERS]["postgres"]
    create_table(stack.env()["DIRECT_URL"], "writes")
    password = f"rotated-{secrets.token_urlsafe(12)}"
    pool = {**stack.config["poolkit:pgbouncer"], "default_pool_size": 4}
    changes: list[tuple[str, dict[str, Any], tuple[str, ...], Path]] = [
        ("pool resize", {**stack.config, "poolkit:pgbouncer": pool}, (), PROJECT),
        ("password rotation", {**stack.config, "poolkit:pgbouncer": pool,
                               "poolkit:migrator_password": password},
         ("poolkit:migrator_password",), PROJECT),
        ("image rebuild", {**stack.config, "poolkit:pgbouncer": pool,
                           "poolkit:migrator_password": password},
         ("poolkit:migrator_password",), rebuilt_project(stack.base)),
    ]  # fmt: skip
    figures: dict[str, float] = {}
    replaced: dict[str, list[str]] = {}
    with WriteLoad(stack.env()["POOLED_DATABASE_URL"], "writes", writers=WRITERS) as load:
        load.wait_progress(100, timeout=PROGRESS_TIMEOUT_S)
        for name, config, secret_keys, project in changes:
            first_action = len(mocks.actions)
            postgres_started = postmaster_started(stack)
            started = time.monotonic()
            figures[f"{name}: pulumi up"] = update(stack, config, secret_keys, project)
            load.wait_progress(100, timeout=PROGRESS_TIMEOUT_S)
            figures[f"{name}: longest client wait"] = round(
                load.longest_wait(started, time.monotonic()), 2)
            actions = mocks.actions[first_action:]
            replaced[name] = sorted({n for action, n in actions if action == "replace"})
            if name == "pool resize":  # PgBouncer's change only: the same postmaster runs on
                assert postmaster_started(stack) == postgres_started
            if any(action == "replace" and n.endswith("postgres-container")
                   for action, n in actions):  # fmt: skip
                figures[f"{name}: Postgres stop"] = mocks.stops[pg]
                stopped = mocks.removed_logs[pg]
                assert all(line in stopped for line in CLEAN_STOP), f"{name}:\n{stopped[-2000:]}"
                log = postgres_log(stack)
                assert CLEAN_START in log, f"{name}:\n{log[-2000:]}"
                assert not any(line in log for line in CRASH_RECOVERY), f"{name}:\n{log[-2000:]}"
    direct_url = stack.env()["DIRECT_URL"]
    verdict = load.verdict(direct_url)
    FIGURES[f"e2e lifecycle {stack.name}: {WRITERS} writers, {verdict.acked} acknowledged "
            f"writes, {verdict.missing} lost (seconds)"] = figures
    print(f"\nreplaced per change: {replaced}\n{verdict}; {load.totals()}")
    assert not load.failures, load.failures[:3]
    assert verdict.missing == 0, "an acknowledged write is missing"
    assert verdict.distinct_acked == verdict.acked, "a key was acknowledged twice"
    assert verdict.rows == verdict.acked and verdict.unacked_rows == 0
    # What each change replaced, as the provider would (uploads, envs or the image changed).
    assert "poolkit-pgbouncer-container" in replaced["pool resize"]
    assert "poolkit-postgres-container" not in replaced["pool resize"], "postgresql.conf changed"
    assert "poolkit-postgres-container" in replaced["password rotation"]
    assert "poolkit-postgres-container" in replaced["image rebuild"]
    assert "poolkit-pgbouncer-container" not in replaced["image rebuild"]
    # The rotated password is the owner's now, on the data that survived every replacement.
    assert password in direct_url
    with psycopg.connect(direct_url) as conn:
        assert conn.execute("SELECT count(*) FROM writes").fetchone() == (verdict.rows,)


def test_destroy_stops_every_container_gracefully_and_leaves_the_images(
    stack: E2EStack,
) -> None:
    assert stack.mocks is not None
    names = stack.outputs[Outputs.CONTAINERS]
    apps = [name for replicas in names["apps"].values() for name in replicas]
    stack.mocks.destroy()
    stopped = stack.mocks.removed_logs[names["postgres"]]
    assert all(line in stopped for line in CLEAN_STOP), stopped[-2000:]
    grace = {"postgres": 120, "pgbouncer": 20, **{app: 10 for app in apps}}
    for role, limit in grace.items():
        name = names.get(role, role)
        log = stack.mocks.removed_logs[name][-2000:]
        assert stack.mocks.stops[name] < limit, (role, stack.mocks.stops[name], log)
    FIGURES[f"e2e destroy {stack.name}: stop seconds"] = {
        role: stack.mocks.stops[names.get(role, role)] for role in grace}
    selector = {"label": f"{RUN_LABEL}={stack.run_id}"}
    assert stack.leftovers() == {"containers": [], "networks": [], "volumes": []}
    images = {tag for image in stack.client.images.list(filters=selector) for tag in image.tags}
    assert {f"poolkit-{stack.name}-{role}:latest" for role in ("postgres", "pgbouncer", "app")
            } <= images  # fmt: skip
