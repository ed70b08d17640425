"""``poolkit env`` and ``pulumi_target.up`` drive the Pulumi CLI with the right arguments.

The Pulumi CLI cannot be installed here, so these tests put a stand-in ``pulumi`` on PATH: a
script that records its arguments and environment and answers ``stack ls`` and ``stack
output`` from files. They check what poolkit asks of the CLI, not what Pulumi does.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from poolkit import pulumi_target
from poolkit.cli import main
from poolkit.outputs import Outputs
from poolkit.pulumi_target import GENERATED_PASSPHRASE as GENERATED
from poolkit.pulumi_target import INSTALL_URL, PulumiError

pytestmark = pytest.mark.pulumi

FAKE_PULUMI = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_PULUMI_LOG"], "a") as log:
    log.write(json.dumps({{"args": args, "cwd": os.getcwd(), "env": {{
        k: os.environ.get(k) for k in ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE",
                                       "PULUMI_CONFIG_PASSPHRASE_FILE")}}}}) + "\\n")
if args[0] in os.environ.get("FAKE_PULUMI_FAIL", "").split(","):
    print("error: simulated failure", file=sys.stderr)
    sys.exit(255)
if args[:2] == ["stack", "ls"]:
    print(os.environ.get("FAKE_PULUMI_STACKS", "[]"))
elif args[:2] == ["stack", "output"]:
    print(open(os.environ["FAKE_PULUMI_OUTPUTS"]).read())
elif args[:2] == ["stack", "export"]:
    print(os.environ.get("FAKE_PULUMI_EXPORT", "{{}}"))
elif args[:2] == ["config", "set"]:
    with open(os.environ["FAKE_PULUMI_LOG"] + ".stdin", "w") as stdin:
        stdin.write(sys.stdin.read())
"""
FAKE_DOCKER = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[0] == "ps" and "label=poolkit.stack=dev" in args:  # the stack's containers only
    print(os.environ.get("FAKE_DOCKER_PS", ""), end="")
elif args[0] == "logs":
    print(f"log of {{args[-1]}} (--tail {{args[2]}})")
elif args[0] == "inspect":
    print("sha256:appimage")
elif args[0] == "create":
    print("c0ffee")
elif args[0] == "cp":
    with open(os.environ["FAKE_DOCKER_LOG"] + ".tar", "wb") as tar:
        tar.write(sys.stdin.buffer.read())
elif args[0] == "start":
    with open(os.environ["FAKE_DOCKER_LOG"] + ".stdin", "w") as stdin:
        stdin.write(sys.stdin.read())
    for name in ("direct.connect", "pooled.connect"):
        ok = name != os.environ.get("FAKE_SMOKE_FAIL")
        print(json.dumps({{"name": name, "ok": ok, "figure": "PG 17", "seconds": 0.01}}))
    sys.exit(0 if not os.environ.get("FAKE_SMOKE_FAIL") else 1)
