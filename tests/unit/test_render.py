"""Rendered files: the plan's numbers with their reasons, security defaults, stability, escaping."""

from __future__ import annotations

import re

import pytest
from psycopg.conninfo import conninfo_to_dict

from poolkit.envfile import parse_env
from poolkit.layouts import docker_layout, network_layout
from poolkit.render import (
    RenderError,
    render_all,
    render_env,
    render_pg_hba,
    render_postgresql_conf,
)
from poolkit.sizing import plan
from tests.unit.factories import first_ini, secrets, stack

pytestmark = pytest.mark.unit

APPS = [
    {"name": "orders", "style": "lambda", "instances": 4},
    {"name": "batch", "style": "workers", "instances": 2, "connection_limit": 2},
]


def _files(pgbouncer_version: str = "1.24", pgbouncer_tls: bool = False, **sections):
    pgbouncer = {"version": pgbouncer_version, "port": 16432, "client_tls": pgbouncer_tls}
    config = stack(pgbouncer=pgbouncer, postgres={"port": 15432, "publish": True}, **sections)
    return render_all(config, plan(config), secrets(), docker_layout(config))


def _setting_lines(text: str, comment: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line and not line.startswith(comment)]
    pairs = [line.split("=", 1) for line in lines if "=" in line and not line.startswith("[")]
    return {key.strip(): value.strip() for key, value in pairs}


def test_every_sized_setting_is_rendered_once_with_its_reason_above() -> None:
    config = stack(postgres={"cpus": 4, "memory": "8GiB"})
    result = plan(config)
    text = render_postgresql_conf(config, result, docker_layout(config))
    lines = text.splitlines()
    for setting in result.postgres:
        matches = [i for i, line in enumerate(lines) if line.startswith(f"{setting.name} = ")]
        assert len(matches) == 1, setting.name
        assert lines[matches[0]] == f"{setting.name} = '{setting.value}'"
        assert lines[matches[0] - 1] == f"# {setting.why}"


def test_postgresql_conf_forces_scram_and_names_its_files() -> None:
    conf = _setting_lines(_files()["postgresql.conf"], "#")
    assert conf["password_encryption"] == "'scram-sha-256'"
    assert conf["hba_file"] == "'/etc/poolkit/pg_hba.conf'"
    assert conf["data_directory"] == "'/var/lib/postgresql/data'"


def test_pg_hba_is_scram_only_and_names_only_our_roles() -> None:
    hba = _files()["pg_hba.conf"]
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert {rule[-1] for rule in rules} == {"scram-sha-256"}
    assert not re.search(r"\b(trust|md5|password|ident)\s*$", hba, re.MULTILINE)
    assert [(r[1], r[2]) for r in rules if r[0] == "host"] == [('"app"', '"migrator"'),
                                                               ('"app"', '"app"')]


def test_pg_hba_for_local_target_allows_loopback_only() -> None:
    from pathlib import Path

    from poolkit.layouts import local_layout

    config = stack()
    hba = render_pg_hba(config, local_layout(config, Path("/tmp/state"), "postgres"))
    addresses = {line.split()[3] for line in hba.splitlines() if line.startswith("host")}
    assert addresses == {"127.0.0.1/32"}


def test_pgbouncer_ini_transaction_mode_and_console_users() -> None:
    ini = _setting_lines(first_ini(_files()), ";")
    assert ini["pool_mode"] == "transaction"
    assert ini["auth_type"] == "scram-sha-256"
    assert ini["admin_users"] == "pgbouncer_admin" and ini["stats_users"] == "pgbouncer_stats"
    assert ini["app"] == "host=postgres port=5432 dbname=app"
    assert ini["max_prepared_statements"] == "200"


def test_pgbouncer_ini_for_1_18_omits_parameters_it_rejects() -> None:
    ini = _files("1.18")["pgbouncer.ini"]
    assert "max_prepared_statements" not in ini
    env = parse_env(_files("1.18")[".env"])
    assert env["PGBOUNCER_PREPARED_STATEMENTS"] == "off"
    assert "prepare_threshold=None" in _files("1.18")[".env"]


