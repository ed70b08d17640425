"""Rendered files on disk: write what changed, read settings back to see which keys moved."""

from __future__ import annotations

import configparser
import re
import shutil
from pathlib import Path

from poolkit import tls
from poolkit.config import Encrypted, StackConfig
from poolkit.envfile import write_private
from poolkit.layouts import CA_FILE_NAME, certificate_names
from poolkit.local.errors import LocalError
from poolkit.local.machine import ServiceUser, own
from poolkit.render import TLS_CERT, TLS_KEY

CA_KEY_NAME = "tls-ca.key"
GENERATION_NAME = "tls-generation"


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


def copy_private(source: str, target: Path, user: ServiceUser) -> None:
    """Copy a file given on this machine (a CA) into the state dir: 0600, the service user's."""
    shutil.copyfile(source, target)
    target.chmod(0o600)
    own(target, user)


def ensure_tls(conf: Path, user: ServiceUser, stack: StackConfig) -> bool:
    """The servers' key and certificate and the clients' CA in ``conf``; True when re-issued.

    Generated: the CA is made once and kept (``tls-ca.crt``/``.key``); the server certificate
    is issued again when it expires within 30 days, lacks a name the stack now lists, or
    ``poolkit:tls.generation`` moved: clients holding the CA keep verifying after reconnect.
    Given (stack values ``tls_certificate``/``tls_key``/``tls_ca``): checked, then written.
    """
    if stack.tls.given:
        return _write_given(conf, user, stack)
    names = certificate_names(stack)
    ca_cert, ca_key = conf / CA_FILE_NAME, conf / CA_KEY_NAME
    cert, key, generation = conf / TLS_CERT, conf / TLS_KEY, conf / GENERATION_NAME
    if not (ca_cert.exists() and ca_key.exists()):
        ca = tls.new_ca(f"poolkit {stack.stack} CA")
        _write(ca_key, ca.key, user)
        _write(ca_cert, ca.cert, user, private=False)
        cert.unlink(missing_ok=True)
    ca = tls.KeyPair(cert=ca_cert.read_text(), key=ca_key.read_text())
    wanted = str(stack.tls.generation)
    current = generation.read_text().strip() if generation.exists() else None
    fresh = not (cert.exists() and key.exists())
    if not fresh and current == wanted and not tls.needs_renewal(cert.read_text(), names):
        return False
    server = tls.issue_server(ca, names)
    _write(key, server.key, user)
    _write(cert, server.cert, user, private=False)
    _write(generation, wanted, user, private=False)
    return not fresh


def _write_given(conf: Path, user: ServiceUser, stack: StackConfig) -> bool:
    given = {"tls_certificate": stack.tls.certificate, "tls_key": stack.tls.key,
             "tls_ca": stack.tls.ca}  # fmt: skip
    if any(isinstance(v, Encrypted) for v in given.values()):
        raise LocalError("poolkit:tls_certificate/tls_key/tls_ca are encrypted by Pulumi, which "
                         "only `pulumi up` can decrypt: for the local target put the PEM text "
                         "in the stack file, or remove them to generate a certificate")
    cert_pem, key_pem, ca_pem = (str(v) if v else None for v in given.values())
    problems = tls.check_given(cert_pem or "", key_pem or "", ca_pem, stack.tls.names)
    if problems:
        raise LocalError("the given TLS certificate is unusable:\n  - " + "\n  - ".join(problems))
    before = (conf / TLS_CERT).read_text() if (conf / TLS_CERT).exists() else None
    _write(conf / TLS_KEY, key_pem or "", user)
    _write(conf / TLS_CERT, cert_pem or "", user, private=False)
    if ca_pem:
        _write(conf / CA_FILE_NAME, ca_pem, user, private=False)
    return before is not None and before != cert_pem


def _write(path: Path, text: str, user: ServiceUser, private: bool = True) -> None:
    """Keys 0600; certificates are public (0644) so clients on this host can read the CA."""
    write_private(path, text)
    if not private:
        path.chmod(0o644)
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
