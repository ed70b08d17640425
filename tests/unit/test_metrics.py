"""Monitoring: stack keys, exporter logins, alert thresholds rendered from the plan."""

from __future__ import annotations

import pytest
import yaml

from poolkit import metrics
from poolkit.config import ConfigError
from poolkit.render import Layout, render_all, render_init_sql
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


def test_rules_file_is_rendered_with_the_other_files() -> None:
    config = stack()
    files = render_all(config, plan(config), secrets(), Layout())
    assert files[metrics.RULES_FILE] == metrics.render_rules(config, plan(config))


def test_exporters_log_in_as_read_only_roles_and_hide_passwords_in_repr() -> None:
    config = stack(monitoring={"exporters": True, "pgbouncer_exporter_port": 9300})
    credentials = secrets().__class__(**{**secrets().__dict__,
                                         "monitor": credential("poolkit_monitor", "m-pass-123456")})
    bouncer, postgres = metrics.exporters(config, credentials, "127.0.0.1", "127.0.0.1", 5432)
    assert bouncer.port == 9300 and postgres.port == 9187
    assert bouncer.environment["PGBOUNCER_EXPORTER_CONNECTION_STRING"].startswith(
        "postgresql://pgbouncer_stats:")
    assert postgres.environment["DATA_SOURCE_NAME"].startswith("postgresql://poolkit_monitor:")
    assert "m-pass-123456" not in repr(postgres)
    sql = render_init_sql(config, credentials)
    assert 'GRANT pg_monitor TO "poolkit_monitor";' in sql


def test_exporter_ports_must_not_clash() -> None:
    with pytest.raises(ConfigError) as caught:
        stack(monitoring={"exporters": True, "pgbouncer_exporter_port": 6432})
    assert "poolkit:monitoring.pgbouncer_exporter_port" in str(caught.value)


def test_docker_target_refuses_exporters_it_does_not_run() -> None:
    from poolkit.layouts import docker_problems

    problems = docker_problems(stack(monitoring={"exporters": True}))
    assert [p.key for p in problems] == ["poolkit:monitoring.exporters"]
    assert docker_problems(stack()) == []
