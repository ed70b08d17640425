"""Monitoring on real processes: the exporters `poolkit up` starts, a burst that saturates the
pool, and the shipped alert rules tested by promtool on what the exporters served.

One stack with a deliberately small pool (2 servers, no reserve, query_wait_timeout 8 s) and 13
instances whose every invocation holds its server for 1 s: clients queue about 5.5 s, servers
sit at max_db_connections. The exporters are scraped every second; promtool replays each scrape
as one 15 s Prometheus scrape, so the 5-minute saturation rule is tested on 30 s of real burst.
About 60 s in all.
"""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from rich.console import Console

from poolkit import burst, metrics, scram, watch
from poolkit.envfile import read_env
from poolkit.local.exporters import KIT_BIN, binary
from poolkit.secrets import STATS_USER, load
from poolkit.urls import postgres_url
from tests.conftest import LocalStack, free_ports, local_stack_running
from tests.integration.series import (
    REPLAY_INTERVAL_S,
    Expect,
    Recorder,
    Recording,
    Target,
    promtool_test,
    scrape,
)

pytestmark = pytest.mark.integration

POOL = 2
QUERY_WAIT_TIMEOUT = 8
INSTANCES = 13
BURST_S = 30.0
INTERVAL_S = 1.0
APP = {"database": "app"}
ALERTS = ("PgBouncerClientsWaiting", "PgBouncerMaxWaitHigh", "PgBouncerServerPoolSaturated",
          "PostgresConnectionsHigh", "PgBouncerExporterDown", "PostgresExporterDown")


def promtool() -> str:
    found = KIT_BIN / "promtool"
    return str(found) if found.exists() else "promtool"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    taken: set[int] = set()
    # 8 ports: validation keeps a derived process count's largest exporter range free.
    bouncer_port, postgres_port = free_ports(8, taken), free_ports(1, taken)
    with local_stack_running(
        "poolkit-monitoring-", "monitoring", with_apps=False,
        pgbouncer={"default_pool_size": POOL, "reserve_pool_size": 0,
                   "query_wait_timeout": QUERY_WAIT_TIMEOUT},
        monitoring={"exporters": True, "pgbouncer_exporter_port": bouncer_port,
                    "postgres_exporter_port": postgres_port},
    ) as started:  # fmt: skip
        yield started


def targets(stack: LocalStack) -> list[Target]:
    ports = stack.state()["exporter_ports"]
    return [Target(metrics.PGBOUNCER_JOB,
                   f"http://127.0.0.1:{ports[metrics.PGBOUNCER_EXPORTER]}/metrics"),
            Target(metrics.POSTGRES_JOB,
                   f"http://127.0.0.1:{ports[metrics.POSTGRES_EXPORTER]}/metrics")]  # fmt: skip


def rules_file(stack: LocalStack) -> Path:
    return stack.state_dir / "conf" / metrics.RULES_FILE


def silent(at_s: float, *names: str) -> list[Expect]:
    return [Expect(at_s, name) for name in names]


def check(stack: LocalStack, recording: Recording, expectations: list[Expect],
          work: Path) -> None:  # fmt: skip
    done = promtool_test(rules_file(stack), recording, expectations, work, promtool=promtool())
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def saturating_burst(stack: LocalStack) -> tuple[Recording, burst.BurstResult, str]:
    """13 instances, each invocation holding a server 1 s, scraped every second; meanwhile
    ``status --watch`` draws two frames (kept as text)."""
    env = read_env(stack.env_file)
    spec = burst.BurstSpec(instances=INSTANCES, duration_s=BURST_S, ramp_s=1.0, think_s=0.0,
                           query="SELECT pg_sleep(1)", workers=1,
                           invocation_timeout_s=QUERY_WAIT_TIMEOUT + 5)  # fmt: skip
    screen = Console(file=io.StringIO(), width=110, record=True)

    def watch_mid_burst() -> None:
        time.sleep(BURST_S / 2)
        watch.watch(env, "poolkit monitoring: PgBouncer pools", console=screen, rounds=2)

    watcher = threading.Thread(target=watch_mid_burst, daemon=True)
    with Recorder(targets(stack), INTERVAL_S) as recorder:
        watcher.start()
        result = burst.run_burst(burst.urls_from_env(env, "pooled"), spec, label="saturating")
    watcher.join(30)
    print("\n".join(result.lines()))
    return recorder.recording, result, screen.export_text()


