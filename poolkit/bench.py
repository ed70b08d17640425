"""``poolkit bench``: pooled vs direct vs a naive PgBouncer, in one run, on one server.

The bench brings up ``bench/stack.yaml`` with the local runner and measures, against the same
Postgres with the same settings:

- connect storm: ``pgbench -C -S`` (a new connection per transaction), direct / pooled / naive;
- persistent: ``pgbench -S``, direct / pooled;
- the burst simulator (``poolkit.burst``), direct / pooled / naive;
- where a connect storm spends its time: SCRAM-SHA-256 verifiers of 4096 PBKDF2 iterations
  against lower counts, through a PgBouncer rendered by the kit, with client and PgBouncer CPU;
- the multi-core lever: several PgBouncer processes on one port (``so_reuseport``).

"Naive" is a PgBouncer configured the way blog posts show it (stock pool sizes, one process,
SCRAM's default 4096 iterations), written here by hand on purpose: it is the baseline the
kit's tuning is compared with. It and the experimental PgBouncers run in a scratch folder,
log in to Postgres as the migrator role (the only other role pg_hba admits) with a verifier
this module sets, and are stopped at the end; the migrator's original verifier is restored.

Medians over ``repeats`` runs (interleaved, so drift hits every arm alike); results go to
``results.json`` and, when matplotlib is installed, ``results.png``. Traffic: 127.0.0.1 only.
Passwords reach pgbench through ``PGPASSWORD`` in the child's environment, never argv.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from poolkit import burst
from poolkit import secrets as stack_secrets
from poolkit.config import StackConfig, load_stack
from poolkit.envfile import read_env, write_private
from poolkit.layouts import local_layout
from poolkit.render import render_pgbouncer_ini, render_userlist
from poolkit.sizing import Plan
from poolkit.urls import postgres_url

PGBENCH_CLIENTS = 32
PGBENCH_THREADS = 2
PGBENCH_SCALE = 10
PGBENCH_GRACE_S = 60.0
"""A pgbench run may take this much longer than its -T before it is killed."""
STOCK_ITERATIONS = 4096
BOUNCER_START_S = 10.0
NAIVE_PORT_OFFSET = 2
SCRATCH_PORT_OFFSET = 3
"""The naive and the experimental PgBouncers listen on the stack's PgBouncer port + these."""
BURST_ZOMBIES = 100
LOW_ITERATIONS = 256
"""The iteration count proposed for generated passwords; the burst is repeated with it."""
CPU_PARTS = ("client", "pgbouncer", "postgres", "other")

NAIVE_INI = """\
;; A hand-written PgBouncer config as blog posts show it: the baseline of poolkit bench.
;; Stock pool sizes, one process, SCRAM verifiers of the default 4096 iterations.
[databases]
{database} = host=127.0.0.1 port={postgres_port} dbname={database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir = {run}
pidfile = {run}/pgbouncer.pid
logfile = {log}
auth_type = scram-sha-256
auth_file = {userlist}
stats_users = {user}
pool_mode = transaction
default_pool_size = 20
max_client_conn = 100
"""

GOALS = {
    "connect_storm_vs_direct": 8.0,
    "connect_storm_vs_naive": 4.0,
    "persistent_vs_direct": 0.9,
    "burst_p99_ms": 2000.0,
}


class BenchError(RuntimeError):
    """A step of the bench failed; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    """How long and how often each measurement runs."""

    quick: bool
    repeats: int
    pgbench_seconds: int
    burst: burst.BurstSpec
    scram_iterations: tuple[int, ...]
    reuseport_processes: tuple[int, ...]
    reuseport_iterations: tuple[int, ...]

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, 1, 2, burst.BurstSpec(instances=1000, zombies=BURST_ZOMBIES,
                                                   duration_s=3.0, ramp_s=1.0),
                       (STOCK_ITERATIONS, LOW_ITERATIONS), (), ())  # fmt: skip
        return cls(False, 3, 10, burst.BurstSpec(instances=1000, zombies=BURST_ZOMBIES,
                                                 duration_s=10.0, ramp_s=1.0),
                   (STOCK_ITERATIONS, 1024, LOW_ITERATIONS, 64), (2, 3),
                   (STOCK_ITERATIONS, LOW_ITERATIONS))  # fmt: skip


# --- measuring CPU -----------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def _process_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of running processes (0 for those gone)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = _stat_fields(pid)
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _postgres_cpu(postmaster: int | None) -> float:
    """CPU seconds of a Postgres server: the postmaster, its reaped children (backends that
    exited) and its live children. The difference over a run is the server's share."""
    if postmaster is None:
        return 0.0
    total = 0
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = _stat_fields(postmaster)
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = _stat_fields(int(entry.name))
                if int(fields[1]) == postmaster:
                    total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _settled_postgres_cpu(postmaster: int | None, limit_s: float = 2.0) -> float:
    """``_postgres_cpu`` once exiting backends are reaped (their CPU then moves to the
    postmaster's children total): read until two readings agree, at most ``limit_s``."""
    last = _postgres_cpu(postmaster)
    deadline = time.monotonic() + limit_s
    while postmaster is not None and time.monotonic() < deadline:
        time.sleep(0.1)
        now = _postgres_cpu(postmaster)
        if now == last:
            break
        last = now
    return last


