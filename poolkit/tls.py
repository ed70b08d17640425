"""A self-signed certificate for PgBouncer's client TLS (dev and test stacks).

Production stacks should install a certificate from their own CA at the same paths.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path


def self_signed(common_name: str, days: int = 365) -> tuple[str, str]:
    """Return ``(key_pem, cert_pem)`` for ``common_name`` (also a subjectAltName), via openssl."""
    with tempfile.TemporaryDirectory() as folder:
        key, cert = Path(folder) / "key.pem", Path(folder) / "cert.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
             "-days", str(days), "-subj", f"/CN={common_name}",
             "-addext", f"subjectAltName=DNS:{common_name},IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        return key.read_text(), cert.read_text()
