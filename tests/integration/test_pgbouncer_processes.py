"""Several PgBouncer processes on one port, for real: the budget holds, cancels cross, restarts
roll.

Each stack runs N peered PgBouncer processes (so_reuseport) in front of one real Postgres. The
checks: a burst of 1,000+ short-lived clients stays within the plan's server budget with no
error; a cancel request delivered to the *other* process cancels the query; a rolling restart
under load loses no client; each process has its own pgbouncer_exporter (through its socket
dir), and the shipped alert rules, which sum them by database, fire on the saturated pool.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from poolkit import console, metrics
from poolkit.local import detect_tools
from poolkit.local.exporters import KIT_BIN
from poolkit.local.pgbouncer import DRAIN_TIMEOUT_S, MIGRATE_HINT, migrates_queued_connections
from poolkit.peering import MIGRATE_SYSCTL
from poolkit.split import PEERING_SINCE
from tests.backends import burst_clients
from tests.conftest import LocalStack, free_ports, local_stack_running
from tests.integration.series import REPLAY_INTERVAL_S, Expect, Recorder, Target, promtool_test

pytestmark = pytest.mark.integration

BURST_CLIENTS = 1000
CLIENT_THREADS = 100
SATURATE_S = 20.0
SCRAPE_EVERY_S = 0.5
APP = {"database": "app"}


def _peering_pgbouncer() -> str | None:
    """Why these tests cannot run here, or None."""
    tools = detect_tools()
    version = tuple(int(x) for x in tools.pgbouncer_version.split(".")[:2])
    if version < PEERING_SINCE:
        return (f"PgBouncer {tools.pgbouncer_version} at {tools.pgbouncer} cannot peer processes "
                "(1.19+); ./scripts/bootstrap builds 1.24 (or set POOLKIT_PGBOUNCER)")
    return None


@pytest.fixture(scope="module", params=[2, 3], ids=["2-processes", "3-processes"])
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    why = _peering_pgbouncer()
    if why:
        pytest.skip(why)
    processes = request.param
    with local_stack_running(
        f"poolkit-p{processes}-", f"procs{processes}", with_apps=False,
        pgbouncer={"processes": processes, "default_pool_size": 6, "reserve_pool_size": 2},
        monitoring={"exporters": True, "pgbouncer_exporter_port": free_ports(processes),
                    "postgres_exporter_port": free_ports(1)},
    ) as started:  # fmt: skip
        yield started


def _processes(stack: LocalStack) -> int:
    return int(stack.env()["PGBOUNCER_PROCESSES"])


def _socket_dir(stack: LocalStack, peer_id: int) -> Path:
    return stack.state_dir / "run" / f"pgbouncer-{peer_id}"


def _child_pid(stack: LocalStack, peer_id: int) -> int:
    return int((stack.state_dir / "run" / f"pgbouncer-{peer_id}.pid").read_text().strip())


def _pooled_kwargs(stack: LocalStack) -> dict[str, object]:
    return {"prepare_threshold": None, "connect_timeout": 10}


def test_every_process_runs_its_own_file_on_the_shared_port(stack: LocalStack) -> None:
    processes = _processes(stack)
    assert processes >= 2
    stats = stack.env()["PGBOUNCER_STATS_URL"]
    params = conninfo_to_dict(stats)
    seen_peer_ids = set()
    for peer_id in range(1, processes + 1):
        url = psycopg.conninfo.make_conninfo(stats, host=str(_socket_dir(stack, peer_id)))
        config = console.config(url)
        assert config["listen_port"] == str(stack.pgbouncer_port)
        assert config["so_reuseport"] == "1"
        seen_peer_ids.add(config["peer_id"])
        assert os.path.exists(f"/proc/{_child_pid(stack, peer_id)}")
    assert seen_peer_ids == {str(n) for n in range(1, processes + 1)}
    assert params["port"] == str(stack.pgbouncer_port)


def test_burst_of_short_lived_clients_stays_within_the_budget(stack: LocalStack) -> None:
    env = stack.env()
    budget = int(env["PGBOUNCER_SERVER_BUDGET"])
    pooled, direct = env["POOLED_DATABASE_URL"], env["DIRECT_URL"]
    app_user = conninfo_to_dict(pooled)["user"]
    done = burst_clients([pooled], BURST_CLIENTS, CLIENT_THREADS, direct, "usename = %s",
                         (app_user,), **_pooled_kwargs(stack))  # fmt: skip
    print(f"{_processes(stack)} processes: {BURST_CLIENTS} clients in {done.seconds:.1f} s, "
          f"peak {done.peak} backends of {app_user} (budget {budget}), "
          f"errors {dict(done.errors)}")  # fmt: skip
    assert not done.errors
    assert 1 <= done.peak <= budget


def test_cancel_delivered_to_another_process_cancels_the_query(stack: LocalStack) -> None:
    """The client runs on process 1; its cancel request reaches process 2, which forwards it.

    libpq sends a cancel to the address it connected to: the client connects through a
    symlink to process 1's socket dir, and the symlink is turned to process 2's before the
    cancel, so the cancel provably lands on the other process.
    """
    pooled = stack.env()["POOLED_DATABASE_URL"]
    link = stack.base / "cancel-via"
    link.symlink_to(_socket_dir(stack, 1))
    try:
        url = psycopg.conninfo.make_conninfo(pooled, host=str(link))
        with psycopg.connect(url, autocommit=True, **_pooled_kwargs(stack)) as conn:  # type: ignore[arg-type]
            assert conn.execute("SELECT 1").fetchone() == (1,)
            link.unlink()
            link.symlink_to(_socket_dir(stack, 2))
            timer = threading.Timer(0.5, conn.cancel)
            timer.start()
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(20)")
            took = time.monotonic() - started
            timer.join()
            assert took < 10, f"the cancel took {took:.1f} s"
            assert conn.execute("SELECT 2").fetchone() == (2,)
    finally:
        link.unlink(missing_ok=True)


def test_rolling_restart_under_load_loses_no_client(stack: LocalStack) -> None:
    env = stack.env()
    pooled = env["POOLED_DATABASE_URL"]
    before = {peer: _child_pid(stack, peer) for peer in range(1, _processes(stack) + 1)}
    stop, done, errors = threading.Event(), Counter[str](), Counter[str]()

    def client() -> None:
        while not stop.is_set():
            try:
                with psycopg.connect(pooled, **_pooled_kwargs(stack)) as conn:  # type: ignore[arg-type]
                    conn.execute("SELECT pg_sleep(0.01)")
                done["ok"] += 1
            except Exception as error:
                errors[f"{type(error).__name__}: {str(error).strip()[:80]}"] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    restarted = stack.poolkit("restart")
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(15)
    after = {peer: _child_pid(stack, peer) for peer in before}
    print(restarted.stdout, f"clients ok {done['ok']}, errors {dict(errors)}")
    assert all(after[peer] != before[peer] for peer in before), (before, after)
    # The exporters' console logins are closed with the signal, so they hold no drain.
    took = [float(x) for x in re.findall(r"restarted PgBouncer process \d+ in ([0-9.]+) s",
                                         restarted.stdout)]  # fmt: skip
    assert len(took) == len(before) and max(took) < DRAIN_TIMEOUT_S / 2, restarted.stdout
    assert done["ok"] > 100
    if not migrates_queued_connections():
        assert MIGRATE_HINT in restarted.stdout
        if errors:  # connections queued on the closing listener were reset: the kernel's doing
            pytest.skip(f"{MIGRATE_SYSCTL} is 0 on this host and {sum(errors.values())} queued "
                        "connection(s) were reset; ./scripts/test sets it when run as root")
    assert not errors


def test_a_one_process_stack_moves_to_the_derived_count_at_its_next_up() -> None:
    """An existing stack of one process (``pgbouncer.ini``, the layout before the derived
    default) meets ``up`` without the key: it runs the derived 2 processes from 2 CPUs, the old
    file and process are gone, and clients that reconnect are served again within a second."""
    why = _peering_pgbouncer()
    if why:
        pytest.skip(why)
    with local_stack_running("poolkit-p1to2-", "onetotwo", with_apps=False,
                             pgbouncer={"processes": 1}) as stack:  # fmt: skip
        conf, pooled = stack.state_dir / "conf", stack.env()["POOLED_DATABASE_URL"]
        assert (conf / "pgbouncer.ini").exists() and len(stack.pgbouncer_pids()) == 1
        with psycopg.connect(stack.env()["DIRECT_URL"], autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (note text)")
            conn.execute("INSERT INTO kept VALUES ('before the switch')")
        stack.stack_file.write_text(stack.stack_file.read_text().replace("processes: 1", ""))
        with _LongestGap(pooled) as gap:
            done = stack.poolkit("up", "--no-smoke")
        print(f"\n{done.stdout}\nlongest stretch without a pooled query: {gap.longest:.2f} s")
        assert "stopping 1 PgBouncer process(es) to run 2" in done.stdout, done.stdout
        assert sorted(p.name for p in conf.glob("pgbouncer*.ini")) == [
            "pgbouncer-1.ini", "pgbouncer-2.ini"]  # fmt: skip
        assert len(stack.pgbouncer_pids()) == 2 and stack.env()["PGBOUNCER_PROCESSES"] == "2"
        assert gap.served > 10 and gap.longest < 2.0
        with psycopg.connect(pooled, prepare_threshold=None) as conn:
            assert conn.execute("SELECT note FROM kept").fetchall() == [("before the switch",)]


class _LongestGap:
    """A client connecting in a loop during the block: the longest stretch between two served
    queries (a refused connection is retried at once, as the kit's retry guidance says)."""

    def __init__(self, url: str) -> None:
        self.url, self.longest, self.served = url, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, prepare_threshold=None, connect_timeout=1) as conn:
                    conn.execute("SELECT 1")
            except psycopg.OperationalError:
                time.sleep(0.01)
                continue
            now = time.monotonic()
            self.longest, self.served, last = max(self.longest, now - last), self.served + 1, now

    def __enter__(self) -> _LongestGap:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # a few queries on the new processes
        self._stop.set()
        self._thread.join(5)


