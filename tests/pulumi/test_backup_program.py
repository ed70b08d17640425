"""The program with ``poolkit:backup``: a repository volume, archiving, private pgBackRest files."""

from __future__ import annotations

import pytest

from .harness import PASSWORD, VOLUME, deploy, is_secret, stack_file_config

pytestmark = pytest.mark.pulumi


def test_backups_add_a_repository_volume_and_a_kept_passphrase() -> None:
    deployed = deploy("prod", stack_file_config("prod"))
    volumes = {v.args["name"]: v for v in deployed.of_type(VOLUME)}
    assert set(volumes) == {"poolkit-prod-pgdata", "poolkit-prod-backups"}
    assert volumes["poolkit-prod-backups"].retain_on_delete, "destroy must keep the backups"
    assert not volumes["poolkit-prod-pgdata"].retain_on_delete
    postgres = deployed.named("poolkit-postgres-container")
    assert postgres.args["volumes"] == [
        {"volumeName": "poolkit-prod-pgdata", "containerPath": "/var/lib/postgresql/data"},
        {"volumeName": "poolkit-prod-backups", "containerPath": "/var/lib/pgbackrest"},
    ], "the data volume's mount must not move: existing stacks keep their data"
    passphrase = deployed.named("poolkit-backup-passphrase")
    assert passphrase.type == PASSWORD and passphrase.args["length"] == 64
    files = {u["file"]: u for u in postgres.args["uploads"]}
    conf = files["/etc/poolkit/pgbackrest.conf"]["content"]
    assert f"repo1-cipher-pass={passphrase.state['result']}\n" in conf
    assert "exclude=.poolkit-previous\n" in conf
    assert "archive_mode = 'on'" in files["/etc/poolkit/postgresql.conf"]["content"]
    assert passphrase.state["result"] not in files["/etc/poolkit/postgresql.conf"]["content"]
    assert is_secret(postgres.inputs["uploads"])


def test_without_backups_nothing_changes() -> None:
    deployed = deploy("dev", stack_file_config("dev"))
    assert [v.args["name"] for v in deployed.of_type(VOLUME)] == ["poolkit-dev-pgdata"]
    files = {u["file"] for u in deployed.named("poolkit-postgres-container").args["uploads"]}
    assert not any("pgbackrest" in f or "pgpass" in f for f in files)


def test_s3_secret_key_is_required_and_read_as_a_secret() -> None:
    config = {**stack_file_config("dev"), "poolkit:backup": {
        "enabled": True, "repo": "s3", "s3_bucket": "b", "s3_endpoint": "127.0.0.1:9000",
        "s3_region": "r", "s3_key": "AKID"}}  # fmt: skip
    with pytest.raises(Exception, match="backup_s3_key_secret: is required"):
        deploy("dev", config)
    deployed = deploy("dev", {**config, "poolkit:backup_s3_key_secret": "s3-secret-value"},
                      secret_keys=("poolkit:backup_s3_key_secret",))  # fmt: skip
    files = {u["file"]: u for u in deployed.named("poolkit-postgres-container").args["uploads"]}
    conf = files["/etc/poolkit/pgbackrest.conf"]["content"]
    assert "repo1-s3-key-secret=s3-secret-value\n" in conf
    assert not [v for v in deployed.of_type(VOLUME) if "backups" in v.args["name"]]


def test_a_passphrase_in_the_stack_config_replaces_the_generated_one() -> None:
    """``poolkit:backup_passphrase`` (kept by ``pulumi destroy``, unlike the state) is what
    pgbackrest.conf gets; no passphrase resource is generated then."""
    deployed = deploy("prod", {**stack_file_config("prod"),
                               "poolkit:backup_passphrase": "kept-passphrase-0123"},
                      secret_keys=("poolkit:backup_passphrase",))  # fmt: skip
    assert not [r for r in deployed.of_type(PASSWORD) if r.name.endswith("backup-passphrase")]
    postgres = deployed.named("poolkit-postgres-container")
    files = {u["file"]: u for u in postgres.args["uploads"]}
    assert "repo1-cipher-pass=kept-passphrase-0123\n" in files["/etc/poolkit/pgbackrest.conf"][
        "content"]
    assert is_secret(postgres.inputs["uploads"])


def test_a_generated_passphrase_is_warned_about_and_a_given_one_is_not() -> None:
    """Without the key, the passphrase lives only in the state that `pulumi destroy` wipes,
    while the repository outlives it: `pulumi up` says so and names the fix."""
    (warning,) = [w for w in deploy("prod", stack_file_config("prod")).warnings
                  if "backup_passphrase is not set" in w]  # fmt: skip
    assert "pulumi config set --secret poolkit:backup_passphrase" in warning
    given = deploy("prod", {**stack_file_config("prod"), "poolkit:backup_passphrase": "kept-01234"},
                   secret_keys=("poolkit:backup_passphrase",))  # fmt: skip
    assert not [w for w in given.warnings if "backup_passphrase" in w]
