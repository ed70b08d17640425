"""images/postgres/poolkit-backup-scheduler: which backup runs when (full wins a tie)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest

from poolkit.config import parse_stack
from poolkit.layouts import docker_layout
from poolkit.render import render_backup_schedule
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.unit


def scheduler() -> ModuleType:
    path = Path(REPO_ROOT) / "images" / "postgres" / "poolkit-backup-scheduler"
    loader = importlib.machinery.SourceFileLoader("poolkit_backup_scheduler", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.mark.parametrize(("after", "expected", "kind"), [
    ("2026-12-06T00:30:00", "2026-12-06T01:00:00", "full"),  # Sunday: the weekly full
    ("2026-12-06T01:00:00", "2026-12-07T01:00:00", "diff"),  # strictly after: Monday's diff
    ("2026-12-12T02:00:00", "2026-12-13T01:00:00", "full"),  # Saturday night -> Sunday's full
], ids=["sunday-full", "monday-diff", "next-sunday"])  # fmt: skip
def test_next_backup_follows_the_default_schedules(after: str, expected: str, kind: str) -> None:
    at, got = scheduler().next_backup("0 1 * * 0", "0 1 * * 1-6",
                                      datetime.fromisoformat(after).replace(tzinfo=UTC))
    assert (at, got) == (datetime.fromisoformat(expected).replace(tzinfo=UTC), kind)


def test_a_full_backup_wins_when_both_fall_on_the_same_minute() -> None:
    at, kind = scheduler().next_backup("* * * * *", "* * * * *",
                                       datetime(2026, 12, 6, 10, 0, 30, tzinfo=UTC))
    assert (at, kind) == (datetime(2026, 12, 6, 10, 1, tzinfo=UTC), "full")


def test_it_reads_the_rendered_schedule() -> None:
    stack = parse_stack({"poolkit:backup": {"enabled": True, "full_schedule": "0 3 * * 0",
                                            "diff_schedule": "30 3 * * 1-6"}}, "prod")  # fmt: skip
    values = scheduler().read_schedule(render_backup_schedule(stack, docker_layout(stack)))
    assert values == {"full": "0 3 * * 0", "diff": "30 3 * * 1-6", "stanza": "prod",
                      "config": "/etc/poolkit/pgbackrest.conf",
                      "pgpass": "/etc/poolkit/superuser.pgpass"}  # fmt: skip


@pytest.mark.parametrize(("text", "error"), [
    ("full=* * * * *\n", "missing diff, config, stanza, pgpass"),
    ("full=61 * * * *\ndiff=* * * * *\nconfig=c\nstanza=s\npgpass=p\n", "full: not a cron"),
], ids=["missing", "bad-cron"])  # fmt: skip
def test_a_bad_schedule_is_refused(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        scheduler().read_schedule(text)


def test_without_a_readable_schedule_it_exits_2(tmp_path: Path) -> None:
    assert scheduler().main([]) == 2
    assert scheduler().main([str(tmp_path / "missing")]) == 2
