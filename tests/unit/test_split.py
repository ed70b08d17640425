"""The server budget split over PgBouncer processes and replicas, and its rendered files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolkit.config import ConfigError
from poolkit.envfile import parse_env
from poolkit.layouts import docker_layout
from poolkit.local.pgbouncer import migrates_queued_connections
from poolkit.peering import pooler_sysctls
from poolkit.render import render_all
from poolkit.sizing import plan
from poolkit.split import (
    client_slots,
    default_processes,
    split_budget,
    suggested_processes,
)
from tests.unit.factories import secrets, stack

pytestmark = pytest.mark.unit


def _ini(text: str) -> dict[str, str]:
    """``key = value`` lines of a pgbouncer.ini's [pgbouncer] section."""
    section, values = "", {}
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "pgbouncer" and "=" in line and not line.startswith(";"):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def _peers(text: str) -> dict[str, str]:
    body = text.split("[peers]\n", 1)[1]
    return dict(line.split(" = ", 1) for line in body.splitlines()
                if line and not line.startswith(";"))  # fmt: skip


# --- the split ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pool", "reserve", "processes", "replicas", "expected"),
    [
        # budget 7 over 2: 3 each (7 // 2), pool round(3 * 5/7) = 2, reserve 1; 6 <= 7.
        (5, 2, 2, 1, (2, 1)),
        # budget 7 over 3: 2 each, pool round(2 * 5/7) = 1, reserve 1; 6 <= 7.
        (5, 2, 3, 1, (1, 1)),
        # prod: budget 33 over 3: 11 each, pool round(11 * 26/33) = 9, reserve 2; 33 <= 33.
        (26, 7, 3, 1, (9, 2)),
        # budget 33 over 2 processes x 4 replicas = 8: 4 each, pool round(4 * 26/33) = 3.
        (26, 7, 2, 4, (3, 1)),
        # one process keeps the plan's numbers.
        (26, 7, 1, 1, (26, 7)),
        # no reserve: everything in the pool.
        (20, 0, 3, 1, (6, 0)),
    ],
)
def test_split_matches_hand_computed_shares(pool, reserve, processes, replicas, expected) -> None:
    split = split_budget(pool, reserve, processes, replicas)
    assert split is not None
    assert (split.pool_size, split.reserve) == expected
    assert split.servers <= pool + reserve


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 1000), st.integers(0, 1000), st.integers(1, 64), st.integers(1, 64))
def test_every_process_of_every_replica_stays_within_the_budget(
    pool: int, reserve: int, processes: int, replicas: int
) -> None:
    split = split_budget(pool, reserve, processes, replicas)
    if pool + reserve < processes * replicas:
        assert split is None
        return
    assert split is not None
    assert split.pool_size >= 1 and split.reserve >= 0
    assert split.servers <= pool + reserve
    # The floor loses less than one server per process.
    assert pool + reserve - split.servers < split.instances


def test_client_slots_cover_the_demand_while_one_process_per_host_restarts() -> None:
    split = split_budget(26, 7, 3, 2)
    assert split is not None and split.serving == 4  # 2 replicas x (3 - 1)
    # 2100 / 4 = 525 -> 550 per process; 4 serving processes hold 2200 >= 2100.
    assert client_slots(2100, split, 300, 1.0) == 550
    assert client_slots(100, split, 300, 1.0) == 300


@pytest.mark.parametrize(
    ("cpus", "version", "budget", "replicas", "expected"),
    [
        (2, (1, 24), 7, 1, 2),
        (1, (1, 24), 7, 1, 1),
        (2, (1, 18), 7, 1, 1),  # cannot peer
        (6, (1, 24), 33, 1, 3),
        (8, (1, 24), 33, 1, 3),
        (64, (1, 24), 400, 1, 8),  # at most 8
        (16, (1, 24), 7, 1, 2),  # 7 // 3: each keeps at least 3 servers
        (16, (1, 24), 7, 3, 1),
    ],
)
def test_suggested_processes(cpus, version, budget, replicas, expected) -> None:
    assert suggested_processes(cpus, version, budget, replicas).processes == expected


def test_default_is_the_suggestion_with_its_measurement() -> None:
    default = default_processes(8, (1, 24), 33, 1)
    assert default.processes == suggested_processes(8, (1, 24), 33, 1).processes == 3
    assert default.why.startswith("default: 8 CPUs") and "0.85x" in default.why
    assert default_processes(2, (1, 24), 7, 1).processes == 2  # dev: 2 CPUs, budget 7
    assert default_processes(2, (1, 18), 7, 1).processes == 1  # no peering before 1.19
    assert default_processes(1, (1, 24), 7, 1).processes == 1


# --- the plan ----------------------------------------------------------------------------------


def test_plan_splits_dev_over_two_processes_and_explains_it() -> None:
    result = plan(stack(pgbouncer={"processes": 2},
                        apps=[{"name": "a", "style": "lambda", "instances": 8}]))  # fmt: skip
    assert result.pgbouncer_value("default_pool_size") == "2"
    assert result.pgbouncer_value("reserve_pool_size") == "1"
    assert result.pgbouncer_value("max_db_connections") == "3"
    # whole pooler: max(300, 8 x 1.5) = 300; per process over 2 - 1 = 1 serving: 300.
    assert result.pgbouncer_value("max_client_conn") == "300"
    # max_connections is sized from the budget (5 + 2), not the split: no restart on a resize.
    assert result.postgres_value("max_connections") == "25"
    why = result.as_dict()["why"]
    assert why["pgbouncer.split"].startswith("budget 7 (pool 5 + reserve 2) / (2 processes x 1")
    assert "2 x 3 = 6 <= 7" in why["pgbouncer.split"]
    assert why["pgbouncer.processes"] == "set in the stack file"
    assert result.as_dict()["pgbouncer"]["servers"] == 6


