"""Processes and ports: is a pid ours and alive, is a port free, wait, stop."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import psutil

STOP_WAIT_S = 15.0


def pid_alive(pid: int, needle: str) -> bool:
    """Whether ``pid`` runs and its command line holds ``needle`` (not a recycled pid/zombie)."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and needle in " ".join(process.cmdline())
    except psutil.Error:
        return False


def pid_exists(pid: int) -> bool:
    """Whether any process (a zombie too) has ``pid``."""
    return psutil.pid_exists(pid)


def read_pid(path: Path, needle: str, notes: list[str] | None = None) -> int | None:
    """The live pid in ``path``; a stale pid file is removed (and noted)."""
    try:
        first = path.read_text(encoding="utf-8").split("\n", 1)[0].strip()
    except OSError:
        return None
    if first.isdigit() and pid_alive(int(first), needle):
        return int(first)
    path.unlink(missing_ok=True)
    if notes is not None:
        notes.append(f"removed stale pid file {path.name} (pid {first or '?'} is not running)")
    return None


def processes_in(directory: Path) -> list[int]:
    """Pids whose working directory is ``directory`` (Postgres backends work in the data dir)."""
    target = str(directory.resolve())
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.cwd() == target:
                found.append(process.pid)
    return found


def process_user(pid: int) -> str:
    """The name of the OS user ``pid`` runs as (its real uid), or ``?``."""
    try:
        return pwd.getpwuid(psutil.Process(pid).uids().real).pw_name
    except (psutil.Error, KeyError):
        return "?"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def port_listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float, alive: Callable[[], bool]) -> bool:
    """Poll ``condition`` until true, ``timeout`` or the process behind it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if not alive():
            return condition()
        time.sleep(0.05)
    return condition()


def terminate(pid: int, needle: str, timeout: float = STOP_WAIT_S) -> None:
    """SIGTERM, wait, SIGKILL: for supervisors (they stop their child on SIGTERM)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_for(lambda: not pid_alive(pid, needle), timeout, lambda: True):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid, needle), 5, lambda: True)
