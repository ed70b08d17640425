"""Sizing: six hand-computed profiles, and properties that must hold for any config."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolkit.config import ConfigError
from poolkit.sizing import plan
from tests.unit.factories import stack, to_kb

pytestmark = pytest.mark.unit

# Each profile: stack sections, then expected values computed by hand from the formulas in
# poolkit/sizing.py (pgtune's reasoning, work_mem over the rounded backend bound).
PROFILES = {
    # 1 GiB, 2 CPUs, web. pool 2*2+1=5, reserve ceil(5/4)=2, servers 7, max_connections 7+3+10
    # = 20, rounded up to 25.
    # work_mem (1048576-262144) kB / ((25-3)*3) = 11915kB.
    "dev-web-1GiB": (
        {"postgres": {"memory": "1GiB", "cpus": 2, "workload": "web", "storage": "ssd"},
         "apps": [{"name": "a", "style": "lambda", "instances": 4},
                  {"name": "b", "style": "workers", "instances": 4}]},
        {"postgres": {"max_connections": "25", "shared_buffers": "256MB",
                      "effective_cache_size": "768MB", "maintenance_work_mem": "64MB",
                      "work_mem": "11915kB", "wal_buffers": "7864kB", "min_wal_size": "1GB",
                      "max_wal_size": "4GB", "random_page_cost": "1.1",
                      "effective_io_concurrency": "200", "huge_pages": "off", "jit": "off"},
         # 2 processes (2 CPUs): budget 7 // 2 = 3 each, pool round(3 * 5/7) = 2 + reserve 1.
         "pgbouncer": {"default_pool_size": "2", "reserve_pool_size": "1",
                       "max_db_connections": "3", "max_client_conn": "300",
                       "max_prepared_statements": "200"},
         "connection_limit": {"a": 1, "b": 1}},
    ),
    # 16 GiB, 8 CPUs, oltp, nvme. pool ceil(17*1.5)=26, reserve 7, servers 33,
    # max_conn 46 -> 50.
    # work_mem 12582912 / ((50-3)*3) / 4 workers per gather = 22310kB. Demand 1400 -> 2100 clients.
    "prod-oltp-16GiB": (
        {"postgres": {"memory": "16GiB", "cpus": 8, "workload": "oltp", "storage": "nvme"},
         "apps": [{"name": "orders", "style": "lambda", "instances": 400},
                  {"name": "edge", "style": "workers", "instances": 1000}]},
        {"postgres": {"max_connections": "50", "shared_buffers": "4GB",
                      "effective_cache_size": "12GB", "maintenance_work_mem": "1GB",
                      "work_mem": "22310kB", "wal_buffers": "16MB", "min_wal_size": "2GB",
                      "max_wal_size": "8GB", "effective_io_concurrency": "1000",
                      "max_worker_processes": "8", "max_parallel_workers_per_gather": "4",
                      "max_parallel_workers": "8", "max_parallel_maintenance_workers": "4"},
         # 3 processes (8 CPUs): 33 // 3 = 11 each, pool round(11 * 26/33) = 9 + reserve 2;
         # 2100 client slots over the 2 that serve while one restarts = 1050 each.
         "pgbouncer": {"default_pool_size": "9", "reserve_pool_size": "2",
                       "max_db_connections": "11", "max_client_conn": "1050"},
         "connection_limit": {"orders": 1, "edge": 1}},
    ),
    # 64 GiB, 16 CPUs, dw, hdd, PgBouncer 1.18. pool ceil(33*0.5)=17, reserve 5, servers 22,
    # max_conn 35 -> 50. work_mem 50331648 / ((50-3)*3) / 8 / 2 = 22310kB.
    # No max_prepared_statements on 1.18.
    "dw-hdd-64GiB": (
        {"postgres": {"memory": "64GiB", "cpus": 16, "workload": "dw", "storage": "hdd",
                      "version": 16},
         "pgbouncer": {"version": "1.18"}},
        {"postgres": {"max_connections": "50", "shared_buffers": "16GB",
                      "effective_cache_size": "48GB", "maintenance_work_mem": "2GB",
                      "work_mem": "22310kB", "default_statistics_target": "500",
                      "random_page_cost": "4", "effective_io_concurrency": "2",
                      "huge_pages": "try", "jit": "on", "min_wal_size": "4GB",
                      "max_wal_size": "16GB", "max_parallel_workers_per_gather": "8",
                      "max_parallel_maintenance_workers": "4"},
         "pgbouncer": {"default_pool_size": "17", "reserve_pool_size": "5",
                       "max_db_connections": "22", "max_client_conn": "300"},
         "connection_limit": {}},
    ),
    # 2 GiB, 1 CPU, desktop, san. pool max(2, ceil(3*0.5)) = 2, reserve 1, servers 3,
    # max_conn 16 -> 25.
    # shared_buffers RAM/16, work_mem 1966080 / 66 / 6 = 4964kB; wal_buffers 3% = 3932kB, in
    # whole 8kB pages 3928kB.
    "desktop-2GiB": (
        {"postgres": {"memory": "2GiB", "cpus": 1, "workload": "desktop", "storage": "san"}},
        {"postgres": {"max_connections": "25", "shared_buffers": "128MB",
                      "effective_cache_size": "512MB", "maintenance_work_mem": "128MB",
                      "work_mem": "4964kB", "wal_buffers": "3928kB", "min_wal_size": "100MB",
                      "max_wal_size": "2GB", "effective_io_concurrency": "300"},
         "pgbouncer": {"default_pool_size": "2", "reserve_pool_size": "1",
                       "max_db_connections": "3"},
         "connection_limit": {}},
    ),
    # 8 GiB, 4 CPUs, mixed, overrides: max_connections 200, pool 20, reserve 0. pgtune would
    # divide by 200 connections (2621kB); the bound is 20 + 3 + 10 rounded up to 50, less the 3
    # superuser slots -> 6291456/(47*3)/2/2 = 11155kB.
    "mixed-overrides-8GiB": (
        {"postgres": {"memory": "8GiB", "cpus": 4, "workload": "mixed", "max_connections": 200},
         "pgbouncer": {"default_pool_size": 20, "reserve_pool_size": 0}},
        {"postgres": {"max_connections": "200", "shared_buffers": "2GB",
                      "effective_cache_size": "6GB", "maintenance_work_mem": "512MB",
                      "work_mem": "11155kB", "wal_buffers": "16MB",
                      "max_parallel_workers_per_gather": "2", "max_worker_processes": "4"},
         # 2 processes (4 CPUs): 20 // 2 = 10 each, all pool.
         "pgbouncer": {"default_pool_size": "10", "reserve_pool_size": "0",
                       "max_db_connections": "10"},
         "connection_limit": {}},
    ),
    # 512 MiB, 2 CPUs, oltp, PostgreSQL 15, 3 instances: pool ceil(5*1.5)=8, so each instance may
    # hold 8 // 3 = 2 connections; max_conn 23 -> 25. work_mem 393216 / (22*3) = 5957kB.
    "small-oltp-512MiB": (
        {"postgres": {"memory": "512MiB", "cpus": 2, "workload": "oltp", "version": 15},
         "apps": [{"name": "api", "style": "lambda", "instances": 3}]},
        {"postgres": {"max_connections": "25", "shared_buffers": "128MB",
                      "effective_cache_size": "384MB", "maintenance_work_mem": "32MB",
                      "work_mem": "5957kB", "min_wal_size": "2GB", "max_wal_size": "8GB"},
         # 2 processes (2 CPUs): 10 // 2 = 5 each, pool round(5 * 8/10) = 4 + reserve 1.
         "pgbouncer": {"default_pool_size": "4", "reserve_pool_size": "1",
                       "max_db_connections": "5", "max_client_conn": "300"},
         "connection_limit": {"api": 2}},
    ),
}  # fmt: skip


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_matches_hand_computed_values(profile: str) -> None:
    sections, expected = PROFILES[profile]
    result = plan(stack(**sections))
    got_pg = {name: result.postgres_value(name) for name in expected["postgres"]}
    got_pb = {name: result.pgbouncer_value(name) for name in expected["pgbouncer"]}
    assert got_pg == expected["postgres"]
    assert got_pb == expected["pgbouncer"]
    assert {a.name: a.connection_limit for a in result.apps} == expected["connection_limit"]


def test_parallel_settings_only_from_four_cpus() -> None:
    two = plan(stack(postgres={"cpus": 2}))
    four = plan(stack(postgres={"cpus": 4}))
    with pytest.raises(KeyError):
        two.postgres_value("max_parallel_workers")
    assert four.postgres_value("max_parallel_workers") == "4"


def test_prepared_statements_follow_pgbouncer_version() -> None:
    old = plan(stack(pgbouncer={"version": "1.18"}))
    new = plan(stack(pgbouncer={"version": "1.21"}))
    off = plan(stack(pgbouncer={"version": "1.24", "max_prepared_statements": 0}))
    assert not old.prepared_statements
    assert "max_prepared_statements" not in {s.name for s in old.pgbouncer}
    assert new.prepared_statements and new.pgbouncer_value("max_prepared_statements") == "200"
    assert not off.prepared_statements and off.pgbouncer_value("max_prepared_statements") == "0"


def test_pool_timeout_stays_below_query_wait_timeout() -> None:
    result = plan(stack(pgbouncer={"query_wait_timeout": 9}))
    assert result.pool.pool_timeout == 6


def test_every_setting_explains_itself() -> None:
    result = plan(stack(**PROFILES["prod-oltp-16GiB"][0]))
    reasons = [s.why for s in (*result.postgres, *result.pgbouncer)]
    assert all(len(why) > 15 and "\n" not in why for why in reasons)
    assert set(result.as_dict()["why"]) >= {"postgres.work_mem", "apps.orders.connection_limit"}


def test_max_connections_too_small_for_pool_is_refused() -> None:
    with pytest.raises(ConfigError) as error:
        plan(stack(postgres={"max_connections": 20}, pgbouncer={"default_pool_size": 30}))
    assert error.value.problems[0].key == "poolkit:postgres.max_connections"
    assert "raise it to at least" in error.value.problems[0].fix


def test_client_demand_beyond_max_client_conn_is_refused() -> None:
    with pytest.raises(ConfigError) as error:
        plan(stack(pgbouncer={"max_client_conn": 100},
                   apps=[{"name": "a", "style": "lambda", "instances": 60, "connection_limit": 2}]))
    problem = error.value.problems[0]
    assert problem.key == "poolkit:pgbouncer.max_client_conn"
    assert "120" in problem.message


# --- properties ---------------------------------------------------------------------------------

WORKLOADS = st.sampled_from(["web", "oltp", "mixed", "dw", "desktop"])
STORAGE = st.sampled_from(["ssd", "hdd", "san", "nvme"])
MEMORY_MIB = st.integers(min_value=256, max_value=512 * 1024)
CPUS = st.integers(min_value=1, max_value=64)


def _plan(memory_mib: int, cpus: int, workload: str, storage: str = "ssd", instances: int = 10):
    return plan(stack(
        postgres={"memory": f"{memory_mib}MiB", "cpus": cpus, "workload": workload,
                  "storage": storage},
        apps=[{"name": "a", "style": "lambda", "instances": instances}],
    ))  # fmt: skip


MEMORY_SETTINGS = ("shared_buffers", "effective_cache_size", "maintenance_work_mem", "work_mem")


@settings(max_examples=150, deadline=None)
@given(MEMORY_MIB, MEMORY_MIB, CPUS, WORKLOADS, STORAGE)
def test_more_memory_never_lowers_memory_settings(a, b, cpus, workload, storage) -> None:
    low, high = sorted((a, b))
    small, big = _plan(low, cpus, workload, storage), _plan(high, cpus, workload, storage)
    for name in MEMORY_SETTINGS:
        assert to_kb(big.postgres_value(name)) >= to_kb(small.postgres_value(name)), name


@settings(max_examples=150, deadline=None)
@given(CPUS, CPUS, WORKLOADS)
def test_more_cpus_never_shrink_the_pool(a, b, workload) -> None:
    low, high = sorted((a, b))
    assert _plan(1024, high, workload).pool.pool_size >= _plan(1024, low, workload).pool.pool_size


@settings(max_examples=150, deadline=None)
@given(MEMORY_MIB, CPUS, WORKLOADS, st.integers(1, 5000), st.integers(1, 5000))
def test_more_instances_never_raise_connection_limit(memory, cpus, workload, a, b) -> None:
    few, many = sorted((a, b))
    limit_few = _plan(memory, cpus, workload, instances=few).apps[0].connection_limit
    limit_many = _plan(memory, cpus, workload, instances=many).apps[0].connection_limit
    assert 1 <= limit_many <= limit_few


@settings(max_examples=200, deadline=None)
@given(MEMORY_MIB, CPUS, WORKLOADS, STORAGE, st.integers(1, 20000))
def test_plan_bounds_hold_end_to_end(memory, cpus, workload, storage, instances) -> None:
    result = _plan(memory, cpus, workload, storage, instances)
    pool = result.pool
    assert pool.server_connections + 3 <= pool.max_connections
    assert pool.client_demand <= pool.max_client_conn
    per_process = int(result.pgbouncer_value("max_db_connections"))
    assert per_process == pool.split.max_db_connections >= 1
    assert pool.split.instances * per_process <= pool.pool_size + pool.reserve
    assert to_kb(result.postgres_value("work_mem")) >= 64
    assert to_kb(result.postgres_value("shared_buffers")) <= memory * 1024 // 4


def test_small_pool_resize_keeps_max_connections() -> None:
    """A pool resize within the rounding step is a PgBouncer RELOAD, not a Postgres restart."""
    before = plan(stack(pgbouncer={"default_pool_size": 5}))
    after = plan(stack(pgbouncer={"default_pool_size": 8}))
    assert before.pool.server_connections != after.pool.server_connections
    assert before.postgres_value("max_connections") == after.postgres_value("max_connections")
    # Every Postgres line and its reason, which the rendered file carries as a comment: the
    # Docker target would replace the Postgres container for any change to postgresql.conf.
    assert before.postgres == after.postgres


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=256 * 1024, max_value=64 * 1024 * 1024), WORKLOADS)
def test_page_counted_settings_are_whole_pages(memory_kb: int, workload: str) -> None:
    """The server would round these itself, and then run with a value the plan does not show."""
    result = plan(stack(postgres={"memory": f"{memory_kb}kB", "workload": workload}))
    for name in ("shared_buffers", "effective_cache_size", "wal_buffers"):
        assert to_kb(result.postgres_value(name)) % 8 == 0, name