@pytest.mark.parametrize(("version", "max_prepared", "engine_flag"), [
    ("1.18", None, True), ("1.21", None, False), ("1.24", None, False), ("1.24", 0, True),
])
def test_pgbouncer_true_only_where_prepared_statements_are_not_tracked(
    version: str, max_prepared: int | None, engine_flag: bool
) -> None:
    config = stack(pgbouncer={"version": version, "max_prepared_statements": max_prepared})
    env = parse_env(render_all(config, plan(config), secrets(), docker_layout(config))[".env"])
    for libpq_clean in ("DATABASE_URL", "POOLED_DATABASE_URL", "DIRECT_URL"):
        assert "?" not in env[libpq_clean]
        conninfo_to_dict(env[libpq_clean])
    engine_url = env["PRISMA_ENGINE_DATABASE_URL"]
    assert ("pgbouncer=true" in engine_url) is engine_flag
    assert "connection_limit=" in engine_url and "pool_timeout=" in engine_url


def test_userlist_and_init_sql_hold_verifiers_never_passwords() -> None:
    files = _files()
    creds = secrets()
    for name in ("userlist.txt", "init.sql"):
        assert creds.app.password not in files[name]
        assert creds.migrator.password not in files[name]
    assert f'"app" "{creds.app.verifier}"' in files["userlist.txt"].splitlines()
    assert f"PASSWORD '{creds.migrator.verifier}'" in files["init.sql"]
    assert "migrator" not in files["userlist.txt"], "the owner role must not go through PgBouncer"


def test_env_urls_point_at_the_right_ports_and_users() -> None:
    env = parse_env(_files(apps=[APPS[0]])[".env"])
    assert env["DATABASE_URL"].startswith("postgresql://app:")
    assert env["DATABASE_URL"].endswith("@127.0.0.1:16432/app")
    assert env["POOLED_DATABASE_URL"] == env["DATABASE_URL"]
    assert env["PRISMA_ENGINE_DATABASE_URL"] == (
        env["DATABASE_URL"] + "?connection_limit=1&pool_timeout=10")
    assert env["DIRECT_URL"].startswith("postgresql://migrator:")
    assert env["DIRECT_URL"].endswith("@127.0.0.1:15432/app")
    assert env["PGBOUNCER_STATS_URL"].endswith("@127.0.0.1:16432/pgbouncer")
    assert env["POOL_CONNECTION_LIMIT"] == "1"


PRIVATE_DIRECT = "Postgres is not published (poolkit:postgres.publish: false)"
FOR_CONTAINERS = "# For containers on the stack's private Docker network"


@pytest.mark.parametrize(("publish", "network", "notes"), [
    (True, False, set()),
    (False, False, {PRIVATE_DIRECT}),
    (False, True, {FOR_CONTAINERS}),
])  # fmt: skip
def test_env_says_where_its_urls_work(publish: bool, network: bool, notes: set[str]) -> None:
    """The host's .env of an unpublished Postgres flags DIRECT_URL; a container's .env says so."""
    config = stack(postgres={"port": 15432, "publish": publish})
    layout = (network_layout if network else docker_layout)(config)
    text = render_env(config, plan(config), secrets(), layout)
    found = {note for note in (PRIVATE_DIRECT, FOR_CONTAINERS) if note in text}
    assert found == notes, text
    direct = conninfo_to_dict(parse_env(text)["DIRECT_URL"])["host"]
    assert direct == ("127.0.0.1" if publish and not network else "postgres")
    if PRIVATE_DIRECT in notes:  # the note sits right above the URL it is about
        lines = text.splitlines()
        above = lines[lines.index(next(li for li in lines if li.startswith("DIRECT_URL="))) - 1]
        assert above.startswith("# runs its smoke checks that way"), above


