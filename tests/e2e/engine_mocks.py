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
  interval, timeout, retries, startPeriod), restart, labels, user, wait, waitTimeout, mustRun.
- ``random:index/randomPassword:RandomPassword``: length, upper, lower, numeric (and the
  deprecated number), special, overrideSpecial, minUpper, minLower, minNumeric, minSpecial,
  keepers. ``result`` is generated here with ``secrets.SystemRandom``, as the provider
  generates it locally: the ``min*`` characters first, the rest from every enabled set, then
  shuffled; special characters default to the provider's ``!@#$%&*()-_=+[]{}<>:?``. The id is
  ``none``, as the provider's. ``bcryptHash`` is not returned (it reads as None).
- ``random:index/randomId:RandomId``: byteLength, prefix, keepers. ``byteLength`` random bytes
  from ``os.urandom``; ``id`` is their unpadded base64url form, and ``b64Url``, ``b64Std``
  (padded), ``hex`` and ``dec`` (big-endian integer) carry ``prefix`` in front, as the
  provider's do.
- Component resources (``custom=False``) get an empty state.

Not emulated: updates, replacement, deletion, refresh and diffs (every run creates fresh
objects; ``cleanup`` removes them), previews, provider resources, imports and reads, and any
other type or input. Those raise ``NotImplementedError("not emulated: ...")`` so a program
cannot silently depend on behaviour this file does not reproduce.

Every object created carries the label ``poolkit.test-run=<run id>``; ``cleanup(run_id)``
removes them. After a failure the runtime may return while other resources are still being
created in its worker threads: ``DockerEngineMocks.cleanup`` first closes the run (refuses new
resources, waits for those in flight), so nothing appears after the clean-up.
"""

from __future__ import annotations

import base64
import gc
import grp
import io
import os
import pwd
import re
import secrets
import string
import tarfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import docker
import pulumi
from docker.errors import BuildError, DockerException
from pulumi.runtime import rpc

RUN_LABEL = "poolkit.test-run"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
IMAGE = "docker:index/image:Image"
CONTAINER = "docker:index/container:Container"
PASSWORD = "random:index/randomPassword:RandomPassword"
RANDOM_ID = "random:index/randomId:RandomId"
# terraform-provider-random's default special characters.
SPECIAL = "!@#$%&*()-_=+[]{}<>:?"

# Inputs each type accepts. Any other input set to a value (even False) is rejected; the
# SDK itself fills Image.buildOnPreview and Image.skipPush.
_ACCEPTED: dict[str, set[str]] = {
    NETWORK: {"name", "internal", "labels"},
    VOLUME: {"name", "labels"},
    IMAGE: {"build", "imageName", "skipPush", "buildOnPreview"},
    CONTAINER: {
        "name", "image", "command", "entrypoints", "envs", "ports", "networksAdvanced",
        "volumes", "uploads", "healthcheck", "restart", "labels", "user", "wait",
        "waitTimeout", "mustRun",
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


def _plain(value: Any) -> Any:
    """The value with Pulumi's secret wrappers removed, recursively."""
    value = rpc.unwrap_rpc_secret(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


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


def random_password(inputs: Mapping[str, Any]) -> str:
    """A password as the provider makes one: required minimums, the rest from all sets, shuffled."""
    rng = secrets.SystemRandom()
    sets = {
        "upper": (string.ascii_uppercase, "minUpper"),
        "lower": (string.ascii_lowercase, "minLower"),
        "numeric": (string.digits, "minNumeric"),
        "special": (inputs.get("overrideSpecial") or SPECIAL, "minSpecial"),
    }
    length = int(inputs["length"])
    enabled = {key: inputs.get(key) is not False for key in sets}
    if inputs.get("number") is False:  # the deprecated spelling of numeric
        enabled["numeric"] = False
    chars: list[str] = []
    for alphabet, minimum in sets.values():
        chars += [rng.choice(alphabet) for _ in range(int(inputs.get(minimum) or 0))]
    pool = "".join(alphabet for key, (alphabet, _) in sets.items() if enabled[key])
    if length < 1 or len(chars) > length or not pool:
        raise ValueError(f"RandomPassword: length {length} below its minimums, or no set enabled")
    chars += [rng.choice(pool) for _ in range(length - len(chars))]
    rng.shuffle(chars)
    return "".join(chars)


def random_id(inputs: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """(id, outputs) of ``byteLength`` random bytes; every output but the id gets ``prefix``."""
    data = os.urandom(int(inputs["byteLength"]))
    prefix = inputs.get("prefix") or ""
    url = base64.urlsafe_b64encode(data).decode().rstrip("=")
    return url, {"b64Url": prefix + url, "b64Std": prefix + base64.b64encode(data).decode(),
                 "hex": prefix + data.hex(), "dec": prefix + str(int.from_bytes(data, "big"))}


class DockerEngineMocks(pulumi.runtime.Mocks):
    """Mocks whose ``new_resource`` creates each docker resource on the local engine."""

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

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:  # type: ignore[override]
        """The canned result given for this function; unknown functions raise."""
        if args.token not in self.functions:
            raise NotImplementedError(f"not emulated: function {args.token}")
        return dict(self.functions[args.token])

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        if not args.custom:
            return "", {}
        if args.typ not in _ACCEPTED or args.resource_id:
            raise NotImplementedError(f"not emulated: {args.typ} {args.name!r}")
        with self._idle:
            if self.closed:
                raise RuntimeError(f"run {self.run_id} is closed: {args.name!r} not created")
            self._busy += 1
        try:
            return self._create(args)
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def _create(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        inputs = _plain(args.inputs)
        _check_inputs(args.typ, args.name, inputs)
        create = {NETWORK: self._network, VOLUME: self._volume, IMAGE: self._image,
                  CONTAINER: self._container, PASSWORD: self._password,
                  RANDOM_ID: self._random_id}[args.typ]
        resource_id, outputs = create(args.name, inputs)
        return resource_id, {**args.inputs, **outputs}

    def _name(self, resource_name: str, inputs: Mapping[str, Any]) -> str:
        return inputs.get("name") or f"{resource_name}-{secrets.token_hex(4)}"

    def _labels(self, items: list[dict[str, str]] | None) -> dict[str, str]:
        return {**{i["label"]: i["value"] for i in items or []}, **self.labels}

    def _password(self, resource_name: str, inputs: dict[str, Any]) -> tuple[str, dict]:
        result = random_password(inputs)
        self.passwords[resource_name] = result
        return "none", {"result": result}

    def _random_id(self, resource_name: str, inputs: dict[str, Any]) -> tuple[str, dict]:
        return random_id(inputs)

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
        host_config = api.create_host_config(
            port_bindings=bindings, binds=binds,
            restart_policy={"Name": inputs.get("restart") or "no"},
            network_mode=networks[0]["name"] if networks else None)
        networking = api.create_networking_config(
            {networks[0]["name"]: api.create_endpoint_config(aliases=networks[0].get("aliases"))}
        ) if networks else None
        created = api.create_container(
            inputs["image"], name=name, command=inputs.get("command"),
            entrypoint=inputs.get("entrypoints"), environment=inputs.get("envs"),
            user=inputs.get("user") or "", labels=self._labels(inputs.get("labels")),
            ports=[(int(p["internal"]), p.get("protocol") or "tcp") for p in ports],
            healthcheck=self._healthcheck(inputs.get("healthcheck")),
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
