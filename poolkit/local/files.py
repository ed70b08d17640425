"""Rendered files on disk: write what changed, read settings back to see which keys moved."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

from poolkit import tls
from poolkit.envfile import write_private
from poolkit.local.errors import LocalError
from poolkit.local.machine import ServiceUser, own
from poolkit.render import TLS_CERT, TLS_KEY


def conf_settings(text: str) -> dict[str, str]:
    """``name = value`` lines of a rendered postgresql.conf (quotes removed)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^\s*([a-z_][a-z0-9_.]*)\s*=\s*(.*?)\s*$", line)
        if match and not line.lstrip().startswith("#"):
            value = match.group(2)
            if len(value) >= 2 and value[0] == value[-1] == "'":
                value = value[1:-1].replace("''", "'")
            values[match.group(1)] = value
    return values


def ini_settings(text: str) -> dict[str, str]:
    """The ``[pgbouncer]`` section of a rendered pgbouncer.ini."""
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=(";", "#"))
    parser.read_string(text)
    return dict(parser["pgbouncer"]) if parser.has_section("pgbouncer") else {}


def changed_keys(old: dict[str, str], new: dict[str, str]) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def write_conf(conf: Path, files: dict[str, str], user: ServiceUser) -> dict[str, str]:
    """Write what differs from the last render; return ``{name: previous text}`` of changes.

    A file written for the first time is not a change (nothing runs with an older one).
    """
    changed = {}
    for name, text in files.items():
        path = conf / name
        try:
            previous: str | None = path.read_text(encoding="utf-8")
        except OSError:
            previous = None
        if previous == text:
            continue
        if previous is not None:
            changed[name] = previous
        write_private(path, text)
        own(path, user)
    return changed


def ensure_tls(conf: Path, user: ServiceUser) -> None:
    """A self-signed key and certificate for PgBouncer's client TLS, made once and kept."""
    key, cert = conf / TLS_KEY, conf / TLS_CERT
    if key.exists() and cert.exists():
        return
    try:
        key_pem, cert_pem = tls.self_signed("localhost")
    except (OSError, subprocess.CalledProcessError) as error:
        raise LocalError(f"making a self-signed TLS certificate failed: {error}") from None
    for path, text in ((key, key_pem), (cert, cert_pem)):
        write_private(path, text)
        own(path, user)


def write_env_files(files: dict[str, str], env_file: Path) -> list[Path]:
    """``.env`` to ``env_file``, ``.env.<app>`` beside it as ``<env_file>.<app>`` (0600)."""
    written = []
    for name, text in files.items():
        if name == ".env":
            target = env_file
        elif name.startswith(".env."):
            target = env_file.with_name(f"{env_file.name}.{name[len('.env.') :]}")
        else:
            continue
        write_private(target, text)
        written.append(target)
    return written
