"""What every poolkit Docker object shares: names, labels, image builds and healthchecks.

These are facts of the Docker target (naming, the images' fixed uid), never sizes: sizes and
file contents come from ``poolkit.sizing`` and ``poolkit.render``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pulumi
import pulumi_docker as docker

from poolkit.config import StackConfig
from poolkit.layouts import COMPONENT_LABEL, STACK_LABEL
from poolkit.render import Layout
from poolkit.secrets import Secrets
from poolkit.sizing import Plan
from poolkit.tls import ServerTls

LabelArgs = TypeVar(
    "LabelArgs", docker.ContainerLabelArgs, docker.NetworkLabelArgs, docker.VolumeLabelArgs
)

DEFAULT_BASE_IMAGE = "debian:trixie-slim"
"""Base of every image (build arg ``BASE_IMAGE``); any Debian-like image with apt works."""


@dataclass
class ServerArgs:
    """What the Postgres and PgBouncer components both take."""

    stack: StackConfig
    """The validated stack (``poolkit.config.parse_stack``)."""
    plan: Plan
    """Its sizing plan (``poolkit.sizing.plan``): the config files take their settings from it."""
    layout: Layout
    """Paths and addresses of the Docker images (``poolkit.layouts.docker_layout``)."""
    secrets: pulumi.Output[Secrets]
    """Credentials with their SCRAM salts; only their verifiers reach a container."""
    network: pulumi.Input[str]
    """Name of the private network the container joins."""
    base_image: str = DEFAULT_BASE_IMAGE
    """``BASE_IMAGE`` build arg of the image."""
    tls: pulumi.Output[ServerTls] | None = None
    """Certificate, key and CA (``components.certificates``) when the stack uses TLS."""

FILE_OWNER = "999"
"""uid/gid of the ``postgres`` user in the postgres and pgbouncer images and of ``exporter`` in
the exporters image (see their Dockerfiles).
Numeric on purpose: pulumi-docker resolves owner/group *names* on the machine running Pulumi,
not in the image."""

LOOPBACK = "127.0.0.1"
"""Host address every published port binds to; Docker's default (0.0.0.0) would expose it."""

# Healthcheck timings in Go's canonical duration form ("2s", "1m0s", never "60s"): the provider
# reads them back from the engine in that form, so any other spelling is a perpetual diff.
HEALTH_INTERVAL = "2s"
HEALTH_TIMEOUT = "5s"
HEALTH_RETRIES = 15
HEALTH_START_PERIOD = "1m0s"


_IMAGE_SAFE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
"""A stack name that may stand as it is inside an image name (Docker: lower case, no runs of
separators)."""


@dataclass(frozen=True)
class Lifecycle:
    """How a container is stopped: on ``docker stop``, on replacement and on ``pulumi destroy``.

    ``stop_signal`` is what the server treats as a graceful shutdown; ``grace_s`` is how long it
    may take before Docker sends SIGKILL. The same value goes to ``stop_timeout`` (``docker
    stop`` by hand) and ``destroy_grace_seconds``: without the latter the provider removes a
    container by force (SIGKILL) on every replacement and destroy.
    """

    stop_signal: str
    grace_s: int

    def container_args(self) -> dict[str, object]:
        """Keyword arguments of ``docker.Container``."""
        return {"stop_signal": self.stop_signal, "stop_timeout": self.grace_s,
                "destroy_grace_seconds": self.grace_s}  # fmt: skip


POSTGRES_LIFECYCLE = Lifecycle("SIGINT", 120)
"""Fast shutdown: open transactions roll back, then the shutdown checkpoint writes every dirty
buffer, so the next start needs no crash recovery. 120 s covers writing a large
shared_buffers at a slow disk's pace; it ends as soon as the server has stopped."""
APP_LIFECYCLE = Lifecycle("SIGTERM", 10)
"""The sample apps finish the request in hand and exit on SIGTERM (apps/http_adapter.py)."""
EXPORTER_LIFECYCLE = Lifecycle("SIGTERM", 5)
"""The exporters hold nothing: they exit on SIGTERM at once."""
STOP_MARGIN_S = 5
"""Seconds on top of a server's own bound, for its exit after the last client went."""


def pgbouncer_lifecycle(query_wait_timeout: int) -> Lifecycle:
    """Safe shutdown (SIGINT): no new clients; transactions in flight finish, then it exits.

    Bounded by ``query_wait_timeout``: a client kept waiting longer is refused anyway.
    """
    return Lifecycle("SIGINT", query_wait_timeout + STOP_MARGIN_S)


def docker_name(stack: str, *parts: str) -> str:
    """``poolkit-<stack>-<parts…>``: the name of a container, network, volume or image.

    Pulumi stack names may hold upper case and runs of ``._-``, which image names refuse: such a
    name is lower-cased and its separator runs become ``-``, with a short hash of the real name
    so that ``My.App`` and ``my-app`` stay apart.
    """
    if not _IMAGE_SAFE.fullmatch(stack):
        digest = hashlib.sha256(stack.encode()).hexdigest()[:8]
        stack = "-".join([*re.findall(r"[a-z0-9]+", stack.lower()), digest])
    return "-".join(("poolkit", stack, *parts))


def labels(stack: str, component: str) -> dict[str, str]:
    """Labels that let tools (and ``docker ps --filter``) find a stack's objects."""
    return {STACK_LABEL: stack, COMPONENT_LABEL: component}


def label_args(kind: type[LabelArgs], stack: str, component: str) -> list[LabelArgs]:
    """``labels`` as the list of ``kind`` (Container/Network/VolumeLabelArgs) a resource takes."""
    return [kind(label=k, value=v) for k, v in labels(stack, component).items()]


