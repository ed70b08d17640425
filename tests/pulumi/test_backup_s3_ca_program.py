"""The program with ``poolkit:backup.s3_ca_file``: the S3 server's private CA goes into the
Postgres container beside pgbackrest.conf, public (0644), and the conf points at it."""

from __future__ import annotations

from pathlib import Path

import pytest

from poolkit import tls

from .harness import deploy, stack_file_config

pytestmark = pytest.mark.pulumi
S3_BACKUP = {"enabled": True, "repo": "s3", "s3_bucket": "b", "s3_endpoint": "minio.internal:9000",
             "s3_region": "r", "s3_key": "AKID"}  # fmt: skip
SECRET = {"poolkit:backup_s3_key_secret": "s3-secret-value"}


def test_the_postgres_container_gets_the_s3_ca_at_the_rendered_path(tmp_path: Path) -> None:
    ca_pem = tls.new_ca("internal S3 CA").cert
    (tmp_path / "s3-ca.pem").write_text(ca_pem)
    config = {**stack_file_config("dev"), **SECRET,
              "poolkit:backup": {**S3_BACKUP, "s3_ca_file": str(tmp_path / "s3-ca.pem")}}
    postgres = deploy("dev", config, secret_keys=tuple(SECRET)).named(
        "poolkit-postgres-container")  # fmt: skip
    files = {u["file"]: u for u in postgres.args["uploads"]}
    conf = files["/etc/poolkit/pgbackrest.conf"]["content"]
    assert "\nrepo1-storage-ca-file=/etc/poolkit/s3-ca.crt\n" in conf, postgres.urn
    ca = files["/etc/poolkit/s3-ca.crt"]
    assert (ca["content"], ca["permissions"]) == (ca_pem, "0644"), postgres.urn
    assert ca["owner"] == files["/etc/poolkit/pgbackrest.conf"]["owner"], postgres.urn


def test_without_the_key_no_ca_is_uploaded() -> None:
    config = {**stack_file_config("dev"), **SECRET, "poolkit:backup": S3_BACKUP}
    postgres = deploy("dev", config, secret_keys=tuple(SECRET)).named(
        "poolkit-postgres-container")  # fmt: skip
    files = {u["file"]: u for u in postgres.args["uploads"]}
    assert "/etc/poolkit/s3-ca.crt" not in files
    assert "ca-file" not in files["/etc/poolkit/pgbackrest.conf"]["content"]


def test_an_unreadable_ca_stops_the_program_before_any_resource(tmp_path: Path) -> None:
    config = {**stack_file_config("dev"), **SECRET,
              "poolkit:backup": {**S3_BACKUP, "s3_ca_file": str(tmp_path / "missing.pem")}}
    with pytest.raises(Exception, match=r"poolkit:backup\.s3_ca_file: cannot be read") as caught:
        deploy("dev", config, secret_keys=tuple(SECRET))
    assert "Fix: give the path of the PEM file of the S3 server's CA" in str(caught.value)
    assert not deploy.last_monitor.registered  # type: ignore[attr-defined]
