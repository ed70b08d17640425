"""A deployed host, checked from the outside with testinfra (local:// or docker://)."""

from __future__ import annotations

import re

import psycopg
import pytest
from testinfra.host import Host

from poolkit.local import conf_settings
from tests.infra.conftest import Deployment

pytestmark = pytest.mark.infra
KEY_SETTINGS = ("shared_buffers", "max_connections", "password_encryption", "work_mem")


def _pids(host: Host, name: str) -> list[int]:
    output = host.check_output(f"ps -C {name} -o pid= || true")
    return [int(pid) for pid in output.split()]


def _listener(host: Host, port: int) -> tuple[str, int]:
    """(command name, pid) of the process listening on ``port`` (from ``ss``)."""
    output = host.check_output(f"ss -ltnpH 'sport = :{port}'")
    match = re.search(r'users:\(\("([^"]+)",pid=(\d+)', output)
    assert match, f"nothing listens on port {port}: {output!r}"
    return match.group(1), int(match.group(2))


@pytest.mark.parametrize("name", ["postgres", "pgbouncer"])
def test_server_processes_run_as_the_unprivileged_user(
    host: Host, deployment: Deployment, name: str
) -> None:
    command, pid = _listener(host, deployment.ports[name])
    assert command == name
    assert deployment.server_user != "root"
    assert host.process.get(pid=pid).user == deployment.server_user


def test_ports_listen_on_loopback_only(host: Host, deployment: Deployment) -> None:
    for name, port in deployment.ports.items():
        assert host.socket(f"tcp://{deployment.listen_host}:{port}").is_listening, name
        assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening, name
        assert not host.socket(f"tcp://:::{port}").is_listening, name


def test_secret_files_are_owner_only(host: Host, deployment: Deployment) -> None:
    for path in deployment.private_files:
        assert host.file(path).exists, path
        assert host.file(path).mode == 0o600, path


def test_pg_hba_has_no_trust_and_only_scram(host: Host, deployment: Deployment) -> None:
    rules = [line.split() for line in host.file(deployment.pg_hba).content_string.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip
    assert rules
    assert {rule[-1] for rule in rules} == {"scram-sha-256"}
    assert not any("trust" in rule for rule in rules)


def test_the_checked_pg_hba_is_the_one_postgres_uses(deployment: Deployment) -> None:
    with psycopg.connect(deployment.env()["DIRECT_URL"], connect_timeout=5) as conn:
        (hba_file,) = conn.execute("SHOW hba_file").fetchone() or ("",)
    assert hba_file.endswith("pg_hba.conf")
    assert hba_file.rsplit("/", 2)[-2:] == deployment.pg_hba.rsplit("/", 2)[-2:]


def test_pgbouncer_ini_has_transaction_pooling(host: Host, deployment: Deployment) -> None:
    ini = host.file(deployment.pgbouncer_ini).content_string
    assert re.findall(r"^pool_mode\s*=\s*(\S+)\s*$", ini, re.MULTILINE) == ["transaction"]
    assert re.search(r"^auth_type\s*=\s*scram-sha-256\s*$", ini, re.MULTILINE)


@pytest.mark.parametrize("setting", KEY_SETTINGS)
def test_postgres_applies_the_rendered_setting(
    host: Host, deployment: Deployment, setting: str
) -> None:
    """Read through the server with SHOW, not from the file."""
    expected = conf_settings(host.file(deployment.postgresql_conf).content_string)
    with psycopg.connect(deployment.env()["DIRECT_URL"], connect_timeout=5) as conn:
        (value,) = conn.execute(f"SHOW {setting}").fetchone() or ("",)
    assert value == expected[setting]


def test_no_password_in_any_command_line(host: Host, deployment: Deployment) -> None:
    command_lines = host.check_output("ps -eww -o args=")
    passwords = deployment.passwords()
    assert passwords
    leaked = sum(p in command_lines for p in passwords)  # a count: never print a password
    assert leaked == 0, f"{leaked} password(s) show up in ps output"


@pytest.mark.parametrize("name", ["postgres", "pgbouncer"])
def test_no_password_in_server_environments(host: Host, deployment: Deployment, name: str) -> None:
    passwords = deployment.passwords()
    assert passwords
    pids = _pids(host, name)
    assert pids, f"no {name} process found: nothing was checked"
    checked = 0
    for pid in pids:
        environ = host.run(f"cat /proc/{pid}/environ")
        if environ.rc != 0:  # the process ended meanwhile
            continue
        checked += 1
        leaked = sum(p in environ.stdout for p in passwords)  # a count: never print a password
        assert leaked == 0, f"{leaked} password(s) in the environment of {name} pid {pid}"
    assert checked, f"the environment of no {name} process could be read ({len(pids)} found)"