def test_connection_limit_follows_the_pooled_servers_of_the_split() -> None:
    apps = [{"name": "a", "style": "lambda", "instances": 3}]
    one = plan(stack(postgres={"cpus": 4}, pgbouncer={"processes": 1}, apps=apps))
    three = plan(stack(postgres={"cpus": 4}, pgbouncer={"processes": 3}, apps=apps))
    # pool 9 + reserve 3 = 12. One process: 9 // 3 = 3. Three: 4 each, pool round(4*9/12) = 3,
    # so 9 pooled servers // 3 instances = 3.
    assert one.app("a").connection_limit == 3
    assert three.app("a").connection_limit == 3
    replicas = plan(stack(postgres={"cpus": 4}, pgbouncer={"processes": 2, "replicas": 3},
                          apps=apps))  # fmt: skip
    # 2 x 3 = 6 processes: 12 // 6 = 2 each, pool round(2 * 9/12) = 2, reserve 0; 6 x 2 = 12
    # pooled servers // 3 instances = 4.
    assert replicas.pool.split.pool_size == 2 and replicas.pool.split.reserve == 0
    assert replicas.app("a").connection_limit == 4


def test_more_processes_than_servers_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError) as caught:
        plan(stack(pgbouncer={"processes": 4, "replicas": 2, "default_pool_size": 3,
                              "reserve_pool_size": 0}))  # fmt: skip
    (problem,) = caught.value.problems
    assert problem.key == "poolkit:pgbouncer.processes"
    assert "8 PgBouncer processes cannot share a budget of 3" in problem.message
    assert "default_pool_size to at least 8" in problem.fix


def test_several_processes_need_a_pgbouncer_that_peers() -> None:
    with pytest.raises(ConfigError) as caught:
        stack(pgbouncer={"version": "1.18", "processes": 2})
    (problem,) = caught.value.problems
    assert problem.key == "poolkit:pgbouncer.processes"
    assert "1.19" in problem.message and "cancel" in problem.message


@pytest.mark.parametrize("key", ["processes", "replicas"])
def test_process_and_replica_counts_are_validated(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        stack(pgbouncer={key: 0})
    assert caught.value.problems[0].key == f"poolkit:pgbouncer.{key}"


# --- rendered files ----------------------------------------------------------------------------


def _rendered(**pgbouncer):
    config = stack(pgbouncer={"version": "1.24", **pgbouncer})
    return render_all(config, plan(config), secrets(), docker_layout(config))


def test_three_processes_get_three_files_that_differ_only_in_peering() -> None:
    files = _rendered(processes=3)
    names = sorted(name for name in files if name.startswith("pgbouncer"))
    assert names == ["pgbouncer-1.ini", "pgbouncer-2.ini", "pgbouncer-3.ini"]
    inis = [_ini(files[name]) for name in names]
    for number, ini in enumerate(inis, start=1):
        assert ini["so_reuseport"] == "1"
        assert ini["peer_id"] == str(number)
        assert ini["unix_socket_dir"] == f"/var/run/postgresql/pgbouncer-{number}"
        assert ini["listen_port"] == "6432"
    per_process = ("peer_id", "unix_socket_dir", "pidfile", "logfile")
    common = [{k: v for k, v in ini.items() if k not in per_process} for ini in inis]
    assert common[0] == common[1] == common[2]
    expected_peers = {str(n): f"host=/var/run/postgresql/pgbouncer-{n} port=6432"
                      for n in (1, 2, 3)}  # fmt: skip
    for name in names:
        assert _peers(files[name]) == expected_peers


def test_rendered_split_carries_its_reason_above_each_number() -> None:
    text = _rendered(processes=2)["pgbouncer-1.ini"]
    lines = text.splitlines()
    index = lines.index("max_db_connections = 3")
    assert lines[index - 1].startswith(";; hard guard: 2 + 1 per process; 2 processes x 3 = 6")
    assert "process 1 of 2 on this host" in text


def test_one_process_renders_the_single_file_without_peering() -> None:
    files = _rendered(processes=1)
    assert "pgbouncer-1.ini" not in files
    ini = _ini(files["pgbouncer.ini"])
    assert "peer_id" not in ini and "so_reuseport" not in ini
    assert "[peers]" not in files["pgbouncer.ini"]


def test_env_names_the_processes_and_their_server_budget() -> None:
    env = parse_env(_rendered(processes=2)[".env"])
    assert env["PGBOUNCER_PROCESSES"] == "2"
    assert env["PGBOUNCER_SERVER_BUDGET"] == "6"


def test_only_several_processes_ask_the_kernel_to_migrate_queued_connections() -> None:
    assert pooler_sysctls(1) == {}
    assert pooler_sysctls(2) == pooler_sysctls(3) == {"net.ipv4.tcp_migrate_req": "1"}


@pytest.mark.parametrize(("content", "expected"), [("1\n", True), ("0\n", False), (None, False)])
def test_the_host_setting_is_read_from_proc_sys(
    tmp_path: Path, content: str | None, expected: bool
) -> None:
    if content is not None:  # None: a kernel before 5.14 has no such file
        setting = tmp_path / "net/ipv4/tcp_migrate_req"
        setting.parent.mkdir(parents=True)
        setting.write_text(content)
    assert migrates_queued_connections(tmp_path) is expected
