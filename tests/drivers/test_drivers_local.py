"""Real drivers on their defaults through the local target's generated ``.env``.

The session stack runs the PgBouncer bootstrap provides (>= 1.21, prepared statements tracked):
every driver must see 0 wrong results and 0 errors. The control stack runs the distribution's
PgBouncer 1.18: the drivers whose defaults prepare statements must fail there.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest

from apps import db
from tests.apps.conftest import mixed_clients
from tests.conftest import LocalStack
from tests.drivers import harness

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(local_stack: LocalStack, node_harness: None) -> LocalStack:
    env = local_stack.env()
    assert env["PGBOUNCER_PREPARED_STATEMENTS"] == "on", (
        "the local target runs a PgBouncer without prepared statements: run ./scripts/bootstrap")
    harness.create_table(local_stack.env_file)
    return local_stack


def test_database_url_works_unchanged_in_psql(stack: LocalStack) -> None:
    url = stack.env()["DATABASE_URL"]
    done = subprocess.run(["psql", url, "-Atc", "select 1"], capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "1"), done.stderr


@pytest.mark.parametrize("driver", harness.ALL_DRIVERS)
def test_driver_defaults_get_every_result_right(stack: LocalStack, driver: str) -> None:
    figures = harness.run_driver(driver, stack.env_file, "local")
    assert figures["queries"] > 0
    assert (figures["wrong"], figures["errors"]) == (0, 0), figures["first_problem"]


@pytest.mark.parametrize("driver", harness.HAZARDOUS)
def test_control_without_prepared_statement_tracking_fails(
    control_stack: LocalStack, node_harness: None, driver: str
) -> None:
    """The same workload against PgBouncer 1.18: errors or wrong results, as the issue saw."""
    assert control_stack.env()["PGBOUNCER_PREPARED_STATEMENTS"] == "off"
    figures = harness.run_driver(driver, control_stack.env_file, "control 1.18")
    assert figures["wrong"] + figures["errors"] > 0, figures


def test_control_env_says_off_and_the_sample_apps_obey_it(control_stack: LocalStack) -> None:
    """On PgBouncer 1.18 the ``.env`` says prepared statements off and apps/db.py obeys: no
    errors, no wrong results. With them on, psycopg's default prepares break."""
    settings = db.load_settings(control_stack.env())
    assert not settings.prepared_statements
    assert mixed_clients(settings, clients=20, rounds=20) == (0, 0)
    prepared = replace(settings, prepared_statements=True)
    errors, wrong = mixed_clients(prepared, clients=20, rounds=20)
    assert errors + wrong > 0, "expected _pg3_N prepared-statement failures on PgBouncer 1.18"
