"""The real Pulumi program applied to the Docker engine, then proven from the outside.

One stack per module (``e2e<random>``, free 127.0.0.1 ports): Postgres (published), PgBouncer
and four sample apps, one replica each: Lambda and Workers style in Python (images/app) and in
TypeScript with Prisma 7 (images/app-node). Then the testinfra suite runs inside the Postgres
and PgBouncer containers, ``poolkit smoke`` runs against the ``.env`` the program produced,
every app answers HTTP through PgBouncer, and tear-down leaves nothing labelled with the run id.
Traffic goes only to the published 127.0.0.1 ports and into the run's containers.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import psycopg
import pytest

from poolkit import console
from poolkit.local import port_in_use
from poolkit.outputs import Outputs
from tests.backends import peak_backends
from tests.drivers import harness
from tests.infra.docker_facts import container_facts
from tests.pulumi.harness import PROJECT
from tests.security.helpers import env_passwords

from . import multi_pooler
from .conftest import FIGURES
from .engine_mocks import RUN_LABEL
from .stack import (
    LAMBDA_APP,
    NOTHING_LEFT,
    SUBPROCESS_TIMEOUT_S,
    TS_LAMBDA_APP,
    TS_WORKERS_APP,
    WORKERS_APP,
    E2EStack,
    assert_smoke_passes,
    brought_up,
    new_stack,
)

pytestmark = pytest.mark.e2e
LOG_DIR = Path(os.environ.get("POOLKIT_LOG_DIR") or PROJECT / ".poolkit" / "logs")
BUILD_CACHE = os.environ.get("POOLKIT_E2E_BUILD_CACHE", "1") != "0"
"""``POOLKIT_E2E_BUILD_CACHE=0`` builds the images from scratch, to time cold builds."""
APPS = (LAMBDA_APP, WORKERS_APP, TS_LAMBDA_APP, TS_WORKERS_APP)
ROLES = ("postgres", "pgbouncer", *APPS)
CONCURRENT_REQUESTS = 50
BURST_REQUESTS = 500
"""The Workers burst of issue 17: each request a new PgBouncer client."""
CONTAINER_CHECKS = {
    "test_server_is_pid_1_as_the_postgres_user", "test_no_process_in_the_container_runs_as_root",
    "test_listening_socket_belongs_to_the_server_user",
    "test_file_owned_by_the_server_user_with_its_mode",
    "test_secret_files_hold_verifiers_not_passwords",
}
INFRA_PASSES = {
    "postgres": CONTAINER_CHECKS | {
        "test_secret_files_are_owner_only", "test_pg_hba_has_no_trust_and_only_scram",
        "test_the_checked_pg_hba_is_the_one_postgres_uses",
        "test_postgres_applies_the_rendered_setting", "test_no_password_in_any_command_line",
        "test_no_password_in_server_environments"},
    "pgbouncer": CONTAINER_CHECKS | {
        "test_secret_files_are_owner_only", "test_pgbouncer_ini_has_transaction_pooling",
        "test_no_password_in_any_command_line", "test_no_password_in_server_environments"},
}
"""Tests that must pass in each container (tests/infra/test_deployed_host.py and
tests/infra/container_checks.py); the suite may hold more."""


@pytest.fixture(scope="module")
def stack(client: docker.DockerClient) -> Iterator[E2EStack]:
    """The stack, up and healthy; always torn down, and the tear-down checked."""
    stack = new_stack(client, node=True)
    cache = "with the build cache: cold on a first run" if BUILD_CACHE else "no cache"
    title = f"e2e stack {stack.name}: seconds (image builds {cache}, run in parallel)"
    with brought_up(stack, title, build_cache=BUILD_CACHE,
                    timings_file=LOG_DIR / "e2e-timings.json"):  # fmt: skip
        yield stack


def container_ip(stack: E2EStack, role: str) -> str:
    networks = stack.container(role).attrs["NetworkSettings"]["Networks"]
    return str(networks[stack.outputs[Outputs.NETWORK]]["IPAddress"])


def http_json(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"} if payload else {}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def host_listeners(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp{,6}) of this host's listeners on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":
                found.add(address)
    return found


def test_every_container_is_healthy_on_the_stack_network(stack: E2EStack) -> None:
    for role in ROLES:
        container = stack.container(role)
        assert container.attrs["State"]["Health"]["Status"] == "healthy", role
        assert list(container.attrs["NetworkSettings"]["Networks"]) == [
            stack.outputs[Outputs.NETWORK]], role
        assert container.labels["poolkit.stack"] == stack.name, role
        assert container.labels[RUN_LABEL] == stack.run_id, role


HEALTH_INTERVAL_S = 2


def test_healthchecks_leave_no_error_in_the_server_logs(stack: E2EStack) -> None:
    """pg_isready as a role each server knows: no "no pg_hba.conf entry" FATAL in Postgres's
    log and no "no such user" in PgBouncer's, every 2 s."""
    servers = {role: stack.container(role) for role in ("postgres", "pgbouncer")}
    before = {role: len(c.logs()) for role, c in servers.items()}
    time.sleep(2.5 * HEALTH_INTERVAL_S)
    for role, container in servers.items():
        container.reload()
        assert container.attrs["State"]["Health"]["Status"] == "healthy", role
        new = container.logs()[before[role]:].decode(errors="replace")
        assert "FATAL" not in new and "no such user" not in new, f"{role}:\n{new}"