def test_exporters_serve_the_standard_names_on_loopback_only(stack: LocalStack) -> None:
    pgbouncer, postgres = (scrape(t.url) for t in targets(stack))
    names = {name for name, _ in pgbouncer} | {name for name, _ in postgres}
    missing = [n for n in (*metrics.PGBOUNCER_METRICS, *metrics.POSTGRES_METRICS)
               if n not in names]  # fmt: skip
    assert not missing, f"not served: {missing}"
    assert pgbouncer[("pgbouncer_up", ())] == 1.0
    assert postgres[("pg_up", ())] == 1.0
    assert pgbouncer[("pgbouncer_config_max_client_connections", ())] >= 300
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
    for target in targets(stack):
        port = target.instance.split(":")[1]
        assert re.search(rf"127\.0\.0\.1:{port}\s", listening), listening
        assert not re.search(rf"(0\.0\.0\.0|\*|\[::\]):{port}\s", listening), listening
    verified = (*metrics.PGBOUNCER_METRICS, *metrics.POSTGRES_METRICS)
    print(f"metric names verified: {', '.join(verified)}")


def test_exporters_log_in_as_read_only_roles_with_no_password_in_argv(stack: LocalStack) -> None:
    env_files = sorted((stack.state_dir / "conf").glob("*-exporter.env"))
    assert [p.name for p in env_files] == ["pgbouncer-exporter.env", "postgres-exporter.env"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in env_files)
    texts = "".join(p.read_text() for p in env_files)
    assert "//pgbouncer_stats:" in texts and "//poolkit_monitor:" in texts
    passwords = re.findall(r"://[^:]+:([^@]+)@", texts)
    assert len(passwords) == 2
    argv = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "exporter" in argv and not [p for p in passwords if p in argv]
    monitor = load(stack.state_dir / "secrets.json").monitor  # type: ignore[union-attr]
    assert monitor is not None
    url = postgres_url(monitor.user, monitor.password, "127.0.0.1", stack.postgres_port, "app")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_stat_activity").fetchone()[0] > 0  # type: ignore[index]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.monitor_may_not (x int)")


def test_idle_stack_fires_no_alert(stack: LocalStack, tmp_path: Path) -> None:
    with Recorder(targets(stack), INTERVAL_S) as idle:
        time.sleep(7 * INTERVAL_S)
    assert not idle.recording.errors
    end = (len(idle.recording.scrapes) - 1) * REPLAY_INTERVAL_S
    check(stack, idle.recording, silent(end, *ALERTS), tmp_path)


def test_saturating_burst_shows_waiting_clients_and_servers_at_max_db_connections(
    saturating_burst: tuple[Recording, burst.BurstResult, str],
) -> None:
    recording, result, _ = saturating_burst
    assert not recording.errors
    waiting = recording.peak("pgbouncer_pools_client_waiting_connections", **APP)
    active = recording.peak("pgbouncer_pools_server_active_connections", **APP)
    maxwait = max(max(recording.values_at(i, "pgbouncer_pools_client_maxwait_seconds", **APP),
                      default=0.0) for i in range(len(recording.scrapes)))  # fmt: skip
    backends = recording.peak("pg_stat_database_numbackends")
    print(f"exporters during the burst: peak clients waiting {waiting:g}, servers active "
          f"{active:g} (max_db_connections {POOL}), maxwait {maxwait:g} s, Postgres backends "
          f"{backends:g}; burst: {result.ok} ok, {result.error_total} errors, "
          f"{len(recording.scrapes)} scrapes")  # fmt: skip
    assert waiting >= INSTANCES - POOL - 2
    assert active == POOL
    assert maxwait > QUERY_WAIT_TIMEOUT / 2
    assert result.error_total == 0, result.errors


