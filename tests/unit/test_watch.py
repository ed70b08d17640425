"""``status --watch`` over several PgBouncer processes: one row per pool, counters added up."""

from __future__ import annotations

import pytest

from poolkit.watch import merged

pytestmark = pytest.mark.unit


def _row(database: str, active: int, waiting: int, servers: int, idle: int, maxwait: int,
         maxwait_us: int = 0) -> dict[str, object]:
    return {"database": database, "user": "app", "cl_active": active, "cl_waiting": waiting,
            "sv_active": servers, "sv_idle": idle, "maxwait": maxwait, "maxwait_us": maxwait_us}


def test_processes_of_one_pool_become_one_row_with_sums_and_the_longest_wait() -> None:
    rows = [_row("app", 3, 1, 2, 0, 0, 400_000), _row("app", 5, 4, 2, 1, 1, 200_000),
            _row("other", 1, 0, 1, 0, 0)]  # fmt: skip
    app, other = merged(rows)
    assert (app["cl_active"], app["cl_waiting"], app["sv_active"], app["sv_idle"]) == (8, 5, 4, 1)
    assert (app["maxwait"], app["maxwait_us"]) == (1, 200_000)
    assert other == rows[2]


def test_one_process_is_left_as_it_is() -> None:
    rows = [_row("app", 1, 0, 1, 1, 0)]
    assert merged(rows) == rows
