"""A stack that does not publish Postgres (as ``prod``): its smoke checks run on its network.

The host's ``.env`` names ``postgres:5432`` in ``DIRECT_URL``, which resolves only on the
stack's private network, so ``poolkit up --target pulumi`` runs ``python3 -m poolkit.smoke`` in
a one-off container of the app image there (``pulumi_target.smoke_in_network``). This module
brings such a stack up with the real program and runs that function against it.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import docker
import pytest

from poolkit import pulumi_target
from poolkit.layouts import STACK_LABEL
from poolkit.outputs import Outputs

from .engine_mocks import RUN_LABEL
from .stack import E2EStack, brought_up, new_stack

pytestmark = pytest.mark.e2e
ALL_CHECKS = {"direct.connect", "direct.advisory_lock", "direct.listen_notify", "pooled.connect",
              "pooled.transaction", "pooled.pool_mode", "pooled.prepared_statements",
              "pooled.session_state", "pooled.burst"}  # fmt: skip


@pytest.fixture(scope="module")
def stack(client: docker.DockerClient) -> Iterator[E2EStack]:
    stack = new_stack(client)
    stack.config["poolkit:postgres"]["publish"] = False
    with brought_up(stack, None):
        yield stack


def test_direct_url_names_postgres_on_the_private_network(stack: E2EStack) -> None:
    assert stack.outputs[Outputs.POSTGRES_PORT] is None
    assert stack.container("postgres").attrs["HostConfig"]["PortBindings"] in ({}, None)
    direct = urlsplit(stack.env()["DIRECT_URL"])
    assert (direct.hostname, direct.port) == ("postgres", 5432)


def test_smoke_runs_on_the_stack_network_and_passes(
    stack: E2EStack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pulumi_target.smoke_in_network(stack.name, stack.outputs)
    output = capsys.readouterr().out
    passed = {line.split()[1].rstrip(":") for line in output.splitlines()
              if line.startswith("PASS ")}  # fmt: skip
    assert passed == ALL_CHECKS, output
    assert not any(password in output for password in stack.passwords.values())
    # The one-off container (labelled with the stack, not the run) is gone again.
    selector = {"label": f"{STACK_LABEL}={stack.name}"}
    labelled = stack.client.containers.list(all=True, filters=selector)
    assert sorted(c.name for c in labelled) == sorted(
        c.name for c in stack.client.containers.list(
            all=True, filters={"label": f"{RUN_LABEL}={stack.run_id}"}))  # fmt: skip
    assert len(labelled) == 4