"""
ENV_TEXT = 'POOLED_DATABASE_URL="postgresql://app:s3cret@127.0.0.1:16432/app"\n'


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root with a stand-in ``pulumi`` first on PATH; cwd is the project."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "Pulumi.yaml").write_text("name: poolkit\nruntime: python\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pulumi"
    fake.write_text(FAKE_PULUMI.format(python=sys.executable))
    fake.chmod(0o755)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.format(python=sys.executable))
    docker.chmod(0o755)
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({Outputs.ENV_FILE: ENV_TEXT, Outputs.PGBOUNCER_PORT: 16432,
                                   Outputs.POSTGRES_PORT: 15432}))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PULUMI_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(tmp_path / "docker.jsonl"))
    monkeypatch.setenv("FAKE_PULUMI_OUTPUTS", str(outputs))
    for name in ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(root)
    return root


def calls(project: Path) -> list[dict[str, Any]]:
    log = project.parent / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_env_without_the_pulumi_cli_says_so_and_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no pulumi
    result = CliRunner().invoke(main, ["env", "--stack", "dev"])
    assert result.exit_code == 1, result.output
    assert "the Pulumi CLI (`pulumi`) is not installed or not on PATH" in result.output
    assert INSTALL_URL in result.output


def test_up_without_the_pulumi_cli_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PulumiError, match="Pulumi CLI") as failure:
        pulumi_target.up("dev", project=tmp_path)
    assert failure.value.exit_code == 1
    assert INSTALL_URL in failure.value.message


def test_env_writes_the_env_file_output_with_mode_0600(project: Path) -> None:
    result = CliRunner().invoke(main, ["env", "--stack", "dev"])
    assert result.exit_code == 0, result.output
    written = project / ".env.dev"
    assert written.read_text() == ENV_TEXT
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    (call,) = calls(project)
    assert call["args"] == ["stack", "output", "--json", "--show-secrets", "--stack", "dev"]
    assert call["cwd"] == str(project)
    assert call["env"]["PULUMI_BACKEND_URL"] == f"file://{project}/.poolkit/pulumi-state"
    assert "s3cret" not in result.output


def test_env_of_a_stack_without_outputs_names_the_fix(project: Path) -> None:
    Path(os.environ["FAKE_PULUMI_OUTPUTS"]).write_text("{}")
    result = CliRunner().invoke(main, ["env", "--stack", "dev"])
    assert result.exit_code == 1
    assert "poolkit up --target pulumi --stack dev" in result.output
    assert not (project / ".env.dev").exists()


def test_up_inits_the_stack_deploys_writes_env_and_smokes(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smoked: list[Path] = []
    monkeypatch.setattr(pulumi_target, "run_smoke", lambda path, root: smoked.append(path))
    path = pulumi_target.up("dev")
    assert [c["args"] for c in calls(project)] == [
        ["stack", "ls", "--json"],
        ["stack", "init", "dev", "--secrets-provider", "passphrase"],
        ["up", "--yes", "--stack", "dev"],
        ["stack", "output", "--json", "--show-secrets", "--stack", "dev"],
    ]
    assert path == project / ".env.dev" and smoked == [path]
    passphrase = project / ".poolkit" / "pulumi-passphrase"
    assert stat.S_IMODE(passphrase.stat().st_mode) == 0o600
    assert len(passphrase.read_text().strip()) >= 32
    for call in calls(project):
        assert call["env"]["PULUMI_CONFIG_PASSPHRASE_FILE"] == str(passphrase)
        assert passphrase.read_text().strip() not in " ".join(call["args"])


def test_up_keeps_an_existing_stack_and_the_users_passphrase(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pulumi_target, "run_smoke", lambda path, root: None)
    monkeypatch.setenv("FAKE_PULUMI_STACKS", json.dumps([{"name": "organization/poolkit/dev"}]))
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "users-own-passphrase")
    pulumi_target.up("dev")
    assert [c["args"][0] for c in calls(project)] == ["stack", "up", "stack"]
    assert all(c["env"]["PULUMI_CONFIG_PASSPHRASE_FILE"] is None for c in calls(project))
    assert not (project / ".poolkit" / "pulumi-passphrase").exists()


def test_a_failed_pulumi_up_stops_before_env_and_smoke(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smoked: list[Path] = []
    monkeypatch.setattr(pulumi_target, "run_smoke", lambda path, root: smoked.append(path))
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "up")
    with pytest.raises(PulumiError, match=r"`pulumi up --yes --stack dev` failed with exit 255"):
        pulumi_target.up("dev")
    assert not (project / ".env.dev").exists() and smoked == []


def test_a_failed_pulumi_up_shows_the_log_tail_of_unhealthy_containers(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "up")
    monkeypatch.setenv("FAKE_DOCKER_PS", "poolkit-dev-pgbouncer\tUp 3 minutes (healthy)\n"
                       "poolkit-dev-postgres\tRestarting (1) 2 seconds ago\n")
    with pytest.raises(PulumiError) as failure:
        pulumi_target.up("dev", project=project)
    message = failure.value.message
    assert "`pulumi up --yes --stack dev` failed with exit 255" in message
    assert ("container poolkit-dev-postgres (Restarting (1) 2 seconds ago), last 30 log lines:\n"
            "log of poolkit-dev-postgres (--tail 30)") in message
    assert "poolkit-dev-pgbouncer" not in message


NETWORK_ENV = 'DIRECT_URL="postgresql://owner:s3cret@postgres:5432/app"\n'


def unpublished(project: Path, node_apps: tuple[str, ...] = ()) -> None:
    """Outputs of a stack that does not publish Postgres (prod), with one Python app image;
    ``node_apps``: apps with ``runtime: node`` listed first (their image has no python3)."""
    names = [*node_apps, "orders"]
    Path(os.environ["FAKE_PULUMI_OUTPUTS"]).write_text(json.dumps({
        Outputs.ENV_FILE: ENV_TEXT, Outputs.NETWORK_ENV_FILE: NETWORK_ENV,
        Outputs.POSTGRES_PORT: None, Outputs.NETWORK: "poolkit-prod-net",
        Outputs.PLAN: {"apps": {n: {"runtime": "node" if n in node_apps else "python"}
                                for n in names}},
        Outputs.CONTAINERS: {"apps": {n: [f"poolkit-prod-{n}-0"] for n in names}}}))  # fmt: skip


def test_up_of_an_unpublished_postgres_smokes_on_the_stack_network(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unpublished(project)
    pulumi_target.up("dev")
    output = capsys.readouterr()
    assert "PASS direct.connect" in output.out and "s3cret" not in output.out + output.err
    assert "smoke checks run on network poolkit-prod-net" in output.err
    log = project.parent / "docker.jsonl"
    docker = [json.loads(line) for line in log.read_text().splitlines()]
    assert [args[0] for args in docker] == ["inspect", "create", "cp", "start", "rm"]
    assert docker[0][-1] == "poolkit-prod-orders-0"
    create = docker[1]
    assert create[create.index("--network") + 1] == "poolkit-prod-net"
    assert create[create.index("--user") + 1] == "app"
    assert "poolkit.stack=dev" in create and "sha256:appimage" in create
    assert create[-3:] == ["-m", "poolkit.smoke", "-"] and "--interactive" in create
    assert docker[2] == ["cp", "-", "c0ffee:/opt/poolkit"]
    assert docker[3] == ["start", "--attach", "--interactive", "c0ffee"]
    assert docker[4] == ["rm", "--force", "c0ffee"]
    # The .env (passwords) reaches the container on stdin only, never in a file or argument.
    assert Path(f"{log}.stdin").read_text() == NETWORK_ENV
    assert "s3cret" not in log.read_text()
    with tarfile.open(f"{log}.tar") as tar:
        names = set(tar.getnames())
    assert {"poolkit/smoke.py", "poolkit/envfile.py", "poolkit/console.py"} <= names
    assert all(name.startswith("poolkit") for name in names)


def test_the_network_smoke_runs_in_the_python_app_image(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unpublished(project, node_apps=("ts-edge",))
    pulumi_target.up("dev")
    assert "PASS direct.connect" in capsys.readouterr().out
    log = (project.parent / "docker.jsonl").read_text()
    docker = [json.loads(line) for line in log.splitlines()]
    assert docker[0] == ["inspect", "--format", "{{.Image}}", "poolkit-prod-orders-0"]


def test_a_failed_smoke_on_the_network_fails_up(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unpublished(project)
    monkeypatch.setenv("FAKE_SMOKE_FAIL", "pooled.connect")
    with pytest.raises(PulumiError, match="smoke checks on the network of stack dev failed"):
        pulumi_target.up("dev")


def test_a_failed_smoke_fails_up(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real smoke command runs against the (unreachable) URL of the stand-in outputs."""
    monkeypatch.setenv("FAKE_PULUMI_STACKS", json.dumps([{"name": "dev"}]))
    with pytest.raises(PulumiError, match=r"poolkit smoke --env-file .*\.env\.dev` failed"):
        pulumi_target.up("dev")


