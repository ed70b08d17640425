"""The Pulumi target from the command line: ``poolkit env`` and ``poolkit up --target pulumi``.

Both drive the Pulumi CLI (``pulumi``) in the project root with a local file backend
(``.poolkit/pulumi-state``) and a passphrase secrets provider, unless the environment already
names a backend (``PULUMI_BACKEND_URL``) or a passphrase (``PULUMI_CONFIG_PASSPHRASE`` or
``PULUMI_CONFIG_PASSPHRASE_FILE``). Passwords never appear in a command's arguments.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from poolkit.config import NAMESPACE, PASSPHRASE_KEY, STACK_NAME, STACK_NAME_FIX, StackConfig
from poolkit.envfile import write_private
from poolkit.layouts import STACK_LABEL
from poolkit.outputs import Outputs
from poolkit.project import NoProject, project_root

INSTALL_URL = "https://www.pulumi.com/docs/install/"
STATE_DIR = Path(".poolkit") / "pulumi-state"
PASSPHRASE_FILE = Path(".poolkit") / "pulumi-passphrase"
LOG_TAIL_LINES = 30
"""Lines of each failing container's log shown when ``pulumi up`` fails."""
DOCKER_TIMEOUT_S = 30
SMOKE_MODULES = ("__init__.py", "console.py", "envfile.py", "smoke.py", "urls.py")
"""What ``python3 -m poolkit.smoke`` needs of this package (besides psycopg and dotenv)."""
APP_IMAGE_DIR = "/opt/poolkit"
"""The app image's working directory, where the smoke run gets its files."""
APP_USER = "app"
"""The user of images/app/Dockerfile, who runs the smoke checks."""
SMOKE_TIMEOUT_S = 240
GENERATED_PASSPHRASE = "random:index/randomPassword:RandomPassword::poolkit-backup-passphrase"
"""The URN tail of the passphrase a stack generated before it was kept in the config."""


class PulumiError(click.ClickException):
    """The Pulumi CLI is missing, or one of its steps failed: message on stderr, exit 1."""

    exit_code = 1


def pulumi_cli() -> str:
    """Path of the ``pulumi`` executable, or PulumiError saying it is missing and how to fix it."""
    found = shutil.which("pulumi")
    if found is None:
        raise PulumiError(
            "the Pulumi CLI (`pulumi`) is not installed or not on PATH. "
            f"Install it ({INSTALL_URL}), e.g. `curl -fsSL https://get.pulumi.com | sh`, "
            "then run this command again."
        )
    return found


def _project(given: Path | None) -> Path:
    """``given``, else the project root; PulumiError outside a project."""
    try:
        return given or project_root(required=True)
    except NoProject as error:
        raise PulumiError(str(error)) from None


def passphrase_file(project: Path) -> Path:
    """The generated passphrase of the stacks' secrets (0600), made on first use.

    Keep it: without it the encrypted config and state of the stacks cannot be read.
    """
    path = project / PASSPHRASE_FILE
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32) + "\n")
    elif path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return path


def pulumi_env(project: Path) -> dict[str, str]:
    """Environment for ``pulumi``: the project's file backend and passphrase unless set."""
    env = dict(os.environ)
    if not env.get("PULUMI_BACKEND_URL"):
        state = project / STATE_DIR
        state.mkdir(parents=True, exist_ok=True)
        env["PULUMI_BACKEND_URL"] = f"file://{state}"
    if not (env.get("PULUMI_CONFIG_PASSPHRASE") or env.get("PULUMI_CONFIG_PASSPHRASE_FILE")):
        env["PULUMI_CONFIG_PASSPHRASE_FILE"] = str(passphrase_file(project))
    return env


def _stack_name(stack: str | StackConfig) -> str:
    name = stack.stack if isinstance(stack, StackConfig) else stack
    if not STACK_NAME.match(name):
        raise PulumiError(f"--stack {name!r} is not a valid stack name: {STACK_NAME_FIX}")
    return name