def test_alert_rules_fire_on_the_recorded_burst(
    stack: LocalStack, saturating_burst: tuple[Recording, burst.BurstResult, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    recording, _, _ = saturating_burst
    saturated = [i for i in range(len(recording.scrapes)) if sum(recording.values_at(
        i, "pgbouncer_pools_server_active_connections", **APP)) >= POOL]  # fmt: skip
    first, last = saturated[0], saturated[-1]
    assert last - first >= 21, f"saturated for only {last - first + 1} scrapes"
    waits = [max(recording.values_at(i, "pgbouncer_pools_client_maxwait_seconds", **APP),
                 default=0.0) for i in range(len(recording.scrapes))]  # fmt: skip
    peak = waits.index(max(waits))
    at = REPLAY_INTERVAL_S
    expectations = [
        Expect(last * at, "PgBouncerServerPoolSaturated", (APP,)),
        Expect(last * at, "PgBouncerClientsWaiting", (APP,)),
        Expect(peak * at, "PgBouncerMaxWaitHigh", (APP,)),
        # Saturated for 2.5 minutes: not yet an alert (its window is 5).
        *silent((first + 10) * at, "PgBouncerServerPoolSaturated"),
        *silent(last * at, "PostgresConnectionsHigh", "PgBouncerExporterDown",
                "PostgresExporterDown"),
    ]  # fmt: skip
    check(stack, recording, expectations, tmp_path)
    print(f"promtool: saturation fires at {last * at:g} s replayed (scrape {last}; saturated "
          f"from scrape {first}), clients waiting too, maxwait {max(waits):g} s at scrape {peak}")


def test_status_watch_shows_the_queue(
    saturating_burst: tuple[Recording, burst.BurstResult, str],
) -> None:
    _, _, text = saturating_burst
    print(text)
    row = next(line for line in text.splitlines() if "app/app" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[0] == "app/app" and int(cells[2]) > 0 and int(cells[3]) == POOL, row
    assert "of max_connections" in text


def test_burst_timeline_png(saturating_burst: tuple[Recording, burst.BurstResult, str],
                            tmp_path: Path) -> None:  # fmt: skip
    from poolkit.plot import plot_timeline

    _, result, _ = saturating_burst
    assert max(p.waiting or 0 for p in result.timeline) > 0
    assert max(p.servers_active or 0 for p in result.timeline) == POOL
    written = plot_timeline(result, tmp_path / "timeline.png")
    assert written and Path(written).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wrong_exporter_password_gives_pgbouncer_up_0_and_a_log_line(
    stack: LocalStack, tmp_path: Path
) -> None:
    """Running: PgBouncer stops accepting the exporter's password (its verifier changed, its
    connection killed): the exporter serves pgbouncer_up 0, logs why, and keeps running;
    PgBouncerExporterDown fires. At start, a wrong password makes it exit with the reason."""
    credentials = load(stack.state_dir / "secrets.json")
    assert credentials is not None
    admin = credentials.pgbouncer_admin
    admin_url = postgres_url(admin.user, admin.password, "127.0.0.1", stack.pgbouncer_port,
                             "pgbouncer")  # fmt: skip
    userlist = stack.state_dir / "conf" / "userlist.txt"
    original = userlist.read_text()
    other = scram.verifier("not-the-exporters-password", b"0123456789abcdef", 4096)
    changed = re.sub(rf'^("{STATS_USER}" ).*$', rf'\1"{other}"', original, flags=re.MULTILINE)
    assert changed != original
    log = stack.state_dir / "log" / f"{metrics.PGBOUNCER_EXPORTER}.out.log"
    target = targets(stack)[0]
    supervisor = (stack.state_dir / "run" / f"{metrics.PGBOUNCER_EXPORTER}.supervisor.pid")
    before = supervisor.read_text()
    logged = len(log.read_text())
    with psycopg.connect(admin_url, autocommit=True) as console:
        try:
            userlist.write_text(changed)
            console.execute("RELOAD")
            clients = console.execute("SHOW CLIENTS").fetchall()
            names = [c.name for c in console.cursor().execute("SHOW CLIENTS").description or ()]
            rows = [dict(zip(names, row, strict=True)) for row in clients]
            for row in rows:
                if row["user"] == STATS_USER:
                    console.execute(f"KILL_CLIENT {int(row['id'])}")
            with Recorder([target], INTERVAL_S) as broken:
                time.sleep(7 * INTERVAL_S)
        finally:
            userlist.write_text(original)
            console.execute("RELOAD")
    assert not broken.recording.errors, "the exporter stopped answering"
    assert broken.recording.last("pgbouncer_up") == [0.0]
    assert supervisor.read_text() == before
    line = next((x for x in log.read_text()[logged:].splitlines()
                 if "authentication failed" in x), None)  # fmt: skip
    assert line, log.read_text()[logged:][-2000:]
    print(f"wrong password, running: pgbouncer_up 0; log: {line}")
    down = {"instance": target.instance, "job": metrics.PGBOUNCER_JOB}
    end = (len(broken.recording.scrapes) - 1) * REPLAY_INTERVAL_S
    check(stack, broken.recording, [Expect(end, "PgBouncerExporterDown", (down,))], tmp_path)
    deadline = time.monotonic() + 10
    while scrape(target.url).get(("pgbouncer_up", ())) != 1.0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert scrape(target.url)[("pgbouncer_up", ())] == 1.0, "no recovery with the right password"

    wrong = read_env(stack.env_file)["PGBOUNCER_STATS_URL"].replace(
        f"://{STATS_USER}:", f"://{STATS_USER}:wrong-", 1)  # fmt: skip
    done = subprocess.run(
        [binary(metrics.PGBOUNCER_EXPORTER), f"--web.listen-address=127.0.0.1:{free_ports(1)}"],
        env={"PGBOUNCER_EXPORTER_CONNECTION_STRING": f"{wrong}?sslmode=disable"},
        capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode != 0 and "authentication failed" in done.stderr, done.stderr
    print(f"wrong password at start: exit {done.returncode}; "
          f"{done.stderr.strip().splitlines()[-1]}")


def test_status_watch_exits_cleanly_on_ctrl_c(stack: LocalStack) -> None:
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "poolkit"), "status", "--watch",
         "--state-dir", str(stack.state_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    time.sleep(2.5)
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=15)
    assert process.returncode == 0, out[-2000:]
    assert "maxwait s" in out and "Traceback" not in out, out[-2000:]
