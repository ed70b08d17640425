"""The local target: Postgres, PgBouncer and the sample apps as processes on this machine.

The runner computes nothing. It detects the installed server versions, puts them into the
stack, and maps ``sizing.plan`` + ``secrets.resolve`` + ``layouts.local_layout`` +
``render.render_all`` onto files under the state dir and processes:

    <state>/data/      the cluster (made once by images/postgres/poolkit-initdb)
    <state>/conf/      the rendered files (secrets ones 0600), the apps' .env copies
    <state>/run/       sockets, pid files       <state>/log/  server and app logs
    <state>/secrets.json (0600)                 <state>/state.json  what runs where

Servers never run as root: as root they run as the ``postgres`` OS user, otherwise as the
invoking user. PgBouncer and each app replica run under ``poolkit.supervisor``.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import fcntl
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from poolkit import console as pgb_console
from poolkit import secrets as stack_secrets
from poolkit import tls
from poolkit.config import StackConfig
from poolkit.envfile import write_private
from poolkit.layouts import local_layout
from poolkit.render import TLS_CERT, TLS_KEY, render_all
from poolkit.sizing import Plan, plan
from poolkit.urls import postgres_url

PG_ROOT = Path("/usr/lib/postgresql")
PG_TOOLS = ("postgres", "initdb", "pg_ctl", "psql")
INSTALL_HINT = "run ./scripts/bootstrap, or: apt-get install -y postgresql pgbouncer"
START_TIMEOUT_S = 60
SERVICE_WAIT_S = 15.0
STOP_WAIT_S = 15.0
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# PgBouncer settings it reads only at start (https://www.pgbouncer.org/config.html).
PGBOUNCER_RESTART_KEYS = frozenset(
    {"listen_addr", "listen_port", "unix_socket_dir", "unix_socket_mode", "unix_socket_group",
     "pidfile", "logfile"}
)  # fmt: skip
POSTGRES_PID = "postmaster.pid"


class LocalError(Exception):
    """A step failed: the message says what and how to fix it; ``log`` is worth a look."""

    def __init__(self, message: str, log: Path | None = None):
        super().__init__(message)
        self.log = log


def log_tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` of a log, or a note that it is empty or missing."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"({path} is empty)"


# --- the machine: tools, user, paths --------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    pgbin: Path
    pg_major: int
    pg_version: str
    pgbouncer: Path
    pgbouncer_version: str


def _first_line(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else ""


def detect_tools() -> Tools:
    """Find PostgreSQL's server binaries and PgBouncer, and their versions."""
    given = os.environ.get("POOLKIT_PGBIN")
    candidates = [Path(given)] if given else sorted(
        (p / "bin" for p in PG_ROOT.glob("*") if p.name.isdigit()),
        key=lambda p: int(p.parent.name), reverse=True,
    )  # fmt: skip
    which = shutil.which("pg_ctl")
    if not given and which:
        candidates.append(Path(which).parent)
    pgbin = next((c for c in candidates if all((c / t).is_file() for t in PG_TOOLS)), None)
    if pgbin is None:
        raise LocalError(f"PostgreSQL server binaries ({', '.join(PG_TOOLS)}) not found "
                         f"under {PG_ROOT}/*/bin or on PATH: {INSTALL_HINT}")  # fmt: skip
    bouncer = os.environ.get("POOLKIT_PGBOUNCER") or shutil.which("pgbouncer")
    if not bouncer and Path("/usr/sbin/pgbouncer").is_file():
        bouncer = "/usr/sbin/pgbouncer"
    if not bouncer or not Path(bouncer).is_file():
        raise LocalError(
            f"pgbouncer not found{f' at {bouncer}' if bouncer else ''}: {INSTALL_HINT}"
        )
    pg_line = _first_line([str(pgbin / "postgres"), "--version"])
    pg_match = re.search(r"\(PostgreSQL\) (\d+)(\.\d+)?", pg_line)
    bouncer_line = _first_line([bouncer, "--version"])
    bouncer_match = re.search(r"PgBouncer (\d+\.\d+(?:\.\d+)?)", bouncer_line)
    if not pg_match or not bouncer_match:
        raise LocalError(f"cannot read the versions of {pgbin / 'postgres'} and {bouncer}")
    return Tools(
        pgbin=pgbin,
        pg_major=int(pg_match.group(1)),
        pg_version=pg_match.group(1) + (pg_match.group(2) or ""),
        pgbouncer=Path(bouncer),
        pgbouncer_version=bouncer_match.group(1),
    )


