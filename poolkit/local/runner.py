"""``up``, ``down`` and ``status`` of one stack: the steps in order, each delegated."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poolkit import console, external, metrics, node_apps
from poolkit import secrets as stack_secrets
from poolkit.config import NAMESPACE, ConfigError, Problem, StackConfig
from poolkit.envfile import write_private
from poolkit.layouts import local_layout
from poolkit.local import apps, backup_schedule, exporters, files
from poolkit.local import external as local_external
from poolkit.local.apps import Replica
from poolkit.local.errors import LocalError
from poolkit.local.host import Host
from poolkit.local.machine import (
    PACKAGE_ROOT,
    ServiceUser,
    Tools,
    check_reachable,
    detect_tools,
    require_prepared_statements,
    service_user,
)
from poolkit.local.pgbouncer import (
    PgBouncer,
    admin_url,
    console_hosts,
    is_pgbouncer,
    paused_if_possible,
    stats_url,
)
from poolkit.local.postgres import Postgres, wait_for_orphans
from poolkit.local.processes import port_in_use, port_listening, process_user, read_pid, terminate
from poolkit.local.progress import Journal, Progress
from poolkit.local.state import SUPERVISOR, Paths, StackState
from poolkit.peering import Peer
from poolkit.render import S3_CA, pgbouncer_peers, render_all
from poolkit.sizing import Plan, plan
from poolkit.split import PEERING_SINCE

PAUSE_TIMEOUT_S = 5.0
"""How long `up` lets PAUSE wait for running transactions before a Postgres restart."""
POOL_COLUMNS = ("database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used",
                "maxwait")  # fmt: skip


@dataclass
class UpResult:
    stack: StackConfig
    plan: Plan
    tools: Tools
    user: str
    state_dir: Path
    env_files: list[Path]
    actions: list[str] = field(default_factory=list)
    apps: list[Replica] = field(default_factory=list)
    seconds: float = 0.0


def installed_stack(stack: StackConfig, tools: Tools, progress: Progress) -> StackConfig:
    """``stack`` with the installed server versions in place of the declared ones."""
    declared = (stack.postgres.version, stack.pgbouncer.version)
    stack = dataclasses.replace(
        stack,
        postgres=dataclasses.replace(stack.postgres, version=tools.pg_major),
        pgbouncer=dataclasses.replace(stack.pgbouncer, version=tools.pgbouncer_version),
    )
    if declared != (tools.pg_major, tools.pgbouncer_version):
        progress.note(f"using the installed PostgreSQL {tools.pg_version} and PgBouncer "
                      f"{tools.pgbouncer_version} (the stack declares {declared[0]} and "
                      f"{declared[1]})")  # fmt: skip
    if (stack.pgbouncer.processes or 1) > 1 and stack.pgbouncer.version_tuple < PEERING_SINCE:
        raise ConfigError([Problem(
            f"{NAMESPACE}:pgbouncer.processes", stack.pgbouncer.processes,
            f"needs PgBouncer 1.19 or newer to peer the processes, and this machine has "
            f"{tools.pgbouncer_version} ({tools.pgbouncer})",
            "run ./scripts/bootstrap (it builds PgBouncer 1.24), point POOLKIT_PGBOUNCER at a "
            "1.19+ binary, or set processes: 1",
        )])  # fmt: skip
    if stack.pgbouncer.max_prepared_statements and stack.pgbouncer.version_tuple < (1, 21):
        progress.warn(f"max_prepared_statements is ignored: PgBouncer "
                      f"{tools.pgbouncer_version} does not support it")  # fmt: skip
    return stack


@dataclass
class Running:
    """What runs before ``up`` changes anything (stale pid files cleaned and noted)."""

    postgres: int | None
    pgbouncer: int | None
    apps: dict[str, int]
    notes: list[str]
    exporters: dict[str, int] = field(default_factory=dict)


class Runner:
    """One stack's state dir and the processes it describes."""

    def __init__(self, state_dir: Path, progress: Progress | None = None):
        self.paths = Paths(state_dir.resolve())
        self.progress = progress or Progress()
        self.notes: list[str] = []

    # -- what runs --

    def running(self) -> Running:
        notes: list[str] = []
        wait_for_orphans(self.paths, notes)
        postgres = self.paths.postgres_pid(notes)
        bouncers = [pid for name in self.paths.supervised() if is_pgbouncer(name)
                    and (pid := self.paths.supervisor(name, notes))]  # fmt: skip
        bouncer = bouncers[0] if bouncers else None
        running_apps = {n: p for n in self.paths.supervised() if n.startswith("app-")
                        and (p := self.paths.supervisor(n, notes))}  # fmt: skip
        read_pid(self.paths.run / "pgbouncer.pid", "pgbouncer", notes if not bouncer else None)
        running_exporters = {n: p for n in self.paths.supervised() if metrics.is_exporter(n)
                             and (p := self.paths.supervisor(n, notes))}  # fmt: skip
        return Running(postgres, bouncer, running_apps, notes, running_exporters)

    # -- up --

    def up(self, stack: StackConfig, project_root: Path, env_file: Path) -> UpResult:
        started_at = time.monotonic()
        fresh = not self.paths.root.exists()
        try:
            with self.paths.lock():
                return self._up(stack, project_root, env_file.resolve(), started_at)
        except BaseException:
            if fresh:  # nothing of this stack existed before: leave nothing behind either
                shutil.rmtree(self.paths.root, ignore_errors=True)
            raise

    def _up(self, stack: StackConfig, project_root: Path, env_file: Path, t0: float) -> UpResult:
        paths, progress = self.paths, self.progress
        tools = detect_tools()
        require_prepared_statements(tools)
        user = service_user()
        check_reachable(paths.root, user, "the state dir")
        # The supervisors run as that user and import poolkit from the checkout.
        check_reachable(PACKAGE_ROOT, user, "poolkit's code", listable=True)
        stack = installed_stack(stack, tools, progress)
        the_plan = plan(stack)
        kept = paths.kept_passphrase.read_text().strip() if paths.kept_passphrase.is_file() else ""
        credentials = stack_secrets.resolve(stack, user.name, stack_secrets.load(paths.secrets),
                                            kept)  # fmt: skip
        admin_password = None
        if stack.postgres.external:  # checked before anything is created
            admin_password = stack_secrets.external_admin_password(stack)
            external.check(stack, the_plan, admin_password)
        layout = local_layout(stack, paths.root, user.name)
        rendered = render_all(stack, the_plan, credentials, layout)
        if not stack.postgres.external:
            self._check_data_version(stack, tools)
        replicas = apps.replicas(the_plan, rendered)
        node_missing = node_apps.unavailable_reason(project_root) if any(
            r.runtime == "node" for r in replicas) else None  # fmt: skip
        if node_missing:
            skipped = sorted({r.app for r in replicas if r.runtime == "node"})
            progress.warn(f"TypeScript app(s) {', '.join(skipped)} not started: {node_missing}")
            replicas = [r for r in replicas if r.runtime != "node"]
        if replicas:
            check_reachable(project_root, user, "the project")

        old = paths.load_state()
        now = self.running()
        for note in now.notes:
            progress.note(note)
        exporter_ports = exporters.ports(stack, the_plan)
        self._check_ports(stack, replicas, now, old, exporter_ports)
        exporters.check_installed(stack)

        result = UpResult(stack=stack, plan=the_plan, tools=tools, user=user.name,
                          state_dir=paths.root, env_files=[], apps=replicas)  # fmt: skip
        journal = Journal(progress, result.actions)
        host = Host(paths, tools.pgbin, user)
        try:
            paths.mkdirs(user, data=not stack.postgres.external)
            stack_secrets.save(paths.secrets, credentials)
            paths.kept_passphrase.unlink(missing_ok=True)  # secrets.json holds it again
            changed = files.write_conf(paths.conf, rendered, user)
            if stack.backup.enabled and stack.backup.s3_ca_file:  # repo1-storage-ca-file
                files.copy_private(stack.backup.s3_ca_file, paths.conf / S3_CA, user)
            rotated = stack.uses_tls and files.ensure_tls(paths.conf, user, stack)
            recorded = self._state(stack, tools, user, replicas, project_root, old,
                                   pgbouncer_peers(the_plan, layout), exporter_ports)
            paths.save_state(recorded)
            if stack.postgres.external:
                assert admin_password is not None
                local_external.converge(stack, host, admin_password, changed,
                                        bool(old and old.external_applied), journal)  # fmt: skip
                paths.save_state(dataclasses.replace(recorded, external_applied=True))
            else:
                Postgres(host).converge(stack, tools.pg_version, project_root,
                                        credentials.superuser, changed, now.postgres, journal,
                                        self._pause_for_restart(now, old, credentials))  # fmt: skip
                if stack.backup.enabled:
                    self._ensure_backups(stack, user, journal)
                backup_schedule.converge(host, stack, paths.supervisor(backup_schedule.NAME),
                                         changed, journal)  # fmt: skip
            bouncer = PgBouncer(host, str(tools.pgbouncer), pgbouncer_peers(the_plan, layout))
            bouncer.converge(
                stack, tools.pgbouncer_version, credentials, changed, now.pgbouncer, old, journal
            )
            if rotated:
                self._reload_certificates(host, bouncer, stack, credentials, journal)
            old_apps = old.app_records() if old else {}
            apps.converge(host, project_root, replicas, now.apps, old_apps, changed, journal)
            exporters.converge(host, stack, the_plan, layout, credentials, now.exporters,
                               journal)  # fmt: skip
        except BaseException:
            journal.rollback()
            raise
        result.env_files = files.write_env_files(rendered, env_file)
        env_files = sorted({*recorded.env_files, *map(str, result.env_files)})
        paths.save_state(dataclasses.replace(recorded, env_files=env_files))
        if not result.actions:
            result.actions.append("nothing to change: every process was already running")
        result.seconds = time.monotonic() - t0
        return result

    def _ensure_backups(self, stack: StackConfig, user: ServiceUser, journal: Journal) -> None:
        """The repository folder and pgBackRest's stanza, so archiving works from the start."""
        from poolkit import backup
        from poolkit.backup_targets import LocalTarget
        from poolkit.layouts import BACKUP_DIR
        from poolkit.local.machine import own

        if stack.backup.repo == "posix":
            repo = self.paths.root / BACKUP_DIR
            repo.mkdir(mode=0o700, exist_ok=True)
            own(repo, user)
        with self.progress.step(f"pgBackRest stanza {stack.stack} ({stack.backup.repo})"):
            try:
                backup.ensure_stanza(LocalTarget(stack, self.paths.root))
            except backup.RepositoryMismatch as error:
                self.progress.warn(str(error))  # the kept backups wait for a restore
            except (backup.BackupError, backup.BackupRefused) as error:
                raise LocalError(str(error)) from None

    def _reload_certificates(
        self, host: Host, bouncer: PgBouncer, stack: StackConfig,
        credentials: stack_secrets.Secrets, journal: Journal,
    ) -> None:
        """A re-issued certificate: Postgres and PgBouncer read it on reload; clients stay
        connected and new connections get it (same CA, so they keep verifying)."""
        with self.progress.step("reloading Postgres and PgBouncer (new TLS certificate)"):
            if not stack.postgres.external:
                Postgres(host).reload()
            bouncer.reload(credentials, stack.pgbouncer.port)
        journal.actions.append("re-issued the TLS server certificate (same CA) and reloaded")

    def _pause_for_restart(
        self, now: Running, old: StackState | None, credentials: stack_secrets.Secrets
    ) -> Callable[[], AbstractContextManager[None]]:
        """PAUSE on the running PgBouncer around a Postgres restart, so no client is dropped."""
        if not (now.pgbouncer and old):
            return contextlib.nullcontext
        port, database = old.pgbouncer_port, old.database
        running = old.peers()
        admins = [admin_url(credentials, port, host) for host in console_hosts(running)]

        @contextlib.contextmanager
        def paused_all() -> Iterator[None]:
            with contextlib.ExitStack() as stack:
                for admin in admins:
                    stack.enter_context(paused_if_possible(admin, database, PAUSE_TIMEOUT_S,
                                                           self.progress.warn))  # fmt: skip
                yield

        return paused_all

    def _check_data_version(self, stack: StackConfig, tools: Tools) -> None:
        pg_version_file = self.paths.data / "PG_VERSION"
        if pg_version_file.exists():
            found = pg_version_file.read_text().strip()
            if found != str(tools.pg_major):
                raise LocalError(
                    f"{self.paths.data} holds a PostgreSQL {found} cluster, but this machine runs "
                    f"PostgreSQL {tools.pg_major}. Keep it and install PostgreSQL {found}, or "
                    f"delete it: poolkit down --stack {stack.stack} --purge (loses its data)"
                )

    @staticmethod
    def _check_ports(
        stack: StackConfig, replicas: list[Replica], now: Running, old: StackState | None,
        exporter_ports: dict[str, int],
    ) -> None:  # fmt: skip
        """Every port a process of ours will newly bind must be free, checked up front."""
        old_apps = old.app_records() if old else {}
        wanted = []
        same_postgres = bool(now.postgres and old and old.postgres_port == stack.postgres.port)
        if not stack.postgres.external and not same_postgres:  # an external one runs elsewhere
            wanted.append((stack.postgres.port, "poolkit:postgres.port"))
        if not (now.pgbouncer and old and old.pgbouncer_port == stack.pgbouncer.port):
            wanted.append((stack.pgbouncer.port, "poolkit:pgbouncer.port"))
        for replica in replicas:
            if not (
                replica.key in now.apps
                and old_apps.get(replica.key, {}).get("port") == replica.port
            ):
                wanted.append((replica.port, f"app {replica.app} (replica {replica.index})"))
        for name, port in exporter_ports.items():
            if not (name in now.exporters and old and old.exporter_ports.get(name) == port):
                wanted.append((port, f"poolkit:monitoring ({name})"))
        busy = [f"{port} ({what})" for port, what in wanted if port_in_use(port)]
        if busy:
            raise LocalError(
                f"port already in use on 127.0.0.1: {', '.join(busy)}. Stop whatever listens "
                "there, or give the stack other ports in its stack file; nothing was started"
            )

    @staticmethod
    def _state(
        stack: StackConfig,
        tools: Tools,
        user: ServiceUser,
        replicas: list[Replica],
        project_root: Path,
        old: StackState | None,
        peers_of: tuple[Peer, ...],
        exporter_ports: dict[str, int],
    ) -> StackState:
        return StackState(
            stack=stack.stack, user=user.name, pgbin=str(tools.pgbin), pg_major=tools.pg_major,
            pgbouncer=str(tools.pgbouncer), pgbouncer_version=tools.pgbouncer_version,
            postgres_port=stack.postgres.port, pgbouncer_port=stack.pgbouncer.port,
            database=stack.database.name, app_user=stack.database.app_user,
            project_root=str(project_root), apps=[r.record() for r in replicas],
            env_files=old.env_files if old else [],
            pgbouncer_peers=[dataclasses.asdict(peer) for peer in peers_of],
            external_applied=bool(old and old.external_applied),
            exporter_ports=exporter_ports,
        )  # fmt: skip

    # -- rolling restart --

    def restart_pgbouncer(self) -> list[str]:
        """Restart the PgBouncer processes one at a time (the others keep the port served)."""
        with self.paths.lock():
            state = self.paths.load_state()
            recorded = state.peers() if state else ()
            if not state or not recorded or not any(
                is_pgbouncer(n) and self.paths.supervisor(n) for n in self.paths.supervised()
            ):
                raise LocalError("PgBouncer is not running: run poolkit up first")
            host = Host(self.paths, Path(state.pgbin), service_user())
            bouncer = PgBouncer(host, state.pgbouncer, recorded)
            major, minor = state.pgbouncer_version.split(".")[:2]
            credentials = stack_secrets.load(self.paths.secrets)
            done = bouncer.rolling_restart(
                (int(major), int(minor)), state.pgbouncer_port,
                admin=credentials.pgbouncer_admin if credentials else None)  # fmt: skip
        if len(recorded) == 1:
            done.append("one process only: new connections were refused while it restarted "
                        "(poolkit:pgbouncer.processes 2+ keeps the port served)")  # fmt: skip
        return done

    # -- down / status --

    def down(self, purge: bool, purge_backups: bool = False) -> list[str]:
        """Stop the processes; ``purge``: delete the state dir, but for the backup repository
        and its passphrase unless ``purge_backups``."""
        if not self.paths.root.exists():
            return [f"nothing to do: {self.paths.root} does not exist"]
        with self.paths.lock():
            return self._down(purge, purge_backups)

    def _down(self, purge: bool, purge_backups: bool = False) -> list[str]:
        done: list[str] = []
        state = self.paths.load_state()
        if self.paths.run.is_dir():
            # Apps first (they hold pooled connections), then PgBouncer, then Postgres.
            for name in sorted(self.paths.supervised(), key=is_pgbouncer):
                pid = self.paths.supervisor(name)
                if pid:
                    with self.progress.step(f"stopping {name}"):
                        terminate(pid, SUPERVISOR)
                    done.append(f"stopped {name}")
        if self.paths.data.is_dir() and self.paths.postgres_pid():
            pgbin = Path(state.pgbin) if state else detect_tools().pgbin
            with self.progress.step("stopping PostgreSQL"):
                Postgres(Host(self.paths, pgbin, service_user())).stop()
            done.append("stopped PostgreSQL")
        if purge:
            for env_file in state.env_files if state else []:
                Path(env_file).unlink(missing_ok=True)
                done.append(f"deleted {env_file}")
            passphrase = self._passphrase()
            if purge_backups or not passphrase:
                shutil.rmtree(self.paths.root)
                done.append(f"deleted {self.paths.root} (data, configs, secrets, logs"
                            f"{', backups' if passphrase else ''})")  # fmt: skip
            else:
                done += self._purge_keeping_backups(passphrase)
        return done or ["nothing was running"]

    def _passphrase(self) -> str:
        """The backup repository's passphrase, if the stack has one."""
        if self.paths.kept_passphrase.is_file():
            return self.paths.kept_passphrase.read_text().strip()
        credentials = stack_secrets.load(self.paths.secrets) if self.paths.secrets.is_file() \
            else None
        return credentials.backup_passphrase if credentials else ""

    def _purge_keeping_backups(self, passphrase: str) -> list[str]:
        """Delete all but the repository; keep its passphrase (0600) for the next ``up``."""
        keep = {self.paths.backups.name, self.paths.kept_passphrase.name}
        for entry in self.paths.root.iterdir():
            if entry.name in keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        write_private(self.paths.kept_passphrase, passphrase + "\n")
        where = (f"the backup repository {self.paths.backups} and its passphrase"
                 if self.paths.backups.is_dir() else "the S3 repository's passphrase")
        return [f"deleted data, configs, secrets and logs in {self.paths.root}",
                f"kept {where} ({self.paths.kept_passphrase}): the next `poolkit up` of this "
                "stack uses them and `poolkit restore` brings the data back; add "
                "--purge-backups to delete them too"]

    def stats_urls(self) -> list[str]:
        """The stats console of each PgBouncer process, by peer id (TCP reaches any one of
        several, so each through its socket dir); empty without a stack."""
        state, credentials = self.paths.load_state(), stack_secrets.load(self.paths.secrets)
        if not (state and credentials):
            return []
        peers = state.peers() or (Peer(1, "", "", "", ""),)
        return [stats_url(credentials, state.pgbouncer_port, host) for host in console_hosts(peers)]

    def status(self) -> dict[str, Any]:
        """What runs, as what user, on which port; PgBouncer's pool counters."""
        state = self.paths.load_state()
        components: list[dict[str, Any]] = []

        def entry(name: str, pid: int | None, port: int | None, child: int | None = None) -> None:
            shown = child or pid
            components.append({
                "name": name, "running": pid is not None, "pid": shown, "port": port,
                "user": process_user(shown) if shown else None,
                "listening": bool(port and pid and port_listening(port)),
            })  # fmt: skip

        entry("postgres", self.paths.postgres_pid(), state.postgres_port if state else None)
        bouncer = None
        for name in [n for n in self.paths.supervised() if is_pgbouncer(n)] or ["pgbouncer"]:
            pid = self.paths.supervisor(name)
            bouncer = bouncer or pid
            child = read_pid(self.paths.run / f"{name}.pid", "pgbouncer") if pid else None
            entry(name, pid, state.pgbouncer_port if state else None, child)
        for app in state.apps if state else []:
            entry(app["key"], self.paths.supervisor(app["key"]), app["port"])
        for name, port in (state.exporter_ports if state else {}).items():
            entry(name, self.paths.supervisor(name), port)
        if backup_schedule.NAME in self.paths.supervised():
            entry(backup_schedule.NAME, self.paths.supervisor(backup_schedule.NAME), None)
        pools: list[dict[str, Any]] = []
        if bouncer:
            with contextlib.suppress(Exception):
                for process, url in enumerate(self.stats_urls(), 1):
                    pools += [{"process": process} | {k: row[k] for k in POOL_COLUMNS}
                              for row in console.pools(url)
                              if row["database"] != "pgbouncer"]  # fmt: skip
        return {"stack": state.stack if state else None, "state_dir": str(self.paths.root),
                "initialised": (self.paths.data / "PG_VERSION").exists(),
                "components": components, "pools": pools,
                "env_files": state.env_files if state else []}  # fmt: skip