def test_ports_are_published_on_127_0_0_1_only(stack: E2EStack) -> None:
    config = stack.config
    expected = {
        "postgres": ("5432/tcp", config["poolkit:postgres"]["port"]),
        "pgbouncer": ("6432/tcp", config["poolkit:pgbouncer"]["port"]),
        **{app["name"]: ("8080/tcp", app["port"]) for app in config["poolkit:apps"]},
    }
    for role, (internal, port) in expected.items():
        bindings = stack.container(role).attrs["HostConfig"]["PortBindings"]
        assert bindings == {internal: [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}, role
        # On the host only Docker's proxy listens there, on 127.0.0.1 (0100007F) alone.
        listeners = host_listeners(port)
        assert listeners == {"0100007F"}, f"{role}: listening addresses {listeners}"


def test_env_file_is_private_and_names_the_published_ports(stack: E2EStack) -> None:
    assert stack.env_file.stat().st_mode & 0o777 == 0o600
    env = stack.env()
    postgres_port = stack.config["poolkit:postgres"]["port"]
    pgbouncer_port = stack.config["poolkit:pgbouncer"]["port"]
    for key, port in [("DIRECT_URL", postgres_port), ("POOLED_DATABASE_URL", pgbouncer_port),
                      ("DATABASE_URL", pgbouncer_port), ("PGBOUNCER_STATS_URL", pgbouncer_port)]:
        url = urlsplit(env[key])
        assert (url.hostname, url.port) == ("127.0.0.1", port), key
    assert env["PGBOUNCER_PREPARED_STATEMENTS"] == "on"  # trixie's PgBouncer 1.24


def test_no_password_in_server_container_config_or_any_log(stack: E2EStack) -> None:
    """Postgres and PgBouncer get files, never passwords in env or args; no log prints one."""
    known = env_passwords(stack.env(), stack.passwords.values())  # generated ones too
    assert len(stack.passwords) == 5  # superuser, migrator, app, PgBouncer admin and stats
    for role in ("postgres", "pgbouncer"):
        config = stack.container(role).attrs["Config"]
        exposed = json.dumps([config.get(k) for k in ("Env", "Cmd", "Entrypoint", "Labels")])
        assert not any(p in exposed for p in known), f"a password is in the {role} config"
    for role in ROLES:
        logs = stack.container(role).logs().decode(errors="replace")
        assert not any(p in logs for p in known), f"a password is in the {role} log"


@pytest.mark.parametrize("service", ["postgres", "pgbouncer"])
def test_infra_suite_passes_inside_the_container(
    stack: E2EStack, tmp_path: Path, service: str
) -> None:
    """``pytest tests/infra`` plus the container checks, with ``--hosts=docker://<name>``."""
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(container_facts(
        service, stack.env_file, tuple(stack.passwords.values()))))  # fmt: skip
    name = stack.outputs[Outputs.CONTAINERS][service]
    command = [sys.executable, "-m", "pytest", "-p", "tests.infra.docker_facts",
               "-p", "no:cacheprovider", "tests/infra",
               f"--hosts=docker://{name}", "-q", "-rA"]  # fmt: skip
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, check=False,
                          timeout=SUBPROCESS_TIMEOUT_S,
                          env={**os.environ, "POOLKIT_INFRA_FACTS": str(facts)})  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    summary = output.strip().splitlines()[-1]
    assert not re.search(r"skipped|failed|error|xfail|xpass", summary), output
    passed = set(re.findall(r"^PASSED [^:]+::(\w+)", output, re.MULTILINE))
    assert INFRA_PASSES[service] <= passed, output
    assert f"not applicable to the {service} container" in output


