"""Monitoring on the Docker target: the real program's exporter containers, scraped for real.

One stack (no apps) with two PgBouncer processes sharing the port and ``poolkit:monitoring``
on: a pgbouncer_exporter per process, reading it through its socket dir on the volume shared
with the pgbouncer container, and postgres_exporter on the private network, each published on
127.0.0.1 only. Checked: the standard metric names are served, both processes are measured
(clients held through the shared port are all counted, split between the exporters), logins
stay out of argv and ``docker inspect``, and a login PgBouncer no longer accepts gives
``pgbouncer_up 0`` and a log line while the exporter keeps running.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import docker
import psycopg
import pytest
import yaml

from poolkit import metrics, scram
from poolkit.config import parse_stack
from poolkit.outputs import Outputs
from poolkit.secrets import STATS_USER
from poolkit.sizing import plan
from tests.conftest import free_ports
from tests.integration.series import scrape

from .multi_pooler import _tar, _userlist, pgbouncer_pids
from .stack import E2EStack, brought_up, new_stack

pytestmark = pytest.mark.e2e
PROCESSES = 2
HELD_CLIENTS = 24
APP = (("database", "app"), ("user", "app"))


@pytest.fixture(scope="module")
def stack(client: docker.DockerClient) -> Iterator[E2EStack]:
    stack = new_stack(client)
    stack.config.pop("poolkit:apps")
    stack.config["poolkit:pgbouncer"]["processes"] = PROCESSES
    stack.config["poolkit:monitoring"] = {
        "exporters": True, "pgbouncer_exporter_port": free_ports(PROCESSES),
        "postgres_exporter_port": free_ports(1)}  # fmt: skip
    stack.stack_file.write_text(yaml.safe_dump({"config": stack.config}, sort_keys=False))
    with brought_up(stack, f"Docker monitoring stack {stack.name}: seconds",
                    timings_naming=("exporter", "program")):  # fmt: skip
        yield stack


def urls(stack: E2EStack) -> dict[str, str]:
    return {name: f"http://127.0.0.1:{port}/metrics"
            for name, port in stack.outputs[Outputs.EXPORTER_PORTS].items()}  # fmt: skip


def exporter(stack: E2EStack, name: str) -> Any:
    return stack.client.containers.get(stack.outputs[Outputs.CONTAINERS]["exporters"][name])


def wait_for(url: str, name: str, value: float, timeout_s: float = 20) -> dict[Any, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        served = scrape(url)
        if served.get((name, ())) == value or time.monotonic() > deadline:
            return served
        time.sleep(0.5)


def test_exporters_serve_the_standard_names_on_loopback_only(stack: E2EStack) -> None:
    found = urls(stack)
    assert sorted(found) == ["pgbouncer-exporter-1", "pgbouncer-exporter-2", "postgres-exporter"]
    the_plan = plan(parse_stack(stack.config, stack.name))
    for name, url in found.items():
        served = scrape(url)
        names = {metric for metric, _ in served}
        wanted = metrics.POSTGRES_METRICS if name == "postgres-exporter" else (
            metrics.PGBOUNCER_METRICS)  # fmt: skip
        assert not [m for m in wanted if m not in names], f"{name} does not serve them"
        if name == "postgres-exporter":
            assert served[("pg_up", ())] == 1.0
            limit = [v for (metric, _), v in served.items()
                     if metric == "pg_settings_max_connections"]  # fmt: skip
            assert limit == [the_plan.pool.max_connections], limit
        else:
            assert served[("pgbouncer_up", ())] == 1.0
            limits = [v for (metric, labels), v in served.items()
                      if metric == "pgbouncer_databases_max_connections"
                      and dict(labels).get("name") == "app"]  # fmt: skip
            assert limits == [the_plan.pool.split.max_db_connections], (name, limits)
        container = exporter(stack, name)
        bindings = [b for bs in container.attrs["HostConfig"]["PortBindings"].values() for b in bs]
        assert [b["HostIp"] for b in bindings] == ["127.0.0.1"], bindings
        assert container.attrs["Config"]["User"] in ("", "exporter")
        assert container.exec_run(["id", "-u"]).output.decode().strip() == "999"
    print(f"metric names verified on Docker: {', '.join(metrics.PGBOUNCER_METRICS)}, "
          f"{', '.join(metrics.POSTGRES_METRICS)}")


def test_logins_are_in_0600_files_not_in_argv_or_the_environment(stack: E2EStack) -> None:
    passwords = list(stack.passwords.values())
    for name in stack.outputs[Outputs.EXPORTER_PORTS]:
        container = exporter(stack, name)
        config = container.attrs["Config"]
        visible = repr(config.get("Env")) + repr(config.get("Cmd")) + repr(
            container.attrs["Args"])  # fmt: skip
        assert not [p for p in passwords if p in visible], name
        mode = container.exec_run(["stat", "-c", "%a %u", f"/etc/poolkit-exporter/{name}.env"])
        assert mode.output.decode().split() == ["600", "999"], name
        listing = container.exec_run(["cat", "/proc/1/cmdline"]).output.decode()
        assert not [p for p in passwords if p in listing], name


def test_every_pgbouncer_process_is_measured_by_its_own_exporter(stack: E2EStack) -> None:
    """Clients held open through the shared port land on both processes (so_reuseport): each
    exporter counts its process's share, and the shares add up to every client."""
    found = urls(stack)
    with ExitStack() as held:
        for _ in range(HELD_CLIENTS):
            conn = held.enter_context(psycopg.connect(stack.env()["POOLED_DATABASE_URL"],
                                                      autocommit=True))  # fmt: skip
            conn.execute("SELECT 1")
        shares = {
            name: scrape(url)[("pgbouncer_pools_client_active_connections", APP)]
            for name, url in found.items() if name != "postgres-exporter"
        }  # fmt: skip
    print(f"{HELD_CLIENTS} clients held through the shared port, per exporter: {shares}")
    assert sum(shares.values()) == HELD_CLIENTS, shares
    assert all(share > 0 for share in shares.values()), shares


