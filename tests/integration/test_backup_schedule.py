"""The backup schedule runs: a local stack whose full backups are due every minute gets one
from its supervised ``backup-scheduler`` (images/postgres/poolkit-backup-scheduler), without
any ``poolkit backup``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.conftest import LocalStack, run_cli, start_local_stack, stop_local_stack

pytestmark = pytest.mark.integration
DUE_WITHIN_S = 150.0
"""A minute to the next due time, then the backup itself (a fresh, small cluster)."""


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    stack = start_local_stack("poolkit-schedule-", "sched", with_apps=False,
                              backup={"enabled": True, "full_schedule": "* * * * *",
                                      "diff_schedule": "0 1 1 1 *"})  # fmt: skip
    try:
        yield stack
    finally:
        stop_local_stack(stack)


def listed(stack: LocalStack) -> list[dict[str, object]]:
    done = run_cli("backups", "--json", "--stack-file", str(stack.stack_file), "--state-dir",
                   str(stack.state_dir))  # fmt: skip
    return list(json.loads(done.stdout))


def test_the_scheduler_takes_a_full_backup_when_it_is_due(stack: LocalStack) -> None:
    status = json.loads(stack.poolkit("status", "--json").stdout)
    scheduler = {c["name"]: c for c in status["components"]}["backup-scheduler"]
    assert scheduler["running"] and scheduler["user"] == stack.server_user, scheduler
    started = time.monotonic()
    while not (sets := listed(stack)) and time.monotonic() - started < DUE_WITHIN_S:
        time.sleep(3)
    assert [s["type"] for s in sets][:1] == ["full"], f"no scheduled backup in {DUE_WITHIN_S} s"
    log = (stack.state_dir / "log" / "backup-scheduler.out.log").read_text()
    assert "next: full backup at" in log
    deadline = time.monotonic() + 30
    while "full backup done" not in log and time.monotonic() < deadline:
        time.sleep(1)
        log = (stack.state_dir / "log" / "backup-scheduler.out.log").read_text()
    assert "full backup done" in log, log
    print(f"\nscheduled full backup listed {time.monotonic() - started:.0f} s after the check")
