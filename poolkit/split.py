"""One server budget split over several PgBouncer processes and pooler replicas.

Pure. PgBouncer is single-threaded: one process is the ceiling of a pooler host, so a stack may
run ``processes`` PgBouncer processes per host (sharing the port with ``so_reuseport``, peered
so a cancel reaches the process that owns the query) on ``replicas`` hosts. Postgres does not
care how many poolers there are: the budget of server connections (pool + reserve) is the
plan's, and the processes share it. Every process of every replica gets the same share, so one
rendered file serves every replica (a Kubernetes Deployment's ConfigMap, a fleet's hosts):

    max_db_connections per process = floor(budget / (processes x replicas))

The remainder of that division stays unused: the sum over all processes never exceeds the
budget. Client slots are sized so that the apps' peak still fits while one process of each host
is down for a rolling restart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PEERING_SINCE = (1, 19)
"""PgBouncer version that has ``peer_id`` and ``[peers]`` (cancel forwarding between processes)."""
MAX_DEFAULT_PROCESSES = 8
MIN_SERVERS_PER_DEFAULT_PROCESS = 3
"""A derived process count keeps at least this many server connections per process, so a pool
split across processes does not leave each with one server that a slow query blocks."""
CPUS_PER_PROCESS = 4
"""Suggested count: one process per 4 CPUs beyond the first two."""


@dataclass(frozen=True)
class ProcessCount:
    processes: int
    why: str


def suggested_processes(
    cpus: int, pgbouncer_version: tuple[int, int], budget: int, replicas: int
) -> ProcessCount:
    """How many PgBouncer processes a pooler host with ``cpus`` could use.

    Two processes from 2 CPUs up, one more per 4 further CPUs, at most 8; one process where
    PgBouncer cannot peer (a cancel could land on a process that does not own the query), where
    the host has one CPU, or where the budget is too small to split.
    """
    if pgbouncer_version < PEERING_SINCE:
        return ProcessCount(1, f"PgBouncer {pgbouncer_version[0]}.{pgbouncer_version[1]} cannot "
                               "peer processes (peer_id needs 1.19), so one process")  # fmt: skip
    if cpus < 2:
        return ProcessCount(1, "1 CPU: a second process would only compete with Postgres")
    wanted = min(MAX_DEFAULT_PROCESSES, 2 + (cpus - 2) // CPUS_PER_PROCESS)
    fits = max(1, budget // (replicas * MIN_SERVERS_PER_DEFAULT_PROCESS))
    processes = min(wanted, fits)
    why = (f"{cpus} CPUs: 2 processes from 2 CPUs, one more per {CPUS_PER_PROCESS} further CPUs, "
           f"at most {MAX_DEFAULT_PROCESSES} (one process is single-threaded and caps a host)")
    if processes < wanted:
        why += (f"; capped at {processes} so each keeps at least "
                f"{MIN_SERVERS_PER_DEFAULT_PROCESS} of the {budget} server connections")
    return ProcessCount(processes, why)


def default_processes(
    cpus: int, pgbouncer_version: tuple[int, int], budget: int, replicas: int
) -> ProcessCount:
    """The count used when the stack sets none: the suggestion, measured in BENCHMARKS.md.

    On 2 CPUs, persistent ``pgbench -S`` through 1, 2 and 3 processes ran at 0.79x, 0.85x and
    0.73x of direct: one process is the ceiling, and more processes than cores compete.
    """
    suggestion = suggested_processes(cpus, pgbouncer_version, budget, replicas)
    return ProcessCount(suggestion.processes, f"default: {suggestion.why}; measured on 2 CPUs "
                        "(BENCHMARKS.md): 1, 2 and 3 processes gave 0.79x, 0.85x and 0.73x of "
                        "direct on persistent pgbench -S")  # fmt: skip


@dataclass(frozen=True)
class Split:
    """The per-process share of the budget. Every process of every replica gets the same."""

    processes: int
    """PgBouncer processes per pooler host."""
    replicas: int
    """Pooler hosts (containers, pods, machines) each running ``processes``."""
    budget: int
    """Server connections the whole pooler may open: the plan's pool + reserve."""
    pool_size: int
    """default_pool_size of each process."""
    reserve: int
    """reserve_pool_size of each process."""

    @property
    def instances(self) -> int:
        """PgBouncer processes in the whole pooler."""
        return self.processes * self.replicas

    @property
    def max_db_connections(self) -> int:
        """Server connections one process may open."""
        return self.pool_size + self.reserve

    @property
    def servers(self) -> int:
        """Server connections the whole pooler may open: never above ``budget``."""
        return self.instances * self.max_db_connections

    @property
    def pooled_servers(self) -> int:
        """Servers in the pools of all processes (without the reserve)."""
        return self.instances * self.pool_size

    @property
    def serving(self) -> int:
        """Processes that take clients while one process per host restarts."""
        return self.replicas * max(1, self.processes - 1)

    def why(self, pool: int, reserve: int) -> str:
        """One line: how the budget was divided."""
        if self.instances == 1:
            return f"one PgBouncer process holds the whole budget: pool {pool} + reserve {reserve}"
        return (f"budget {self.budget} (pool {pool} + reserve {reserve}) / "
                f"({self.processes} processes x {self.replicas} replicas) = "
                f"{self.max_db_connections} per process, {self.pool_size} pool + {self.reserve} "
                f"reserve in the budget's proportion; {self.instances} x "
                f"{self.max_db_connections} = {self.servers} <= {self.budget}")  # fmt: skip


def split_budget(pool: int, reserve: int, processes: int, replicas: int) -> Split | None:
    """Each process's share of ``pool + reserve``; None when a process would get no server."""
    budget = pool + reserve
    instances = processes * replicas
    per_process = budget // instances
    if per_process < 1:
        return None
    if instances == 1:
        return Split(processes, replicas, budget, pool, reserve)
    share = max(1, min(per_process, round(per_process * pool / budget)))
    return Split(processes, replicas, budget, share, per_process - share)


def client_slots(demand: int, split: Split, floor: int, headroom: float) -> int:
    """max_client_conn of one process: the apps' peak over the processes serving it.

    During a rolling restart one process per host is down and the others take its clients, so
    the demand is divided by ``split.serving``, not by every process.
    """
    wanted = max(floor, math.ceil(demand * headroom / split.serving))
    return 50 * math.ceil(wanted / 50)
