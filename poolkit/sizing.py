"""Sizing: Postgres tuning and the pool plan, derived together from one stack config.

Pure functions. Every number carries a one-line reason that ``poolkit plan`` prints and the
rendered files carry as a comment above the line.

Postgres memory and planner settings follow pgtune's reasoning (https://pgtune.leopard.in.ua,
github.com/le0pard/pgtune): shared_buffers a quarter of RAM, effective_cache_size three
quarters, work_mem spread over the connections that can run queries at once. Where pgtune must
assume ``max_connections`` backends, poolkit knows the bound: PgBouncer's ``max_db_connections``
plus the direct-URL headroom, rounded up as the derived ``max_connections`` is, so work_mem is
sized from that instead and a pool resize within the step leaves postgresql.conf unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from poolkit.config import NAMESPACE, ConfigError, Problem, StackConfig
from poolkit.split import Split, client_slots, default_processes, split_budget
from poolkit.units import GIB, KIB, MIB, format_kb

SUPERUSER_RESERVED = 3
DIRECT_HEADROOM = 10
"""Backends kept for the direct URL: migrations, LISTEN/NOTIFY listeners, monitoring, smoke."""
CLIENT_HEADROOM = 1.5
MIN_MAX_CLIENT_CONN = 300
"""Client slots are cheap at PgBouncer (a few kB each); room for a 200-client smoke burst."""
MAX_CONNECTIONS_STEP = 25
"""Derived max_connections is rounded up to this, so a pool resize needs no Postgres restart."""
PREPARED_STATEMENTS_DEFAULT = 200
PREPARED_STATEMENTS_SINCE = (1, 21)

# Scale of Prisma's "physical CPUs x 2 + 1" pool per workload.
POOL_FACTOR = {"web": 1.0, "oltp": 1.5, "mixed": 1.0, "dw": 0.5, "desktop": 0.5}
# pgtune's divisor of work_mem per workload (more concurrent sorts/hashes per query -> less each).
WORK_MEM_DIVISOR = {"web": 1, "oltp": 1, "mixed": 2, "dw": 2, "desktop": 6}
WAL_SIZES = {  # pgtune's min_wal_size / max_wal_size per workload, in kB
    "web": (1 * GIB // KIB, 4 * GIB // KIB),
    "oltp": (2 * GIB // KIB, 8 * GIB // KIB),
    "mixed": (1 * GIB // KIB, 4 * GIB // KIB),
    "dw": (4 * GIB // KIB, 16 * GIB // KIB),
    "desktop": (100 * MIB // KIB, 2 * GIB // KIB),
}
IO_CONCURRENCY = {"hdd": 2, "ssd": 200, "san": 300, "nvme": 1000}
PAGE_KB = 8
"""PostgreSQL counts shared_buffers, effective_cache_size and wal_buffers in 8kB pages."""


@dataclass(frozen=True)
class Setting:
    """One configuration line: the value as the server reads it, and why."""

    name: str
    value: str
    why: str


@dataclass(frozen=True)
class AppPlan:
    name: str
    style: str
    instances: int
    connection_limit: int
    pool_timeout: int
    replicas: int
    port: int
    runtime: str = "python"


@dataclass(frozen=True)
class PoolPlan:
    """The numbers that bound connections end to end.

    ``pool_size``, ``reserve``, ``server_connections`` and ``max_client_conn`` are the whole
    pooler's (every process of every replica); ``split`` holds one process's share.
    """

    pool_size: int
    reserve: int
    server_connections: int
    """The server budget: pool + reserve, what Postgres may see from the whole pooler."""
    max_connections: int
    max_client_conn: int
    client_demand: int
    prepared_statements: int
    pool_timeout: int
    """Prisma's wait for a connection, below PgBouncer's query_wait_timeout."""
    split: Split
    processes_why: str = ""


@dataclass(frozen=True)
class Plan:
    postgres: tuple[Setting, ...]
    pgbouncer: tuple[Setting, ...]
    apps: tuple[AppPlan, ...]
    pool: PoolPlan

    @property
    def prepared_statements(self) -> bool:
        """Whether clients may use protocol-level prepared statements through PgBouncer."""
        return self.pool.prepared_statements > 0

    def postgres_value(self, name: str) -> str:
        return _lookup(self.postgres, name)

    def pgbouncer_value(self, name: str) -> str:
        return _lookup(self.pgbouncer, name)

    def app(self, name: str) -> AppPlan:
        return next(a for a in self.apps if a.name == name)

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of ``poolkit plan --json``."""
        why = {f"postgres.{s.name}": s.why for s in self.postgres}
        why |= {f"pgbouncer.{s.name}": s.why for s in self.pgbouncer}
        apps: dict[str, Any] = {}
        for app in self.apps:
            apps[app.name] = {
                "style": app.style,
                "runtime": app.runtime,
                "instances": app.instances,
                "connection_limit": app.connection_limit,
                "pool_timeout": app.pool_timeout,
                "replicas": app.replicas,
                "port": app.port,
            }
            why[f"apps.{app.name}.connection_limit"] = _connection_limit_why(self.pool, app)
        split = self.pool.split
        why["pgbouncer.processes"] = self.pool.processes_why
        why["pgbouncer.split"] = split.why(self.pool.pool_size, self.pool.reserve)
        return {
            "postgres": {"settings": {s.name: s.value for s in self.postgres}},
            "pgbouncer": {
                "settings": {s.name: s.value for s in self.pgbouncer},
                "processes": split.processes,
                "replicas": split.replicas,
                "budget": split.budget,
                "servers": split.servers,
                "max_client_conn_total": self.pool.max_client_conn,
            },
            "apps": apps,
            "why": why,
        }


