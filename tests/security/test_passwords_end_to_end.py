"""Passwords meant to break out of their place (quotes, #, ;, %, spaces, unicode) via
POOLKIT_*_PASSWORD: `poolkit up` rotates to them, no rendered file gains a line, and they work
through PgBouncer and direct. Control characters (newline, tab) are refused from the stack file
and the environment alike. On a stack of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import LocalStack, local_stack_running, run_cli
from tests.security.helpers import command_lines, leaks

pytestmark = pytest.mark.integration
# The app's holds an emoji, which SASLprep prohibits (used as is); the migrator's a no-break
# space and a ligature, which SASLprep maps (" ", "fi"): both paths of the SCRAM verifier.
APP = "q'u\"o t#e;s%p a cé€😀\\:@/?=&x\u2028"
MIGRATOR = 'it\'s "fine" #;%\u00a0ﬁnal é ünïcödé'
ENV = {"POOLKIT_APP_PASSWORD": APP, "POOLKIT_MIGRATOR_PASSWORD": MIGRATOR}


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with local_stack_running("poolkit-passwords-", "passwords", with_apps=False) as stack:
        yield stack


def _line_counts(stack: LocalStack) -> dict[str, int]:
    files = [*(stack.state_dir / "conf").iterdir(), stack.env_file]
    return {p.name: len(p.read_text().splitlines()) for p in files}


def _login(stack: LocalStack, port: int, user: str, password: str) -> str:
    with psycopg.connect(host="127.0.0.1", port=port, user=user, password=password, dbname="app",
                         prepare_threshold=None, connect_timeout=5) as conn:  # fmt: skip
        return str(conn.execute("SELECT current_user").fetchone()[0])


def test_up_rotates_to_breakout_passwords_without_adding_a_line(stack: LocalStack) -> None:
    old_pooled = stack.env()["POOLED_DATABASE_URL"]
    before = _line_counts(stack)
    done = stack.poolkit("up", "--no-smoke", env=ENV)
    assert "re-applied init.sql" in done.stdout, done.stdout
    assert "reloaded PgBouncer (userlist.txt)" in done.stdout, done.stdout
    assert _line_counts(stack) == before
    for path in (stack.state_dir / "conf").iterdir():
        text = path.read_text()
        assert APP not in text and MIGRATOR not in text, path.name
    assert leaks(done.stdout + done.stderr, {APP, MIGRATOR}) == 0
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(old_pooled, prepare_threshold=None, connect_timeout=5).close()


def test_the_raw_passwords_log_in_through_pgbouncer_and_direct(stack: LocalStack) -> None:
    assert _login(stack, stack.pgbouncer_port, "app", APP) == "app"
    assert _login(stack, stack.postgres_port, "migrator", MIGRATOR) == "migrator"
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        _login(stack, stack.pgbouncer_port, "app", APP.replace("😀", "x"))


def test_the_env_urls_carry_them_and_smoke_passes(stack: LocalStack) -> None:
    env = stack.env()
    assert psycopg.conninfo.conninfo_to_dict(env["POOLED_DATABASE_URL"])["password"] == APP
    assert psycopg.conninfo.conninfo_to_dict(env["DIRECT_URL"])["password"] == MIGRATOR
    for key in ("POOLED_DATABASE_URL", "DIRECT_URL"):
        with psycopg.connect(env[key], prepare_threshold=None, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    done = run_cli("smoke", "--env-file", str(stack.env_file), check=False)
    assert done.returncode == 0, done.stdout[-2000:]
    assert leaks(command_lines(), {APP, MIGRATOR}) == 0


def test_the_same_passwords_again_change_nothing(stack: LocalStack) -> None:
    """Salts are kept: rendering is byte-stable, no RELOAD, no init.sql run."""
    done = stack.poolkit("up", "--no-smoke", env=ENV)
    assert "nothing to change" in done.stdout, done.stdout


def test_a_config_file_password_with_a_newline_is_refused(stack: LocalStack) -> None:
    bad = Path(stack.base) / "Pulumi.newline.yaml"
    bad.write_text('config:\n  poolkit:app_password: "a-long-password\\nlisten_port = 1"\n')
    done = run_cli("plan", "--stack-file", str(bad), check=False)
    assert done.returncode == 2 and "poolkit:app_password" in done.stderr
    assert "a-long-password" not in done.stderr


@pytest.mark.parametrize("control", ["\n", "\t", "\x7f"])
def test_an_environment_password_with_a_control_character_is_refused(
    stack: LocalStack, control: str
) -> None:
    password = f"a-long-password{control}listen_port = 1"
    done = stack.poolkit("up", "--no-smoke", env={"POOLKIT_APP_PASSWORD": password},
                         check=False)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "POOLKIT_APP_PASSWORD (environment)" in done.stderr
    assert "a-long-password" not in done.stdout + done.stderr
