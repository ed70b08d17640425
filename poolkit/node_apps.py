"""The TypeScript sample apps (``apps/ts``, Prisma 7): find Node.js and build them.

``.venv/bin/python -m poolkit.node_apps build`` installs the locked
packages (``npm ci``), generates the Prisma client offline, compiles the TypeScript and stages
the Docker image's build context (``apps/ts/image``: the compiled apps, the migration and the
production packages only), and skips all of it while a stamp of the sources still matches.
The local target runs the apps only where :func:`unavailable_reason` finds nothing missing;
the Pulumi program calls :func:`ensure_built` before it registers anything.
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
           "src", "../../images/app-node/dockerignore")  # fmt: skip
PRISMA_OFFLINE = {"PRISMA_SCHEMA_ENGINE_BINARY": "/bin/true", "PRISMA_HIDE_UPDATE_MESSAGE": "1",
                  "CHECKPOINT_DISABLE": "1"}  # fmt: skip
"""``prisma generate`` without downloads: it never runs the schema engine; no update check."""
IMAGE_DIR = "image"
IMAGE_CONTEXT = APP_DIR / IMAGE_DIR
"""Build context of images/app-node (gitignored, made by :func:`build`)."""
IMAGE_DOCKERFILE = Path("images") / "app-node" / "Dockerfile"
IMAGE_IGNORE = IMAGE_DOCKERFILE.parent / "dockerignore"
"""Copied as the context's ``.dockerignore``: what the running apps never read."""
IMAGE_COPIES = ("package.json", "package-lock.json", "dist", "prisma/migrations")
"""What the image takes from the host's build; its node_modules is installed apart (below)."""
IMAGE_NPM_CI = ["npm", "ci", "--omit=dev", "--legacy-peer-deps", "--prefer-offline",
                "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]  # fmt: skip
"""The runtime packages only: without ``--legacy-peer-deps`` npm also installs
``@prisma/client``'s optional peers (the Prisma CLI, TypeScript: about 250 MB more). The
packages come from npm's cache, filled by the first ``npm ci`` moments before."""
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
    if stamp.is_file() and stamp.read_text().strip() == want and _built(app_dir):
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
        if not _run(step, app_dir, env):
            return 1
    if not stage_image_context(project_root, env):
        return 1
    stamp.write_text(want + "\n")
    return 0


def _built(app_dir: Path) -> bool:
    return (app_dir / SERVER).is_file() and (app_dir / IMAGE_DIR / SERVER).is_file()


def _run(step: list[str], cwd: Path, env: dict[str, str]) -> bool:
    print(f"TypeScript sample apps: {Path(step[0]).name} {' '.join(step[1:])}", flush=True)
    if subprocess.run(step, cwd=cwd, env=env).returncode != 0:
        print(f"error: `{' '.join(step)}` failed in {cwd}", file=sys.stderr)
        return False
    return True


def stage_image_context(project_root: Path, env: dict[str, str]) -> bool:
    """Write ``apps/ts/image`` afresh: the compiled apps, the migration, the production packages.

    Built from the same files every time, so an unchanged source gives a byte-identical
    context: the image is not rebuilt and its containers are not replaced.
    """
    app_dir, context = project_root / APP_DIR, project_root / IMAGE_CONTEXT
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir()
    for name in IMAGE_COPIES:
        source, target = app_dir / name, context / name
        if source.is_dir():
            shutil.copytree(source, target, copy_function=shutil.copyfile)
        else:
            shutil.copyfile(source, target)
    shutil.copyfile(project_root / IMAGE_IGNORE, context / ".dockerignore")
    return _run(IMAGE_NPM_CI, context, env)


def ensure_built(project_root: Path) -> str | None:
    """Build the apps and the image context unless current; why that failed, or None."""
    problem = node_problem(find_node())
    if problem:
        return f"the node app image is made from this machine's build: {problem}"
    if build(project_root) != 0:
        return f"{BUILD_COMMAND} failed (its output is above)"
    return None


def main(argv: list[str]) -> int:
    if argv != ["build"]:
        print("usage: python -m poolkit.node_apps build", file=sys.stderr)
        return 2
    return build(Path(__file__).resolve().parent.parent)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
