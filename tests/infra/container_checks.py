"""What a poolkit container must prove besides the suite's host checks (``docker://`` only).

Collected only with the docker adapter loaded (the name keeps it out of the local runs):

    POOLKIT_INFRA_FACTS=facts.json pytest -p tests.infra.docker_facts tests/infra \\
        --hosts=docker://NAME

testinfra runs each command with ``docker exec`` as the image's user (``postgres``), the user
the server runs as, so what it can read the server can read.
"""

from __future__ import annotations

import pytest
from testinfra.host import Host

from poolkit.render import Layout
from tests.infra.conftest import Deployment
from tests.infra.docker_facts import SERVER_UID, SERVER_USER, load_facts, service_of

pytestmark = pytest.mark.infra
LAYOUT = Layout()
SERVICE = service_of(load_facts())
TCP_LISTEN = "0A"
FILES = {
    "postgres": [
        (f"{LAYOUT.config_dir}/postgresql.conf", 0o644),
        (f"{LAYOUT.config_dir}/pg_hba.conf", 0o644),
        (f"{LAYOUT.config_dir}/init.sql", 0o600),
        (LAYOUT.config_dir, 0o750),
        (LAYOUT.data_directory, 0o700),
    ],
    "pgbouncer": [
        (f"{LAYOUT.pgbouncer_dir}/pgbouncer.ini", 0o640),
        (f"{LAYOUT.pgbouncer_dir}/userlist.txt", 0o600),
        (LAYOUT.pgbouncer_dir, 0o750),
    ],
}
"""Uploaded files (modes the components give) and the images' directories."""


def test_server_is_pid_1_as_the_postgres_user(host: Host) -> None:
    """The entrypoint execs the server: it gets `docker stop`'s signal, and it is not root."""
    server = host.process.get(pid=1)
    assert server.comm == SERVICE
    assert (server.user, server.uid, server.gid) == (SERVER_USER, SERVER_UID, SERVER_UID)


def test_no_process_in_the_container_runs_as_root(host: Host) -> None:
    listing = host.check_output("ps -eo uid=,args=")
    processes = [line.split(None, 1) for line in listing.splitlines()]
    assert processes
    root = [args for uid, args in processes if int(uid) != SERVER_UID]
    assert not root, f"processes not running as uid {SERVER_UID}: {root}"


def test_listening_socket_belongs_to_the_server_user(host: Host, deployment: Deployment) -> None:
    """What the suite reads with `ss` elsewhere, from /proc/net/tcp{,6} (no `ss` in the images)."""
    port = f"{deployment.ports[SERVICE]:04X}"
    owners = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in host.file(table).content_string.splitlines()[1:]:
            fields = line.split()
            if fields[1].rsplit(":", 1)[1] == port and fields[3] == TCP_LISTEN:
                owners.add(int(fields[7]))
    assert owners == {SERVER_UID}


@pytest.mark.parametrize(("path", "mode"), FILES[SERVICE], ids=[p for p, _ in FILES[SERVICE]])
def test_file_owned_by_the_server_user_with_its_mode(host: Host, path: str, mode: int) -> None:
    file = host.file(path)
    assert file.exists
    assert (file.uid, file.gid) == (SERVER_UID, SERVER_UID)
    assert oct(file.mode) == oct(mode)


def test_secret_files_hold_verifiers_not_passwords(host: Host, deployment: Deployment) -> None:
    known = deployment.passwords()
    assert known
    for path in deployment.private_files:
        content = host.file(path).content_string
        assert "SCRAM-SHA-256$" in content, path
        leaked = any(p in content for p in known)  # never print the password itself
        assert not leaked, f"a password is in {path}"
