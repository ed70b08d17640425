"""Credentials of a stack: taken from the user or generated once, then kept.

Salts are made once and stored with the passwords, so every render of ``userlist.txt`` and the
init SQL is byte-stable and causes no needless restart.
"""

from __future__ import annotations

import base64
import json
import os
import secrets as random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from poolkit import scram
from poolkit.config import (
    S3_SECRET_ENV,
    S3_SECRET_KEY,
    ConfigError,
    Encrypted,
    Problem,
    StackConfig,
    password_from_env,
)

ADMIN_USER = "pgbouncer_admin"
STATS_USER = "pgbouncer_stats"
MONITOR_USER = "poolkit_monitor"
"""Postgres login role of postgres_exporter: pg_monitor, nothing else."""
EXPORTER_USERS = frozenset({STATS_USER, MONITOR_USER})
"""Logins of the exporters, whose Go driver (lib/pq) refuses fewer SCRAM iterations than
RFC 7677's 4096. An exporter connects once and stays connected, so the rounds cost nothing."""


@dataclass(frozen=True)
class Credential:
    user: str
    password: str
    salt: str
    """Base64 of the SCRAM salt."""
    iterations: int = scram.DEFAULT_ITERATIONS

    @property
    def verifier(self) -> str:
        return scram.verifier(self.password, base64.b64decode(self.salt), self.iterations)

    def __repr__(self) -> str:
        return f"Credential(user={self.user!r}, password='***')"


@dataclass(frozen=True)
class Secrets:
    superuser: Credential
    migrator: Credential
    app: Credential
    pgbouncer_admin: Credential
    """PgBouncer console user allowed to PAUSE, RESUME and RELOAD."""
    pgbouncer_stats: Credential
    """PgBouncer console user that may only run SHOW commands."""
    monitor: Credential | None = None
    """Postgres role of postgres_exporter (pg_monitor). None where a target makes none."""
    backup_passphrase: str = field(default="", repr=False)
    """pgBackRest's repository cipher passphrase (aes-256-cbc); generated once, kept."""
    backup_s3_key_secret: str = field(default="", repr=False)
    """The S3 repository's secret key, when the stack uses one (never saved by poolkit)."""


CREDENTIALS = tuple(f.name for f in fields(Secrets) if f.type.startswith("Credential"))
"""Every credential field; ``monitor`` may be None (a target that makes no such role)."""


def generate_password() -> str:
    """A long random password that needs no escaping anywhere (URL-safe alphabet)."""
    return random.token_urlsafe(24)


def new_salt() -> str:
    return base64.b64encode(random.token_bytes(scram.SALT_BYTES)).decode()


def iterations_for(generated: bool, user: str | None = None) -> int:
    """SCRAM iterations: fewer for generated passwords, PostgreSQL's default for chosen ones
    and for the exporters' logins (:data:`EXPORTER_USERS`)."""
    if generated and user not in EXPORTER_USERS:
        return scram.GENERATED_ITERATIONS
    return scram.DEFAULT_ITERATIONS


def _credential(user: str, password: str | None, previous: Credential | None) -> Credential:
    iterations = iterations_for(generated=password is None, user=user)
    if previous and previous.user == user and password in (None, previous.password):
        if previous.iterations == iterations:
            return previous
        password = previous.password  # same password, a verifier with the rounds now wanted
    return Credential(user=user, password=password or generate_password(), salt=new_salt(),
                      iterations=iterations)  # fmt: skip


def _given_password(stack: StackConfig, key: str) -> str | None:
    value = getattr(stack.database, key)
    if isinstance(value, Encrypted):
        raise ConfigError([Problem(
            f"poolkit:{key}", "secure: …",
            "is encrypted by Pulumi, which only `pulumi up` can decrypt",
            "for local targets export it in the environment instead "
            "(see README, 'Passwords'), or remove it to let poolkit generate one",
        )])  # fmt: skip
    return password_from_env(key) or value


def external_admin_password(stack: StackConfig) -> str | None:
    """The external Postgres admin role's password: never generated, never kept by the kit."""
    return _given_password(stack, "external_admin_password")


def generate_passphrase() -> str:
    """A repository cipher passphrase: 384 random bits, URL-safe."""
    return random.token_urlsafe(48)


def given_passphrase(stack: StackConfig) -> str:
    """``poolkit:backup_passphrase`` in clear text, else "" (an encrypted one is for Pulumi:
    the local target keeps its own in ``secrets.json``)."""
    value = stack.backup_passphrase
    return value if isinstance(value, str) else ""


def s3_key_secret(stack: StackConfig) -> str:
    """The S3 secret key for the local target: the environment, else the stack file."""
    value = os.environ.get(S3_SECRET_ENV) or stack.backup_s3_key_secret or ""
    if isinstance(value, Encrypted):
        raise ConfigError([Problem(
            f"poolkit:{S3_SECRET_KEY}", "secure: …",
            "is encrypted by Pulumi, which only `pulumi up` can decrypt",
            f"for the local target export {S3_SECRET_ENV} instead",
        )])  # fmt: skip
    return value


def resolve(stack: StackConfig, superuser: str, previous: Secrets | None = None,
            kept_passphrase: str = "") -> Secrets:
    """Credentials for ``stack``: given passwords win, then the previous ones, then new ones
    (the passphrase: given, previous, ``kept_passphrase`` of a kept repository, new)."""
    db = stack.database
    backup = stack.backup
    return Secrets(
        backup_passphrase=given_passphrase(stack) or (previous and previous.backup_passphrase)
        or kept_passphrase or (generate_passphrase() if backup.enabled else ""),
        backup_s3_key_secret=s3_key_secret(stack) if backup.repo == "s3" else "",
        superuser=_credential(superuser, None, previous and previous.superuser),
        migrator=_credential(
            db.migrator_user, _given_password(stack, "migrator_password"),
            previous and previous.migrator,
        ),
        app=_credential(
            db.app_user, _given_password(stack, "app_password"), previous and previous.app
        ),
        pgbouncer_admin=_credential(ADMIN_USER, None, previous and previous.pgbouncer_admin),
        pgbouncer_stats=_credential(STATS_USER, None, previous and previous.pgbouncer_stats),
        monitor=_credential(MONITOR_USER, None, previous and previous.monitor),
    )  # fmt: skip


def save(path: Path, secrets: Secrets) -> None:
    """Write ``secrets`` as JSON readable by the owner only (0600 from the first byte)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        data: dict[str, object] = {name: asdict(value) for name in CREDENTIALS
                                    if (value := getattr(secrets, name)) is not None}
        if secrets.backup_passphrase:  # the S3 key is never saved
            data["backup_passphrase"] = secrets.backup_passphrase
        json.dump(data, handle, indent=2)
    os.chmod(path, 0o600)


def load(path: Path) -> Secrets | None:
    """The secrets saved at ``path``, or None when there are none yet."""
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return Secrets(**{name: Credential(**data[name]) for name in CREDENTIALS if name in data},
                   backup_passphrase=data.get("backup_passphrase", ""))  # fmt: skip