def container_labels(stack: str, component: str) -> list[docker.ContainerLabelArgs]:
    return label_args(docker.ContainerLabelArgs, stack, component)


def healthcheck(test: Sequence[str]) -> docker.ContainerHealthcheckArgs:
    """A healthcheck with explicit timings; ``test`` is an exec-form command (no shell)."""
    return docker.ContainerHealthcheckArgs(
        tests=["CMD", *test],
        interval=HEALTH_INTERVAL,
        timeout=HEALTH_TIMEOUT,
        retries=HEALTH_RETRIES,
        start_period=HEALTH_START_PERIOD,
    )


def published_port(
    internal: int, external: int, address: str = LOOPBACK
) -> docker.ContainerPortArgs:
    """Publish ``internal`` on ``address``:``external`` only (127.0.0.1 unless the stack says;
    validation allows another address only for servers that require TLS)."""
    return docker.ContainerPortArgs(internal=internal, external=external, ip=address,
                                    protocol="tcp")  # fmt: skip


def stack_networks(
    stack: StackConfig, network: pulumi.Input[str], aliases: list[str]
) -> list[docker.ContainerNetworksAdvancedArgs]:
    """The stack's private network (with the container's aliases), then, for an external
    Postgres reached through Docker, the network the stack names
    (``postgres.external.network``)."""
    networks = [docker.ContainerNetworksAdvancedArgs(name=network, aliases=aliases)]
    external = stack.postgres.external
    if external and external.network:
        networks.append(docker.ContainerNetworksAdvancedArgs(name=external.network))
    return networks


def tls_uploads(
    tls: pulumi.Output[ServerTls], directory: str, cert: str | None, key: str | None,
    ca: str | None = None,
) -> list[docker.ContainerUploadArgs]:
    """Files of ``tls`` under ``directory``: the key 0600 (a secret), certificates 0644."""
    files = []
    if cert:
        files.append(upload(f"{directory}/{cert}", tls.apply(lambda t: t.cert), "0644"))
    if key:
        files.append(upload(f"{directory}/{key}",
                            pulumi.Output.secret(tls.apply(lambda t: t.key)), "0600"))
    if ca:
        files.append(upload(f"{directory}/{ca}", tls.apply(lambda t: t.ca or ""), "0644"))
    return files


def upload(path: str, content: pulumi.Input[str], mode: str) -> docker.ContainerUploadArgs:
    """A file written into the container before it starts, owned by the images' postgres user.

    Any change of content or mode replaces the container (uploads only happen at create).
    """
    return docker.ContainerUploadArgs(file=path, content=content, permissions=mode,
                                      owner=FILE_OWNER, group=FILE_OWNER)  # fmt: skip


def build_image(
    resource_name: str,
    parent: pulumi.Resource,
    stack: str,
    image: str,
    base_image: str,
    build_args: dict[str, str] | None = None,
    context: str | None = None,
    dockerfile: str | None = None,
) -> docker.Image:
    """Build ``poolkit-<stack>-<image>:latest`` on the Docker host, never pushed (``skip_push``).

    ``BASE_IMAGE`` is ``base_image``, then the image's own ``build_args``. The context defaults
    to ``images/<image>`` and the Dockerfile to the one in it. Paths are relative to the project
    root (Pulumi's working directory), so the stored inputs are the same on every machine.
    """
    context = context or f"images/{image}"
    dockerfile = dockerfile or f"{context}/Dockerfile"
    return docker.Image(
        resource_name,
        image_name=f"{docker_name(stack, image)}:latest",
        build=docker.DockerBuildArgs(context=context, dockerfile=dockerfile,
                                     args={"BASE_IMAGE": base_image, **(build_args or {})}),
        skip_push=True,
        opts=pulumi.ResourceOptions(parent=parent),
    )


def service_container(
    resource_name: str,
    parent: pulumi.Resource,
    stack: str,
    component: str,
    *,
    lifecycle: Lifecycle,
    wait_timeout: int,
    depends_on: list[pulumi.Resource] | None = None,
    **role: Any,
) -> docker.Container:
    """A long-running container of the stack, labelled ``component`` and stopped per ``lifecycle``.

    Docker restarts it unless stopped by hand, and ``pulumi up`` waits up to ``wait_timeout`` s
    for its first healthy check. Its name and host port are fixed, so a replacement removes the
    old container before the new one starts; Docker cannot change a running container's
    healthcheck, so a changed one replaces it. ``role`` holds the other ``docker.Container``
    arguments (name, image, healthcheck, ports, uploads…).
    """
    return docker.Container(
        resource_name,
        restart="unless-stopped",
        wait=True,
        wait_timeout=wait_timeout,
        **lifecycle.container_args(),
        labels=container_labels(stack, component),
        opts=pulumi.ResourceOptions(
            parent=parent,
            depends_on=depends_on,
            delete_before_replace=True,
            replace_on_changes=["healthcheck"],
        ),
        **role,
    )


def image_ref(image: docker.Image) -> pulumi.Output[str]:
    """What a container runs: the build's ``repo_digest``.

    For a local (unpushed) build pulumi-docker 4.4+ reports the image id (``sha256:…``) there,
    which changes with every rebuild, so a rebuilt image replaces its containers on purpose,
    while an unchanged one causes no diff (a tag would do neither). ``image_name`` is the
    fallback for a provider that reports no digest.
    """
    return pulumi.Output.all(image.repo_digest, image.image_name).apply(
        lambda refs: refs[0] or refs[1]
    )
