"""Test-only Pulumi mocks that apply a program's resources to the local Docker engine.

Where the Pulumi CLI cannot run, ``DockerEngineMocks`` lets the real program run under
``pulumi.runtime.set_mocks(..., preview=False)`` while every registered docker resource is
created for real through the ``docker`` SDK, so tests can connect to what the program built.
``pulumi_random`` values are generated here, locally, as that provider generates them.

Emulated, following the provider's documented semantics (inputs arrive camelCase, numbers
as floats, secrets wrapped; all three are handled here):

- ``docker:index/network:Network``: name, internal, labels.
- ``docker:index/volume:Volume``: name, labels.
- ``docker:index/image:Image``: build.context (relative to the working directory, default
  ``.``), build.dockerfile (absolute or relative to the working directory, default
  ``<context>/Dockerfile``), build.args, build.platform (ignored); imageName; skipPush must
  be true. Built by the engine's classic builder, not BuildKit. ``repoDigest`` is the built
  image id, which is what the provider documents for local-only images; ``id`` is the same.
- ``docker:index/container:Container``: name, image, command, entrypoints, envs, ports,
  networksAdvanced (name, aliases), volumes (volumeName, containerPath, readOnly), uploads
  (file, content, permissions, owner, group; copied in before start; owner/group names are
  resolved on this host, as the provider does, so pass numeric ids), healthcheck (tests,
  interval, timeout, retries, startPeriod), restart, labels, user, wait, waitTimeout, mustRun,
  stopSignal, stopTimeout, destroyGraceSeconds, shmSize, memory (MB; swap as Docker defaults it),
  cpuShares.
- ``random:index/randomPassword:RandomPassword`` and ``random:index/randomId:RandomId``: values
  from ``tests/pulumi/random_values.py`` with ``secrets.SystemRandom``, as the provider makes
  them locally. The password's id is ``none``, as the provider's.
- Component resources (``custom=False``) get an empty state.
- Pulumi dynamic resources (``pulumi-python:dynamic…``, poolkit's generated certificates):
  their own pickled provider's ``create`` runs, as the engine's dynamic-provider host does
  (``tests/dynamic_resources.py``); on a later run its ``diff`` against the stored outputs
  keeps the resource or replaces it.

A second run of the program on the same instance (a changed stack: ``install`` it, run the
program, ``finish_run``) does what ``pulumi up`` does with the provider:

- inputs unchanged: the resource is kept (same id, same outputs, so passwords stay);
- an image whose build context, Dockerfile or args changed (``context_digest``, honouring the
  context's ``.dockerignore``) is built again: an update with a new ``repoDigest``;
- a container whose changed inputs are only restart, memory or cpuShares is updated in place
  (``docker update``); destroyGraceSeconds, wait, waitTimeout, mustRun and healthcheck only
  change the state (the provider's schema does not force a new container for them, so a
  changed healthcheck needs ``replace_on_changes``, which is honoured); any other change
  (uploads, image, envs, ports, stopSignal, shmSize, …) replaces it, as that schema marks them;
- networks, volumes and random values are replaced on any change;
- a replacement deletes first when the resource has ``delete_before_replace`` (read from the
  registration by ``OptionsMonitor``), else creates the new one first;
- a resource registered with ``retain_on_delete`` is, on any delete (destroy, a run that no
  longer declares it, a replacement), only dropped from the state: the engine keeps the object,
  as Pulumi does. A later run that declares it again creates it anew, and for a named volume
  Docker hands back the kept one (a volume create of an existing name returns it);
- resources the run no longer registers are deleted after it (``finish_run``), dependents
  first: the state keeps the order of first creation (a replacement keeps its place), which
  is a dependency order, as Pulumi's snapshot is;
  ``destroy`` deletes all of them.

Delete: a container is stopped first when ``destroyGraceSeconds`` is set (``docker stop`` with that
timeout: its stop signal, then SIGKILL), else removed by force (SIGKILL), as the provider does;
its log is kept in ``removed_logs``. Networks and volumes are removed. Images stay (the
provider's Image delete leaves the local image), and so do random values (state only).

Not emulated: previews, refresh and drift (the engine is assumed to hold what the state says),
Pulumi's replacement of dependents of a delete-before-replace resource (no program input here
reads another container's outputs), provider resources, imports and reads, and any other type
or input. Those raise ``NotImplementedError("not emulated: ...")`` so a program cannot
silently depend on behaviour this file does not reproduce.

Every object created carries the label ``poolkit.test-run=<run id>``; ``cleanup(run_id)``
removes them. After a failure the runtime may return while other resources are still being
created in its worker threads: ``DockerEngineMocks.cleanup`` first closes the run (refuses new
resources, waits for those in flight), so nothing appears after the clean-up.
"""

