"""SCRAM-SHA-256 verifiers, computed in Python so no plaintext password lands in a file.

The format is PostgreSQL's (``pg_authid.rolpassword``) and PgBouncer's ``userlist.txt``:
``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (RFC 5802, RFC 7677).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import stringprep
import unicodedata

DEFAULT_ITERATIONS = 4096
"""PostgreSQL's default: what a password a person chose needs against offline guessing."""
GENERATED_ITERATIONS = 256
"""For long random passwords poolkit generates (192 bits): guessing one stays out of reach at any
count, while every connect pays the rounds in the client (4096 -> 256: 7x the pooled connect
rate; BENCHMARKS.md, "SCRAM iterations")."""
SALT_BYTES = 16


def saslprep(password: str) -> str:
    """Normalise ``password`` as PostgreSQL and libpq do (RFC 4013 SASLprep).

    Like PostgreSQL, a password that SASLprep prohibits is used as it is.
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c
        for c in password
        if not stringprep.in_table_b1(c)
    )
    normalised = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12, stringprep.in_table_c21, stringprep.in_table_c22,
        stringprep.in_table_c3, stringprep.in_table_c4, stringprep.in_table_c5,
        stringprep.in_table_c6, stringprep.in_table_c7, stringprep.in_table_c8,
        stringprep.in_table_c9, stringprep.in_table_a1,
    )  # fmt: skip
    if any(check(c) for c in normalised for check in prohibited):
        return password
    if any(stringprep.in_table_d1(c) for c in normalised):
        # Bidirectional text must start and end with RandALCat and contain no LCat.
        if not (stringprep.in_table_d1(normalised[0]) and stringprep.in_table_d1(normalised[-1])):
            return password
        if any(stringprep.in_table_d2(c) for c in normalised):
            return password
    return normalised


def verifier(password: str, salt: bytes, iterations: int = DEFAULT_ITERATIONS) -> str:
    """Return the SCRAM-SHA-256 verifier of ``password`` with the given salt."""
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def parse_verifier(text: str) -> tuple[int, bytes]:
    """The iteration count and salt of a verifier (to recompute it for another password)."""
    scheme, params, _keys = text.split("$")
    if scheme != "SCRAM-SHA-256":
        raise ValueError("not a SCRAM-SHA-256 verifier")
    iterations, salt = params.split(":")
    return int(iterations), base64.b64decode(salt)
