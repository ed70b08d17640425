"""Figures of the apps' burst runs (requests per second, peak backends), shown after the run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FIGURES: dict[str, dict[str, Any]] = {}


def record(name: str, **values: Any) -> None:
    """Keep one run's figures and rewrite ``apps-figures.json`` in the log folder."""
    FIGURES[name] = values
    folder = Path(os.environ.get("POOLKIT_LOG_DIR") or Path(__file__).parents[2] / ".poolkit" /
                  "logs")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "apps-figures.json").write_text(json.dumps(FIGURES, indent=2) + "\n")


def summary_lines() -> list[str]:
    return [f"{name:<26} {f['requests']:4d} requests {f['errors']:3d} errors "
            f"{f['rps']:7.0f} req/s  peak backends {f['peak_backends']:2d} "
            f"(max_db_connections {f['max_db_connections']})"
            for name, f in FIGURES.items()]  # fmt: skip