def _machine_cpu() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICK


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- pgbench -----------------------------------------------------------------------------------


@dataclass
class PgbenchRun:
    """One pgbench run's figures, with where the CPU went (seconds, whole run)."""

    arm: str
    tps: float | None
    latency_ms: float | None
    transactions: int
    failed: int
    aborted: bool
    seconds: float
    client_cpu_s: float
    bouncer_cpu_s: float
    postgres_cpu_s: float
    machine_cpu_s: float
    """Busy CPU of the whole machine: minus the three above, what else ran (noise)."""
    error: str = ""

    def per_transaction_ms(self) -> dict[str, float | None]:
        """CPU ms per transaction: pgbench (libpq), PgBouncer, Postgres, other processes."""
        if not self.transactions:
            return dict.fromkeys(CPU_PARTS)
        n = self.transactions / 1000

        def each(seconds: float) -> float:
            return round(seconds / n, 3)

        other = self.machine_cpu_s - self.client_cpu_s - self.bouncer_cpu_s - self.postgres_cpu_s
        return {"client": each(self.client_cpu_s), "pgbouncer": each(self.bouncer_cpu_s),
                "postgres": each(self.postgres_cpu_s), "other": each(max(0.0, other))}  # fmt: skip


_TPS = re.compile(r"^tps = ([\d.]+)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


def parse_pgbench(output: str) -> dict[str, Any]:
    """The figures of pgbench's summary (PostgreSQL 15's format)."""

    def first(pattern: re.Pattern[str], cast: Callable[[str], Any]) -> Any:
        match = pattern.search(output)
        return cast(match.group(1)) if match else None

    return {
        "tps": first(_TPS, float),
        "latency_ms": first(_LATENCY, float),
        "transactions": first(_PROCESSED, int) or 0,
        "failed": first(_FAILED, int) or 0,
        "aborted": "aborted" in output.lower(),
    }


def _client_env(url: str) -> tuple[list[str], dict[str, str]]:
    """pgbench's connection arguments and child environment (password only in the env)."""
    parts = conninfo_to_dict(url)
    burst.require_loopback(url, "the pgbench URL")
    args = ["-h", str(parts["host"]), "-p", str(parts.get("port", 5432)),
            "-U", str(parts["user"])]  # fmt: skip
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PGPASSWORD": str(parts.get("password", "")),
        "PGCONNECT_TIMEOUT": "10",
        "PGSSLMODE": "disable",
    }
    return [*args, str(parts["dbname"])], env


def pgbench(
    binary: Path,
    url: str,
    arm: str,
    *,
    connect_each: bool,
    seconds: int,
    bouncer_pids: list[int] | None = None,
    postmaster: int | None = None,
    clients: int = PGBENCH_CLIENTS,
) -> PgbenchRun:
    """``pgbench -S`` (``-C``: a new connection per transaction) for ``seconds``."""
    target, env = _client_env(url)
    argv = [str(binary), "-S", "-M", "simple", "-n", "-c", str(clients),
            "-j", str(min(PGBENCH_THREADS, clients)), "-T", str(seconds)]  # fmt: skip
    if connect_each:
        argv.append("-C")
    pids = bouncer_pids or []
    client0, bouncer0 = _children_cpu(), _process_cpu(pids)
    postgres0, machine0 = _postgres_cpu(postmaster), _machine_cpu()
    started = time.monotonic()
    try:
        done = subprocess.run([*argv, *target], env=env, capture_output=True, text=True,
                              timeout=seconds + PGBENCH_GRACE_S, check=False)  # fmt: skip
        output, error = done.stdout + done.stderr, ""
        if done.returncode not in (0, 2):
            error = _last_line(done.stderr) or f"pgbench exited with {done.returncode}"
    except subprocess.TimeoutExpired:
        output, error = "", f"pgbench did not finish within {seconds + PGBENCH_GRACE_S:.0f} s"
    took = time.monotonic() - started
    figures = parse_pgbench(output)
    if figures["tps"] is None and not error:
        error = _last_line(output) or "no tps in pgbench's output"
    if figures["aborted"] and not error:
        error = "some pgbench clients aborted: " + _first_match(output, "aborted")
    client_cpu = _children_cpu() - client0
    bouncer_cpu, machine_cpu = _process_cpu(pids) - bouncer0, _machine_cpu() - machine0
    return PgbenchRun(
        arm=arm, seconds=round(took, 2), client_cpu_s=round(client_cpu, 3),
        bouncer_cpu_s=round(bouncer_cpu, 3),
        postgres_cpu_s=round(_settled_postgres_cpu(postmaster) - postgres0, 3),
        machine_cpu_s=round(machine_cpu, 3), error=error, **figures,
    )  # fmt: skip


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _first_match(text: str, needle: str) -> str:
    return next((line[:200] for line in text.splitlines() if needle in line.lower()), "")


