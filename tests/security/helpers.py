"""What the security tests need to know about a local stack: its secrets and a superuser."""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

import psutil
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import LocalStack


def secrets(stack: LocalStack) -> dict[str, dict[str, Any]]:
    return json.loads((stack.state_dir / "secrets.json").read_text())


def password_forms(stack: LocalStack) -> set[str]:
    """Every password of the stack, as is and percent-encoded (as URLs carry it)."""
    found = set()
    for credential in secrets(stack).values():
        found |= {credential["password"], quote(credential["password"], safe="")}
    return found


def leaks(text: str, forms: set[str]) -> int:
    """How many of ``forms`` occur in ``text`` (a count: a test never prints a password)."""
    return sum(form in text for form in forms)


def superuser(stack: LocalStack, dbname: str = "postgres") -> psycopg.Connection[Any]:
    """The bootstrap superuser over the stack's unix socket (the only place pg_hba admits it)."""
    credential = secrets(stack)["superuser"]
    return psycopg.connect(host=str(stack.state_dir / "run"), port=stack.postgres_port,
                           user=credential["user"], password=credential["password"],
                           dbname=dbname, connect_timeout=5, autocommit=True)  # fmt: skip


def with_params(url: str, **params: Any) -> str:
    """``url`` with libpq parameters replaced or added."""
    return make_conninfo(url, **params)


def user_of(url: str) -> str:
    return str(conninfo_to_dict(url)["user"])


def command_lines() -> str:
    """Every process's arguments, as ``ps -eww -o args`` would show them."""
    lines = [" ".join(process.info["cmdline"] or [])
             for process in psutil.process_iter(["cmdline"])]  # fmt: skip
    return "\n".join(lines) + f"\n(pid {os.getpid()} included)"
