"""Where ``poolkit.backup`` runs pgBackRest: the local processes, or the Postgres container.

Each target maps the same few operations (run a command as the server's OS user, make or
remove a directory, switch the data directory) onto its own mechanics. Paths come from the
target's Layout.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

from poolkit.backup import BackupError, BackupRefused, Done
from poolkit.config import StackConfig
from poolkit.layouts import COMPONENT_LABEL, STACK_LABEL, docker_layout, local_layout
from poolkit.render import Layout

PROMOTE_POLL_S = 0.3
INIT_SQL_APPLIED = "poolkit-init.sql.sha256"
"""In the data directory: the sha256 of the init.sql last applied (by poolkit-initdb)."""
RECOVERY_SIGNAL = "recovery.signal"
"""In the data directory until recovery has ended and the server is promoted. Recovery is
watched through it and ``pg_isready``, without logging in: a restored cluster may hold older
passwords than the stack's until init.sql is applied."""


def _not_enabled(stack: StackConfig, where: str) -> BackupRefused:
    return BackupRefused(f"stack {stack.stack} has no pgbackrest.conf in {where}: set "
                         "poolkit:backup.enabled: true, run poolkit up, then try again")


class _Paths:
    """The layout's pgBackRest paths, shared by both targets."""

    def _take(self, stack: StackConfig, layout: Layout) -> None:
        self.stanza = stack.stack
        self.conf = layout.pgbackrest_conf
        self.pgpass = layout.pgpass
        self.restore_dir = layout.restore_dir
        self.previous_dir = layout.previous_dir
        self.data_directory = layout.data_directory
        self.socket_dir = layout.postgres_socket_dir
        self.port = layout.postgres_port
        self.superuser = layout.superuser
        self.init_sql = f"{layout.config_dir}/init.sql"

    def _argv(self, *args: str) -> list[str]:
        return ["pgbackrest", f"--config={self.conf}", f"--stanza={self.stanza}", *args]

    def _ready_argv(self) -> list[str]:
        return ["pg_isready", "-q", "-h", self.socket_dir, "-p", str(self.port)]


