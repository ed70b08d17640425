"""Docker object names for every stack name Pulumi accepts."""

from __future__ import annotations

import re

import pytest

from components.common import docker_name

pytestmark = pytest.mark.pulumi

# Docker's reference grammar for one path component of an image name.
IMAGE_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")


def test_plain_stack_names_are_kept_as_they_are() -> None:
    assert docker_name("dev", "postgres") == "poolkit-dev-postgres"
    assert docker_name("my_app", "net") == "poolkit-my_app-net"


@pytest.mark.parametrize("stack", ["My.App", "_b", "a..b", "v1.2-", "X" * 100, "a__b"])
def test_every_pulumi_stack_name_gives_valid_image_and_container_names(stack: str) -> None:
    name = docker_name(stack, "postgres")
    assert IMAGE_COMPONENT.fullmatch(name), name
    assert CONTAINER_NAME.fullmatch(name), name


def test_names_that_differ_only_in_case_stay_apart() -> None:
    assert docker_name("My.App", "app") != docker_name("my.app", "app")
    assert docker_name("My.App", "app") != docker_name("MY.APP", "app")
