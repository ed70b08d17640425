"""The Docker engine the e2e tests need, and the figures they print at the end of the run.

No engine or no base image fails the tests with the command that fixes it; they never skip.
"""

from __future__ import annotations

from typing import Any

import docker
import pytest

from .engine_mocks import engine_client

BASE_IMAGE = "debian:trixie-slim"
FIGURES: dict[str, dict[str, float]] = {}
"""Title -> name -> seconds; printed in the terminal summary."""


@pytest.fixture(scope="session")
def client() -> docker.DockerClient:
    """The engine client. The failure is raised outside ``except`` so the message is not buried
    under the chained connection errors."""
    problem = ""
    try:
        client = engine_client()
        client.images.get(BASE_IMAGE)
    except RuntimeError as exc:
        problem = str(exc)
    except docker.errors.ImageNotFound:
        problem = f"{BASE_IMAGE} missing: run scripts/offline-base-image"
    if problem:
        pytest.fail(problem, pytrace=False)
    return client


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for title, figures in FIGURES.items():
        terminalreporter.section(title)
        width = max(map(len, figures), default=0)
        for name, seconds in figures.items():
            terminalreporter.write_line(f"{name:<{width}}  {seconds:7.2f} s")
