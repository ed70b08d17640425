"""Bring the real Pulumi program (``__main__.py``) up on the local Docker engine, and down again.

``bring_up`` writes a test stack (unique name, free 127.0.0.1 ports, small memory), runs the
program under :class:`DockerEngineMocks` with ``preview=False`` (so every resource is created
for real, in the order the program's dependencies impose), and writes the ``.env`` from the
``env_file`` output with mode 0600. ``E2EStack.tear_down`` removes everything labelled with the
run id and returns what was left, so callers can assert that nothing was.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pulumi
import yaml

from poolkit.envfile import read_env, write_private
from poolkit.outputs import Outputs
from poolkit.pulumi_target import write_ca
from tests.conftest import free_ports
from tests.pulumi.harness import PROJECT, as_pulumi_config, reset_runtime
from tests.pulumi.harness import run_program as run_main

from .conftest import FIGURES
from .engine_mocks import RUN_LABEL, DockerEngineMocks, cleanup

NOTHING_LEFT = {"containers": [], "networks": [], "volumes": []}
SUBPROCESS_TIMEOUT_S = 240
LAMBDA_APP, WORKERS_APP = "orders", "edge"
TS_LAMBDA_APP, TS_WORKERS_APP = "ts-orders", "ts-edge"
"""The same two styles in TypeScript (apps/ts, ``runtime: node``), in the ``node`` stack."""


def stack_config(postgres_port: int, pgbouncer_port: int, lambda_port: int,
                 workers_port: int, node_ports: tuple[int, int] | None = None) -> dict[str, Any]:
    """A small stack: Postgres published (DIRECT_URL from the host), one replica per app;
    with ``node_ports``, also the TypeScript apps of both styles on those host ports."""
    node_apps = [
        {"name": name, "style": style, "instances": 4, "replicas": 1, "port": port,
         "runtime": "node"}
        for name, style, port in zip((TS_LAMBDA_APP, TS_WORKERS_APP), ("lambda", "workers"),
                                     node_ports or (), strict=False)
    ]  # fmt: skip
    return {
        "poolkit:postgres": {"memory": "512MiB", "cpus": 1, "port": postgres_port,
                             "publish": True},
        "poolkit:pgbouncer": {"port": pgbouncer_port},
        "poolkit:apps": [
            {"name": LAMBDA_APP, "style": "lambda", "instances": 4, "replicas": 1,
             "port": lambda_port},
            {"name": WORKERS_APP, "style": "workers", "instances": 4, "replicas": 1,
             "port": workers_port},
            *node_apps,
        ],
    }  # fmt: skip


TLS_ADDRESS = "127.0.0.2"
"""Where the TLS stack publishes PgBouncer and Postgres: a loopback address poolkit treats as
"beyond 127.0.0.1" (TLS required), never 0.0.0.0 or an external interface."""


def tls_stack_config(base: Path, postgres_port: int, pgbouncer_port: int,
                     lambda_port: int) -> dict[str, Any]:
    """PgBouncer and Postgres published on ``TLS_ADDRESS`` with client and server TLS and a
    generated CA (written to ``base``); one Lambda-style app verifying with the CA inside."""
    return {
        "poolkit:postgres": {"memory": "512MiB", "cpus": 1, "port": postgres_port,
                             "publish": True, "publish_address": TLS_ADDRESS},
        "poolkit:pgbouncer": {"port": pgbouncer_port, "client_tls": True, "server_tls": True,
                              "publish_address": TLS_ADDRESS},
        "poolkit:tls": {"ca_file": str(base / "tls-ca.crt")},
        "poolkit:apps": [
            {"name": LAMBDA_APP, "style": "lambda", "instances": 4, "replicas": 1,
             "port": lambda_port},
        ],
    }  # fmt: skip


@dataclass
class E2EStack:
    """One stack the program brought up on the engine, and what the tests need from it."""

    name: str
    run_id: str
    client: docker.DockerClient
    base: Path
    """Temp folder with the stack file and the .env (removed at tear-down)."""
    config: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)
    """Every password the run generated (``RandomPassword`` resource name -> result)."""
    timings: dict[str, float] = field(default_factory=dict)
    mocks: DockerEngineMocks | None = None
    """The run's emulator, once ``bring_up`` started it."""
    secret_keys: list[str] = field(default_factory=list)
    """Config keys set as secrets (``pulumi config set --secret``)."""

    @property
    def env_file(self) -> Path:
        return self.base / f".env.{self.name}"

    @property
    def stack_file(self) -> Path:
        return self.base / f"Pulumi.{self.name}.yaml"

    def env(self) -> dict[str, str]:
        return read_env(self.env_file)

    def container(self, role: str) -> Any:
        """The container of ``postgres``, ``pgbouncer`` or an app name (its replica 0)."""
        names = self.outputs[Outputs.CONTAINERS]
        name = names[role] if role in ("postgres", "pgbouncer") else names["apps"][role][0]
        return self.client.containers.get(name)

    def app_port(self, app: str) -> int:
        return int(self.outputs[Outputs.APP_PORTS][app][0])

    def leftovers(self) -> dict[str, list[str]]:
        """Names of the containers, networks and volumes still labelled with the run id."""
        selector = {"label": f"{RUN_LABEL}={self.run_id}"}
        return {
            "containers": [c.name for c in self.client.containers.list(all=True, filters=selector)],
            "networks": [n.name for n in self.client.networks.list(filters=selector)],
            "volumes": [v.name for v in self.client.volumes.list(filters=selector)],
        }

    def tear_down(self) -> dict[str, list[str]]:
        """Remove everything labelled with the run id (and the run's image tags, keeping the
        build cache); return what is left, which should be nothing."""
        if self.mocks is not None:  # close first: nothing still being created appears later
            self.mocks.cleanup(images=True)
        else:
            cleanup(self.run_id, self.client, images=True)
        shutil.rmtree(self.base, ignore_errors=True)
        return self.leftovers()