def test_smoke_passes_against_the_env_file(stack: E2EStack) -> None:
    assert_smoke_passes(stack, "poolkit smoke against the Docker stack: seconds")


@pytest.mark.parametrize("app", APPS)
def test_app_stores_and_lists_items_through_pgbouncer(stack: E2EStack, app: str) -> None:
    name = f"e2e-{app}-{secrets.token_hex(4)}"
    status, created = http_json(stack.app_port(app), "POST", "/items", {"name": name})
    assert status == 201, created
    assert created["item"]["name"] == name
    status, listed = http_json(stack.app_port(app), "GET", "/items")
    assert status == 200, listed
    assert name in [item["name"] for item in listed["items"]]


@pytest.mark.parametrize("app", APPS)
def test_concurrent_requests_store_every_row_without_errors(stack: E2EStack, app: str) -> None:
    """50 concurrent POSTs to one container: every one 201, every row stored once."""
    names = [f"burst-{app}-{secrets.token_hex(4)}" for _ in range(CONCURRENT_REQUESTS)]
    port = stack.app_port(app)
    started = time.monotonic()
    with ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
        results = list(pool.map(lambda n: http_json(port, "POST", "/items", {"name": n}), names))
    seconds = time.monotonic() - started
    errors = [result for result in results if result[0] != 201]
    FIGURES.setdefault("e2e apps: 50 concurrent POST /items (seconds)", {})[
        f"{app} ({len(errors)} errors)"] = seconds
    assert not errors, errors[:3]
    with psycopg.connect(stack.env()["DIRECT_URL"]) as conn:
        stored = conn.execute("select name, count(*) from items where name = any(%s) "
                              "group by name", (names,)).fetchall()  # fmt: skip
    assert sorted(stored) == sorted((name, 1) for name in names)


@pytest.mark.parametrize("app", [WORKERS_APP, TS_WORKERS_APP])
def test_workers_burst_keeps_postgres_backends_within_max_db_connections(
    stack: E2EStack, app: str
) -> None:
    """500 requests, 50 at a time, each a new PgBouncer client: Postgres never sees more app
    backends than PgBouncer's max_db_connections, and no request fails."""
    stats = stack.env()["PGBOUNCER_STATS_URL"]
    with psycopg.connect(stats, autocommit=True, prepare_threshold=None) as conn:
        config = {row[0]: row[1] for row in conn.execute("SHOW CONFIG").fetchall()}
    ceiling = int(config["max_db_connections"])
    port = stack.app_port(app)
    names = [f"wb-{app}-{secrets.token_hex(4)}-{i}" for i in range(BURST_REQUESTS)]
    started = time.monotonic()
    with (peak_backends(stack.env()["DIRECT_URL"],
                        "usename = 'app' AND backend_type = 'client backend'") as peak,
          ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool):  # fmt: skip
        statuses = [status for status, _ in
                    pool.map(lambda n: http_json(port, "POST", "/items", {"name": n}), names)]
    seconds = time.monotonic() - started
    print(f"{app}: {BURST_REQUESTS} requests in {seconds:.2f} s "
          f"({BURST_REQUESTS / seconds:.0f}/s), peak {peak[0]} app backends "
          f"(max_db_connections {ceiling})")
    assert statuses == [201] * BURST_REQUESTS
    assert 1 <= peak[0] <= ceiling


