"""Deployment facts for the testinfra suite: which host, which user, which files and ports.

The same tests check any target; only these facts differ:

- ``pytest tests/infra`` (no ``--hosts``): brings up the shared local stack (``local_stack``).
- ``pytest tests/infra --hosts=local://`` after ``poolkit up --stack dev``: reads the stack's
  state dir (``$POOLKIT_STATE_DIR``, else ``.poolkit/$POOLKIT_INFRA_STACK`` with ``dev`` default).
- ``POOLKIT_INFRA_FACTS=facts.json`` (e.g. ``--hosts=docker://NAME``): the facts as JSON, with
  the fields of :class:`Deployment` (``env_file`` is read on the machine running pytest).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from poolkit.envfile import read_env
from tests.conftest import REPO_ROOT
from tests.security.helpers import env_passwords


@dataclass(frozen=True)
class Deployment:
    """What a deployed host should look like, as the tests need it."""

    server_user: str
    """OS user every server process runs as (never root)."""
    ports: dict[str, int]
    """Service name -> TCP port it listens on, on the host being checked."""
    listen_host: str
    pg_hba: str
    pgbouncer_ini: str
    postgresql_conf: str
    """The rendered config: the values ``SHOW`` must report."""
    private_files: tuple[str, ...]
    """Files holding secrets (userlist.txt, .env): mode 0600."""
    env_file: str
    """The deployment's .env, readable from the machine running pytest (DIRECT_URL, passwords)."""
    server_processes: tuple[str, ...] = ("postgres", "pgbouncer")
    extra_secrets: tuple[str, ...] = ()
    """Passwords besides the .env ones that must not show up (superuser, console admin)."""

    def env(self) -> dict[str, str]:
        return read_env(Path(self.env_file))

    def passwords(self) -> set[str]:
        """Every password of the deployment: those in its .env URLs and the extra secrets."""
        return env_passwords(self.env(), self.extra_secrets)


def local_facts(state_dir: Path) -> Deployment:
    """Facts of a stack the local runner brought up (from its state dir)."""
    state = json.loads((state_dir / "state.json").read_text())
    conf = state_dir / "conf"
    env_files = state["env_files"]
    secrets: tuple[str, ...] = ()
    secrets_file = state_dir / "secrets.json"
    if secrets_file.exists():
        secrets = tuple(v["password"] if isinstance(v, dict) else v  # the backup passphrase
                        for v in json.loads(secrets_file.read_text()).values())
    ports = {"postgres": state["postgres_port"], "pgbouncer": state["pgbouncer_port"]}
    ports |= {app["key"]: app["port"] for app in state["apps"]}
    return Deployment(
        server_user=state["user"],
        ports=ports,
        listen_host="127.0.0.1",
        pg_hba=str(conf / "pg_hba.conf"),
        pgbouncer_ini=str(min(conf.glob("pgbouncer*.ini"))),  # pgbouncer.ini or -1.ini
        postgresql_conf=str(conf / "postgresql.conf"),
        private_files=(str(conf / "userlist.txt"), *env_files),
        env_file=env_files[0],
        extra_secrets=secrets,
    )


@pytest.fixture(scope="session")
def deployment(request: pytest.FixtureRequest) -> Deployment:
    facts_file = os.environ.get("POOLKIT_INFRA_FACTS")
    if facts_file:
        raw: dict[str, Any] = json.loads(Path(facts_file).read_text())
        for key in ("private_files", "server_processes", "extra_secrets"):
            if key in raw:
                raw[key] = tuple(raw[key])
        return Deployment(**raw)
    if request.config.option.hosts is None:
        stack = request.getfixturevalue("local_stack")
        return local_facts(stack.state_dir)
    stack_name = os.environ.get("POOLKIT_INFRA_STACK", "dev")
    state_dir = Path(os.environ.get("POOLKIT_STATE_DIR") or REPO_ROOT / ".poolkit" / stack_name)
    if not (state_dir / "state.json").exists():
        pytest.fail(f"no local stack in {state_dir}: run `poolkit up --stack {stack_name}` first, "
                    "or set POOLKIT_STATE_DIR / POOLKIT_INFRA_FACTS")  # fmt: skip
    return local_facts(state_dir)
