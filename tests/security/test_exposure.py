"""Secrets stay where they belong on the shared stack: files 0600, no password in process
arguments, logs or CLI output. (Pulumi outputs: tests/pulumi/test_program.py,
test_urls_and_env_file_are_secret_outputs and test_given_passwords_are_used_and_stay_secret.)"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.conftest import LocalStack, run_cli
from tests.security.helpers import command_lines, leaks, password_forms

pytestmark = pytest.mark.integration


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_generated_file_with_secrets_is_owner_only(local_stack: LocalStack) -> None:
    state = local_stack.state_dir
    conf_files = sorted((state / "conf").iterdir())
    assert {"userlist.txt", "init.sql", ".env"} <= {p.name for p in conf_files}
    private = [*conf_files, state / "secrets.json", *map(Path, local_stack.state()["env_files"])]
    assert {p.name: oct(_mode(p)) for p in private if _mode(p) != 0o600} == {}
    folders = [state / name for name in ("data", "conf", "run", "log")]
    assert {p.name: oct(_mode(p)) for p in folders if _mode(p) != 0o700} == {}


def test_no_password_in_any_process_arguments(local_stack: LocalStack) -> None:
    forms = password_forms(local_stack)
    assert len(forms) >= 5
    assert leaks(command_lines(), forms) == 0


def test_no_password_in_any_log_under_the_state_dir(local_stack: LocalStack) -> None:
    state = local_stack.state_dir
    logs = {*state.rglob("*.log"), *(p for p in (state / "log").iterdir() if p.is_file())}
    assert any(p.name == "postgres.log" for p in logs) and any("pgbouncer" in p.name for p in logs)
    forms = password_forms(local_stack)
    leaked = {p.name: n for p in logs if (n := leaks(p.read_text(errors="replace"), forms))}
    assert leaked == {}


@pytest.mark.parametrize(
    "command",
    [["status"], ["status", "--json"], ["up", "--no-smoke"], ["plan", "--stack-file", "{stack}"],
     ["smoke", "--env-file", "{env}"], ["smoke", "--env-file", "{env}", "--json"]],
    ids=["status", "status-json", "up", "plan", "smoke", "smoke-json"],
)  # fmt: skip
def test_cli_output_shows_no_password(local_stack: LocalStack, command: list[str]) -> None:
    args = [a.format(stack=local_stack.stack_file, env=local_stack.env_file) for a in command]
    done = local_stack.poolkit(*args) if args[0] in ("status", "up") else run_cli(*args)
    output = done.stdout + done.stderr
    assert leaks(output, password_forms(local_stack)) == 0
    if args[0] in ("status", "up"):
        assert ":***@127.0.0.1" in output, "the URLs are shown, masked"
