"""Backups to an S3 repository served on loopback: moto's S3 server behind stunnel's TLS.

pgBackRest speaks only HTTPS to S3. moto's server (Werkzeug's development server) answers
every request with ``Connection: close`` and closes its TLS connections without a
close_notify alert, which OpenSSL 3 reports to pgBackRest as "unexpected eof while reading"
after a PUT was already stored; pgBackRest retries, and a retried stanza-create then found the
first try's archive.info without backup.info ("archive.info exists but backup.info is
missing"). So moto serves plain HTTP on one loopback port and stunnel (a TLS terminator that
closes properly) serves HTTPS on another, with a certificate from poolkit.tls. pgBackRest does
not verify it (``s3_verify_tls: false``): the test CA is not in the system's trust store.

A local stack with ``repo: s3``: rows through PgBouncer, a full backup, more rows, ``check``
(WAL in the bucket), SIGKILL and the data directory deleted, ``restore --to latest``: every
row is back, and the bucket holds the encrypted repository.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import psycopg
import pytest

from poolkit import tls
from poolkit.local.processes import port_listening
from tests.conftest import LocalStack, free_ports, local_stack_running, make_base_dir, run_cli

pytestmark = pytest.mark.integration
BUCKET, KEY, SECRET, REGION = "poolkit-backups", "poolkit-test", "poolkit-test-secret", "us-east-1"


@dataclass(frozen=True)
class S3:
    endpoint: str
    """host:port of the HTTPS side."""
    ca_file: Path

    def client(self) -> object:
        return boto3.client("s3", endpoint_url=f"https://{self.endpoint}", region_name=REGION,
                            aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                            verify=str(self.ca_file))  # fmt: skip


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while not port_listening(port):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{process.args} did not listen on 127.0.0.1:{port}:\n"
                        f"{log.read_text(errors='replace')[-2000:]}")  # fmt: skip
        time.sleep(0.2)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    assert stunnel, "stunnel is missing: ./scripts/bootstrap installs it (Debian stunnel4)"
    base = make_base_dir("poolkit-s3-")
    taken: set[int] = set()
    http_port, https_port = free_ports(1, taken), free_ports(1, taken)
    ca, server = tls.generate(["127.0.0.1"], "poolkit test S3")
    (base / "ca.crt").write_text(ca.cert)
    (base / "server.pem").write_text(server.cert + server.key)
    (base / "server.pem").chmod(0o600)
    (base / "stunnel.conf").write_text(
        f"foreground = yes\npid =\n[s3]\naccept = 127.0.0.1:{https_port}\n"
        f"connect = 127.0.0.1:{http_port}\ncert = {base / 'server.pem'}\n")  # fmt: skip
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for argv, port, name in (
            ([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(http_port)],
             http_port, "moto"),
            ([stunnel, str(base / "stunnel.conf")], https_port, "stunnel"),
        ):  # fmt: skip
            log = base / f"{name}.log"
            with log.open("wb") as out:
                processes.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT))
            _wait_listening(port, processes[-1], log)
        served = S3(f"127.0.0.1:{https_port}", base / "ca.crt")
        served.client().create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        yield served
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(s3: S3) -> Iterator[LocalStack]:
    with local_stack_running("poolkit-backup-s3-", "s3", with_apps=False, env=ENV, backup={
        "enabled": True, "archive_timeout": 2, "repo": "s3", "s3_bucket": BUCKET,
        "s3_endpoint": s3.endpoint, "s3_region": REGION, "s3_key": KEY,
        "s3_uri_style": "path", "s3_verify_tls": False}) as stack:  # fmt: skip
        yield stack


ENV = {"POOLKIT_BACKUP_S3_KEY_SECRET": SECRET}


def cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--stack-file", str(stack.stack_file), "--state-dir",
                   str(stack.state_dir), env=ENV)  # fmt: skip


def insert(url: str, first: int, count: int) -> None:
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("INSERT INTO s3rows SELECT generate_series(%s::int, %s::int)",
                     (first, first + count - 1))  # fmt: skip


def test_backup_and_restore_latest_through_s3(s3: S3, stack: LocalStack) -> None:
    env = stack.env()
    with psycopg.connect(env["DIRECT_URL"], autocommit=True) as conn:  # the owner makes tables
        conn.execute("CREATE TABLE s3rows (n int PRIMARY KEY)")
    insert(env["POOLED_DATABASE_URL"], 1, 1000)
    taken = cli(stack, "backup")
    insert(env["POOLED_DATABASE_URL"], 1001, 500)
    assert "WAL archiving works" in cli(stack, "check").stdout
    assert " full " in cli(stack, "backups").stdout

    client = s3.client()
    archived = client.list_objects_v2(Bucket=BUCKET, Prefix="poolkit/archive/s3/")  # type: ignore[attr-defined]
    assert any(o["Key"].endswith(".zst") for o in archived["Contents"]), "no WAL in the bucket"
    info = client.get_object(Bucket=BUCKET, Key="poolkit/backup/s3/backup.info")["Body"].read()  # type: ignore[attr-defined]
    assert info.startswith(b"Salted__"), "the repository in the bucket is not encrypted"

    os.kill(stack.postmaster_pid(), signal.SIGKILL)
    time.sleep(0.5)
    shutil.rmtree(stack.state_dir / "data")
    restored = cli(stack, "restore", "--to", "latest", "--yes")
    assert "restored and running" in restored.stdout
    with psycopg.connect(env["DIRECT_URL"], autocommit=True) as conn:
        assert conn.execute("SELECT count(*), max(n) FROM s3rows").fetchone() == (1500, 1500)
    print(f"\nS3 (moto behind stunnel): {taken.stdout.strip()}\n{restored.stdout.strip()}")