from __future__ import annotations

import gc
import grp
import hashlib
import io
import json
import os
import pwd
import re
import secrets
import tarfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pulumi
from docker.errors import BuildError, DockerException
from docker.utils.build import exclude_paths
from pulumi.runtime.mocks import MockMonitor

from tests import dynamic_resources
from tests.pulumi.random_values import random_id, random_password

RUN_LABEL = "poolkit.test-run"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
IMAGE = "docker:index/image:Image"
CONTAINER = "docker:index/container:Container"
PASSWORD = "random:index/randomPassword:RandomPassword"
RANDOM_ID = "random:index/randomId:RandomId"

# Inputs each type accepts. Any other input set to a value (even False) is rejected; the
# SDK itself fills Image.buildOnPreview and Image.skipPush.
_ACCEPTED: dict[str, set[str]] = {
    NETWORK: {"name", "internal", "labels"},
    VOLUME: {"name", "labels"},
    IMAGE: {"build", "imageName", "skipPush", "buildOnPreview"},
    CONTAINER: {
        "name", "image", "command", "entrypoints", "envs", "ports", "networksAdvanced",
        "volumes", "uploads", "healthcheck", "restart", "labels", "user", "wait",
        "waitTimeout", "mustRun", "destroyGraceSeconds", "stopSignal", "stopTimeout", "shmSize",
        "memory", "cpuShares", "sysctls",
    },
    PASSWORD: {
        "length", "upper", "lower", "numeric", "number", "special", "overrideSpecial",
        "minUpper", "minLower", "minNumeric", "minSpecial", "keepers",
    },
    RANDOM_ID: {"byteLength", "prefix", "keepers"},
}
_NESTED: dict[str, set[str]] = {
    "build": {"context", "dockerfile", "args", "platform"},
    "ports": {"internal", "external", "ip", "protocol"},
    "networksAdvanced": {"name", "aliases"},
    "volumes": {"volumeName", "containerPath", "readOnly"},
    "uploads": {"file", "content", "permissions", "owner", "group", "executable"},
    "healthcheck": {"tests", "interval", "timeout", "retries", "startPeriod"},
}
UPDATED_IN_PLACE = {"restart", "cpuShares", "memory"}
"""Container inputs the provider changes on the running container (``docker update``); any
other changed input replaces it, unless it is in ``STATE_ONLY``."""
STATE_ONLY = {"destroyGraceSeconds", "wait", "waitTimeout", "mustRun", "healthcheck"}
"""Container inputs without ForceNew in the provider's schema that its update does not apply:
a change is recorded in the state, the container is left as it is."""
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_NANOS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def engine_client(timeout: int = 600) -> docker.DockerClient:
    """A client for the local engine, or RuntimeError saying how to start one."""
    with warnings.catch_warnings():
        # docker-py leaves the socket of a failed connect open; close it quietly here.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=timeout)
            client.ping()
            return client
        except DockerException as exc:
            problem = str(exc)
        gc.collect()
    raise RuntimeError(f"Docker engine not reachable ({problem}); run: scripts/docker-engine start")


def cleanup(run_id: str, client: docker.DockerClient | None = None, images: bool = False,
            keep_cache: bool = True) -> None:
    """Remove the containers, networks, volumes (and images, if asked) labelled with run_id.

    With ``keep_cache`` images go without their unlabelled parent layers (``noprune``): those
    are the build cache the next run reuses.
    """
    client = client or engine_client()
    selector = {"label": f"{RUN_LABEL}={run_id}"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True)
    for network in client.networks.list(filters=selector):
        network.remove()
    for volume in client.volumes.list(filters=selector):
        volume.remove(force=True)
    if images:
        for image in client.images.list(filters=selector):
            client.images.remove(image.id, force=True, noprune=keep_cache)


