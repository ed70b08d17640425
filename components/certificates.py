"""Certificates: the stack's TLS material, generated into the Pulumi state or given as secrets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from poolkit.config import StackConfig
from poolkit.layouts import certificate_names
from poolkit.pulumi_certificates import GeneratedCa, ServerCertificate
from poolkit.tls import ServerTls


@dataclass
class GivenTls:
    """The user's PEMs (``poolkit:tls_certificate``, ``tls_key``, ``tls_ca``), as secrets."""

    certificate: pulumi.Input[str]
    key: pulumi.Input[str]
    ca: pulumi.Input[str] | None = None


class Certificates(pulumi.ComponentResource):
    """A server certificate, its key and the CA clients verify with.

    Generated: a ``GeneratedCa`` and a ``ServerCertificate`` (``poolkit.pulumi_certificates``)
    whose PEMs live in the state, keys as secrets, so every ``pulumi up`` reuses them. Given:
    the stack's secrets, checked by the program before any resource exists.
    """

    material: pulumi.Output[ServerTls]
    """Everything a server and its clients need (secret)."""
    ca_pem: pulumi.Output[str]
    """The CA certificate clients verify with ("" for a public CA); not a secret."""

    def __init__(
        self, name: str, stack: StackConfig, given: GivenTls | None = None,
        opts: pulumi.ResourceOptions | None = None, names: Sequence[str] | None = None,
    ):  # fmt: skip
        """``names``: subjectAltNames of a generated certificate (default: the Docker and
        local targets', ``certificate_names``)."""
        super().__init__("poolkit:index:Certificates", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        if given is None:
            ca = GeneratedCa(f"{name}-ca", f"poolkit {stack.stack} CA", opts=child)
            server = ServerCertificate(f"{name}-server", ca, names or certificate_names(stack),
                                       stack.tls.generation, opts=child)  # fmt: skip
            parts = [server.cert_pem, server.key_pem, ca.cert_pem]
            self.ca_pem = pulumi.Output.unsecret(ca.cert_pem)
        else:
            parts = [given.certificate, given.key, given.ca or ""]
            self.ca_pem = pulumi.Output.unsecret(pulumi.Output.from_input(given.ca or ""))
        self.material = pulumi.Output.secret(pulumi.Output.all(*parts).apply(
            lambda v: ServerTls(cert=v[0], key=v[1], ca=v[2] or None)))  # fmt: skip
        self.register_outputs({"ca_pem": self.ca_pem})
