"""What every measurement shares: the stack that is up, its URLs, and the scratch PgBouncers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from poolkit import secrets as stack_secrets
from poolkit.bench.pgbench import PgbenchRun, pgbench
from poolkit.bench.scratch import (
    Scratch,
    ScratchBouncers,
    kit_ini,
    migrator_with,
    naive_ini,
    set_verifier,
    userlist,
)
from poolkit.bench.settings import STOCK_ITERATIONS, Settings
from poolkit.config import StackConfig
from poolkit.sizing import Plan
from poolkit.urls import postgres_url


@dataclass
class Bench:
    """One bench run: the stack is up, ``env`` holds its URLs."""

    stack: StackConfig
    plan: Plan
    env: Mapping[str, str]
    secrets: stack_secrets.Secrets
    settings: Settings
    pgbench_binary: Path
    bouncer_pid: Callable[[], list[int]]
    postmaster: Callable[[], int | None]
    scratch: ScratchBouncers
    superuser: str
    say: Callable[[str], None]
    naive_port: int
    scratch_port: int
    """Ports of the naive and of the experimental PgBouncers (127.0.0.1)."""
    naive_credential: stack_secrets.Credential | None = None
    """The migrator with stock 4096 iterations, which the naive PgBouncer logs in with."""

    @property
    def direct(self) -> str:
        return self.env["DIRECT_URL"]

    @property
    def pooled(self) -> str:
        return self.env["POOLED_DATABASE_URL"]

    def migrator_url(self, port: int, dbname: str | None = None) -> str:
        """The migrator's URL through a scratch PgBouncer on ``port``."""
        parts = conninfo_to_dict(self.direct)
        return postgres_url(str(parts["user"]), str(parts["password"]), "127.0.0.1", port,
                            dbname or str(parts["dbname"]))  # fmt: skip

    def verifier_for(self, arm: str) -> None:
        """The migrator's verifier for ``arm``: stock 4096 for the naive PgBouncer, else as shipped.

        The naive PgBouncer logs in as the migrator (the only other role pg_hba admits); the
        direct arms must still pay only what a shipped stack pays.
        """
        naive = arm == "naive" and self.naive_credential is not None
        set_verifier(self.direct, self.naive_credential if naive else self.secrets.migrator)

    def start_naive(self) -> Scratch:
        """The naive baseline PgBouncer, the migrator with a stock 4096-iteration verifier."""
        port = self.naive_port
        folder = self.scratch.folder("naive")
        credential = migrator_with(self.direct, STOCK_ITERATIONS)
        self.naive_credential = credential
        set_verifier(self.direct, credential)
        self.scratch.write(folder / "userlist.txt", userlist(credential, self.secrets))
        ini = folder / "0.ini"
        self.scratch.write(ini, naive_ini(folder, port, self.stack, credential.user))
        return self.scratch.start("naive", port, [ini])

    def start_kit(
        self,
        iterations: int,
        processes: int = 1,
        credential: stack_secrets.Credential | None = None,
    ) -> Scratch:
        """PgBouncer(s) with the kit's rendered config; the migrator gets a verifier of
        ``iterations`` (or ``credential``'s, which Postgres is assumed to hold already)."""
        port = self.scratch_port
        name = f"kit-{iterations}-x{processes}"
        folder = self.scratch.folder(name)
        if credential is None:
            credential = migrator_with(self.direct, iterations)
            set_verifier(self.direct, credential)
        self.scratch.write(folder / "userlist.txt", userlist(credential, self.secrets))
        inis = []
        for index in range(processes):
            ini = folder / f"{index}.ini"
            self.scratch.write(ini, kit_ini(self.stack, processes, folder, port, index,
                                            self.superuser, reuseport=processes > 1))  # fmt: skip
            self.scratch.own_tree(folder)
            inis.append(ini)
        return self.scratch.start(name, port, inis)

    def pgbench(self, url: str, arm: str, *, connect_each: bool,
                bouncer_pids: list[int] | None = None) -> PgbenchRun:
        """pgbench for the configured seconds, Postgres's CPU accounted."""
        return pgbench(self.pgbench_binary, url, arm, connect_each=connect_each,
                       seconds=self.settings.pgbench_seconds, bouncer_pids=bouncer_pids,
                       postmaster=self.postmaster())  # fmt: skip