def _exporter_targets(stack: LocalStack) -> list[Target]:
    ports = stack.state()["exporter_ports"]
    return [Target(metrics.POSTGRES_JOB if name == metrics.POSTGRES_EXPORTER
                   else metrics.PGBOUNCER_JOB, f"http://127.0.0.1:{port}/metrics")
            for name, port in sorted(ports.items())]  # fmt: skip


def test_each_process_has_its_own_exporter_and_the_rules_sum_them(
    stack: LocalStack, tmp_path: Path
) -> None:
    """Clients on persistent connections, each running 1 s queries without pause, six times
    the servers: every process's servers are all busy. Each exporter shows its process's share
    (max_db_connections of one process), the shares add up to what the rules' threshold says,
    and promtool fires the saturation alert on the recording (one alert for the database)."""
    processes = _processes(stack)
    ports = stack.state()["exporter_ports"]
    base = min(ports[f"pgbouncer-exporter-{n}"] for n in range(1, processes + 1))
    assert ports == {**{f"pgbouncer-exporter-{n}": base + n - 1
                        for n in range(1, processes + 1)},
                     "postgres-exporter": ports["postgres-exporter"]}  # fmt: skip
    env = stack.env()
    per_process = int(env["PGBOUNCER_SERVER_BUDGET"]) // processes
    budget = per_process * processes
    rules = stack.state_dir / "conf" / metrics.RULES_FILE
    assert f") >= {budget}\n" in rules.read_text()
    stop, errors = threading.Event(), Counter[str]()

    def busy() -> None:
        try:
            with psycopg.connect(env["POOLED_DATABASE_URL"], autocommit=True,
                                 **_pooled_kwargs(stack)) as conn:  # type: ignore[arg-type]
                while not stop.is_set():  # each query its own transaction: servers rotate
                    conn.execute("SELECT pg_sleep(1)")
        except Exception as error:  # counted, asserted below
            errors[f"{type(error).__name__}: {str(error)[:60]}"] += 1

    # 6 clients per server: the kernel's spread leaves no process below its share, and each
    # waits long enough (~5 s) for the reserve (reserve_pool_timeout 3 s), never 15 s.
    threads = [threading.Thread(target=busy, daemon=True) for _ in range(6 * budget)]
    targets = _exporter_targets(stack)
    with Recorder(targets, SCRAPE_EVERY_S) as recorder:
        for thread in threads:
            thread.start()
        time.sleep(SATURATE_S)
        stop.set()
        for thread in threads:
            thread.join(10)
    recording = recorder.recording
    assert not recording.errors and not errors, (recording.errors, errors)
    name = "pgbouncer_pools_server_active_connections"
    peaks = {t.instance: max(sum(recording.values_at(i, name, instance=t.instance, **APP))
                             for i in range(len(recording.scrapes)))
             for t in targets if t.job == metrics.PGBOUNCER_JOB}  # fmt: skip
    print(f"{processes} processes: peak servers active per exporter {peaks} "
          f"(max_db_connections {per_process} each, rules threshold {budget})")
    assert list(peaks.values()) == [float(per_process)] * processes, peaks
    saturated = [i for i in range(len(recording.scrapes))
                 if sum(recording.values_at(i, name, **APP)) >= budget]  # fmt: skip
    first, last = saturated[0], saturated[-1]
    assert last - first >= 21, f"saturated for only {last - first + 1} scrapes"
    done = promtool_test(rules, recording, [
        Expect(last * REPLAY_INTERVAL_S, "PgBouncerServerPoolSaturated", (APP,)),
        Expect(last * REPLAY_INTERVAL_S, "PgBouncerExporterDown"),
    ], tmp_path, promtool=str(KIT_BIN / "promtool"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