def _lookup(settings: tuple[Setting, ...], name: str) -> str:
    for setting in settings:
        if setting.name == name:
            return setting.value
    raise KeyError(name)


def _connection_limit_why(pool: PoolPlan, app: AppPlan) -> str:
    split = pool.split
    servers = (f"{pool.pool_size} servers" if split.instances == 1 else
               f"{split.pooled_servers} pooled servers ({split.instances} processes x "
               f"{split.pool_size})")  # fmt: skip
    return (
        f"{app.connection_limit} per instance: {app.instances} instances x {app.connection_limit} "
        f"= {app.instances * app.connection_limit} client connections, within "
        f"max_client_conn {pool.max_client_conn}; PgBouncer maps them onto {servers}"
    )


# --- pool plan ---------------------------------------------------------------------------------


def _rounded_connections(server_connections: int) -> int:
    """PgBouncer's servers, the superuser slots and the direct-URL headroom, rounded up to a
    multiple of MAX_CONNECTIONS_STEP: the derived max_connections, and the backend bound that
    sizes work_mem. Both stay put while a pool resize stays within the step."""
    needed = server_connections + SUPERUSER_RESERVED + DIRECT_HEADROOM
    return MAX_CONNECTIONS_STEP * math.ceil(needed / MAX_CONNECTIONS_STEP)


