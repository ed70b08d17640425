"""Pulumi dynamic resources under the mock runtimes: run the resource's own provider.

A dynamic resource carries its provider, pickled by ``dill``, in the ``__provider`` input. The
Pulumi engine's dynamic-provider host unpickles it and calls ``create``; the mocks here do
the same, in process, so tests get the PEMs the real provider makes (not canned values).
Emulated: create, and ``diff`` against the stored outputs on a later run (``changed``), which
decides whether the engine keeps the resource or replaces it (``check`` is the identity, as
for poolkit's providers). Not emulated: update, read and delete (poolkit's providers replace
instead of updating, and deleting a certificate from the state needs no provider call).
"""

from __future__ import annotations

import base64
from typing import Any

import dill
from pulumi.runtime import rpc

DYNAMIC_PREFIX = "pulumi-python:dynamic"
PROVIDER_KEY = "__provider"


def is_dynamic(typ: str) -> bool:
    return typ.startswith(DYNAMIC_PREFIX)


def plain(value: Any) -> Any:
    """The value with Pulumi's secret wrappers removed, recursively."""
    value = rpc.unwrap_rpc_secret(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _provider(inputs: dict[str, Any]) -> Any:
    return dill.loads(base64.b64decode(plain(inputs[PROVIDER_KEY])))


def _props(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in plain(values).items() if k != PROVIDER_KEY}


def changed(resource_id: str, inputs: dict[str, Any], stored: dict[str, Any]) -> bool:
    """Whether the provider's ``diff`` of the stored outputs against new inputs asks for a
    change (poolkit's providers then replace the resource)."""
    return bool(_provider(inputs).diff(resource_id, _props(stored), _props(inputs)).changes)


def create(inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(id, state)`` from the pickled provider's ``create``, as the engine's host runs it."""
    result = _provider(inputs).create(_props(inputs))
    return str(result.id), {**inputs, **(result.outs or {})}