@pytest.mark.parametrize("app", [LAMBDA_APP, TS_LAMBDA_APP])
def test_lambda_app_keeps_its_client_connection_at_pgbouncer(stack: E2EStack, app: str) -> None:
    """A warm Lambda instance keeps its clients (at most POOL_CONNECTION_LIMIT), idle between
    invocations."""
    assert http_json(stack.app_port(app), "GET", "/items")[0] == 200
    limit = int(stack.outputs[Outputs.PLAN]["apps"][app]["connection_limit"])
    stats = stack.env()["PGBOUNCER_STATS_URL"]
    address = container_ip(stack, app)
    clients = [c for c in console.show(stats, "CLIENTS") if c["addr"] == address]
    assert 1 <= len(clients) <= limit, clients
    assert {(c["user"], c["database"]) for c in clients} == {("app", "app")}
    (pool,) = console.pools(stats, "app")
    assert pool["user"] == "app" and pool["pool_mode"] == "transaction"
    assert pool["cl_active"] >= 1


@pytest.mark.parametrize("app", [WORKERS_APP, TS_WORKERS_APP])
def test_workers_app_connects_per_request_and_leaves_no_client(stack: E2EStack, app: str) -> None:
    """Each request logs in at PgBouncer from the Workers container, then disconnects."""
    pgbouncer = stack.container("pgbouncer")
    address = container_ip(stack, app)
    login = re.compile(rf"app/app@{re.escape(address)}:\d+ login attempt: db=app user=app")

    def logins() -> int:
        return len(login.findall(pgbouncer.logs().decode(errors="replace")))

    before, requests = logins(), 3
    for _ in range(requests):
        assert http_json(stack.app_port(app), "GET", "/items")[0] == 200
    assert logins() - before >= requests
    stats = stack.env()["PGBOUNCER_STATS_URL"]
    deadline = time.monotonic() + 10  # its healthcheck connects every 2 s, briefly
    while [c for c in console.show(stats, "CLIENTS") if c["addr"] == address]:
        assert time.monotonic() < deadline, "the Workers app keeps a client connection"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def driver_stack(stack: E2EStack) -> E2EStack:
    """The stack with the driver suite's table, made over DIRECT_URL; node modules ready."""
    harness.prepare_node()
    harness.create_table(stack.env_file)
    return stack


def test_database_url_works_unchanged_in_psql(stack: E2EStack) -> None:
    done = subprocess.run(["psql", stack.env()["DATABASE_URL"], "-Atc", "select 1"],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "1"), done.stderr


@pytest.mark.parametrize("driver", harness.ALL_DRIVERS)
def test_driver_defaults_get_every_result_right(driver_stack: E2EStack, driver: str) -> None:
    """The image's PgBouncer (trixie, 1.24) tracks prepared statements: driver defaults work."""
    assert driver_stack.env()["PGBOUNCER_PREPARED_STATEMENTS"] == "on"
    figures = harness.run_driver(driver, driver_stack.env_file, "docker")
    assert figures["queries"] > 0
    assert (figures["wrong"], figures["errors"]) == (0, 0), figures["first_problem"]


PARALLEL_HASH_ROWS = 1_600_000
"""Rows on each side of the join: its shared hash table is about 80MB, past Docker's default
64MB /dev/shm and within the 128MB this stack's plan gives (its shared_buffers)."""
DOCKER_DEFAULT_SHM_KB = 64 * 1024


