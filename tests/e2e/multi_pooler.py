"""Several PgBouncer processes in one container of the Docker target's image, for real.

Used by test_docker_stack.py on its stack. The e2e stack runs one process (its container's PID
1 is PgBouncer). Here the same image runs
the files the program renders for ``poolkit:pgbouncer.processes: 2`` — ``pgbouncer-1.ini`` and
``pgbouncer-2.ini``, peered, sharing the port — through ``poolkit-pgbouncers``, on the stack's
network and in front of its Postgres, published on 127.0.0.1 only. Checked: both processes serve
the port, a burst of short-lived clients stays within the split budget, and one process
restarted on its own (SIGTERM, as a rolling restart does) costs no client an error.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import docker
import psycopg
from psycopg.conninfo import make_conninfo

from poolkit.config import parse_stack
from poolkit.layouts import docker_layout
from poolkit.outputs import Outputs
from poolkit.peering import MIGRATE_SYSCTL, pooler_sysctls
from poolkit.render import pgbouncer_peers, render_pgbouncer_ini
from poolkit.sizing import plan
from tests.backends import Burst, burst_clients
from tests.conftest import free_ports

from .engine_mocks import RUN_LABEL
from .stack import E2EStack

PROCESSES = 2
BURST_CLIENTS = 400


def _tar(files: dict[str, bytes], mode: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, 999, 999
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _userlist(stack: E2EStack) -> bytes:
    stream, _ = stack.container("pgbouncer").get_archive("/etc/pgbouncer/userlist.txt")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.extractfile("userlist.txt")
        assert member is not None
        return member.read()


@contextlib.contextmanager
def multi_process_pooler(stack: E2EStack) -> Iterator[dict[str, Any]]:
    """The stack's PgBouncer image running ``PROCESSES`` peered processes, published locally."""
    config = dict(stack.config)
    config["poolkit:pgbouncer"] = {**config["poolkit:pgbouncer"], "processes": PROCESSES}
    stack_config = parse_stack(config, stack.name)
    the_plan, layout = plan(stack_config), docker_layout(stack_config)
    peers = pgbouncer_peers(the_plan, layout)
    assert [peer.ini for peer in peers] == ["pgbouncer-1.ini", "pgbouncer-2.ini"]
    inis = {peer.ini: render_pgbouncer_ini(stack_config, the_plan, layout, peer.peer_id).encode()
            for peer in peers}  # fmt: skip
    port = free_ports(1)
    image = stack.container("pgbouncer").image
    container = stack.client.containers.create(
        image, name=f"{stack.container('pgbouncer').name}-multi",
        labels={RUN_LABEL: stack.run_id}, network=stack.outputs[Outputs.NETWORK],
        ports={f"{layout.pgbouncer_port}/tcp": ("127.0.0.1", port)},
        sysctls=pooler_sysctls(PROCESSES),  # as the program sets them
    )  # fmt: skip
    try:
        container.put_archive(layout.pgbouncer_dir, _tar(inis, 0o640))
        container.put_archive(layout.pgbouncer_dir, _tar({"userlist.txt": _userlist(stack)},
                                                         0o600))  # fmt: skip
        container.start()
        pooled = make_conninfo(stack.env()["POOLED_DATABASE_URL"], host="127.0.0.1", port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(pooled, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, container.logs().decode(errors="replace")
                time.sleep(0.2)
        container.reload()
        network = container.attrs["NetworkSettings"]["Networks"][stack.outputs[Outputs.NETWORK]]
        yield {"container": container, "url": pooled, "address": network["IPAddress"],
               "budget": PROCESSES * the_plan.pool.split.max_db_connections}  # fmt: skip
    finally:
        with contextlib.suppress(docker.errors.NotFound):  # the stack's tear-down took it
            container.remove(force=True)


def pgbouncer_pids(container: Any) -> dict[str, int]:
    """Process pid by ini file name, from ``ps`` in the container."""
    listing = container.exec_run(["ps", "-eo", "pid=,args="]).output.decode()
    found = {}
    for line in listing.splitlines():
        pid, args = line.split(None, 1)
        if args.startswith("pgbouncer "):
            found[args.rsplit("/", 1)[-1]] = int(pid)
    return found


def burst(stack: E2EStack, pooler: dict[str, Any]) -> Burst:
    """``BURST_CLIENTS`` short-lived clients, 50 at once; the peak counts the pooler's backends."""
    return burst_clients([pooler["url"]], BURST_CLIENTS, 50, stack.env()["DIRECT_URL"],
                         "client_addr = %s", (pooler["address"],), sleep_s=0.01)


def restart_one(pooler: dict[str, Any]) -> tuple[dict[str, int], dict[str, int], Counter[str]]:
    """SIGTERM to process 1 under load: it stops accepting, process 2 takes new connections, and
    ``poolkit-pgbouncers`` starts process 1 again. (pids before, pids after, outcomes)."""
    container = pooler["container"]
    setting = container.exec_run(["cat", f"/proc/sys/{MIGRATE_SYSCTL.replace('.', '/')}"])
    assert setting.output.strip() == b"1", setting.output
    before = pgbouncer_pids(container)
    stop, done, errors = threading.Event(), Counter[str](), Counter[str]()

    def client() -> None:
        while not stop.is_set():
            try:
                with psycopg.connect(pooler["url"]) as conn:
                    conn.execute("SELECT pg_sleep(0.005)")
                done["ok"] += 1
            except Exception as error:  # counted, shown below
                errors[f"error {type(error).__name__}: {str(error)[:60]}"] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    container.exec_run(["kill", "-TERM", str(before["pgbouncer-1.ini"])])
    deadline = time.monotonic() + 20
    while pgbouncer_pids(container).get("pgbouncer-1.ini") in (None, before["pgbouncer-1.ini"]):
        assert time.monotonic() < deadline, container.logs().decode(errors="replace")[-2000:]
        time.sleep(0.1)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(10)
    return before, pgbouncer_pids(container), done + errors
