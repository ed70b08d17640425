"""Run the real Pulumi program (``__main__.py``) under Pulumi's mock runtime and record it.

``deploy(stack, config)`` installs the config and the mocks first (``preview=False``, so every
``apply`` runs), then runs ``__main__.py`` fresh, and returns what the program asked for:
each resource's inputs (secrets still marked), its parent, dependencies and options, plus the
stack outputs and which of them are secret.

The mocks add only what the engine or provider would compute (ids, an image's ``repoDigest``,
``RandomPassword`` and ``RandomId`` values, made by ``random_values`` from a generator seeded
by the resource name, so every run is the same) and pass the inputs through.
A resource type the program was not expected to create raises.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.settings import ROOT

from tests import dynamic_resources
from tests.dynamic_resources import plain

from .random_values import random_id, random_password

PROJECT = Path(__file__).resolve().parents[2]
PROGRAM = PROJECT / "__main__.py"

IMAGE = "docker:index/image:Image"
CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
PASSWORD = "random:index/randomPassword:RandomPassword"
RANDOM_ID = "random:index/randomId:RandomId"
KUBERNETES = "kubernetes:"
"""Type prefix of every pulumi_kubernetes resource (``kubernetes:apps/v1:Deployment``)."""


def is_secret(value: Any) -> bool:
    return rpc.is_rpc_secret(value)


@dataclass
class Registered:
    """One resource as the program registered it."""

    urn: str
    type: str
    name: str
    custom: bool
    parent: str
    inputs: dict[str, Any]
    """As sent to the engine: camelCase keys, numbers as floats, secrets still wrapped."""
    state: dict[str, Any]
    """What the mocks returned (inputs plus computed outputs)."""
    id: str
    dependencies: list[str]
    delete_before_replace: bool
    replace_on_changes: list[str]
    retain_on_delete: bool = False

    @property
    def args(self) -> dict[str, Any]:
        """The inputs with secret markers removed."""
        return plain(self.inputs)


@dataclass
class Deployment:
    resources: list[Registered]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    warnings: list[str] = field(default_factory=list)
    """Messages the program logged with ``pulumi.log.warn``."""

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.type == typ]

    def named(self, name: str) -> Registered:
        """The resource with logical name ``name`` (e.g. ``poolkit-postgres-container``)."""
        found = [r for r in self.resources if r.name == name]
        assert len(found) == 1, f"expected one resource named {name!r}, found {len(found)}"
        return found[0]

    def by_urn(self, urn: str) -> Registered:
        return next(r for r in self.resources if r.urn == urn)

    def containers(self) -> dict[str, Registered]:
        """Docker containers by their docker name (``poolkit-dev-postgres``)."""
        return {r.args["name"]: r for r in self.of_type(CONTAINER)}


class RecordingMocks(pulumi.runtime.Mocks):
    """Returns realistic provider outputs, deterministically (seeded by the resource name)."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        if not args.custom:
            return None, {}
        if dynamic_resources.is_dynamic(args.typ):  # poolkit's certificates: real provider code
            return dynamic_resources.create(dict(args.inputs))
        seed = hashlib.sha256(f"{args.typ}/{args.name}".encode()).hexdigest()
        inputs = dict(args.inputs)
        if args.typ == IMAGE:
            digest = f"sha256:{seed}"
            return digest, {**inputs, "repoDigest": digest, "baseImageName": inputs["imageName"],
                            "registryServer": "", "context": inputs["build"]["context"],
                            "dockerfile": inputs["build"]["dockerfile"]}  # fmt: skip
        if args.typ == CONTAINER:
            return seed, {**inputs, "networkDatas": []}
        if args.typ == NETWORK:
            return seed[:25], {**inputs, "driver": "bridge", "scope": "local"}
        if args.typ == VOLUME:
            name = inputs["name"]
            return name, {**inputs, "driver": "local",
                          "mountpoint": f"/var/lib/docker/volumes/{name}/_data"}  # fmt: skip
        if args.typ.startswith(KUBERNETES):
            metadata = plain(inputs.get("metadata") or {})
            return f"{metadata.get('namespace', '')}/{metadata.get('name', args.name)}", inputs
        if args.typ == PASSWORD:
            result = random_password(plain(inputs), random.Random(seed))
            return "none", {**inputs, "result": result}
        if args.typ == RANDOM_ID:
            resource_id, outputs = random_id(plain(inputs), random.Random(seed))
            return resource_id, {**inputs, **outputs}
        raise NotImplementedError(f"unexpected resource {args.typ} {args.name!r}")

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        raise NotImplementedError(f"unexpected function call {args.token}")


