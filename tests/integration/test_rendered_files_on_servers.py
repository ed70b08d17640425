"""The core's output, checked by the real servers it is for.

postgresql.conf: every sized setting is what the running server reports (read through SQL).
pgbouncer.ini: the running PgBouncer reports the plan, and the version gate matters (1.18
refuses to start on a 1.21+ parameter). SCRAM: our verifier equals the one PostgreSQL computes
for the same password and salt, and a role created with it logs in through libpq.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from poolkit import scram
from poolkit.config import load_stack
from poolkit.layouts import local_layout
from poolkit.render import render_pgbouncer_ini
from poolkit.secrets import load as load_secrets
from poolkit.sizing import plan
from tests.conftest import LocalStack, free_ports

DISTRIBUTION_PGBOUNCER = Path("/usr/sbin/pgbouncer")

pytestmark = pytest.mark.integration

# pg_settings units -> kB or seconds
UNIT_KB = {"kB": 1, "8kB": 8, "MB": 1024, "16MB": 16 * 1024}
UNIT_S = {"s": 1, "ms": 0.001, "min": 60}
VALUE_UNITS_KB = {"kB": 1, "MB": 1024, "GB": 1024**2, "TB": 1024**3}


def _running_plan(stack: LocalStack):
    """The plan the runner applied: the stack with the detected versions put in."""
    config = load_stack(stack.stack_file)
    state = stack.state()
    config = replace(
        config,
        postgres=replace(config.postgres, version=int(state["pg_major"])),
        pgbouncer=replace(config.pgbouncer, version=str(state["pgbouncer_version"])),
    )
    return config, plan(config)


def _normalise(value: str, unit: str | None) -> float | str:
    """Our rendered value in the unit pg_settings reports (kB-based or seconds)."""
    if unit in UNIT_KB:
        number, suffix = re.fullmatch(r"(\d+)([kMGT]B)", value).groups()  # type: ignore[union-attr]
        return int(number) * VALUE_UNITS_KB[suffix] / UNIT_KB[unit]
    if unit in UNIT_S:
        return float(value) / UNIT_S[unit]
    return value


def _superuser_connection(stack: LocalStack) -> psycopg.Connection:
    secrets = load_secrets(stack.state_dir / "secrets.json")
    assert secrets is not None
    return psycopg.connect(
        host=str(stack.state_dir / "run"), port=stack.postgres_port, dbname="postgres",
        user=secrets.superuser.user, password=secrets.superuser.password, autocommit=True,
    )  # fmt: skip


def test_running_postgres_reports_every_sized_setting(local_stack: LocalStack) -> None:
    _config, result = _running_plan(local_stack)
    with psycopg.connect(local_stack.env()["DIRECT_URL"]) as conn:
        rows = conn.execute(
            "SELECT name, setting, unit, source FROM pg_settings WHERE name = ANY(%s)",
            [[s.name for s in result.postgres]],
        ).fetchall()
    running = {name: (setting, unit, source) for name, setting, unit, source in rows}
    for setting in result.postgres:
        value, unit, source = running[setting.name]
        assert source == "configuration file", setting.name
        expected = _normalise(setting.value, unit)
        got = float(value) if isinstance(expected, float) else value
        assert got == expected, f"{setting.name}: server {value} x {unit}, plan {setting.value}"


def test_running_postgres_uses_scram_and_our_hba(local_stack: LocalStack) -> None:
    with psycopg.connect(local_stack.env()["DIRECT_URL"]) as conn:
        encryption = conn.execute("SHOW password_encryption").fetchone()[0]
        hba_file = conn.execute("SELECT setting FROM pg_settings WHERE name = 'hba_file'")
        hba = hba_file.fetchone()[0]
    assert encryption == "scram-sha-256"
    assert hba == str((local_stack.state_dir / "conf" / "pg_hba.conf").resolve())


def test_running_pgbouncer_reports_the_plan(local_stack: LocalStack) -> None:
    _config, result = _running_plan(local_stack)
    with psycopg.connect(local_stack.env()["PGBOUNCER_STATS_URL"], autocommit=True) as conn:
        shown = {row[0]: row[1] for row in conn.execute("SHOW CONFIG").fetchall()}
    for setting in result.pgbouncer:
        assert str(shown[setting.name]) == setting.value, setting.name


def test_pgbouncer_version_gate_matters(local_stack: LocalStack) -> None:
    """The distribution's PgBouncer (bookworm: 1.18, older than 1.21) refuses an ini rendered for
    1.24 and accepts one rendered for its own version."""
    done = subprocess.run([str(DISTRIBUTION_PGBOUNCER), "--version"], capture_output=True,
                          text=True, check=False)  # fmt: skip
    found = re.search(r"PgBouncer (\d+\.\d+\.\d+)", done.stdout)
    if found is None or tuple(map(int, found[1].split(".")[:2])) >= (1, 21):
        pytest.skip(f"no PgBouncer older than 1.21 at {DISTRIBUTION_PGBOUNCER}: {done.stdout}")
    config, _running = _running_plan(local_stack)
    folder = Path(tempfile.mkdtemp(prefix="poolkit-gate-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        port = free_ports(1)
        results = {}
        for label, version in (("declared", "1.24"), ("detected", found[1])):
            stack = replace(config, pgbouncer=replace(config.pgbouncer, version=version,
                                                      processes=1))  # one file, no peering
            layout = replace(local_layout(stack, folder, "postgres"), pgbouncer_port=port,
                             pgbouncer_dir=str(folder), pgbouncer_pidfile="",
                             pgbouncer_logfile="", pgbouncer_socket_dir="")  # fmt: skip
            ini = folder / f"{label}.ini"
            ini.write_text(render_pgbouncer_ini(stack, plan(stack), layout))
            (folder / "userlist.txt").write_text("")
            shutil.chown(folder / "userlist.txt", "postgres")
            results[label] = _try_pgbouncer(ini)
        assert "FATAL cannot load config file" in results["declared"]
        assert "max_prepared_statements" in results["declared"]
        assert "FATAL" not in results["detected"], results["detected"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _try_pgbouncer(ini: Path) -> str:
    """Start PgBouncer on ``ini`` for at most 2 s as the postgres user; return its log."""
    command = ["runuser", "-u", "postgres", "--", str(DISTRIBUTION_PGBOUNCER), str(ini)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=2)
        return done.stdout + done.stderr
    except subprocess.TimeoutExpired as running:
        subprocess.run(["pkill", "-f", f"{DISTRIBUTION_PGBOUNCER} {ini}"], check=False)
        return (running.stdout or b"").decode() + (running.stderr or b"").decode()


@pytest.mark.parametrize("password", ["pencil", "p@ss:w/rd%?#&=+ '\"\\", "ünï\u00a0cödé 中文"])
def test_our_verifier_equals_postgres_own(local_stack: LocalStack, password: str) -> None:
    """PostgreSQL hashes a plaintext password; recomputing with its salt gives the same text."""
    role = "poolkit_scram_probe"
    with _superuser_connection(local_stack) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        try:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute(
                psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    psycopg.sql.Identifier(role), psycopg.sql.Literal(password)
                )
            )
            stored = conn.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role]
            ).fetchone()[0]
        finally:
            conn.execute(f"DROP ROLE IF EXISTS {role}")
    iterations, salt = scram.parse_verifier(stored)
    assert scram.verifier(password, salt, iterations) == stored


def test_role_with_our_verifier_logs_in_through_libpq(local_stack: LocalStack) -> None:
    role, password = "poolkit_login_probe", "ünï\u00a0cödé-@:/%?#-pw"
    text = scram.verifier(password, base64.b64decode("c2FsdHNhbHRzYWx0c2FsdA=="), 4096)
    database = local_stack.env()["DIRECT_URL"].rsplit("/", 1)[1]
    with _superuser_connection(local_stack) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(
            psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                psycopg.sql.Identifier(role), psycopg.sql.Literal(text)
            )
        )
        conn.execute(
            psycopg.sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                psycopg.sql.Identifier(database), psycopg.sql.Identifier(role)
            )
        )
        try:
            with _hba_allowing(local_stack, role, database):
                probe = psycopg.connect(host="127.0.0.1", port=local_stack.postgres_port,
                                        dbname=database, user=role, password=password)
                with probe:
                    assert probe.execute("SELECT current_user").fetchone()[0] == role
                with pytest.raises(psycopg.OperationalError, match="password authentication"):
                    psycopg.connect(host="127.0.0.1", port=local_stack.postgres_port,
                                    dbname=database, user=role, password=password + "x")
        finally:
            conn.execute(
                psycopg.sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(
                    psycopg.sql.Identifier(database), psycopg.sql.Identifier(role)
                )
            )
            conn.execute(f"DROP ROLE IF EXISTS {role}")


class _hba_allowing:
    """Temporarily add a scram-sha-256 loopback rule for ``role`` to the running pg_hba.conf."""

    def __init__(self, stack: LocalStack, role: str, database: str):
        self.path = stack.state_dir / "conf" / "pg_hba.conf"
        self.stack, self.rule = stack, f'host "{database}" "{role}" 127.0.0.1/32 scram-sha-256\n'

    def __enter__(self) -> None:
        self.original = self.path.read_text()
        self.path.write_text(self.original + self.rule)
        self._reload()

    def __exit__(self, *_exc: object) -> None:
        self.path.write_text(self.original)
        self._reload()

    def _reload(self) -> None:
        with _superuser_connection(self.stack) as conn:
            conn.execute("SELECT pg_reload_conf()")
