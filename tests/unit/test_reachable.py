"""The service user must reach what it runs: walk to the state dir, and list the checkout its
supervisors import poolkit from (Python's import lists a folder; ``o+x`` alone is not enough)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from poolkit.local import LocalError
from poolkit.local.machine import check_reachable, service_user
from tests.conftest import make_base_dir

pytestmark = pytest.mark.unit


@pytest.fixture
def user():  # type: ignore[no-untyped-def]
    found = service_user()
    if not found.switch:
        pytest.skip("not root: the servers run as the invoking user, who reaches everything")
    return found


@pytest.fixture
def base() -> Iterator[Path]:
    """A 0755 folder under /tmp (pytest's own tmp dirs are 0700: the user could not reach them)."""
    folder = make_base_dir("poolkit-reach-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _folder(base: Path, mode: int) -> Path:
    folder = base / "checkout"
    folder.mkdir()
    folder.chmod(mode)
    return folder


def test_a_folder_that_can_be_entered_but_not_listed_is_refused_for_imports(
    base: Path, user
) -> None:  # type: ignore[no-untyped-def]
    folder = _folder(base, 0o701)
    check_reachable(folder / "x", user, "a file")  # walking through it is enough
    with pytest.raises(LocalError, match=rf"mode 0701\. .*chmod o\+rx {folder}$"):
        check_reachable(folder, user, "poolkit's code", listable=True)


def test_a_closed_parent_names_chmod_o_x_and_an_open_one_passes(
    base: Path, user
) -> None:  # type: ignore[no-untyped-def]
    folder = _folder(base, 0o700)
    with pytest.raises(LocalError, match=rf"mode 0700\. .*chmod o\+x {folder}$"):
        check_reachable(folder / "inner", user, "the state dir")
    folder.chmod(0o755)
    check_reachable(folder, user, "poolkit's code", listable=True)