def pgbench_init(binary: Path, direct_url: str, scale: int = PGBENCH_SCALE) -> bool:
    """``pgbench -i -s scale`` as the migrator, unless the tables hold that scale already."""
    with contextlib.suppress(psycopg.Error), psycopg.connect(direct_url, connect_timeout=10) as c:
        row = c.execute("SELECT count(*) FROM pgbench_branches").fetchone()
        if row and row[0] == scale:
            return False
    target, env = _client_env(direct_url)
    done = subprocess.run([str(binary), "-i", "-q", "-s", str(scale), *target], env=env,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"pgbench -i failed: {_last_line(done.stderr)}")
    return True


# --- scratch PgBouncers: the naive baseline and the experiments -------------------------------


@dataclass
class Scratch:
    """PgBouncer processes this bench started, in a folder of their own."""

    name: str
    port: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]


class ScratchBouncers:
    """Start PgBouncers from given ini texts and stop exactly those at the end."""

    def __init__(self, root: Path, binary: Path, user: Any):
        self.root = root
        self.binary = binary
        self.user = user
        self.running: list[Scratch] = []

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._own(path)
        return path

    def _own(self, path: Path) -> None:
        if self.user.switch:
            os.chown(path, self.user.uid, self.user.gid)

    def write(self, path: Path, text: str) -> None:
        write_private(path, text)
        self._own(path)

    def start(self, name: str, port: int, inis: list[Path]) -> Scratch:
        scratch = Scratch(name, port)
        self.running.append(scratch)
        for ini in inis:
            ini.with_suffix(".log").unlink(missing_ok=True)  # wait for this start's "process up"
            log = ini.with_suffix(".out")
            with log.open("wb") as out:
                scratch.processes.append(subprocess.Popen(
                    [str(self.binary), str(ini)], stdin=subprocess.DEVNULL, stdout=out,
                    stderr=out, cwd=ini.parent, start_new_session=True,
                    **self.user.popen_kwargs(),
                ))  # fmt: skip
        deadline = time.monotonic() + BOUNCER_START_S
        for ini, process in zip(inis, scratch.processes, strict=True):
            logfile = ini.with_suffix(".log")
            while "process up" not in _read(logfile):
                if process.poll() is not None or time.monotonic() > deadline:
                    self.stop(scratch)
                    logs = _read(logfile) + _read(ini.with_suffix(".out"))
                    raise BenchError(f"PgBouncer {name} did not start: {_last_line(logs)}")
                time.sleep(0.05)
        return scratch

    def stop(self, scratch: Scratch) -> None:
        for process in scratch.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in scratch.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if scratch in self.running:
            self.running.remove(scratch)

    def stop_all(self) -> None:
        for scratch in list(self.running):
            self.stop(scratch)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def naive_ini(folder: Path, port: int, stack: StackConfig, user: str) -> str:
    return NAIVE_INI.format(
        database=stack.database.name, postgres_port=stack.postgres.port, port=port,
        run=folder, log=folder / "0.log", userlist=folder / "userlist.txt", user=user,
    )  # fmt: skip


def kit_ini(stack: StackConfig, the_plan: Plan, folder: Path, port: int, index: int,
            superuser: str, reuseport: bool) -> str:
    """The kit's own pgbouncer.ini (core renderer), relocated to ``folder`` and ``port``."""
    run = folder / f"run{index}"
    run.mkdir(mode=0o700, exist_ok=True)
    layout = dataclasses.replace(
        local_layout(stack, folder, superuser),
        pgbouncer_port=port, public_pgbouncer_port=port, pgbouncer_dir=str(folder),
        pgbouncer_socket_dir=str(run), pgbouncer_pidfile=str(run / "pgbouncer.pid"),
        pgbouncer_logfile=str(folder / f"{index}.log"),
    )  # fmt: skip
    text = render_pgbouncer_ini(stack, the_plan, layout)
    if reuseport:
        text += ("\n;; poolkit bench experiment: several processes share listen_port\n"
                 "so_reuseport = 1\n")  # fmt: skip
    return text


# --- roles --------------------------------------------------------------------------------------


