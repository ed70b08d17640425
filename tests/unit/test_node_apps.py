"""Finding Node.js for the TypeScript sample apps, and knowing when their build is stale."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from poolkit import node_apps
from poolkit.node_apps import Node

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("node", "problem"),
    [
        (None, "Node.js is not installed"),
        (Node("/usr/bin/node", (18, 20, 4)), "v18.20.4 is older than Prisma 7 needs (20.19)"),
        (Node("/usr/bin/node", (20, 18, 9)), "v20.18.9 is older"),
        (Node("/usr/bin/node", (20, 19, 0)), None),
        (Node("/usr/bin/node", (22, 12, 0)), None),
    ],
    ids=["missing", "debian-12", "20.18", "20.19", "22"],
)
def test_node_problem_names_the_version_and_how_to_get_node(node, problem) -> None:
    found = node_apps.node_problem(node)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
        assert "20.19" in found and node_apps.BUILD_COMMAND in found


def test_unbuilt_then_stale_app_dir_is_reported(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(node_apps, "find_node", lambda: Node("/usr/bin/node", (20, 20, 2)))
    app_dir = tmp_path / node_apps.APP_DIR
    shutil.copytree(REPO_ROOT / node_apps.APP_DIR / "src", app_dir / "src",
                    ignore=shutil.ignore_patterns("generated"))  # fmt: skip
    (app_dir / "package.json").write_text("{}")
    assert "is not built" in (node_apps.unavailable_reason(tmp_path) or "")

    (app_dir / node_apps.SERVER).parent.mkdir(parents=True)
    (app_dir / node_apps.SERVER).write_text("// built")
    (app_dir / node_apps.STAMP).parent.mkdir(parents=True)
    (app_dir / node_apps.STAMP).write_text(node_apps.sources_digest(app_dir))
    assert node_apps.unavailable_reason(tmp_path) is None

    (app_dir / "src" / "routes.ts").write_text("// edited")
    assert "changed since it was built" in (node_apps.unavailable_reason(tmp_path) or "")


def test_image_context_holds_the_build_output_and_is_the_same_every_time(
    tmp_path: Path, monkeypatch
) -> None:
    """apps/ts/image: what images/app-node copies, nothing more; npm installs only the runtime
    packages there; a second staging writes the same bytes (no image rebuild)."""
    app_dir = tmp_path / node_apps.APP_DIR
    for name in ("package.json", "package-lock.json", "dist/src/server.js",
                 "prisma/migrations/0_init/migration.sql", "prisma/schema.prisma",
                 "src/server.ts", "node_modules/typescript/index.js"):  # fmt: skip
        (app_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / name).write_text(name)
    ignore = tmp_path / node_apps.IMAGE_IGNORE
    ignore.parent.mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / node_apps.IMAGE_IGNORE, ignore)
    installs: list[tuple[list[str], Path]] = []

    def fake_npm(step: list[str], cwd: Path, env: dict[str, str]) -> bool:
        installs.append((step, cwd))
        (cwd / "node_modules" / "pg").mkdir(parents=True)
        (cwd / "node_modules" / "pg" / "index.js").write_text("pg")
        return True

    monkeypatch.setattr(node_apps, "_run", fake_npm)

    def staged() -> dict[str, bytes]:
        assert node_apps.stage_image_context(tmp_path, {})
        context = tmp_path / node_apps.IMAGE_CONTEXT
        return {str(p.relative_to(context)): p.read_bytes()
                for p in sorted(context.rglob("*")) if p.is_file()}  # fmt: skip

    first = staged()
    assert set(first) == {".dockerignore", "package.json", "package-lock.json",
                          "dist/src/server.js", "prisma/migrations/0_init/migration.sql",
                          "node_modules/pg/index.js"}  # fmt: skip
    assert staged() == first
    step, cwd = installs[0]
    assert cwd == tmp_path / node_apps.IMAGE_CONTEXT
    assert step[:2] == ["npm", "ci"] and {"--omit=dev", "--legacy-peer-deps"} <= set(step)
    dockerfile = (REPO_ROOT / node_apps.IMAGE_DOCKERFILE).read_text()
    for copied in ("package.json", "node_modules", "prisma", "dist"):
        assert f"COPY {copied} " in dockerfile
