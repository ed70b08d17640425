"""URLs round-trip through libpq's parser; SCRAM verifiers have the server's shape."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from poolkit import scram
from poolkit.urls import mask, postgres_url, prisma_engine_params

pytestmark = pytest.mark.unit

AWKWARD = st.text(
    alphabet=st.sampled_from(list("@:/%?#&=+ '\"\\abcXYZ09-_.~ünï中😀")) | st.characters(
        blacklist_categories=("Cs", "Cc")),
    min_size=1, max_size=40,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(user=AWKWARD, password=AWKWARD, dbname=AWKWARD)
def test_url_parts_round_trip_through_libpq(user: str, password: str, dbname: str) -> None:
    url = postgres_url(user, password, "127.0.0.1", 6432, dbname)
    parsed = conninfo_to_dict(url)
    assert parsed == {"user": user, "password": password, "host": "127.0.0.1", "port": "6432",
                      "dbname": dbname}  # fmt: skip


def test_ipv6_host_is_bracketed() -> None:
    assert conninfo_to_dict(postgres_url("u", "p", "::1", 5432, "d"))["host"] == "::1"


def test_libpq_rejects_prisma_parameters_so_they_stay_off_libpq_urls() -> None:
    params = prisma_engine_params(1, 10, prepared_statements=False)
    url = postgres_url("u", "p", "127.0.0.1", 6432, "d", params)
    assert url.endswith("?pgbouncer=true&connection_limit=1&pool_timeout=10")
    with pytest.raises(Exception, match="pgbouncer"):
        conninfo_to_dict(url)


def test_mask_hides_passwords_only() -> None:
    url = postgres_url("app", "s3cr%t@x", "127.0.0.1", 6432, "app")
    assert mask(f"pooled: {url}") == "pooled: postgresql://app:***@127.0.0.1:6432/app"


def test_scram_verifier_matches_rfc_7677_client_proof() -> None:
    """RFC 7677 section 3: user "user", password "pencil", salt and 4096 iterations as given.

    The RFC publishes the exchange, not the stored keys; recompute the ClientProof from our
    StoredKey path and compare with the RFC's proof.
    """
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    text = scram.verifier("pencil", salt, 4096)
    iterations, parsed_salt = scram.parse_verifier(text)
    assert (iterations, parsed_salt) == (4096, salt)
    stored_key = base64.b64decode(text.split("$")[2].split(":")[0])
    auth_message = (
        b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    )
    client_key = hmac.digest(
        hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096), b"Client Key", "sha256"
    )
    assert hashlib.sha256(client_key).digest() == stored_key
    signature = hmac.digest(stored_key, auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    assert base64.b64encode(proof) == b"dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="


def test_saslprep_maps_non_ascii_space_and_normalises() -> None:
    assert scram.saslprep("a\u00a0b") == "a b"
    assert scram.saslprep("\u2168") == "IX"  # NFKC
    assert scram.saslprep("soft\u00adhyphen") == "softhyphen"  # mapped to nothing
    assert scram.saslprep("bad\u0007bell") == "bad\u0007bell"  # prohibited: used as is
