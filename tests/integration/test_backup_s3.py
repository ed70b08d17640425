"""Backups to an S3 repository served on loopback, its TLS certificate verified: moto's S3
server behind stunnel's TLS, with a private CA given as ``poolkit:backup.s3_ca_file``.

pgBackRest speaks only HTTPS to S3. moto's server (Werkzeug's development server) answers
every request with ``Connection: close`` and closes its TLS connections without a
close_notify alert, which OpenSSL 3 reports to pgBackRest as "unexpected eof while reading"
after a PUT was already stored; pgBackRest retries, and a retried stanza-create then found the
first try's archive.info without backup.info ("archive.info exists but backup.info is
missing"). So moto serves plain HTTP on one loopback port and stunnel (a TLS terminator that
closes properly) serves HTTPS on another, with a certificate signed by a test CA from
poolkit.tls. The stack verifies it (``s3_verify_tls: true``) against that CA
(``s3_ca_file``), as a user of MinIO or Ceph with an internal CA would. The certificate names
127.0.0.1 as an IP address and as a DNS name: pgBackRest 2.45 matches the endpoint's host
against DNS names only.

A local stack with ``repo: s3``: rows through PgBouncer, a full backup, more rows, ``check``
(WAL in the bucket), SIGKILL and the data directory deleted, ``restore --to latest``: every
row is back, and the bucket holds the encrypted repository. Then the same stack given another
CA: ``up`` and ``check`` fail naming TLS verification and ``s3_ca_file``, and nothing reaches
the bucket; given its CA back, ``check`` passes again.
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
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

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


def _server_pem(ca: tls.KeyPair) -> str:
    """stunnel's certificate and key: poolkit.tls's server certificate for 127.0.0.1, signed
    again with 127.0.0.1 also as a DNS name (pgBackRest 2.45 ignores IP address names)."""
    issued = tls.issue_server(ca, ["127.0.0.1"])
    cert = x509.load_pem_x509_certificate(issued.cert.encode())
    both = x509.SubjectAlternativeName([x509.DNSName("127.0.0.1"),
                                        *cert.extensions.get_extension_for_class(
                                            x509.SubjectAlternativeName).value])  # fmt: skip
    builder = x509.CertificateBuilder(
        issuer_name=cert.issuer, subject_name=cert.subject, public_key=cert.public_key(),
        serial_number=cert.serial_number, not_valid_before=cert.not_valid_before_utc,
        not_valid_after=cert.not_valid_after_utc)  # fmt: skip
    for extension in cert.extensions:
        named = isinstance(extension.value, x509.SubjectAlternativeName)
        builder = builder.add_extension(both if named else extension.value, extension.critical)
    ca_key = serialization.load_pem_private_key(ca.key.encode(), password=None)
    signed = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return signed.public_bytes(serialization.Encoding.PEM).decode() + issued.key


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    assert stunnel, "stunnel is missing: ./scripts/bootstrap installs it (Debian stunnel4)"
    base = make_base_dir("poolkit-s3-")
    taken: set[int] = set()
    http_port, https_port = free_ports(1, taken), free_ports(1, taken)
    ca = tls.new_ca("poolkit test S3")
    (base / "ca.crt").write_text(ca.cert)
    (base / "server.pem").write_text(_server_pem(ca))
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
        "s3_uri_style": "path", "s3_verify_tls": True,
        "s3_ca_file": str(s3.ca_file)}) as stack:  # fmt: skip
        yield stack


ENV = {"POOLKIT_BACKUP_S3_KEY_SECRET": SECRET}


def cli(stack: LocalStack, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--stack-file", str(stack.stack_file), "--state-dir",
                   str(stack.state_dir), env=ENV, check=check)  # fmt: skip


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


def keys(s3: S3, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)  # type: ignore[attr-defined]
    return [o["Key"] for o in listed.get("Contents", [])]


def test_another_ca_fails_verification_names_the_key_and_writes_nothing(
    s3: S3, stack: LocalStack
) -> None:
    """The stack given a CA that did not sign the server's certificate (and its own folder in
    the bucket, to see that nothing arrives): ``up`` (stanza-create) and ``check`` refuse with
    the fix; given its CA back, WAL reaches the bucket again."""
    other = stack.base / "other-ca.crt"
    other.write_text(tls.new_ca("not the S3 server's CA").cert)
    wrong = stack.base / "wrong-ca" / stack.stack_file.name
    wrong.parent.mkdir()
    config = yaml.safe_load(stack.stack_file.read_text())
    config["config"]["poolkit:backup"] |= {"s3_ca_file": str(other), "s3_path": "/wrong-ca"}
    wrong.write_text(yaml.safe_dump(config))

    up = stack.poolkit("up", "--no-smoke", stack_file=wrong, env=ENV, check=False)
    checked = run_cli("check", "--stack-file", str(wrong), "--state-dir", str(stack.state_dir),
                      env=ENV, check=False)  # fmt: skip
    for done in (up, checked):
        output = done.stdout + done.stderr
        assert done.returncode != 0, output
        assert "TLS verification of the S3 server's certificate failed" in output, output
        assert "unable to verify certificate presented by '127.0.0.1:" in output, output
        assert "poolkit:backup.s3_ca_file" in output, output
    assert keys(s3, "wrong-ca/") == [], "a failed verification must write nothing"

    stack.poolkit("up", "--no-smoke", env=ENV)
    # Postgres's archiver, after 3 failed archive_command runs, waits up to 60 s before it
    # retries; check's own wait is 60 s too, so it may need a second run to see the WAL.
    checks = [cli(stack, "check", check=False)]
    if checks[-1].returncode != 0:
        checks.append(cli(stack, "check", check=False))
    assert "WAL archiving works" in checks[-1].stdout, [c.stdout + c.stderr for c in checks]
