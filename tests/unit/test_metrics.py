"""Monitoring: stack keys, exporter logins, alert thresholds rendered from the plan."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from poolkit import metrics
from poolkit.config import ConfigError
from poolkit.layouts import docker_layout, local_layout
from poolkit.render import Layout, render_all, render_external_init_sql, render_init_sql
from poolkit.secrets import Secrets
from poolkit.sizing import plan
from tests.unit.factories import credential, secrets, stack

pytestmark = pytest.mark.unit


def _rules(**sections: object) -> dict[str, dict[str, object]]:
    config = stack(**sections)
    document = yaml.safe_load(metrics.render_rules(config, plan(config)))
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"]}


def test_rules_take_their_thresholds_from_the_plan() -> None:
    rules = _rules(pgbouncer={"default_pool_size": 6, "reserve_pool_size": 2,
                              "query_wait_timeout": 40})  # fmt: skip
    saturated = rules["PgBouncerServerPoolSaturated"]
    assert saturated["expr"].endswith(">= 8") and saturated["for"] == "5m"
    assert rules["PgBouncerMaxWaitHigh"]["expr"].endswith("> 20.0")
    assert rules["PgBouncerClientsWaiting"]["for"] == "1m"
    assert rules["PostgresConnectionsHigh"]["expr"] == "sum(pg_stat_database_numbackends) > 20"
    assert set(rules) == {"PgBouncerClientsWaiting", "PgBouncerMaxWaitHigh",
                          "PgBouncerServerPoolSaturated", "PostgresConnectionsHigh",
                          "PgBouncerExporterDown", "PostgresExporterDown"}  # fmt: skip


def test_saturation_threshold_is_what_every_process_together_may_open() -> None:
    # 8 servers over 3 processes: 2 each, the remainder (2) unused, so saturation is at 6.
    rules = _rules(pgbouncer={"processes": 3, "default_pool_size": 6, "reserve_pool_size": 2})
    expr = rules["PgBouncerServerPoolSaturated"]["expr"]
    assert expr.startswith("sum by (database) (") and expr.endswith(">= 6")
    assert rules["PgBouncerClientsWaiting"]["expr"].startswith("sum by (database) (")


def test_rules_file_is_rendered_with_the_other_files() -> None:
    config = stack()
    files = render_all(config, plan(config), secrets(), Layout())
    assert files[metrics.RULES_FILE] == metrics.render_rules(config, plan(config))


def _with_monitor() -> Secrets:
    return replace(secrets(), monitor=credential("poolkit_monitor", "m-pass-123456"))


def test_exporters_log_in_as_read_only_roles_and_hide_passwords_in_repr() -> None:
    config = stack(pgbouncer={"processes": 1},
                   monitoring={"exporters": True, "pgbouncer_exporter_port": 9300})
    credentials = _with_monitor()
    bouncer, postgres = metrics.exporters(config, plan(config), docker_layout(config),
                                          credentials)  # fmt: skip
    assert (bouncer.name, bouncer.port, postgres.name, postgres.port) == (
        "pgbouncer-exporter", 9300, "postgres-exporter", 9187)
    url = bouncer.environment["PGBOUNCER_EXPORTER_CONNECTION_STRING"]
    # Through PgBouncer's own socket dir, as lib/pq spells it (host as a parameter).
    assert url.startswith("postgresql://pgbouncer_stats:")
    assert url.endswith("@:6432/pgbouncer?host=%2Fvar%2Frun%2Fpostgresql&sslmode=disable")
    assert conninfo_to_dict(url)["host"] == "/var/run/postgresql"
    dsn = postgres.environment["DATA_SOURCE_NAME"]
    assert dsn.startswith("postgresql://poolkit_monitor:") and "@postgres:5432/app?" in dsn
    assert "m-pass-123456" not in repr(postgres)
    sql = render_init_sql(config, credentials)
    assert 'GRANT pg_monitor TO "poolkit_monitor";' in sql


def test_one_pgbouncer_exporter_per_process_on_consecutive_ports() -> None:
    config = stack(pgbouncer={"processes": 3}, monitoring={"exporters": True})
    specs = metrics.exporters(config, plan(config), docker_layout(config), _with_monitor())
    assert [(s.name, s.program, s.port) for s in specs] == [
        ("pgbouncer-exporter-1", "pgbouncer-exporter", 9127),
        ("pgbouncer-exporter-2", "pgbouncer-exporter", 9128),
        ("pgbouncer-exporter-3", "pgbouncer-exporter", 9129),
        ("postgres-exporter", "postgres-exporter", 9187),
    ]
    hosts = [conninfo_to_dict(s.environment["PGBOUNCER_EXPORTER_CONNECTION_STRING"])["host"]
             for s in specs[:3]]  # fmt: skip
    assert hosts == [f"/var/run/postgresql/pgbouncer-{n}" for n in (1, 2, 3)]
    assert metrics.exporter_ports(config, plan(config)) == {s.name: s.port for s in specs}
    assert all(metrics.is_exporter(s.name) for s in specs)
    assert not metrics.is_exporter("pgbouncer-1") and not metrics.is_exporter("app-orders-0")


def test_exporter_env_file_holds_the_login_and_no_blank_surprises() -> None:
    config = stack(pgbouncer={"processes": 1}, monitoring={"exporters": True})
    bouncer = metrics.exporters(config, plan(config), docker_layout(config), _with_monitor())[0]
    text = metrics.render_env(bouncer, ["pgbouncer_exporter", "--web.listen-address=:9127"])
    lines = text.splitlines()
    assert lines[0] == "# pgbouncer-exporter: its login (0600). Generated by poolkit: do not edit."
    assert "# command: pgbouncer_exporter --web.listen-address=:9127" in lines
    assert lines[-1].startswith("PGBOUNCER_EXPORTER_CONNECTION_STRING=postgresql://")
    assert "" not in lines


def test_postgres_exporter_checks_an_external_server_as_pgbouncer_does() -> None:
    config = stack(postgres={"external": {"host": "db.example.org", "admin_user": "owner",
                                          "ca_file": "/tmp/ca.pem", "max_connections": 100}},
                   monitoring={"exporters": True})  # fmt: skip
    layout = local_layout(config, Path("/srv/state"), "poolkit")
    postgres = metrics.exporters(config, plan(config), layout, _with_monitor())[-1]
    params = conninfo_to_dict(postgres.environment["DATA_SOURCE_NAME"])
    assert (params["host"], params["sslmode"], params["sslrootcert"]) == (
        "db.example.org", "verify-full", "/srv/state/conf/server-ca.crt")


def test_external_init_sql_makes_the_monitor_role_only_with_exporters() -> None:
    external = {"host": "db.example.org", "admin_user": "owner", "ca_file": "/tmp/ca.pem",
                "max_connections": 100}  # fmt: skip
    with_exporters = stack(postgres={"external": external}, monitoring={"exporters": True})
    sql = render_external_init_sql(with_exporters, _with_monitor())
    assert "WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'poolkit_monitor')" in sql
    assert ('ALTER ROLE "poolkit_monitor" LOGIN NOCREATEROLE NOCREATEDB CONNECTION LIMIT 3 '
            "PASSWORD 'SCRAM-SHA-256$") in sql
    assert 'GRANT pg_monitor TO "poolkit_monitor";' in sql
    assert 'GRANT CONNECT ON DATABASE "app" TO "poolkit_monitor";' in sql
    assert "m-pass-123456" not in sql
    # Only a superuser may name the attribute, so no statement does (the admin role is none).
    assert not [line for line in sql.splitlines()
                if "SUPERUSER" in line and not line.startswith("--")]  # fmt: skip
    without = render_external_init_sql(stack(postgres={"external": external}), _with_monitor())
    assert "poolkit_monitor" not in without


def test_exporter_ports_must_not_clash() -> None:
    with pytest.raises(ConfigError) as caught:
        stack(monitoring={"exporters": True, "pgbouncer_exporter_port": 6432})
    assert "poolkit:monitoring.pgbouncer_exporter_port" in str(caught.value)


def test_a_derived_process_count_keeps_the_largest_exporter_range_free() -> None:
    with pytest.raises(ConfigError) as caught:
        stack(monitoring={"exporters": True, "pgbouncer_exporter_port": 9180,
                          "postgres_exporter_port": 9187})  # fmt: skip
    assert "poolkit:monitoring.postgres_exporter_port: clashes with" in str(caught.value)
    config = stack(monitoring={"exporters": True, "pgbouncer_exporter_port": 9179,
                               "postgres_exporter_port": 9187})  # fmt: skip
    ports = metrics.exporter_ports(config, plan(config))
    assert len(ports) == plan(config).pool.split.processes + 1


def test_exporter_port_range_of_several_processes_must_not_clash() -> None:
    with pytest.raises(ConfigError) as caught:
        stack(pgbouncer={"processes": 2}, monitoring={
            "exporters": True, "pgbouncer_exporter_port": 9186, "postgres_exporter_port": 9187})
    assert ("poolkit:monitoring.postgres_exporter_port: clashes with "
            "poolkit:monitoring.pgbouncer_exporter_port (got 9187)") in str(caught.value)


def test_docker_target_runs_exporters_and_kubernetes_refuses_them() -> None:
    from poolkit.layouts import docker_problems, kubernetes_problems

    assert docker_problems(stack(monitoring={"exporters": True})) == []
    problems = kubernetes_problems(stack(monitoring={"exporters": True}))
    assert [p.key for p in problems] == ["poolkit:monitoring.exporters"]