def _run(args: list[str], project: Path, env: dict[str, str], capture: bool = False,
         stdin: str | None = None) -> str:
    """Run ``pulumi ARGS`` in the project; raise PulumiError naming the step when it fails."""
    command = [pulumi_cli(), *args]
    result = subprocess.run(command, cwd=project, env=env, text=True, check=False,
                            capture_output=capture, input=stdin)  # fmt: skip
    if result.returncode != 0:
        detail = f":\n{result.stderr.strip()}" if capture and result.stderr else " (output above)"
        raise PulumiError(f"`pulumi {' '.join(args)}` failed with exit {result.returncode}{detail}")
    return result.stdout if capture else ""


def ensure_stack(name: str, project: Path, env: dict[str, str]) -> None:
    """``pulumi stack init NAME`` unless the backend already has the stack."""
    listed: list[dict[str, Any]] = json.loads(_run(["stack", "ls", "--json"], project, env, True)
                                              or "[]")  # fmt: skip
    if any(str(item.get("name", "")).rsplit("/", 1)[-1] == name for item in listed):
        return
    click.echo(f"creating Pulumi stack {name} ({env['PULUMI_BACKEND_URL']})", err=True)
    _run(["stack", "init", name, "--secrets-provider", "passphrase"], project, env)


def keep_passphrase(stack: StackConfig, project: Path, env: dict[str, str]) -> None:
    """Save the backup repository's passphrase as the stack's secret ``poolkit:backup_passphrase``.

    A generated one lives in the state, and ``pulumi destroy`` drops it with the resources while
    the repository is kept; the stack's config stays, so the next ``up`` still reads the
    backups. The value goes on stdin, never in arguments. A stack that generated one before
    keeps it (read from its state), so its repository stays readable.
    """
    if not stack.backup.enabled or stack.backup_passphrase is not None:
        return
    value = _generated_passphrase(stack.stack, project, env) or secrets.token_urlsafe(48)
    _run(["config", "set", "--secret", "--stack", stack.stack, f"{NAMESPACE}:{PASSPHRASE_KEY}"],
         project, env, capture=True, stdin=value)  # fmt: skip
    click.echo(f"kept the backup passphrase in the stack's config ({NAMESPACE}:{PASSPHRASE_KEY},"
               " a secret): `pulumi destroy` leaves it and the backups", err=True)  # fmt: skip


def _generated_passphrase(name: str, project: Path, env: dict[str, str]) -> str | None:
    """The passphrase the stack's state holds (an earlier ``up`` generated it), else None."""
    text = _run(["stack", "export", "--show-secrets", "--stack", name], project, env, True)
    resources = (json.loads(text or "{}").get("deployment") or {}).get("resources") or []
    for resource in resources:
        if str(resource.get("urn", "")).endswith(GENERATED_PASSPHRASE):
            result = (resource.get("outputs") or {}).get("result")
            if isinstance(result, dict):  # a secret: {"<sig>": "...", "plaintext": "\"…\""}
                result = json.loads(result["plaintext"])
            return str(result) if result else None
    return None


def stack_outputs(stack: str | StackConfig, project: Path | None = None) -> dict[str, Any]:
    """Every output of the stack, secrets in clear (``pulumi stack output --show-secrets``)."""
    name = _stack_name(stack)
    project = _project(project)
    text = _run(["stack", "output", "--json", "--show-secrets", "--stack", name],
                project, pulumi_env(project), capture=True)  # fmt: skip
    outputs: dict[str, Any] = json.loads(text or "{}")
    return outputs


def write_env(
    stack: str | StackConfig, project: Path | None = None, out: Path | None = None
) -> Path:
    """Write the stack's ``.env`` text to ``out`` (default ``.env.<stack>``), mode 0600."""
    name = _stack_name(stack)
    pulumi_cli()
    project = _project(project)
    return _write_env(name, stack_outputs(name, project), out or project / f".env.{name}")


def _write_env(name: str, outputs: Mapping[str, Any], path: Path) -> Path:
    text = outputs.get(Outputs.ENV_FILE)
    if not isinstance(text, str):
        raise PulumiError(f"stack {name} has no {Outputs.ENV_FILE} output yet: "
                          f"run `poolkit up --target pulumi --stack {name}` first")  # fmt: skip
    write_private(path, text)
    write_ca(outputs)
    return path