def set_verifier(direct_url: str, credential: stack_secrets.Credential) -> None:
    """Give the DIRECT_URL role ``credential``'s verifier (a role may change its own)."""
    with psycopg.connect(direct_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("ALTER ROLE CURRENT_USER PASSWORD {}").format(
            sql.Literal(credential.verifier)))  # fmt: skip


def migrator_with(direct_url: str, iterations: int) -> stack_secrets.Credential:
    """The DIRECT_URL role's password under a fresh salt and ``iterations``."""
    parts = conninfo_to_dict(direct_url)
    return stack_secrets.Credential(
        user=str(parts["user"]), password=str(parts["password"]),
        salt=stack_secrets.new_salt(), iterations=iterations,
    )  # fmt: skip


# --- the run ------------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def _median_run(runs: list[PgbenchRun]) -> dict[str, Any]:
    good = [r for r in runs if r.tps is not None and not r.error]
    per_tx = [r.per_transaction_ms() for r in good]
    return {
        "tps": median([r.tps for r in good if r.tps is not None]),
        "latency_ms": median([r.latency_ms for r in good if r.latency_ms is not None]),
        "cpu_ms_per_transaction": {
            key: median([p[key] for p in per_tx if p[key] is not None])
            for key in CPU_PARTS
        },
        "errors": [r.error for r in runs if r.error],
        "runs": [dataclasses.asdict(r) for r in runs],
    }


