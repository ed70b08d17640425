"""The ``docker://`` adapter of the testinfra suite: one container's facts, and which tests apply.

Postgres and PgBouncer run in separate containers, so the suite runs once per container, with
facts that name only that container's service:

    POOLKIT_INFRA_FACTS=facts.json pytest -p tests.infra.docker_facts tests/infra \\
        --hosts=docker://poolkit-dev-postgres

``container_facts`` writes those facts (the fields of ``tests.infra.conftest.Deployment``);
the paths are the images' (``poolkit.render.Layout``'s defaults). Loaded as a plugin, this module
deselects the tests of ``tests/infra`` that need the other container's service or do not apply
inside a container, and lists each one with its reason in the summary: none is skipped silently.
The plugin also collects ``container_checks.py``: what only a container has to prove.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from poolkit.render import Layout

FACTS_ENV = "POOLKIT_INFRA_FACTS"
CONTAINER_CHECKS = "container_checks.py"
"""Collected only when this plugin is loaded (its name is not ``test_*``)."""
SERVER_USER = "postgres"
SERVER_UID = 999
"""uid and gid of ``postgres`` in both images (images/*/Dockerfile)."""
SERVICES = ("postgres", "pgbouncer")

NEEDS_SERVICE = {
    "test_pg_hba_has_no_trust_and_only_scram": "postgres",
    "test_the_checked_pg_hba_is_the_one_postgres_uses": "postgres",
    "test_postgres_applies_the_rendered_setting": "postgres",
    "test_pgbouncer_ini_has_transaction_pooling": "pgbouncer",
}
"""Tests of test_deployed_host.py that read one service's files (parametrized ones name it)."""
REPLACED_IN_CONTAINERS = {
    "test_server_processes_run_as_the_unprivileged_user": (
        "finds the listener with `ss`, which the images do not ship; "
        "container_checks.py reads the listening socket's uid from /proc/net/tcp"),
    "test_ports_listen_on_loopback_only": (
        "inside a container the server listens on the private network, where PgBouncer and "
        "the apps reach it; tests/e2e checks that Docker publishes it on 127.0.0.1 only"),
}  # fmt: skip


def container_facts(
    service: str, env_file: Path, extra_secrets: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Facts of the ``postgres`` or ``pgbouncer`` container of a Docker stack.

    ``env_file`` is the stack's ``.env`` on the machine running pytest; ``extra_secrets`` are
    passwords that are not in it (superuser, PgBouncer admin) and must not show up either.
    """
    if service not in SERVICES:
        raise ValueError(f"service {service!r}: use one of {', '.join(SERVICES)}")
    layout = Layout()
    postgres = service == "postgres"
    conf, bouncer = layout.config_dir, layout.pgbouncer_dir
    return {
        "server_user": SERVER_USER,
        "ports": {service: layout.postgres_port if postgres else layout.pgbouncer_port},
        "listen_host": "0.0.0.0",
        "pg_hba": f"{conf}/pg_hba.conf" if postgres else "",
        "pgbouncer_ini": "" if postgres else f"{bouncer}/pgbouncer.ini",
        "postgresql_conf": f"{conf}/postgresql.conf" if postgres else "",
        "private_files": [f"{conf}/init.sql" if postgres else f"{bouncer}/userlist.txt"],
        "env_file": str(env_file),
        "server_processes": [service],
        "extra_secrets": sorted(extra_secrets),
    }


def load_facts() -> dict[str, Any]:
    """The facts file named by ``POOLKIT_INFRA_FACTS`` (a UsageError when there is none)."""
    path = os.environ.get(FACTS_ENV)
    if not path:
        raise pytest.UsageError(
            f"-p tests.infra.docker_facts needs {FACTS_ENV}=<facts.json> "
            "(tests.infra.docker_facts.container_facts writes one)")
    facts: dict[str, Any] = json.loads(Path(path).read_text())
    return facts


def service_of(facts: dict[str, Any]) -> str:
    """The one service the container runs."""
    (service,) = facts["ports"]
    return str(service)


def not_applicable(item: pytest.Item, service: str) -> str | None:
    """Why ``item`` does not apply to the container of ``service``, or None."""
    name = getattr(item, "originalname", item.name)
    if name in REPLACED_IN_CONTAINERS:
        return REPLACED_IN_CONTAINERS[name]
    callspec = getattr(item, "callspec", None)
    needs = NEEDS_SERVICE.get(name) or (callspec.params.get("name") if callspec else None)
    if needs in SERVICES and needs != service:
        return f"checks {needs}, which runs in the other container"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("python_files", CONTAINER_CHECKS)
    config.stash[_DESELECTED] = []
    config.stash[_SERVICE] = service_of(load_facts())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    service = config.stash[_SERVICE]
    keep, dropped = [], []
    for item in items:
        reason = not_applicable(item, service)
        if reason is None:
            keep.append(item)
        else:
            dropped.append(item)
            config.stash[_DESELECTED].append((item.nodeid, reason))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_report_header(config: pytest.Config) -> str:
    return f"poolkit docker facts: the {config.stash[_SERVICE]} container"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    deselected = config.stash[_DESELECTED]
    if deselected:
        terminalreporter.section(f"not applicable to the {config.stash[_SERVICE]} container")
        for nodeid, reason in deselected:
            terminalreporter.write_line(f"{nodeid}: {reason}")


_DESELECTED = pytest.StashKey[list[tuple[str, str]]]()
_SERVICE = pytest.StashKey[str]()
