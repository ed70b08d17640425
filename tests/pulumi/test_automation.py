"""The real program through the Pulumi Automation API: up -> smoke -> destroy on local Docker.

Needs the Pulumi CLI (skipped with that reason where it is absent) and a Docker engine (a
missing engine fails the test: it is installable, see .ci/run). State goes to a file backend
in a temporary folder; the stack gets its own name and free ports, and is destroyed and
removed at the end, also on failure.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from poolkit.envfile import write_private
from poolkit.outputs import Outputs
from tests.conftest import free_ports

from .harness import PROJECT, stack_file_config

pytestmark = [
    pytest.mark.pulumi,
    pytest.mark.pulumi_cli,
    pytest.mark.skipif(shutil.which("pulumi") is None, reason="Pulumi CLI not installed"),
]


def automation_config() -> dict[str, Any]:
    """The dev stack's config on free ports (Postgres published for the direct URL)."""
    config = stack_file_config("dev")
    taken: set[int] = set()
    postgres, pgbouncer, orders, edge = (free_ports(1, taken) for _ in range(4))
    config["poolkit:postgres"] = {**config["poolkit:postgres"], "port": postgres, "publish": True}
    config["poolkit:pgbouncer"] = {**config.get("poolkit:pgbouncer", {}), "port": pgbouncer}
    config["poolkit:apps"] = [
        {"name": "orders", "style": "lambda", "instances": 4, "replicas": 1, "port": orders},
        {"name": "edge", "style": "workers", "instances": 4, "replicas": 1, "port": edge},
    ]
    return config


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Any]:
    from pulumi import automation as auto

    name = f"auto-{uuid.uuid4().hex[:8]}"
    settings = PROJECT / f"Pulumi.{name}.yaml"
    settings.write_text(yaml.safe_dump({"config": automation_config()}, sort_keys=False))
    (tmp_path / "state").mkdir()
    options = auto.LocalWorkspaceOptions(env_vars={
        "PULUMI_BACKEND_URL": f"file://{tmp_path / 'state'}",
        "PULUMI_CONFIG_PASSPHRASE": "automation-test-passphrase",
    })  # fmt: skip
    created = auto.create_stack(name, work_dir=str(PROJECT), opts=options)
    try:
        yield created
    finally:
        try:
            created.destroy(on_output=print)
        finally:
            created.workspace.remove_stack(name)
            settings.unlink(missing_ok=True)


def test_up_smoke_destroy(stack: Any, tmp_path: Path) -> None:
    result = stack.up(on_output=print)
    outputs = {key: item.value for key, item in result.outputs.items()}
    for key in Outputs.SECRET:
        assert result.outputs[key].secret, f"output {key} is not a secret"
    env_file = tmp_path / ".env.automation"
    write_private(env_file, outputs[Outputs.ENV_FILE])
    smoke = subprocess.run(
        [sys.executable, "-m", "poolkit", "smoke", "--env-file", str(env_file)],
        cwd=PROJECT, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert smoke.returncode == 0, f"poolkit smoke failed:\n{smoke.stdout}\n{smoke.stderr}"
    again = stack.preview()
    assert again.change_summary.get("same", 0) >= 1
    assert not {k: v for k, v in again.change_summary.items() if k != "same"}, (
        f"a second preview wants changes (perpetual diff?): {again.change_summary}"
    )
