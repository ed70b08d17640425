"""Backups: the poolkit:backup model, pgBackRest's rendered config, and restore decisions."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest

from poolkit import backup
from poolkit.backup import BackupRefused, Done
from poolkit.config import ConfigError
from poolkit.layouts import docker_layout
from poolkit.render import is_private, render_all, render_pgbackrest_conf
from poolkit.sizing import plan
from tests.unit.factories import secrets, stack

pytestmark = pytest.mark.unit
PASSPHRASE = "repo-passphrase-0123456789"


def backup_secrets(**extra: str):
    return dataclasses.replace(secrets(), backup_passphrase=PASSPHRASE, **extra)


def test_backups_are_off_by_default_and_render_no_archiving() -> None:
    config = stack()
    files = render_all(config, plan(config), backup_secrets(), docker_layout(config))
    assert not config.backup.enabled
    assert "pgbackrest.conf" not in files
    assert "archive_mode" not in files["postgresql.conf"]


def test_enabled_backup_renders_archiving_and_a_private_encrypted_config() -> None:
    config = stack("shop", backup={"enabled": True, "archive_timeout": 30})
    files = render_all(config, plan(config), backup_secrets(), docker_layout(config))
    conf = files["postgresql.conf"]
    assert ("archive_command = 'pgbackrest --config=/etc/poolkit/pgbackrest.conf --stanza=shop "
            "archive-push %p'") in conf
    assert "archive_mode = 'on'" in conf and "archive_timeout = '30s'" in conf
    repo = files["pgbackrest.conf"]
    assert "repo1-cipher-type=aes-256-cbc\n" in repo
    assert f"repo1-cipher-pass={PASSPHRASE}\n" in repo
    assert "repo1-type=posix\nrepo1-path=/var/lib/pgbackrest\n" in repo
    assert "repo1-retention-full=2\n" in repo and "repo1-retention-diff=6\n" in repo
    assert "[shop]\npg1-path=/var/lib/postgresql/data\n" in repo
    assert PASSPHRASE not in conf
    assert is_private("pgbackrest.conf") and is_private("superuser.pgpass")
    assert files["superuser.pgpass"] == "*:*:*:postgres:correct-horse-battery\n"


def test_s3_repository_renders_path_style_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POOLKIT_BACKUP_S3_KEY_SECRET", raising=False)
    config = stack(backup={"enabled": True, "repo": "s3", "s3_bucket": "b", "s3_region": "r",
                           "s3_endpoint": "127.0.0.1:9000", "s3_key": "AKID",
                           "s3_uri_style": "path", "s3_verify_tls": False},
                   backup_s3_key_secret="s3-secret-key")  # fmt: skip
    text = render_pgbackrest_conf(config, backup_secrets(backup_s3_key_secret="s3-secret-key"),
                                  docker_layout(config))  # fmt: skip
    for line in ("repo1-type=s3", "repo1-path=/poolkit", "repo1-s3-bucket=b",
                 "repo1-s3-endpoint=127.0.0.1", "repo1-storage-port=9000",
                 "repo1-s3-key-secret=s3-secret-key", "repo1-s3-uri-style=path",
                 "repo1-storage-verify-tls=n"):  # fmt: skip
        assert f"\n{line}\n" in text


@pytest.mark.parametrize(("section", "key", "message"), [
    ({"repo": "nfs"}, "poolkit:backup.repo", "must be one of posix, s3"),
    ({"retention_full": 0}, "poolkit:backup.retention_full", "between 1 and 100"),
    ({"full_schedule": "daily"}, "poolkit:backup.full_schedule", "five cron fields"),
    ({"diff_schedule": "0 25 * * *"}, "poolkit:backup.diff_schedule", "not a valid cron"),
    ({"archive_timeout": 0}, "poolkit:backup.archive_timeout", "between 1 and 3600"),
    ({"enabled": True, "repo": "s3"}, "poolkit:backup.s3_bucket", "required when repo is s3"),
    ({"enabled": True, "repo": "s3"}, "poolkit:backup_s3_key_secret", "required"),
    ({"retension_full": 3}, "poolkit:backup.retension_full", "did you mean 'retention_full'"),
])  # fmt: skip
def test_bad_backup_keys_name_key_and_fix(
    section: dict, key: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POOLKIT_BACKUP_S3_KEY_SECRET", raising=False)
    with pytest.raises(ConfigError) as caught:
        stack(backup=section)
    found = [str(p) for p in caught.value.problems if p.key == key]
    assert found and message in found[0], caught.value


class FakeRepo:
    """A Target whose ``pgbackrest info`` answers with a fixed JSON document."""

    stanza = "test"
    conf = "/c/pgbackrest.conf"
    restore_dir = "/data/pg/.poolkit-restore"
    previous_dir = "/data/pg/.poolkit-previous"

    def __init__(self, info: list | None = None, rc: int = 0, stderr: str = "") -> None:
        self.info, self.rc, self.stderr = info, rc, stderr
        self.calls: list[tuple[str, ...]] = []

    def pgbackrest(self, *args: str, timeout: float = 0) -> Done:
        self.calls.append(args)
        return Done(self.rc, json.dumps(self.info), self.stderr)


def info(*stops: float) -> list:
    sets = [{"label": f"b{i}", "type": "full", "timestamp": {"start": s - 5, "stop": s},
             "info": {"size": 100, "repository": {"delta": 10}}} for i, s in enumerate(stops)]
    return [{"name": "test", "status": {"code": 0, "message": "ok"}, "backup": sets}]


NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
FIRST = NOW.timestamp() - 3600


def test_time_before_first_backup_is_refused() -> None:
    with pytest.raises(BackupRefused, match="before the first backup finished"):
        backup.plan_restore(FakeRepo(info(FIRST)), "2026-11-30T00:00:00Z", now=NOW)


def test_time_picks_the_last_backup_before_it_and_keeps_old_data() -> None:
    plan = backup.plan_restore(FakeRepo(info(FIRST, FIRST + 1800)),
                               "2026-11-30T01:45:00", now=NOW)  # fmt: skip
    assert plan.base.label == "b1"
    assert plan.restore_dir == "/data/pg/.poolkit-restore"
    assert plan.keep_dir == "/data/pg/.poolkit-previous/20261130T020000Z"
    args = backup.restore_args("test", "/c/pgbackrest.conf", plan)
    assert "--type=time" in args and "--target=2026-11-30 01:45:00.000000+00" in args
    assert "--target-action=promote" in args and "--set=b1" in args
    assert "--pg1-path=/data/pg/.poolkit-restore" in args


def test_no_backup_missing_repo_and_wrong_passphrase_are_refused() -> None:
    with pytest.raises(BackupRefused, match="no backup yet"):
        backup.plan_restore(FakeRepo(info()), "latest", now=NOW)
    missing = [{"name": "test", "status": {"code": 1, "message": "missing stanza path"}}]
    with pytest.raises(BackupRefused, match=r"no backup repository.*missing stanza path"):
        backup.plan_restore(FakeRepo(missing), "latest", now=NOW)
    wrong = FakeRepo(None, rc=95, stderr=(  # pgBackRest 2.45's words
        "ERROR: [095]: unable to load info file '/r/backup/test/backup.info':\n"
        "FormatError: key/value found outside of section at line 1: \ufffd\n"
        "HINT: is or was the repo encrypted?"))  # fmt: skip
    with pytest.raises(BackupRefused, match="passphrase"):
        backup.plan_restore(wrong, "latest", now=NOW)
    with pytest.raises(BackupRefused, match="neither 'latest' nor a time"):
        backup.plan_restore(FakeRepo(info(FIRST)), "yesterday", now=NOW)


def test_local_layout_keeps_restores_beside_the_data_and_excludes_nothing(tmp_path) -> None:
    from poolkit.layouts import local_layout

    config = stack("shop", backup={"enabled": True})
    layout = local_layout(config, tmp_path, "postgres")
    text = render_pgbackrest_conf(config, backup_secrets(), layout)
    assert f"repo1-path={tmp_path}/backups\n" in text and "exclude=" not in text
    assert layout.restore_dir == f"{tmp_path}/data.restore"
    docker = render_pgbackrest_conf(config, backup_secrets(), docker_layout(config))
    assert "exclude=.poolkit-restore\nexclude=.poolkit-previous\n" in docker


def test_pgpass_escapes_colons_and_backslashes() -> None:
    from poolkit.render import render_pgpass

    base = secrets()
    odd = dataclasses.replace(base, superuser=dataclasses.replace(
        base.superuser, password="a:b\\c"))  # fmt: skip
    assert render_pgpass(odd).endswith(":a\\:b\\\\c\n")


def test_passphrase_is_saved_kept_and_never_shown(tmp_path) -> None:
    from poolkit import secrets as stack_secrets

    config = stack(backup={"enabled": True})
    first = stack_secrets.resolve(config, "postgres")
    stack_secrets.save(tmp_path / "s.json", first)
    again = stack_secrets.resolve(config, "postgres", stack_secrets.load(tmp_path / "s.json"))
    assert again.backup_passphrase == first.backup_passphrase and len(first.backup_passphrase) >= 64
    assert first.backup_passphrase not in repr(first)
    assert oct((tmp_path / "s.json").stat().st_mode & 0o777) == "0o600"
