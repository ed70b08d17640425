"""``poolkit:backup.s3_ca_file``: an S3 server with a private CA, verified instead of trusted
blindly. Its rules (repo s3, verification on, a readable PEM file), the pgbackrest.conf line,
and the message of a failed verification."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from poolkit import backup, tls
from poolkit.backup import Done
from poolkit.config import ConfigError
from poolkit.layouts import docker_layout, local_layout
from poolkit.render import render_pgbackrest_conf
from tests.unit.factories import stack
from tests.unit.test_backup import backup_secrets

pytestmark = pytest.mark.unit
KEY = "poolkit:backup.s3_ca_file"


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "private-ca.pem"
    path.write_text(tls.new_ca("test S3 CA").cert)
    return path


def s3(**extra: Any) -> dict[str, Any]:
    """An enabled S3 repository (``extra`` merged in)."""
    return {"enabled": True, "repo": "s3", "s3_bucket": "b", "s3_region": "r",
            "s3_endpoint": "minio.internal:9000", "s3_key": "AKID", **extra}  # fmt: skip


def conf(section: dict[str, Any], layout: str = "docker", state: Path | None = None) -> str:
    config = stack("shop", backup=section, backup_s3_key_secret="s3-secret-key")
    where = docker_layout(config) if layout == "docker" else local_layout(
        config, state or Path("/srv/state"), "postgres")  # fmt: skip
    return render_pgbackrest_conf(config, backup_secrets(backup_s3_key_secret="s3-secret-key"),
                                  where)  # fmt: skip


def test_the_ca_is_read_from_its_copy_beside_pgbackrest_conf(ca_file: Path,
                                                             tmp_path: Path) -> None:  # fmt: skip
    """Docker: the uploaded copy in /etc/poolkit; local: the state dir's conf/."""
    docker = conf(s3(s3_ca_file=str(ca_file)))
    assert "\nrepo1-storage-verify-tls=y\n" in docker
    assert "\nrepo1-storage-ca-file=/etc/poolkit/s3-ca.crt\n" in docker
    assert str(ca_file) not in docker, "pgBackRest reads the copy, not the host's path"
    local = conf(s3(s3_ca_file=str(ca_file)), "local", tmp_path / "state")
    assert f"\nrepo1-storage-ca-file={tmp_path}/state/conf/s3-ca.crt\n" in local


@pytest.mark.parametrize("section", [s3(), s3(s3_verify_tls=False), {"enabled": True}],
                         ids=["s3-system-roots", "s3-unverified", "posix"])  # fmt: skip
def test_without_the_key_no_ca_option_is_rendered(section: dict[str, Any]) -> None:
    assert "ca-file" not in conf(section)


def test_every_problem_is_reported_at_once_with_key_value_and_fix(tmp_path: Path) -> None:
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    cases = {
        "posix": ({"enabled": True, "repo": "posix", "s3_ca_file": str(not_pem)},
                  "is set but repo is posix", "use repo: s3"),
        "unverified": (s3(s3_verify_tls=False, s3_ca_file=str(not_pem)),
                       "s3_verify_tls is false", "remove s3_verify_tls: false"),
        "missing": (s3(s3_ca_file=str(tmp_path / "missing.pem")),
                    "cannot be read (FileNotFoundError", "PEM file of the S3 server's CA"),
        "no-pem": (s3(s3_ca_file=str(not_pem)), "holds no PEM certificate",
                   "-----BEGIN CERTIFICATE-----"),
        "relative": (s3(s3_ca_file="certs/ca.pem"), "must be an absolute file path",
                     "absolute path of the PEM file of the CA that signed the S3 server's"),
    }  # fmt: skip
    for name, (section, message, fix) in cases.items():
        with pytest.raises(ConfigError) as caught:
            stack(backup=section, backup_s3_key_secret="k")
        found = [p for p in caught.value.problems if p.key == KEY]
        assert found, f"{name}: {caught.value}"
        assert message in found[0].message and fix in found[0].fix, f"{name}: {found[0]}"
        assert found[0].value == section["s3_ca_file"], name
    with pytest.raises(ConfigError) as caught:  # two problems of the key, and another key's
        stack(backup=s3(s3_verify_tls=False, s3_ca_file=str(not_pem), s3_bucket=""),
              backup_s3_key_secret="k")  # fmt: skip
    messages = [str(p) for p in caught.value.problems]
    assert len(messages) == 3, messages
    assert any("s3_verify_tls is false" in m for m in messages)
    assert any("holds no PEM certificate" in m for m in messages)
    assert any(m.startswith("poolkit:backup.s3_bucket: is required") for m in messages)


@pytest.mark.parametrize("error", [  # pgBackRest 2.45's words
    "ERROR: [095]: unable to verify certificate presented by 'minio.internal:9000': [20] "
    "unable to get local issuer certificate",
    "ERROR: [095]: unable to find hostname '127.0.0.1' in certificate common name or subject "
    "alternative names",
], ids=["unknown-ca", "wrong-name"])  # fmt: skip
def test_a_failed_verification_names_tls_and_the_key_not_the_passphrase(error: str) -> None:
    with pytest.raises(backup.BackupError) as caught:
        backup.check(_Failing(error))
    text = str(caught.value)
    assert "TLS verification of the S3 server's certificate failed" in text
    assert KEY in text and "poolkit:backup.s3_endpoint" in text and error in text
    assert "passphrase" not in text


class _Failing:
    stanza, conf = "shop", "/etc/poolkit/pgbackrest.conf"
    restore_dir = previous_dir = "/unused"

    def __init__(self, error: str) -> None:
        self.error = error

    def pgbackrest(self, *args: str, timeout: float = 0) -> Done:
        return Done(95, "", self.error)
