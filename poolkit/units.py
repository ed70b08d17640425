"""Memory sizes: parse what people write, format what PostgreSQL reads."""

from __future__ import annotations

import re

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# PostgreSQL (and pgtune) read MB/GB as powers of 1024; we accept both spellings.
_UNITS = {
    "b": 1,
    "kb": KIB, "kib": KIB, "k": KIB,
    "mb": MIB, "mib": MIB, "m": MIB,
    "gb": GIB, "gib": GIB, "g": GIB,
    "tb": 1024 * GIB, "tib": 1024 * GIB, "t": 1024 * GIB,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Return the number of bytes in ``text`` such as ``"4GiB"`` or ``"512MB"``.

    Raises ValueError with a short reason when the text is not a size.
    """
    match = _SIZE.match(text)
    if not match:
        raise ValueError("not a size")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown unit {unit!r}")
    return int(float(number) * factor)


def format_kb(kilobytes: int) -> str:
    """Format a size in kB the way postgresql.conf writes it: ``1GB``, ``64MB`` or ``7864kB``."""
    for unit, size in (("TB", 1024 * 1024 * 1024), ("GB", 1024 * 1024), ("MB", 1024)):
        if kilobytes >= size and kilobytes % size == 0:
            return f"{kilobytes // size}{unit}"
    return f"{kilobytes}kB"