def parse_duration(text: str) -> int:
    """Nanoseconds in a Go-style duration such as "2s", "500ms" or "1m30s"."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"bad duration {text!r}: use forms like 2s, 500ms, 1m30s")
    return int(sum(float(n) * _NANOS[u] for n, u in parts))


def _unset(value: Any) -> bool:
    return value is None or value == [] or value == {}


def _check_inputs(typ: str, name: str, inputs: Mapping[str, Any]) -> None:
    for key, value in inputs.items():
        if key not in _ACCEPTED[typ]:
            if not _unset(value):
                raise NotImplementedError(f"not emulated: {typ} {name!r} input {key}={value!r}")
            continue
        allowed = _NESTED.get(key)
        items = value if isinstance(value, list) else [value]
        for item in items if allowed else []:
            extra = sorted(k for k, v in (item or {}).items() if k not in allowed and not _unset(v))
            if extra:
                raise NotImplementedError(f"not emulated: {typ} {name!r} {key} keys {extra}")


def _resolve_id(value: str | None, lookup: Callable[[str], Any]) -> int:
    """A numeric id, or a name resolved on this host (as the provider does)."""
    if value in (None, ""):
        return 0
    return int(value) if str(value).isdigit() else int(lookup(str(value))[2])


@dataclass
class Applied:
    """One resource as the engine holds it after a run: what the provider's state would be."""

    typ: str
    name: str
    id: str
    inputs: dict[str, Any]
    """Plain inputs (secrets unwrapped), compared with the next run's."""
    outputs: dict[str, Any]
    """What ``new_resource`` returned (inputs, secrets still wrapped, plus computed outputs)."""
    delete_before_replace: bool
    digest: str = ""
    """Images: the build context's digest, which is what makes the provider rebuild."""
    retain_on_delete: bool = False
    """Deleting only drops it from the state; the engine keeps it (``retain_on_delete``)."""


class OptionsMonitor(MockMonitor):
    """The mock engine, handing each registration's resource options to the mocks first."""

    def __init__(self, mocks: DockerEngineMocks) -> None:
        super().__init__(mocks)
        self.engine_mocks = mocks

    def RegisterResource(self, request: Any) -> Any:
        key = (request.type, request.name)
        self.engine_mocks.delete_before_replace[key] = bool(request.deleteBeforeReplace)
        self.engine_mocks.replace_on_changes[key] = set(request.replaceOnChanges)
        self.engine_mocks.retain_on_delete[key] = bool(request.retainOnDelete)
        return super().RegisterResource(request)


def context_digest(context: str, dockerfile: str, args: Mapping[str, str]) -> str:
    """sha256 of what a build reads: the context's files that ``.dockerignore`` admits (names
    and contents), the Dockerfile and the build args. A change of it makes the provider build
    again, as pulumi-docker does with its own context hash."""
    ignore = Path(context, ".dockerignore")
    patterns = [line.strip() for line in ignore.read_text().splitlines()
                if line.strip() and not line.startswith("#")] if ignore.exists() else []
    digest = hashlib.sha256()
    for relative in sorted(exclude_paths(context, patterns, dockerfile=None)):
        path = Path(context, relative)
        if path.is_file():
            digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(Path(dockerfile).read_bytes())
    digest.update(json.dumps(dict(args), sort_keys=True).encode())
    return digest.hexdigest()