@dataclass(frozen=True)
class ServiceUser:
    """The OS user the servers run as; also the Postgres superuser's name."""

    name: str
    uid: int
    gid: int
    home: str

    @property
    def switch(self) -> bool:
        """Whether processes must change user (the runner is root)."""
        return os.geteuid() != self.uid

    def popen_kwargs(self) -> dict[str, Any]:
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def service_user() -> ServiceUser:
    """``postgres`` when run as root (initdb refuses root), else the invoking user."""
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise LocalError("running as root, but there is no `postgres` OS user to run the "
                             f"servers as: {INSTALL_HINT} (it creates the user), or run "
                             "poolkit as a normal user") from None  # fmt: skip
    else:
        entry = pwd.getpwuid(os.getuid())
    return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


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
    def state(self) -> Path:
        return self.root / "state.json"

    def supervisor_pid(self, name: str) -> Path:
        return self.run / f"{name}.supervisor.pid"


def default_state_dir(project_root: Path, stack_name: str) -> Path:
    """``--state-dir`` wins, then ``POOLKIT_STATE_DIR``, then ``<project>/.poolkit/<stack>``."""
    given = os.environ.get("POOLKIT_STATE_DIR")
    return Path(given) if given else project_root / ".poolkit" / stack_name


def _traversable(path: Path, user: ServiceUser) -> bool:
    info = path.stat()
    if info.st_uid == user.uid:
        return bool(info.st_mode & stat.S_IXUSR)
    groups = os.getgrouplist(user.name, user.gid)
    if info.st_gid in groups:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def check_reachable(path: Path, user: ServiceUser, what: str) -> None:
    """Fail unless ``user`` can walk down to ``path`` (pytest's tmp dirs are 0700, /root too)."""
    if not user.switch:
        return
    for parent in reversed(path.resolve().parents):
        if not _traversable(parent, user):
            mode = stat.S_IMODE(parent.stat().st_mode)
            raise LocalError(
                f"the `{user.name}` OS user, which runs the servers, cannot reach {what} "
                f"{path}: {parent} has mode {mode:04o}. Use --state-dir under a folder it can "
                f"reach (e.g. /var/tmp/poolkit), or: chmod o+x {parent}"
            )


def _reachable(path: Path, user: ServiceUser) -> bool:
    try:
        check_reachable(path, user, "")
    except LocalError:
        return False
    return True


def service_python(user: ServiceUser) -> tuple[str, list[str]]:
    """A Python the service user can run, and the import paths it needs for psycopg.

    The venv's interpreter may live where that user cannot go (pyenv under /root); then the
    system Python of the same version runs the supervisor and apps with the venv's
    site-packages on PYTHONPATH.
    """
    if not user.switch or _reachable(Path(sys.executable).resolve(), user):
        return sys.executable, []
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    for candidate in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if Path(candidate).is_file() and _reachable(Path(candidate).resolve(), user):
            return candidate, paths
    raise LocalError(
        f"the `{user.name}` OS user cannot run {sys.executable} (it resolves to "
        f"{Path(sys.executable).resolve()}), and there is no python{version} it can run: "
        f"install python{version} (apt-get install -y python3) or make the venv with a "
        "Python outside /root"
    )


def _own(path: Path, user: ServiceUser) -> None:
    if user.switch:
        os.chown(path, user.uid, user.gid)


# --- processes ------------------------------------------------------------------------------


def pid_alive(pid: int, needle: str) -> bool:
    """Whether ``pid`` runs and its command line holds ``needle`` (not a recycled pid/zombie)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    state = stat_line.rpartition(")")[2].split()[0]
    return state != "Z" and needle in cmdline


def read_pid(path: Path, needle: str, notes: list[str] | None = None) -> int | None:
    """The live pid in ``path``; a stale pid file is removed (and noted)."""
    try:
        first = path.read_text(encoding="utf-8").split("\n", 1)[0].strip()
    except OSError:
        return None
    if first.isdigit() and pid_alive(int(first), needle):
        return int(first)
    path.unlink(missing_ok=True)
    if notes is not None:
        notes.append(f"removed stale pid file {path.name} (pid {first or '?'} is not running)")
    return None


def process_user(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return pwd.getpwuid(int(line.split()[1])).pw_name
    except (OSError, KeyError):
        pass
    return "?"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def port_listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float, alive: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if not alive():
            return condition()
        time.sleep(0.05)
    return condition()


def terminate(pid: int, needle: str, timeout: float = STOP_WAIT_S) -> None:
    """SIGTERM, wait, SIGKILL: for supervisors (they stop their child on SIGTERM)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_for(lambda: not pid_alive(pid, needle), timeout, lambda: True):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid, needle), 5, lambda: True)


# --- progress -------------------------------------------------------------------------------


