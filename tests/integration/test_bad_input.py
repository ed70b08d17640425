"""Bad input through the real CLI: exit code 2, a message naming the key or argument, and
nothing created (no state dir, no .env, no process).

The 42 invalid stack configs of ``tests/unit/test_config.py`` (parsed in-process there) go
through ``poolkit up --target local`` here; then bad invocations of every local command, and
names meant to break out of their place in a rendered file.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from poolkit.config import stack_name_of
from tests.conftest import REPO_ROOT, free_ports, make_base_dir, run_cli, write_stack_file
from tests.unit.test_config import INVALID

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Workspace:
    base: Path

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def env_file(self) -> Path:
        return self.base / ".env"

    def up_args(self, stack_file: Path) -> list[str]:
        return ["up", "--target", "local", "--no-smoke", "--stack-file", str(stack_file),
                "--state-dir", str(self.state), "--env-file", str(self.env_file)]  # fmt: skip

    def write(self, name: str, text: str) -> Path:
        path = self.base / name
        path.write_text(text, encoding="utf-8")
        return path

    def stack_file(self, name: str, config: dict) -> Path:
        return self.write(name, yaml.safe_dump({"config": config}, allow_unicode=True))


def _processes_mentioning(needle: str) -> list[str]:
    """Command lines of processes whose arguments or working directory name ``needle``."""
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            cmdline, cwd = " ".join(process.cmdline()), process.cwd()
        except psutil.Error:
            continue
        if needle in cmdline or cwd.startswith(needle):
            found.append(f"{process.pid}: {cmdline[:120]}")
    return found


@pytest.fixture
def workspace() -> Iterator[Workspace]:
    base = make_base_dir("poolkit-badinput-")
    try:
        yield Workspace(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _default_paths(args: list[str]) -> list[Path]:
    """Where the command would put state and .env by default for the stack it names."""
    pairs = list(itertools.pairwise(args))
    names = [value for flag, value in pairs if flag == "--stack"]
    names += [stack_name_of(Path(value)) for flag, value in pairs if flag == "--stack-file"]
    return [p for n in names for p in (REPO_ROOT / ".poolkit" / n, REPO_ROOT / f".env.{n}")]


def _refused(workspace: Workspace, args: list[str], *named: str, **env: str) -> str:
    """Run the CLI; assert exit 2, each of ``named`` in the message, and nothing created."""
    before = _processes_mentioning(str(workspace.base))
    existed = {p for p in _default_paths(args) if p.exists()}
    done = run_cli(*args, check=False, env=env)
    message = done.stderr + done.stdout
    assert done.returncode == 2, message
    assert "Traceback" not in message
    for word in named:
        assert word in message, message
    assert not workspace.state.exists(), "a state dir was created"
    assert not workspace.env_file.exists(), "an .env file was written"
    assert _processes_mentioning(str(workspace.base)) == before, "a process was started"
    assert {p for p in _default_paths(args) if p.exists()} == existed
    return message


@pytest.mark.parametrize(("raw", "key", "hint"), [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])  # fmt: skip
def test_invalid_stack_config_is_refused_by_up(workspace: Workspace, raw, key, hint) -> None:
    stack_file = workspace.stack_file("case.yaml", raw)
    _refused(workspace, workspace.up_args(stack_file), key, hint, "Fix:")


# Values meant to break out of a quoted string, an ini line, a pg_hba field or an identifier.
BREAKOUTS = {
    "single-quote": "app'x",
    "double-quote": 'app"x',
    "newline": "app\nlisten_addresses = '*'",
    "hash": "app#x",
    "semicolon": "app;drop",
    "percent": "app%x",
    "space": "app x",
    "unicode": "appé",
}
NAME_KEYS = ("name", "app_user", "migrator_user")


@pytest.mark.parametrize("key", NAME_KEYS)
@pytest.mark.parametrize("value", list(BREAKOUTS.values()), ids=list(BREAKOUTS))
def test_names_that_would_break_out_are_refused(workspace: Workspace, key: str, value: str) -> None:
    stack_file = workspace.stack_file("case.yaml", {"poolkit:database": {key: value}})
    _refused(workspace, workspace.up_args(stack_file), f"poolkit:database.{key}", "identifier")


def _valid_stack(workspace: Workspace) -> Path:
    path = workspace.base / "valid.yaml"
    taken: set[int] = set()
    write_stack_file(path, postgres_port=free_ports(1, taken), pgbouncer_port=free_ports(1, taken))
    return path


# (id, argv with {base} and {valid}, words the message must hold)
CLI_CASES = [
    ("up-no-stack", ["up", "--state-dir", "{base}/state"], ["exactly one of --stack NAME"]),
    ("up-both-stacks", ["up", "--stack", "dev", "--stack-file", "{valid}"], ["exactly one of"]),
    ("up-unknown-stack", ["up", "--stack", "nosuch", "--state-dir", "{base}/state"],
     ["--stack nosuch", "Pulumi.nosuch.yaml does not exist"]),
    ("up-missing-file", ["up", "--stack-file", "{base}/missing.yaml", "--state-dir",
                         "{base}/state"], ["--stack-file", "does not exist"]),
    ("up-not-yaml", ["up", "--stack-file", "{base}/broken.yaml", "--state-dir", "{base}/state"],
     ["--stack-file", "not valid YAML"]),
    ("up-list-document", ["up", "--stack-file", "{base}/list.yaml", "--state-dir",
                          "{base}/state"], ["config", "mapping"]),
    ("up-bad-stack-name", ["up", "--stack-file", "{base}/Pulumi.bad!name.yaml", "--state-dir",
                           "{base}/state"], ["stack", "bad!name", "not a valid stack name"]),
    ("up-bad-target", ["up", "--stack-file", "{valid}", "--target", "docker"],
     ["'--target'", "docker"]),
    ("up-unknown-flag", ["up", "--stack-file", "{valid}", "--bogus"],
     ["No such option", "--bogus"]),
    ("up-env-file-is-dir", ["up", "--stack-file", "{valid}", "--state-dir", "{base}/state",
                            "--env-file", "{base}"], ["'--env-file'", "directory"]),
    ("up-state-dir-is-file", ["up", "--stack-file", "{valid}", "--state-dir", "{valid}"],
     ["'--state-dir'", "file"]),
    ("up-extra-argument", ["up", "--stack-file", "{valid}", "--smoke", "maybe"],
     ["unexpected extra argument", "maybe"]),
    ("unknown-command", ["upp", "--stack", "dev"], ["No such command", "upp"]),
    ("plan-invalid", ["plan", "--stack-file", "{base}/invalid.yaml"],
     ["poolkit:postgres.cpus", "between 1 and 256"]),
    ("plan-json-unknown-stack", ["plan", "--json", "--stack", "nosuch"], ["--stack nosuch"]),
    ("render-no-out", ["render", "--stack-file", "{valid}"], ["Missing option", "--out"]),
    ("render-invalid", ["render", "--stack-file", "{base}/invalid.yaml", "--out",
                        "{base}/state"], ["poolkit:postgres.cpus"]),
    ("smoke-no-env-file", ["smoke"], ["Missing option", "--env-file"]),
    ("smoke-missing-env-file", ["smoke", "--env-file", "{base}/missing.env"],
     ["'--env-file'", "does not exist"]),
    ("smoke-env-lacks-urls", ["smoke", "--env-file", "{base}/partial.env"],
     ["partial.env", "lacks DIRECT_URL"]),
    ("smoke-env-not-key-value", ["smoke", "--env-file", "{base}/garbled.env"],
     ["garbled.env", "not a KEY=value line"]),
    ("maintenance-no-command", ["maintenance"], ["restart-postgres"]),
    ("maintenance-unknown-command", ["maintenance", "restart-everything"],
     ["No such command", "restart-everything"]),
    ("maintenance-no-stack", ["maintenance", "restart-postgres"],
     ["give one of --stack NAME, --stack-file PATH or --state-dir DIR"]),
    ("maintenance-unknown-stack", ["maintenance", "restart-postgres", "--state-dir",
                                   "{base}/state"], ["--state-dir", "no local stack in"]),
    ("maintenance-zero-timeout", ["maintenance", "restart-postgres", "--state-dir",
                                  "{base}/state", "--pause-timeout", "0"],
     ["'--pause-timeout'", "0.1<=x<=3600"]),
    ("maintenance-text-timeout", ["maintenance", "restart-postgres", "--state-dir",
                                  "{base}/state", "--pause-timeout", "soon"],
     ["'--pause-timeout'", "soon"]),
    ("down-no-stack", ["down"], ["give one of --stack NAME"]),
    ("down-purge-unconfirmed", ["down", "--state-dir", "{base}/state", "--purge"],
     ["--purge", "--yes"]),
    ("down-unknown-flag", ["down", "--state-dir", "{base}/state", "--force"],
     ["No such option", "--force"]),
    ("status-no-stack", ["status", "--json"], ["give one of --stack NAME"]),
]  # fmt: skip

FILES = {
    "broken.yaml": "config:\n  poolkit:postgres: [unclosed\n",
    "list.yaml": "- config\n- poolkit\n",
    "Pulumi.bad!name.yaml": "config: {}\n",
    "invalid.yaml": "config:\n  poolkit:postgres:\n    cpus: 0\n",
    "partial.env": 'POOLED_DATABASE_URL="postgresql://app:x@127.0.0.1:1/app"\n',
    "garbled.env": "this line is not an assignment\n",
}


@pytest.mark.parametrize(("args", "named"), [c[1:] for c in CLI_CASES],
                         ids=[c[0] for c in CLI_CASES])  # fmt: skip
def test_bad_invocation_is_refused(workspace: Workspace, args: list[str], named: list[str]) -> None:
    for name, text in FILES.items():
        workspace.write(name, text)
    valid = _valid_stack(workspace)
    argv = [a.format(base=workspace.base, valid=valid) for a in args]
    _refused(workspace, argv, *named)


def test_at_least_forty_bad_inputs_are_tried() -> None:
    total = len(INVALID) + len(BREAKOUTS) * len(NAME_KEYS) + len(CLI_CASES)
    print(
        f"\nbad-input cases through the CLI: {len(INVALID)} configs, "
        f"{len(BREAKOUTS) * len(NAME_KEYS)} break-out names, {len(CLI_CASES)} invocations"
    )
    assert total >= 40