class DockerEngineMocks(pulumi.runtime.Mocks):
    """Mocks whose ``new_resource`` applies each docker resource to the local engine.

    One instance is one stack's engine state: run the program again with changed config
    (``install`` then the program) and each resource is kept, updated, replaced or, once the
    run is over (``finish_run``), deleted, as the provider would; ``destroy`` deletes them all.
    """

    def __init__(self, run_id: str, client: docker.DockerClient | None = None,
                 functions: Mapping[str, dict[str, Any]] | None = None,
                 build_cache: bool = True) -> None:
        self.run_id = run_id
        self.client = client or engine_client()
        self.functions = dict(functions or {})
        self.labels = {RUN_LABEL: run_id}
        self.build_cache = build_cache
        """False builds every image from scratch (``nocache``), to time cold builds."""
        self.passwords: dict[str, str] = {}
        """Resource name -> generated ``RandomPassword`` result (for leak checks)."""
        self.closed = False
        self._busy = 0
        self._idle = threading.Condition()
        self.timings: dict[str, float] = {}
        """Seconds per image build (``image <imageName>``) and per container create-to-healthy
        (``container <name>``)."""
        self.state: dict[tuple[str, str], Applied] = {}
        """(type, name) -> the resource as applied, in creation order."""
        self.delete_before_replace: dict[tuple[str, str], bool] = {}
        self.replace_on_changes: dict[tuple[str, str], set[str]] = {}
        self.retain_on_delete: dict[tuple[str, str], bool] = {}
        """(type, name) -> inputs whose change forces a replacement (``replace_on_changes``)."""
        self.seen: set[tuple[str, str]] = set()
        """Resources the current run registered; the rest are deleted by ``finish_run``."""
        self.actions: list[tuple[str, str]] = []
        """(action, resource name) of every step: create, same, update, replace, delete,
        retain (a delete that left the object on the engine)."""
        self.stops: dict[str, float] = {}
        """Container name -> seconds its graceful stop took on delete (the last one)."""
        self.removed_logs: dict[str, str] = {}
        """Container name -> its whole log when it was deleted (the last one)."""

    def install(self, project: str, stack: str) -> None:
        """Make these mocks the runtime's, for one run of a program (``preview=False``)."""
        self.seen = set()
        pulumi.runtime.set_mocks(self, project=project, stack=stack, preview=False,
                                 monitor=OptionsMonitor(self))  # fmt: skip

    def finish_run(self) -> None:
        """Delete what the run did not register, in reverse creation order (dependents first)."""
        for key in [key for key in reversed(self.state) if key not in self.seen]:
            self._delete(self.state.pop(key))

    def destroy(self) -> None:
        """``pulumi destroy``: delete every resource, dependents first."""
        self.seen = set()
        self.finish_run()

    def close(self, timeout: float = 600) -> None:
        """Refuse further resources and wait for those being created to finish.

        After a failure the runtime returns while other registrations may still be building or
        starting in its worker threads; closing first means nothing appears after a clean-up.
        Health waits in progress stop at their next poll.
        """
        with self._idle:
            self.closed = True
            if not self._idle.wait_for(lambda: self._busy == 0, timeout):
                raise RuntimeError(f"run {self.run_id}: {self._busy} creations still running")

    def cleanup(self, images: bool = False) -> None:
        """Close, then remove the run's objects; a run built without cache takes its layers."""
        self.close()
        cleanup(self.run_id, self.client, images, keep_cache=self.build_cache)
        self.state.clear()

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:  # type: ignore[override]
        """The canned result given for this function; unknown functions raise."""
        if args.token not in self.functions:
            raise NotImplementedError(f"not emulated: function {args.token}")
        return dict(self.functions[args.token])

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        if not args.custom:
            return "", {}
        if dynamic_resources.is_dynamic(args.typ) and not args.resource_id:
            return self._dynamic(args)
        if args.typ not in _ACCEPTED or args.resource_id:
            raise NotImplementedError(f"not emulated: {args.typ} {args.name!r}")
        with self._idle:
            if self.closed:
                raise RuntimeError(f"run {self.run_id} is closed: {args.name!r} not created")
            self._busy += 1
        try:
            return self._apply(args)
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def _apply(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        """Create, keep, update or replace the resource, as the provider would."""
        key = (args.typ, args.name)
        self.seen.add(key)
        inputs = dynamic_resources.plain(args.inputs)
        _check_inputs(args.typ, args.name, inputs)
        old = self.state.get(key)
        digest = self._digest(inputs) if args.typ == IMAGE else ""
        if old is None:
            return self._record("create", args, inputs, digest)
        changed = {k for k in set(inputs) | set(old.inputs)
                   if not (_unset(inputs.get(k)) and _unset(old.inputs.get(k)))
                   and inputs.get(k) != old.inputs.get(k)}  # fmt: skip
        if not changed and digest == old.digest:
            self.actions.append(("same", args.name))
            return old.id, {**args.inputs, **old.outputs, **args.inputs}
        if args.typ == IMAGE:  # a changed context or input: the provider builds again
            return self._record("update", args, inputs, digest)
        forced = changed & self.replace_on_changes.get(key, set())
        if args.typ == CONTAINER and not forced and changed <= UPDATED_IN_PLACE | STATE_ONLY:
            self._update_container(old.id, inputs, changed)
            old.inputs, old.outputs = inputs, {**old.outputs, **args.inputs}
            self.actions.append(("update", args.name))
            return old.id, old.outputs
        if self.delete_before_replace.get(key):
            self._delete(old)  # its state entry stays, in place, for the replacement
            return self._record("replace", args, inputs, digest)
        replaced = self._record("replace", args, inputs, digest)  # create first, then delete
        self._delete(old)
        return replaced

    def _dynamic(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        """A dynamic resource: kept while its provider's diff finds nothing, else created anew
        (a replacement: nothing to delete on the engine)."""
        key = (args.typ, args.name)
        self.seen.add(key)
        old = self.state.get(key)
        if old is not None and not dynamic_resources.changed(old.id, args.inputs, old.outputs):
            self.actions.append(("same", args.name))
            return old.id, old.outputs
        resource_id, outputs = dynamic_resources.create(args.inputs)
        self.state[key] = Applied(args.typ, args.name, resource_id, {}, outputs, False)
        self.actions.append(("create" if old is None else "replace", args.name))
        return resource_id, outputs

    def _record(self, action: str, args: pulumi.runtime.MockResourceArgs,
                inputs: dict[str, Any], digest: str) -> tuple[str, dict]:
        create = {NETWORK: self._network, VOLUME: self._volume, IMAGE: self._image,
                  CONTAINER: self._container, PASSWORD: self._password,
                  RANDOM_ID: self._random_id}[args.typ]
        resource_id, computed = create(args.name, inputs)
        outputs = {**args.inputs, **computed}
        key = (args.typ, args.name)
        self.state[key] = Applied(args.typ, args.name, resource_id, inputs, outputs,
                                  self.delete_before_replace.get(key, False), digest,
                                  self.retain_on_delete.get(key, False))
        self.actions.append((action, args.name))
        return resource_id, outputs

    @staticmethod
    def _digest(inputs: dict[str, Any]) -> str:
        build = inputs.get("build") or {}
        context = os.path.abspath(build.get("context") or ".")
        dockerfile = os.path.abspath(build.get("dockerfile") or os.path.join(context, "Dockerfile"))
        return context_digest(context, dockerfile, build.get("args") or {})

    def _update_container(self, container_id: str, inputs: dict[str, Any],
                          changed: set[str]) -> None:
        """``docker update`` of what the provider updates in place (restart policy, limits)."""
        if not changed & UPDATED_IN_PLACE:
            return
        memory = int(inputs.get("memory") or 0)
        self.client.api.update_container(
            container_id, restart_policy={"Name": inputs.get("restart") or "no"},
            cpu_shares=int(inputs.get("cpuShares") or 0) or None,
            mem_limit=f"{memory}m" if memory else None)

    def _delete(self, applied: Applied) -> None:
        """Delete as the provider does: containers stopped first when ``destroy_grace_seconds``
        is set (the container's stop signal, then SIGKILL after that many seconds), else removed
        by force (SIGKILL); networks and volumes removed; images and random values left alone
        (pulumi-docker's Image delete does not remove the local image). A resource with
        ``retain_on_delete`` is left on the engine: Pulumi drops it from the state only."""
        if applied.retain_on_delete:
            self.actions.append(("retain", applied.name))
            return
        api = self.client.api
        if applied.typ == CONTAINER:
            name = applied.inputs.get("name") or applied.name
            grace = int(applied.inputs.get("destroyGraceSeconds") or 0)
            if grace > 0:
                started = time.monotonic()
                api.stop(applied.id, timeout=grace)
                self.stops[name] = round(time.monotonic() - started, 2)
            self.removed_logs[name] = api.logs(applied.id).decode(errors="replace")
            api.remove_container(applied.id, force=True, v=True)
        elif applied.typ == NETWORK:
            api.remove_network(applied.id)
        elif applied.typ == VOLUME:
            api.remove_volume(applied.id, force=True)
        self.actions.append(("delete", applied.name))

    def _name(self, resource_name: str, inputs: Mapping[str, Any]) -> str:
        return inputs.get("name") or f"{resource_name}-{secrets.token_hex(4)}"

    def _labels(self, items: list[dict[str, str]] | None) -> dict[str, str]:
        return {**{i["label"]: i["value"] for i in items or []}, **self.labels}

    def _password(self, resource_name: str, inputs: dict[str, Any]) -> tuple[str, dict]:
        result = random_password(inputs, secrets.SystemRandom())
        self.passwords[resource_name] = result
        return "none", {"result": result}

    def _random_id(self, resource_name: str, inputs: dict[str, Any]) -> tuple[str, dict]:
        return random_id(inputs, secrets.SystemRandom())

    def _network(self, resource_name: str, inputs: dict[str, Any]) -> tuple[str, dict]:
        name = self._name(resource_name, inputs)
        network = self.client.networks.create(
            name, internal=bool(inputs.get("internal")), labels=self._labels(inputs.get("labels")),
            check_duplicate=True)
        return network.id, {"name": name, "driver": "bridge", "scope": "local"}

    def _volume(self, resource_name: str, inputs: dict[str, Any]) -> tuple[str, dict]:
        name = self._name(resource_name, inputs)
        volume = self.client.volumes.create(name, labels=self._labels(inputs.get("labels")))
        mountpoint = volume.attrs["Mountpoint"]
        return volume.name, {"name": name, "driver": "local", "mountpoint": mountpoint}

    def _image(self, resource_name: str, inputs: dict[str, Any]) -> tuple[str, dict]:
        if not inputs.get("skipPush"):
            raise NotImplementedError(f"not emulated: {IMAGE} {resource_name!r} push (skip_push)")
        build = inputs.get("build") or {}
        context = os.path.abspath(build.get("context") or ".")
        dockerfile = os.path.abspath(build.get("dockerfile") or os.path.join(context, "Dockerfile"))
        args = {k: str(v) for k, v in (build.get("args") or {}).items()}
        started = time.monotonic()
        try:
            image, _ = self.client.images.build(
                path=context, dockerfile=dockerfile, tag=inputs["imageName"], buildargs=args,
                labels=self.labels, rm=True, forcerm=True, nocache=not self.build_cache)
        except BuildError as exc:
            log = "".join(str(c.get("stream") or c.get("error") or "") for c in exc.build_log)
            raise RuntimeError(f"building {inputs['imageName']}: {exc}\n{log[-3000:]}") from exc
        self.timings[f"image {inputs['imageName']}"] = round(time.monotonic() - started, 2)
        return image.id, {"imageName": inputs["imageName"], "repoDigest": image.id,
                          "baseImageName": inputs["imageName"], "context": context,
                          "dockerfile": dockerfile, "registryServer": ""}

    def _container(self, resource_name: str, inputs: dict[str, Any]) -> tuple[str, dict]:
        api = self.client.api
        name = self._name(resource_name, inputs)
        ports = inputs.get("ports") or []
        bindings = {f"{int(p['internal'])}/{p.get('protocol') or 'tcp'}":
                    (p.get("ip") or "0.0.0.0", int(p["external"]) if p.get("external") else None)
                    for p in ports}
        binds = [f"{v['volumeName']}:{v['containerPath']}:{'ro' if v.get('readOnly') else 'rw'}"
                 for v in inputs.get("volumes") or []]
        networks = inputs.get("networksAdvanced") or []
        memory = int(inputs.get("memory") or 0)
        host_config = api.create_host_config(
            port_bindings=bindings, binds=binds,
            restart_policy={"Name": inputs.get("restart") or "no"},
            network_mode=networks[0]["name"] if networks else None,
            shm_size=f"{int(inputs['shmSize'])}m" if inputs.get("shmSize") else None,
            mem_limit=f"{memory}m" if memory else None,
            cpu_shares=int(inputs.get("cpuShares") or 0) or None,
            sysctls=inputs.get("sysctls") or None)
        networking = api.create_networking_config(
            {networks[0]["name"]: api.create_endpoint_config(aliases=networks[0].get("aliases"))}
        ) if networks else None
        created = api.create_container(
            inputs["image"], name=name, command=inputs.get("command"),
            entrypoint=inputs.get("entrypoints"), environment=inputs.get("envs"),
            user=inputs.get("user") or "", labels=self._labels(inputs.get("labels")),
            ports=[(int(p["internal"]), p.get("protocol") or "tcp") for p in ports],
            healthcheck=self._healthcheck(inputs.get("healthcheck")),
            stop_signal=inputs.get("stopSignal") or None,
            stop_timeout=int(inputs["stopTimeout"]) if inputs.get("stopTimeout") else None,
            host_config=host_config, networking_config=networking)
        container_id = created["Id"]
        for extra in networks[1:]:
            api.connect_container_to_network(
                container_id, extra["name"], aliases=extra.get("aliases"))
        if inputs.get("uploads"):
            api.put_archive(container_id, "/", self._upload_archive(inputs["uploads"]))
        started = time.monotonic()
        api.start(container_id)
        if inputs.get("wait"):
            self._wait_healthy(container_id, name, int(inputs.get("waitTimeout") or 60))
            self.timings[f"container {name}"] = round(time.monotonic() - started, 2)
        state = api.inspect_container(container_id)
        if inputs.get("mustRun", True) and not state["State"]["Running"]:
            raise RuntimeError(f"container {name} is not running:\n{self._logs(container_id)}")
        datas = [{"networkName": net, "ipAddress": ep["IPAddress"], "aliases": ep.get("Aliases")}
                 for net, ep in state["NetworkSettings"]["Networks"].items()]
        return container_id, {"name": name, "networkDatas": datas}

    @staticmethod
    def _healthcheck(check: dict[str, Any] | None) -> dict[str, Any] | None:
        if not check:
            return None
        durations = {"interval": "interval", "timeout": "timeout", "start_period": "startPeriod"}
        return {"test": check["tests"], "retries": int(check.get("retries") or 0),
                **{key: parse_duration(check.get(src) or "0s") for key, src in durations.items()}}

    @staticmethod
    def _upload_archive(uploads: list[dict[str, Any]]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for upload in uploads:
                data = str(upload["content"]).encode()
                info = tarfile.TarInfo(upload["file"].lstrip("/"))
                info.size, info.mtime = len(data), int(time.time())
                default_mode = "0744" if upload.get("executable") else "0644"
                info.mode = int(upload.get("permissions") or default_mode, 8)
                info.uid = _resolve_id(upload.get("owner"), pwd.getpwnam)
                info.gid = _resolve_id(upload.get("group"), grp.getgrnam)
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    def _wait_healthy(self, container_id: str, name: str, timeout: int) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.client.api.inspect_container(container_id)["State"]
            health = (state.get("Health") or {}).get("Status")
            if health is None:
                raise RuntimeError(f"container {name}: wait=True needs a healthcheck")
            if health == "healthy":
                return
            if self.closed:
                raise RuntimeError(f"container {name}: run closed while waiting for health")
            if not state["Running"] or time.monotonic() > deadline:
                why = f"not healthy after {timeout}s ({health})" if state["Running"] else "exited"
                raise RuntimeError(f"container {name} {why}:\n{self._logs(container_id)}")
            time.sleep(0.5)

    def _logs(self, container_id: str) -> str:
        return self.client.api.logs(container_id, tail=50).decode(errors="replace")