class Progress:
    """Progress lines with a spinner on long steps (rich)."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            with self.console.status(escape(title) + "…"):
                yield
        except BaseException:
            self.console.print(f"[red]✗[/] {escape(title)}")
            raise
        seconds = time.monotonic() - started
        self.console.print(f"[green]✓[/] {escape(title)} [dim]({seconds:.1f} s)[/]")

    def note(self, text: str) -> None:
        self.console.print(f"  {escape(text)}")

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]![/] {escape(text)}")


# --- the runner -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Replica:
    """One sample-app process: ``app-<name>-<index>`` on ``port``."""

    app: str
    style: str
    index: int
    port: int
    env_name: str
    """Which rendered .env it reads: ``.env`` or ``.env.<app>``."""

    @property
    def key(self) -> str:
        return f"app-{self.app}-{self.index}"


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
    apps_note: str = ""
    seconds: float = 0.0


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


def _ini_settings(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=(";", "#"))
    parser.read_string(text)
    return dict(parser["pgbouncer"]) if parser.has_section("pgbouncer") else {}


def _changed_keys(old: dict[str, str], new: dict[str, str]) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


class Runner:
    """One stack's state dir and the processes it describes."""

    def __init__(self, state_dir: Path, progress: Progress | None = None):
        self.paths = Paths(state_dir.resolve())
        self.progress = progress or Progress()
        self.notes: list[str] = []

    # -- small helpers --

    def _env(self, tools: Tools, user: ServiceUser, **extra: str) -> dict[str, str]:
        """A clean environment: no variable of the caller (POOLKIT_*_PASSWORD stays out)."""
        return {
            "PATH": f"{tools.pgbin}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": user.home,
            "USER": user.name,
            "LOGNAME": user.name,
            **extra,
        }

    def _run(
        self,
        argv: list[str],
        user: ServiceUser,
        env: dict[str, str],
        timeout: float = 120,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(argv, env=env, cwd=cwd or self.paths.root, capture_output=True,
                                  text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
                                  **user.popen_kwargs())  # fmt: skip
        except subprocess.TimeoutExpired:
            name = Path(argv[0]).name
            raise LocalError(f"{name} did not finish within {timeout:.0f} s") from None

    def _mkdirs(self, user: ServiceUser) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        for folder in (self.paths.data, self.paths.conf, self.paths.run, self.paths.log):
            folder.mkdir(mode=0o700, exist_ok=True)
            folder.chmod(0o700)
            _own(folder, user)

    def load_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.paths.state.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: dict[str, Any]) -> None:
        self.paths.state.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        with (self.paths.root / ".lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LocalError(f"another poolkit command is working on {self.paths.root}; "
                                 "wait for it to finish") from None  # fmt: skip
            yield

    # -- what runs --

    def postgres_pid(self, notes: list[str] | None = None) -> int | None:
        return read_pid(self.paths.data / POSTGRES_PID, "postgres", notes)

    def supervisor_pid(self, name: str, notes: list[str] | None = None) -> int | None:
        return read_pid(self.paths.supervisor_pid(name), "poolkit.supervisor", notes)

    def supervised(self) -> list[str]:
        """Names of every supervisor pid file present (pgbouncer, app-<name>-<i>)."""
        suffix = ".supervisor.pid"
        return sorted(p.name[: -len(suffix)] for p in self.paths.run.glob(f"*{suffix}"))

    # -- up --

    def up(self, stack: StackConfig, project_root: Path, env_file: Path) -> UpResult:
        started_at = time.monotonic()
        fresh = not self.paths.root.exists()
        try:
            with self._lock():
                return self._up(stack, project_root, env_file.resolve(), started_at)
        except BaseException:
            if fresh:  # nothing of this stack existed before: leave nothing behind either
                shutil.rmtree(self.paths.root, ignore_errors=True)
            raise

    def _up(self, stack: StackConfig, project_root: Path, env_file: Path, t0: float) -> UpResult:
        paths, progress = self.paths, self.progress
        tools = detect_tools()
        user = service_user()
        check_reachable(paths.root, user, "the state dir")
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
        if stack.pgbouncer.max_prepared_statements and stack.pgbouncer.version_tuple < (1, 21):
            progress.warn(f"max_prepared_statements is ignored: PgBouncer "
                          f"{tools.pgbouncer_version} does not support it")  # fmt: skip
        the_plan = plan(stack)
        credentials = stack_secrets.resolve(stack, user.name, stack_secrets.load(paths.secrets))
        layout = local_layout(stack, paths.root, user.name)
        files = render_all(stack, the_plan, credentials, layout)

        pg_version_file = paths.data / "PG_VERSION"
        if pg_version_file.exists():
            found = pg_version_file.read_text().strip()
            if found != str(tools.pg_major):
                raise LocalError(
                    f"{paths.data} holds a PostgreSQL {found} cluster, but this machine runs "
                    f"PostgreSQL {tools.pg_major}. Keep it and install PostgreSQL {found}, or "
                    f"delete it: poolkit down --stack {stack.stack} --purge (loses its data)"
                )

        replicas = self._replicas(stack, the_plan, files)
        adapter = project_root / "apps" / "http_adapter.py"
        apps_note = ""
        if replicas and not adapter.is_file():
            apps_note = f"no sample apps started: {adapter} does not exist yet"
            replicas = []
        if replicas:
            check_reachable(project_root, user, "the project")

        # What runs now (stale pid files are cleaned and noted).
        notes: list[str] = []
        old = self.load_state()
        pg_pid = self.postgres_pid(notes)
        bouncer_pid = self.supervisor_pid("pgbouncer", notes)
        running_apps = {n: p for n in self.supervised() if n.startswith("app-")
                        and (p := self.supervisor_pid(n, notes))}  # fmt: skip
        read_pid(paths.run / "pgbouncer.pid", "pgbouncer", notes if not bouncer_pid else None)
        for note in notes:
            progress.note(note)

        # Ports: every one a process of ours will newly bind must be free, checked up front.
        old_apps = {a["key"]: a for a in old.get("apps", [])}
        wanted = []
        if not (pg_pid and old.get("postgres_port") == stack.postgres.port):
            wanted.append((stack.postgres.port, "poolkit:postgres.port"))
        if not (bouncer_pid and old.get("pgbouncer_port") == stack.pgbouncer.port):
            wanted.append((stack.pgbouncer.port, "poolkit:pgbouncer.port"))
        for replica in replicas:
            if not (
                replica.key in running_apps
                and old_apps.get(replica.key, {}).get("port") == replica.port
            ):
                wanted.append((replica.port, f"app {replica.app} (replica {replica.index})"))
        busy = [f"{port} ({what})" for port, what in wanted if port_in_use(port)]
        if busy:
            raise LocalError(
                f"port already in use on 127.0.0.1: {', '.join(busy)}. Stop whatever listens "
                "there, or give the stack other ports in its stack file; nothing was started"
            )

        result = UpResult(stack=stack, plan=the_plan, tools=tools, user=user.name,
                          state_dir=paths.root, env_files=[], apps=replicas,
                          apps_note=apps_note)  # fmt: skip
        started: list[Callable[[], None]] = []
        try:
            self._mkdirs(user)
            stack_secrets.save(paths.secrets, credentials)
            changed = self._write_conf(files, user)
            if stack.pgbouncer.client_tls:
                self._ensure_tls(user)
            self._save_state(self._state(stack, tools, user, replicas, project_root, old))
            self._postgres(
                stack, tools, user, project_root, credentials, changed, pg_pid, result, started
            )
            self._pgbouncer(stack, tools, user, credentials, changed, bouncer_pid, old, result,
                            started)  # fmt: skip
            self._apps(tools, user, project_root, replicas, running_apps, old_apps, changed,
                       result, started)  # fmt: skip
        except BaseException:
            for undo in reversed(started):
                with contextlib.suppress(Exception):
                    undo()
            raise
        result.env_files = self._write_env_files(files, env_file)
        state = self.load_state()
        state["env_files"] = sorted({*state.get("env_files", []), *map(str, result.env_files)})
        self._save_state(state)
        if not result.actions:
            result.actions.append("nothing to change: every process was already running")
        result.seconds = time.monotonic() - t0
        return result

    def _replicas(self, stack: StackConfig, the_plan: Plan, files: dict[str, str]) -> list[Replica]:
        replicas = []
        for app in the_plan.apps:
            env_name = f".env.{app.name}" if f".env.{app.name}" in files else ".env"
            replicas += [Replica(app.name, app.style, i, app.port + i, env_name)
                         for i in range(app.replicas)]  # fmt: skip
        return replicas

    def _state(
        self,
        stack: StackConfig,
        tools: Tools,
        user: ServiceUser,
        replicas: list[Replica],
        project_root: Path,
        old: dict[str, Any],
    ) -> dict[str, Any]:
        return {
            "stack": stack.stack,
            "user": user.name,
            "pgbin": str(tools.pgbin),
            "pg_major": tools.pg_major,
            "pgbouncer": str(tools.pgbouncer),
            "pgbouncer_version": tools.pgbouncer_version,
            "postgres_port": stack.postgres.port,
            "pgbouncer_port": stack.pgbouncer.port,
            "database": stack.database.name,
            "app_user": stack.database.app_user,
            "project_root": str(project_root),
            "apps": [dataclasses.asdict(r) | {"key": r.key} for r in replicas],
            "env_files": old.get("env_files", []),
        }  # fmt: skip

    def _write_conf(self, files: dict[str, str], user: ServiceUser) -> dict[str, str]:
        """Write what differs from the last render; return ``{name: previous text}`` of changes.

        A file written for the first time is not a change (nothing runs with an older one).
        """
        changed = {}
        for name, text in files.items():
            path = self.paths.conf / name
            try:
                previous: str | None = path.read_text(encoding="utf-8")
            except OSError:
                previous = None
            if previous == text:
                continue
            if previous is not None:
                changed[name] = previous
            write_private(path, text)
            _own(path, user)
        return changed

    def _ensure_tls(self, user: ServiceUser) -> None:
        """A self-signed key and certificate for PgBouncer's client TLS, made once and kept."""
        key, cert = self.paths.conf / TLS_KEY, self.paths.conf / TLS_CERT
        if key.exists() and cert.exists():
            return
        try:
            key_pem, cert_pem = tls.self_signed("localhost")
        except (OSError, subprocess.CalledProcessError) as error:
            raise LocalError(f"making a self-signed TLS certificate failed: {error}") from None
        for path, text in ((key, key_pem), (cert, cert_pem)):
            write_private(path, text)
            _own(path, user)

    def _write_env_files(self, files: dict[str, str], env_file: Path) -> list[Path]:
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

    # -- postgres --

    def _pg_ctl(
        self,
        tools: Tools,
        user: ServiceUser,
        action: str,
        *extra: str,
        timeout: float = START_TIMEOUT_S + 10,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(tools.pgbin / "pg_ctl"), action, "-D", str(self.paths.data), *extra]
        return self._run(argv, user, self._env(tools, user), timeout=timeout)

    def _server_options(self) -> list[str]:
        conf = self.paths.conf / "postgresql.conf"
        return ["-o", f"-c config_file={shlex.quote(str(conf))}"]

    def _start_postgres(self, tools: Tools, user: ServiceUser, restart: bool = False) -> None:
        log = self.paths.log / "postgres.log"
        action = ["restart", "-m", "fast"] if restart else ["start"]
        done = self._pg_ctl(tools, user, action[0], *action[1:], "-l", str(log), "-w",
                            "-t", str(START_TIMEOUT_S), *self._server_options())  # fmt: skip
        if done.returncode != 0:
            raise LocalError(f"PostgreSQL did not {action[0]}: {done.stderr.strip()}", log)

    def stop_postgres(self, tools_pgbin: Path, user: ServiceUser) -> None:
        argv = [str(tools_pgbin / "pg_ctl"), "stop", "-D", str(self.paths.data), "-m", "fast",
                "-w", "-t", "60"]  # fmt: skip
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": user.home}
        done = self._run(argv, user, env, timeout=70)
        if done.returncode != 0 and self.postgres_pid():
            raise LocalError(f"PostgreSQL did not stop: {done.stderr.strip()}",
                             self.paths.log / "postgres.log")  # fmt: skip

    def _postmaster_contexts(self, tools: Tools, user: ServiceUser) -> dict[str, str]:
        done = self._run([str(tools.pgbin / "postgres"), "--describe-config"], user,
                         self._env(tools, user), timeout=30)  # fmt: skip
        return {cols[0]: cols[1] for line in done.stdout.splitlines()
                if len(cols := line.split("\t")) > 1}  # fmt: skip

    def _initdb(self, tools: Tools, user: ServiceUser, project_root: Path) -> None:
        script = next((p for p in (project_root / "images/postgres/poolkit-initdb",
                                   PACKAGE_ROOT / "images/postgres/poolkit-initdb") if p.is_file()),
                      None)  # fmt: skip
        if script is None:
            raise LocalError("images/postgres/poolkit-initdb is missing from the project")
        check_reachable(script, user, "the init script")
        env = self._env(tools, user, PGBIN=str(tools.pgbin), POOLKIT_SUPERUSER=user.name)
        done = self._run(["/bin/sh", str(script), str(self.paths.data),
                          str(self.paths.conf / "init.sql")], user, env, timeout=300)  # fmt: skip
        if done.returncode != 0:
            log = self.paths.log / "initdb.log"
            log.write_text(done.stdout + done.stderr, encoding="utf-8")
            raise LocalError("creating the PostgreSQL cluster failed (poolkit-initdb)", log)

    def apply_init_sql(
        self, tools: Tools, user: ServiceUser, credentials: stack_secrets.Secrets, port: int
    ) -> None:
        """Run init.sql again as the superuser (SCRAM over the private socket; it converges)."""
        passfile = self.paths.run / "init.pgpass"

        def escaped(text: str) -> str:
            return text.replace("\\", "\\\\").replace(":", "\\:")

        write_private(passfile, f"*:*:*:{escaped(user.name)}:"
                                f"{escaped(credentials.superuser.password)}\n")  # fmt: skip
        _own(passfile, user)
        argv = [str(tools.pgbin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                "-h", str(self.paths.run), "-p", str(port), "-U", user.name, "-d", "postgres",
                "-f", str(self.paths.conf / "init.sql")]  # fmt: skip
        try:
            done = self._run(argv, user, self._env(tools, user, PGPASSFILE=str(passfile)), 60)
        finally:
            passfile.unlink(missing_ok=True)
        if done.returncode != 0:
            log = self.paths.log / "init-sql.log"
            redacted = re.sub(r"SCRAM-SHA-256\$\S+", "SCRAM-SHA-256$<redacted>",
                              done.stdout + done.stderr)  # fmt: skip
            log.write_text(redacted, encoding="utf-8")
            raise LocalError("applying init.sql failed", log)

    def _postgres(
        self,
        stack: StackConfig,
        tools: Tools,
        user: ServiceUser,
        project_root: Path,
        credentials: stack_secrets.Secrets,
        changed: dict[str, str],
        pid: int | None,
        result: UpResult,
        started: list[Callable[[], None]],
    ) -> None:
        progress, port = self.progress, stack.postgres.port
        fresh = not (self.paths.data / "PG_VERSION").exists()
        if fresh:
            with progress.step("creating the PostgreSQL cluster (initdb + init.sql)"):
                self._initdb(tools, user, project_root)
            result.actions.append("created the PostgreSQL cluster")
        conf_changed = "postgresql.conf" in changed
        previous = changed.get("postgresql.conf", "")
        if pid is None:
            with progress.step(f"starting PostgreSQL {tools.pg_version} on 127.0.0.1:{port}"):
                self._start_postgres(tools, user)
            started.append(lambda: self.stop_postgres(tools.pgbin, user))
            result.actions.append(f"started PostgreSQL on port {port}")
        elif conf_changed or "pg_hba.conf" in changed:
            keys = _changed_keys(
                conf_settings(previous),
                conf_settings((self.paths.conf / "postgresql.conf").read_text()),
            )
            contexts = self._postmaster_contexts(tools, user) if keys else {}
            needs_restart = [k for k in keys if contexts.get(k) == "postmaster"]
            if needs_restart:
                title = (f"restarting PostgreSQL: {', '.join(needs_restart)} changed and only "
                         "take effect at a restart")  # fmt: skip
                with progress.step(title):
                    self._start_postgres(tools, user, restart=True)
                result.actions.append(f"restarted PostgreSQL ({', '.join(needs_restart)})")
            else:
                what = ", ".join(keys) or "pg_hba.conf"
                with progress.step(f"reloading PostgreSQL ({what} changed)"):
                    done = self._pg_ctl(tools, user, "reload")
                    if done.returncode != 0:
                        raise LocalError(f"pg_ctl reload failed: {done.stderr.strip()}",
                                         self.paths.log / "postgres.log")  # fmt: skip
                result.actions.append(f"reloaded PostgreSQL ({what})")
        if not fresh and "init.sql" in changed:
            with progress.step("applying init.sql (roles, passwords, grants changed)"):
                self.apply_init_sql(tools, user, credentials, port)
            result.actions.append("re-applied init.sql")

    # -- pgbouncer --

    def _spawn_supervised(
        self,
        name: str,
        command: list[str],
        user: ServiceUser,
        env: dict[str, str],
        cwd: Path,
        *options: str,
    ) -> int:
        log = self.paths.log / f"{name}.out.log"
        log.touch(mode=0o600)
        _own(log, user)
        python, _paths = service_python(user)
        argv = [
            python,
            "-m",
            "poolkit.supervisor",
            "--pidfile",
            str(self.paths.supervisor_pid(name)),
            *options,
            "--",
            *command,
        ]
        with log.open("ab") as out:
            try:
                process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                           stdout=out, stderr=out, start_new_session=True,
                                           **user.popen_kwargs())  # fmt: skip
            except OSError as error:
                raise LocalError(f"cannot start the supervisor of {name}: {error}") from None
        return process.pid

    def _wait_listening(self, name: str, pid: int, port: int, logs: list[Path]) -> None:
        def alive() -> bool:
            return pid_alive(pid, "poolkit.supervisor")

        if not wait_for(lambda: port_listening(port), SERVICE_WAIT_S, alive):
            tails = "\n".join(f"--- {log}\n{log_tail(log, 15)}" for log in logs)
            why = (
                f"is not listening on 127.0.0.1:{port} after {SERVICE_WAIT_S:.0f} s"
                if alive()
                else f"kept exiting before it listened on 127.0.0.1:{port}"
            )
            with contextlib.suppress(Exception):
                terminate(pid, "poolkit.supervisor")
            raise LocalError(f"{name} {why}. Logs:\n{tails}")

    def start_pgbouncer(self, stack: StackConfig, tools: Tools, user: ServiceUser) -> int:
        command = [str(tools.pgbouncer), "-q", str(self.paths.conf / "pgbouncer.ini")]
        env = self._env(tools, user, PYTHONPATH=self._pythonpath(user, PACKAGE_ROOT),
                        PYTHONDONTWRITEBYTECODE="1")  # fmt: skip
        pid = self._spawn_supervised("pgbouncer", command, user, env, self.paths.root,
                                     "--child-pidfile", str(self.paths.run / "pgbouncer.pid"),
                                     "--raise-nofile")  # fmt: skip
        self._wait_listening("PgBouncer", pid, stack.pgbouncer.port,
                             [self.paths.log / "pgbouncer.log",
                              self.paths.log / "pgbouncer.out.log"])  # fmt: skip
        return pid

    @staticmethod
    def _pythonpath(user: ServiceUser, *roots: Path) -> str:
        return ":".join(dict.fromkeys([*map(str, roots), *service_python(user)[1]]))

    def admin_url(self, credentials: stack_secrets.Secrets, port: int) -> str:
        admin = credentials.pgbouncer_admin
        return postgres_url(admin.user, admin.password, "127.0.0.1", port, "pgbouncer")

    def stats_url(self, credentials: stack_secrets.Secrets, port: int) -> str:
        stats = credentials.pgbouncer_stats
        return postgres_url(stats.user, stats.password, "127.0.0.1", port, "pgbouncer")

    def _pgbouncer(
        self,
        stack: StackConfig,
        tools: Tools,
        user: ServiceUser,
        credentials: stack_secrets.Secrets,
        changed: dict[str, str],
        pid: int | None,
        old: dict[str, Any],
        result: UpResult,
        started: list[Callable[[], None]],
    ) -> None:
        progress, port = self.progress, stack.pgbouncer.port
        ini_changed = "pgbouncer.ini" in changed
        previous = changed.get("pgbouncer.ini", "")
        keys = _changed_keys(
            _ini_settings(previous), _ini_settings((self.paths.conf / "pgbouncer.ini").read_text())
        )
        keys = keys if ini_changed else []
        restart = pid is not None and bool(PGBOUNCER_RESTART_KEYS & set(keys))
        if restart and pid is not None:
            with progress.step(f"stopping PgBouncer ({', '.join(keys)} need a restart)"):
                terminate(pid, "poolkit.supervisor")
            pid = None
        if pid is None:
            with progress.step(f"starting PgBouncer {tools.pgbouncer_version} on "
                               f"127.0.0.1:{port} (supervised)"):  # fmt: skip
                new_pid = self.start_pgbouncer(stack, tools, user)
            started.append(lambda: terminate(new_pid, "poolkit.supervisor"))
            result.actions.append(f"{'restarted' if restart else 'started'} PgBouncer on "
                                  f"port {port}")  # fmt: skip
        elif ini_changed or "userlist.txt" in changed:
            what = ", ".join(keys) or "userlist.txt"
            with progress.step(f"reloading PgBouncer (RELOAD: {what} changed)"):
                self._reload_pgbouncer(credentials, old.get("pgbouncer_port", port))
            result.actions.append(f"reloaded PgBouncer ({what}); clients stay connected")

    def _reload_pgbouncer(self, credentials: stack_secrets.Secrets, port: int) -> None:
        try:
            pgb_console.reload(self.admin_url(credentials, port))
        except Exception as error:  # the console refused (e.g. admin login changed): SIGHUP
            bouncer = read_pid(self.paths.run / "pgbouncer.pid", "pgbouncer")
            if bouncer is None:
                raise LocalError(
                    f"RELOAD failed ({type(error).__name__}) and PgBouncer's pid is unknown",
                    self.paths.log / "pgbouncer.log",
                ) from None
            os.kill(bouncer, signal.SIGHUP)

    # -- apps --

    def _apps(
        self,
        tools: Tools,
        user: ServiceUser,
        project_root: Path,
        replicas: list[Replica],
        running: dict[str, int],
        old_apps: dict[str, Any],
        changed: dict[str, str],
        result: UpResult,
        started: list[Callable[[], None]],
    ) -> None:
        progress = self.progress
        wanted = {r.key: r for r in replicas}
        for key, pid in running.items():
            if key not in wanted:
                with progress.step(f"stopping {key} (no longer in the stack)"):
                    terminate(pid, "poolkit.supervisor")
                result.actions.append(f"stopped {key}")
        env = self._env(tools, user, PYTHONPATH=self._pythonpath(user, project_root, PACKAGE_ROOT),
                        PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")  # fmt: skip
        to_start = []
        for replica in replicas:
            pid = running.get(replica.key)
            record = dataclasses.asdict(replica) | {"key": replica.key}
            if pid and (replica.env_name in changed or old_apps.get(replica.key) != record):
                with progress.step(f"stopping {replica.key} (its settings changed)"):
                    terminate(pid, "poolkit.supervisor")
                pid = None
            if pid is None:
                to_start.append(replica)
        if not to_start:
            return
        with progress.step(f"starting {len(to_start)} sample app process(es) (supervised)"):
            for replica in to_start:
                command = [
                    service_python(user)[0],
                    "-m",
                    "apps.http_adapter",
                    "--style",
                    replica.style,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(replica.port),
                    "--migrate",
                ]
                pid = self._spawn_supervised(
                    replica.key,
                    command,
                    user,
                    env,
                    project_root,
                    "--env-file",
                    str(self.paths.conf / replica.env_name),
                )
                started.append(lambda pid=pid: terminate(pid, "poolkit.supervisor"))
                self._wait_listening(
                    f"app {replica.app}",
                    pid,
                    replica.port,
                    [self.paths.log / f"{replica.key}.out.log"],
                )
                result.actions.append(f"started app {replica.app} ({replica.style}) on "
                                      f"port {replica.port}")  # fmt: skip

    # -- down / status --

    def down(self, purge: bool) -> list[str]:
        if not self.paths.root.exists():
            return [f"nothing to do: {self.paths.root} does not exist"]
        with self._lock():
            return self._down(purge)

    def _down(self, purge: bool) -> list[str]:
        done: list[str] = []
        state = self.load_state()
        if self.paths.run.is_dir():
            names = self.supervised()
            # Apps first (they hold pooled connections), then PgBouncer, then Postgres.
            for name in sorted(names, key=lambda n: n == "pgbouncer"):
                pid = self.supervisor_pid(name)
                if pid:
                    with self.progress.step(f"stopping {name}"):
                        terminate(pid, "poolkit.supervisor")
                    done.append(f"stopped {name}")
        if self.paths.data.is_dir() and self.postgres_pid():
            user = service_user()
            pgbin = Path(state.get("pgbin") or detect_tools().pgbin)
            with self.progress.step("stopping PostgreSQL"):
                self.stop_postgres(pgbin, user)
            done.append("stopped PostgreSQL")
        if purge:
            for env_file in state.get("env_files", []):
                Path(env_file).unlink(missing_ok=True)
                done.append(f"deleted {env_file}")
            if self.paths.root.exists():
                shutil.rmtree(self.paths.root)
                done.append(f"deleted {self.paths.root} (data, configs, secrets, logs)")
        return done or ["nothing was running"]

    def status(self) -> dict[str, Any]:
        """What runs, as what user, on which port; PgBouncer's pool counters."""
        state = self.load_state()
        components: list[dict[str, Any]] = []

        def entry(name: str, pid: int | None, port: int | None, child: int | None = None) -> None:
            shown = child or pid
            components.append({
                "name": name, "running": pid is not None, "pid": shown, "port": port,
                "user": process_user(shown) if shown else None,
                "listening": bool(port and pid and port_listening(port)),
            })  # fmt: skip

        entry("postgres", self.postgres_pid(), state.get("postgres_port"))
        bouncer = self.supervisor_pid("pgbouncer")
        child = read_pid(self.paths.run / "pgbouncer.pid", "pgbouncer") if bouncer else None
        entry("pgbouncer", bouncer, state.get("pgbouncer_port"), child)
        for app in state.get("apps", []):
            entry(app["key"], self.supervisor_pid(app["key"]), app["port"])
        pools: list[dict[str, Any]] = []
        credentials = stack_secrets.load(self.paths.secrets)
        if bouncer and credentials and state.get("pgbouncer_port"):
            with contextlib.suppress(Exception):
                url = self.stats_url(credentials, state["pgbouncer_port"])
                pools = [
                    {
                        k: row[k]
                        for k in (
                            "database",
                            "user",
                            "cl_active",
                            "cl_waiting",
                            "sv_active",
                            "sv_idle",
                            "sv_used",
                            "maxwait",
                        )
                    }
                    for row in pgb_console.pools(url)
                    if row["database"] != "pgbouncer"
                ]
        return {"stack": state.get("stack"), "state_dir": str(self.paths.root),
                "initialised": (self.paths.data / "PG_VERSION").exists(),
                "components": components, "pools": pools,
                "env_files": state.get("env_files", [])}  # fmt: skip
