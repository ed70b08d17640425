"""Post-deploy smoke tests: prove a deployed environment from its ``.env`` file alone.

Works against any target (local processes, Docker): every figure is read through the URLs
in the file (Postgres via ``DIRECT_URL``, PgBouncer via ``POOLED_DATABASE_URL`` and its console
via ``PGBOUNCER_STATS_URL``), never from config files. Traffic goes only to those URLs' hosts;
every loop is bounded in count and in time.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from poolkit import console
from poolkit.envfile import parse_env, read_env
from poolkit.urls import mask

REQUIRED = ("DIRECT_URL", "POOLED_DATABASE_URL", "PGBOUNCER_STATS_URL",
            "PGBOUNCER_PREPARED_STATEMENTS")  # fmt: skip
CONNECT_TIMEOUT_S = 5
BURST_CLIENTS = 200
BURST_DEADLINE_S = 60.0
CLIENT_HEADROOM = 10
"""Client slots of PgBouncer the burst leaves to everything else (apps, this check's probes)."""
PREPARED_THREADS, PREPARED_QUERIES = 20, 10
NOTIFY_WAIT_S = 5.0
SAMPLE_EVERY_S = 0.01
GUC = "poolkit.smoke"
SESSION_STATE_ROUNDS = 8
"""Rounds of the session-state check with several PgBouncer processes: B reaches A's process
with probability 1 - (1 - 1/N)^holders per round (3 of 4 for 2 processes and 2 holders)."""


class SmokeInputError(ValueError):
    """The env file lacks a variable the smoke tests need."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    figure: str
    seconds: float

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.figure}"


@dataclass(frozen=True)
class Target:
    direct: str
    pooled: str
    stats: str
    prepared: bool
    processes: int = 1
    """PgBouncer processes sharing the pooled port; each holds max_db_connections servers."""

    @property
    def app_user(self) -> str:
        return str(conninfo_to_dict(self.pooled).get("user", ""))

    @property
    def database(self) -> str:
        return str(conninfo_to_dict(self.pooled).get("dbname", ""))

    def pooled_kwargs(self) -> dict[str, Any]:
        """The kit's client settings for the pooled URL (psycopg 3)."""
        kwargs: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S}
        if not self.prepared:
            kwargs["prepare_threshold"] = None
        return kwargs


def target_from(env: Mapping[str, str]) -> Target:
    missing = [key for key in REQUIRED if not env.get(key)]
    if missing:
        raise SmokeInputError(f"the env file lacks {', '.join(missing)}: use the file poolkit "
                              "wrote (.env.<stack>)")  # fmt: skip
    processes = env.get("PGBOUNCER_PROCESSES", "1").strip() or "1"
    if not processes.isdigit() or int(processes) < 1:
        raise SmokeInputError(f"PGBOUNCER_PROCESSES must be a whole number >= 1 (got "
                              f"{processes!r}): use the file poolkit wrote")  # fmt: skip
    return Target(env["DIRECT_URL"], env["POOLED_DATABASE_URL"], env["PGBOUNCER_STATS_URL"],
                  env["PGBOUNCER_PREPARED_STATEMENTS"].strip().lower() == "on",
                  int(processes))  # fmt: skip


