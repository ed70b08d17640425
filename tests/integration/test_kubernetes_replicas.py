"""The Kubernetes target's pooler, run for real as N local processes: the split budget holds.

No cluster runs here, so the PgBouncer Deployment's replicas are played by N PgBouncer
processes on 127.0.0.1, one port each (a pod each has its own address; the Service spreads
clients over them, here round-robin). Each runs the per-replica ``pgbouncer.ini`` the shared
renderer makes for the stack's plan: its sized part is byte-identical to the ConfigMap the
Kubernetes objects hold; only the files and addresses differ, as between targets. Replica 1
is the local runner's own PgBouncer, the others are started here. Against one real Postgres,
a burst of 1,000 short-lived clients must end with 0 errors and peak backends within the
budget, with more than one replica's share in use at once.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from poolkit import console
from poolkit.bench.scratch import ScratchBouncers, kit_ini
from poolkit.config import load_stack
from poolkit.layouts import kubernetes_problems
from poolkit.local import detect_tools
from poolkit.local.machine import service_user
from poolkit.manifests import pgbouncer_files
from poolkit.sizing import plan
from tests.backends import burst_clients
from tests.conftest import LocalStack, free_ports, local_stack_running

pytestmark = pytest.mark.integration

REPLICAS = 3
BURST_CLIENTS = 1000
CLIENT_THREADS = 100
SIZED = ";; --- sized by poolkit"


@dataclasses.dataclass
class Replicas:
    stack: LocalStack
    ports: list[int]
    """Port of each replica; the first is the runner's PgBouncer."""
    configmap_ini: str
    inis: list[str]
    share: int
    budget: int


def _sized(text: str) -> str:
    return text[text.index(SIZED):]


@pytest.fixture(scope="module")
def started() -> Iterator[LocalStack]:
    """The local stack whose PgBouncer is replica 1."""
    with local_stack_running(
        "poolkit-k8s-", "k8sreplicas", with_apps=False,
        pgbouncer={"replicas": REPLICAS, "processes": 1, "default_pool_size": 6,
                   "reserve_pool_size": 2},
    ) as stack:  # fmt: skip
        yield stack


@pytest.fixture(scope="module")
def replicas(started: LocalStack) -> Iterator[Replicas]:
    tools = detect_tools()
    stack = dataclasses.replace(load_stack(started.stack_file), target="kubernetes")
    assert kubernetes_problems(stack) == []
    the_plan = plan(stack)
    configmap_ini = pgbouncer_files(stack, the_plan)["pgbouncer.ini"]
    user = service_user()
    bouncers = ScratchBouncers(started.base / "replicas", tools.pgbouncer, user)
    userlist = (started.state_dir / "conf" / "userlist.txt").read_text()
    inis = [(started.state_dir / "conf" / "pgbouncer.ini").read_text()]
    ports = [started.pgbouncer_port]
    try:
        for index in range(2, REPLICAS + 1):
            folder = bouncers.folder(f"replica-{index}")
            port = free_ports(1, set(ports))
            text = kit_ini(stack, the_plan.pool.split.processes, folder, port, index, user.name,
                           reuseport=False)
            bouncers.write(folder / "userlist.txt", userlist)
            bouncers.write(folder / f"{index}.ini", text)
            bouncers.own_tree(folder)
            bouncers.start(f"replica-{index}", port, [folder / f"{index}.ini"])
            inis.append(text)
            ports.append(port)
        split = the_plan.pool.split
        yield Replicas(started, ports, configmap_ini, inis, split.max_db_connections, split.budget)
    finally:
        bouncers.stop_all()


def _at(url: str, port: int) -> str:
    return make_conninfo(url, port=str(port))


def test_every_replica_runs_the_configmap_s_sized_settings(replicas: Replicas) -> None:
    for index, text in enumerate(replicas.inis, start=1):
        assert _sized(text) == _sized(replicas.configmap_ini), f"replica {index}"
    stats = replicas.stack.env()["PGBOUNCER_STATS_URL"]
    for port in replicas.ports:
        settings = console.config(_at(stats, port))
        assert int(settings["max_db_connections"]) == replicas.share, port
    assert REPLICAS * replicas.share <= replicas.budget


def test_burst_over_the_replicas_stays_within_the_budget(replicas: Replicas) -> None:
    env = replicas.stack.env()
    pooled, direct = env["POOLED_DATABASE_URL"], env["DIRECT_URL"]
    app_user = conninfo_to_dict(pooled)["user"]
    # The Service's spreading, round-robin over the replicas.
    done = burst_clients([_at(pooled, port) for port in replicas.ports], BURST_CLIENTS,
                         CLIENT_THREADS, direct, "usename = %s", (app_user,),
                         connect_timeout=10)  # fmt: skip
    print(f"{REPLICAS} replicas x max_db_connections {replicas.share} (budget {replicas.budget}): "
          f"{BURST_CLIENTS} clients in {done.seconds:.1f} s, peak {done.peak} backends of "
          f"{app_user}, served per replica {dict(done.served)}, "
          f"errors {dict(done.errors)}")  # fmt: skip
    assert not done.errors
    assert sorted(done.served.values()) == [BURST_CLIENTS // REPLICAS] * 2 + [
        BURST_CLIENTS - 2 * (BURST_CLIENTS // REPLICAS)]
    assert replicas.share < done.peak <= replicas.budget


def test_one_replica_under_load_opens_its_share_and_no_more(replicas: Replicas) -> None:
    """30 clients at once on one replica: its servers (SHOW SERVERS) reach its share, no more."""
    env = replicas.stack.env()
    port = replicas.ports[-1]
    stats = _at(env["PGBOUNCER_STATS_URL"], port)
    stop, peak = threading.Event(), [0]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], len(console.show(stats, "SERVERS")))
            time.sleep(0.02)

    def client(i: int) -> None:
        with psycopg.connect(_at(env["POOLED_DATABASE_URL"], port), connect_timeout=10) as conn:
            conn.execute("SELECT pg_sleep(0.05)")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(30) as pool:
        list(pool.map(client, range(90)))
    stop.set()
    sampler.join(5)
    assert peak[0] == replicas.share