def test_env_of_a_stack_published_on_a_host_address_has_no_network_note() -> None:
    """URLs naming a host address or a TLS name are for this host too: no note."""
    config = stack(postgres={"port": 15432, "publish": True, "publish_address": "10.0.0.5"},
                   pgbouncer={"publish_address": "10.0.0.5", "client_tls": True,
                              "server_tls": True},
                   tls={"names": ["db.example.com"]})  # fmt: skip
    text = render_env(config, plan(config), secrets(), docker_layout(config))
    assert "db.example.com" in parse_env(text)["DATABASE_URL"]
    assert PRIVATE_DIRECT not in text and FOR_CONTAINERS not in text


def test_per_app_env_files_when_connection_limits_differ() -> None:
    files = _files(apps=APPS)
    assert {".env", ".env.orders", ".env.batch"} <= set(files)
    assert parse_env(files[".env.batch"])["POOL_CONNECTION_LIMIT"] == "2"
    assert "connection_limit=2" in parse_env(files[".env.batch"])["PRISMA_ENGINE_DATABASE_URL"]
    assert parse_env(files[".env"])["POOL_CONNECTION_LIMIT"] == "1"


def test_unpublished_postgres_gives_in_network_direct_url() -> None:
    config = stack()
    env = parse_env(render_all(config, plan(config), secrets(), docker_layout(config))[".env"])
    assert env["DIRECT_URL"].endswith("@postgres:5432/app")


def test_rendering_is_byte_stable() -> None:
    assert _files(apps=APPS) == _files(apps=APPS)


def test_awkward_password_stays_on_one_line_everywhere() -> None:
    awkward = "p@ss:w/rd%?#&=+ '\"\\ ünï\u00a0code;"
    config = stack()
    files = render_all(config, plan(config), secrets(app_password=awkward), docker_layout(config))
    env_lines = [line for line in files[".env"].splitlines() if "=" in line and line[0] != "#"]
    assert len(env_lines) == 9
    assert all(awkward not in text for text in files.values())


def test_value_with_newline_cannot_enter_a_config_file() -> None:
    from dataclasses import replace

    config = stack()
    layout = replace(docker_layout(config), postgres_host="postgres\nauth_type = trust")
    with pytest.raises(RenderError):
        render_all(config, plan(config), secrets(), layout)


def test_client_tls_requires_tls_in_ini_and_urls() -> None:
    files = _files(apps=[APPS[0]], pgbouncer_tls=True)
    ini = _setting_lines(first_ini(files), ";")
    assert ini["client_tls_sslmode"] == "require"
    assert ini["client_tls_key_file"] == "/etc/pgbouncer/client-tls.key"
    env = parse_env(files[".env"])
    assert "/app?sslmode=verify-full&sslrootcert=" in env["POOLED_DATABASE_URL"]
    assert env["POOLED_DATABASE_URL"] == env["DATABASE_URL"]
    assert "&sslmode=require&sslcert=" in env["PRISMA_ENGINE_DATABASE_URL"]
    assert env["PRISMA_ENGINE_DATABASE_URL"].endswith("&sslaccept=strict")
    assert "sslmode" not in env["DIRECT_URL"]


def test_no_tls_settings_without_client_tls() -> None:
    assert "client_tls" not in first_ini(_files())


def test_generated_passwords_get_fewer_scram_iterations_than_chosen_ones(monkeypatch) -> None:
    from poolkit import secrets as stack_secrets

    monkeypatch.setenv("POOLKIT_APP_PASSWORD", "a-password-someone-chose")
    monkeypatch.delenv("POOLKIT_MIGRATOR_PASSWORD", raising=False)
    credentials = stack_secrets.resolve(stack(), "postgres")
    assert credentials.app.verifier.startswith("SCRAM-SHA-256$4096:")
    assert credentials.migrator.verifier.startswith("SCRAM-SHA-256$256:")
    assert credentials.pgbouncer_admin.iterations == 256
    # The exporters' logins: lib/pq refuses fewer than RFC 7677's 4096.
    assert credentials.pgbouncer_stats.iterations == 4096
    assert credentials.monitor is not None and credentials.monitor.iterations == 4096
