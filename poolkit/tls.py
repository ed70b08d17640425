"""TLS certificates for every target, with ``cryptography``: generated or given, then checked.

A stack either brings its own certificate (PEM certificate, key and optionally the CA that
signed it: Pulumi stack secrets) or lets poolkit generate a private CA and a server certificate
signed by it. Keys are ECDSA P-256: every client poolkit supports (libpq, node-postgres, Prisma's
engine, PgBouncer itself) accepts them, and their handshakes are the cheapest of the common
choices. The CA is kept; the server certificate can be re-issued from it (rotation) while
clients keep verifying with the same CA file.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
"""A generated CA lives ten years: clients hold it, so it should change rarely."""
SERVER_DAYS = 397
"""A generated server certificate lives 397 days (the CA/Browser Forum's ceiling)."""
RENEW_BEFORE_DAYS = 30
"""A server certificate is re-issued when it expires within this many days."""
INTERNAL_NAMES = ("localhost", "127.0.0.1", "postgres", "pgbouncer")
"""Names every generated server certificate carries besides the stack's: loopback and the
containers' aliases on the private network (PgBouncer verifies Postgres as ``postgres``)."""


class CertificateError(ValueError):
    """Given PEM material is unusable; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM text."""

    cert: str
    key: str

    def __repr__(self) -> str:
        return "KeyPair(cert=…, key='***')"


@dataclass(frozen=True)
class ServerTls:
    """What a server needs (certificate chain and key) and what clients verify with (CA)."""

    cert: str
    key: str
    ca: str | None
    """PEM of the CA clients verify against; None when the certificate is from a public CA."""

    def __repr__(self) -> str:
        return f"ServerTls(cert=…, key='***', ca={'…' if self.ca else None})"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()  # fmt: skip


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def new_ca(common_name: str, days: int = CA_DAYS) -> KeyPair:
    """A self-signed CA that may sign server certificates (and nothing below them)."""
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = _now() - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return KeyPair(cert=_cert_pem(cert), key=_key_pem(key))


def issue_server(ca: KeyPair, names: Sequence[str], days: int = SERVER_DAYS) -> KeyPair:
    """A server certificate signed by ``ca`` whose subjectAltNames are ``names`` (DNS or IP)."""
    if not names:
        raise ValueError("a server certificate needs at least one name")
    ca_cert = x509.load_pem_x509_certificate(ca.cert.encode())
    ca_key = serialization.load_pem_private_key(ca.key.encode(), password=None)
    key = _new_key()
    start = _now() - datetime.timedelta(minutes=5)
    unique = list(dict.fromkeys(names))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unique[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in unique]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )  # fmt: skip
    return KeyPair(cert=_cert_pem(cert), key=_key_pem(key))


def generate(names: Sequence[str], common_name: str) -> tuple[KeyPair, KeyPair]:
    """``(ca, server)``: a new CA and a server certificate for ``names`` signed by it."""
    ca = new_ca(common_name)
    return ca, issue_server(ca, names)


def server_names(stack_names: Sequence[str], *extra: str) -> list[str]:
    """SANs of a generated server certificate: the stack's names first, then the internal ones."""
    return list(dict.fromkeys([*stack_names, *extra, *INTERNAL_NAMES]))


def names_of(cert_pem: str) -> list[str]:
    """The subjectAltNames of a certificate (DNS names and IP addresses) as text."""
    cert = _first_cert(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]  # fmt: skip


def expires(cert_pem: str) -> datetime.datetime:
    return _first_cert(cert_pem).not_valid_after_utc


def needs_renewal(
    cert_pem: str, names: Sequence[str] = (), within_days: int = RENEW_BEFORE_DAYS
) -> bool:
    """Whether a generated server certificate must be re-issued: expiring soon, or lacking
    one of ``names``."""
    soon = _now() + datetime.timedelta(days=within_days)
    return expires(cert_pem) <= soon or not set(names) <= set(names_of(cert_pem))


def _first_cert(pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError as error:
        raise CertificateError(f"is not a PEM certificate ({error})") from None


def _covers(cert: x509.Certificate, name: str) -> bool:
    """Whether ``name`` matches a SAN (exact, or one leading ``*.`` label for DNS names)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        return ipaddress.ip_address(name) in san.get_values_for_type(x509.IPAddress)
    except ValueError:
        pass
    wanted = name.lower()
    for pattern in (d.lower() for d in san.get_values_for_type(x509.DNSName)):
        if pattern == wanted:
            return True
        if pattern.startswith("*.") and "." in wanted and wanted.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def check_given(cert_pem: str, key_pem: str, ca_pem: str | None, names: Sequence[str]) -> list[str]:
    """Every problem with a user's certificate, key and CA for the client-facing ``names``.

    Each entry says what is wrong and how to fix it; an empty list means usable.
    """
    problems: list[str] = []
    try:
        cert = _first_cert(cert_pem)
    except CertificateError as error:
        return [f"tls_certificate {error}: give the PEM text of the server certificate"]
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as error:
        problems.append(f"tls_key is not an unencrypted PEM private key ({error}): "
                        "give the key without a passphrase")  # fmt: skip
    else:
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(serialization.Encoding.PEM, public) != \
                cert.public_key().public_bytes(serialization.Encoding.PEM, public):  # fmt: skip
            problems.append("tls_key does not belong to tls_certificate: give the key the "
                            "certificate was issued for")  # fmt: skip
    now = _now()
    if cert.not_valid_after_utc <= now:
        problems.append(f"tls_certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}: "
                        "renew it")  # fmt: skip
    elif cert.not_valid_before_utc > now:
        problems.append(f"tls_certificate is not valid before {cert.not_valid_before_utc}: "
                        "check the issuing clock")  # fmt: skip
    for name in names:
        if not _covers(cert, name):
            problems.append(f"tls_certificate does not cover {name!r} (it has "
                            f"{', '.join(names_of(cert_pem)) or 'no subjectAltNames'}): add it "
                            "to the certificate or remove it from poolkit:tls.names")  # fmt: skip
    if ca_pem:
        try:
            ca = _first_cert(ca_pem)
        except CertificateError as error:
            problems.append(f"tls_ca {error}: give the PEM text of the issuing CA")
        else:
            chain = x509.load_pem_x509_certificates(cert_pem.encode())
            if not any(signed_by(link, ca) for link in chain):
                problems.append("tls_certificate is not signed by tls_ca: give the CA that "
                                "issued it (or its chain's root)")  # fmt: skip
    return problems


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def serial_of(cert_pem: str) -> int:
    return _first_cert(cert_pem).serial_number