def new_stack(client: docker.DockerClient, tls: bool = False, node: bool = False) -> E2EStack:
    """A stack named ``e2e<random>`` on free ports, its file written, nothing created yet;
    ``tls``: the ``tls_stack_config`` one; ``node``: with the TypeScript apps too."""
    token = secrets.token_hex(4)
    taken: set[int] = set()
    ports = [free_ports(1, taken) for _ in range(6)]
    base = Path(tempfile.mkdtemp(prefix="poolkit-e2e-"))
    config = (tls_stack_config(base, *ports[:3]) if tls
              else stack_config(*ports[:4], node_ports=(ports[4], ports[5]) if node else None))
    stack = E2EStack(name=f"e2e{token}", run_id=f"e2e-{token}", client=client, base=base,
                     config=config)  # fmt: skip
    stack.stack_file.write_text(yaml.safe_dump({"config": stack.config}, sort_keys=False))
    return stack


@contextmanager
def _in_project(project: Path) -> Iterator[None]:
    """The program's build contexts are relative to the project root (Pulumi's cwd)."""
    before = Path.cwd()
    os.chdir(project)
    try:
        yield
    finally:
        os.chdir(before)


def run_program(stack: E2EStack, mocks: DockerEngineMocks,
                project: Path = PROJECT) -> dict[str, Any]:
    """Run ``__main__.py`` for the stack under the engine-applying mocks, then delete what it no
    longer declares; return its outputs. ``project`` is the folder the build contexts are
    relative to (Pulumi's working directory)."""
    reset_runtime()
    pulumi.runtime.set_all_config(as_pulumi_config(stack.config), stack.secret_keys)
    mocks.install(project="poolkit", stack=stack.name)
    with _in_project(project):
        outputs, _secret = run_main()
    mocks.finish_run()
    return outputs


def bring_up(stack: E2EStack, build_cache: bool = True) -> None:
    """Apply the program to the engine and write the ``.env`` (0600). On failure the caller
    still owns the clean-up (``stack.tear_down``), whatever was created by then."""
    mocks = stack.mocks = DockerEngineMocks(stack.run_id, stack.client, build_cache=build_cache)
    started = time.monotonic()
    try:
        stack.outputs = run_program(stack, mocks)
    finally:
        stack.timings = {"program start -> healthy stack": round(time.monotonic() - started, 2),
                         **mocks.timings}  # fmt: skip
        stack.passwords = dict(mocks.passwords)
    write_private(stack.env_file, stack.outputs[Outputs.ENV_FILE])
    write_ca(stack.outputs)  # where the .env URLs' sslrootcert expects it (TLS stacks only)


@contextmanager
def brought_up(stack: E2EStack, figures: str | None, *, build_cache: bool = True,
               timings_naming: tuple[str, ...] = (),
               timings_file: Path | None = None) -> Iterator[E2EStack]:
    """The stack up for the block (a module fixture's body), then torn down whatever happened,
    with nothing left behind (checked). Its timings, failed or not, go to ``FIGURES[figures]``
    (none with ``figures=None``; only those whose name holds a word of ``timings_naming``, if
    given) and, with ``timings_file``, to that file (``write_timings``)."""
    try:
        bring_up(stack, build_cache=build_cache)
        yield stack
    finally:
        if figures is not None:
            FIGURES[figures] = {name: seconds for name, seconds in stack.timings.items()
                                if not timings_naming
                                or any(word in name for word in timings_naming)}  # fmt: skip
        if timings_file is not None:
            write_timings(stack, timings_file)
        left = stack.tear_down()
        assert left == NOTHING_LEFT, f"left behind by run {stack.run_id}: {left}"


def assert_smoke_passes(stack: E2EStack, figures: str) -> None:
    """``poolkit smoke --json`` on the stack's env file exits 0 with every check ok, the direct
    and pooled ones among them; the checks' seconds go to ``FIGURES[figures]``."""
    command = [sys.executable, "-m", "poolkit", "smoke", "--env-file", str(stack.env_file),
               "--json"]  # fmt: skip
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, check=False,
                          timeout=SUBPROCESS_TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert report["ok"] and not failed, failed
    names = {c["name"] for c in report["checks"]}
    assert {"direct.connect", "pooled.connect", "pooled.pool_mode", "pooled.burst"} <= names, names
    FIGURES.setdefault(figures, {}).update({c["name"]: c["seconds"] for c in report["checks"]})


def update(stack: E2EStack, config: dict[str, Any], secret_keys: tuple[str, ...] = (),
           project: Path = PROJECT) -> float:
    """A second ``pulumi up`` with a changed stack; rewrites the ``.env``; returns its seconds."""
    assert stack.mocks is not None, "bring_up first"
    stack.config, stack.secret_keys = config, list(secret_keys)
    started = time.monotonic()
    stack.outputs = run_program(stack, stack.mocks, project)
    write_private(stack.env_file, stack.outputs[Outputs.ENV_FILE])
    write_ca(stack.outputs)
    return round(time.monotonic() - started, 2)


def write_timings(stack: E2EStack, path: Path) -> None:
    """The run's figures as JSON (CI keeps them with the logs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stack": stack.name, "seconds": stack.timings}, indent=2) + "\n")
