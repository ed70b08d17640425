"""The TypeScript sample apps (``apps/ts``, Prisma 7): find Node.js and build them.

``.venv/bin/python -m poolkit.node_apps build`` installs the locked
packages (``npm ci``), generates the Prisma client offline and compiles the TypeScript, and
skips all of it while a stamp of the sources still matches. The local target runs the apps
only where :func:`unavailable_reason` finds nothing missing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MIN_NODE = (20, 19)
"""Prisma 7's floor (its ``engines``: ^20.19 || ^22.12 || >=24.0)."""
APP_DIR = Path("apps") / "ts"
SERVER = Path("dist") / "src" / "server.js"
STAMP = Path("node_modules") / ".poolkit-build"
"""Digest of the sources last built; in node_modules, so a removed install is a stale build."""
SOURCES = ("package.json", "package-lock.json", "tsconfig.json", "prisma.config.ts", "prisma",
           "src")  # fmt: skip
PRISMA_OFFLINE = {"PRISMA_SCHEMA_ENGINE_BINARY": "/bin/true", "PRISMA_HIDE_UPDATE_MESSAGE": "1",
                  "CHECKPOINT_DISABLE": "1"}  # fmt: skip
"""``prisma generate`` without downloads: it never runs the schema engine; no update check."""
BUILD_COMMAND = ".venv/bin/python -m poolkit.node_apps build"
INSTALL_HINT = (
    "install Node.js 20.19 or newer (Debian 13: apt-get install nodejs npm; Debian 12 ships 18: "
    "use NodeSource's nodejs 20.x or 22.x packages), then run " + BUILD_COMMAND
)


@dataclass(frozen=True)
class Node:
    path: str
    version: tuple[int, int, int]

    @property
    def label(self) -> str:
        return "v" + ".".join(map(str, self.version))


def find_node() -> Node | None:
    """The ``node`` on PATH and its version, or None."""
    path = shutil.which("node")
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.match(r"v(\d+)\.(\d+)\.(\d+)", out.stdout.strip())
    if not found:
        return None
    major, minor, patch = map(int, found.groups())
    return Node(path, (major, minor, patch))


def node_problem(node: Node | None) -> str | None:
    """Why this Node cannot run the apps (missing or too old), or None."""
    if node is None:
        return f"Node.js is not installed: {INSTALL_HINT}"
    if node.version[:2] < MIN_NODE:
        return f"Node.js {node.label} is older than Prisma 7 needs (20.19): {INSTALL_HINT}"
    return None


def sources_digest(app_dir: Path) -> str:
    """A hash of every file the build reads, so an edit makes the stamp stale."""
    digest = hashlib.sha256()
    for name in SOURCES:
        root = app_dir / name
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            if "generated" in path.parts or not path.exists():
                continue
            digest.update(str(path.relative_to(app_dir)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def unavailable_reason(project_root: Path) -> str | None:
    """Why the local target cannot run the TypeScript apps now, or None when it can."""
    problem = node_problem(find_node())
    if problem:
        return problem
    app_dir = project_root / APP_DIR
    stamp = app_dir / STAMP
    if not (app_dir / SERVER).is_file() or not stamp.is_file():
        return f"{app_dir} is not built: run {BUILD_COMMAND} (npm ci, prisma generate, tsc)"
    if stamp.read_text().strip() != sources_digest(app_dir):
        return f"{app_dir} changed since it was built: run {BUILD_COMMAND}"
    return None


def server_command(node: Node, project_root: Path) -> list[str]:
    """argv of the apps' node:http adapter; the caller adds ``--style`` and friends."""
    return [node.path, str(project_root / APP_DIR / SERVER)]


def build(project_root: Path) -> int:
    """npm ci + prisma generate + tsc, unless the stamp says the build is current."""
    app_dir = project_root / APP_DIR
    problem = node_problem(find_node())
    if problem:
        print(f"TypeScript sample apps skipped: {problem}")
        return 0
    want = sources_digest(app_dir)
    stamp = app_dir / STAMP
    if stamp.is_file() and stamp.read_text().strip() == want and (app_dir / SERVER).is_file():
        print(f"TypeScript sample apps are up to date ({app_dir / SERVER})")
        return 0
    # The schema engine is a binary download; `prisma generate` never runs it, so a stand-in
    # keeps the CLI from fetching one. The client itself is TypeScript + driver adapter.
    env = {**os.environ, **PRISMA_OFFLINE}
    bin_dir = app_dir / "node_modules" / ".bin"
    steps = [
        ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
        [str(bin_dir / "prisma"), "generate"],
        [str(bin_dir / "tsc"), "-p", "tsconfig.json"],
    ]
    for step in steps:
        print(f"TypeScript sample apps: {Path(step[0]).name} {' '.join(step[1:])}", flush=True)
        if subprocess.run(step, cwd=app_dir, env=env).returncode != 0:
            print(f"error: `{' '.join(step)}` failed in {app_dir}", file=sys.stderr)
            return 1
    stamp.write_text(want + "\n")
    return 0


def main(argv: list[str]) -> int:
    if argv != ["build"]:
        print("usage: python -m poolkit.node_apps build", file=sys.stderr)
        return 2
    return build(Path(__file__).resolve().parent.parent)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