def _direct(target: Target, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(target.direct, connect_timeout=CONNECT_TIMEOUT_S, **kwargs)


def _pooled(target: Target, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(target.pooled, **(target.pooled_kwargs() | kwargs))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


# --- direct URL -----------------------------------------------------------------------------


def check_direct_connect(target: Target) -> tuple[bool, str]:
    started = time.monotonic()
    with _direct(target) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        user = conn.info.user
    took = time.monotonic() - started
    return True, f"PostgreSQL {version[0] if version else '?'} as {user} in {_ms(took)}"


def check_direct_advisory_lock(target: Target) -> tuple[bool, str]:
    key = secrets.randbits(62)
    with _direct(target, autocommit=True) as holder, _direct(target, autocommit=True) as other:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            held = holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid = pg_backend_pid()"
            ).fetchone()
            refused = other.execute("SELECT NOT pg_try_advisory_lock(%s)", (key,)).fetchone()
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
    ok = bool(held and held[0] >= 1 and refused and refused[0])
    return ok, (
        "session lock held across 2 statements; another session was refused"
        if ok
        else f"lock held: {held and held[0]}, refused elsewhere: {refused}"
    )


def check_direct_listen_notify(target: Target) -> tuple[bool, str]:
    channel = f"poolkit_smoke_{secrets.token_hex(4)}"
    payload = secrets.token_hex(8)
    with _direct(target, autocommit=True) as listener, _direct(target, autocommit=True) as sender:
        listener.execute(f"LISTEN {channel}")
        started = time.monotonic()
        sender.execute("SELECT pg_notify(%s, %s)", (channel, payload))
        got = [n.payload for n in listener.notifies(timeout=NOTIFY_WAIT_S, stop_after=1)]
    took = time.monotonic() - started
    if got == [payload]:
        return True, f"LISTEN/NOTIFY delivered in {_ms(took)}"
    return False, f"no notification within {NOTIFY_WAIT_S:.0f} s (got {got})"


# --- pooled URL -----------------------------------------------------------------------------


def check_pooled_connect(target: Target) -> tuple[bool, str]:
    started = time.monotonic()
    with _pooled(target) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
        tls = " over TLS" if conn.pgconn.ssl_in_use else ""
    took = time.monotonic() - started
    return True, f"as {row[0]} to {row[1]} through PgBouncer{tls} in {_ms(took)}" if row else "?"


def check_pooled_transaction(target: Target) -> tuple[bool, str]:
    values = [secrets.randbelow(1000) for _ in range(3)]
    with _pooled(target) as conn, conn.transaction():
        conn.execute("CREATE TEMP TABLE poolkit_smoke (n int) ON COMMIT DROP")
        with conn.cursor() as cursor:
            cursor.executemany("INSERT INTO poolkit_smoke VALUES (%s)", [(v,) for v in values])
        row = conn.execute("SELECT count(*), sum(n) FROM poolkit_smoke").fetchone()
    ok = row is not None and (row[0], row[1]) == (3, sum(values))
    return ok, ("wrote 3 rows and read them back in one transaction" if ok
                else f"read back {row}, expected (3, {sum(values)})")  # fmt: skip


def check_pool_mode(target: Target) -> tuple[bool, str]:
    mode = console.config(target.stats).get("pool_mode", "?")
    return mode == "transaction", f"pool_mode = {mode} (SHOW CONFIG)"


def check_prepared_statements(target: Target) -> tuple[bool, str]:
    """Concurrent clients with the kit's client settings get exactly their own results.

    With PgBouncer's prepared-statement support (``on``), psycopg prepares every statement
    (``prepare_threshold=0``); without it (``off``), the kit's ``prepare_threshold=None``.
    """
    kwargs = {"prepare_threshold": 0} if target.prepared else {}
    errors: list[str] = []
    wrong = 0
    deadline = time.monotonic() + 30

    def worker(seed: int) -> int:
        bad = 0
        with _pooled(target, autocommit=True, **kwargs) as conn:
            for i in range(PREPARED_QUERIES):
                if time.monotonic() > deadline:
                    raise TimeoutError("prepared-statement check ran out of time")
                value = seed * 1000 + i
                row = conn.execute("SELECT %s::int + 7", (value,)).fetchone()
                bad += row is None or row[0] != value + 7
        return bad

    with ThreadPoolExecutor(PREPARED_THREADS) as pool:
        futures = [pool.submit(worker, seed) for seed in range(PREPARED_THREADS)]
        done, _ = wait(futures, timeout=40)
    for future in futures:
        if future not in done:
            errors.append("timeout")
        elif future.exception():
            errors.append(type(future.exception()).__name__)
        else:
            wrong += future.result()
    total = PREPARED_THREADS * PREPARED_QUERIES
    good = total - wrong - len(errors) * PREPARED_QUERIES
    setting = (
        "prepare_threshold=0 (PgBouncer tracks prepared statements)"
        if target.prepared
        else "prepare_threshold=None (PgBouncer without prepared-statement support)"
    )
    ok = not errors and not wrong
    detail = "" if ok else f"; {wrong} wrong results, errors: {', '.join(sorted(set(errors)))}"
    clients = f"{PREPARED_THREADS} concurrent clients"
    return ok, f"{good}/{total} correct from {clients} with {setting}{detail}"


def check_session_state(target: Target) -> tuple[bool, str]:
    """SET sticks on the direct URL; on the pooled URL it does not (and leaks to others).

    Client A sets a session variable, then client B opens a transaction, which PgBouncer
    serves with the server A just released. A's next statement must run on another server,
    where its SET is absent. B clears what it inherited before committing. With several
    PgBouncer processes, B lands on A's process by chance: each round takes at most one
    process's pool (so no B waits for a server), and a round repeats until B got A's server.
    """
    token = secrets.token_hex(6)
    with _direct(target, autocommit=True) as direct:
        direct.execute("SELECT set_config(%s, %s, false)", (GUC, token))
        row = direct.execute("SELECT current_setting(%s, true)", (GUC,)).fetchone()
        direct.execute("SELECT set_config(%s, '', false)", (GUC,))
    direct_kept = bool(row and row[0] == token)

    holders_per_round = min(3, int(console.config(target.stats)["default_pool_size"]))
    for _ in range(SESSION_STATE_ROUNDS if target.processes > 1 else 1):
        a_server, after, inherited = _session_state_round(target, token, holders_per_round)
        pooled_lost = bool(after and after[0] != a_server and after[1] != token)
        if pooled_lost:
            break
    figure = (f"SET kept on DIRECT_URL: {'yes' if direct_kept else 'NO'}; on POOLED_DATABASE_URL "
              f"the next statement ran on backend {after and after[0]} (SET on {a_server}): "
              f"{'value gone' if pooled_lost else 'value still there'}"
              f"{'; another client inherited it' if inherited else ''}")  # fmt: skip
    return direct_kept and pooled_lost, figure


def _session_state_round(
    target: Target, token: str, holders: int
) -> tuple[Any, Any, bool]:
    """A's SET, B's transactions until one holds A's server: (A's server, A's next row,
    whether B saw A's value)."""
    with _pooled(target, autocommit=True) as client_a:
        set_row = client_a.execute("SELECT pg_backend_pid() FROM set_config(%s, %s, false)",
                                   (GUC, token)).fetchone()  # fmt: skip
        a_server = set_row[0] if set_row else None
        taken: list[psycopg.Connection[Any]] = []
        inherited = False
        try:
            for _ in range(holders):  # B: take servers until A's is held (LIFO: the first)
                holder = _pooled(target)
                taken.append(holder)
                got = holder.execute("SELECT pg_backend_pid(), current_setting(%s, true)",
                                     (GUC,)).fetchone()  # fmt: skip
                if got and got[0] == a_server:
                    inherited = got[1] == token
                    holder.execute("SELECT set_config(%s, '', false)", (GUC,))
                    break
            after = client_a.execute("SELECT pg_backend_pid(), current_setting(%s, true)",
                                     (GUC,)).fetchone()  # fmt: skip
            if after and after[0] == a_server:  # A kept its server: clear the value it set
                client_a.execute("SELECT set_config(%s, '', false)", (GUC,))
        finally:
            for holder in taken:
                holder.commit()
                holder.close()
    return a_server, after, inherited


def check_burst(target: Target, clients: int = BURST_CLIENTS) -> tuple[bool, str]:
    """Short-lived clients at once; sample the app role's backends from pg_stat_activity."""
    # Every process holds at most its max_db_connections; the console answers for one of them.
    cap_db = console.max_db_connections(target.stats, target.database) * target.processes
    settings = console.config(target.stats)
    max_clients = int(settings.get("max_client_conn", "0") or 0)
    in_use = len(console.show(target.stats, "CLIENTS"))
    concurrency = min(clients, max(1, max_clients - in_use - CLIENT_HEADROOM))
    gate = threading.Semaphore(concurrency)
    stop = threading.Event()
    peak = 0
    samples = 0
    deadline = time.monotonic() + BURST_DEADLINE_S

    def sampler() -> None:
        nonlocal peak, samples
        with _direct(target, autocommit=True) as conn:
            while not stop.is_set() and time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND datname = %s",
                    (target.app_user, target.database),
                ).fetchone()
                peak = max(peak, row[0] if row else 0)
                samples += 1
                time.sleep(SAMPLE_EVERY_S)

    def client(i: int) -> None:
        with gate:
            if time.monotonic() > deadline:
                raise TimeoutError("burst deadline passed")
            with _pooled(target) as conn, conn.transaction():
                row = conn.execute("SELECT %s::int FROM pg_sleep(0.01)", (i,)).fetchone()
                if not row or row[0] != i:
                    raise AssertionError(f"client {i} read {row}")

    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, i) for i in range(clients)]
        done, _ = wait(futures, timeout=BURST_DEADLINE_S + 5)
    took = time.monotonic() - started
    stop.set()
    watcher.join(timeout=5)
    failures = [f for f in futures if f not in done or f.exception()]
    kinds = sorted({type(f.exception()).__name__ if f in done else "Timeout" for f in failures})
    at_once = f"{concurrency} at once" + (
        f" (PgBouncer max_client_conn {max_clients}, {in_use} in use)"
        if concurrency < clients else "")  # fmt: skip
    ok = not failures and samples > 0 and (cap_db == 0 or peak <= cap_db)
    figure = (f"{clients} clients, {at_once}, {len(failures)} errors"
              f"{' (' + ', '.join(kinds) + ')' if kinds else ''} in {took:.1f} s; "
              f"peak {peak} backends of {target.app_user} <= max_db_connections {cap_db}"
              f"{f' ({target.processes} processes)' if target.processes > 1 else ''} "
              f"({samples} samples)")  # fmt: skip
    if cap_db and peak > cap_db:
        figure = figure.replace(" <= ", " > ")
    return ok, figure


