"""scripts/build-pgbouncer reads Debian's mirror from the machine's apt sources (no fixed host)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-pgbouncer"

DEB822 = """\
Types: deb
# a comment naming http://old.example/debian
URIs: http://mirror.test/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.test/debian-security
Suites: bookworm-security
Components: main
"""


CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("POOLKIT_")}


def _sources(apt_dir: Path, **env: str) -> list[str]:
    done = subprocess.run(
        [str(SCRIPT), "--sources"], capture_output=True, text=True, check=False, timeout=30,
        env={**CLEAN_ENV, "POOLKIT_APT_SOURCES_DIR": str(apt_dir), **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [line.replace("[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ", "")
            for line in done.stdout.splitlines()]  # fmt: skip


@pytest.fixture
def apt_dir(tmp_path: Path) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    return tmp_path


def test_deb822_sources_give_trixie_and_its_security_suite(apt_dir: Path) -> None:
    (apt_dir / "sources.list.d" / "debian.sources").write_text(DEB822)
    assert _sources(apt_dir) == ["deb-src http://mirror.test/debian trixie main",
                                 "deb-src http://mirror.test/debian-security trixie-security main"]


def test_one_line_sources_with_options_and_a_missing_security_line(apt_dir: Path) -> None:
    (apt_dir / "sources.list").write_text(
        "# deb http://commented.test/debian bookworm main\n"
        "deb [arch=amd64] http://mirror.test/debian/ bookworm main contrib\n"
        "deb https://other.test/apt stable-extra main\n"
    )  # fmt: skip
    assert _sources(apt_dir) == ["deb-src http://mirror.test/debian trixie main",
                                 "deb-src http://mirror.test/debian-security trixie-security main"]


def test_environment_overrides_the_mirror_and_suite(apt_dir: Path) -> None:
    (apt_dir / "sources.list.d" / "debian.sources").write_text(DEB822)
    lines = _sources(apt_dir, POOLKIT_DEBIAN_MIRROR="http://local.test/deb",
                     POOLKIT_DEBIAN_SECURITY_MIRROR="http://local.test/sec",
                     POOLKIT_PGBOUNCER_SUITE="forky")  # fmt: skip
    assert lines == ["deb-src http://local.test/deb forky main",
                     "deb-src http://local.test/sec forky-security main"]


def test_no_debian_mirror_is_an_error_that_names_the_fix(apt_dir: Path) -> None:
    (apt_dir / "sources.list").write_text("deb http://archive.test/ubuntu noble main\n")
    done = subprocess.run([str(SCRIPT), "--sources"], capture_output=True, text=True,
                          env={**CLEAN_ENV, "POOLKIT_APT_SOURCES_DIR": str(apt_dir)},
                          check=False, timeout=30)  # fmt: skip
    assert done.returncode == 1
    assert "POOLKIT_DEBIAN_MIRROR" in done.stderr
    assert "POOLKIT_ALLOW_NO_PREPARED_STATEMENTS=1" in done.stderr