class RecordingMonitor(MockMonitor):
    """The mock engine, also recording what ``MockResourceArgs`` lacks: parent, deps, options."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.registered: list[Registered] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            registration = self.resources[response.urn]
            self.registered.append(Registered(
                urn=response.urn, type=request.type, name=request.name, custom=request.custom,
                parent=request.parent, inputs=rpc.deserialize_properties(request.object),
                state=dict(registration.state), id=registration.id,
                dependencies=list(request.dependencies),
                delete_before_replace=request.deleteBeforeReplace,
                replace_on_changes=list(request.replaceOnChanges),
                retain_on_delete=bool(request.retainOnDelete),
            ))  # fmt: skip
        return response


def stack_file_config(stack: str) -> dict[str, Any]:
    """The ``config:`` of ``Pulumi.<stack>.yaml`` in the project root."""
    document = yaml.safe_load((PROJECT / f"Pulumi.{stack}.yaml").read_text(encoding="utf-8"))
    return dict(document.get("config") or {})


def as_pulumi_config(config: dict[str, Any]) -> dict[str, str]:
    """Config as the CLI hands it to a program: strings stay, objects and lists become JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value)
            for key, value in config.items()}  # fmt: skip


def reset_runtime() -> None:
    """A fresh root stack, and a current event loop, for the next run under mocks.

    ``asyncio.run()`` elsewhere in the session (the burst simulator's tests) leaves the main
    thread without a current loop, and Pulumi's runtime asks for one.
    """
    ROOT.set(None)
    try:
        if not asyncio.get_event_loop().is_closed():
            return
    except RuntimeError:
        pass
    asyncio.set_event_loop(asyncio.new_event_loop())


def deploy(stack: str, config: dict[str, Any], secret_keys: tuple[str, ...] = ()) -> Deployment:
    """Run ``__main__.py`` for ``stack`` with ``config`` under fresh mocks; record everything.

    An exception of the program (e.g. RunError for an invalid stack) propagates; the monitor of
    the failed run is left on ``deploy.last_monitor`` so a test can check what was registered.
    """
    reset_runtime()
    pulumi.runtime.set_all_config(as_pulumi_config(config), list(secret_keys))
    mocks = RecordingMocks()
    monitor = RecordingMonitor(mocks)
    deploy.last_monitor = monitor  # type: ignore[attr-defined]
    warnings = _WarningCollector()
    logger = logging.getLogger(f"poolkit.tests.pulumi.{stack}")
    logger.propagate = False
    logger.handlers[:] = [warnings]
    pulumi.runtime.set_mocks(mocks, project="poolkit", stack=stack, preview=False,
                             monitor=monitor, logger=logger)  # fmt: skip
    outputs, secret_outputs = run_program()
    return Deployment(resources=monitor.registered, outputs=outputs,
                      secret_outputs=secret_outputs, warnings=warnings.messages)  # fmt: skip


def run_program() -> tuple[dict[str, Any], set[str]]:
    """Run ``__main__.py`` under the installed mocks; return its outputs and the secret ones.

    Whatever happens, no config or root stack is left behind for what runs next in this process.
    """
    outputs: dict[str, Any] = {}
    secret_outputs: set[str] = set()

    async def collect(exports: dict[str, Any]) -> None:
        for key, value in exports.items():
            output = pulumi.Output.from_input(value)
            outputs[key] = await output.future()
            if await output.is_secret():
                secret_outputs.add(key)

    @pulumi.runtime.test
    def run() -> pulumi.Output[None]:
        runpy.run_path(str(PROGRAM), run_name="__main__")
        root = pulumi.runtime.get_root_resource()
        assert root is not None
        return pulumi.Output.from_input(collect(root.outputs))  # type: ignore[attr-defined]

    try:
        run()
    finally:
        reset_runtime()
        pulumi.runtime.set_all_config({}, [])
    return outputs, secret_outputs


class _WarningCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def only_secrets_hold(deployment: Deployment, *needles: str) -> None:
    """Every Kubernetes Secret's data is a Pulumi secret, and no other object holds a needle."""
    for resource in deployment.resources:
        if not resource.type.startswith(KUBERNETES):
            continue
        if resource.type == "kubernetes:core/v1:Secret":
            assert is_secret(resource.inputs["stringData"]), resource.urn
            continue
        text = json.dumps(resource.args)
        for needle in needles:
            assert needle not in text, resource.urn
