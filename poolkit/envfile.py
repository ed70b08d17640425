"""Private files: write with mode 0600 from the first byte; read ``.env`` files back."""

from __future__ import annotations

import io
import os
from pathlib import Path

from dotenv.parser import parse_stream


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def parse_env(text: str) -> dict[str, str]:
    """``KEY=value`` lines (quoted or not; python-dotenv's syntax, no ``${VAR}`` expansion).

    Comments and blank lines are skipped; a line that is no assignment raises ValueError.
    """
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error or (binding.key is not None and binding.value is None):
            line = binding.original.string.strip()
            raise ValueError(f"not a KEY=value line: {line.split('=', 1)[0]!r}")
        if binding.key is not None:
            values[binding.key] = binding.value or ""
    return values


def read_env(path: Path) -> dict[str, str]:
    return parse_env(path.read_text(encoding="utf-8"))
