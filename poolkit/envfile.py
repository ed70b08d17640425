"""Private files: write with mode 0600 from the first byte; read ``.env`` files back."""

from __future__ import annotations

import os
import re
from pathlib import Path

_LINE = re.compile(r"""^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|(\S*))\s*$""")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def parse_env(text: str) -> dict[str, str]:
    """``KEY=value`` lines (quoted or not); comments and blank lines are skipped."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise ValueError(f"not a KEY=value line: {line.split('=', 1)[0]!r}")
        key, *quoted = match.groups()
        values[key] = next(v for v in quoted if v is not None)
    return values


def read_env(path: Path) -> dict[str, str]:
    return parse_env(path.read_text(encoding="utf-8"))
