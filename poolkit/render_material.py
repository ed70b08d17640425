"""What ``poolkit render --target kubernetes`` puts in the objects besides the credentials: the
stack's certificate (given, or generated once and kept in ``OUT/tls.json``, 0600, so that
rendering again is byte-stable) and an external Postgres's CA (read from ``ca_file``)."""

from __future__ import annotations

import json
from pathlib import Path

from poolkit import external, tls
from poolkit.config import NAMESPACE, ConfigError, Encrypted, Problem, StackConfig
from poolkit.envfile import write_private
from poolkit.layouts import kubernetes_certificate_names
from poolkit.manifests import Material, needs_certificate

TLS_FILE = "tls.json"
"""The generated CA and server certificate with their keys, beside secrets.json."""


def render_material(stack: StackConfig, out: Path) -> Material:
    """The material, or ConfigError naming what cannot be read here."""
    problems = external.ca_problems(stack)
    given = {field: getattr(stack.tls, field) for field in ("certificate", "key", "ca")}
    encrypted = [f"tls_{field}" for field, value in given.items() if isinstance(value, Encrypted)]
    for key in encrypted:
        problems.append(Problem(f"{NAMESPACE}:{key}", "secure: …",
                                "is encrypted by Pulumi, which only `pulumi up` can decrypt",
                                "review the objects with `pulumi preview`, or render a copy of "
                                "the stack file that generates its certificate"))  # fmt: skip
    if problems:
        raise ConfigError(problems)
    server_ca = external.server_ca_pem(stack)
    if not needs_certificate(stack):
        return Material(server_ca=server_ca)
    if stack.tls.given:
        material = tls.ServerTls(cert=str(given["certificate"]), key=str(given["key"]),
                                 ca=str(given["ca"]) if given["ca"] else None)  # fmt: skip
        return Material(material, server_ca)
    return Material(_generated(stack, out / TLS_FILE), server_ca)


def _generated(stack: StackConfig, path: Path) -> tls.ServerTls:
    """The kept CA and certificate; a new CA on first use, a new certificate when the names
    changed or it expires soon."""
    names = kubernetes_certificate_names(stack)
    kept = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if "ca_cert" in kept:
        ca = tls.KeyPair(cert=kept["ca_cert"], key=kept["ca_key"])
    else:
        ca = tls.new_ca(f"poolkit {stack.stack} CA")
    if "ca_cert" in kept and not tls.needs_renewal(kept["cert"], names):
        server = tls.KeyPair(cert=kept["cert"], key=kept["key"])
    else:
        server = tls.issue_server(ca, names)
    write_private(path, json.dumps({"ca_cert": ca.cert, "ca_key": ca.key, "cert": server.cert,
                                    "key": server.key}, indent=2) + "\n")  # fmt: skip
    return tls.ServerTls(cert=server.cert, key=server.key, ca=ca.cert)
