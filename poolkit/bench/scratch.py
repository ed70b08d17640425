"""Scratch PgBouncers: the naive baseline and the experiments, in a folder of their own.

They log in to Postgres as the migrator role (the only other role pg_hba admits) with a
verifier this module sets; the caller restores the migrator's own verifier at the end.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from poolkit import secrets as stack_secrets
from poolkit.bench.pgbench import last_line
from poolkit.bench.settings import (
    BOUNCER_START_S,
    NAIVE_MAX_CLIENT_CONN,
    NAIVE_POOL_SIZE,
    BenchError,
)
from poolkit.config import StackConfig
from poolkit.envfile import write_private
from poolkit.launch import launch
from poolkit.layouts import local_layout
from poolkit.render import render_pgbouncer_ini, render_template, render_userlist
from poolkit.sizing import plan


@dataclass
class Scratch:
    """PgBouncer processes this bench started, in a folder of their own."""

    name: str
    port: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]


class ScratchBouncers:
    """Start PgBouncers from given ini texts and stop exactly those at the end."""

    def __init__(self, root: Path, binary: Path, user: Any):
        self.root = root
        self.binary = binary
        self.user = user
        self.running: list[Scratch] = []

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.own(path)
        return path

    def own(self, path: Path) -> None:
        if self.user.switch:
            os.chown(path, self.user.uid, self.user.gid)

    def own_tree(self, folder: Path) -> None:
        for path in (folder, *folder.iterdir()):
            self.own(path)

    def write(self, path: Path, text: str) -> None:
        write_private(path, text)
        self.own(path)

    def start(self, name: str, port: int, inis: list[Path]) -> Scratch:
        scratch = Scratch(name, port)
        self.running.append(scratch)
        for ini in inis:
            ini.with_suffix(".log").unlink(missing_ok=True)  # wait for this start's "process up"
            scratch.processes.append(launch(
                [str(self.binary), str(ini)], cwd=ini.parent, log=ini.with_suffix(".out"),
                append=False, new_session=True, as_user=self.user.popen_kwargs(),
            ))  # fmt: skip
        deadline = time.monotonic() + BOUNCER_START_S
        for ini, process in zip(inis, scratch.processes, strict=True):
            logfile = ini.with_suffix(".log")
            while "process up" not in _read(logfile):
                if process.poll() is not None or time.monotonic() > deadline:
                    self.stop(scratch)
                    logs = _read(logfile) + _read(ini.with_suffix(".out"))
                    raise BenchError(f"PgBouncer {name} did not start: {last_line(logs)}")
                time.sleep(0.05)
        return scratch

    def stop(self, scratch: Scratch) -> None:
        for process in scratch.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in scratch.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if scratch in self.running:
            self.running.remove(scratch)

    def stop_all(self) -> None:
        for scratch in list(self.running):
            self.stop(scratch)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def naive_ini(folder: Path, port: int, stack: StackConfig, user: str) -> str:
    """The naive baseline's pgbouncer.ini (``templates/bench/naive-pgbouncer.ini.j2``)."""
    return render_template(
        "bench/naive-pgbouncer.ini.j2", database=stack.database.name,
        postgres_port=stack.postgres.port, port=port, folder=str(folder), user=user,
        default_pool_size=NAIVE_POOL_SIZE, max_client_conn=NAIVE_MAX_CLIENT_CONN,
    )  # fmt: skip


def kit_ini(stack: StackConfig, processes: int, folder: Path, port: int, index: int,
            superuser: str, reuseport: bool) -> str:
    """The kit's own pgbouncer.ini (core renderer) for one of ``processes`` processes, relocated
    to ``folder`` and ``port``: each process gets its share of the budget, as the kit splits it;
    the experiment shares the port itself (``reuseport``), without peering (no cancels here)."""
    split = plan(dataclasses.replace(
        stack, pgbouncer=dataclasses.replace(stack.pgbouncer, processes=processes)))
    one_file = dataclasses.replace(split, pool=dataclasses.replace(
        split.pool, split=dataclasses.replace(split.pool.split, processes=1)))
    run = folder / f"run{index}"
    run.mkdir(mode=0o700, exist_ok=True)
    layout = dataclasses.replace(
        local_layout(stack, folder, superuser),
        pgbouncer_port=port, public_pgbouncer_port=port, pgbouncer_dir=str(folder),
        pgbouncer_socket_dir=str(run), pgbouncer_pidfile=str(run / "pgbouncer.pid"),
        pgbouncer_logfile=str(folder / f"{index}.log"),
    )  # fmt: skip
    text = render_pgbouncer_ini(stack, one_file, layout)
    if reuseport:
        text += render_template("bench/so-reuseport.ini.j2")
    return text


def userlist(credential: stack_secrets.Credential, secrets: stack_secrets.Secrets) -> str:
    """The core's userlist renderer with the experiment's role in the app slot."""
    return render_userlist(dataclasses.replace(secrets, app=credential))


def set_verifier(direct_url: str, credential: stack_secrets.Credential) -> None:
    """Give the DIRECT_URL role ``credential``'s verifier (a role may change its own)."""
    with psycopg.connect(direct_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("ALTER ROLE CURRENT_USER PASSWORD {}").format(
            sql.Literal(credential.verifier)))  # fmt: skip


def migrator_with(direct_url: str, iterations: int) -> stack_secrets.Credential:
    """The DIRECT_URL role's password under a fresh salt and ``iterations``."""
    parts = conninfo_to_dict(direct_url)
    return stack_secrets.Credential(
        user=str(parts["user"]), password=str(parts["password"]),
        salt=stack_secrets.new_salt(), iterations=iterations,
    )  # fmt: skip
