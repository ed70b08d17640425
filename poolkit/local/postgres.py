"""The stack's PostgreSQL server: create the cluster, start, stop, restart, reload, converge."""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from poolkit.config import StackConfig
from poolkit.envfile import write_private
from poolkit.local.errors import LocalError
from poolkit.local.files import changed_keys, conf_settings
from poolkit.local.host import Host
from poolkit.local.machine import PACKAGE_ROOT, check_reachable, own
from poolkit.local.processes import pid_alive, pid_exists, processes_in, wait_for
from poolkit.local.progress import Journal
from poolkit.local.state import POSTGRES_PID, Paths
from poolkit.secrets import Credential

START_TIMEOUT_S = 60
ORPHAN_WAIT_S = 15.0
INITDB_SCRIPT = "images/postgres/poolkit-initdb"


def wait_for_orphans(paths: Paths, notes: list[str]) -> None:
    """After a postmaster crash, wait until it and its backends are gone for good.

    A killed postmaster leaves ``postmaster.pid`` behind; its backends exit only when they
    notice, and the dead postmaster stays a zombie until init reaps it. Postgres refuses to
    start while either exists (its lock files name that pid), and starting beside working
    backends would defeat its interlock: so wait for both, or refuse.
    """
    try:
        first = (paths.data / POSTGRES_PID).read_text(encoding="utf-8").split("\n", 1)[0].strip()
    except OSError:
        return
    if not first.isdigit() or pid_alive(int(first), "postgres"):
        return
    def leftovers() -> list[int]:
        return processes_in(paths.data) + ([int(first)] if pid_exists(int(first)) else [])

    left = leftovers()
    if not left:
        return
    started = time.monotonic()
    if not wait_for(lambda: not leftovers(), ORPHAN_WAIT_S, lambda: True):
        raise LocalError(
            f"the postmaster (pid {first}) is gone, but processes of it remain: "
            f"{', '.join(map(str, leftovers()))} (backends still working in {paths.data}, or "
            "the postmaster not yet reaped). Wait for them to exit, then run poolkit up again"
        )
    notes.append(f"waited {time.monotonic() - started:.1f} s for {len(left)} process(es) of "
                 "the crashed postmaster to go")  # fmt: skip