CHECKS: tuple[tuple[str, Callable[[Target], tuple[bool, str]]], ...] = (
    ("direct.connect", check_direct_connect),
    ("direct.advisory_lock", check_direct_advisory_lock),
    ("direct.listen_notify", check_direct_listen_notify),
    ("pooled.connect", check_pooled_connect),
    ("pooled.transaction", check_pooled_transaction),
    ("pooled.pool_mode", check_pool_mode),
    ("pooled.prepared_statements", check_prepared_statements),
    ("pooled.session_state", check_session_state),
    ("pooled.burst", check_burst),
)


def run(env: Mapping[str, str], on_check: Callable[[Check], None] | None = None) -> list[Check]:
    """Every check, in order; a check that raises fails with the error's first line (masked)."""
    target = target_from(env)
    results = []
    for name, function in CHECKS:
        started = time.monotonic()
        try:
            ok, figure = function(target)
        except Exception as error:
            first = (str(error).strip().splitlines() or [""])[0]
            ok, figure = False, f"{type(error).__name__}: {mask(first)}"
        check = Check(name, ok, mask(figure), round(time.monotonic() - started, 3))
        results.append(check)
        if on_check:
            on_check(check)
    return results


def run_file(path: Path, on_check: Callable[[Check], None] | None = None) -> list[Check]:
    return run(read_env(path), on_check)


def as_json(path: Path, checks: list[Check], seconds: float) -> dict[str, Any]:
    return {"env_file": str(path), "ok": all(c.ok for c in checks), "seconds": round(seconds, 3),
            "checks": [asdict(c) for c in checks]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python3 -m poolkit.smoke ENV_FILE|-``: each check as one JSON line; exit 1 if any failed.

    Needs only psycopg and python-dotenv, not the CLI: ``poolkit up --target pulumi`` runs it in
    a one-off container on the stack's network when Postgres is not published to the host,
    with the ``.env`` on stdin (``-``), so no file in that container holds a password.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python3 -m poolkit.smoke ENV_FILE|-", file=sys.stderr)
        return 2
    env = parse_env(sys.stdin.read()) if args[0] == "-" else read_env(Path(args[0]))
    checks = run(env, lambda check: print(json.dumps(asdict(check)), flush=True))
    return 0 if all(check.ok for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
