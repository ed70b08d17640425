"""TLS and exposure: validation of publish addresses, certificates, and what gets rendered."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509

from poolkit import tls
from poolkit.config import ConfigError
from poolkit.envfile import parse_env
from poolkit.layouts import certificate_names, docker_layout, local_layout
from poolkit.local.files import ini_settings
from poolkit.pulumi_certificates import GeneratedCaProvider, ServerCertificateProvider
from poolkit.render import render_all
from poolkit.sizing import plan
from tests.unit.factories import first_ini, secrets, stack

pytestmark = pytest.mark.unit


def _problems(**sections) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        stack(**sections)
    return {p.key: str(p) for p in caught.value.problems}


def _files(layout=None, **sections) -> dict[str, str]:
    config = stack(**sections)
    return render_all(config, plan(config), secrets(), layout or docker_layout(config))


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.2", "0.0.0.0", "10.1.2.3", "::"])
def test_pgbouncer_beyond_127_0_0_1_without_client_tls_is_refused(address: str) -> None:
    problems = _problems(pgbouncer={"publish_address": address}, tls={"names": ["db.example.com"]})
    message = problems["poolkit:pgbouncer.publish_address"]
    assert "without TLS" in message and address in message
    assert "client_tls: true" in message


def test_postgres_beyond_loopback_needs_pgbouncer_to_use_tls() -> None:
    problems = _problems(postgres={"publish": True, "publish_address": "127.0.0.2"})
    message = problems["poolkit:postgres.publish_address"]
    assert "'127.0.0.2'" in message and "server_tls: true" in message


def test_every_exposure_problem_is_reported_at_once() -> None:
    problems = _problems(pgbouncer={"publish_address": "0.0.0.0"},
                         postgres={"publish_address": "0.0.0.0"}, tls_key="-----BEGIN x")
    assert set(problems) == {
        "poolkit:pgbouncer.publish_address", "poolkit:postgres.publish_address",
        "poolkit:tls.names", "poolkit:tls_key",
    }  # fmt: skip
    assert "every interface" in problems["poolkit:tls.names"]
    assert "***" in problems["poolkit:tls_key"]


@pytest.mark.parametrize(
    ("sections", "key", "hint"),
    [
        ({"pgbouncer": {"publish_address": "db.example.com"}}, "poolkit:pgbouncer.publish_address",
         "IP address"),
        ({"tls": {"names": ["bad name!"]}}, "poolkit:tls.names", "neither a DNS name"),
        ({"tls": {"names": ["*.example.com"]}}, "poolkit:tls.names", "not a wildcard"),
        ({"tls": {"names": "db.example.com"}}, "poolkit:tls.names", "must be a list"),
        ({"tls": {"ca_file": "a b.crt"}}, "poolkit:tls.ca_file", "without spaces"),
        ({"tls_certificate": "not pem"}, "poolkit:tls_certificate", "PEM"),
        ({"tls": {"generation": 0}}, "poolkit:tls.generation", "between 1"),
    ],
)  # fmt: skip
def test_bad_tls_values_name_key_value_and_fix(sections, key, hint) -> None:
    problems = _problems(**sections)
    assert hint in problems[key], problems


def test_loopback_with_client_tls_and_names_is_valid() -> None:
    config = stack(pgbouncer={"publish_address": "127.0.0.2", "client_tls": True})
    assert config.pgbouncer.publish_address == "127.0.0.2"
    assert config.uses_tls and not config.postgres_tls


# --- certificates -------------------------------------------------------------------------------


def test_generated_certificate_verifies_against_its_ca_for_every_name() -> None:
    config = stack(pgbouncer={"publish_address": "0.0.0.0", "client_tls": True},
                   tls={"names": ["db.example.com"]})  # fmt: skip
    names = certificate_names(config)
    assert names[0] == "db.example.com" and "postgres" in names and "0.0.0.0" not in names
    ca, server = tls.generate(names, "test CA")
    cert = x509.load_pem_x509_certificate(server.cert.encode())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert.encode()))
    assert tls.check_given(server.cert, server.key, ca.cert, ["db.example.com", "127.0.0.1"]) == []


def test_a_given_certificate_is_checked_against_key_ca_and_names() -> None:
    _, server = tls.generate(["db.example.com"], "test CA")
    stranger = tls.new_ca("stranger")
    problems = tls.check_given(server.cert, stranger.key, stranger.cert, ["api.example.com"])
    assert len(problems) == 3
    assert any("does not belong" in p for p in problems)
    assert any("'api.example.com'" in p for p in problems)
    assert any("not signed by tls_ca" in p for p in problems)


def test_renewal_when_a_name_is_missing_or_expiry_is_near() -> None:
    ca = tls.new_ca("test CA")
    server = tls.issue_server(ca, ["a.example.com"])
    assert not tls.needs_renewal(server.cert, ["a.example.com"])
    assert tls.needs_renewal(server.cert, ["b.example.com"])
    assert tls.needs_renewal(tls.issue_server(ca, ["a.example.com"], days=10).cert)


# --- rendering ----------------------------------------------------------------------------------


def test_client_tls_urls_verify_full_with_the_ca_file() -> None:
    files = _files(pgbouncer={"publish_address": "127.0.0.2", "client_tls": True},
                   apps=[{"name": "a", "style": "lambda"}])  # fmt: skip
    env = parse_env(files[".env"])
    pooled = _query(env["POOLED_DATABASE_URL"])
    assert urlsplit(env["POOLED_DATABASE_URL"]).hostname == "127.0.0.2"
    assert pooled["sslmode"] == "verify-full"
    assert pooled["sslrootcert"].endswith("/.poolkit/test/tls-ca.crt")
    assert env["DATABASE_URL"] == env["POOLED_DATABASE_URL"]
    prisma = _query(env["PRISMA_ENGINE_DATABASE_URL"])
    assert (prisma["sslmode"], prisma["sslaccept"]) == ("require", "strict")
    assert prisma["sslcert"] == pooled["sslrootcert"]
    assert _query(env["PGBOUNCER_STATS_URL"])["sslmode"] == "verify-full"
    assert "sslmode" not in env["DIRECT_URL"]


def test_urls_use_the_first_tls_name_as_host() -> None:
    files = _files(pgbouncer={"publish_address": "0.0.0.0", "client_tls": True},
                   tls={"names": ["db.example.com", "10.0.0.5"], "ca_file": "/var/task/ca.crt"})
    env = parse_env(files[".env"])
    assert urlsplit(env["POOLED_DATABASE_URL"]).hostname == "db.example.com"
    assert _query(env["POOLED_DATABASE_URL"])["sslrootcert"] == "/var/task/ca.crt"


def test_a_given_certificate_without_ca_verifies_with_system_roots() -> None:
    files = _files(pgbouncer={"client_tls": True, "server_tls": True},
                   tls_certificate="-----BEGIN CERTIFICATE-----", tls_key="-----BEGIN KEY")
    env = parse_env(files[".env"])
    assert _query(env["POOLED_DATABASE_URL"])["sslrootcert"] == "system"
    ini = ini_settings(first_ini(files))
    assert ini["server_tls_sslmode"] == "require"
    assert "server_tls_ca_file" not in ini


def test_server_tls_renders_postgres_ssl_hostssl_and_verify_full() -> None:
    files = _files(pgbouncer={"server_tls": True})
    ini = ini_settings(first_ini(files))
    assert ini["server_tls_sslmode"] == "verify-full"
    assert ini["server_tls_ca_file"] == "/etc/pgbouncer/tls-ca.crt"
    assert "client_tls_sslmode" not in ini
    conf = files["postgresql.conf"]
    assert "ssl = on" in conf
    assert "ssl_key_file = '/etc/poolkit/client-tls.key'" in conf
    hba = [line.split() for line in files["pg_hba.conf"].splitlines() if line.startswith("host")]
    assert ["hostssl", '"app"', '"app"', "samenet", "scram-sha-256"] in hba
    assert ["host", '"app"', '"migrator"', "samenet", "scram-sha-256"] in hba


def test_published_postgres_is_tls_only_and_for_the_migrator_only() -> None:
    files = _files(postgres={"publish": True, "publish_address": "0.0.0.0"},
                   pgbouncer={"server_tls": True}, tls={"names": ["db.example.com"]})
    hba = [line.split() for line in files["pg_hba.conf"].splitlines() if line.startswith("host")]
    everywhere = [r for r in hba if r[3] in ("0.0.0.0/0", "::/0")]
    assert everywhere and all(r[0] == "hostssl" and r[2] == '"migrator"' for r in everywhere)
    assert {r[0] for r in hba} == {"hostssl"}, "a plain-text line on a published Postgres"
    assert "ssl = on" in files["postgresql.conf"]
    direct = parse_env(files[".env"])["DIRECT_URL"]
    assert urlsplit(direct).hostname == "db.example.com"
    assert _query(direct)["sslmode"] == "verify-full"


def test_no_tls_renders_nothing_of_it() -> None:
    files = _files()
    assert "ssl" not in files["postgresql.conf"]
    assert "tls" not in first_ini(files)
    assert "hostssl" not in files["pg_hba.conf"]
    assert "sslmode" not in files[".env"]


def test_local_layout_listens_on_the_publish_address_and_loopback(tmp_path) -> None:
    config = stack(pgbouncer={"publish_address": "127.0.0.2", "client_tls": True})
    layout = local_layout(config, tmp_path, "postgres")
    ini = ini_settings(first_ini(_files(layout=layout, pgbouncer={"publish_address": "127.0.0.2",
                                                                  "client_tls": True})))
    assert ini["listen_addr"] == "127.0.0.1,127.0.0.2"
    assert layout.tls_ca_file == str(tmp_path.resolve() / "conf" / "tls-ca.crt")


# --- Pulumi: generated certificates kept in the state -------------------------------------------


def test_the_pulumi_server_certificate_is_kept_until_generation_names_or_expiry_change() -> None:
    """What ``pulumi up`` does with the stored certificate: the provider's own diff."""
    ca = tls.new_ca("test CA")
    provider = ServerCertificateProvider()
    inputs = {"ca_cert_pem": ca.cert, "ca_key_pem": ca.key, "names": ["a.test"], "generation": 1}
    stored = provider.create(inputs).outs or {}
    assert tls.check_given(stored["cert_pem"], stored["key_pem"], ca.cert, ["a.test"]) == []
    assert not provider.diff("id", stored, inputs).changes, "an unchanged stack re-issued"
    for changed, key in (({"generation": 2}, "generation"), ({"names": ["b.test"]}, "names")):
        diff = provider.diff("id", stored, {**inputs, **changed})
        assert diff.changes and diff.replaces == [key]
    expiring = {**stored, "cert_pem": tls.issue_server(ca, ["a.test"], days=10).cert}
    assert provider.diff("id", expiring, inputs).replaces == ["cert_pem"]
    ca_provider = GeneratedCaProvider()
    kept = {"common_name": "x", "cert_pem": ca.cert, "key_pem": ca.key}
    assert not ca_provider.diff("id", kept, {"common_name": "x"}).changes