class Postgres:
    """``pg_ctl`` on the stack's data dir, with the rendered config, as the service user."""

    def __init__(self, host: Host):
        self.host = host
        self.paths = host.paths
        self.log = host.paths.log / "postgres.log"

    def pid(self, notes: list[str] | None = None) -> int | None:
        return self.paths.postgres_pid(notes)

    def pg_ctl(
        self, action: str, *extra: str, timeout: float = START_TIMEOUT_S + 10
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.host.pgbin / "pg_ctl"), action, "-D", str(self.paths.data), *extra]
        return self.host.run(argv, timeout=timeout)

    def _server_options(self) -> list[str]:
        conf = self.paths.conf / "postgresql.conf"
        return ["-o", f"-c config_file={shlex.quote(str(conf))}"]

    def _remove_stale_socket_locks(self) -> None:
        """Socket lock files of a postmaster that is gone or a zombie (after SIGKILL, before its
        parent reaps it): PostgreSQL only checks that the pid exists, so it would refuse to start
        ("lock file … already exists")."""
        for lock in self.paths.run.glob(".s.PGSQL.*.lock"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(lock.read_text(encoding="utf-8").split("\n", 1)[0])
                if not pid_alive(pid, ""):
                    lock.unlink()

    def start(self, restart: bool = False) -> None:
        """``pg_ctl start`` (or ``restart -m fast``) and wait until it accepts connections."""
        if not restart:
            self._remove_stale_socket_locks()
        action = ["restart", "-m", "fast"] if restart else ["start"]
        done = self.pg_ctl(action[0], *action[1:], "-l", str(self.log), "-w",
                           "-t", str(START_TIMEOUT_S), *self._server_options())  # fmt: skip
        if done.returncode != 0:
            raise LocalError(f"PostgreSQL did not {action[0]}: {done.stderr.strip()}", self.log)

    def restart(self) -> None:
        self.start(restart=True)

    def stop(self) -> None:
        done = self.pg_ctl("stop", "-m", "fast", "-w", "-t", "60", timeout=70)
        if done.returncode != 0 and self.pid():
            raise LocalError(f"PostgreSQL did not stop: {done.stderr.strip()}", self.log)

    def reload(self) -> None:
        done = self.pg_ctl("reload")
        if done.returncode != 0:
            raise LocalError(f"pg_ctl reload failed: {done.stderr.strip()}", self.log)

    def postmaster_contexts(self) -> dict[str, str]:
        """Setting name -> context (``postmaster`` ones need a restart)."""
        done = self.host.run([str(self.host.pgbin / "postgres"), "--describe-config"],
                             timeout=30)  # fmt: skip
        return {cols[0]: cols[1] for line in done.stdout.splitlines()
                if len(cols := line.split("\t")) > 1}  # fmt: skip

    def initdb(self, project_root: Path) -> None:
        """Create the cluster with images/postgres/poolkit-initdb (peer auth, private socket)."""
        script = next((p for p in (project_root / INITDB_SCRIPT, PACKAGE_ROOT / INITDB_SCRIPT)
                       if p.is_file()), None)  # fmt: skip
        if script is None:
            raise LocalError(f"{INITDB_SCRIPT} is missing from the project")
        check_reachable(script, self.host.user, "the init script")
        env = self.host.env(PGBIN=str(self.host.pgbin), POOLKIT_SUPERUSER=self.host.user.name)
        done = self.host.run(["/bin/sh", str(script), str(self.paths.data),
                              str(self.paths.conf / "init.sql")], env, timeout=300)  # fmt: skip
        if done.returncode != 0:
            log = self.paths.log / "initdb.log"
            log.write_text(done.stdout + done.stderr, encoding="utf-8")
            raise LocalError("creating the PostgreSQL cluster failed (poolkit-initdb)", log)

    def apply_init_sql(self, superuser: Credential, port: int) -> None:
        """Run init.sql again as the superuser (SCRAM over the private socket; it converges)."""
        passfile = self.paths.run / "init.pgpass"

        def escaped(text: str) -> str:
            return text.replace("\\", "\\\\").replace(":", "\\:")

        write_private(passfile, f"*:*:*:{escaped(superuser.user)}:"
                                f"{escaped(superuser.password)}\n")  # fmt: skip
        own(passfile, self.host.user)
        argv = [str(self.host.pgbin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                "-h", str(self.paths.run), "-p", str(port), "-U", superuser.user,
                "-d", "postgres", "-f", str(self.paths.conf / "init.sql")]  # fmt: skip
        try:
            done = self.host.run(argv, self.host.env(PGPASSFILE=str(passfile)), 60)
        finally:
            passfile.unlink(missing_ok=True)
        if done.returncode != 0:
            log = self.paths.log / "init-sql.log"
            redacted = re.sub(r"SCRAM-SHA-256\$\S+", "SCRAM-SHA-256$<redacted>",
                              done.stdout + done.stderr)  # fmt: skip
            log.write_text(redacted, encoding="utf-8")
            raise LocalError("applying init.sql failed", log)

    def converge(
        self,
        stack: StackConfig,
        version: str,
        project_root: Path,
        superuser: Credential,
        changed: dict[str, str],
        pid: int | None,
        journal: Journal,
        around_restart: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        """Create, start, reload or restart the server so that it runs the rendered files.

        A restart of a running server happens inside ``around_restart()`` (PgBouncer's PAUSE).
        """
        progress, port = journal.progress, stack.postgres.port
        fresh = not (self.paths.data / "PG_VERSION").exists()
        if fresh:
            with progress.step("creating the PostgreSQL cluster (initdb + init.sql)"):
                self.initdb(project_root)
            journal.actions.append("created the PostgreSQL cluster")
        if pid is None:
            with progress.step(f"starting PostgreSQL {version} on 127.0.0.1:{port}"):
                self.start()
            journal.undo.append(self.stop)
            journal.actions.append(f"started PostgreSQL on port {port}")
        elif "postgresql.conf" in changed or "pg_hba.conf" in changed:
            self._apply_conf_change(changed.get("postgresql.conf", ""), journal, around_restart)
        if not fresh and "init.sql" in changed:
            with progress.step("applying init.sql (roles, passwords, grants changed)"):
                self.apply_init_sql(superuser, port)
            journal.actions.append("re-applied init.sql")

    def _apply_conf_change(
        self,
        previous: str,
        journal: Journal,
        around_restart: Callable[[], AbstractContextManager[None]],
    ) -> None:
        """Restart when a postmaster-context setting moved, else reload."""
        progress = journal.progress
        keys = changed_keys(
            conf_settings(previous),
            conf_settings((self.paths.conf / "postgresql.conf").read_text()),
        )
        contexts = self.postmaster_contexts() if keys else {}
        needs_restart = [k for k in keys if contexts.get(k) == "postmaster"]
        if needs_restart:
            title = (f"restarting PostgreSQL: {', '.join(needs_restart)} changed and only "
                     "take effect at a restart")  # fmt: skip
            with progress.step(title), around_restart():
                self.restart()
            journal.actions.append(f"restarted PostgreSQL ({', '.join(needs_restart)})")
        else:
            what = ", ".join(keys) or "pg_hba.conf"
            with progress.step(f"reloading PostgreSQL ({what} changed)"):
                self.reload()
            journal.actions.append(f"reloaded PostgreSQL ({what})")