def _median_burst(runs: list[burst.BurstResult]) -> dict[str, Any]:
    def med(get: Callable[[burst.BurstResult], float | int | None]) -> float | None:
        return median([float(v) for r in runs if (v := get(r)) is not None])

    return {
        "ok": med(lambda r: r.ok),
        "throughput": med(lambda r: r.throughput),
        "errors": med(lambda r: r.error_total),
        "errors_by_kind": {k: med(lambda r, k=k: r.errors[k]) for k in burst.ERROR_KINDS},
        "p50_ms": med(lambda r: r.latency_ms["p50"]),
        "p95_ms": med(lambda r: r.latency_ms["p95"]),
        "p99_ms": med(lambda r: r.latency_ms["p99"]),
        "warm_p99_ms": med(lambda r: r.warm_latency_ms["p99"]),
        "connect_p99_ms": med(lambda r: r.connect_ms["p99"]),
        "peak_backends": med(lambda r: r.peak_backends),
        "peak_backends_of_user": med(lambda r: r.peak_backends_of_user),
        "peak_clients": med(lambda r: r.peak_clients),
        "peak_servers": med(lambda r: r.peak_servers),
        "runs": [r.as_dict() for r in runs],
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


@dataclass
class Bench:
    """One bench run: the stack is up, ``env`` holds its URLs."""

    stack: StackConfig
    plan: Plan
    env: Mapping[str, str]
    secrets: stack_secrets.Secrets
    settings: Settings
    pgbench_binary: Path
    bouncer_pid: Callable[[], list[int]]
    postmaster: Callable[[], int | None]
    scratch: ScratchBouncers
    superuser: str
    say: Callable[[str], None]
    naive_port: int
    scratch_port: int
    """Ports of the naive and of the experimental PgBouncers (127.0.0.1)."""
    naive_credential: stack_secrets.Credential | None = None
    """The migrator with stock 4096 iterations, which the naive PgBouncer logs in with."""

    @property
    def direct(self) -> str:
        return self.env["DIRECT_URL"]

    @property
    def pooled(self) -> str:
        return self.env["POOLED_DATABASE_URL"]

    def _migrator_url(self, port: int, dbname: str | None = None) -> str:
        parts = conninfo_to_dict(self.direct)
        return postgres_url(str(parts["user"]), str(parts["password"]), "127.0.0.1", port,
                            dbname or str(parts["dbname"]))  # fmt: skip

    def verifier_for(self, arm: str) -> None:
        """The migrator's verifier for ``arm``: stock 4096 for the naive PgBouncer, else as shipped.

        The naive PgBouncer logs in as the migrator (the only other role pg_hba admits); the
        direct arms must still pay only what a shipped stack pays.
        """
        naive = arm == "naive" and self.naive_credential is not None
        set_verifier(self.direct, self.naive_credential if naive else self.secrets.migrator)

    # -- scratch bouncers --

    def start_naive(self) -> Scratch:
        port = self.naive_port
        folder = self.scratch.folder("naive")
        credential = migrator_with(self.direct, STOCK_ITERATIONS)
        self.naive_credential = credential
        set_verifier(self.direct, credential)
        self.scratch.write(folder / "userlist.txt", _userlist(credential, self.secrets))
        ini = folder / "0.ini"
        self.scratch.write(ini, naive_ini(folder, port, self.stack, credential.user))
        return self.scratch.start("naive", port, [ini])

    def start_kit(
        self,
        iterations: int,
        processes: int = 1,
        credential: stack_secrets.Credential | None = None,
    ) -> Scratch:
        """PgBouncer(s) with the kit's rendered config; the migrator gets a verifier of
        ``iterations`` (or ``credential``'s, which Postgres is assumed to hold already)."""
        port = self.scratch_port
        name = f"kit-{iterations}-x{processes}"
        folder = self.scratch.folder(name)
        if credential is None:
            credential = migrator_with(self.direct, iterations)
            set_verifier(self.direct, credential)
        self.scratch.write(folder / "userlist.txt", _userlist(credential, self.secrets))
        inis = []
        for index in range(processes):
            ini = folder / f"{index}.ini"
            self.scratch.write(ini, kit_ini(self.stack, self.plan, folder, port, index,
                                            self.superuser, reuseport=processes > 1))  # fmt: skip
            self._chown_tree(folder)
            inis.append(ini)
        return self.scratch.start(name, port, inis)

    def _chown_tree(self, folder: Path) -> None:
        for path in (folder, *folder.iterdir()):
            self.scratch._own(path)

    # -- measurements --

    def pgbench(self, url: str, arm: str, *, connect_each: bool,
                bouncer_pids: list[int] | None = None) -> PgbenchRun:
        return pgbench(self.pgbench_binary, url, arm, connect_each=connect_each,
                       seconds=self.settings.pgbench_seconds, bouncer_pids=bouncer_pids,
                       postmaster=self.postmaster())  # fmt: skip

    def connect_storm_and_persistent(self) -> dict[str, Any]:
        s = self.settings
        naive = self.start_naive()
        naive_url = self._migrator_url(naive.port)
        storm: dict[str, list[PgbenchRun]] = {"direct": [], "pooled": [], "naive": []}
        persistent: dict[str, list[PgbenchRun]] = {"direct": [], "pooled": []}
        try:
            for rep in range(s.repeats):
                for arm, url, pids in (("direct", self.direct, []),
                                       ("pooled", self.pooled, self.bouncer_pid()),
                                       ("naive", naive_url, naive.pids)):  # fmt: skip
                    self.verifier_for(arm)
                    run = self.pgbench(url, arm, connect_each=True, bouncer_pids=pids)
                    storm[arm].append(run)
                    self.say(f"pgbench -C -S {arm:<7} run {rep + 1}/{s.repeats}: "
                             f"{_tps(run)}")  # fmt: skip
                for arm, url, pids in (("direct", self.direct, []),
                                       ("pooled", self.pooled, self.bouncer_pid())):  # fmt: skip
                    self.verifier_for(arm)
                    run = self.pgbench(url, arm, connect_each=False, bouncer_pids=pids)
                    persistent[arm].append(run)
                    self.say(f"pgbench -S    {arm:<7} run {rep + 1}/{s.repeats}: {_tps(run)}")
            bursts = self.bursts(naive)
        finally:
            self.scratch.stop(naive)
        return {
            "connect_storm": {arm: _median_run(runs) for arm, runs in storm.items()},
            "persistent": {arm: _median_run(runs) for arm, runs in persistent.items()},
            "burst": bursts,
        }

    def bursts(self, naive: Scratch) -> dict[str, Any]:
        s = self.settings
        spec = dataclasses.replace(s.burst, prepare=burst.prepare_from_env(self.env))
        stats = self.env.get("PGBOUNCER_STATS_URL")
        arms = {
            "direct": burst.Urls(target=self.direct, direct=self.direct),
            "pooled": burst.Urls(target=self.pooled, direct=self.direct, stats=stats),
            "naive": burst.Urls(target=self._migrator_url(naive.port), direct=self.direct,
                                stats=self._migrator_url(naive.port, "pgbouncer")),
        }  # fmt: skip
        results: dict[str, list[burst.BurstResult]] = {arm: [] for arm in arms}
        for rep in range(s.repeats):
            for arm, urls in arms.items():
                self.verifier_for(arm)
                result = burst.run_burst(urls, spec, label=arm)
                results[arm].append(result)
                self.say(f"burst {spec.instances}+{spec.zombies} {arm:<7} run {rep + 1}/"
                         f"{s.repeats}: {result.ok} ok, {result.error_total} errors, p99 "
                         f"{result.latency_ms['p99']} ms, peak backends "
                         f"{result.peak_backends}")  # fmt: skip
                _settle()
        return {arm: _median_burst(runs) for arm, runs in results.items()}

    def scram(self) -> dict[str, Any]:
        """Connect storm through the kit's PgBouncer config with verifiers of N iterations."""
        s = self.settings
        pooled: dict[int, list[PgbenchRun]] = {n: [] for n in s.scram_iterations}
        direct: dict[int, list[PgbenchRun]] = {n: [] for n in s.scram_iterations}
        for rep in range(s.repeats):
            for iterations in s.scram_iterations:
                bouncer = self.start_kit(iterations)
                try:
                    url = self._migrator_url(bouncer.port)
                    run = self.pgbench(url, f"kit-{iterations}", connect_each=True,
                                       bouncer_pids=bouncer.pids)
                    pooled[iterations].append(run)
                    run_direct = self.pgbench(self.direct, f"direct-{iterations}",
                                              connect_each=True)
                    direct[iterations].append(run_direct)
                finally:
                    self.scratch.stop(bouncer)
                self.say(f"SCRAM {iterations:>4} iterations run {rep + 1}/{s.repeats}: pooled "
                         f"{_tps(run)}, direct {_tps(run_direct)}")  # fmt: skip
        return {
            "pooled": {str(n): _median_run(runs) for n, runs in pooled.items()},
            "direct": {str(n): _median_run(runs) for n, runs in direct.items()},
            "burst": self.burst_with_iterations(
                LOW_ITERATIONS if LOW_ITERATIONS in s.scram_iterations else min(s.scram_iterations)
            ),
        }

    def burst_with_iterations(self, iterations: int) -> dict[str, Any]:
        """The pooled burst again, through the kit's config with verifiers of ``iterations``."""
        s = self.settings
        spec = dataclasses.replace(s.burst, prepare=burst.prepare_from_env(self.env))
        stats = self.secrets.pgbouncer_stats
        runs = []
        for rep in range(s.repeats):
            bouncer = self.start_kit(iterations)
            try:
                urls = burst.Urls(
                    target=self._migrator_url(bouncer.port), direct=self.direct,
                    stats=postgres_url(stats.user, stats.password, "127.0.0.1", bouncer.port,
                                       "pgbouncer"),
                )  # fmt: skip
                result = burst.run_burst(urls, spec, label=f"pooled-{iterations}")
            finally:
                self.scratch.stop(bouncer)
            runs.append(result)
            self.say(f"burst pooled, {iterations} iterations run {rep + 1}/{s.repeats}: "
                     f"{result.ok} ok, {result.error_total} errors, p99 "
                     f"{result.latency_ms['p99']} ms")  # fmt: skip
            _settle()
        return {"iterations": iterations, **_median_burst(runs)}

    def reuseport(self, scram: dict[str, Any]) -> dict[str, Any]:
        """Connect storm through P PgBouncer processes sharing the port (so_reuseport)."""
        s = self.settings
        out: dict[str, Any] = {}
        for iterations in s.reuseport_iterations:
            runs: dict[int, list[PgbenchRun]] = {p: [] for p in s.reuseport_processes}
            for rep in range(s.repeats):
                for processes in s.reuseport_processes:
                    bouncer = self.start_kit(iterations, processes)
                    try:
                        run = self.pgbench(self._migrator_url(bouncer.port),
                                           f"reuseport-{iterations}-x{processes}",
                                           connect_each=True, bouncer_pids=bouncer.pids)
                    finally:
                        self.scratch.stop(bouncer)
                    runs[processes].append(run)
                    self.say(f"so_reuseport x{processes}, {iterations} iterations run "
                             f"{rep + 1}/{s.repeats}: {_tps(run)}")  # fmt: skip
            by_processes = {str(p): _median_run(r) for p, r in runs.items()}
            single = scram["pooled"].get(str(iterations))
            if single is not None:
                by_processes = {"1": single, **by_processes}
            out[str(iterations)] = by_processes
        return out


def _userlist(credential: stack_secrets.Credential, secrets: stack_secrets.Secrets) -> str:
    """The core's userlist renderer with the experiment's role in the app slot."""
    return render_userlist(dataclasses.replace(secrets, app=credential))


def _tps(run: PgbenchRun) -> str:
    if run.error:
        return f"error: {run.error}"
    return f"{run.tps:.0f} tps, latency {run.latency_ms} ms"


def _settle(seconds: float = 0.5) -> None:
    """Let closed connections' backends exit before the next arm samples pg_stat_activity."""
    time.sleep(seconds)


# --- summary ------------------------------------------------------------------------------------


def summarise(results: dict[str, Any], the_plan: Plan, app_user: str) -> dict[str, Any]:
    """Ratios pooled/direct and pooled/naive, and each goal of issue 6 with its figure."""
    storm, steady, bursts = results["connect_storm"], results["persistent"], results["burst"]
    pool = the_plan.pool
    ratios = {
        "connect_storm_pooled_vs_direct": ratio(storm["pooled"]["tps"], storm["direct"]["tps"]),
        "connect_storm_pooled_vs_naive": ratio(storm["pooled"]["tps"], storm["naive"]["tps"]),
        "persistent_pooled_vs_direct": ratio(steady["pooled"]["tps"], steady["direct"]["tps"]),
        "burst_throughput_pooled_vs_direct": ratio(bursts["pooled"]["throughput"],
                                                   bursts["direct"]["throughput"]),
        "burst_throughput_pooled_vs_naive": ratio(bursts["pooled"]["throughput"],
                                                  bursts["naive"]["throughput"]),
    }  # fmt: skip
    scram = results.get("scram", {})
    if scram:
        pooled, direct = scram["pooled"], scram["direct"]
        low = LOW_ITERATIONS if str(LOW_ITERATIONS) in pooled else min(int(n) for n in pooled)
        ratios[f"connect_storm_{low}_iterations_vs_{STOCK_ITERATIONS}"] = ratio(
            pooled[str(low)]["tps"], pooled[str(STOCK_ITERATIONS)]["tps"])
        ratios[f"connect_storm_pooled_vs_direct_both_{low}_iterations"] = ratio(
            pooled[str(low)]["tps"], direct[str(low)]["tps"])
        ratios[f"connect_storm_pooled_{low}_iterations_vs_naive"] = ratio(
            pooled[str(low)]["tps"], storm["naive"]["tps"])  # fmt: skip
    server_peak = max((r["peak_backends_of_user"] for r in bursts["pooled"]["runs"]
                       if r["peak_backends_of_user"] is not None), default=None)  # fmt: skip
    direct_errors = bursts["direct"]["errors"]
    goals = [
        _goal("connect storm: pooled >= 8x direct tps",
              ratios["connect_storm_pooled_vs_direct"], GOALS["connect_storm_vs_direct"]),
        _goal("connect storm: pooled >= 4x naive tps",
              ratios["connect_storm_pooled_vs_naive"], GOALS["connect_storm_vs_naive"]),
        _goal("persistent: pooled >= 0.9x direct tps",
              ratios["persistent_pooled_vs_direct"], GOALS["persistent_vs_direct"]),
        {"goal": "burst: pooled 0 errors", "figure": bursts["pooled"]["errors"],
         "met": bursts["pooled"]["errors"] == 0},
        {"goal": f"burst: pooled backends of {app_user} <= pool + reserve "
                 f"({pool.server_connections})",
         "figure": server_peak,
         "met": server_peak is not None and server_peak <= pool.server_connections},
        {"goal": "burst: pooled p99 <= 2000 ms", "figure": bursts["pooled"]["p99_ms"],
         "met": (bursts["pooled"]["p99_ms"] or 1e9) <= GOALS["burst_p99_ms"]},
        {"goal": "burst: direct shows the failure (errors > 0)", "figure": direct_errors,
         "met": bool(direct_errors)},
    ]  # fmt: skip
    return {"ratios": ratios, "goals": goals}


def _goal(text: str, figure: float | None, floor: float) -> dict[str, Any]:
    return {"goal": text, "figure": figure, "met": figure is not None and figure >= floor}


def report_lines(results: dict[str, Any]) -> list[str]:
    """The figures in a few lines for the terminal."""
    storm, steady, bursts = results["connect_storm"], results["persistent"], results["burst"]
    lines = ["connect storm (pgbench -C -S, 32 clients): tps "
             + ", ".join(f"{arm} {storm[arm]['tps']}" for arm in storm),
             "persistent (pgbench -S, 32 clients): tps "
             + ", ".join(f"{arm} {steady[arm]['tps']}" for arm in steady)]  # fmt: skip
    for arm, figures in bursts.items():
        kinds = ", ".join(f"{k} {v:.0f}" for k, v in figures["errors_by_kind"].items() if v)
        lines.append(f"burst {arm}: {figures['ok']} ok ({figures['throughput']}/s), errors "
                     f"{figures['errors']}{f' ({kinds})' if kinds else ''}, p50 "
                     f"{figures['p50_ms']} p99 {figures['p99_ms']} ms (warm p99 "
                     f"{figures['warm_p99_ms']}, connect p99 {figures['connect_p99_ms']}), "
                     "peak backends of its role "
                     f"{figures['peak_backends_of_user']}, PgBouncer clients "
                     f"{figures['peak_clients']} servers {figures['peak_servers']}")  # fmt: skip
    scram = results.get("scram")
    if scram:
        low = scram["burst"]
        lines.append(f"burst pooled with {low['iterations']}-iteration verifiers: {low['ok']} "
                     f"ok, errors {low['errors']}, p50 {low['p50_ms']} p99 {low['p99_ms']} ms "
                     f"(warm p99 {low['warm_p99_ms']}, connect p99 {low['connect_p99_ms']})")
        for n, figures in scram["pooled"].items():
            cpu = figures["cpu_ms_per_transaction"]
            lines.append(f"SCRAM {n:>4} iterations: pooled {figures['tps']} tps (CPU ms per "
                         f"connect: client {cpu['client']}, PgBouncer {cpu['pgbouncer']}, "
                         f"Postgres {cpu['postgres']}, other processes {cpu['other']}); direct "
                         f"{scram['direct'][n]['tps']} tps")  # fmt: skip
    for n, by_processes in results.get("reuseport", {}).items():
        lines.append(f"so_reuseport at {n} iterations: "
                     + ", ".join(f"{p} process(es) {f['tps']} tps"
                                 for p, f in by_processes.items()))  # fmt: skip
    for name, value in results["summary"]["ratios"].items():
        lines.append(f"ratio {name}: {value}")
    for goal in results["summary"]["goals"]:
        lines.append(f"{'MET ' if goal['met'] else 'MISS'} {goal['goal']}: {goal['figure']}")
    return lines


# --- entry point --------------------------------------------------------------------------------


def _relative(path: Path, root: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(root.resolve()))
    return str(path)


@contextlib.contextmanager
def _scratch_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="poolkit-bench-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(
    stack_file: Path,
    out: Path,
    project_root: Path,
    quick: bool,
    state_dir: Path | None = None,
    keep_up: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Bring up the bench stack, measure everything, write results.json (+ .png)."""
    from poolkit import local  # the runner imports rich; keep `poolkit burst` light
    from poolkit.plot import plot_results

    started = time.monotonic()
    settings = Settings.make(quick)
    stack = load_stack(stack_file, "bench")
    state_dir = state_dir or project_root / ".poolkit" / "bench"
    env_file = project_root / ".env.bench"
    runner = local.Runner(state_dir, local.Progress())
    was_running = runner.postgres_pid() is not None
    up = runner.up(stack, project_root, env_file)
    env = read_env(up.env_files[0])
    credentials = stack_secrets.load(runner.paths.secrets)
    if credentials is None:
        raise BenchError(f"no secrets in {runner.paths.secrets} after up")
    burst.raise_nofile(8192)
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    try:
        with _scratch_root() as root:
            user = local.service_user()
            scratch = ScratchBouncers(root, up.tools.pgbouncer, user)
            bench = Bench(
                stack=up.stack, plan=up.plan, env=env, secrets=credentials, settings=settings,
                pgbench_binary=up.tools.pgbin / "pgbench",
                bouncer_pid=lambda: [p for p in [local.read_pid(
                    runner.paths.run / "pgbouncer.pid", "pgbouncer")] if p],
                postmaster=runner.postgres_pid,
                scratch=scratch, superuser=user.name, say=say,
                naive_port=stack.pgbouncer.port + NAIVE_PORT_OFFSET,
                scratch_port=stack.pgbouncer.port + SCRATCH_PORT_OFFSET,
            )  # fmt: skip
            busy = [p for p in (bench.naive_port, bench.scratch_port) if local.port_in_use(p)]
            if busy:
                raise BenchError(f"port(s) {', '.join(map(str, busy))} on 127.0.0.1 are in use; "
                                 "the bench runs its naive and experimental PgBouncers there "
                                 "(the stack's PgBouncer port + 2 and + 3)")  # fmt: skip
            try:
                if pgbench_init(bench.pgbench_binary, bench.direct):
                    say(f"initialised pgbench tables (scale {PGBENCH_SCALE}) as the migrator")
                results |= bench.connect_storm_and_persistent()
                results["scram"] = bench.scram()
                results["reuseport"] = bench.reuseport(results["scram"])
            finally:
                scratch.stop_all()
                with contextlib.suppress(psycopg.Error):
                    set_verifier(bench.direct, credentials.migrator)
    finally:
        if not (keep_up or was_running):
            runner.down(purge=False)
    the_plan = up.plan
    pool = the_plan.pool
    results["summary"] = summarise(results, the_plan, up.stack.database.app_user)
    results["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": quick,
        "repeats": settings.repeats,
        "pgbench": {"clients": PGBENCH_CLIENTS, "threads": PGBENCH_THREADS,
                    "seconds": settings.pgbench_seconds, "scale": PGBENCH_SCALE,
                    "protocol": "simple"},
        "burst": dataclasses.asdict(settings.burst),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "postgres": up.tools.pg_version,
        "pgbouncer": up.tools.pgbouncer_version,
        "stack": {"file": _relative(stack_file, project_root), "pool_size": pool.pool_size,
                  "reserve": pool.reserve,
                  "max_db_connections": pool.server_connections,
                  "max_connections": pool.max_connections,
                  "max_client_conn": pool.max_client_conn,
                  "iterations_app": credentials.app.iterations},
        "naive": {"default_pool_size": 20, "max_client_conn": 100,
                  "iterations": STOCK_ITERATIONS, "processes": 1},
        "seconds": round(time.monotonic() - started, 1),
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    results["meta"]["plot"] = plot_results(results, out / "results.png")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results
