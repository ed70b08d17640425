"""The local runner's error: a failed step, with the log worth reading."""

from __future__ import annotations

from pathlib import Path


class LocalError(Exception):
    """A step failed: the message says what and how to fix it; ``log`` is worth a look."""

    def __init__(self, message: str, log: Path | None = None):
        super().__init__(message)
        self.log = log


def log_tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` of a log, or a note that it is empty or missing."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"({path} is empty)"