def _pool_plan(stack: StackConfig, problems: list[Problem]) -> tuple[PoolPlan, tuple[AppPlan, ...]]:
    pg, bouncer = stack.postgres, stack.pgbouncer
    ns = NAMESPACE
    pool = bouncer.default_pool_size or max(
        2, math.ceil((pg.cpus * 2 + 1) * POOL_FACTOR[pg.workload])
    )
    reserve = (
        bouncer.reserve_pool_size
        if bouncer.reserve_pool_size is not None
        else max(1, math.ceil(pool / 4))
    )
    server_connections = pool + reserve
    needed = server_connections + SUPERUSER_RESERVED + DIRECT_HEADROOM
    max_connections = pg.max_connections or _rounded_connections(server_connections)
    if pg.external:
        max_connections = pg.external.max_connections or needed
        if max_connections < needed:
            problems.append(Problem(
                f"{ns}:postgres.external.max_connections", pg.external.max_connections,
                f"is below what the plan needs from the server: {server_connections} server "
                f"connections for PgBouncer (pool {pool} + reserve {reserve}) + "
                f"{SUPERUSER_RESERVED} superuser slots + {DIRECT_HEADROOM} for the direct URL "
                f"= {needed}",
                "lower poolkit:pgbouncer.default_pool_size (or postgres.cpus, which sizes it), "
                "or move to a server with a higher max_connections",
            ))  # fmt: skip
    elif max_connections < server_connections + SUPERUSER_RESERVED + 2:
        problems.append(Problem(
            f"{ns}:postgres.max_connections", pg.max_connections,
            f"cannot hold PgBouncer's {server_connections} server connections "
            f"(pool {pool} + reserve {reserve}) plus {SUPERUSER_RESERVED} superuser slots "
            "and 2 for the direct URL",
            f"raise it to at least {needed}, or lower poolkit:pgbouncer.default_pool_size",
        ))  # fmt: skip

    split, processes_why = _split(stack, pool, reserve, problems)

    total_instances = sum(app.instances for app in stack.apps) or 1
    pool_timeout = max(1, bouncer.query_wait_timeout * 2 // 3)
    apps = tuple(
        AppPlan(
            name=app.name,
            style=app.style,
            instances=app.instances,
            connection_limit=app.connection_limit
            or max(1, split.pooled_servers // total_instances),
            pool_timeout=pool_timeout,
            replicas=app.replicas,
            port=app.port,
            runtime=app.runtime,
        )
        for app in stack.apps
    )
    demand = sum(app.instances * app.connection_limit for app in apps)
    derived_clients = 50 * math.ceil(max(MIN_MAX_CLIENT_CONN, demand * CLIENT_HEADROOM) / 50)
    max_client_conn = bouncer.max_client_conn or derived_clients
    if demand > max_client_conn:
        problems.append(Problem(
            f"{ns}:pgbouncer.max_client_conn", bouncer.max_client_conn,
            f"is below the apps' peak demand of {demand} client connections "
            "(sum of instances x connection_limit)",
            f"raise it to at least {demand} or remove it to derive {derived_clients}, "
            "or lower the apps' connection_limit",
        ))  # fmt: skip

    if bouncer.version_tuple >= PREPARED_STATEMENTS_SINCE:
        prepared = (
            bouncer.max_prepared_statements
            if bouncer.max_prepared_statements is not None
            else PREPARED_STATEMENTS_DEFAULT
        )
    else:
        prepared = 0
    plan = PoolPlan(
        pool_size=pool,
        reserve=reserve,
        server_connections=server_connections,
        max_connections=max_connections,
        max_client_conn=max_client_conn,
        client_demand=demand,
        prepared_statements=prepared,
        pool_timeout=pool_timeout,
        split=split,
        processes_why=processes_why,
    )
    return plan, apps


def _split(
    stack: StackConfig, pool: int, reserve: int, problems: list[Problem]
) -> tuple[Split, str]:
    """The per-process share of the budget; a problem when a process would get no server."""
    bouncer, ns = stack.pgbouncer, NAMESPACE
    replicas = bouncer.replicas
    if bouncer.processes is not None:
        processes, why = bouncer.processes, "set in the stack file"
    else:
        derived = default_processes(stack.postgres.cpus, bouncer.version_tuple,
                                    pool + reserve, replicas)  # fmt: skip
        processes, why = derived.processes, derived.why
    split = split_budget(pool, reserve, processes, replicas)
    if split is None:
        problems.append(Problem(
            f"{ns}:pgbouncer.processes", processes,
            f"x {replicas} replicas = {processes * replicas} PgBouncer processes cannot share "
            f"a budget of {pool + reserve} server connections (pool {pool} + reserve {reserve}): "
            "each needs at least one",
            f"lower poolkit:pgbouncer.processes or poolkit:pgbouncer.replicas, or raise "
            f"poolkit:pgbouncer.default_pool_size to at least {processes * replicas}",
        ))  # fmt: skip
        split = Split(processes, replicas, pool + reserve, pool, reserve)
    return split, why


def _pgbouncer_settings(stack: StackConfig, pool: PoolPlan) -> tuple[Setting, ...]:
    """One process's settings: every process of every replica runs the same numbers."""
    bouncer, pg = stack.pgbouncer, stack.postgres
    split = pool.split
    pool_why = (f"{pg.cpus} CPUs x 2 + 1 (Prisma's pool guidance), x{POOL_FACTOR[pg.workload]} "
                f"for a {pg.workload} workload, rounded up, at least 2"
                if not bouncer.default_pool_size else "set in the stack file")  # fmt: skip
    reserve_why = ("a quarter of the pool, lent for short spikes after reserve_pool_timeout"
                   if bouncer.reserve_pool_size is None else "set in the stack file")  # fmt: skip
    clients_why = (f"apps' peak demand {pool.client_demand} (instances x connection_limit) "
                   f"x {CLIENT_HEADROOM}, at least {MIN_MAX_CLIENT_CONN} (client slots are "
                   "cheap), rounded up to 50"
                   if not bouncer.max_client_conn else "set in the stack file")  # fmt: skip
    if split.instances > 1:
        share = (f"this process's share of the budget: {split.why(pool.pool_size, pool.reserve)}")
        pool_why = f"{split.pool_size} of the pool of {pool.pool_size} ({pool_why}); {share}"
        reserve_why = f"{split.reserve} of the reserve of {pool.reserve} ({reserve_why}); {share}"
        clients_why = (f"{pool.max_client_conn} for the whole pooler ({clients_why}) over the "
                       f"{split.serving} processes that serve while one per host restarts, at "
                       f"least {MIN_MAX_CLIENT_CONN}, rounded up to 50")  # fmt: skip
    per_process_clients = (pool.max_client_conn if split.instances == 1 else
                           client_slots(pool.max_client_conn, split, MIN_MAX_CLIENT_CONN, 1.0))
    settings = [
        Setting("pool_mode", bouncer.pool_mode,
                "a server is held only for the length of a transaction, so many short-lived "
                "serverless clients share few Postgres backends"
                if bouncer.pool_mode == "transaction" else
                "session mode: one server per client session (chosen in the stack file)"),
        Setting("default_pool_size", str(split.pool_size), pool_why),
        Setting("reserve_pool_size", str(split.reserve), reserve_why),
        Setting("reserve_pool_timeout", "3",
                "seconds a client waits before the reserve pool is used"),
        Setting("max_db_connections", str(split.max_db_connections),
                f"hard guard: pool {pool.pool_size} + reserve {pool.reserve}; Postgres never "
                "sees more backends from PgBouncer than this"
                if split.instances == 1 else
                f"hard guard: {split.pool_size} + {split.reserve} per process; "
                f"{split.instances} processes x {split.max_db_connections} = {split.servers}, "
                f"within the budget of {split.budget}"),
        Setting("max_client_conn", str(per_process_clients), clients_why),
        Setting("query_wait_timeout", str(bouncer.query_wait_timeout),
                "a client waiting this long for a server gets an error instead of hanging; "
                "Prisma's pool_timeout is set below it"),
        Setting("idle_transaction_timeout", str(bouncer.idle_transaction_timeout),
                "a paused (zombie) instance cannot hold a server inside an open transaction "
                "for longer than this"),
        Setting("server_login_retry", "1",
                "after a Postgres restart or crash PgBouncer logs in again within a second, "
                "not after the default 15"),
        Setting("server_idle_timeout", "60",
                "idle backends are closed after a minute, so a burst's servers do not linger"),
        Setting("ignore_startup_parameters", "extra_float_digits",
                "JDBC and Prisma send it at connect; PgBouncer would otherwise refuse them"),
    ]  # fmt: skip
    if bouncer.version_tuple >= PREPARED_STATEMENTS_SINCE:
        settings.append(Setting(
            "max_prepared_statements", str(pool.prepared_statements),
            "PgBouncer 1.21+ tracks protocol-level prepared statements per server, so drivers "
            "keep their default prepares in transaction mode"
            if pool.prepared_statements else "prepared statements switched off in the stack file",
        ))  # fmt: skip
    return tuple(settings)


# --- Postgres tuning ---------------------------------------------------------------------------


def _whole_pages(kilobytes: int) -> int:
    """Round down to whole 8kB pages, or the server rounds the value itself."""
    return kilobytes - kilobytes % PAGE_KB


def _external_settings(stack: StackConfig, pool: PoolPlan) -> tuple[Setting, ...]:
    """An external server keeps its own tuning; the plan only states what it needs of it."""
    external = stack.postgres.external
    assert external is not None
    needed = pool.server_connections + SUPERUSER_RESERVED + DIRECT_HEADROOM
    why = (f"the server's (declared in the stack file); the plan needs {needed}: "
           if external.max_connections else
           "not known yet: read from the server (SHOW max_connections) and checked before "
           f"anything is created; the plan needs {needed}: ")  # fmt: skip
    return (Setting("max_connections", str(pool.max_connections),
                    why + f"PgBouncer's {pool.server_connections} servers + "
                    f"{SUPERUSER_RESERVED} reserved + {DIRECT_HEADROOM} for the direct URL"),)


def _postgres_settings(stack: StackConfig, pool: PoolPlan) -> tuple[Setting, ...]:
    pg = stack.postgres
    if pg.external:
        return _external_settings(stack, pool)
    mem_kb = pg.memory_bytes // KIB
    desktop = pg.workload == "desktop"
    shared_kb = _whole_pages(mem_kb // 16 if desktop else mem_kb // 4)
    cache_kb = _whole_pages(mem_kb // 4 if desktop else mem_kb * 3 // 4)
    maintenance_kb = min(mem_kb // (8 if pg.workload == "dw" else 16), 2 * GIB // KIB)
    wal_kb = shared_kb * 3 // 100
    wal_kb = 16 * 1024 if wal_kb > 14 * 1024 else max(32, _whole_pages(wal_kb))
    parallel = pg.cpus >= 4
    per_gather = math.ceil(pg.cpus / 2) if parallel else 1
    if pg.workload != "dw":
        per_gather = min(per_gather, 4)
    query_backends = min(_rounded_connections(pool.server_connections),
                         pool.max_connections) - SUPERUSER_RESERVED  # fmt: skip
    work_mem_kb = max(
        64,
        (mem_kb - shared_kb)
        // (query_backends * 3)
        // per_gather
        // WORK_MEM_DIVISOR[pg.workload],
    )
    min_wal, max_wal = WAL_SIZES[pg.workload]
    mem = format_kb(mem_kb)

    settings = [
        Setting("max_connections", str(pool.max_connections),
                f"PgBouncer's servers + {SUPERUSER_RESERVED} superuser slots + "
                f"{DIRECT_HEADROOM} for the direct URL (migrations, listeners, monitoring), "
                f"rounded up to a multiple of {MAX_CONNECTIONS_STEP}: room for up to "
                f"{pool.max_connections - SUPERUSER_RESERVED - DIRECT_HEADROOM} servers, so a "
                "pool resize within it is a PgBouncer reload, not a Postgres restart"
                if not pg.max_connections else "set in the stack file"),
        Setting("superuser_reserved_connections", str(SUPERUSER_RESERVED),
                "slots an administrator can still use when the rest are full"),
        Setting("shared_buffers", format_kb(shared_kb),
                f"pgtune: {'1/16' if desktop else '1/4'} of {mem} RAM"),
        Setting("effective_cache_size", format_kb(cache_kb),
                f"pgtune: {'1/4' if desktop else '3/4'} of {mem} RAM is likely cached by the OS"),
        Setting("maintenance_work_mem", format_kb(maintenance_kb),
                f"pgtune: RAM/{8 if pg.workload == 'dw' else 16}, at most 2GB"),
        Setting("work_mem", format_kb(work_mem_kb),
                f"pgtune: (RAM - shared_buffers) / ({query_backends} query backends x 3) / "
                f"{per_gather} workers per gather / {WORK_MEM_DIVISOR[pg.workload]}; "
                f"{query_backends} is PgBouncer's servers plus the direct-URL headroom, rounded "
                f"up to the multiple of {MAX_CONNECTIONS_STEP} that max_connections uses, so a "
                "pool resize leaves postgresql.conf as it is"),
        Setting("wal_buffers", format_kb(wal_kb),
                "pgtune: 3% of shared_buffers, between 32kB and 16MB, in whole 8kB pages"),
        Setting("min_wal_size", format_kb(min_wal),
                f"pgtune's value for a {pg.workload} workload"),
        Setting("max_wal_size", format_kb(max_wal),
                f"pgtune's value for a {pg.workload} workload: fewer forced checkpoints"),
        Setting("checkpoint_completion_target", "0.9",
                "spread checkpoint writes over 90% of the interval"),
        Setting("default_statistics_target", "500" if pg.workload == "dw" else "100",
                "pgtune: richer statistics for analytical plans"
                if pg.workload == "dw" else "pgtune: PostgreSQL's default suits short queries"),
        Setting("random_page_cost", "4" if pg.storage == "hdd" else "1.1",
                f"{pg.storage}: random reads cost about as much as sequential ones"
                if pg.storage != "hdd" else "hdd: random reads are 4x sequential ones"),
        Setting("effective_io_concurrency", str(IO_CONCURRENCY[pg.storage]),
                f"pgtune: concurrent I/O requests a {pg.storage} device serves well"),
        Setting("huge_pages", "try" if pg.memory_bytes >= 32 * GIB else "off",
                "pgtune: huge pages pay off from 32GB of RAM" if pg.memory_bytes >= 32 * GIB
                else "pgtune: below 32GB of RAM huge pages do not pay off"),
        Setting("jit", "off" if pg.workload in ("web", "oltp") else "on",
                "JIT compile time exceeds the run time of short queries"
                if pg.workload in ("web", "oltp") else "long analytical queries gain from JIT"),
        Setting("tcp_keepalives_idle", "60",
                "find dead direct-URL clients (frozen serverless instances) within minutes"),
    ]  # fmt: skip
    if parallel:
        settings += [
            Setting("max_worker_processes", str(pg.cpus), f"pgtune: one per CPU ({pg.cpus})"),
            Setting("max_parallel_workers_per_gather", str(per_gather),
                    "pgtune: half the CPUs" + ("" if pg.workload == "dw" else ", at most 4")),
            Setting("max_parallel_workers", str(pg.cpus), f"pgtune: one per CPU ({pg.cpus})"),
            Setting("max_parallel_maintenance_workers", str(min(4, math.ceil(pg.cpus / 2))),
                    "pgtune: half the CPUs, at most 4"),
        ]  # fmt: skip
    return tuple(settings)


def plan(stack: StackConfig) -> Plan:
    """Size Postgres and PgBouncer for ``stack``; raise ConfigError for an impossible plan."""
    problems: list[Problem] = []
    pool, apps = _pool_plan(stack, problems)
    if problems:
        raise ConfigError(problems)
    return Plan(
        postgres=_postgres_settings(stack, pool),
        pgbouncer=_pgbouncer_settings(stack, pool),
        apps=apps,
        pool=pool,
    )
