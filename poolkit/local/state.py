"""A stack's state dir: its layout, ``state.json``, the lock, and which process runs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from poolkit.local.errors import LocalError
from poolkit.local.machine import ServiceUser, own
from poolkit.local.processes import read_pid
from poolkit.peering import Peer

POSTGRES_PID = "postmaster.pid"
SUPERVISOR = "poolkit.supervisor"
"""What a supervisor's command line holds (pid files are checked against it)."""


@dataclass(frozen=True)
class StackState:
    """What ``state.json`` records: what ``up`` started, where, as whom, with what.

    Saved and loaded only through :meth:`Paths.save_state` and :meth:`Paths.load_state`.
    """

    stack: str
    user: str
    """The OS user the servers run as."""
    pgbin: str
    pg_major: int
    pgbouncer: str
    """Path of the PgBouncer binary."""
    pgbouncer_version: str
    postgres_port: int
    pgbouncer_port: int
    database: str
    app_user: str
    project_root: str
    apps: list[dict[str, Any]] = field(default_factory=list)
    """``Replica.record()`` of each sample-app replica."""
    env_files: list[str] = field(default_factory=list)
    """Every .env file ``up`` wrote (``down --purge`` deletes them)."""
    exporter_ports: dict[str, int] = field(default_factory=dict)
    """Port of each exporter ``up`` started (``poolkit:monitoring``), by supervised name."""
    pgbouncer_peers: list[dict[str, Any]] = field(default_factory=list)
    """``Peer`` of each PgBouncer process, as a dict (``peers()`` gives them back)."""
    external_applied: bool = False
    """Whether the external Postgres got the kit's roles and functions (bring your own)."""

    def peers(self) -> tuple[Peer, ...]:
        """The PgBouncer processes ``up`` started."""
        return tuple(Peer(**peer) for peer in self.pgbouncer_peers)

    def app_records(self) -> dict[str, dict[str, Any]]:
        """The apps' records by replica key (``app-<name>-<index>``)."""
        return {record["key"]: record for record in self.apps}

    @classmethod
    def from_json(cls, text: str) -> StackState | None:
        """The state in ``text``, or None when it is no state of this version."""
        try:
            data = json.loads(text)
            return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        except (ValueError, TypeError):
            return None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def conf(self) -> Path:
        return self.root / "conf"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets.json"

    @property
    def backups(self) -> Path:
        """The pgBackRest repository (``repo: posix``)."""
        return self.root / "backups"

    @property
    def kept_passphrase(self) -> Path:
        """The repository's passphrase kept by ``down --purge`` (0600) for the next ``up``."""
        return self.root / "backup-passphrase"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    def supervisor_pid(self, name: str) -> Path:
        return self.run / f"{name}.supervisor.pid"

    def mkdirs(self, user: ServiceUser, *, data: bool = True) -> None:
        """The state dir and its private folders, owned by the service user (``data=False``:
        no data directory, for an external Postgres)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in (self.data, self.conf, self.run, self.log)[0 if data else 1 :]:
            folder.mkdir(mode=0o700, exist_ok=True)
            folder.chmod(0o700)
            own(folder, user)

    def load_state(self) -> StackState | None:
        """The stack's recorded state; None before the first ``up`` (or when unreadable)."""
        try:
            return StackState.from_json(self.state.read_text(encoding="utf-8"))
        except OSError:
            return None

    def save_state(self, state: StackState) -> None:
        self.state.write_text(state.to_json(), encoding="utf-8")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One poolkit command at a time per state dir."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LocalError(f"another poolkit command is working on {self.root}; "
                                 "wait for it to finish") from None  # fmt: skip
            yield

    # -- what runs --

    def postgres_pid(self, notes: list[str] | None = None) -> int | None:
        return read_pid(self.data / POSTGRES_PID, "postgres", notes)

    def supervisor(self, name: str, notes: list[str] | None = None) -> int | None:
        return read_pid(self.supervisor_pid(name), SUPERVISOR, notes)

    def supervised(self) -> list[str]:
        """Names of every supervisor pid file present (pgbouncer, app-<name>-<i>)."""
        suffix = ".supervisor.pid"
        return sorted(p.name[: -len(suffix)] for p in self.run.glob(f"*{suffix}"))


def default_state_dir(project_root: Path, stack_name: str) -> Path:
    """``--state-dir`` wins, then ``POOLKIT_STATE_DIR``, then ``<project>/.poolkit/<stack>``."""
    given = os.environ.get("POOLKIT_STATE_DIR")
    return Path(given) if given else project_root / ".poolkit" / stack_name
