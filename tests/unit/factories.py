"""Small factories: the minimal stack config a test needs, as a stack file would hold it."""

from __future__ import annotations

from typing import Any

from poolkit.config import StackConfig, parse_stack
from poolkit.secrets import Credential, Secrets


def stack(stack_name: str = "test", **sections: Any) -> StackConfig:
    """``stack(postgres={"cpus": 4}, apps=[...])`` -> a validated StackConfig."""
    return parse_stack({f"poolkit:{key}": value for key, value in sections.items()}, stack_name)


def credential(user: str, password: str = "correct-horse-battery") -> Credential:
    return Credential(user=user, password=password, salt="c2FsdHNhbHRzYWx0c2FsdA==")


def secrets(
    app_password: str = "app-password-123", migrator_password: str = "owner-pw-123456"
) -> Secrets:
    return Secrets(
        superuser=credential("postgres"),
        migrator=credential("migrator", migrator_password),
        app=credential("app", app_password),
        pgbouncer_admin=credential("pgbouncer_admin"),
        pgbouncer_stats=credential("pgbouncer_stats"),
    )


def to_kb(value: str) -> int:
    """Parse a postgresql.conf memory value such as ``1GB`` or ``7864kB`` into kB."""
    for unit, factor in (("kB", 1), ("MB", 1024), ("GB", 1024**2), ("TB", 1024**3)):
        if value.endswith(unit):
            return int(value[: -len(unit)]) * factor
    raise ValueError(value)


def first_ini(files: dict[str, str]) -> str:
    """PgBouncer process 1's file: ``pgbouncer.ini`` alone, ``pgbouncer-1.ini`` among several."""
    return files.get("pgbouncer.ini") or files["pgbouncer-1.ini"]