def write_ca(outputs: dict[str, Any]) -> Path | None:
    """Write the stack's CA certificate where its ``.env`` URLs expect it (0644: public)."""
    pem, where = outputs.get(Outputs.TLS_CA), outputs.get(Outputs.TLS_CA_FILE)
    if not (isinstance(pem, str) and pem and isinstance(where, str) and where):
        return None
    path = Path(where)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(pem, encoding="utf-8")
    path.chmod(0o644)
    return path


def _docker(*args: str, stdin: bytes | None = None, timeout: float = DOCKER_TIMEOUT_S) -> str:
    """``docker ARGS``; PulumiError naming the step when it fails."""
    docker = shutil.which("docker")
    if docker is None:
        raise PulumiError("the smoke run on the stack's network needs the `docker` CLI")
    done = subprocess.run([docker, *args], input=stdin, capture_output=True, check=False,
                          timeout=timeout)  # fmt: skip
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()
        raise PulumiError(f"`docker {args[0]}` failed with exit {done.returncode}: {detail}")
    return done.stdout.decode(errors="replace")


def _smoke_modules() -> bytes:
    """A tar of the modules ``python3 -m poolkit.smoke`` runs (``poolkit/…``, 0644; no secret:
    the ``.env`` goes to the container on stdin)."""
    here = Path(__file__).resolve().parent
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        folder = tarfile.TarInfo("poolkit")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name in SMOKE_MODULES:
            data = (here / name).read_bytes()
            info = tarfile.TarInfo(f"poolkit/{name}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def smoke_in_network(stack: str, outputs: Mapping[str, Any]) -> bool:
    """Run the smoke checks in a one-off container on the stack's network (for a stack whose
    Postgres is not published, so ``DIRECT_URL`` works only there); print each check; True if
    all passed. The container runs the Python app image (the node one has no python3) as its
    user and is removed afterwards."""
    from poolkit.cli.output import smoke_check_line
    from poolkit.smoke import Check

    planned = (outputs.get(Outputs.PLAN) or {}).get("apps", {})
    replicas = [names for app, names in outputs[Outputs.CONTAINERS]["apps"].items()
                if names and planned.get(app, {}).get("runtime", "python") == "python"]
    if not replicas:
        raise PulumiError(
            f"stack {stack}: Postgres is not published and the stack has no Python app image to "
            "run the smoke checks on its network. Fix: set poolkit:postgres.publish: true, or add "
            "an app with runtime: python to poolkit:apps")  # fmt: skip
    image = _docker("inspect", "--format", "{{.Image}}", replicas[0][0]).strip()
    container = _docker(
        "create", "--network", str(outputs[Outputs.NETWORK]), "--label", f"{STACK_LABEL}={stack}",
        "--user", APP_USER, "--workdir", APP_IMAGE_DIR, "--interactive", "--entrypoint",
        "python3", image, "-m", "poolkit.smoke", "-").strip()  # fmt: skip
    try:
        _docker("cp", "-", f"{container}:{APP_IMAGE_DIR}", stdin=_smoke_modules())
        docker = shutil.which("docker") or "docker"
        done = subprocess.run([docker, "start", "--attach", "--interactive", container],
                              input=str(outputs[Outputs.NETWORK_ENV_FILE]), capture_output=True,
                              text=True, check=False, timeout=SMOKE_TIMEOUT_S)  # fmt: skip
    finally:
        _docker("rm", "--force", container)
    checks = []
    for line in done.stdout.splitlines():
        checks.append(Check(**json.loads(line)))
        click.echo(smoke_check_line(checks[-1]))
    if done.returncode not in (0, 1) or not checks:
        raise PulumiError(f"the smoke run on the stack's network failed with exit "
                          f"{done.returncode}: {done.stderr.strip()[-2000:]}")  # fmt: skip
    return done.returncode == 0 and all(check.ok for check in checks)


def ensure_backups(stack: StackConfig) -> None:
    """pgBackRest's stanza in the Postgres container, so WAL archiving works from the start."""
    from poolkit import backup
    from poolkit.backup_targets import DockerTarget

    try:
        backup.ensure_stanza(DockerTarget(stack))
    except backup.RepositoryMismatch as error:  # the kept backups wait for a restore
        click.echo(f"warning: pgBackRest stanza {stack.stack}: {error}", err=True)
        return
    except (backup.BackupError, backup.BackupRefused) as error:
        raise PulumiError(f"pgBackRest stanza {stack.stack}: {error}") from None
    click.echo(f"pgBackRest stanza {stack.stack} ready: WAL is archived to the repository",
               err=True)  # fmt: skip


def up(
    stack: str | StackConfig,
    project: Path | None = None,
    *,
    env_file: Path | None = None,
    smoke: bool = True,
) -> Path:
    """``pulumi up`` the stack, write its ``.env`` (0600), run ``poolkit smoke`` on it.

    ``env_file`` defaults to ``.env.<stack>`` in the project root. Returns its path; raises
    PulumiError (exit 1) when a step fails.
    """
    name = _stack_name(stack)
    pulumi_cli()
    project = _project(project)
    env = pulumi_env(project)
    ensure_stack(name, project, env)
    if isinstance(stack, StackConfig):
        keep_passphrase(stack, project, env)
    try:
        _run(["up", "--yes", "--stack", name], project, env)
    except PulumiError as error:
        # The provider waits out wait_timeout on a crashed or restarting container, then
        # fails without its cause: show what the containers said.
        tails = unhealthy_logs(name)
        if tails:
            raise PulumiError(f"{error.message}\n{tails}") from None
        raise
    outputs = stack_outputs(name, project)
    path = _write_env(name, outputs, env_file or project / f".env.{name}")
    click.echo(f"wrote {path} (0600)", err=True)
    if isinstance(stack, StackConfig) and stack.backup.enabled:
        ensure_backups(stack)
    if not smoke:
        return path
    if outputs.get(Outputs.POSTGRES_PORT) is not None or outputs.get(Outputs.EXTERNAL_POSTGRES):
        run_smoke(path, project)  # DIRECT_URL works from this host
        return path
    # DIRECT_URL names Postgres on the private network: only a container there can check it.
    click.echo(f"Postgres is not published: smoke checks run on network "
               f"{outputs[Outputs.NETWORK]}", err=True)  # fmt: skip
    if not smoke_in_network(name, outputs):
        raise PulumiError(f"smoke checks on the network of stack {name} failed (above)")
    return path


def unhealthy_logs(stack: str) -> str:
    """The log tail of each of the stack's containers that is not up and healthy ("" if none,
    or without a ``docker`` CLI to ask)."""
    docker = shutil.which("docker")
    if docker is None:
        return ""
    listed = subprocess.run(
        [docker, "ps", "--all", "--filter", f"label={STACK_LABEL}={stack}",
         "--format", "{{.Names}}\t{{.Status}}"],
        capture_output=True, text=True, check=False, timeout=DOCKER_TIMEOUT_S)  # fmt: skip
    if listed.returncode != 0:
        return ""
    tails = []
    for line in sorted(listed.stdout.splitlines()):
        name, _, status = line.partition("\t")
        if status.startswith("Up") and "(healthy)" in status:
            continue
        log = subprocess.run([docker, "logs", "--tail", str(LOG_TAIL_LINES), name],
                             capture_output=True, text=True, check=False,
                             timeout=DOCKER_TIMEOUT_S)  # fmt: skip
        text = (log.stdout + log.stderr).rstrip() or "(empty log)"
        tails.append(f"container {name} ({status}), last {LOG_TAIL_LINES} log lines:\n{text}")
    return "\n".join(tails)


def run_smoke(env_file: Path, project: Path) -> None:
    """``poolkit smoke --env-file ENV_FILE`` in a child process; PulumiError when it fails."""
    command = [sys.executable, "-m", "poolkit", "smoke", "--env-file", str(env_file)]
    result = subprocess.run(command, cwd=project, check=False)
    if result.returncode != 0:
        raise PulumiError(
            f"`poolkit smoke --env-file {env_file}` failed with exit {result.returncode}"
        )


def down(stack: str | StackConfig, project: Path | None = None) -> None:
    """``pulumi destroy`` the stack's resources (the stack and its state stay)."""
    name = _stack_name(stack)
    pulumi_cli()
    project = _project(project)
    _run(["destroy", "--yes", "--stack", name], project, pulumi_env(project))