def test_wrong_exporter_password_gives_pgbouncer_up_0_not_a_crash(stack: E2EStack) -> None:
    """Process 1 restarts with a userlist whose stats verifier is another password: its
    exporter serves pgbouncer_up 0 and logs the failed login, keeps running (no restart), and
    recovers once the right verifier is back. Process 2's exporter stays up."""
    bouncer = stack.container("pgbouncer")
    original = _userlist(stack).decode()
    other = scram.verifier("not-the-exporters-password", b"0123456789abcdef", 4096)
    changed = "".join(f'"{STATS_USER}" "{other}"\n' if line.startswith(f'"{STATS_USER}" ')
                      else line + "\n" for line in original.splitlines())  # fmt: skip
    assert changed != original
    one, two = exporter(stack, "pgbouncer-exporter-1"), exporter(stack, "pgbouncer-exporter-2")
    found = urls(stack)

    def restart_process_1(userlist: str) -> None:
        bouncer.put_archive("/etc/pgbouncer", _tar({"userlist.txt": userlist.encode()}, 0o600))
        before = pgbouncer_pids(bouncer)["pgbouncer-1.ini"]
        bouncer.exec_run(["kill", "-INT", str(before)])  # safe shutdown; the script restarts it
        deadline = time.monotonic() + 20
        while pgbouncer_pids(bouncer).get("pgbouncer-1.ini") in (None, before):
            assert time.monotonic() < deadline, bouncer.logs().decode(errors="replace")[-2000:]
            time.sleep(0.2)

    started = time.monotonic()
    try:
        restart_process_1(changed)
        down = wait_for(found["pgbouncer-exporter-1"], "pgbouncer_up", 0.0)
        seconds_to_down = round(time.monotonic() - started, 2)
        other_process = scrape(found["pgbouncer-exporter-2"])
    finally:
        restart_process_1(original)
    assert down[("pgbouncer_up", ())] == 0.0
    assert other_process[("pgbouncer_up", ())] == 1.0
    log = one.logs().decode(errors="replace")
    line = next((x for x in log.splitlines() if "authentication failed" in x), None)
    assert line, log[-2000:]
    up = wait_for(found["pgbouncer-exporter-1"], "pgbouncer_up", 1.0)
    assert up[("pgbouncer_up", ())] == 1.0, "no recovery with the right password"
    for container in (one, two):
        container.reload()
        assert container.status == "running" and container.attrs["RestartCount"] == 0
    print(f"wrong password on Docker: pgbouncer_up 0 after {seconds_to_down} s; log: {line}")