class LocalTarget(_Paths):
    """The local runner's state dir: pgBackRest as the service user, ``pg_ctl`` to switch."""

    def __init__(self, stack: StackConfig, state_dir: Path):
        from poolkit.local.host import Host
        from poolkit.local.machine import service_user
        from poolkit.local.state import Paths

        self.paths = Paths(state_dir.resolve())
        state = self.paths.load_state()
        if state is None:
            raise BackupRefused(f"no local stack in {self.paths.root}: run poolkit up first")
        user = service_user()
        self._take(stack, local_layout(stack, self.paths.root, user.name))
        if not Path(self.conf).is_file():
            raise _not_enabled(stack, str(self.paths.conf))
        self.host = Host(self.paths, Path(state.pgbin), user)
        self.project_root = state.project_root

    def pgbackrest(self, *args: str, timeout: float = 3600) -> Done:
        done = self.host.run(self._argv(*args), self.host.env(PGPASSFILE=self.pgpass),
                             timeout=timeout)  # fmt: skip
        return Done(done.returncode, done.stdout, done.stderr)

    def prepare_restore_dir(self, path: str) -> None:
        from poolkit.local.machine import own

        folder = Path(path)
        folder.mkdir(mode=0o700)
        own(folder, self.host.user)

    def remove_dir(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def switch(self, restored: str, keep: str, wait_s: float) -> None:
        """Stop Postgres (if it runs), keep its data, move the restored data in, start it."""
        from poolkit.local.machine import own
        from poolkit.local.postgres import Postgres, wait_for_orphans

        server = Postgres(self.host)
        with self.paths.lock():  # no `poolkit up` or `down` meanwhile
            wait_for_orphans(self.paths, [])
            if server.pid():
                server.stop()
            data = self.paths.data
            if data.exists():
                Path(keep).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                own(Path(keep).parent, self.host.user)
                data.rename(keep)
            Path(restored).rename(data)
            server.start()
        self._wait_promoted(wait_s)
        if self._init_sql_applied():
            return
        # The restored roles are those of the backup's time (older passwords, or another
        # deployment's): apply this stack's init.sql, as `up` does when it changes.
        with self.paths.lock():
            server.stop()
            server.initdb(Path(self.project_root))
            server.start()
        self._wait_promoted(wait_s)

    def _init_sql_applied(self) -> bool:
        applied = self.paths.data / INIT_SQL_APPLIED
        wanted = hashlib.sha256(Path(self.init_sql).read_bytes()).hexdigest()
        return applied.is_file() and applied.read_text().strip() == wanted

    def _wait_promoted(self, wait_s: float) -> None:
        ready = self._ready_argv()
        ready[0] = str(self.host.pgbin / ready[0])
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if (not (self.paths.data / RECOVERY_SIGNAL).exists()
                    and self.host.run(ready, timeout=30).returncode == 0):
                return
            time.sleep(PROMOTE_POLL_S)
        raise BackupError(f"PostgreSQL did not finish recovery within {wait_s:.0f} s; see "
                          f"{self.paths.log / 'postgres.log'}")  # fmt: skip


class DockerTarget(_Paths):
    """The stack's Postgres container, driven through the Docker SDK.

    The restore fills a folder inside the data directory on the same volume (pgbackrest.conf
    excludes it from backups); the switch is a marker file that the image's entrypoint acts on
    at the next start (two renames on one volume, then the marker goes). Pulumi's state does
    not change: same container, same volumes, same uploads.
    """

    SWITCH_MARKER = ".poolkit-switch"

    def __init__(self, stack: StackConfig, client: Any = None):
        import docker

        self._take(stack, docker_layout(stack))
        self.client = client or docker.from_env()
        selector = [f"{STACK_LABEL}={stack.stack}", f"{COMPONENT_LABEL}=postgres"]
        found = self.client.containers.list(all=True, filters={"label": selector})
        if len(found) != 1:
            raise BackupRefused(f"stack {stack.stack} has {len(found)} Postgres containers here "
                                "(labels " + ", ".join(selector) + "): deploy it first "
                                "(poolkit up --target pulumi)")  # fmt: skip
        self.container = found[0]
        self.name = self.container.name
        self._ensure_running()
        if self._exec(["test", "-f", self.conf]).returncode != 0:
            raise _not_enabled(stack, f"{self.name}:{self.conf}")

    def _ensure_running(self) -> None:
        self.container.reload()
        if self.container.status != "running":
            self.container.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.container.reload()
            if self.container.status == "running":
                return
            time.sleep(0.5)
        raise BackupError(f"container {self.name} does not stay running: docker logs {self.name}")

    def _exec(self, argv: list[str]) -> Done:
        result = self.container.exec_run(argv, user="postgres", demux=True,
                                         environment={"PGPASSFILE": self.pgpass})  # fmt: skip
        out, err = result.output if result.output else (b"", b"")
        return Done(result.exit_code, (out or b"").decode(errors="replace"),
                    (err or b"").decode(errors="replace"))

    def pgbackrest(self, *args: str, timeout: float = 3600) -> Done:
        del timeout  # exec_run has no timeout; pgBackRest's own limits apply
        return self._exec(self._argv(*args))

    def prepare_restore_dir(self, path: str) -> None:
        done = self._exec(["install", "-d", "-m", "0700", path])
        if done.returncode != 0:
            raise BackupError(f"cannot create {path} in {self.name}: {done.output}")

    def remove_dir(self, path: str) -> None:
        self._exec(["rm", "-rf", "--", path])

    def switch(self, restored: str, keep: str, wait_s: float) -> None:
        marker = f"{self.data_directory}/{self.SWITCH_MARKER}"
        done = self._exec(["sh", "-c", 'printf "%s\\n" "$1" > "$2"', "switch", keep, marker])
        if done.returncode != 0:
            raise BackupError(f"cannot write {marker} in {self.name}: {done.output}")
        # SIGINT (fast shutdown) as everywhere else, then the entrypoint switches at start.
        self.container.stop(timeout=120)
        self.container.start()
        self._wait_promoted(wait_s)
        applied = f"{self.data_directory}/{INIT_SQL_APPLIED}"
        same = self._exec(["sh", "-c", 'test "$(cat "$1" 2>/dev/null)" = '
                           '"$(sha256sum < "$2" | cut -d " " -f 1)"', "same", applied,
                           self.init_sql])  # fmt: skip
        if same.returncode != 0:
            # The restored roles are those of the backup's time (older passwords, or another
            # deployment's): the entrypoint applies this stack's init.sql at the next start.
            self.container.stop(timeout=120)
            self.container.start()
            self._wait_promoted(wait_s)

    def _wait_promoted(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            self.container.reload()
            promoted = ["sh", "-c", 'test ! -e "$1" && shift && exec "$@"', "promoted",
                        f"{self.data_directory}/{RECOVERY_SIGNAL}", *self._ready_argv()]
            if self.container.status == "running" and self._exec(promoted).returncode == 0:
                return
            time.sleep(PROMOTE_POLL_S)
        raise BackupError(f"PostgreSQL did not finish recovery within {wait_s:.0f} s: "
                          f"docker logs {self.name}")  # fmt: skip
