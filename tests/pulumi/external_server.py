"""The external server of the program tests that front one (``poolkit:postgres.external``): its
admin password and CA as the stack configures them, and a recorder standing in for it.

The server check and the init SQL need a real server (``tests/integration`` and ``tests/e2e``
run them against one); under the mock runtime the recorder takes their place.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from poolkit import external
from poolkit.config import ConfigError, ExternalPostgres, Problem, StackConfig
from poolkit.sizing import Plan

from .harness import deploy

ADMIN_KEY = "poolkit:external_admin_password"
ADMIN_PASSWORD = "admin-password-of-the-test"
CA_PEM = "-----BEGIN CERTIFICATE-----\nthe provider's CA\n-----END CERTIFICATE-----\n"


def write_ca_file(folder: Path) -> Path:
    """``CA_PEM`` written as the provider's CA file in ``folder``."""
    path = folder / "provider-ca.pem"
    path.write_text(CA_PEM)
    return path


class Recorder:
    """Stands in for the server: records the program's check (and how many resources existed
    then) and each run of the init SQL; raises the given problems from the check."""

    def __init__(self, *problems: Problem) -> None:
        self.problems = list(problems)
        self.checks: list[tuple[str | None, int]] = []
        self.applied: list[tuple[str, str, str, str | None]] = []

    def check(self, _stack: StackConfig, _plan: Plan, password: str | None) -> None:
        registered = deploy.last_monitor.registered  # type: ignore[attr-defined]
        self.checks.append((password, len(registered)))
        if self.problems:
            raise ConfigError(self.problems)

    def apply(self, server: ExternalPostgres, password: str, sql: str, ca_pem: str | None
              ) -> None:  # fmt: skip
        self.applied.append((server.host, password, sql, ca_pem))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Recorder:
        """In place of ``external.check`` and ``external.apply_init_sql`` for the test."""
        monkeypatch.setattr(external, "check", self.check)
        monkeypatch.setattr(external, "apply_init_sql", self.apply)
        return self
