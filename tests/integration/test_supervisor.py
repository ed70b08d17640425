"""poolkit.supervisor on plain processes: restart, give up on a crash loop, stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _supervise(
    tmp_path: Path, *command: str, env_file: Path | None = None
) -> subprocess.Popen[str]:
    options = ["--env-file", str(env_file)] if env_file else []
    return subprocess.Popen(
        [sys.executable, "-m", "poolkit.supervisor", "--pidfile", str(tmp_path / "sup.pid"),
         *options, "--", *command],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _wait_for(path: Path, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} did not appear")


def test_gives_up_on_a_crash_loop_with_exit_1(tmp_path: Path) -> None:
    supervisor = _supervise(tmp_path, "/bin/sh", "-c", "exit 3")
    output, _ = supervisor.communicate(timeout=15)
    assert supervisor.returncode == 1
    assert output.count("exited with 3 after 0.") == 5
    assert "giving up" in output
    assert not (tmp_path / "sup.pid").exists()


def test_restarts_a_killed_child_and_stops_it_on_sigterm(tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text('GREETING="from the env file"\n')
    script = f'echo "$GREETING" > {tmp_path}/seen; echo $$ > {tmp_path}/child.pid; exec sleep 60'
    supervisor = _supervise(tmp_path, "/bin/sh", "-c", script, env_file=env_file)
    try:
        first = int(_wait_for(tmp_path / "child.pid"))
        assert (tmp_path / "seen").read_text() == "from the env file\n"
        (tmp_path / "child.pid").unlink()
        os.kill(first, signal.SIGKILL)
        second = int(_wait_for(tmp_path / "child.pid", timeout=2))
        assert second != first
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=10) == 0
        assert not Path(f"/proc/{second}").exists()
        assert not (tmp_path / "sup.pid").exists()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        if supervisor.stdout:
            supervisor.stdout.close()
