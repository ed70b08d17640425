"""Stacks for the driver suite: the local target as bootstrap leaves it, and a control.

The control runs the distribution's PgBouncer (bookworm: 1.18, ``/usr/sbin/pgbouncer``), which
cannot track prepared statements, with ``POOLKIT_ALLOW_NO_PREPARED_STATEMENTS=1``: the same
workloads must show errors or wrong results there, or the suite proves nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LocalStack, local_stack_running
from tests.drivers import harness

DISTRIBUTION_PGBOUNCER = Path("/usr/sbin/pgbouncer")


@pytest.fixture(scope="session")
def node_harness() -> None:
    harness.prepare_node()


@pytest.fixture(scope="module")
def control_stack() -> Iterator[LocalStack]:
    if not DISTRIBUTION_PGBOUNCER.is_file():
        pytest.fail(f"{DISTRIBUTION_PGBOUNCER} missing: apt-get install -y pgbouncer "
                    "(scripts/bootstrap installs it)", pytrace=False)  # fmt: skip
    with local_stack_running(
        "poolkit-control-", "control", with_apps=False,
        env={"POOLKIT_PGBOUNCER": str(DISTRIBUTION_PGBOUNCER),
             "POOLKIT_ALLOW_NO_PREPARED_STATEMENTS": "1"},
    ) as stack:  # fmt: skip
        yield stack


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if harness.FIGURES:
        terminalreporter.section(
            f"driver suite: {harness.WORKERS} workers x {harness.ROUNDS} rounds per driver")
        for line in harness.summary_lines():
            terminalreporter.write_line(line)