def test_up_honours_env_file_and_no_smoke(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pulumi_target, "run_smoke", lambda path, root: pytest.fail("smoke ran"))
    monkeypatch.setenv("FAKE_PULUMI_STACKS", json.dumps([{"name": "dev"}]))
    target = project / "out" / "dev.env"
    assert pulumi_target.up("dev", env_file=target, smoke=False) == target
    assert target.read_text() == ENV_TEXT and stat.S_IMODE(target.stat().st_mode) == 0o600


def test_up_of_an_external_postgres_smokes_from_this_host(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Postgres is published, but the host reaches the external one (it checked it)."""
    Path(os.environ["FAKE_PULUMI_OUTPUTS"]).write_text(json.dumps({
        Outputs.ENV_FILE: ENV_TEXT, Outputs.POSTGRES_PORT: None,
        Outputs.EXTERNAL_POSTGRES: "db.example.com:5432", Outputs.NETWORK: "poolkit-dev-net"}))
    smoked: list[Path] = []
    monkeypatch.setattr(pulumi_target, "run_smoke", lambda path, root: smoked.append(path))
    monkeypatch.setattr(pulumi_target, "smoke_in_network",
                        lambda *_: pytest.fail("smoke ran on the stack network"))
    path = pulumi_target.up("dev")
    assert smoked == [path]


def backup_stack(**extra: Any) -> Any:
    from poolkit.config import parse_stack

    return parse_stack({"poolkit:backup": {"enabled": True}, **extra}, "dev")


@pytest.mark.parametrize("generated", [None, "state-passphrase-abc"], ids=["new", "from-state"])
def test_up_keeps_the_backup_passphrase_in_the_stack_config(
    project: Path, monkeypatch: pytest.MonkeyPatch, generated: str | None
) -> None:
    """``pulumi destroy`` drops the state (where a generated passphrase lives) but keeps the
    config: up saves the passphrase there, on stdin; a stack that generated one keeps it."""
    monkeypatch.setattr(pulumi_target, "run_smoke", lambda path, root: None)
    monkeypatch.setattr(pulumi_target, "ensure_backups", lambda stack: None)
    if generated:
        monkeypatch.setenv("FAKE_PULUMI_EXPORT", json.dumps({"deployment": {"resources": [{
            "urn": "urn:pulumi:dev::poolkit::poolkit:index:Environment$" + GENERATED,
            "outputs": {"result": {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75f",
                                   "plaintext": json.dumps(generated)}}}]}}))  # fmt: skip
    pulumi_target.up(backup_stack())
    args = [c["args"] for c in calls(project)]
    assert ["config", "set", "--secret", "--stack", "dev", "poolkit:backup_passphrase"] in args
    assert args.index(["up", "--yes", "--stack", "dev"]) > args.index(
        ["config", "set", "--secret", "--stack", "dev", "poolkit:backup_passphrase"])
    given = (project.parent / "calls.jsonl.stdin").read_text()
    assert given == generated if generated else len(given) >= 48
    assert all(given not in " ".join(call) for call in args)


def test_up_leaves_a_given_backup_passphrase_alone(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pulumi_target, "run_smoke", lambda path, root: None)
    monkeypatch.setattr(pulumi_target, "ensure_backups", lambda stack: None)
    pulumi_target.up(backup_stack(**{"poolkit:backup_passphrase": {"secure": "v1:abc"}}))
    assert not [c for c in calls(project) if c["args"][0] == "config"]
