"""Generated certificates kept in Pulumi state: two dynamic resources over ``poolkit.tls``.

The ``tls`` provider's plugin cannot be installed here, so poolkit ships its own small
providers (Pulumi dynamic providers, run by the Pulumi engine from this virtualenv):

- ``GeneratedCa`` makes a CA once. Its PEMs are the resource's outputs; the key is a secret
  output, so it is encrypted in the state. It is replaced only when its common name changes.
- ``ServerCertificate`` issues a server certificate from that CA for a list of names. It is
  replaced (a new key and certificate, same CA) when the names, the CA or
  ``poolkit:tls.generation`` change, or when a ``pulumi up`` runs within
  ``RENEW_BEFORE_DAYS`` of its expiry (its ``diff`` reads the stored certificate).

Nothing is random between runs: an unchanged stack re-reads the same PEMs from the state, so
the containers that carry them are not replaced by ``pulumi up``.

The provider classes live in this installed package (not in the program's folder) so that
the engine's dynamic-provider host, which unpickles them, can import them by reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider

from poolkit import tls

PROVIDER_KEY = "__provider"


def _changed(olds: dict[str, Any], news: dict[str, Any], keys: Sequence[str]) -> list[str]:
    return [key for key in keys if olds.get(key) != news.get(key)]


class GeneratedCaProvider(ResourceProvider):
    """Creates a CA (``poolkit.tls.new_ca``); outputs ``cert_pem`` and ``key_pem``."""

    INPUTS = ("common_name",)

    def create(self, props: dict[str, Any]) -> CreateResult:
        ca = tls.new_ca(str(props["common_name"]))
        serial = format(tls.serial_of(ca.cert), "x")
        return CreateResult(serial, {**props, "cert_pem": ca.cert, "key_pem": ca.key})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = _changed(olds, news, self.INPUTS)
        return DiffResult(changes=bool(changed), replaces=changed, delete_before_replace=False)


class ServerCertificateProvider(ResourceProvider):
    """Issues a server certificate from a CA (``poolkit.tls.issue_server``)."""

    INPUTS = ("ca_cert_pem", "names", "generation")

    def create(self, props: dict[str, Any]) -> CreateResult:
        ca = tls.KeyPair(cert=str(props["ca_cert_pem"]), key=str(props["ca_key_pem"]))
        server = tls.issue_server(ca, [str(n) for n in props["names"]])
        serial = format(tls.serial_of(server.cert), "x")
        return CreateResult(serial, {**props, "cert_pem": server.cert, "key_pem": server.key,
                                     "expires": tls.expires(server.cert).isoformat()})  # fmt: skip

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = _changed(olds, news, self.INPUTS)
        cert = olds.get("cert_pem")
        if not changed and cert and tls.needs_renewal(str(cert)):
            changed = ["cert_pem"]  # expiring: re-issue now, as the tls provider's early renewal
        return DiffResult(changes=bool(changed), replaces=changed, delete_before_replace=False)


class GeneratedCa(Resource, module="poolkit", name="GeneratedCa"):
    """A CA made once and kept in the state (key as a secret output)."""

    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]

    def __init__(self, name: str, common_name: str, opts: pulumi.ResourceOptions | None = None):
        secret = pulumi.ResourceOptions(additional_secret_outputs=["key_pem"])
        super().__init__(GeneratedCaProvider(), name,
                         {"common_name": common_name, "cert_pem": None, "key_pem": None},
                         pulumi.ResourceOptions.merge(opts, secret))  # fmt: skip


class ServerCertificate(Resource, module="poolkit", name="ServerCertificate"):
    """A server certificate for ``names`` signed by a ``GeneratedCa``."""

    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]
    expires: pulumi.Output[str]

    def __init__(
        self, name: str, ca: GeneratedCa, names: Sequence[str], generation: int,
        opts: pulumi.ResourceOptions | None = None,
    ):  # fmt: skip
        secret = pulumi.ResourceOptions(additional_secret_outputs=["key_pem", "ca_key_pem"])
        super().__init__(ServerCertificateProvider(), name, {
            "ca_cert_pem": ca.cert_pem, "ca_key_pem": pulumi.Output.secret(ca.key_pem),
            "names": list(names),
            "generation": generation, "cert_pem": None, "key_pem": None, "expires": None,
        }, pulumi.ResourceOptions.merge(opts, secret))  # fmt: skip