def test_postgres_container_gets_the_memory_cpu_and_shm_of_its_plan(stack: E2EStack) -> None:
    host = stack.container("postgres").attrs["HostConfig"]
    assert host["Memory"] == 512 * 2**20  # poolkit:postgres.memory
    assert host["CpuShares"] == 1024  # poolkit:postgres.cpus: 1
    assert host["ShmSize"] == 128 * 2**20  # the plan's shared_buffers


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def test_parallel_hash_join_past_64mb_of_shared_memory_succeeds(stack: E2EStack) -> None:
    """Parallel workers share their hash table in /dev/shm; with Docker's 64MB it fails with
    "could not resize shared memory segment"."""
    with psycopg.connect(stack.env()["DIRECT_URL"], autocommit=True) as conn:
        conn.execute("CREATE TABLE parallel_hash AS SELECT g AS id, md5(g::text) AS pad "
                     "FROM generate_series(1, %s) AS g", (PARALLEL_HASH_ROWS,))  # fmt: skip
        conn.execute("ANALYZE parallel_hash")
        for setting in ("work_mem = '128MB'", "hash_mem_multiplier = 2",
                        "max_parallel_workers_per_gather = 2", "parallel_setup_cost = 0",
                        "parallel_tuple_cost = 0"):  # fmt: skip
            conn.execute(f"SET {setting}")
        (plan,) = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) "
                               "FROM parallel_hash a JOIN parallel_hash b USING (id)").fetchone()
        conn.execute("DROP TABLE parallel_hash")
    nodes = list(_plan_nodes(plan[0]["Plan"]))
    (hashed,) = [node for node in nodes if node["Node Type"] == "Hash"]
    (gather,) = [node for node in nodes if node["Node Type"] == "Gather"]
    assert gather["Workers Launched"] >= 1, gather
    # One batch: the whole shared table in memory at once, larger than 64MB (kB here).
    assert hashed["Parallel Aware"] and hashed["Hash Batches"] == 1, hashed
    assert hashed["Peak Memory Usage"] > DOCKER_DEFAULT_SHM_KB, hashed


@pytest.fixture(scope="module")
def pooler(stack: E2EStack) -> Iterator[dict[str, Any]]:
    """The stack's PgBouncer image running 2 peered processes (tests/e2e/multi_pooler.py)."""
    with multi_pooler.multi_process_pooler(stack) as running:
        yield running


def test_two_processes_serve_one_port_and_a_burst_stays_within_their_budget(
    stack: E2EStack, pooler: dict[str, Any]
) -> None:
    assert sorted(multi_pooler.pgbouncer_pids(pooler["container"])) == [
        "pgbouncer-1.ini", "pgbouncer-2.ini"]  # fmt: skip
    done = multi_pooler.burst(stack, pooler)
    print(f"2 PgBouncer processes in one container: {multi_pooler.BURST_CLIENTS} clients, "
          f"peak {done.peak} backends of budget {pooler['budget']}")  # FIGURES holds seconds only
    assert not done.errors, done.errors
    assert 1 <= done.peak <= pooler["budget"]


def test_one_process_restarted_on_its_own_costs_no_client_an_error(
    pooler: dict[str, Any],
) -> None:
    before, after, outcomes = multi_pooler.restart_one(pooler)
    assert after["pgbouncer-1.ini"] != before["pgbouncer-1.ini"], "process 1 was restarted"
    assert after["pgbouncer-2.ini"] == before["pgbouncer-2.ini"], "process 2 kept running"
    errors = {what: n for what, n in outcomes.items() if what.startswith("error")}
    assert outcomes["ok"] > 50 and not errors, outcomes


def test_teardown_removes_everything_labelled_with_the_run(stack: E2EStack) -> None:
    """Runs last: the fixture's own tear-down afterwards finds nothing to do."""
    ports = [stack.config["poolkit:postgres"]["port"], stack.config["poolkit:pgbouncer"]["port"],
             *(app["port"] for app in stack.config["poolkit:apps"])]  # fmt: skip
    assert stack.tear_down() == NOTHING_LEFT
    assert stack.client.images.list(filters={"label": f"{RUN_LABEL}={stack.run_id}"}) == []
    assert not stack.env_file.exists()
    assert not any(port_in_use(port) for port in ports)
