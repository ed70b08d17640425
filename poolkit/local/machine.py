"""This machine: the server binaries and their versions, the OS user the servers run as."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poolkit.local.errors import LocalError

PG_ROOT = Path("/usr/lib/postgresql")
PG_TOOLS = ("postgres", "initdb", "pg_ctl", "psql")
INSTALL_HINT = "run ./scripts/bootstrap, or: apt-get install -y postgresql pgbouncer"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The project checkout poolkit runs from (templates, images/, apps/)."""
KIT_PGBOUNCER = PACKAGE_ROOT / ".poolkit" / "bin" / "pgbouncer"
"""PgBouncer built by scripts/build-pgbouncer from Debian's source; preferred when present."""
ALLOW_NO_PREPARED = "POOLKIT_ALLOW_NO_PREPARED_STATEMENTS"
PREPARED_STATEMENTS_SINCE = (1, 21)


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
    bouncer = os.environ.get("POOLKIT_PGBOUNCER")
    if not bouncer and KIT_PGBOUNCER.is_file():
        bouncer = str(KIT_PGBOUNCER)
    bouncer = bouncer or shutil.which("pgbouncer")
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


def require_prepared_statements(tools: Tools) -> None:
    """Refuse a PgBouncer that cannot track prepared statements, unless the user opted in.

    Under transaction pooling such a PgBouncer gives driver defaults (psycopg, asyncpg,
    node-postgres named queries) errors or, worse, another client's results.
    """
    version = tuple(int(part) for part in tools.pgbouncer_version.split(".")[:2])
    if version >= PREPARED_STATEMENTS_SINCE or os.environ.get(ALLOW_NO_PREPARED) == "1":
        return
    raise LocalError(
        f"PgBouncer {tools.pgbouncer_version} ({tools.pgbouncer}) cannot track prepared "
        "statements in transaction mode: with their defaults, psycopg, asyncpg and node-postgres "
        "named queries get errors or another client's results. Fix: run ./scripts/bootstrap "
        "(it builds PgBouncer 1.24 from Debian's source; its output says why when it cannot), "
        "or set POOLKIT_PGBOUNCER to a PgBouncer >= 1.21; or, to run this one with prepared "
        f"statements off in every client (.env says how), export {ALLOW_NO_PREPARED}=1"
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


def own(path: Path, user: ServiceUser) -> None:
    """Give ``path`` to the service user (when the runner is root)."""
    if user.switch:
        os.chown(path, user.uid, user.gid)


def _permitted(path: Path, user: ServiceUser, read: bool = False) -> bool:
    """Whether ``user`` may enter ``path`` (and, with ``read``, list it)."""
    info = path.stat()
    if info.st_uid == user.uid:
        bits = stat.S_IXUSR | (stat.S_IRUSR if read else 0)
    elif info.st_gid in os.getgrouplist(user.name, user.gid):
        bits = stat.S_IXGRP | (stat.S_IRGRP if read else 0)
    else:
        bits = stat.S_IXOTH | (stat.S_IROTH if read else 0)
    return info.st_mode & bits == bits


def check_reachable(path: Path, user: ServiceUser, what: str, listable: bool = False) -> None:
    """Fail unless ``user`` can walk down to ``path`` (pytest's tmp dirs are 0700, /root too)
    and, with ``listable``, list it (Python imports from a folder by listing it)."""
    if not user.switch:
        return
    path = path.resolve()
    steps = [(parent, False) for parent in reversed(path.parents)]
    for folder, read in steps + ([(path, True)] if listable else []):
        if not _permitted(folder, user, read):
            mode = stat.S_IMODE(folder.stat().st_mode)
            raise LocalError(
                f"the `{user.name}` OS user, which runs the servers, cannot reach {what} "
                f"{path}: {folder} has mode {mode:04o}. Use --state-dir under a folder it can "
                f"reach (e.g. /var/tmp/poolkit), or: chmod o+{'rx' if read else 'x'} {folder}"
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


def python_path(user: ServiceUser, *roots: Path) -> str:
    """PYTHONPATH for a process of the service user: ``roots`` plus the venv's site-packages."""
    return ":".join(dict.fromkeys([*map(str, roots), *service_python(user)[1]]))
