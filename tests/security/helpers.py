"""What the security tests need to know about a stack: its secrets, a superuser, its TLS."""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import psutil
import psycopg
from cryptography import x509
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import LocalStack


def secrets(stack: LocalStack) -> dict[str, dict[str, Any]]:
    return json.loads((stack.state_dir / "secrets.json").read_text())


def password_forms(stack: LocalStack) -> set[str]:
    """Every password of the stack, as is and percent-encoded (as URLs carry it)."""
    found = set()
    for credential in secrets(stack).values():  # credentials, and the backup passphrase
        password = credential["password"] if isinstance(credential, dict) else credential
        found |= {password, quote(password, safe="")}
    return found


def env_passwords(env: dict[str, str], known: Iterable[str] = ()) -> set[str]:
    """``known`` and every password in ``env``'s ``*_URL`` values, as written and decoded;
    no empty one (it would be found in any text)."""
    found = set(known)
    for key, value in env.items():
        if key.endswith("_URL") and (password := urlsplit(value).password):
            found |= {password, unquote(password)}
    return {p for p in found if p}


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


def presented_serial(host: str, port: int, ca_file: Path) -> int:
    """The serial of the certificate PgBouncer presents now (Postgres' SSLRequest, then TLS)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection((host, port), timeout=5) as raw:
        raw.sendall((8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"))
        assert raw.recv(1) == b"S"
        with context.wrap_socket(raw, server_hostname=host) as wrapped:
            der = wrapped.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der or b"").serial_number
